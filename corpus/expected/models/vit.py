"""A tiny Vision Transformer: conv patchify, class token, learned positions."""
import jax
import jax.numpy as jnp
import flax.linen as nn
import math
from functools import partial
from typing import Any
from typing import Sequence
import inspect


# --- helpers added by jaxport (PyTorch semantics in JAX) ---
def torch_mha_uniform(bound):
    """U(±bound) initialiser (torch's xavier_uniform_ / Linear init, with the bound given)."""

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def torch_mha_float_mask(mask, dtype):
    """torch's canonical mask: a boolean mask (True = masked out) becomes 0 / -inf."""
    if mask is None:
        return None
    if mask.dtype == jnp.bool_:
        return jnp.where(mask, -jnp.inf, 0.0).astype(dtype)
    return mask.astype(dtype)


class TorchMultiheadAttention(nn.Module):
    """torch.nn.MultiheadAttention.

    ``out, weights = attn(query, key, value, key_padding_mask=None, need_weights=True,
    attn_mask=None, average_attn_weights=True, is_causal=False, train=False)``: shapes,
    boolean (True = masked out) and additive float masks, head averaging and ``None``
    weights when ``need_weights=False`` all as in torch. Dropout on the attention weights
    only when ``train`` (rng stream 'dropout').
    """

    embed_dim: int
    num_heads: int
    dropout: float = 0.0
    bias: bool = True
    add_bias_kv: bool = False
    add_zero_attn: bool = False
    kdim: Any = None
    vdim: Any = None
    batch_first: bool = False

    @property
    def head_dim(self):
        return self.embed_dim // self.num_heads

    def setup(self):
        e = self.embed_dim
        if e % self.num_heads:
            raise ValueError(f"embed_dim {e} must be divisible by num_heads {self.num_heads}")
        kdim = e if self.kdim is None else self.kdim
        vdim = e if self.vdim is None else self.vdim
        zeros = nn.initializers.zeros
        if kdim == e and vdim == e:
            # torch packs q, k, v into one (3E, E) in_proj_weight: xavier over the packed shape
            bounds = [(6.0 / (4 * e)) ** 0.5] * 3
        else:
            bounds = [(6.0 / (e + d)) ** 0.5 for d in (e, kdim, vdim)]
        self.q_proj = nn.Dense(e, use_bias=self.bias, kernel_init=torch_mha_uniform(bounds[0]), bias_init=zeros)
        self.k_proj = nn.Dense(e, use_bias=self.bias, kernel_init=torch_mha_uniform(bounds[1]), bias_init=zeros)
        self.v_proj = nn.Dense(e, use_bias=self.bias, kernel_init=torch_mha_uniform(bounds[2]), bias_init=zeros)
        self.out_proj = nn.Dense(e, use_bias=self.bias, kernel_init=torch_mha_uniform(1.0 / e ** 0.5),
                                 bias_init=zeros)
        if self.add_bias_kv:
            normal = nn.initializers.normal(stddev=(1.0 / e) ** 0.5)  # xavier_normal_ on (1, 1, E)
            self.bias_k = self.param("bias_k", normal, (1, 1, e))
            self.bias_v = self.param("bias_v", normal, (1, 1, e))
        self.attn_dropout = nn.Dropout(rate=self.dropout)

    def __call__(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                 average_attn_weights=True, is_causal=False, train: bool = False):
        batched = query.ndim == 3
        if query.ndim not in (2, 3) or key.ndim != query.ndim or value.ndim != query.ndim:
            raise ValueError("MultiheadAttention: query, key and value must all be 3-D (batched) "
                             "or all 2-D (unbatched)")
        if is_causal and attn_mask is None:
            raise ValueError("MultiheadAttention: is_causal is only a hint; pass the causal attn_mask")
        if not batched:
            query, key, value = query[None], key[None], value[None]
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask[None]
        elif not self.batch_first:
            query, key, value = (jnp.swapaxes(a, 0, 1) for a in (query, key, value))
        # batch-major from here: query (N, L, E), key (N, S, kdim), value (N, S, vdim)
        n, tgt_len, e = query.shape
        h = self.num_heads
        head_dim = e // h
        q = self.q_proj(query)
        k = self.k_proj(key)
        v = self.v_proj(value)
        kpm = torch_mha_float_mask(key_padding_mask, q.dtype)
        mask = torch_mha_float_mask(attn_mask, q.dtype)
        if mask is not None:
            src_len = key.shape[1]
            if mask.ndim == 2:
                if mask.shape != (tgt_len, src_len):
                    raise ValueError(f"2-D attn_mask must be {(tgt_len, src_len)}, got {mask.shape}")
                mask = mask[None, None]
            elif mask.ndim == 3:
                if mask.shape != (n * h, tgt_len, src_len):
                    raise ValueError(f"3-D attn_mask must be {(n * h, tgt_len, src_len)}, got {mask.shape}")
                mask = mask.reshape(n, h, tgt_len, src_len)
            else:
                raise ValueError(f"attn_mask must be 2-D or 3-D, got {mask.ndim}-D")
        if self.add_bias_kv:
            k = jnp.concatenate([k, jnp.broadcast_to(self.bias_k, (n, 1, e)).astype(k.dtype)], axis=1)
            v = jnp.concatenate([v, jnp.broadcast_to(self.bias_v, (n, 1, e)).astype(v.dtype)], axis=1)
        k = k.reshape(n, k.shape[1], h, head_dim)
        v = v.reshape(n, v.shape[1], h, head_dim)
        if self.add_zero_attn:
            k = jnp.concatenate([k, jnp.zeros((n, 1, h, head_dim), k.dtype)], axis=1)
            v = jnp.concatenate([v, jnp.zeros((n, 1, h, head_dim), v.dtype)], axis=1)
        extra = int(self.add_bias_kv) + int(self.add_zero_attn)
        if extra and mask is not None:
            mask = jnp.pad(mask, ((0, 0), (0, 0), (0, 0), (0, extra)))
        if extra and kpm is not None:
            kpm = jnp.pad(kpm, ((0, 0), (0, extra)))
        if kpm is not None:
            kpm = kpm[:, None, None, :]
            mask = kpm if mask is None else mask + kpm
        q = q.reshape(n, tgt_len, h, head_dim) * (1.0 / head_dim) ** 0.5
        logits = jnp.einsum("nlhd,nshd->nhls", q, k)
        if mask is not None:
            logits = logits + mask
        weights = jax.nn.softmax(logits, axis=-1)
        weights = self.attn_dropout(weights, deterministic=not train)
        out = jnp.einsum("nhls,nshd->nlhd", weights, v).reshape(n, tgt_len, e)
        out = self.out_proj(out)
        if not batched:
            out = out[0]
        elif not self.batch_first:
            out = jnp.swapaxes(out, 0, 1)
        if not need_weights:
            return out, None
        if average_attn_weights:
            weights = weights.mean(axis=1)
        return out, (weights if batched else weights[0])


