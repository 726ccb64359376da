"""DCGAN generator and discriminator for 16x16 images."""
import jax
import jax.numpy as jnp
import flax.linen as nn
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


class ConvTransposeNCHW(nn.Module):
    """torch.nn.ConvTranspose1d/2d/3d on channels-first input.

    ``kernel`` is (*kernel_size, in, out // groups): torch's weight (in, out // groups, *k)
    with the spatial axes first. ``padding``/``output_padding`` follow torch. Initialised like
    torch by default (fan_in = out // groups * prod(kernel_size)).
    """
    features: int
    kernel_size: Any
    strides: Any = 1
    padding: Any = 0
    output_padding: Any = 0
    feature_group_count: int = 1
    use_bias: bool = True
    kernel_dilation: Any = 1
    kernel_init: Any = None
    bias_init: Any = None
    precision: Any = None

    @nn.compact
    def __call__(self, x, output_size=None):
        """``output_size`` (torch's forward argument) picks the output padding."""
        nd = x.ndim - 2
        kernel_size = ntuple(self.kernel_size, nd)
        dilation = ntuple(self.kernel_dilation, nd)
        strides = ntuple(self.strides, nd)
        output_padding = ntuple(self.output_padding, nd)
        if output_size is not None:
            output_padding = tuple(
                size - ((n - 1) * s - 2 * p + d * (k - 1) + 1)
                for size, n, s, p, d, k in zip(tuple(output_size)[-nd:], x.shape[2:], strides,
                                               ntuple(self.padding, nd), dilation, kernel_size))
        groups = self.feature_group_count
        in_features = x.shape[1]
        fan_in = self.features // groups * math.prod(kernel_size)
        kernel = self.param("kernel", self.kernel_init or torch_kaiming_uniform(fan_in),
                            kernel_size + (in_features, self.features // groups))
        # As a plain convolution over the stride-dilated input: flip the kernel and move
        # the groups from the input axis to the output axis.
        k = kernel.reshape(kernel_size + (groups, in_features // groups, self.features // groups))
        k = jnp.moveaxis(k, nd, nd + 1).reshape(kernel_size + (in_features // groups, self.features))
        k = jnp.flip(k, axis=tuple(range(nd)))
        pads = []
        for kk, d, p, op in zip(kernel_size, dilation, ntuple(self.padding, nd), output_padding):
            edge = d * (kk - 1) - p
            pads.append((edge, edge + op))
        y = jax.lax.conv_general_dilated(
            x, k.astype(x.dtype), (1,) * nd, pads, lhs_dilation=strides,
            rhs_dilation=dilation, dimension_numbers=conv_dimension_numbers(nd),
            feature_group_count=groups, precision=self.precision)
        if self.use_bias:
            bias = self.param("bias", self.bias_init or torch_bias_uniform(fan_in), (self.features,))
            y = y + bias.astype(y.dtype).reshape((-1,) + (1,) * nd)
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




class Generator(nn.Module):
    nz: int = 8
    ngf: int = 8
    nc: int = 3

    def setup(self):
        self.main = Sequential([ConvTransposeNCHW(features=self.ngf * 4, kernel_size=4, strides=1, padding=0, use_bias=False, kernel_init=torch_normal(0.0, 0.02)), TorchBatchNorm(axis=1, momentum=0.9, epsilon=1e-05, scale_init=torch_normal(1.0, 0.02), bias_init=nn.initializers.constant(0)), nn.relu, ConvTransposeNCHW(features=self.ngf * 2, kernel_size=4, strides=2, padding=1, use_bias=False, kernel_init=torch_normal(0.0, 0.02)), TorchBatchNorm(axis=1, momentum=0.9, epsilon=1e-05, scale_init=torch_normal(1.0, 0.02), bias_init=nn.initializers.constant(0)), nn.relu, ConvTransposeNCHW(features=self.nc, kernel_size=4, strides=2, padding=1, use_bias=False, kernel_init=torch_normal(0.0, 0.02)), nn.tanh])

    def __call__(self, input, train: bool = False):
        return self.main(input, train=train)


class Discriminator(nn.Module):
    nc: int = 3
    ndf: int = 8

    def setup(self):
        self.main = Sequential([ConvNCHW(features=self.ndf, kernel_size=4, strides=2, padding=1, use_bias=False, kernel_init=torch_normal(0.0, 0.02)), partial(nn.leaky_relu, negative_slope=0.2), ConvNCHW(features=self.ndf * 2, kernel_size=4, strides=2, padding=1, use_bias=False, kernel_init=torch_normal(0.0, 0.02)), TorchBatchNorm(axis=1, momentum=0.9, epsilon=1e-05, scale_init=torch_normal(1.0, 0.02), bias_init=nn.initializers.constant(0)), partial(nn.leaky_relu, negative_slope=0.2), ConvNCHW(features=1, kernel_size=4, strides=1, padding=0, use_bias=False, kernel_init=torch_normal(0.0, 0.02)), nn.sigmoid])

    def __call__(self, input, train: bool = False):
        output = self.main(input, train=train)
        return torch_squeeze(jnp.reshape(output, (-1, 1)), 1)
