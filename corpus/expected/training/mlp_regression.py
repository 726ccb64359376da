"""MLP regression written as a flat script: module-level loop, Adam + MSELoss, the loss
summed over an epoch with .item(), zero_grad after step, an evaluation pass under no_grad."""
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
from typing import Sequence
import inspect
from flax.training.train_state import TrainState as FlaxTrainState


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


def torch_reduce(loss, reduction="mean"):
    """Apply a torch loss ``reduction``: "mean", "sum" or "none"."""
    if reduction == "mean":
        return jnp.mean(loss)
    if reduction == "sum":
        return jnp.sum(loss)
    if reduction == "none":
        return loss
    raise ValueError(f"unknown reduction {reduction!r}")


def torch_mse_loss(input, target, reduction="mean"):
    """``F.mse_loss``."""
    return torch_reduce(jnp.square(input - target), reduction)


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




class MLP(nn.Module):
    n_in: int = 8
    hidden: int = 32

    def setup(self):
        self.net = Sequential([nn.Dense(features=self.hidden, kernel_init=torch_kaiming_uniform(self.n_in), bias_init=torch_bias_uniform(self.n_in)), nn.tanh, nn.Dense(features=self.hidden, kernel_init=torch_kaiming_uniform(self.hidden), bias_init=torch_bias_uniform(self.hidden)), nn.tanh, nn.Dense(features=1, kernel_init=torch_kaiming_uniform(self.hidden), bias_init=torch_bias_uniform(self.hidden))])

    def __call__(self, x, train: bool = False):
        return torch_squeeze(self.net(x, train=train), -1)


@jax.jit
def train_step(train_state, xb, yb):
    dropout_rng, rng = jax.random.split(train_state.rng)

    def loss_fn(params):
        pred = train_state.apply_fn({"params": params}, xb, train=True, rngs={"dropout": dropout_rng})
        loss = criterion(pred, yb)
        return loss
    loss, grads = jax.value_and_grad(loss_fn)(train_state.params)
    train_state = train_state.apply_gradients(grads=grads, rng=rng)
    return train_state, loss


parser = argparse.ArgumentParser()
parser.add_argument("--epochs", type=int, default=4)
parser.add_argument("--lr", type=float, default=1e-2)
args = parser.parse_args()

rng_key = jax.random.PRNGKey(0)
rng = np.random.default_rng(0)
features = rng.standard_normal((128, 8)).astype(np.float32)
targets = (features @ rng.standard_normal(8) + np.sin(features[:, 0])).astype(np.float32)
dataset = ArrayDataset(jnp.asarray(features), jnp.asarray(targets))
loader = torch.utils.data.DataLoader(dataset, batch_size=32)

model = MLP()
criterion = partial(torch_mse_loss)
optimizer = optax.chain(optax.add_decayed_weights(1e-4), optax.adam(learning_rate=args.lr))
train_state = None

for epoch in range(args.epochs):
    total = 0.0
    for xb, yb in loader:
        xb, yb = to_jax(xb), to_jax(yb)
        if train_state is None:
            train_state = create_train_state(model, optimizer, jax.random.PRNGKey(0), xb)
        train_state, loss = train_step(train_state, xb, yb)
        total += loss.item()
        print(f"step loss={loss.item():.7f}")
    print(f"epoch {epoch} mean loss {total / len(loader):.5f}")
err = 0.0
for xb, yb in loader:
    xb, yb = to_jax(xb), to_jax(yb)
    err += criterion(eval_step(train_state, xb), yb).item()
print(f"eval mse {err / len(loader):.5f}")
