"""Channels-last (N, H, W, C) layers and functions for ``jaxport convert --layout nhwc``.

Same fields, parameters and torch semantics as the channels-first helpers of ``layers.py``
(torch padding and init, torch pooling sizes and divisors, torch resampling), with the channel
axis last, where flax and XLA want it. The spatial axes are 1 .. ndim - 2.
"""
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import flax.linen as nn


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


def avg_pool_nhwc(x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
                  divisor_override=None):
    """torch avg_pool2d (1d/3d alike) on channels-last input, with torch's divisors."""
    geo = pool_geometry(x.shape[1:-1], kernel_size, stride, padding, 1, ceil_mode)
    total = jax.lax.reduce_window(
        x, np.array(0, x.dtype), jax.lax.add, (1,) + tuple(g[0] for g in geo) + (1,),
        (1,) + tuple(g[1] for g in geo) + (1,), [(0, 0)] + [(g[3], g[4]) for g in geo] + [(0, 0)])
    if divisor_override:
        return total / divisor_override
    count = np.ones((), np.float64)
    for i, (size, (k, s, _, p, high)) in enumerate(zip(x.shape[1:-1], geo)):
        mask = np.zeros(p + size + high)
        if count_include_pad:
            mask[: size + 2 * p] = 1
        else:
            mask[p: p + size] = 1
        per_axis = np.array([mask[j * s: j * s + k].sum() for j in range(total.shape[1 + i])])
        count = count[..., None] * per_axis
    return total / jnp.asarray(count[..., None], x.dtype)


def adaptive_avg_pool_nhwc(x, output_size):
    """torch adaptive_avg_pool2d on channels-last input; ``None`` keeps that size."""
    nd = x.ndim - 2
    sizes = ntuple(output_size, nd) if output_size is not None else (None,) * nd
    for i, size in enumerate(sizes):
        x = adaptive_pool_axis(x, 1 + i, size, adaptive_mean)
    return x


def adaptive_max_pool_nhwc(x, output_size):
    """torch adaptive_max_pool2d on channels-last input (values only)."""
    nd = x.ndim - 2
    sizes = ntuple(output_size, nd) if output_size is not None else (None,) * nd
    for i, size in enumerate(sizes):
        x = adaptive_pool_axis(x, 1 + i, size, adaptive_max)
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
