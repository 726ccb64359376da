"""Torch-semantics helpers for converted op calls (copied into converted files by name).

Each helper reproduces what the torch function computes where the plain jax.numpy spelling
differs (``torch.max`` with ``dim`` returning values and indices, ``split`` by sizes,
``squeeze(dim)`` being a no-op on non-1 dims, losses with ``reduction``/``ignore_index``,
NCHW pooling, ...). Shape logic runs in Python on static shapes, so every helper works under
``jax.jit``.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np


@jax.tree_util.register_pytree_node_class
class ValuesIndices(tuple):
    """``(values, indices)`` like torch's ``torch.return_types``: index it, unpack it, or use
    ``.values`` / ``.indices``; a pytree, so it may cross ``jax.jit`` boundaries."""

    def __new__(cls, values, indices):
        return tuple.__new__(cls, (values, indices))

    @property
    def values(self):
        return self[0]

    @property
    def indices(self):
        return self[1]

    def tree_flatten(self):
        return (self[0], self[1]), None

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(*children)


def torch_max_dim(x, dim, keepdim=False):
    """``torch.max(x, dim)``: the maxima and the index of the first maximum along ``dim``."""
    return ValuesIndices(jnp.max(x, axis=dim, keepdims=keepdim),
                         jnp.argmax(x, axis=dim, keepdims=keepdim))


def torch_min_dim(x, dim, keepdim=False):
    """``torch.min(x, dim)``: the minima and the index of the first minimum along ``dim``."""
    return ValuesIndices(jnp.min(x, axis=dim, keepdims=keepdim),
                         jnp.argmin(x, axis=dim, keepdims=keepdim))


def torch_sort(x, dim=-1, descending=False, stable=False):
    """``torch.sort``: (sorted values, indices); ties keep their original order."""
    indices = jnp.argsort(x, axis=dim, descending=descending, stable=True)
    return ValuesIndices(jnp.take_along_axis(x, indices, axis=dim), indices)


def torch_topk(x, k, dim=-1, largest=True, sorted=True):
    """``torch.topk``: the k largest (or smallest) entries along ``dim`` and their indices."""
    moved = jnp.moveaxis(x, dim, -1)
    values, indices = jax.lax.top_k(moved if largest else -moved, k)
    if not largest:
        values = -values
    return ValuesIndices(jnp.moveaxis(values, -1, dim), jnp.moveaxis(indices, -1, dim))


def torch_median(x, dim=None, keepdim=False):
    """``torch.median``: the lower median (torch never averages the two middle values);
    with ``dim``, (values, indices)."""
    if dim is None:
        flat = jnp.sort(jnp.ravel(x))
        return flat[(flat.shape[0] - 1) // 2]
    order = jnp.argsort(x, axis=dim, stable=True)
    middle = (x.shape[dim] - 1) // 2
    indices = jnp.take(order, jnp.array([middle]), axis=dim)
    values = jnp.take_along_axis(x, indices, axis=dim)
    if not keepdim:
        values, indices = jnp.squeeze(values, dim), jnp.squeeze(indices, dim)
    return ValuesIndices(values, indices)


def torch_split(x, split_size_or_sections, dim=0):
    """``torch.split``: an int is a chunk *size* (the last chunk may be smaller); a list gives
    the size of each piece (``jnp.split`` takes counts or cut indices instead)."""
    size = x.shape[dim]
    if isinstance(split_size_or_sections, int):
        cuts = list(range(split_size_or_sections, size, split_size_or_sections))
    else:
        cuts, total = [], 0
        for part in list(split_size_or_sections)[:-1]:
            total += int(part)
            cuts.append(total)
    return tuple(jnp.split(x, cuts, axis=dim))


def torch_chunk(x, chunks, dim=0):
    """``torch.chunk``: pieces of ``ceil(size / chunks)`` along ``dim`` (possibly fewer than
    ``chunks`` pieces, unlike ``jnp.array_split``)."""
    step = -(-x.shape[dim] // chunks)
    return torch_split(x, max(step, 1), dim)


def torch_squeeze(x, dim=None):
    """``torch.squeeze``: with ``dim`` (an int or a tuple), drop only those axes of size 1;
    axes of another size are kept (jnp.squeeze raises there)."""
    if dim is None:
        return jnp.squeeze(x)
    dims = dim if isinstance(dim, (tuple, list)) else (dim,)
    keep = tuple(d % x.ndim for d in dims if x.shape[d] == 1) if x.ndim else ()
    return jnp.squeeze(x, axis=keep) if keep else x


def torch_expand(x, *sizes):
    """``Tensor.expand``: broadcast to ``sizes``; ``-1`` keeps the existing size."""
    if len(sizes) == 1 and not isinstance(sizes[0], int):
        sizes = tuple(sizes[0])
    lead = len(sizes) - x.ndim
    shape = tuple(x.shape[i - lead] if s == -1 else s for i, s in enumerate(sizes))
    return jnp.broadcast_to(x, shape)


def torch_flatten(x, start_dim=0, end_dim=-1):
    """``torch.flatten``: merge axes ``start_dim..end_dim`` (inclusive) into one."""
    if x.ndim == 0:
        return jnp.reshape(x, (1,))
    start, end = start_dim % x.ndim, end_dim % x.ndim
    return jnp.reshape(x, x.shape[:start] + (-1,) + x.shape[end + 1:])


def _index_grid(index, dim):
    grids = list(jnp.meshgrid(*[jnp.arange(n) for n in index.shape], indexing="ij"))
    grids[dim] = index
    return tuple(grids)


def torch_unfold_dim(x, dimension, size, step):
    """``Tensor.unfold``: all windows of ``size`` along ``dimension`` taken every ``step``;
    that axis becomes the window count and a trailing axis of ``size`` is added."""
    axis = dimension % x.ndim
    count = (x.shape[axis] - size) // step + 1
    index = jnp.arange(count)[:, None] * step + jnp.arange(size)[None, :]
    return jnp.moveaxis(jnp.take(x, index, axis=axis), axis + 1, -1)


def torch_gather(x, dim, index):
    """``torch.gather``: out[i][j] = x[index[i][j]][j] (dim 0); ``index`` may be smaller than
    ``x`` in the other axes (those are cut, never broadcast)."""
    cut = tuple(slice(None) if d == dim % x.ndim else slice(0, index.shape[d]) for d in range(x.ndim))
    return jnp.take_along_axis(x[cut], index, axis=dim)


def torch_scatter(x, dim, index, src, reduce=None):
    """``Tensor.scatter`` (out of place): x[index[i][j]][j] = src[i][j] (dim 0); ``src`` may be
    a scalar; ``reduce`` "add"/"multiply" combine instead of overwriting."""
    where = _index_grid(index, dim % x.ndim)
    if not jnp.ndim(src) == 0:
        src = src[tuple(slice(0, n) for n in index.shape)]
    if reduce == "add":
        return x.at[where].add(src)
    if reduce == "multiply":
        return x.at[where].multiply(src)
    return x.at[where].set(src)


def torch_scatter_add(x, dim, index, src):
    """``Tensor.scatter_add`` (out of place): sums ``src`` into ``x`` at ``index`` along ``dim``."""
    return torch_scatter(x, dim, index, src, reduce="add")


def torch_index_fill(x, dim, index, value):
    """``Tensor.index_fill`` (out of place): set the slices ``index`` along ``dim`` to ``value``."""
    where = (slice(None),) * (dim % x.ndim) + (index,)
    return x.at[where].set(value)


def torch_index_add(x, dim, index, source, alpha=1):
    """``Tensor.index_add`` (out of place): add ``alpha * source`` slices at ``index`` along ``dim``."""
    where = (slice(None),) * (dim % x.ndim) + (index,)
    return x.at[where].add(alpha * source)


def torch_div(a, b, rounding_mode=None):
    """``torch.div``: true division, or ``rounding_mode`` "trunc" / "floor"."""
    if rounding_mode is None:
        return jnp.true_divide(a, b)
    if rounding_mode == "floor":
        return jnp.floor_divide(a, b)
    if rounding_mode == "trunc":
        quotient = jnp.true_divide(a, b)
        if jnp.issubdtype(jnp.result_type(a, b), jnp.integer):
            return jnp.trunc(quotient).astype(jnp.result_type(a, b))
        return jnp.trunc(quotient)
    raise ValueError(f"div: unknown rounding_mode {rounding_mode!r}")


def torch_norm(x, p="fro", dim=None, keepdim=False):
    """``torch.norm`` / ``Tensor.norm``: a vector p-norm over ``dim`` (all elements when
    None, never a matrix norm), Frobenius for "fro", nuclear for "nuc"."""
    if p == "nuc":
        return jnp.linalg.norm(x, ord="nuc", axis=dim if dim is not None else (-2, -1), keepdims=keepdim)
    if p == "fro" or p is None:
        p = 2
    axis = tuple(dim) if isinstance(dim, (list, tuple)) else dim
    a = jnp.abs(x)
    if p == math.inf:
        return jnp.max(a, axis=axis, keepdims=keepdim)
    if p == -math.inf:
        return jnp.min(a, axis=axis, keepdims=keepdim)
    if p == 0:
        return jnp.sum(a != 0, axis=axis, keepdims=keepdim).astype(x.dtype)
    if p == 1:
        return jnp.sum(a, axis=axis, keepdims=keepdim)
    if p == 2:
        return jnp.sqrt(jnp.sum(a * a, axis=axis, keepdims=keepdim))
    return jnp.sum(a ** p, axis=axis, keepdims=keepdim) ** (1.0 / p)


def torch_normalize(x, p=2.0, dim=1, eps=1e-12):
    """``F.normalize``: x / max(||x||_p over dim, eps)."""
    return x / jnp.maximum(torch_norm(x, p, dim, keepdim=True), eps)


def torch_cosine_similarity(x1, x2, dim=1, eps=1e-8):
    """``F.cosine_similarity``: each input is divided by max(its 2-norm, eps) first, as torch does."""
    n1 = jnp.sqrt(jnp.sum(x1 * x1, axis=dim, keepdims=True))
    n2 = jnp.sqrt(jnp.sum(x2 * x2, axis=dim, keepdims=True))
    return jnp.sum((x1 / jnp.maximum(n1, eps)) * (x2 / jnp.maximum(n2, eps)), axis=dim)


def torch_pairwise_distance(x1, x2, p=2.0, eps=1e-6, keepdim=False):
    """``F.pairwise_distance``: ||x1 - x2 + eps||_p over the last axis."""
    return torch_norm(x1 - x2 + eps, p, -1, keepdim)


def torch_cdist(x1, x2, p=2.0):
    """``torch.cdist``: p-norm distance between each row of x1 and each row of x2."""
    diff = x1[..., :, None, :] - x2[..., None, :, :]
    return torch_norm(diff, p, -1)


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


def _resize_axis(x, axis, out_size, mode, align_corners, scale):
    in_size = x.shape[axis]
    out = jnp.arange(out_size, dtype=jnp.float32)
    if mode == "nearest":
        ratio = 1.0 / scale if scale else in_size / out_size
        src = jnp.minimum(jnp.floor(out * ratio).astype(jnp.int32), in_size - 1)
        return jnp.take(x, src, axis=axis)
    if mode == "nearest-exact":
        ratio = 1.0 / scale if scale else in_size / out_size
        src = jnp.minimum(jnp.floor((out + 0.5) * ratio).astype(jnp.int32), in_size - 1)
        return jnp.take(x, src, axis=axis)
    if align_corners:
        ratio = (in_size - 1) / (out_size - 1) if out_size > 1 else 0.0
        pos = out * ratio
    else:
        ratio = 1.0 / scale if scale else in_size / out_size
        pos = jnp.maximum((out + 0.5) * ratio - 0.5, 0.0)
    lo = jnp.minimum(jnp.floor(pos).astype(jnp.int32), in_size - 1)
    hi = jnp.minimum(lo + 1, in_size - 1)
    w = (pos - lo).astype(x.dtype)
    shape = [1] * x.ndim
    shape[axis] = out_size
    w = w.reshape(shape)
    return jnp.take(x, lo, axis=axis) * (1 - w) + jnp.take(x, hi, axis=axis) * w


def torch_interpolate(x, size=None, scale_factor=None, mode="nearest", align_corners=None,
                      recompute_scale_factor=None):
    """``F.interpolate`` on channels-first input (N, C, *spatial): modes nearest,
    nearest-exact, linear, bilinear, trilinear (separable, same sample points as torch)."""
    spatial = x.ndim - 2
    if size is not None:
        sizes = tuple(size) if isinstance(size, (tuple, list)) else (size,) * spatial
        scales = (None,) * spatial
    else:
        scales = tuple(scale_factor) if isinstance(scale_factor, (tuple, list)) else (scale_factor,) * spatial
        sizes = tuple(int(math.floor(x.shape[2 + i] * scales[i])) for i in range(spatial))
        if recompute_scale_factor:
            scales = (None,) * spatial
    if mode in ("linear", "bilinear", "trilinear"):
        mode = "linear"
    elif mode not in ("nearest", "nearest-exact"):
        raise NotImplementedError(f"interpolate: mode {mode!r} is not supported")
    for i in range(spatial):
        x = _resize_axis(x, 2 + i, sizes[i], mode, align_corners, scales[i])
    return x


def _tuple(v, n):
    return tuple(v) if isinstance(v, (tuple, list)) else (v,) * n


def torch_conv(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """``F.conv1d/2d/3d`` on channels-first input with a torch-layout (O, I/groups, *k) weight."""
    n = weight.ndim - 2
    if isinstance(padding, str):
        pad = padding.upper()
    else:
        pad = [(p, p) for p in _tuple(padding, n)]
    spatial = "DHW"[-n:] if n <= 3 else None
    dims = ("NC" + spatial, "OI" + spatial, "NC" + spatial)
    out = jax.lax.conv_general_dilated(x, weight, _tuple(stride, n), pad, rhs_dilation=_tuple(dilation, n),
                                       dimension_numbers=dims, feature_group_count=groups,
                                       precision=jax.lax.Precision.HIGHEST)
    if bias is not None:
        out = out + bias.reshape((1, -1) + (1,) * n)
    return out


def torch_conv_transpose(x, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1):
    """``F.conv_transpose1d/2d/3d`` on channels-first input with a torch-layout
    (I, O/groups, *k) weight: a dilated convolution with the flipped kernel."""
    n = weight.ndim - 2
    stride, padding = _tuple(stride, n), _tuple(padding, n)
    output_padding, dilation = _tuple(output_padding, n), _tuple(dilation, n)
    cin, cout_g = weight.shape[0], weight.shape[1]
    k = weight.shape[2:]
    w = weight.reshape((groups, cin // groups, cout_g) + k)
    w = jnp.swapaxes(w, 1, 2).reshape((groups * cout_g, cin // groups) + k)
    w = jnp.flip(w, axis=tuple(range(2, 2 + n)))
    pads = [(dilation[i] * (k[i] - 1) - padding[i], dilation[i] * (k[i] - 1) - padding[i] + output_padding[i])
            for i in range(n)]
    spatial = "DHW"[-n:]
    out = jax.lax.conv_general_dilated(x, w, (1,) * n, pads, lhs_dilation=stride, rhs_dilation=dilation,
                                       dimension_numbers=("NC" + spatial, "OI" + spatial, "NC" + spatial),
                                       feature_group_count=groups, precision=jax.lax.Precision.HIGHEST)
    if bias is not None:
        out = out + bias.reshape((1, -1) + (1,) * n)
    return out


def torch_unfold(x, kernel_size, dilation=1, padding=0, stride=1):
    """``F.unfold`` (im2col) on (N, C, H, W): (N, C*kh*kw, L) with channels as the major index."""
    patches = jax.lax.conv_general_dilated_patches(
        x, _tuple(kernel_size, 2), _tuple(stride, 2), [(p, p) for p in _tuple(padding, 2)],
        rhs_dilation=_tuple(dilation, 2), dimension_numbers=("NCHW", "OIHW", "NCHW"),
        precision=jax.lax.Precision.HIGHEST)
    return patches.reshape(patches.shape[0], patches.shape[1], -1)


def _pool_padding(size, kernel, stride, pad, dilation, ceil_mode):
    span = dilation * (kernel - 1) + 1
    if ceil_mode:
        out = -(-(size + 2 * pad - span) // stride) + 1
        if (out - 1) * stride >= size + pad:
            out -= 1
    else:
        out = (size + 2 * pad - span) // stride + 1
    hi = (out - 1) * stride + span - size - pad
    return (pad, max(hi, 0))


def _pool(x, n, kernel_size, stride, padding, dilation, ceil_mode, init, op):
    kernel = _tuple(kernel_size, n)
    stride = _tuple(stride if stride not in (None, []) else kernel_size, n)
    padding, dilation = _tuple(padding, n), _tuple(dilation, n)
    pads = [_pool_padding(x.shape[x.ndim - n + i], kernel[i], stride[i], padding[i], dilation[i], ceil_mode)
            for i in range(n)]
    lead = x.ndim - n
    return jax.lax.reduce_window(x, init, op, (1,) * lead + kernel, (1,) * lead + stride,
                                 [(0, 0)] * lead + pads, window_dilation=(1,) * lead + dilation), pads


def torch_max_pool(x, n, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
    """``F.max_pool{n}d`` on channels-first input (padding counts as -inf)."""
    out, _ = _pool(x, n, kernel_size, stride, padding, dilation, ceil_mode, -jnp.inf, jax.lax.max)
    return out


def torch_max_pool1d(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
    """``F.max_pool1d`` on (N, C, L) input."""
    return torch_max_pool(x, 1, kernel_size, stride, padding, dilation, ceil_mode)


def torch_max_pool2d(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
    """``F.max_pool2d`` on (N, C, H, W) input."""
    return torch_max_pool(x, 2, kernel_size, stride, padding, dilation, ceil_mode)


def torch_avg_pool(x, n, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
                   divisor_override=None):
    """``F.avg_pool{n}d`` on channels-first input, with torch's divisor rules (a NumPy zero as
    the initial value, so that ``reduce_window`` is a differentiable window sum under ``jit``)."""
    total, pads = _pool(x, n, kernel_size, stride, padding, 1, ceil_mode, np.zeros((), x.dtype), jax.lax.add)
    if divisor_override:
        return total / divisor_override
    kernel = _tuple(kernel_size, n)
    stride_ = _tuple(stride if stride not in (None, []) else kernel_size, n)
    padding_ = _tuple(padding, n)
    spatial = x.shape[x.ndim - n:]
    if count_include_pad:
        ones = jnp.ones(tuple(s + 2 * p for s, p in zip(spatial, padding_)), x.dtype)
        extra = [(0, max(hi - lo, 0)) for lo, hi in pads]
    else:
        ones = jnp.ones(spatial, x.dtype)
        extra = pads
    counts = jax.lax.reduce_window(ones, np.zeros((), x.dtype), jax.lax.add, kernel, stride_, extra)
    return total / counts


def torch_avg_pool1d(x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True):
    """``F.avg_pool1d`` on (N, C, L) input."""
    return torch_avg_pool(x, 1, kernel_size, stride, padding, ceil_mode, count_include_pad)


def torch_avg_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
                     divisor_override=None):
    """``F.avg_pool2d`` on (N, C, H, W) input."""
    return torch_avg_pool(x, 2, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)


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


def torch_adaptive_avg_pool1d(x, output_size):
    """``F.adaptive_avg_pool1d`` on (N, C, L) input."""
    return torch_adaptive_pool(x, output_size, 1, jnp.mean)


def torch_adaptive_avg_pool2d(x, output_size):
    """``F.adaptive_avg_pool2d`` on (N, C, H, W) input."""
    return torch_adaptive_pool(x, output_size, 2, jnp.mean)


def torch_adaptive_max_pool2d(x, output_size):
    """``F.adaptive_max_pool2d`` on (N, C, H, W) input (values only)."""
    return torch_adaptive_pool(x, output_size, 2, jnp.max)


def torch_pixel_shuffle(x, upscale_factor):
    """``F.pixel_shuffle``: (N, C*r*r, H, W) -> (N, C, H*r, W*r)."""
    r = upscale_factor
    n, c, h, w = x.shape
    x = x.reshape(n, c // (r * r), r, r, h, w)
    return x.transpose(0, 1, 4, 2, 5, 3).reshape(n, c // (r * r), h * r, w * r)


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


def torch_group_norm(x, num_groups, weight=None, bias=None, eps=1e-5):
    """``F.group_norm`` on channels-first input."""
    n, c = x.shape[0], x.shape[1]
    g = x.reshape((n, num_groups, -1))
    mean = jnp.mean(g, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(g - mean), axis=-1, keepdims=True)
    out = ((g - mean) * jax.lax.rsqrt(var + eps)).reshape(x.shape)
    shape = (1, c) + (1,) * (x.ndim - 2)
    if weight is not None:
        out = out * weight.reshape(shape)
    if bias is not None:
        out = out + bias.reshape(shape)
    return out


def torch_dropout(x, p, training, rng_key):
    """``F.dropout``: identity unless ``training``; otherwise zero each element with
    probability ``p`` and scale the rest by 1/(1-p). Needs an explicit PRNG key."""
    if not training or p == 0:
        return x
    if p == 1:
        return jnp.zeros_like(x)
    # drawn flat (same bits as drawing x.shape): XLA:CPU vectorises RNG loops over the
    # last axis, which is short for channels-first activations (e.g. 5 for (N, C, 5, 5))
    keep = jax.random.bernoulli(rng_key, 1.0 - p, (x.size,)).reshape(x.shape)
    return jnp.where(keep, x / (1.0 - p), jnp.zeros((), x.dtype))


def torch_dropout_channels(x, p, training, rng_key):
    """``F.dropout1d/2d/3d``: drop whole channels of (N, C, ...) input."""
    if not training or p == 0:
        return x
    shape = x.shape[:2] + (1,) * (x.ndim - 2)
    keep = jax.random.bernoulli(rng_key, 1.0 - p, (math.prod(shape),)).reshape(shape)
    return jnp.where(keep, x / (1.0 - p), jnp.zeros((), x.dtype))


def torch_sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
               enable_gqa=False, rng_key=None):
    """``F.scaled_dot_product_attention`` on (..., heads, L, E) inputs: a boolean mask marks
    the positions that take part, a float mask is added; ``is_causal`` keeps key j <= query i."""
    length, source = query.shape[-2], key.shape[-2]
    if enable_gqa and key.shape[-3] != query.shape[-3]:
        repeat = query.shape[-3] // key.shape[-3]
        key = jnp.repeat(key, repeat, axis=-3)
        value = jnp.repeat(value, repeat, axis=-3)
    factor = 1.0 / math.sqrt(query.shape[-1]) if scale is None else scale
    scores = jnp.matmul(query, jnp.swapaxes(key, -1, -2), precision=jax.lax.Precision.HIGHEST) * factor
    if is_causal:
        causal = jnp.tril(jnp.ones((length, source), dtype=bool))
        scores = jnp.where(causal, scores, -jnp.inf)
    if attn_mask is not None:
        if attn_mask.dtype == jnp.bool_:
            scores = jnp.where(attn_mask, scores, -jnp.inf)
        else:
            scores = scores + attn_mask
    weights = jax.nn.softmax(scores, axis=-1)
    # like torch's math kernel, a query that may attend to nothing gets zeros, not NaN
    weights = jnp.where(jnp.isneginf(jnp.max(scores, axis=-1, keepdims=True)), 0.0, weights)
    if dropout_p and rng_key is not None:
        weights = torch_dropout(weights, dropout_p, True, rng_key)
    return jnp.matmul(weights, value, precision=jax.lax.Precision.HIGHEST)


def torch_multinomial(rng_key, probs, num_samples, replacement=False):
    """``torch.multinomial``: indices drawn from the rows of ``probs`` (unnormalised weights);
    without replacement via the Gumbel top-k trick."""
    logits = jnp.log(probs)
    if replacement:
        shape = probs.shape[:-1] + (num_samples,)
        gumbel = jax.random.gumbel(rng_key, shape + probs.shape[-1:], logits.dtype)
        return jnp.argmax(logits[..., None, :] + gumbel, axis=-1)
    gumbel = jax.random.gumbel(rng_key, probs.shape, logits.dtype)
    return jax.lax.top_k(logits + gumbel, num_samples)[1]


def torch_gumbel_softmax(rng_key, logits, tau=1.0, hard=False, dim=-1):
    """``F.gumbel_softmax``: softmax((logits + Gumbel noise) / tau); with ``hard``, the one-hot
    argmax in the forward pass and the soft sample's gradient (straight-through)."""
    gumbels = jax.random.gumbel(rng_key, logits.shape, logits.dtype)
    soft = jax.nn.softmax((logits + gumbels) / tau, axis=dim)
    if not hard:
        return soft
    index = jnp.argmax(soft, axis=dim)
    one_hot = jnp.moveaxis(jax.nn.one_hot(index, soft.shape[dim], dtype=soft.dtype), -1, dim)
    return one_hot - jax.lax.stop_gradient(soft) + soft


