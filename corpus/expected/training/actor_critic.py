"""Advantage actor-critic on a small synthetic task: separate actor and critic networks, each
with its own optimizer, trained by ONE summed loss (policy-gradient term + value regression)
with one backward() and two step() calls. Each update collects a horizon of states, samples
actions from a Categorical without gradients (in a helper function), then recomputes the
log-probabilities and values from the stored states, as PPO-style code does."""
import argparse

import numpy as np
import jax
import jax.numpy as jnp
import flax.linen as nn
import optax
import math
from typing import Any
from flax.training.train_state import TrainState as FlaxTrainState
import inspect


# --- helpers added by jaxport (PyTorch semantics in JAX) ---
class Categorical:
    """torch.distributions.Categorical over the last axis, from ``probs`` or ``logits``."""

    def __init__(self, probs=None, logits=None, validate_args=None, rng_key=None):
        if (probs is None) == (logits is None):
            raise ValueError("Categorical needs exactly one of probs or logits")
        if probs is not None:
            probs = probs / jnp.sum(probs, axis=-1, keepdims=True)
            self.logits = jnp.log(probs)
        else:
            self.logits = logits - jax.nn.logsumexp(logits, axis=-1, keepdims=True)
        self.probs = jnp.exp(self.logits)
        self._key = rng_key

    def _next_key(self):
        if self._key is None:
            raise ValueError("sampling needs a PRNG key: pass rng_key=... to the distribution")
        self._key, key = jax.random.split(self._key)
        return key

    def sample(self, sample_shape=()):
        shape = tuple(sample_shape) + self.logits.shape[:-1]
        return jax.random.categorical(self._next_key(), self.logits, axis=-1, shape=shape)

    def log_prob(self, value):
        value = jnp.asarray(value).astype(jnp.int32)
        return jnp.take_along_axis(self.logits, value[..., None], axis=-1)[..., 0]

    def entropy(self):
        return -jnp.sum(self.probs * self.logits, axis=-1)


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


class TrainState(FlaxTrainState):
    """flax's TrainState plus the model's ``batch_stats`` (empty without BatchNorm) and the
    PRNG key that ``train_step`` splits for dropout at every step."""
    batch_stats: Any = None
    rng: Any = None


def apply_with_train_flag(model):
    """``model.apply``, taking the ``train`` flag that converted modules take. A model whose
    ``__call__`` has no such parameter (a bare flax layer such as ``nn.Dense``, converted from
    a bare ``nn.Linear`` model) is applied without it."""
    if "train" in inspect.signature(type(model).__call__).parameters:
        return model.apply

    def apply(variables, *inputs, train=False, **kwargs):
        return model.apply(variables, *inputs, **kwargs)
    return apply


def create_train_state(model, tx, rng, *inputs):
    """Initialise ``model`` on a first batch (``model.init``) and wrap it in a TrainState."""
    params_rng, dropout_rng, rng = jax.random.split(rng, 3)
    sample_rng = jax.random.fold_in(dropout_rng, 1)
    variables = model.init({"params": params_rng, "dropout": dropout_rng, "sample": sample_rng}, *inputs)
    return TrainState.create(apply_fn=apply_with_train_flag(model), params=variables["params"], tx=tx,
                             batch_stats=variables.get("batch_stats", {}), rng=rng)


def model_variables(state):
    """The variables ``apply`` takes (what torch's ``model.state_dict()`` holds)."""
    if state.batch_stats:
        return {"params": state.params, "batch_stats": state.batch_stats}
    return {"params": state.params}


@jax.jit
def eval_step(state, *inputs):
    """The model's forward pass in eval mode (``model.eval()``: dropout off, BatchNorm running
    stats); a model that samples (``torch.randn_like`` in forward) draws from the state's key."""
    return state.apply_fn(model_variables(state), *inputs, train=False, rngs={"sample": state.rng})




class Actor(nn.Module):
    n_obs: int = 4
    n_actions: int = 3
    hidden: int = 32

    def setup(self):
        self.fc1 = nn.Dense(features=self.hidden, kernel_init=torch_kaiming_uniform(self.n_obs), bias_init=torch_bias_uniform(self.n_obs))
        self.fc2 = nn.Dense(features=self.n_actions, kernel_init=torch_kaiming_uniform(self.hidden), bias_init=torch_bias_uniform(self.hidden))

    def __call__(self, x, train: bool = False):
        return self.fc2(jnp.tanh(self.fc1(x)))


