"""A network whose blocks are built from a class given to the constructor (``unit(cin, cout)``)
and a recursive tree whose sub-trees are registered with ``__setattr__`` and found again by
name in ``forward`` (the shape of DLA-style CIFAR models)."""
import jax
import jax.numpy as jnp
import flax.linen as nn
import math
from typing import Any
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


def _tuple(v, n):
    return tuple(v) if isinstance(v, (tuple, list)) else (v,) * n


def torch_adaptive_pool(x, output_size, n, reduce):
    """Adaptive pooling over the last ``n`` axes: bin i spans floor(i*in/out)..ceil((i+1)*in/out)."""
    sizes = _tuple(output_size, n)
    for i in range(n):
        axis = x.ndim - n + i
        size_in = x.shape[axis]
        size_out = size_in if sizes[i] is None else sizes[i]
        pieces = []
        for j in range(size_out):
            lo, hi = (j * size_in) // size_out, -(-((j + 1) * size_in) // size_out)
            pieces.append(reduce(jax.lax.slice_in_dim(x, lo, hi, axis=axis), axis=axis, keepdims=True))
        x = jnp.concatenate(pieces, axis=axis)
    return x


def torch_adaptive_avg_pool2d(x, output_size):
    """``F.adaptive_avg_pool2d`` on (N, C, H, W) input."""
    return torch_adaptive_pool(x, output_size, 2, jnp.mean)




class ConvBN(nn.Module):
    cin: Any
    cout: Any
    stride: int = 1

    def setup(self):
        self.conv = ConvNCHW(features=self.cout, kernel_size=3, strides=self.stride, padding=1, use_bias=False)
        self.bn = TorchBatchNorm(axis=1, momentum=0.9, epsilon=1e-05)

    def __call__(self, x, train: bool = False):
        return jax.nn.relu(self.bn(self.conv(x), use_running_average=not train))


class Join(nn.Module):
    cin: Any
    cout: Any

    def setup(self):
        self.proj = ConvNCHW(features=self.cout, kernel_size=1, use_bias=False)
        self.bn = TorchBatchNorm(axis=1, momentum=0.9, epsilon=1e-05)

    def __call__(self, parts, train: bool = False):
        return jax.nn.relu(self.bn(self.proj(jnp.concatenate(parts, axis=1)), use_running_average=not train))


class Branches(nn.Module):
    unit: Any
    cin: Any
    cout: Any
    depth: int = 1
    stride: int = 1

    def setup(self):
        if self.depth == 1:
            _first = self.unit(self.cin, self.cout, stride=self.stride)
        else:
            for d in range(1, self.depth):
                self.__setattr__("sub_%d" % d, Branches(self.unit, self.cin if d == 1 else self.cout, self.cout, depth=d,
                                                        stride=self.stride if d == 1 else 1))
            _first = self.unit(self.cout, self.cout)
        self.second = self.unit(self.cout, self.cout)
        self.join = Join((self.depth + 1) * self.cout, self.cout)
        self.first = _first

    def __call__(self, x, train: bool = False):
        parts = []
        for d in range(1, self.depth):
            sub = getattr(self, "sub_%d" % d)
            x = call_layer(sub, x, train)
            parts.append(x)
        x = call_layer(self.first, x, train)
        parts.append(x)
        x = call_layer(self.second, x, train)
        parts.append(x)
        return self.join(parts, train=train)


class TreeNet(nn.Module):
    unit: Any = ConvBN
    width: int = 4
    depth: int = 3
    num_classes: int = 5

    def setup(self):
        self.stem = self.unit(3, self.width)
        self.tree = Branches(self.unit, self.width, 2 * self.width, depth=self.depth, stride=2)
        self.fc = nn.Dense(features=self.num_classes, kernel_init=torch_kaiming_uniform(2 * self.width), bias_init=torch_bias_uniform(2 * self.width))

    def __call__(self, x, train: bool = False):
        x = self.tree(call_layer(self.stem, x, train), train=train)
        return self.fc(jax.lax.collapse(torch_adaptive_avg_pool2d(x, 1), 1))