# ------------------------------------------------------------------------------ losses


def torch_reduce(loss, reduction="mean"):
    """Apply a torch loss ``reduction``: "mean", "sum" or "none"."""
    if reduction == "mean":
        return jnp.mean(loss)
    if reduction == "sum":
        return jnp.sum(loss)
    if reduction == "none":
        return loss
    raise ValueError(f"unknown reduction {reduction!r}")


def torch_mse_loss(input, target, reduction="mean"):
    """``F.mse_loss``."""
    return torch_reduce(jnp.square(input - target), reduction)


def torch_l1_loss(input, target, reduction="mean"):
    """``F.l1_loss``."""
    return torch_reduce(jnp.abs(input - target), reduction)


def torch_smooth_l1_loss(input, target, reduction="mean", beta=1.0):
    """``F.smooth_l1_loss``: 0.5*d^2/beta where |d| < beta, else |d| - 0.5*beta."""
    d = jnp.abs(input - target)
    if beta == 0:
        return torch_reduce(d, reduction)
    return torch_reduce(jnp.where(d < beta, 0.5 * d * d / beta, d - 0.5 * beta), reduction)


def torch_huber_loss(input, target, reduction="mean", delta=1.0):
    """``F.huber_loss``: 0.5*d^2 where |d| < delta, else delta*(|d| - 0.5*delta)."""
    d = jnp.abs(input - target)
    return torch_reduce(jnp.where(d < delta, 0.5 * d * d, delta * (d - 0.5 * delta)), reduction)