def torch_kaiming_uniform(fan_in=None):
    """U(-1/sqrt(fan_in), 1/sqrt(fan_in)): torch's default for Linear and Conv weights
    (``kaiming_uniform_(a=sqrt(5))``). Without ``fan_in``, it is the product of all but the
    last axis of the flax kernel shape, which is torch's fan_in for Dense and Conv kernels."""
    def init(key, shape, dtype=jnp.float32):
        n = math.prod(shape[:-1]) if fan_in is None else fan_in
        bound = 1.0 / math.sqrt(n) if n > 0 else 0.0
        return jax.random.uniform(key, shape, dtype, -bound, bound)
    return init


def torch_bias_uniform(fan_in):
    """U(-1/sqrt(fan_in), 1/sqrt(fan_in)): torch's default for Linear and Conv biases."""
    def init(key, shape, dtype=jnp.float32):
        bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
        return jax.random.uniform(key, shape, dtype, -bound, bound)
    return init


def torch_trunc_normal(mean=0.0, std=1.0, a=-2.0, b=2.0):
    """N(mean, std²) truncated to [a, b] (absolute bounds, as in torch.nn.init.trunc_normal_)."""
    def init(key, shape, dtype=jax.numpy.float32):
        unit = jax.random.truncated_normal(key, (a - mean) / std, (b - mean) / std, shape, dtype)
        return mean + std * unit
    return init


def ntuple(value, n):
    """``value`` repeated ``n`` times if it is a scalar, else as a tuple."""
    if isinstance(value, (int, float)):
        return (value,) * n
    return tuple(value)


