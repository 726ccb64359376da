"""A tiny GPT language model with tied input/output embeddings."""
import math
import jax
import jax.numpy as jnp
import flax.linen as nn
from typing import Any
from typing import Sequence
import inspect


# --- helpers added by jaxport (PyTorch semantics in JAX) ---
def torch_normal(mean=0.0, std=1.0):
    """N(mean, std²), like torch.nn.init.normal_."""
    def init(key, shape, dtype=jax.numpy.float32):
        return mean + std * jax.random.normal(key, shape, dtype)
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




class Head(nn.Module):
    """One head of causal self-attention."""
    n_embd: Any
    head_size: Any
    block_size: Any

    def setup(self):
        self.key = nn.Dense(features=self.head_size, use_bias=False, kernel_init=torch_normal(0.0, 0.02), bias_init=nn.initializers.zeros)
        self.query = nn.Dense(features=self.head_size, use_bias=False, kernel_init=torch_normal(0.0, 0.02), bias_init=nn.initializers.zeros)
        self.value = nn.Dense(features=self.head_size, use_bias=False, kernel_init=torch_normal(0.0, 0.02), bias_init=nn.initializers.zeros)
        self.tril = jnp.tril(jnp.ones((self.block_size, self.block_size)))

    def __call__(self, x, train: bool = False):
        B, T, C = x.shape
        k = self.key(x)
        q = self.query(x)
        wei = q @ jnp.swapaxes(k, -2, -1) * k.shape[-1] ** -0.5
        wei = jnp.where(self.tril[:T, :T] == 0, float("-inf"), wei)
        wei = jax.nn.softmax(wei, axis=-1)
        v = self.value(x)
        return wei @ v


class MultiHeadAttention(nn.Module):
    n_embd: Any
    num_heads: Any
    block_size: Any

    def setup(self):
        head_size = self.n_embd // self.num_heads
        self.heads = [Head(self.n_embd, head_size, self.block_size) for _ in range(self.num_heads)]
        self.proj = nn.Dense(features=self.n_embd, kernel_init=torch_normal(0.0, 0.02), bias_init=nn.initializers.zeros)

    def __call__(self, x, train: bool = False):
        out = jnp.concatenate([h(x) for h in self.heads], axis=-1)
        return self.proj(out)


class FeedForward(nn.Module):
    n_embd: Any

    def setup(self):
        self.net = Sequential([nn.Dense(features=4 * self.n_embd, kernel_init=torch_normal(0.0, 0.02), bias_init=nn.initializers.zeros), nn.relu, nn.Dense(features=self.n_embd, kernel_init=torch_normal(0.0, 0.02), bias_init=nn.initializers.zeros)])

    def __call__(self, x, train: bool = False):
        return self.net(x, train=train)


class Block(nn.Module):
    n_embd: Any
    n_head: Any
    block_size: Any

    def setup(self):
        self.sa = MultiHeadAttention(self.n_embd, self.n_head, self.block_size)
        self.ffwd = FeedForward(self.n_embd)
        self.ln1 = LayerNormLastAxes(normalized_shape=self.n_embd, epsilon=1e-05, use_bias=True)
        self.ln2 = LayerNormLastAxes(normalized_shape=self.n_embd, epsilon=1e-05, use_bias=True)

    def __call__(self, x, train: bool = False):
        x = x + self.sa(self.ln1(x), train=train)
        x = x + self.ffwd(self.ln2(x), train=train)
        return x


class TinyGPT(nn.Module):
    vocab_size: int = 65
    block_size: int = 32
    n_embd: int = 16
    n_head: int = 2
    n_layer: int = 2

    def setup(self):
        self.tok_emb = nn.Embed(num_embeddings=self.vocab_size, features=self.n_embd, embedding_init=torch_normal(0.0, 0.02))
        self.pos_emb = self.param('pos_emb', lambda rng_key: jnp.zeros((1, self.block_size, self.n_embd)))
        self.blocks = [Block(self.n_embd, self.n_head, self.block_size) for _ in range(self.n_layer)]
        self.ln_f = LayerNormLastAxes(normalized_shape=self.n_embd, epsilon=1e-05, use_bias=True)
        # for pn, p in self.named_parameters():
        #     if pn.endswith("proj.weight"):
        #         torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * n_layer))
        # jaxport: JP305 initialisation loop over self.modules() not converted yet; layers keep torch's default init
        pass

    def __call__(self, idx, targets=None, train: bool = False):
        b, t = idx.shape
        assert t <= self.block_size, f"sequence of length {t} exceeds block size {self.block_size}"
        x = self.tok_emb(idx) + self.pos_emb[:, :t, :]
        for block in self.blocks:
            x = block(x, train=train)
        x = self.ln_f(x)
        logits = self.tok_emb.attend(x)

        loss = None
        if targets is not None:
            loss = torch_cross_entropy(jnp.reshape(logits, (-1, logits.shape[(-1)])), jnp.reshape(targets, -1))
        return logits, loss
