"""A small GPT laid out the way karpathy's GPTs are: the trunk in an ``nn.ModuleDict(dict(...))``
read by attribute (``self.trunk.tok``), blocks in a ModuleList inside it, the output head's
weight given to the token embedding (``self.trunk.tok.weight = self.head.weight``), a
LayerNorm whose bias is an optional ``nn.Parameter``, and a parameter count printed by
``__init__``."""
import math
import jax
import jax.numpy as jnp
import flax.linen as nn
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


def torch_layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5):
    """``F.layer_norm``: normalise over the trailing ``normalized_shape`` axes (biased variance)."""
    n = len(normalized_shape) if isinstance(normalized_shape, (tuple, list)) else 1
    axes = tuple(range(x.ndim - n, x.ndim))
    mean = jnp.mean(x, axis=axes, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=axes, keepdims=True)
    out = (x - mean) * jax.lax.rsqrt(var + eps)
    if weight is not None:
        out = out * weight
    if bias is not None:
        out = out + bias
    return out




class OptionalBiasNorm(nn.Module):
    dim: Any
    bias: Any

    def setup(self):
        self.weight = self.param('weight', lambda rng_key: jnp.ones(self.dim))
        self.bias_ = self.param('bias', lambda rng_key: jnp.zeros(self.dim)) if self.bias else None

    def __call__(self, x, train: bool = False):
        return torch_layer_norm(x, self.weight.shape, weight=self.weight, bias=self.bias_, eps=1e-5)


class MLPBlock(nn.Module):
    dim: Any
    bias: Any
    p: Any

    def setup(self):
        self.norm = OptionalBiasNorm(self.dim, self.bias)
        self.up = nn.Dense(features=3 * self.dim, use_bias=self.bias, kernel_init=torch_kaiming_uniform(self.dim), bias_init=torch_bias_uniform(self.dim))
        self.down = nn.Dense(features=self.dim, use_bias=self.bias, kernel_init=torch_kaiming_uniform(3 * self.dim), bias_init=torch_bias_uniform(3 * self.dim))
        self.drop = nn.Dropout(rate=self.p)

    def __call__(self, x, train: bool = False):
        return x + self.drop(self.down(jax.nn.gelu(self.up(self.norm(x, train=train)), approximate=False)), deterministic=not train)


class TinyLM(nn.Module):
    vocab: int = 23
    context: int = 12
    dim: int = 16
    depth: int = 2
    bias: bool = True
    p: float = 0.0

    def setup(self):
        p = self.p
        self.trunk = dict(
            tok=nn.Embed(num_embeddings=self.vocab, features=self.dim, embedding_init=torch_normal_init()),
            pos=nn.Embed(num_embeddings=self.context, features=self.dim, embedding_init=torch_normal_init()),
            drop=nn.Dropout(rate=p),
            blocks=[MLPBlock(self.dim, self.bias, p) for _ in range(self.depth)],
            norm=OptionalBiasNorm(self.dim, self.bias),
        )
        # n = sum(p.numel() for p in self.parameters())
        # jaxport: JP303 the parameters do not exist yet in setup() (model.init creates them): count them from the initialised variables, e.g. sum(x.size for x in jax.tree_util.tree_leaves(variables['params']))
        pass
        # print("parameters: %d (%.1f k)" % (n, n / 1e3))
        # jaxport: JP303 the parameters do not exist yet in setup() (model.init creates them): count them from the initialised variables, e.g. sum(x.size for x in jax.tree_util.tree_leaves(variables['params']))
        pass
        # print("context %d, %d per position" % (context, self.count() // context))
        # jaxport: JP303 the parameters do not exist yet in setup() (model.init creates them): count them from the initialised variables, e.g. sum(x.size for x in jax.tree_util.tree_leaves(variables['params']))
        pass

    def count(self):
        return sum(p.size for p in self.trunk.parameters())

    def __call__(self, idx, train: bool = False):
        t = idx.shape[1]
        pos = jnp.arange(0, t, dtype=jnp.int32)
        x = self.trunk['drop'](self.trunk['tok'](idx) + self.trunk['pos'](pos), deterministic=not train)
        for block in self.trunk['blocks']:
            x = block(x, train=train)
        x = self.trunk['norm'](x, train=train)
        return self.trunk['tok'].attend(x) / math.sqrt(x.shape[(-1)])