def torch_binary_cross_entropy(input, target, weight=None, reduction="mean"):
    """``F.binary_cross_entropy`` on probabilities; logs are clamped at -100 like torch."""
    log_p = jnp.maximum(jnp.log(input), -100.0)
    log_q = jnp.maximum(jnp.log1p(-input), -100.0)
    loss = -(target * log_p + (1 - target) * log_q)
    if weight is not None:
        loss = loss * weight
    return torch_reduce(loss, reduction)


def torch_binary_cross_entropy_with_logits(input, target, weight=None, reduction="mean", pos_weight=None):
    """``F.binary_cross_entropy_with_logits`` (numerically stable, optional ``pos_weight``)."""
    log_sig = jax.nn.log_sigmoid(input)
    log_sig_neg = jax.nn.log_sigmoid(-input)
    if pos_weight is not None:
        loss = -(pos_weight * target * log_sig + (1 - target) * log_sig_neg)
    else:
        loss = -(target * log_sig + (1 - target) * log_sig_neg)
    if weight is not None:
        loss = loss * weight
    return torch_reduce(loss, reduction)


def torch_nll_loss(input, target, weight=None, ignore_index=-100, reduction="mean"):
    """``F.nll_loss`` on log-probabilities with classes on axis 1 (axis 0 when unbatched);
    "mean" divides by the summed weights of the targets that are not ``ignore_index``."""
    axis = 1 if input.ndim > 1 else 0
    valid = target != ignore_index
    safe = jnp.where(valid, target, 0)
    picked = jnp.squeeze(jnp.take_along_axis(input, jnp.expand_dims(safe, axis), axis=axis), axis)
    w = jnp.ones_like(picked) if weight is None else weight[safe]
    w = jnp.where(valid, w, 0.0)
    loss = -picked * w
    if reduction == "mean":
        return jnp.sum(loss) / jnp.sum(w)
    return torch_reduce(loss, reduction)


