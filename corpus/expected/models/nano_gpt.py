"""A GPT in the nanoGPT style: one fused q/k/v projection, heads split by view/transpose."""
import math
import jax
import jax.numpy as jnp
import flax.linen as nn
from functools import partial
from typing import Any


# --- helpers added by jaxport (PyTorch semantics in JAX) ---
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


def torch_normal_init(padding_idx=None):
    """N(0, 1) with row ``padding_idx`` zeroed: torch's default for Embedding weights."""
    def init(key, shape, dtype=jnp.float32):
        table = jax.random.normal(key, shape, dtype)
        if padding_idx is not None:
            table = table.at[padding_idx].set(0)
        return table
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


def torch_split(x, split_size_or_sections, dim=0):
    """``torch.split``: an int is a chunk *size* (the last chunk may be smaller); a list gives
    the size of each piece (``jnp.split`` takes counts or cut indices instead)."""
    size = x.shape[dim]
    if isinstance(split_size_or_sections, int):
        cuts = list(range(split_size_or_sections, size, split_size_or_sections))
    else:
        cuts, total = [], 0
        for part in list(split_size_or_sections)[:-1]:
            total += int(part)
            cuts.append(total)
    return tuple(jnp.split(x, cuts, axis=dim))


def torch_reduce(loss, reduction="mean"):
    """Apply a torch loss ``reduction``: "mean", "sum" or "none"."""
    if reduction == "mean":
        return jnp.mean(loss)
    if reduction == "sum":
        return jnp.sum(loss)
    if reduction == "none":
        return loss
    raise ValueError(f"unknown reduction {reduction!r}")


def torch_nll_loss(input, target, weight=None, ignore_index=-100, reduction="mean"):
    """``F.nll_loss`` on log-probabilities with classes on axis 1 (axis 0 when unbatched);
    "mean" divides by the summed weights of the targets that are not ``ignore_index``."""
    axis = 1 if input.ndim > 1 else 0
    valid = target != ignore_index
    safe = jnp.where(valid, target, 0)
    picked = jnp.squeeze(jnp.take_along_axis(input, jnp.expand_dims(safe, axis), axis=axis), axis)
    w = jnp.ones_like(picked) if weight is None else weight[safe]
    w = jnp.where(valid, w, 0.0)
    loss = -picked * w
    if reduction == "mean":
        return jnp.sum(loss) / jnp.sum(w)
    return torch_reduce(loss, reduction)


def torch_cross_entropy(input, target, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0):
    """``F.cross_entropy``: logits with classes on axis 1 (axis 0 when unbatched); ``target``
    holds class indices (honouring ``weight``, ``ignore_index``, ``label_smoothing``) or,
    when it has the input's shape and a float dtype, class probabilities."""
    axis = 1 if input.ndim > 1 else 0
    classes = input.shape[axis]
    logp = jax.nn.log_softmax(input, axis=axis)
    wshape = [1] * input.ndim
    wshape[axis] = classes
    if jnp.issubdtype(target.dtype, jnp.floating):
        if label_smoothing:
            target = target * (1 - label_smoothing) + label_smoothing / classes
        weighted = logp if weight is None else logp * weight.reshape(wshape)
        loss = -jnp.sum(weighted * target, axis=axis)
        if reduction == "mean":
            return jnp.sum(loss) / (loss.size if loss.ndim else 1)
        return torch_reduce(loss, reduction)
    nll = torch_nll_loss(logp, target, weight, ignore_index, reduction)
    if not label_smoothing:
        return nll
    valid = target != ignore_index
    weighted = logp if weight is None else logp * weight.reshape(wshape)
    smooth = jnp.where(valid, -jnp.sum(weighted, axis=axis), 0.0)
    if reduction == "mean":
        if weight is None:
            smooth = jnp.sum(smooth) / jnp.sum(valid)
        else:
            smooth = jnp.sum(smooth) / jnp.sum(jnp.where(valid, weight[jnp.where(valid, target, 0)], 0.0))
    else:
        smooth = torch_reduce(smooth, reduction)
    return (1 - label_smoothing) * nll + label_smoothing / classes * smooth




