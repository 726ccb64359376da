"""Self- and cross-attention layers on top of nn.MultiheadAttention."""
import jax
import jax.numpy as jnp
import flax.linen as nn
import math
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


def ntuple(value, n):
    """``value`` repeated ``n`` times if it is a scalar, else as a tuple."""
    if isinstance(value, (int, float)):
        return (value,) * n
    return tuple(value)


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


def torch_squeeze(x, dim=None):
    """``torch.squeeze``: with ``dim`` (an int or a tuple), drop only those axes of size 1;
    axes of another size are kept (jnp.squeeze raises there)."""
    if dim is None:
        return jnp.squeeze(x)
    dims = dim if isinstance(dim, (tuple, list)) else (dim,)
    keep = tuple(d % x.ndim for d in dims if x.shape[d] == 1) if x.ndim else ()
    return jnp.squeeze(x, axis=keep) if keep else x


def torch_expand(x, *sizes):
    """``Tensor.expand``: broadcast to ``sizes``; ``-1`` keeps the existing size."""
    if len(sizes) == 1 and not isinstance(sizes[0], int):
        sizes = tuple(sizes[0])
    lead = len(sizes) - x.ndim
    shape = tuple(x.shape[i - lead] if s == -1 else s for i, s in enumerate(sizes))
    return jnp.broadcast_to(x, shape)




class AttentionPool(nn.Module):
    """Self-attention with a padding mask, then a learned-query cross-attention pool."""
    d_model: int = 16
    nhead: int = 4
    num_classes: int = 3

    def setup(self):
        self.self_attn = TorchMultiheadAttention(embed_dim=self.d_model, num_heads=self.nhead, batch_first=True)
        self.norm = LayerNormLastAxes(normalized_shape=self.d_model, epsilon=1e-05, use_bias=True)
        self.query = self.param('query', lambda rng_key: jax.random.normal(rng_key, (1, 1, self.d_model)) * 0.02)
        self.pool = TorchMultiheadAttention(embed_dim=self.d_model, num_heads=self.nhead, batch_first=True)
        self.head = nn.Dense(features=self.num_classes, kernel_init=torch_kaiming_uniform(self.d_model), bias_init=torch_bias_uniform(self.d_model))

    def __call__(self, x, key_padding_mask=None, train: bool = False):
        attn_out, _ = self.self_attn(x, x, x, key_padding_mask=key_padding_mask, need_weights=False, train=train)
        x = self.norm(x + attn_out)
        q = torch_expand(self.query, (x.shape[0], -1, -1))
        pooled, weights = self.pool(q, x, x, key_padding_mask=key_padding_mask, train=train)
        return self.head(torch_squeeze(pooled, 1)), weights


class SeqFirstEncoder(nn.Module):
    """The (T, B, E) layout that nn.MultiheadAttention defaults to, with a causal mask."""
    embed_dim: int = 12
    num_heads: int = 3

    def setup(self):
        self.attn = TorchMultiheadAttention(embed_dim=self.embed_dim, num_heads=self.num_heads, dropout=0.1)
        self.ff = Sequential([nn.Dense(features=24, kernel_init=torch_kaiming_uniform(self.embed_dim), bias_init=torch_bias_uniform(self.embed_dim)), nn.relu, nn.Dense(features=self.embed_dim, kernel_init=torch_kaiming_uniform(24), bias_init=torch_bias_uniform(24))])

    def __call__(self, src, train: bool = False):
        T = src.shape[0]
        causal = jnp.triu(jnp.ones((T, T), dtype=jnp.bool_), k=1)
        out, _ = self.attn(src, src, src, attn_mask=causal, train=train)
        return src + self.ff(out, train=train)
