"""A miniature VGG with batch norm, built from a configuration list."""
import jax
import jax.numpy as jnp
import flax.linen as nn
import numpy as np
import math
from functools import partial
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


def pool_output_size(size, kernel, stride, padding, dilation, ceil_mode):
    """torch's pooling output length (the last window must start inside the input)."""
    span = size + 2 * padding - dilation * (kernel - 1) - 1
    out = (-(-span // stride) if ceil_mode else span // stride) + 1
    if ceil_mode and (out - 1) * stride >= size + padding:
        out -= 1
    return out


def pool_geometry(shape, kernel_size, stride, padding, dilation, ceil_mode):
    """Per spatial axis: (kernel, stride, dilation, low pad, high pad) for jax.lax.reduce_window."""
    nd = len(shape)
    kernel_size = ntuple(kernel_size, nd)
    stride = kernel_size if stride is None or stride == () or stride == [] else ntuple(stride, nd)
    out = []
    for size, k, s, p, d in zip(shape, kernel_size, stride, ntuple(padding, nd), ntuple(dilation, nd)):
        n = pool_output_size(size, k, s, p, d, ceil_mode)
        high = max((n - 1) * s + d * (k - 1) + 1 - size - p, 0)
        out.append((k, s, d, p, high))
    return out


def max_pool_nchw(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, spatial_dims=2):
    """torch max_pool{1,2,3}d over the last ``spatial_dims`` axes."""
    lead = x.ndim - spatial_dims
    geo = pool_geometry(x.shape[lead:], kernel_size, stride, padding, dilation, ceil_mode)
    init = -np.inf if jnp.issubdtype(x.dtype, jnp.floating) else jnp.iinfo(x.dtype).min
    pads = [(0, 0)] * lead + [(g[3], g[4]) for g in geo]
    if all(g[2] == 1 for g in geo):
        return jax.lax.reduce_window(
            x, np.array(init, x.dtype), jax.lax.max, (1,) * lead + tuple(g[0] for g in geo),
            (1,) * lead + tuple(g[1] for g in geo), pads)
    # dilated windows (jax has no gradient for dilated reduce_window max): max of strided slices
    x = jnp.pad(x, pads, constant_values=init)
    out_shape = [(n - d * (k - 1) - 1) // s + 1 for n, (k, s, d, _, _) in zip(x.shape[lead:], geo)]
    result = None
    for offsets in np.ndindex(*[g[0] for g in geo]):
        start = (0,) * lead + tuple(o * g[2] for o, g in zip(offsets, geo))
        limit = x.shape[:lead] + tuple(st + (m - 1) * g[1] + 1
                                       for st, m, g in zip(start[lead:], out_shape, geo))
        part = jax.lax.slice(x, start, limit, (1,) * lead + tuple(g[1] for g in geo))
        result = part if result is None else jnp.maximum(result, part)
    return result


def adaptive_pool_axis(x, axis, out_size, reduce):
    """Adaptive pooling along one axis: window i is [floor(i*n/m), ceil((i+1)*n/m))."""
    n = x.shape[axis]
    if out_size is None or out_size == n:
        return x
    if n % out_size == 0:
        shape = x.shape[:axis] + (out_size, n // out_size) + x.shape[axis + 1:]
        return reduce(x.reshape(shape), axis + 1, None)
    starts = np.array([(i * n) // out_size for i in range(out_size)])
    ends = np.array([-(-((i + 1) * n) // out_size) for i in range(out_size)])
    width = int((ends - starts).max())
    index = np.minimum(starts[:, None] + np.arange(width), n - 1)
    valid = np.arange(width)[None, :] < (ends - starts)[:, None]
    windows = jnp.take(x, index.reshape(-1), axis=axis)
    windows = windows.reshape(x.shape[:axis] + (out_size, width) + x.shape[axis + 1:])
    valid = valid.reshape((out_size, width) + (1,) * (x.ndim - axis - 1))
    return reduce(windows, axis + 1, valid)


def adaptive_mean(windows, axis, valid):
    if valid is None:
        return jnp.mean(windows, axis=axis)
    return jnp.sum(jnp.where(valid, windows, 0), axis=axis) / valid.sum(axis=1)


def adaptive_avg_pool_nchw(x, output_size, spatial_dims=2):
    """torch adaptive_avg_pool{1,2,3}d; ``None`` in ``output_size`` keeps that size."""
    sizes = ntuple(output_size, spatial_dims) if output_size is not None else (None,) * spatial_dims
    for i, size in enumerate(sizes):
        x = adaptive_pool_axis(x, x.ndim - spatial_dims + i, size, adaptive_mean)
    return x


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



cfg = {
    "tiny": [8, "M", 16, 16, "M", 32, "M"],
    "small": [16, 16, "M", 32, 32, "M", 64, 64, "M"],
}


class VGG(nn.Module):
    vgg_name: str = "tiny"
    num_classes: int = 10
    in_channels: int = 3

    def setup(self):
        self.features = self._make_layers(cfg[self.vgg_name], self.in_channels)
        self.classifier = nn.Dense(features=self.num_classes, kernel_init=torch_kaiming_uniform(cfg[self.vgg_name][-2]), bias_init=torch_bias_uniform(cfg[self.vgg_name][-2]))

    def __call__(self, x, train: bool = False):
        out = self.features(x, train=train)
        out = jnp.reshape(out, (out.shape[0], -1))
        out = self.classifier(out)
        return out

    def _make_layers(self, cfg, in_channels):
        layers = []
        for x in cfg:
            if x == "M":
                layers += [partial(max_pool_nchw, kernel_size=2, stride=2, spatial_dims=2)]
            else:
                layers += [ConvNCHW(features=x, kernel_size=3, padding=1),
                           TorchBatchNorm(axis=1, momentum=0.9, epsilon=1e-05),
                           nn.relu]
                in_channels = x
        layers += [partial(adaptive_avg_pool_nchw, output_size=(1, 1), spatial_dims=2)]
        return Sequential([*layers])