class CausalSelfAttention(nn.Module):
    n_embd: Any
    n_head: Any
    block_size: Any
    dropout: float = 0.0

    def setup(self):
        assert self.n_embd % self.n_head == 0
        # q, k and v of every head in one matmul
        self.c_attn = nn.Dense(features=3 * self.n_embd, kernel_init=torch_kaiming_uniform(self.n_embd), bias_init=torch_bias_uniform(self.n_embd))
        self.c_proj = nn.Dense(features=self.n_embd, kernel_init=torch_kaiming_uniform(self.n_embd), bias_init=torch_bias_uniform(self.n_embd))
        self.attn_dropout = nn.Dropout(rate=self.dropout)
        self.resid_dropout = nn.Dropout(rate=self.dropout)
        mask = jnp.tril(jnp.ones((self.block_size, self.block_size)))
        self.bias = jnp.reshape(mask, (1, 1, self.block_size, self.block_size))

    def __call__(self, x, train: bool = False):
        B, T, C = x.shape
        q, k, v = torch_split(self.c_attn(x), self.n_embd, dim=2)
        hs = C // self.n_head
        q = jnp.swapaxes(jnp.reshape(q, (B, T, self.n_head, hs)), 1, 2)
        k = jnp.swapaxes(jnp.reshape(k, (B, T, self.n_head, hs)), 1, 2)
        v = jnp.swapaxes(jnp.reshape(v, (B, T, self.n_head, hs)), 1, 2)
        att = (q @ jnp.swapaxes(k, -2, -1)) * (1.0 / math.sqrt(hs))
        att = jnp.where(self.bias[:, :, :T, :T] == 0, float("-inf"), att)
        att = jax.nn.softmax(att, axis=-1)
        att = self.attn_dropout(att, deterministic=not train)
        y = jnp.reshape(jnp.swapaxes(att @ v, 1, 2), (B, T, C))
        return self.resid_dropout(self.c_proj(y), deterministic=not train)


class MLP(nn.Module):
    n_embd: Any
    dropout: float = 0.0

    def setup(self):
        self.c_fc = nn.Dense(features=4 * self.n_embd, kernel_init=torch_kaiming_uniform(self.n_embd), bias_init=torch_bias_uniform(self.n_embd))
        self.gelu = partial(nn.gelu, approximate=False)
        self.c_proj = nn.Dense(features=self.n_embd, kernel_init=torch_kaiming_uniform(4 * self.n_embd), bias_init=torch_bias_uniform(4 * self.n_embd))
        self.dropout_ = nn.Dropout(rate=self.dropout)

    def __call__(self, x, train: bool = False):
        return self.dropout_(self.c_proj(self.gelu(self.c_fc(x))), deterministic=not train)


class Block(nn.Module):
    n_embd: Any
    n_head: Any
    block_size: Any
    dropout: float = 0.0

    def setup(self):
        self.ln_1 = LayerNormLastAxes(normalized_shape=self.n_embd, epsilon=1e-05, use_bias=True)
        self.attn = CausalSelfAttention(self.n_embd, self.n_head, self.block_size, self.dropout)
        self.ln_2 = LayerNormLastAxes(normalized_shape=self.n_embd, epsilon=1e-05, use_bias=True)
        self.mlp = MLP(self.n_embd, self.dropout)

    def __call__(self, x, train: bool = False):
        x = x + self.attn(self.ln_1(x), train=train)
        x = x + self.mlp(self.ln_2(x), train=train)
        return x


class GPT(nn.Module):
    vocab_size: int = 65
    block_size: int = 32
    n_embd: int = 16
    n_head: int = 2
    n_layer: int = 2
    dropout: float = 0.0

    def setup(self):
        self.wte = nn.Embed(num_embeddings=self.vocab_size, features=self.n_embd, embedding_init=torch_normal_init())
        self.wpe = nn.Embed(num_embeddings=self.block_size, features=self.n_embd, embedding_init=torch_normal_init())
        self.drop = nn.Dropout(rate=self.dropout)
        self.h = [Block(self.n_embd, self.n_head, self.block_size, self.dropout) for _ in range(self.n_layer)]
        self.ln_f = LayerNormLastAxes(normalized_shape=self.n_embd, epsilon=1e-05, use_bias=True)

    def __call__(self, idx, targets=None, train: bool = False):
        b, t = idx.shape
        assert t <= self.block_size, f"cannot forward a sequence of length {t}"
        pos = jnp.arange(0, t, dtype=jnp.int32)
        x = self.drop(self.wte(idx) + self.wpe(pos), deterministic=not train)
        for block in self.h:
            x = block(x, train=train)
        logits = self.wte.attend(self.ln_f(x))
        loss = None
        if targets is not None:
            loss = torch_cross_entropy(jnp.reshape(logits, (-1, logits.shape[(-1)])), jnp.reshape(targets, -1))
        return logits, loss
