"""The tutorial shape of a training step: a module-level `train(input, target)` that zeroes
the gradients, runs the model, calls backward() and step() and returns the output and
`loss.item()`, with no loop of its own; the script's loop draws an example and calls it
(`output, loss = train(*example())`), accumulating the loss for a running average."""
import argparse

import numpy as np
import jax
import jax.numpy as jnp
import flax.linen as nn
import optax
import math
from functools import partial
from typing import Any
from flax.training.train_state import TrainState as FlaxTrainState
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


def torch_reduce(loss, reduction="mean"):
    """Apply a torch loss ``reduction``: "mean", "sum" or "none"."""
    if reduction == "mean":
        return jnp.mean(loss)
    if reduction == "sum":
        return jnp.sum(loss)
    if reduction == "none":
        return loss
    raise ValueError(f"unknown reduction {reduction!r}")


def torch_nll_loss(input, target, weight=None, ignore_index=-100, reduction="mean"):
    """``F.nll_loss`` on log-probabilities with classes on axis 1 (axis 0 when unbatched);
    "mean" divides by the summed weights of the targets that are not ``ignore_index``."""
    axis = 1 if input.ndim > 1 else 0
    valid = target != ignore_index
    safe = jnp.where(valid, target, 0)
    picked = jnp.squeeze(jnp.take_along_axis(input, jnp.expand_dims(safe, axis), axis=axis), axis)
    w = jnp.ones_like(picked) if weight is None else weight[safe]
    w = jnp.where(valid, w, 0.0)
    loss = -picked * w
    if reduction == "mean":
        return jnp.sum(loss) / jnp.sum(w)
    return torch_reduce(loss, reduction)


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


def to_jax(batch):
    """A batch from a data loader (torch tensors, NumPy arrays, nested tuples/dicts) as JAX arrays."""
    return jax.tree_util.tree_map(lambda a: jnp.asarray(np.asarray(a)), batch)




class Classifier(nn.Module):
    n_in: int = 10
    hidden: int = 32
    n_classes: int = 4

    def setup(self):
        self.hidden_ = nn.Dense(features=self.hidden, kernel_init=torch_kaiming_uniform(self.n_in), bias_init=torch_bias_uniform(self.n_in))
        self.out = nn.Dense(features=self.n_classes, kernel_init=torch_kaiming_uniform(self.hidden), bias_init=torch_bias_uniform(self.hidden))
        self.softmax = partial(nn.log_softmax, axis=1)

    def __call__(self, x, train: bool = False):
        return self.softmax(self.out(jnp.tanh(self.hidden_(x))))


@jax.jit
def train_step(train_state, input, target):
    dropout_rng, rng = jax.random.split(train_state.rng)

    def loss_fn(params):
        output = train_state.apply_fn({"params": params}, input, train=True, rngs={"dropout": dropout_rng})
        loss = criterion(output, target)
        return loss, (output,)
    (loss, (output,)), grads = jax.value_and_grad(loss_fn, has_aux=True)(train_state.params)
    train_state = train_state.apply_gradients(grads=grads, rng=rng)
    return train_state, loss, output


parser = argparse.ArgumentParser()
parser.add_argument("--iters", type=int, default=12)
parser.add_argument("--lr", type=float, default=0.02)
parser.add_argument("--print-every", type=int, default=1)
args = parser.parse_args()

rng_key = jax.random.PRNGKey(0)
data = np.random.default_rng(0)
centers = data.standard_normal((4, 10)).astype(np.float32)

model = Classifier()
criterion = partial(torch_nll_loss)
optimizer = optax.adam(learning_rate=args.lr)
train_state = None


def example(batch=8):
    labels = data.integers(0, 4, size=batch)
    inputs = centers[labels] + 0.3 * data.standard_normal((batch, 10)).astype(np.float32)
    return jnp.asarray(inputs), jnp.asarray(labels)


def train(input, target, train_state=None):
    input, target = to_jax(input), to_jax(target)
    if train_state is None:
        train_state = create_train_state(model, optimizer, jax.random.PRNGKey(0), input)
    train_state, loss, output = train_step(train_state, input, target)
    return train_state, output, loss.item()


current_loss = 0.0
for it in range(1, args.iters + 1):
    train_state, output, loss = train(*example(), train_state=train_state)
    current_loss += loss
    if it % args.print_every == 0:
        guess = jnp.argmax(output, axis=1)
        print(f"iter {it} loss={loss:.7f} first guess {guess[0].item()} average {current_loss / it:.4f}")