def torch_cross_entropy(input, target, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0):
    """``F.cross_entropy``: logits with classes on axis 1 (axis 0 when unbatched); ``target``
    holds class indices (honouring ``weight``, ``ignore_index``, ``label_smoothing``) or,
    when it has the input's shape and a float dtype, class probabilities."""
    axis = 1 if input.ndim > 1 else 0
    classes = input.shape[axis]
    logp = jax.nn.log_softmax(input, axis=axis)
    wshape = [1] * input.ndim
    wshape[axis] = classes
    if jnp.issubdtype(target.dtype, jnp.floating):
        if label_smoothing:
            target = target * (1 - label_smoothing) + label_smoothing / classes
        weighted = logp if weight is None else logp * weight.reshape(wshape)
        loss = -jnp.sum(weighted * target, axis=axis)
        if reduction == "mean":
            return jnp.sum(loss) / (loss.size if loss.ndim else 1)
        return torch_reduce(loss, reduction)
    nll = torch_nll_loss(logp, target, weight, ignore_index, reduction)
    if not label_smoothing:
        return nll
    valid = target != ignore_index
    weighted = logp if weight is None else logp * weight.reshape(wshape)
    smooth = jnp.where(valid, -jnp.sum(weighted, axis=axis), 0.0)
    if reduction == "mean":
        if weight is None:
            smooth = jnp.sum(smooth) / jnp.sum(valid)
        else:
            smooth = jnp.sum(smooth) / jnp.sum(jnp.where(valid, weight[jnp.where(valid, target, 0)], 0.0))
    else:
        smooth = torch_reduce(smooth, reduction)
    return (1 - label_smoothing) * nll + label_smoothing / classes * smooth


