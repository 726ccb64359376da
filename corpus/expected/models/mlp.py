"""A plain multi-layer perceptron for tabular regression/classification."""
import jax
import jax.numpy as jnp
import flax.linen as nn
import math


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




class MLP(nn.Module):
    in_features: int = 16
    hidden: int = 32
    out_features: int = 4

    def setup(self):
        self.fc1 = nn.Dense(features=self.hidden, kernel_init=torch_kaiming_uniform(self.in_features), bias_init=torch_bias_uniform(self.in_features))
        self.fc2 = nn.Dense(features=self.hidden, kernel_init=torch_kaiming_uniform(self.hidden), bias_init=torch_bias_uniform(self.hidden))
        self.fc3 = nn.Dense(features=self.out_features, kernel_init=torch_kaiming_uniform(self.hidden), bias_init=torch_bias_uniform(self.hidden))

    def __call__(self, x, train: bool = False):
        x = jax.nn.relu(self.fc1(x))
        x = jnp.tanh(self.fc2(x))
        return self.fc3(x)