class Critic(nn.Module):
    n_obs: int = 4
    hidden: int = 32

    def setup(self):
        self.fc1 = nn.Dense(features=self.hidden, kernel_init=torch_kaiming_uniform(self.n_obs), bias_init=torch_bias_uniform(self.n_obs))
        self.fc2 = nn.Dense(features=1, kernel_init=torch_kaiming_uniform(self.hidden), bias_init=torch_bias_uniform(self.hidden))

    def __call__(self, x, train: bool = False):
        return torch_squeeze(self.fc2(jnp.tanh(self.fc1(x))), -1)


@jax.jit
def train_step(actor_state, critic_state, states, returns, actions):
    actor_dropout_rng, actor_rng = jax.random.split(actor_state.rng)
    critic_dropout_rng, critic_rng = jax.random.split(critic_state.rng)

    def loss_fn(actor_params, critic_params):
        values = critic_state.apply_fn({"params": critic_params}, states, train=True, rngs={"dropout": critic_dropout_rng})
        advantage = returns - jax.lax.stop_gradient(values)
        log_probs = torch_squeeze(torch_gather(jax.nn.log_softmax(actor_state.apply_fn({"params": actor_params}, states, train=True, rngs={"dropout": actor_dropout_rng}), axis=-1), 1, jnp.expand_dims(actions, 1)), 1)
        actor_loss = -jnp.mean(log_probs * advantage)
        critic_loss = jnp.mean(jnp.square(values - returns))
        loss = actor_loss + 0.5 * critic_loss
        return loss
    loss, (actor_grads, critic_grads) = jax.value_and_grad(loss_fn, argnums=(0, 1))(actor_state.params, critic_state.params)
    actor_state = actor_state.apply_gradients(grads=actor_grads, rng=actor_rng)
    critic_state = critic_state.apply_gradients(grads=critic_grads, rng=critic_rng)
    return actor_state, critic_state, loss


def environment(rng, horizon):
    """A horizon of random states and, for each, the rewarded action: how many of the first
    two coordinates are positive (a contextual bandit unrolled over a horizon)."""
    states = rng.standard_normal((horizon, 4)).astype(np.float32)
    best = (states[:, 0] > 0).astype(np.int64) + (states[:, 1] > 0).astype(np.int64)
    return jnp.asarray(states), best


def sample_actions(logits, rng_key=None):
    """One action per state, drawn from the policy's categorical distribution."""
    rng_key, sample_key = jax.random.split(rng_key)
    return Categorical(logits=logits, rng_key=sample_key).sample()


def discounted(rewards, gamma=0.9):
    returns = np.zeros_like(rewards)
    running = 0.0
    for t in reversed(range(len(rewards))):
        running = rewards[t] + gamma * running
        returns[t] = running
    return returns


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--updates", type=int, default=40)
    parser.add_argument("--horizon", type=int, default=32)
    args = parser.parse_args()
    rng_key = jax.random.PRNGKey(0)
    rng = np.random.default_rng(7)
    actor = Actor()
    critic = Critic()
    actor_opt = optax.adam(learning_rate=1e-2)
    actor_state = None
    critic_opt = optax.adam(learning_rate=1e-2)
    critic_state = None
    for update in range(args.updates):
        states, best = environment(rng, args.horizon)
        if actor_state is None:
            actor_state = create_train_state(actor, actor_opt, jax.random.PRNGKey(0), states)
        rng_key, sample_key = jax.random.split(rng_key)
        actions = sample_actions(eval_step(actor_state, states), rng_key=sample_key)
        rewards = (np.asarray(actions) == best).astype(np.float32)
        returns = jnp.asarray(discounted(rewards))
        if critic_state is None:
            critic_state = create_train_state(critic, critic_opt, jax.random.fold_in(jax.random.PRNGKey(0), 1), states)
        actor_state, critic_state, loss = train_step(actor_state, critic_state, states, returns, actions)
        print(f"update {update} reward={jnp.mean(rewards):.4f} loss={loss.item():.7f}")


if __name__ == "__main__":
    main()
