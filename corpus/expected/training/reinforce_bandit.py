"""REINFORCE on a contextual bandit: a policy network maps a context to action logits,
actions are sampled from ``torch.distributions.Categorical`` under ``no_grad`` (the rollout),
rewards come from a NumPy environment, and the policy-gradient loss re-evaluates the log
probabilities of the taken actions with a mean-reward baseline and an entropy bonus."""
import argparse

import numpy as np
import jax
import jax.numpy as jnp
import flax.linen as nn
import optax
import math
from typing import Any
from typing import Sequence
import inspect
from flax.training.train_state import TrainState as FlaxTrainState


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




class Policy(nn.Module):
    n_in: int = 5
    n_actions: int = 4
    hidden: int = 32

    def setup(self):
        self.net = Sequential([nn.Dense(features=self.hidden, kernel_init=torch_kaiming_uniform(self.n_in), bias_init=torch_bias_uniform(self.n_in)), nn.tanh, nn.Dense(features=self.n_actions, kernel_init=torch_kaiming_uniform(self.hidden), bias_init=torch_bias_uniform(self.hidden))])

    def __call__(self, x, train: bool = False):
        return self.net(x, train=train)


@jax.jit
def train_step(train_state, contexts, actions, advantages):
    dropout_rng, sample_rng, rng = jax.random.split(train_state.rng, 3)

    def loss_fn(params):
        dist = Categorical(logits=train_state.apply_fn({"params": params}, contexts, train=True, rngs={"dropout": dropout_rng}), rng_key=sample_rng)
        loss = -jnp.mean(dist.log_prob(actions) * advantages) - 0.01 * jnp.mean(dist.entropy())
        return loss
    loss, grads = jax.value_and_grad(loss_fn)(train_state.params)
    train_state = train_state.apply_gradients(grads=grads, rng=rng)
    return train_state, loss


def rewards_for(contexts, actions, weights):
    """Reward 1 when the action is the context's best arm, else a small noisy penalty."""
    best = jnp.argmax(contexts @ weights, axis=1)
    return np.where(actions == best, 1.0, -0.1).astype(np.float32)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    rng_key = jax.random.PRNGKey(0)
    rng = np.random.default_rng(5)
    weights = rng.standard_normal((5, 4)).astype(np.float32)
    policy = Policy()
    optimizer = optax.adam(learning_rate=1e-2)
    train_state = None
    for step in range(args.steps):
        contexts = jnp.asarray(rng.standard_normal((args.batch, 5)).astype(np.float32))
        if train_state is None:
            train_state = create_train_state(policy, optimizer, jax.random.PRNGKey(0), contexts)
        rng_key, sample_key = jax.random.split(rng_key)
        actions = Categorical(logits=eval_step(train_state, contexts), rng_key=sample_key).sample()
        rewards = jnp.asarray(rewards_for(np.asarray(contexts), np.asarray(actions), weights))
        advantages = rewards - jnp.mean(rewards)
        train_state, loss = train_step(train_state, contexts, actions, advantages)
        print(f"step {step} regret={1.0 - jnp.mean(rewards).item():.4f} loss={loss.item():.7f}")


if __name__ == "__main__":
    main()
