"""A tabular model: one embedding per categorical column, BatchNorm1d on continuous features."""
import jax
import jax.numpy as jnp
import flax.linen as nn
import math
from typing import Any
from typing import Sequence
import inspect


# --- helpers added by jaxport (PyTorch semantics in JAX) ---
class TorchBatchNorm(nn.BatchNorm):
    """torch.nn.BatchNorm1d/2d/3d and SyncBatchNorm as flax's ``nn.BatchNorm``: same fields
    (``momentum`` is flax's, 1 - torch's), same variables (``params/scale|bias``,
    ``batch_stats/mean|var``). In training it normalises with the biased batch variance and,
    as torch does, updates ``var`` with the unbiased one (x n/(n-1), n the elements per
    feature over every device of ``axis_name``); flax's BatchNorm stores the biased one.
    The variance is two-pass unless ``use_fast_variance``; statistics are at least float32
    with ``force_float32_reductions``."""
    use_fast_variance: bool = False

    @nn.compact
    def __call__(self, x, use_running_average=None):
        use_running_average = nn.merge_param("use_running_average", self.use_running_average,
                                             use_running_average)
        features = {a % x.ndim for a in (self.axis if isinstance(self.axis, tuple) else (self.axis,))}
        axes = tuple(i for i in range(x.ndim) if i not in features)
        shape = tuple(1 if i in axes else d for i, d in enumerate(x.shape))    # broadcasts on x
        feature_shape = tuple(x.shape[i] for i in sorted(features))
        stats_dtype = jnp.float32 if self.force_float32_reductions else self.param_dtype
        ra_mean = self.variable("batch_stats", "mean", jnp.zeros, feature_shape, stats_dtype)
        ra_var = self.variable("batch_stats", "var", jnp.ones, feature_shape, stats_dtype)
        if use_running_average:
            mean, var = ra_mean.value, ra_var.value
        else:
            xs = x.astype(jnp.promote_types(self.dtype or x.dtype, stats_dtype))
            axis_name = None if self.is_initializing() else self.axis_name

            def over_devices(reduce, v):
                if axis_name is None:
                    return v
                return reduce(v, axis_name, axis_index_groups=self.axis_index_groups)

            mean = over_devices(jax.lax.pmean, xs.mean(axes))
            if self.use_fast_variance:
                var = jnp.maximum(over_devices(jax.lax.pmean, (xs * xs).mean(axes)) - mean * mean, 0)
            else:
                var = over_devices(jax.lax.pmean, jnp.square(xs - mean.reshape(shape)).mean(axes))
            if not self.is_initializing():
                n = over_devices(jax.lax.psum, jnp.asarray(math.prod(x.shape[i] for i in axes), xs.dtype))
                m = self.momentum
                ra_mean.value = m * ra_mean.value + (1 - m) * mean
                ra_var.value = m * ra_var.value + (1 - m) * var * n / (n - 1)
        mul = jax.lax.rsqrt(var.reshape(shape) + self.epsilon)
        args = [x]
        if self.use_scale:
            scale = self.param("scale", self.scale_init, feature_shape, self.param_dtype)
            mul = mul * scale.reshape(shape)
            args.append(scale)
        y = (x - mean.reshape(shape)) * mul
        if self.use_bias:
            bias = self.param("bias", self.bias_init, feature_shape, self.param_dtype)
            y = y + bias.reshape(shape)
            args.append(bias)
        return y.astype(self.dtype or jnp.result_type(*args))


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
        self.bn_cont = TorchBatchNorm(axis=1, momentum=0.9, epsilon=1e-05)

        layerlist = []
        n_emb = sum(nf for _, nf in emb_szs)
        n_in = n_emb + self.n_cont
        for i in self.layers:
            layerlist.append(nn.Dense(features=i, kernel_init=torch_kaiming_uniform(n_in), bias_init=torch_bias_uniform(n_in)))
            layerlist.append(nn.relu)
            layerlist.append(TorchBatchNorm(axis=1, momentum=0.9, epsilon=1e-05))
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
