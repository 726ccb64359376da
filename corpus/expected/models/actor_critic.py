"""An actor-critic network for discrete actions: shared trunk, policy and value heads."""
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


def torch_squeeze(x, dim=None):
    """``torch.squeeze``: with ``dim`` (an int or a tuple), drop only those axes of size 1;
    axes of another size are kept (jnp.squeeze raises there)."""
    if dim is None:
        return jnp.squeeze(x)
    dims = dim if isinstance(dim, (tuple, list)) else (dim,)
    keep = tuple(d % x.ndim for d in dims if x.shape[d] == 1) if x.ndim else ()
    return jnp.squeeze(x, axis=keep) if keep else x


def torch_gather(x, dim, index):
    """``torch.gather``: out[i][j] = x[index[i][j]][j] (dim 0); ``index`` may be smaller than
    ``x`` in the other axes (those are cut, never broadcast)."""
    cut = tuple(slice(None) if d == dim % x.ndim else slice(0, index.shape[d]) for d in range(x.ndim))
    return jnp.take_along_axis(x[cut], index, axis=dim)




class ActorCritic(nn.Module):
    obs_dim: int = 8
    n_actions: int = 4
    hidden: int = 32

    def setup(self):
        self.shared = Sequential([nn.Dense(features=self.hidden, kernel_init=torch_kaiming_uniform(self.obs_dim), bias_init=torch_bias_uniform(self.obs_dim)), nn.tanh, nn.Dense(features=self.hidden, kernel_init=torch_kaiming_uniform(self.hidden), bias_init=torch_bias_uniform(self.hidden)), nn.tanh])
        self.actor = nn.Dense(features=self.n_actions, kernel_init=torch_kaiming_uniform(self.hidden), bias_init=torch_bias_uniform(self.hidden))
        self.critic = nn.Dense(features=1, kernel_init=torch_kaiming_uniform(self.hidden), bias_init=torch_bias_uniform(self.hidden))

    def __call__(self, obs, train: bool = False):
        features = self.shared(obs, train=train)
        logits = self.actor(features)
        log_probs = jax.nn.log_softmax(logits, axis=-1)
        value = torch_squeeze(self.critic(features), -1)
        return log_probs, value

    def evaluate(self, obs, actions, train: bool = False):
        log_probs, value = self(obs, train=train)
        action_log_probs = torch_squeeze(torch_gather(log_probs, 1, jnp.expand_dims(actions, 1)), 1)
        entropy = -jnp.sum(jnp.exp(log_probs) * log_probs, axis=-1)
        return action_log_probs, value, entropy


class GaussianActor(nn.Module):
    """Continuous actions: mean from a network, state-independent log std parameter."""
    obs_dim: int = 6
    act_dim: int = 2
    hidden: int = 16

    def setup(self):
        self.mu = Sequential([nn.Dense(features=self.hidden, kernel_init=torch_kaiming_uniform(self.obs_dim), bias_init=torch_bias_uniform(self.obs_dim)), nn.relu, nn.Dense(features=self.act_dim, kernel_init=torch_kaiming_uniform(self.hidden), bias_init=torch_bias_uniform(self.hidden))])
        self.log_std = self.param('log_std', lambda rng_key: -0.5 * jnp.ones(self.act_dim))
        self.v = Sequential([nn.Dense(features=self.hidden, kernel_init=torch_kaiming_uniform(self.obs_dim), bias_init=torch_bias_uniform(self.obs_dim)), nn.relu, nn.Dense(features=1, kernel_init=torch_kaiming_uniform(self.hidden), bias_init=torch_bias_uniform(self.hidden))])

    def __call__(self, obs, act, train: bool = False):
        mu = self.mu(obs, train=train)
        std = jnp.exp(self.log_std)
        logp = jnp.sum(-((act - mu) ** 2) / (2 * std ** 2) - self.log_std - 0.5 * jnp.log(jnp.asarray(2 * jnp.pi)), axis=-1)
        return mu, logp, torch_squeeze(self.v(obs, train=train), -1)