def torch_kl_div(input, target, reduction="mean", log_target=False):
    """``F.kl_div``: ``input`` holds log-probabilities; pointwise target*(log target - input)
    (0 where target is 0); "batchmean" divides the sum by the batch size."""
    if log_target:
        loss = jnp.exp(target) * (target - input)
    else:
        loss = jax.scipy.special.xlogy(target, target) - target * input
    if reduction == "batchmean":
        return jnp.sum(loss) / (input.shape[0] if input.ndim else 1)
    return torch_reduce(loss, reduction)


def torch_margin_ranking_loss(input1, input2, target, margin=0.0, reduction="mean"):
    """``F.margin_ranking_loss``: max(0, -target * (input1 - input2) + margin)."""
    return torch_reduce(jnp.maximum(0.0, -target * (input1 - input2) + margin), reduction)


def torch_cosine_embedding_loss(input1, input2, target, margin=0.0, reduction="mean"):
    """``F.cosine_embedding_loss``: 1 - cos for target 1, max(0, cos - margin) for target -1."""
    eps = 1e-12
    dot = jnp.sum(input1 * input2, axis=-1)
    norms = jnp.sqrt((jnp.sum(input1 * input1, axis=-1) + eps) * (jnp.sum(input2 * input2, axis=-1) + eps))
    cos = dot / norms
    loss = jnp.where(target == 1, 1.0 - cos, jnp.where(target == -1, jnp.maximum(0.0, cos - margin), 0.0))
    return torch_reduce(loss, reduction)


