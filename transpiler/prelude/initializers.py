"""flax initializers with the exact distributions of torch.nn.init functions."""
import math

import jax


def torch_normal(mean=0.0, std=1.0):
    """N(mean, std²), like torch.nn.init.normal_."""
    def init(key, shape, dtype=jax.numpy.float32):
        return mean + std * jax.random.normal(key, shape, dtype)
    return init


def torch_uniform(a=0.0, b=1.0):
    """U(a, b), like torch.nn.init.uniform_."""
    def init(key, shape, dtype=jax.numpy.float32):
        return jax.random.uniform(key, shape, dtype, a, b)
    return init


def torch_trunc_normal(mean=0.0, std=1.0, a=-2.0, b=2.0):
    """N(mean, std²) truncated to [a, b] (absolute bounds, as in torch.nn.init.trunc_normal_)."""
    def init(key, shape, dtype=jax.numpy.float32):
        unit = jax.random.truncated_normal(key, (a - mean) / std, (b - mean) / std, shape, dtype)
        return mean + std * unit
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
