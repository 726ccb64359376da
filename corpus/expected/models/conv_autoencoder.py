"""A convolutional autoencoder: strided convs down, transposed convs up."""
import jax
import jax.numpy as jnp
import flax.linen as nn
import math
from typing import Any
from typing import Sequence
import inspect


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




class ConvAutoencoder(nn.Module):
    in_channels: int = 1
    hidden: int = 4
    latent: int = 8

    def setup(self):
        self.encoder = Sequential([ConvNCHW(features=self.hidden, kernel_size=3, strides=2, padding=1), nn.relu, ConvNCHW(features=self.latent, kernel_size=3, strides=2, padding=1), nn.relu])
        self.decoder = Sequential([ConvTransposeNCHW(features=self.hidden, kernel_size=3, strides=2, padding=1, output_padding=1), nn.relu, ConvTransposeNCHW(features=self.in_channels, kernel_size=3, strides=2, padding=1, output_padding=1), nn.sigmoid])

    def __call__(self, x, train: bool = False):
        z = self.encoder(x, train=train)
        x_hat = self.decoder(z, train=train)
        return x_hat, z


class DilatedUpsampler(nn.Module):
    """ConvTranspose2d with groups, dilation and non-square kernels."""
    channels: int = 4

    def setup(self):
        self.up = ConvTransposeNCHW(features=self.channels, kernel_size=(3, 2), strides=(2, 1), padding=(1, 0), feature_group_count=2, kernel_dilation=(1, 2))
        self.proj = ConvTransposeNCHW(features=2, kernel_size=1, use_bias=False)

    def __call__(self, x, train: bool = False):
        return self.proj(self.up(x))
