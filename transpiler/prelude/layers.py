"""Channels-first (PyTorch layout) layers and functions for converted code.

Every helper takes and returns torch's layout: (N, C, L), (N, C, H, W), (N, C, D, H, W).
Int arguments are repeated over the spatial axes, as torch does. Parameters use flax names
(``kernel``, ``bias``, ``scale``) so weight transfer is mechanical.
"""
import math
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import flax.linen as nn


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


class Bilinear(nn.Module):
    """torch.nn.Bilinear: y = x1 @ kernel @ x2 + bias, ``kernel`` (in1, in2, out)."""
    features: int
    use_bias: bool = True
    kernel_init: Any = nn.initializers.lecun_normal()
    bias_init: Any = nn.initializers.zeros_init()

    @nn.compact
    def __call__(self, x1, x2):
        kernel = self.param("kernel", self.kernel_init, (x1.shape[-1], x2.shape[-1], self.features))
        y = jnp.einsum("...i,ijo,...j->...o", x1, kernel, x2)
        if self.use_bias:
            y = y + self.param("bias", self.bias_init, (self.features,))
        return y


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


class EmbedWithPadding(nn.Embed):
    """nn.Embed whose row ``padding_idx`` gets no gradient (torch.nn.Embedding(padding_idx=...))."""
    padding_idx: int = 0

    def __call__(self, inputs):
        y = super().__call__(inputs)
        padding = (inputs == self.padding_idx % self.num_embeddings)[..., None]
        return jnp.where(padding, jax.lax.stop_gradient(y), y)


class GroupNormNCHW(nn.GroupNorm):
    """nn.GroupNorm on channels-first input (N, C, ...); params as nn.GroupNorm."""

    def __call__(self, x, *args, **kwargs):
        y = super().__call__(jnp.moveaxis(x, 1, -1), *args, **kwargs)
        return jnp.moveaxis(y, -1, 1)


class PReLUNCHW(nn.Module):
    """torch.nn.PReLU: one slope per channel (axis 1), or one shared slope."""
    num_parameters: int = 1
    negative_slope_init: float = 0.25

    @nn.compact
    def __call__(self, x):
        slope = self.param("negative_slope", nn.initializers.constant(self.negative_slope_init),
                           (self.num_parameters,))
        if self.num_parameters > 1 and x.ndim >= 2:
            slope = slope.reshape((-1,) + (1,) * (x.ndim - 2))
        return jnp.where(x >= 0, x, slope.astype(x.dtype) * x)


class FlatDropout(nn.Dropout):
    """nn.Dropout with the same masks (same key, same bits), drawn over the flattened input:
    XLA:CPU vectorises random-bit loops over the last axis, which is short for channels-first
    activations (W = 5 in (N, C, 5, 5) makes the draw several times slower)."""

    @nn.compact
    def __call__(self, inputs, deterministic=None, rng=None):
        deterministic = nn.merge_param("deterministic", self.deterministic, deterministic)
        if self.rate == 0.0 or deterministic:
            return inputs
        if self.rate == 1.0:
            return jnp.zeros_like(inputs)
        keep_prob = 1.0 - self.rate
        if rng is None:
            rng = self.make_rng(self.rng_collection)
        shape = list(inputs.shape)
        for dim in self.broadcast_dims:
            shape[dim] = 1
        mask = jax.random.bernoulli(rng, p=keep_prob, shape=(math.prod(shape),)).reshape(shape)
        mask = jnp.broadcast_to(mask, inputs.shape)
        return jax.lax.select(mask, inputs / keep_prob, jnp.zeros_like(inputs))


class AlphaDropout(nn.Module):
    """torch.nn.AlphaDropout: dropout that keeps SELU's zero mean and unit variance."""
    rate: float = 0.5
    rng_collection: str = "dropout"

    @nn.compact
    def __call__(self, x, deterministic: bool = False):
        if deterministic or self.rate == 0.0:
            return x
        alpha = 1.7580993408473766
        a = 1.0 / math.sqrt((alpha * alpha * self.rate + 1) * (1 - self.rate))
        keep = jax.random.bernoulli(self.make_rng(self.rng_collection), 1.0 - self.rate, x.shape)
        return jnp.where(keep, a * x + alpha * a * self.rate, -alpha * a * (1 - self.rate)).astype(x.dtype)


# ---------------------------------------------------------------- pooling


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


