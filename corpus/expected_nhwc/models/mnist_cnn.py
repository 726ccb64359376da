"""The classic MNIST convnet: two convs, max pooling, dropout, log-softmax."""
import jax
import jax.numpy as jnp
import flax.linen as nn
import numpy as np
import math
from typing import Any
from typing import ClassVar


# --- helpers added by jaxport (PyTorch semantics in JAX) ---
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




class Net(nn.Module):
    num_classes: int = 10
    # jaxport --layout nhwc: images are channels-last (N, H, W, C)
    jaxport_layout: ClassVar[dict] = {"inputs": ("x",), "returns": False, "flatten_rows": {"fc1": "conv2"}}

    def setup(self):
        self.conv1 = ConvNHWC(features=8, kernel_size=3, strides=1)
        self.conv2 = ConvNHWC(features=16, kernel_size=3, strides=1)
        self.dropout1 = nn.Dropout(rate=0.25)
        self.dropout2 = nn.Dropout(rate=0.5)
        self.fc1 = nn.Dense(features=32, kernel_init=torch_kaiming_uniform(16 * 5 * 5), bias_init=torch_bias_uniform(16 * 5 * 5))
        self.fc2 = nn.Dense(features=self.num_classes, kernel_init=torch_kaiming_uniform(32), bias_init=torch_bias_uniform(32))

    def __call__(self, x, train: bool = False):
        x = self.conv1(x)
        x = jax.nn.relu(x)
        x = self.conv2(x)
        x = jax.nn.relu(x)
        x = max_pool_nhwc(x, 2)
        x = self.dropout1(x, deterministic=not train)
        x = jax.lax.collapse(x, 1)
        x = self.fc1(x)
        x = jax.nn.relu(x)
        x = self.dropout2(x, deterministic=not train)
        x = self.fc2(x)
        output = jax.nn.log_softmax(x, axis=1)
        return output