def torch_triplet_margin_loss(anchor, positive, negative, margin=1.0, p=2.0, eps=1e-6, swap=False,
                              reduction="mean"):
    """``F.triplet_margin_loss``: max(d(a, p) - d(a, n) + margin, 0) with pairwise p-norm distances."""
    d_pos = torch_pairwise_distance(anchor, positive, p, eps)
    d_neg = torch_pairwise_distance(anchor, negative, p, eps)
    if swap:
        d_neg = jnp.minimum(d_neg, torch_pairwise_distance(positive, negative, p, eps))
    return torch_reduce(jnp.maximum(d_pos - d_neg + margin, 0.0), reduction)


def torch_soft_margin_loss(input, target, reduction="mean"):
    """``F.soft_margin_loss``: log(1 + exp(-target * input))."""
    return torch_reduce(jax.nn.softplus(-target * input), reduction)


def torch_poisson_nll_loss(input, target, log_input=True, full=False, eps=1e-8, reduction="mean"):
    """``F.poisson_nll_loss`` (with the Stirling term when ``full``)."""
    if log_input:
        loss = jnp.exp(input) - target * input
    else:
        loss = input - target * jnp.log(input + eps)
    if full:
        stirling = target * jnp.log(target) - target + 0.5 * jnp.log(2 * jnp.pi * target)
        loss = loss + jnp.where(target > 1, stirling, 0.0)
    return torch_reduce(loss, reduction)


