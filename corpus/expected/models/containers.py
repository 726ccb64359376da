"""Sequential / ModuleList / ModuleDict used together, with dict outputs."""
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




class MultiTaskNet(nn.Module):
    in_dim: int = 10
    hidden: int = 16
    depth: int = 3
    tasks: tuple = ("cls", "reg")

    def setup(self):
        self.stem = Sequential([nn.Dense(features=self.hidden, kernel_init=torch_kaiming_uniform(self.in_dim), bias_init=torch_bias_uniform(self.in_dim)), nn.relu])
        _layers = []
        for _ in range(self.depth):
            _layers.append(Sequential([LayerNormLastAxes(normalized_shape=self.hidden, epsilon=1e-05, use_bias=True), nn.Dense(features=self.hidden, kernel_init=torch_kaiming_uniform(self.hidden), bias_init=torch_bias_uniform(self.hidden)), nn.silu]))
        self.heads = {
            "cls": nn.Dense(features=4, kernel_init=torch_kaiming_uniform(self.hidden), bias_init=torch_bias_uniform(self.hidden)),
            "reg": Sequential([nn.Dense(features=8, kernel_init=torch_kaiming_uniform(self.hidden), bias_init=torch_bias_uniform(self.hidden)), nn.tanh, nn.Dense(features=1, kernel_init=torch_kaiming_uniform(8), bias_init=torch_bias_uniform(8))]),
        }
        self.tasks_ = list(self.tasks)
        self.layers = _layers

    def __call__(self, x, train: bool = False):
        h = self.stem(x, train=train)
        for i, layer in enumerate(self.layers):
            h = h + layer(h) if i > 0 else layer(h)
        return {task: self.heads[task](h) for task in self.tasks_}


class GatedStack(nn.Module):
    """Parallel ModuleLists zipped together, indexed Sequential access, ModuleDict items()."""
    dim: int = 8
    n: int = 2

    def setup(self):
        self.values = [nn.Dense(features=self.dim, kernel_init=torch_kaiming_uniform(self.dim), bias_init=torch_bias_uniform(self.dim)) for _ in range(self.n)]
        self.gates = [nn.Dense(features=self.dim, kernel_init=torch_kaiming_uniform(self.dim), bias_init=torch_bias_uniform(self.dim)) for _ in range(self.n)]
        self.acts = {"relu": nn.relu, "sigmoid": nn.sigmoid}
        self.out = Sequential([nn.Dense(features=self.dim, kernel_init=torch_kaiming_uniform(self.dim), bias_init=torch_bias_uniform(self.dim)), nn.elu, nn.Dense(features=2, kernel_init=torch_kaiming_uniform(self.dim), bias_init=torch_bias_uniform(self.dim))])

    def __call__(self, x, train: bool = False):
        for value, gate in zip(self.values, self.gates):
            x = x + self.acts["relu"](value(x)) * self.acts["sigmoid"](gate(x))
        first = self.out[0](x)
        return self.out(x, train=train), first
