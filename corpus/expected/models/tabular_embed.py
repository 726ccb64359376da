"""A tabular model: one embedding per categorical column, BatchNorm1d on continuous features."""
import jax
import jax.numpy as jnp
import flax.linen as nn
import math
from typing import Any
from typing import Sequence
import inspect


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




class TabularModel(nn.Module):
    cardinalities: tuple = (5, 7, 3)
    n_cont: int = 4
    out_sz: int = 2
    layers: tuple = (16, 8)
    p: float = 0.3

    def setup(self):
        emb_szs = [(c, min(6, (c + 1) // 2)) for c in self.cardinalities]
        self.embeds = [nn.Embed(num_embeddings=ni, features=nf, embedding_init=torch_normal_init()) for ni, nf in emb_szs]
        self.emb_drop = nn.Dropout(rate=self.p)
        # jaxport: JP201 torch.nn.BatchNorm1d: forward (train and eval) and running_mean match torch; the running_var update uses the biased batch variance (flax) where torch uses the unbiased one (factor n/(n-1), n = elements per channel)
        self.bn_cont = nn.BatchNorm(axis=1, momentum=0.9, epsilon=1e-05, use_fast_variance=False)

        layerlist = []
        n_emb = sum(nf for _, nf in emb_szs)
        n_in = n_emb + self.n_cont
        for i in self.layers:
            layerlist.append(nn.Dense(features=i, kernel_init=torch_kaiming_uniform(n_in), bias_init=torch_bias_uniform(n_in)))
            layerlist.append(nn.relu)
            # jaxport: JP201 torch.nn.BatchNorm1d: forward (train and eval) and running_mean match torch; the running_var update uses the biased batch variance (flax) where torch uses the unbiased one (factor n/(n-1), n = elements per channel)
            layerlist.append(nn.BatchNorm(axis=1, momentum=0.9, epsilon=1e-05, use_fast_variance=False))
            layerlist.append(nn.Dropout(rate=self.p))
            n_in = i
        layerlist.append(nn.Dense(features=self.out_sz, kernel_init=torch_kaiming_uniform(self.layers[-1]), bias_init=torch_bias_uniform(self.layers[-1])))
        self.layers_ = Sequential([*layerlist])

    def __call__(self, x_cat, x_cont, train: bool = False):
        embeddings = []
        for i, e in enumerate(self.embeds):
            embeddings.append(e(x_cat[:, i]))
        x = jnp.concatenate(embeddings, axis=1)
        x = self.emb_drop(x, deterministic=not train)
        x_cont = self.bn_cont(x_cont, use_running_average=not train)
        x = jnp.concatenate([x, x_cont], axis=1)
        return self.layers_(x, train=train)