def torch_gaussian_nll_loss(input, target, var, full=False, eps=1e-6, reduction="mean"):
    """``F.gaussian_nll_loss``: 0.5 * (log(max(var, eps)) + (input - target)^2 / max(var, eps))."""
    if var.ndim == input.ndim - 1:
        var = var[..., None]  # one variance per sample
    var = jnp.maximum(var, eps)
    loss = 0.5 * (jnp.log(var) + jnp.square(input - target) / var)
    if full:
        loss = loss + 0.5 * math.log(2 * math.pi)
    return torch_reduce(loss, reduction)


def torch_cat(tensors, dim=0):
    """``torch.cat`` passed as a function (``partial(torch.cat, dim=-1)``): torch's names."""
    return jnp.concatenate(tensors, axis=dim)


def torch_stack(tensors, dim=0):
    """``torch.stack`` passed as a function (``map(partial(torch.stack, dim=1), ...)``)."""
    return jnp.stack(tensors, axis=dim)


class Float32Context:
    """What ``torch.autocast(...)`` becomes: converted code computes in float32 (mixed precision
    is a dtype policy of the flax layers), so the block, or the decorated function, runs as it
    is. Usable as ``with Float32Context():`` and as ``@Float32Context()``."""

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        return False

    def __call__(self, fn):
        return fn