def avg_pool_nchw(x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
                  divisor_override=None, spatial_dims=2):
    """torch avg_pool{1,2,3}d over the last ``spatial_dims`` axes (same divisors as torch)."""
    lead = x.ndim - spatial_dims
    geo = pool_geometry(x.shape[lead:], kernel_size, stride, padding, 1, ceil_mode)
    total = jax.lax.reduce_window(
        x, np.array(0, x.dtype), jax.lax.add, (1,) * lead + tuple(g[0] for g in geo),
        (1,) * lead + tuple(g[1] for g in geo), [(0, 0)] * lead + [(g[3], g[4]) for g in geo])
    if divisor_override:
        return total / divisor_override
    count = np.ones((), np.float64)
    for size, (k, s, _, p, high) in zip(x.shape[lead:], geo):
        mask = np.zeros(p + size + high)
        if count_include_pad:
            mask[: size + 2 * p] = 1
        else:
            mask[p: p + size] = 1
        n = total.shape[lead + count.ndim]
        per_axis = np.array([mask[i * s: i * s + k].sum() for i in range(n)])
        count = count[..., None] * per_axis
    return total / jnp.asarray(count, x.dtype)


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


def adaptive_max(windows, axis, valid):
    if valid is None:
        return jnp.max(windows, axis=axis)
    return jnp.max(jnp.where(valid, windows, -jnp.inf), axis=axis)


def adaptive_avg_pool_nchw(x, output_size, spatial_dims=2):
    """torch adaptive_avg_pool{1,2,3}d; ``None`` in ``output_size`` keeps that size."""
    sizes = ntuple(output_size, spatial_dims) if output_size is not None else (None,) * spatial_dims
    for i, size in enumerate(sizes):
        x = adaptive_pool_axis(x, x.ndim - spatial_dims + i, size, adaptive_mean)
    return x


def adaptive_max_pool_nchw(x, output_size, spatial_dims=2):
    """torch adaptive_max_pool{1,2,3}d; ``None`` in ``output_size`` keeps that size."""
    sizes = ntuple(output_size, spatial_dims) if output_size is not None else (None,) * spatial_dims
    for i, size in enumerate(sizes):
        x = adaptive_pool_axis(x, x.ndim - spatial_dims + i, size, adaptive_max)
    return x


