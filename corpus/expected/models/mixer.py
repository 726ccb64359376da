"""MLP-Mixer blocks with LayerNorm/GELU, and a GroupNorm conv variant."""
import jax
import jax.numpy as jnp
import flax.linen as nn
import math
from functools import partial
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


class GroupNormNCHW(nn.GroupNorm):
    """nn.GroupNorm on channels-first input (N, C, ...); params as nn.GroupNorm."""

    def __call__(self, x, *args, **kwargs):
        y = super().__call__(jnp.moveaxis(x, 1, -1), *args, **kwargs)
        return jnp.moveaxis(y, -1, 1)


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




class MlpBlock(nn.Module):
    dim: Any
    hidden_dim: Any
    dropout: float = 0.0

    def setup(self):
        self.net = Sequential([nn.Dense(features=self.hidden_dim, kernel_init=torch_kaiming_uniform(self.dim), bias_init=torch_bias_uniform(self.dim)), partial(nn.gelu, approximate=False), nn.Dropout(rate=self.dropout), nn.Dense(features=self.dim, kernel_init=torch_kaiming_uniform(self.hidden_dim), bias_init=torch_bias_uniform(self.hidden_dim)), nn.Dropout(rate=self.dropout)])

    def __call__(self, x, train: bool = False):
        return self.net(x, train=train)


class MixerBlock(nn.Module):
    num_tokens: int = 16
    dim: int = 8
    token_hidden: int = 12
    channel_hidden: int = 16
    dropout: float = 0.1

    def setup(self):
        self.norm1 = LayerNormLastAxes(normalized_shape=self.dim, epsilon=1e-05, use_bias=True)
        self.token_mix = MlpBlock(self.num_tokens, self.token_hidden, self.dropout)
        self.norm2 = LayerNormLastAxes(normalized_shape=self.dim, epsilon=1e-05, use_bias=True)
        self.channel_mix = MlpBlock(self.dim, self.channel_hidden, self.dropout)

    def __call__(self, x, train: bool = False):
        # x: (B, tokens, channels)
        y = jnp.swapaxes(self.norm1(x), 1, 2)
        x = x + jnp.swapaxes(self.token_mix(y, train=train), 1, 2)
        x = x + self.channel_mix(self.norm2(x), train=train)
        return x


class MLPMixer(nn.Module):
    image_size: int = 8
    patch_size: int = 2
    in_channels: int = 3
    dim: int = 8
    depth: int = 2
    num_classes: int = 4

    def setup(self):
        num_tokens = (self.image_size // self.patch_size) ** 2
        self.stem = ConvNCHW(features=self.dim, kernel_size=self.patch_size, strides=self.patch_size)
        self.blocks = Sequential([*[MixerBlock(num_tokens, self.dim) for _ in range(self.depth)]])
        self.norm = LayerNormLastAxes(normalized_shape=self.dim, epsilon=1e-05, use_bias=True)
        self.head = nn.Dense(features=self.num_classes, kernel_init=torch_kaiming_uniform(self.dim), bias_init=torch_bias_uniform(self.dim))

    def __call__(self, x, train: bool = False):
        x = jnp.swapaxes(jax.lax.collapse(self.stem(x), 2), 1, 2)
        x = self.blocks(x, train=train)
        x = jnp.mean(self.norm(x), axis=1)
        return self.head(x)


class ConvGNBlock(nn.Module):
    """Conv -> GroupNorm -> GELU (tanh approximation) with a residual, as in diffusion UNets."""
    channels: int = 8
    groups: int = 4

    def setup(self):
        self.conv = ConvNCHW(features=self.channels, kernel_size=3, padding=1)
        self.norm = GroupNormNCHW(num_groups=self.groups, epsilon=1e-05, use_fast_variance=False)
        self.act = partial(nn.gelu, approximate=True)
        self.norm_out = GroupNormNCHW(num_groups=1, epsilon=1e-6, use_fast_variance=False)

    def __call__(self, x, train: bool = False):
        return self.norm_out(x + self.act(self.norm(self.conv(x))))
