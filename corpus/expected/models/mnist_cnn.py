"""The classic MNIST convnet: two convs, max pooling, dropout, log-softmax."""
import jax
import jax.numpy as jnp
import flax.linen as nn
import math
from typing import Any


# --- helpers added by jaxport (PyTorch semantics in JAX) ---
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


def _tuple(v, n):
    return tuple(v) if isinstance(v, (tuple, list)) else (v,) * n


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


def torch_max_pool2d(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
    """``F.max_pool2d`` on (N, C, H, W) input."""
    return torch_max_pool(x, 2, kernel_size, stride, padding, dilation, ceil_mode)




class Net(nn.Module):
    num_classes: int = 10

    def setup(self):
        self.conv1 = ConvNCHW(features=8, kernel_size=3, strides=1)
        self.conv2 = ConvNCHW(features=16, kernel_size=3, strides=1)
        self.dropout1 = nn.Dropout(rate=0.25)
        self.dropout2 = nn.Dropout(rate=0.5)
        self.fc1 = nn.Dense(features=32, kernel_init=torch_kaiming_uniform(16 * 5 * 5), bias_init=torch_bias_uniform(16 * 5 * 5))
        self.fc2 = nn.Dense(features=self.num_classes, kernel_init=torch_kaiming_uniform(32), bias_init=torch_bias_uniform(32))

    def __call__(self, x, train: bool = False):
        x = self.conv1(x)
        x = jax.nn.relu(x)
        x = self.conv2(x)
        x = jax.nn.relu(x)
        x = torch_max_pool2d(x, 2)
        x = self.dropout1(x, deterministic=not train)
        x = jax.lax.collapse(x, 1)
        x = self.fc1(x)
        x = jax.nn.relu(x)
        x = self.dropout2(x, deterministic=not train)
        x = self.fc2(x)
        output = jax.nn.log_softmax(x, axis=1)
        return output