def local_response_norm(x, size, alpha=1e-4, beta=0.75, k=1.0):
    """torch.nn.LocalResponseNorm: x / (k + alpha * mean of x^2 over ``size`` channels)^beta."""
    window = (1, size) + (1,) * (x.ndim - 2)
    pads = [(0, 0), (size // 2, (size - 1) // 2)] + [(0, 0)] * (x.ndim - 2)
    total = jax.lax.reduce_window(jnp.square(x), np.array(0, x.dtype), jax.lax.add, window,
                              (1,) * x.ndim, pads)
    return x / jnp.power(k + alpha * total / size, beta)


# ---------------------------------------------------------------- reshaping and resampling


def pad_nchw(x, pad, mode="constant", value=0.0, spatial_dims=None):
    """torch.nn.functional.pad: ``pad`` is (before, after) pairs starting from the LAST axis;
    negative amounts crop. An int pads the last ``spatial_dims`` axes on both sides (the
    torch padding layers). Modes: constant, reflect, replicate, circular."""
    if isinstance(pad, int):
        pad = (pad,) * (2 * spatial_dims)
    pairs = [(0, 0)] * x.ndim
    for i in range(len(pad) // 2):
        pairs[x.ndim - 1 - i] = (pad[2 * i], pad[2 * i + 1])
    grow = [(max(lo, 0), max(hi, 0)) for lo, hi in pairs]
    if mode == "constant":
        x = jnp.pad(x, grow, mode="constant", constant_values=value)
    else:
        x = jnp.pad(x, grow, mode=TORCH_PAD_MODES[mode])
    crop = tuple(slice(max(-lo, 0), x.shape[i] - max(-hi, 0)) for i, (lo, hi) in enumerate(pairs))
    return x[crop]


def flatten_dims(x, start_dim=0, end_dim=-1):
    """torch.flatten: merge axes ``start_dim`` .. ``end_dim`` (inclusive) into one."""
    start = start_dim % x.ndim if x.ndim else 0
    end = end_dim % x.ndim if x.ndim else 0
    return x.reshape(x.shape[:start] + (-1,) + x.shape[end + 1:])


def unflatten_dim(x, dim, sizes):
    """torch.unflatten: split axis ``dim`` into ``sizes`` (one entry may be -1)."""
    dim = dim % x.ndim
    return x.reshape(x.shape[:dim] + tuple(sizes) + x.shape[dim + 1:])


def identity(x, *args, **kwargs):
    """torch.nn.Identity: returns its input, ignoring any other argument."""
    return x


def pixel_shuffle(x, upscale_factor):
    """torch.nn.PixelShuffle: (*, C*r*r, H, W) -> (*, C, H*r, W*r)."""
    r = upscale_factor
    *lead, c, h, w = x.shape
    x = x.reshape(tuple(lead) + (c // (r * r), r, r, h, w))
    n = len(lead)
    x = jnp.transpose(x, tuple(range(n)) + (n, n + 3, n + 1, n + 4, n + 2))
    return x.reshape(tuple(lead) + (c // (r * r), h * r, w * r))


def pixel_unshuffle(x, downscale_factor):
    """torch.nn.PixelUnshuffle: (*, C, H*r, W*r) -> (*, C*r*r, H, W)."""
    r = downscale_factor
    *lead, c, h, w = x.shape
    x = x.reshape(tuple(lead) + (c, h // r, r, w // r, r))
    n = len(lead)
    x = jnp.transpose(x, tuple(range(n)) + (n, n + 2, n + 4, n + 1, n + 3))
    return x.reshape(tuple(lead) + (c * r * r, h // r, w // r))


def channel_shuffle(x, groups):
    """torch.nn.ChannelShuffle: (N, g*k, ...) channels reordered as k groups of g."""
    n, c = x.shape[:2]
    x = x.reshape((n, groups, c // groups) + x.shape[2:])
    return jnp.swapaxes(x, 1, 2).reshape((n, c) + x.shape[3:])


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


def upsample_nchw(x, size=None, scale_factor=None, mode="nearest", align_corners=None,
                  recompute_scale_factor=None):
    """torch.nn.Upsample / F.interpolate on (N, C, *spatial): modes nearest, nearest-exact,
    linear, bilinear, trilinear (``align_corners`` as torch) and area."""
    nd = x.ndim - 2
    if mode in ("bicubic",):
        raise NotImplementedError("interpolate mode 'bicubic' is not supported")
    if size is not None:
        sizes = ntuple(size, nd)
        scales = (None,) * nd
    else:
        scales = ntuple(scale_factor, nd)
        sizes = tuple(int(math.floor(n * s)) for n, s in zip(x.shape[2:], scales))
        if recompute_scale_factor:
            scales = (None,) * nd
    if mode == "area":
        return adaptive_avg_pool_nchw(x, sizes, spatial_dims=nd)
    for i in range(nd):
        x = resample_axis(x, 2 + i, sizes[i], scales[i], mode, align_corners)
    return x


# ---------------------------------------------------------------- activations


def apply_on_implicit_dim(fn, x):
    """``fn(x, axis=...)`` on the axis torch's Softmax picks when given no dim: 0 for 0-, 1- and
    3-d input, else 1 (deprecated torch behaviour)."""
    return fn(x, axis=0 if x.ndim in (0, 1, 3) else 1)


def softmin(x, axis=-1):
    """torch softmin: softmax of -x."""
    return jax.nn.softmax(-x, axis=axis)


def softplus_beta(x, beta=1.0, threshold=20.0):
    """torch softplus: log(1 + exp(beta * x)) / beta, linear where beta * x > threshold."""
    bx = beta * x
    soft = jnp.logaddexp(jnp.minimum(bx, threshold), 0.0) / beta
    return jnp.where(bx > threshold, x, soft)


def hardshrink(x, lambd=0.5):
    """torch hardshrink: x where |x| > lambd, else 0."""
    return jnp.where(jnp.abs(x) > lambd, x, jnp.zeros_like(x))


def softshrink(x, lambd=0.5):
    """torch softshrink: x shrunk towards 0 by lambd (0 inside [-lambd, lambd])."""
    return jnp.where(x > lambd, x - lambd, jnp.where(x < -lambd, x + lambd, jnp.zeros_like(x)))


def tanhshrink(x):
    """torch tanhshrink: x - tanh(x)."""
    return x - jnp.tanh(x)


def threshold_replace(x, threshold, value):
    """torch threshold: x where x > threshold, else ``value``."""
    return jnp.where(x > threshold, x, jnp.asarray(value, x.dtype))