def conv_dimension_numbers(nd):
    """lax dimension numbers for channels-first input and a (*spatial, in, out) kernel."""
    spatial = "DHW"[3 - nd:] if nd <= 3 else "".join(chr(ord("a") + i) for i in range(nd))
    return ("NC" + spatial, spatial + "IO", "NC" + spatial)


def conv_padding(padding, kernel_size, dilation):
    """torch Conv padding (int, tuple, 'valid' or 'same') as (low, high) pairs."""
    if padding == "valid":
        return [(0, 0)] * len(kernel_size)
    if padding == "same":
        pairs = []
        for k, d in zip(kernel_size, dilation):
            total = d * (k - 1)
            pairs.append((total // 2, total - total // 2))
        return pairs
    return [(p, p) for p in ntuple(padding, len(kernel_size))]


TORCH_PAD_MODES = {"zeros": "constant", "constant": "constant", "reflect": "reflect",
                   "replicate": "edge", "circular": "wrap"}


class ConvNCHW(nn.Module):
    """torch.nn.Conv1d/2d/3d on channels-first input.

    ``kernel`` is (*kernel_size, in // groups, out) as in nn.Conv; ``padding`` follows torch
    (int, tuple, 'same', 'valid'; ``padding_mode`` zeros/reflect/replicate/circular).
    Initialised like torch by default: U(+-1/sqrt(fan_in)) for kernel and bias.
    """
    features: int
    kernel_size: Any
    strides: Any = 1
    padding: Any = 0
    kernel_dilation: Any = 1
    feature_group_count: int = 1
    use_bias: bool = True
    padding_mode: str = "zeros"
    kernel_init: Any = None
    bias_init: Any = None
    precision: Any = None

    @nn.compact
    def __call__(self, x):
        nd = x.ndim - 2
        kernel_size = ntuple(self.kernel_size, nd)
        dilation = ntuple(self.kernel_dilation, nd)
        groups = self.feature_group_count
        fan_in = x.shape[1] // groups * math.prod(kernel_size)
        kernel = self.param("kernel", self.kernel_init or torch_kaiming_uniform(),
                            kernel_size + (x.shape[1] // groups, self.features))
        pads = conv_padding(self.padding, kernel_size, dilation)
        if self.padding_mode != "zeros":
            x = jnp.pad(x, [(0, 0), (0, 0)] + pads, mode=TORCH_PAD_MODES[self.padding_mode])
            pads = [(0, 0)] * nd
        y = jax.lax.conv_general_dilated(
            x, kernel.astype(x.dtype), ntuple(self.strides, nd), pads, rhs_dilation=dilation,
            dimension_numbers=conv_dimension_numbers(nd), feature_group_count=groups,
            precision=self.precision)
        if self.use_bias:
            bias = self.param("bias", self.bias_init or torch_bias_uniform(fan_in), (self.features,))
            y = y + bias.astype(y.dtype).reshape((-1,) + (1,) * nd)
        return y


class LayerNormLastAxes(nn.Module):
    """torch.nn.LayerNorm: normalises over the last ``len(normalized_shape)`` axes;
    ``scale``/``bias`` have shape ``normalized_shape`` (two-pass variance, like torch)."""
    normalized_shape: Any
    epsilon: float = 1e-5
    use_scale: bool = True
    use_bias: bool = True
    scale_init: Any = nn.initializers.ones_init()
    bias_init: Any = nn.initializers.zeros_init()

    @nn.compact
    def __call__(self, x):
        shape = ntuple(self.normalized_shape, 1)
        axes = tuple(range(-len(shape), 0))
        mean = jnp.mean(x, axis=axes, keepdims=True)
        centred = x - mean
        mul = jax.lax.rsqrt(jnp.mean(jnp.square(centred), axis=axes, keepdims=True) + self.epsilon)
        if self.use_scale:   # scale folded into the per-row factor: one full-size product less
            mul = mul * self.param("scale", self.scale_init, shape)
        y = centred * mul
        if self.use_bias:
            y = y + self.param("bias", self.bias_init, shape)
        return y


def call_layer(layer, x, train):
    """Call one layer of a converted container, passing the training flag the way it takes it."""
    if not isinstance(layer, nn.Module):
        return layer(x)
    params = inspect.signature(type(layer).__call__).parameters
    if "train" in params:
        return layer(x, train=train)
    if "deterministic" in params:
        return layer(x, deterministic=not train)
    if "use_running_average" in params:
        return layer(x, use_running_average=not train)
    return layer(x)


class Sequential(nn.Module):
    """torch.nn.Sequential: applies `layers` in order; children are named layers_{i}."""
    layers: Sequence[Any]

    def __call__(self, x, train: bool = False):
        for layer in self.layers:
            x = call_layer(layer, x, train)
        return x

    def __getitem__(self, index):
        return self.layers[index]


def torch_expand(x, *sizes):
    """``Tensor.expand``: broadcast to ``sizes``; ``-1`` keeps the existing size."""
    if len(sizes) == 1 and not isinstance(sizes[0], int):
        sizes = tuple(sizes[0])
    lead = len(sizes) - x.ndim
    shape = tuple(x.shape[i - lead] if s == -1 else s for i, s in enumerate(sizes))
    return jnp.broadcast_to(x, shape)




class PatchEmbed(nn.Module):
    img_size: int = 16
    patch_size: int = 4
    in_chans: int = 3
    embed_dim: int = 16

    def setup(self):
        self.num_patches = (self.img_size // self.patch_size) ** 2
        self.proj = ConvNCHW(features=self.embed_dim, kernel_size=self.patch_size, strides=self.patch_size)

    def __call__(self, x, train: bool = False):
        B, C, H, W = x.shape
        x = self.proj(x)                    # B, E, H/P, W/P
        x = jnp.swapaxes(jax.lax.collapse(x, 2), 1, 2)    # B, N, E
        return x


class EncoderBlock(nn.Module):
    dim: Any
    num_heads: Any
    mlp_ratio: float = 2.0

    def setup(self):
        self.norm1 = LayerNormLastAxes(normalized_shape=self.dim, epsilon=1e-6, use_bias=True)
        self.attn = TorchMultiheadAttention(embed_dim=self.dim, num_heads=self.num_heads, batch_first=True)
        self.norm2 = LayerNormLastAxes(normalized_shape=self.dim, epsilon=1e-6, use_bias=True)
        hidden = int(self.dim * self.mlp_ratio)
        self.mlp = Sequential([nn.Dense(features=hidden, kernel_init=torch_kaiming_uniform(self.dim), bias_init=torch_bias_uniform(self.dim)), partial(nn.gelu, approximate=False), nn.Dense(features=self.dim, kernel_init=torch_kaiming_uniform(hidden), bias_init=torch_bias_uniform(hidden))])

    def __call__(self, x, train: bool = False):
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False, train=train)[0]
        x = x + self.mlp(self.norm2(x), train=train)
        return x


class VisionTransformer(nn.Module):
    img_size: int = 16
    patch_size: int = 4
    in_chans: int = 3
    num_classes: int = 5
    embed_dim: int = 16
    depth: int = 2
    num_heads: int = 2

    def setup(self):
        self.patch_embed = PatchEmbed(self.img_size, self.patch_size, self.in_chans, self.embed_dim)
        num_patches = self.patch_embed.num_patches
        self.cls_token = self.param('cls_token', lambda rng_key: torch_trunc_normal(0.0, 0.02, -2.0, 2.0)(rng_key, jnp.shape(jnp.zeros((1, 1, self.embed_dim)))))
        self.pos_embed = self.param('pos_embed', lambda rng_key: torch_trunc_normal(0.0, 0.02, -2.0, 2.0)(rng_key, jnp.shape(jnp.zeros((1, num_patches + 1, self.embed_dim)))))
        self.blocks = Sequential([*[EncoderBlock(self.embed_dim, self.num_heads) for _ in range(self.depth)]])
        self.norm = LayerNormLastAxes(normalized_shape=self.embed_dim, epsilon=1e-6, use_bias=True)
        self.head = nn.Dense(features=self.num_classes, kernel_init=torch_kaiming_uniform(self.embed_dim), bias_init=torch_bias_uniform(self.embed_dim))

    def __call__(self, x, train: bool = False):
        x = self.patch_embed(x, train=train)
        cls_tokens = torch_expand(self.cls_token, (x.shape[0], -1, -1))
        x = jnp.concatenate((cls_tokens, x), axis=1)
        x = x + self.pos_embed
        x = self.blocks(x, train=train)
        x = self.norm(x)
        return self.head(x[:, 0])
