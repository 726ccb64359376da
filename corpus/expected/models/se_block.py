"""Squeeze-and-excitation: channel attention from global average pooling."""
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




class SELayer(nn.Module):
    channel: Any
    reduction: int = 4

    def setup(self):
        self.avg_pool = partial(adaptive_avg_pool_nchw, output_size=1, spatial_dims=2)
        self.fc = Sequential([nn.Dense(features=self.channel // self.reduction, use_bias=False, kernel_init=torch_kaiming_uniform(self.channel), bias_init=torch_bias_uniform(self.channel)), nn.relu, nn.Dense(features=self.channel, use_bias=False, kernel_init=torch_kaiming_uniform(self.channel // self.reduction), bias_init=torch_bias_uniform(self.channel // self.reduction)), nn.sigmoid])

    def __call__(self, x, train: bool = False):
        b, c, _, _ = x.shape
        y = jnp.reshape(self.avg_pool(x), (b, c))
        y = jnp.reshape(self.fc(y, train=train), (b, c, 1, 1))
        return x * jnp.broadcast_to(y, x.shape)


class SEBasicBlock(nn.Module):
    inplanes: int = 8
    planes: int = 8
    stride: int = 1
    reduction: int = 4

    def setup(self):
        self.conv1 = ConvNCHW(features=self.planes, kernel_size=3, strides=self.stride, padding=1, use_bias=False)
        self.bn1 = TorchBatchNorm(axis=1, momentum=0.9, epsilon=1e-05)
        self.conv2 = ConvNCHW(features=self.planes, kernel_size=3, strides=1, padding=1, use_bias=False)
        self.bn2 = TorchBatchNorm(axis=1, momentum=0.9, epsilon=1e-05)
        self.se = SELayer(self.planes, self.reduction)
        self.pool = partial(adaptive_avg_pool_nchw, output_size=(2, 3), spatial_dims=2)

    def __call__(self, x, train: bool = False):
        residual = x
        out = jax.nn.relu(self.bn1(self.conv1(x), use_running_average=not train))
        out = self.bn2(self.conv2(out), use_running_average=not train)
        out = self.se(out, train=train)
        out = jax.nn.relu(out + residual)
        return out, self.pool(out)
