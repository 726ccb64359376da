"""Two-stream network: reshapes, concatenation, permutes and contiguous()."""
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


def torch_pixel_shuffle(x, upscale_factor):
    """``F.pixel_shuffle``: (N, C*r*r, H, W) -> (N, C, H*r, W*r)."""
    r = upscale_factor
    n, c, h, w = x.shape
    x = x.reshape(n, c // (r * r), r, r, h, w)
    return x.transpose(0, 1, 4, 2, 5, 3).reshape(n, c // (r * r), h * r, w * r)




class TwoStreamNet(nn.Module):
    num_classes: int = 3

    def setup(self):
        self.image_conv = ConvNCHW(features=4, kernel_size=3, padding=1)
        self.seq_proj = nn.Dense(features=4, kernel_init=torch_kaiming_uniform(5), bias_init=torch_bias_uniform(5))
        self.fuse = nn.Dense(features=16, kernel_init=torch_kaiming_uniform(4 * 4 * 4 + 4 * 6), bias_init=torch_bias_uniform(4 * 4 * 4 + 4 * 6))
        self.out = nn.Dense(features=self.num_classes, kernel_init=torch_kaiming_uniform(16), bias_init=torch_bias_uniform(16))

    def __call__(self, image, seq, train: bool = False):
        # image: (B, 3, 4, 4); seq: (B, 5, 6) channels-first sequence
        a = jax.nn.relu(self.image_conv(image))
        a = jnp.transpose(a, (0, 2, 3, 1))       # NHWC
        a = jnp.reshape(a, (a.shape[0], -1))
        s = self.seq_proj(jnp.transpose(seq, (0, 2, 1)))      # (B, 6, 4)
        s = jnp.reshape(jnp.swapaxes(s, 1, 2), (s.shape[0], -1))
        h = jnp.concatenate((a, s), axis=1)
        h = jax.nn.relu(self.fuse(h))
        logits = self.out(h)
        return logits, jnp.tile(jnp.expand_dims(h, 1), (1, 2, 1))


class Shuffle(nn.Module):
    """Channel shuffle (ShuffleNet) and pixel shuffle done by hand with view/permute."""
    groups: int = 2
    upscale: int = 2

    def setup(self):
        self.conv = ConvNCHW(features=8, kernel_size=1, feature_group_count=self.groups)

    def __call__(self, x, train: bool = False):
        b, c, h, w = x.shape
        x = self.conv(x)
        x = jnp.reshape(x, (b, self.groups, c // self.groups, h, w))
        x = jnp.swapaxes(x, 1, 2)
        x = jnp.reshape(x, (b, -1, h, w))
        r = self.upscale
        y = jnp.transpose(jnp.reshape(x, (b, c // (r * r), r, r, h, w)), (0, 1, 4, 2, 5, 3))
        y = jnp.reshape(y, (b, c // (r * r), h * r, w * r))
        return jnp.concatenate([y, torch_pixel_shuffle(x, r)], axis=1), jnp.mean(jnp.stack([x, 2 * x], axis=0), axis=0)
