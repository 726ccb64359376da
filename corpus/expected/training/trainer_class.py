"""A Trainer class (a plain Python class, not an nn.Module) holding the model, the optimizer
and the loss module as attributes, in the layout of the DDP tutorial series: `_run_batch`
makes one optimizer step and has no loop of its own, `_run_epoch` loops over the data loader
and calls it; model and optimizer are built by a function and passed in; evaluation under
no_grad and a checkpoint of `self.model.state_dict()` are methods too."""
import argparse

import numpy as np
import torch
import jax
import jax.numpy as jnp
import flax.linen as nn
import optax
import math
from functools import partial
from typing import Any
from flax.training.train_state import TrainState as FlaxTrainState
import inspect
from flax import serialization


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


def torch_reduce(loss, reduction="mean"):
    """Apply a torch loss ``reduction``: "mean", "sum" or "none"."""
    if reduction == "mean":
        return jnp.mean(loss)
    if reduction == "sum":
        return jnp.sum(loss)
    if reduction == "none":
        return loss
    raise ValueError(f"unknown reduction {reduction!r}")


def torch_smooth_l1_loss(input, target, reduction="mean", beta=1.0):
    """``F.smooth_l1_loss``: 0.5*d^2/beta where |d| < beta, else |d| - 0.5*beta."""
    d = jnp.abs(input - target)
    if beta == 0:
        return torch_reduce(d, reduction)
    return torch_reduce(jnp.where(d < beta, 0.5 * d * d / beta, d - 0.5 * beta), reduction)


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


def to_jax(batch):
    """A batch from a data loader (torch tensors, NumPy arrays, nested tuples/dicts) as JAX arrays."""
    return jax.tree_util.tree_map(lambda a: jnp.asarray(np.asarray(a)), batch)


class ArrayDataset:
    """``TensorDataset`` over JAX/NumPy arrays (kept as NumPy on the host): a map-style
    dataset that torch's DataLoader batches like a TensorDataset."""

    def __init__(self, *arrays):
        self.arrays = tuple(np.array(a) for a in arrays)

    def __len__(self):
        return len(self.arrays[0])

    def __getitem__(self, index):
        return tuple(a[index] for a in self.arrays)


def save_checkpoint(obj, path):
    """``torch.save``: write a pytree (e.g. ``model_variables(state)``) as flax msgpack bytes."""
    with open(path, "wb") as fh:
        fh.write(serialization.msgpack_serialize(serialization.to_state_dict(obj)))




class Regressor(nn.Module):
    n_in: int = 6
    hidden: int = 24

    def setup(self):
        self.fc1 = nn.Dense(features=self.hidden, kernel_init=torch_kaiming_uniform(self.n_in), bias_init=torch_bias_uniform(self.n_in))
        self.fc2 = nn.Dense(features=3, kernel_init=torch_kaiming_uniform(self.hidden), bias_init=torch_bias_uniform(self.hidden))

    def __call__(self, x, train: bool = False):
        return self.fc2(jax.nn.relu(self.fc1(x)))


class Trainer:
    def __init__(self, model, train_data, optimizer, save_every, path):
        self.model = model
        self.train_data = train_data
        self.optimizer = optimizer
        self.criterion = partial(torch_smooth_l1_loss, beta=0.5)
        self.save_every = save_every
        self.path = path
        self.train_state = None

    def _run_batch(self, source, targets):
        source, targets = to_jax(source), to_jax(targets)
        if self.train_state is None:
            self.train_state = create_train_state(self.model, self.optimizer, jax.random.PRNGKey(0), source)
        self.train_state, loss = train_step(self.train_state, source, targets, self.criterion)
        return loss.item()

    def _run_epoch(self, epoch):
        total = 0.0
        for source, targets in self.train_data:
            batch_loss = self._run_batch(source, targets)
            total += batch_loss
            print(f"epoch {epoch} loss={batch_loss:.7f}")
        return total / len(self.train_data)

    def evaluate(self):
        err = 0.0
        for source, targets in self.train_data:
            source, targets = to_jax(source), to_jax(targets)
            err += jnp.mean(jnp.square(eval_step(self.train_state, source) - targets)).item()
        return err / len(self.train_data)

    def _save_checkpoint(self, epoch):
        save_checkpoint(model_variables(self.train_state), self.path)
        print(f"epoch {epoch}: checkpoint saved")

    def train(self, max_epochs):
        for epoch in range(max_epochs):
            mean = self._run_epoch(epoch)
            print(f"epoch {epoch} mean {mean:.5f} eval mse {self.evaluate():.5f}")
            if self.path and epoch % self.save_every == 0:
                self._save_checkpoint(epoch)


@partial(jax.jit, static_argnames=('self_criterion',))
def train_step(train_state, source, targets, self_criterion):
    dropout_rng, rng = jax.random.split(train_state.rng)

    def loss_fn(params):
        output = train_state.apply_fn({"params": params}, source, train=True, rngs={"dropout": dropout_rng})
        loss = self_criterion(output, targets)
        return loss
    loss, grads = jax.value_and_grad(loss_fn)(train_state.params)
    train_state = train_state.apply_gradients(grads=grads, rng=rng)
    return train_state, loss


def load_train_objs(lr):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((96, 6)).astype(np.float32)
    y = np.tanh(x @ rng.standard_normal((6, 3))).astype(np.float32)
    train_set = ArrayDataset(jnp.asarray(x), jnp.asarray(y))
    model = Regressor()
    optimizer = optax.sgd(learning_rate=lr, momentum=0.9)
    return train_set, model, optimizer


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--save", default="")
    args = parser.parse_args()
    rng_key = jax.random.PRNGKey(0)
    dataset, model, optimizer = load_train_objs(args.lr)
    train_data = torch.utils.data.DataLoader(dataset, batch_size=24)
    trainer = Trainer(model, train_data, optimizer, 1, args.save)
    trainer.train(args.epochs)


if __name__ == "__main__":
    main()
