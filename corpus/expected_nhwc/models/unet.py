"""A two-level UNet: skip connections by concatenation, bilinear and transposed upsampling."""
import jax
import jax.numpy as jnp
import flax.linen as nn
import numpy as np
import math
from functools import partial
from typing import Any
from typing import ClassVar
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


def conv_dimension_numbers_nhwc(nd):
    """lax dimension numbers for channels-last input and a (*spatial, in, out) kernel."""
    spatial = "DHW"[3 - nd:]
    return ("N" + spatial + "C", spatial + "IO", "N" + spatial + "C")


class ConvNHWC(nn.Module):
    """torch.nn.Conv2d (Conv1d/3d alike) on channels-last input: flax nn.Conv's ``kernel``
    (*kernel_size, in // groups, out) and ``bias``, torch's padding (int, tuple, 'same',
    'valid', padding_mode) and torch's default init U(+-1/sqrt(fan_in))."""
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
        fan_in = x.shape[-1] // groups * math.prod(kernel_size)
        kernel = self.param("kernel", self.kernel_init or torch_kaiming_uniform(),
                            kernel_size + (x.shape[-1] // groups, self.features))
        pads = conv_padding(self.padding, kernel_size, dilation)
        if self.padding_mode != "zeros":
            x = jnp.pad(x, [(0, 0)] + pads + [(0, 0)], mode=TORCH_PAD_MODES[self.padding_mode])
            pads = [(0, 0)] * nd
        y = jax.lax.conv_general_dilated(
            x, kernel.astype(x.dtype), ntuple(self.strides, nd), pads, rhs_dilation=dilation,
            dimension_numbers=conv_dimension_numbers_nhwc(nd), feature_group_count=groups,
            precision=self.precision)
        if self.use_bias:
            y = y + self.param("bias", self.bias_init or torch_bias_uniform(fan_in),
                               (self.features,)).astype(y.dtype)
        return y


class ConvTransposeNHWC(nn.Module):
    """torch.nn.ConvTranspose2d on channels-last input: ``kernel`` (*kernel_size, in,
    out // groups) as ConvTransposeNCHW's; torch's padding, output_padding and init."""
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
        nd = x.ndim - 2
        kernel_size = ntuple(self.kernel_size, nd)
        dilation = ntuple(self.kernel_dilation, nd)
        strides = ntuple(self.strides, nd)
        output_padding = ntuple(self.output_padding, nd)
        if output_size is not None:   # torch's forward argument, in torch's (N, C, *spatial) terms
            output_padding = tuple(
                size - ((n - 1) * s - 2 * p + d * (k - 1) + 1)
                for size, n, s, p, d, k in zip(tuple(output_size)[-nd:], x.shape[1:-1], strides,
                                               ntuple(self.padding, nd), dilation, kernel_size))
        groups = self.feature_group_count
        in_features = x.shape[-1]
        fan_in = self.features // groups * math.prod(kernel_size)
        kernel = self.param("kernel", self.kernel_init or torch_kaiming_uniform(fan_in),
                            kernel_size + (in_features, self.features // groups))
        # a plain convolution over the stride-dilated input: flipped kernel, groups moved
        # from the input axis to the output axis
        k = kernel.reshape(kernel_size + (groups, in_features // groups, self.features // groups))
        k = jnp.moveaxis(k, nd, nd + 1).reshape(kernel_size + (in_features // groups, self.features))
        k = jnp.flip(k, axis=tuple(range(nd)))
        pads = []
        for kk, d, p, op in zip(kernel_size, dilation, ntuple(self.padding, nd), output_padding):
            edge = d * (kk - 1) - p
            pads.append((edge, edge + op))
        y = jax.lax.conv_general_dilated(
            x, k.astype(x.dtype), (1,) * nd, pads, lhs_dilation=strides, rhs_dilation=dilation,
            dimension_numbers=conv_dimension_numbers_nhwc(nd), feature_group_count=groups,
            precision=self.precision)
        if self.use_bias:
            y = y + self.param("bias", self.bias_init or torch_bias_uniform(fan_in),
                               (self.features,)).astype(y.dtype)
        return y


def max_pool_nhwc(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
    """torch max_pool2d (1d/3d alike) on channels-last input."""
    geo = pool_geometry(x.shape[1:-1], kernel_size, stride, padding, dilation, ceil_mode)
    init = -np.inf if jnp.issubdtype(x.dtype, jnp.floating) else jnp.iinfo(x.dtype).min
    pads = [(0, 0)] + [(g[3], g[4]) for g in geo] + [(0, 0)]
    if all(g[2] == 1 for g in geo):
        return jax.lax.reduce_window(
            x, np.array(init, x.dtype), jax.lax.max, (1,) + tuple(g[0] for g in geo) + (1,),
            (1,) + tuple(g[1] for g in geo) + (1,), pads)
    # dilated windows (no gradient for a dilated reduce_window max): max of strided slices
    x = jnp.pad(x, pads, constant_values=init)
    out_shape = [(n - d * (k - 1) - 1) // s + 1 for n, (k, s, d, _, _) in zip(x.shape[1:-1], geo)]
    result = None
    for offsets in np.ndindex(*[g[0] for g in geo]):
        start = (0,) + tuple(o * g[2] for o, g in zip(offsets, geo)) + (0,)
        limit = (x.shape[0],) + tuple(st + (m - 1) * g[1] + 1 for st, m, g in
                                      zip(start[1:-1], out_shape, geo)) + (x.shape[-1],)
        part = jax.lax.slice(x, start, limit, (1,) + tuple(g[1] for g in geo) + (1,))
        result = part if result is None else jnp.maximum(result, part)
    return result


def adaptive_avg_pool_nhwc(x, output_size):
    """torch adaptive_avg_pool2d on channels-last input; ``None`` keeps that size."""
    nd = x.ndim - 2
    sizes = ntuple(output_size, nd) if output_size is not None else (None,) * nd
    for i, size in enumerate(sizes):
        x = adaptive_pool_axis(x, 1 + i, size, adaptive_mean)
    return x


def upsample_nhwc(x, size=None, scale_factor=None, mode="nearest", align_corners=None,
                  recompute_scale_factor=None):
    """torch.nn.Upsample / F.interpolate on channels-last input: modes nearest, nearest-exact,
    linear, bilinear, trilinear (``align_corners`` as torch) and area."""
    nd = x.ndim - 2
    if mode in ("bicubic",):
        raise NotImplementedError("interpolate mode 'bicubic' is not supported")
    if size is not None:
        sizes = ntuple(size, nd)
        scales = (None,) * nd
    else:
        scales = ntuple(scale_factor, nd)
        sizes = tuple(int(math.floor(n * s)) for n, s in zip(x.shape[1:-1], scales))
        if recompute_scale_factor:
            scales = (None,) * nd
    if mode == "area":
        return adaptive_avg_pool_nhwc(x, sizes)
    for i in range(nd):
        x = resample_axis(x, 1 + i, sizes[i], scales[i], mode, align_corners)
    return x


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


def _make_take_static():
    """``take(x, index, axis)`` for a static index tuple whose derivative is a product with a
    one-hot matrix (XLA:CPU runs the scatter-add that jnp.take's gradient needs slowly)."""
    @partial(jax.custom_jvp, nondiff_argnums=(1, 2))
    def take(x, index, axis):
        return jnp.take(x, np.asarray(index), axis=axis)

    @take.defjvp
    def take_jvp(index, axis, primals, tangents):
        (x,), (t,) = primals, tangents
        onehot = np.equal(np.asarray(index)[:, None], np.arange(x.shape[axis])[None, :])
        out = jax.lax.dot_general(t, jnp.asarray(onehot, t.dtype), (((axis,), (1,)), ((), ())),
                                  precision=jax.lax.Precision.HIGHEST)
        return take(x, index, axis), jnp.moveaxis(out, -1, axis)

    return take


take_static_onehot = _make_take_static()


def take_static(x, index, axis):
    """``jnp.take(x, index, axis)`` for a static integer index: the gradient goes through a
    one-hot matmul when the axis is short (64 or less), else through jnp.take's scatter-add."""
    if x.shape[axis] <= 64 and jnp.issubdtype(x.dtype, jnp.floating):
        return take_static_onehot(x, tuple(int(i) for i in index), axis)
    return jnp.take(x, index, axis=axis)


def resample_axis(x, axis, out_size, scale, mode, align_corners):
    """One axis of torch interpolate (nearest, nearest-exact or linear), with torch's float32
    source-index arithmetic."""
    n = x.shape[axis]
    f32 = np.float32
    dst = np.arange(out_size, dtype=f32)
    ratio = f32(1.0 / scale) if scale else f32(n) / f32(out_size)
    if mode in ("nearest", "nearest-exact"):
        offset = f32(0.5) if mode == "nearest-exact" else f32(0.0)
        index = np.minimum(np.floor((dst + offset) * ratio).astype(np.int64), n - 1)
        return take_static(x, index, axis)
    if align_corners:
        ratio = f32(n - 1) / f32(out_size - 1) if out_size > 1 else f32(0.0)
        src = dst * ratio
    else:
        src = np.maximum(ratio * (dst + f32(0.5)) - f32(0.5), f32(0.0))
    low = np.minimum(np.floor(src).astype(np.int64), n - 1)
    high = np.minimum(low + 1, n - 1)
    weight = (src - low.astype(f32)).reshape((-1,) + (1,) * (x.ndim - axis - 1))
    weight = jnp.asarray(weight, x.dtype)
    return take_static(x, low, axis) * (1 - weight) + take_static(x, high, axis) * weight


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


def torch_pad(x, pad, mode="constant", value=None):
    """``F.pad``: ``pad`` lists (before, after) pairs starting from the *last* axis; negative
    amounts crop. Modes: constant, reflect, replicate, circular."""
    pad = [int(p) for p in pad]
    pairs = [(0, 0)] * (x.ndim - len(pad) // 2)
    pairs += [(pad[i], pad[i + 1]) for i in reversed(range(0, len(pad), 2))]
    if mode == "constant":
        fill = jnp.asarray(0 if value is None else value, x.dtype)
        return jax.lax.pad(x, fill, [(lo, hi, 0) for lo, hi in pairs])
    names = {"reflect": "reflect", "replicate": "edge", "circular": "wrap"}
    if mode not in names:
        raise ValueError(f"pad: unknown mode {mode!r}")
    return jnp.pad(x, pairs, mode=names[mode])




class DoubleConv(nn.Module):
    """(conv => BN => ReLU) * 2"""
    in_channels: Any
    out_channels: Any
    mid_channels: Any = None
    # jaxport --layout nhwc: images are channels-last (N, H, W, C)
    jaxport_layout: ClassVar[dict] = {"inputs": ("x",), "returns": True, "flatten_rows": {}}

    def setup(self):
        mid_channels = self.mid_channels
        if not mid_channels:
            mid_channels = self.out_channels
        self.double_conv = Sequential([ConvNHWC(features=mid_channels, kernel_size=3, padding=1, use_bias=False), TorchBatchNorm(axis=-1, momentum=0.9, epsilon=1e-05), nn.relu, ConvNHWC(features=self.out_channels, kernel_size=3, padding=1, use_bias=False), TorchBatchNorm(axis=-1, momentum=0.9, epsilon=1e-05), nn.relu])

    def __call__(self, x, train: bool = False):
        return self.double_conv(x, train=train)


class Down(nn.Module):
    in_channels: Any
    out_channels: Any
    # jaxport --layout nhwc: images are channels-last (N, H, W, C)
    jaxport_layout: ClassVar[dict] = {"inputs": ("x",), "returns": True, "flatten_rows": {}}

    def setup(self):
        self.maxpool_conv = Sequential([partial(max_pool_nhwc, kernel_size=2), DoubleConv(self.in_channels, self.out_channels)])

    def __call__(self, x, train: bool = False):
        return self.maxpool_conv(x, train=train)


class Up(nn.Module):
    in_channels: Any
    out_channels: Any
    bilinear: bool = True
    # jaxport --layout nhwc: images are channels-last (N, H, W, C)
    jaxport_layout: ClassVar[dict] = {"inputs": ("x1", "x2"), "returns": True, "flatten_rows": {}}

    def setup(self):
        if self.bilinear:
            _up = partial(upsample_nhwc, scale_factor=2, mode="bilinear", align_corners=True)
            _conv = DoubleConv(self.in_channels, self.out_channels, self.in_channels // 2)
        else:
            _up = ConvTransposeNHWC(features=self.in_channels // 2, kernel_size=2, strides=2)
            _conv = DoubleConv(self.in_channels, self.out_channels)
        self.conv = _conv
        self.up = _up

    def __call__(self, x1, x2, train: bool = False):
        x1 = self.up(x1)
        # inputs may be CHW with odd sizes
        diffY = x2.shape[1] - x1.shape[1]
        diffX = x2.shape[2] - x1.shape[2]
        x1 = torch_pad(x1, [0, 0, diffX // 2, diffX - diffX // 2, diffY // 2, diffY - diffY // 2])
        x = jnp.concatenate([x2, x1], axis=3)
        return self.conv(x, train=train)


class UNet(nn.Module):
    n_channels: int = 3
    n_classes: int = 2
    base: int = 4
    bilinear: bool = True
    # jaxport --layout nhwc: images are channels-last (N, H, W, C)
    jaxport_layout: ClassVar[dict] = {"inputs": ("x",), "returns": True, "flatten_rows": {}}

    def setup(self):
        factor = 2 if self.bilinear else 1

        self.inc = DoubleConv(self.n_channels, self.base)
        self.down1 = Down(self.base, self.base * 2)
        self.down2 = Down(self.base * 2, self.base * 4 // factor)
        self.up1 = Up(self.base * 4, self.base * 2 // factor, self.bilinear)
        self.up2 = Up(self.base * 2, self.base, self.bilinear)
        self.outc = ConvNHWC(features=self.n_classes, kernel_size=1)

    def __call__(self, x, train: bool = False):
        x1 = self.inc(x, train=train)
        x2 = self.down1(x1, train=train)
        x3 = self.down2(x2, train=train)
        x = self.up1(x3, x2, train=train)
        x = self.up2(x, x1, train=train)
        logits = self.outc(x)
        return logits


class SegHead(nn.Module):
    """Predicts at 1/4 resolution and resizes back with F.interpolate."""
    in_ch: int = 3
    num_classes: int = 3
    # jaxport --layout nhwc: images are channels-last (N, H, W, C)
    jaxport_layout: ClassVar[dict] = {"inputs": ("x",), "returns": True, "flatten_rows": {}}

    def setup(self):
        self.stem = ConvNHWC(features=8, kernel_size=3, strides=2, padding=1)
        self.body = ConvNHWC(features=8, kernel_size=3, strides=2, padding=1)
        self.cls = ConvNHWC(features=self.num_classes, kernel_size=1)

    def __call__(self, x, train: bool = False):
        h, w = x.shape[1:3]
        y = jax.nn.relu(self.stem(x))
        y = jax.nn.relu(self.body(y))
        y = self.cls(y)
        y = upsample_nhwc(y, size=(h, w), mode="bilinear", align_corners=False)
        near = upsample_nhwc(y, scale_factor=0.5, mode="nearest")
        return y, near
