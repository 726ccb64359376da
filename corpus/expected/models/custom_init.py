"""Custom parameter initialisation idioms: nn.Parameter, nn.init.*, self.modules(), self.apply."""
import math
import jax
import jax.numpy as jnp
import flax.linen as nn
from typing import Any


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


def torch_uniform(a=0.0, b=1.0):
    """U(a, b), like torch.nn.init.uniform_."""
    def init(key, shape, dtype=jax.numpy.float32):
        return jax.random.uniform(key, shape, dtype, a, b)
    return init


def torch_gain(nonlinearity, param=None):
    """torch.nn.init.calculate_gain."""
    if nonlinearity in ("linear", "sigmoid", "identity") or nonlinearity.startswith("conv"):
        return 1.0
    if nonlinearity == "tanh":
        return 5.0 / 3
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        slope = 0.01 if param is None else param
        return math.sqrt(2.0 / (1 + slope ** 2))
    if nonlinearity == "selu":
        return 3.0 / 4
    raise ValueError(f"unsupported nonlinearity {nonlinearity}")


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




class ScaledConvNet(nn.Module):
    in_ch: int = 3
    width: int = 6
    num_classes: int = 4

    def setup(self):
        self.conv1 = ConvNCHW(features=self.width, kernel_size=3, padding=1, kernel_init=nn.initializers.variance_scaling(torch_gain("relu", 0) ** 2, "fan_out", "normal"), bias_init=nn.initializers.constant(0))
        self.bn1 = TorchBatchNorm(axis=1, momentum=0.9, epsilon=1e-05, scale_init=nn.initializers.constant(1), bias_init=nn.initializers.constant(0))
        self.conv2 = ConvNCHW(features=self.width, kernel_size=3, padding=1, use_bias=False, kernel_init=nn.initializers.variance_scaling(torch_gain("relu", 0) ** 2, "fan_out", "normal"), bias_init=nn.initializers.constant(0))
        self.gamma = self.param('gamma', lambda rng_key: jnp.ones((1, self.width, 1, 1)))
        self.temperature = self.param('temperature', lambda rng_key: jnp.asarray(1.0))
        self.fc = nn.Dense(features=self.num_classes, kernel_init=nn.initializers.variance_scaling(1.0, "fan_avg", "uniform"), bias_init=nn.initializers.zeros)

    def __call__(self, x, train: bool = False):
        x = jax.nn.relu(self.bn1(self.conv1(x), use_running_average=not train))
        x = x + self.gamma * self.conv2(x)
        x = jnp.mean(x, axis=(2, 3))
        return self.fc(x) / self.temperature


class LowRankLinear(nn.Module):
    """W = U @ V with a learned scale; everything initialised via self.apply."""
    in_features: int = 12
    out_features: int = 10
    rank: int = 3

    def setup(self):
        self.U = self.param('U', lambda rng_key: nn.initializers.variance_scaling(torch_gain('leaky_relu', math.sqrt(5)) ** 2, 'fan_in', "uniform", in_axis=1, out_axis=0)(rng_key, jnp.shape(jnp.empty((self.out_features, self.rank)))))
        self.V = self.param('V', lambda rng_key: nn.initializers.orthogonal()(rng_key, jnp.shape(jnp.empty((self.rank, self.in_features)))))
        self.bias = self.param('bias', lambda rng_key: torch_uniform(-0.1, 0.1)(rng_key, jnp.shape(jnp.zeros(self.out_features))))
        self.norm = LayerNormLastAxes(normalized_shape=self.out_features, epsilon=1e-05, use_bias=True, scale_init=nn.initializers.ones, bias_init=nn.initializers.zeros)
        self.reset_parameters()

    def reset_parameters(self):
        pass

    def __call__(self, x, train: bool = False):
        w = self.U @ self.V
        return self.norm(jnp.matmul(x, w.T) + self.bias)
