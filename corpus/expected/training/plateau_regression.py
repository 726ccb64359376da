"""Regression with a validation split and host-side learning-rate control: either
``ReduceLROnPlateau`` on the validation loss (``scheduler.step(val_loss)``) or a
``SequentialLR`` (LinearLR warm-up, then ExponentialLR) stepped per epoch; SGD with momentum,
``nn.SmoothL1Loss``, an evaluation pass under ``no_grad`` every epoch."""
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


def _is_injected(node):
    return isinstance(node, (optax.InjectHyperparamsState, optax.InjectStatefulHyperparamsState))


def initial_learning_rate(optimizer):
    """The learning rate an optimizer built with inject_hyperparams starts at, as the Python
    float the script wrote (the float32 state value read back through its shortest repr)."""
    lr = getattr(optimizer, "initial_lr", None)
    if lr is None:
        lr = float(str(np.float32(get_learning_rate(optimizer.init({})))))
    return lr


def get_learning_rate(opt_state):
    """The learning rate held by the first ``optax.inject_hyperparams`` state in ``opt_state``."""
    for node in jax.tree_util.tree_leaves(opt_state, is_leaf=_is_injected):
        if _is_injected(node) and "learning_rate" in node.hyperparams:
            return node.hyperparams["learning_rate"]
    raise ValueError("the optimizer has no injected learning_rate: build it with "
                     "optax.inject_hyperparams(...) to use a learning-rate scheduler")


def set_learning_rate(opt_state, lr):
    """``opt_state`` with every injected ``learning_rate`` set to ``lr`` (dtype kept, so a
    jitted train_step is not recompiled)."""
    def replace(node):
        if _is_injected(node) and "learning_rate" in node.hyperparams:
            old = node.hyperparams["learning_rate"]
            return node._replace(hyperparams={**node.hyperparams,
                                              "learning_rate": jnp.asarray(lr, dtype=jnp.asarray(old).dtype)})
        return node
    return jax.tree_util.tree_map(replace, opt_state, is_leaf=_is_injected)


class TorchLRScheduler:
    """A torch ``lr_scheduler``: ``schedule(base_lr)`` is an optax schedule counted in calls
    to ``step`` (epochs or batches, wherever the script calls it, exactly like torch).
    ``step(state)`` returns ``state`` with the next learning rate in its optimizer state.
    ``optimizer`` is the transformation to train with: it starts at the schedule's value
    for count 0, as torch sets it when the scheduler is built."""

    def __init__(self, optimizer, schedule):
        # torch's base_lrs are the groups' "initial_lr": the optimizer's own learning rate,
        # not the first value of a scheduler built on it before this one
        self.base_lr = initial_learning_rate(optimizer)
        self.schedule = schedule(self.base_lr)
        self.last_epoch = 0
        self._last_lr = [float(self.schedule(0))]
        self.optimizer = scheduled_optimizer(optimizer, self._last_lr[0], self.base_lr)

    def step(self, state):
        self.last_epoch += 1
        lr = float(self.schedule(self.last_epoch))
        self._last_lr = [lr]
        return state.replace(opt_state=set_learning_rate(state.opt_state, lr))

    def get_last_lr(self):
        return list(self._last_lr)


class ScheduledOptimizer(optax.GradientTransformationExtraArgs):
    """An optimizer whose state starts at a scheduler's first learning rate; ``initial_lr``
    keeps the optimizer's own value for schedulers built after it (torch's "initial_lr")."""


def scheduled_optimizer(optimizer, lr, initial_lr):
    """``optimizer`` with its injected learning rate starting at ``lr``."""
    def init(params):
        return set_learning_rate(optimizer.init(params), lr)

    tx = ScheduledOptimizer(init, optimizer.update)
    tx.initial_lr = initial_lr
    return tx


class TorchSequentialLR(TorchLRScheduler):
    """``SequentialLR``: ``schedulers[i]`` runs from its own count 0 once the step count
    reaches ``milestones[i - 1]`` (each on the optimizer's initial learning rate)."""

    def __init__(self, optimizer, schedulers, milestones, last_epoch=-1):
        milestones = list(milestones)

        def schedule(base):
            def lr(count):
                idx = sum(1 for m in milestones if m <= count)
                start = milestones[idx - 1] if idx > 0 else 0
                return schedulers[idx].schedule(count - start)
            return lr

        super().__init__(optimizer, schedule)


class TorchReduceLROnPlateau:
    """``ReduceLROnPlateau``, on the host: ``step(state, metric)`` compares the metric with
    the best one so far (torch's mode / threshold / threshold_mode), counts bad epochs, and
    after more than ``patience`` of them multiplies the learning rate by ``factor`` (not
    below ``min_lr``, skipped when the change is below ``eps``), then waits ``cooldown``
    epochs. The learning rate is written into the optax.inject_hyperparams state."""

    def __init__(self, optimizer, mode="min", factor=0.1, patience=10, threshold=1e-4, threshold_mode="rel",
                 cooldown=0, min_lr=0, eps=1e-8):
        if factor >= 1.0:
            raise ValueError("Factor should be < 1.0.")
        self.lr = initial_learning_rate(optimizer)
        self.mode, self.factor, self.patience = mode, factor, patience
        self.threshold, self.threshold_mode, self.cooldown = threshold, threshold_mode, cooldown
        self.min_lr = min_lr[0] if isinstance(min_lr, (list, tuple)) else min_lr
        self.eps = eps
        self.best = math.inf if mode == "min" else -math.inf
        self.num_bad_epochs = 0
        self.cooldown_counter = 0
        self.last_epoch = 0
        self._last_lr = [self.lr]
        self.optimizer = scheduled_optimizer(optimizer, self.lr, self.lr)

    def is_better(self, a, best):
        if self.mode == "min" and self.threshold_mode == "rel":
            return a < best * (1.0 - self.threshold)
        if self.mode == "min":
            return a < best - self.threshold
        if self.threshold_mode == "rel":
            return a > best * (self.threshold + 1.0)
        return a > best + self.threshold

    def step(self, state, metrics):
        current = float(metrics)
        self.last_epoch += 1
        if self.is_better(current, self.best):
            self.best = current
            self.num_bad_epochs = 0
        else:
            self.num_bad_epochs += 1
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0
        if self.num_bad_epochs > self.patience:
            new_lr = max(self.lr * self.factor, self.min_lr)
            if self.lr - new_lr > self.eps:
                self.lr = new_lr
            self.cooldown_counter = self.cooldown
            self.num_bad_epochs = 0
        self._last_lr = [self.lr]
        if state is None:
            return state
        return state.replace(opt_state=set_learning_rate(state.opt_state, self.lr))

    def get_last_lr(self):
        return list(self._last_lr)


def torch_exponential_lr(gamma):
    """``ExponentialLR``: base * gamma ** count."""
    return lambda base: optax.exponential_decay(base, 1, gamma)


def torch_linear_lr(start_factor=1.0 / 3, end_factor=1.0, total_iters=5):
    """``LinearLR``: the factor goes linearly from start_factor to end_factor in total_iters steps."""
    return lambda base: optax.linear_schedule(base * start_factor, base * end_factor, total_iters)


class ArrayDataset:
    """``TensorDataset`` over JAX/NumPy arrays (kept as NumPy on the host): a map-style
    dataset that torch's DataLoader batches like a TensorDataset."""

    def __init__(self, *arrays):
        self.arrays = tuple(np.array(a) for a in arrays)

    def __len__(self):
        return len(self.arrays[0])

    def __getitem__(self, index):
        return tuple(a[index] for a in self.arrays)




class Regressor(nn.Module):
    n_in: int = 6
    hidden: int = 32

    def setup(self):
        self.net = Sequential([nn.Dense(features=self.hidden, kernel_init=torch_kaiming_uniform(self.n_in), bias_init=torch_bias_uniform(self.n_in)), nn.silu, nn.Dense(features=self.hidden, kernel_init=torch_kaiming_uniform(self.hidden), bias_init=torch_bias_uniform(self.hidden)), nn.silu, nn.Dense(features=1, kernel_init=torch_kaiming_uniform(self.hidden), bias_init=torch_bias_uniform(self.hidden))])

    def __call__(self, x, train: bool = False):
        return torch_squeeze(self.net(x, train=train), -1)


@partial(jax.jit, static_argnames=('criterion',))
def train_step(train_state, xb, yb, criterion):
    dropout_rng, rng = jax.random.split(train_state.rng)

    def loss_fn(params):
        loss = criterion(train_state.apply_fn({"params": params}, xb, train=True, rngs={"dropout": dropout_rng}), yb)
        return loss
    loss, grads = jax.value_and_grad(loss_fn)(train_state.params)
    train_state = train_state.apply_gradients(grads=grads, rng=rng)
    return train_state, loss


def evaluate(model, criterion, x, y, train_state=None):
    return criterion(eval_step(train_state, x), y).item()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--scheduler", choices=["plateau", "sequential"], default="plateau")
    args = parser.parse_args()
    rng = np.random.default_rng(3)
    x = rng.standard_normal((160, 6)).astype(np.float32)
    y = (np.sin(2 * x[:, 0]) + x[:, 1] * x[:, 2] + 0.1 * rng.standard_normal(160)).astype(np.float32)
    train = torch.utils.data.DataLoader(ArrayDataset(jnp.asarray(x[:128]), jnp.asarray(y[:128])), batch_size=32)
    x_val, y_val = jnp.asarray(x[128:]), jnp.asarray(y[128:])
    model = Regressor()
    criterion = partial(torch_smooth_l1_loss, beta=0.5)
    optimizer = optax.inject_hyperparams(optax.sgd)(learning_rate=0.1, momentum=0.9)
    train_state = None
    if args.scheduler == "plateau":
        scheduler = TorchReduceLROnPlateau(optimizer, mode="min", factor=0.5, patience=0, threshold=0.02)
        optimizer = scheduler.optimizer
    else:
        warmup = TorchLRScheduler(optimizer, torch_linear_lr(start_factor=0.2, total_iters=2))
        optimizer = warmup.optimizer
        decay = TorchLRScheduler(optimizer, torch_exponential_lr(0.7))
        optimizer = decay.optimizer
        scheduler = TorchSequentialLR(optimizer, schedulers=[warmup, decay], milestones=[2])
        optimizer = scheduler.optimizer
    for epoch in range(args.epochs):
        for xb, yb in train:
            xb, yb = to_jax(xb), to_jax(yb)
            if train_state is None:
                train_state = create_train_state(model, optimizer, jax.random.PRNGKey(0), xb)
            train_state, loss = train_step(train_state, xb, yb, criterion)
            print(f"epoch {epoch} loss={loss.item():.7f}")
        val_loss = evaluate(model, criterion, x_val, y_val, train_state=train_state)
        if args.scheduler == "plateau":
            train_state = scheduler.step(train_state, val_loss)
        else:
            train_state = scheduler.step(train_state)
        print(f"epoch {epoch} val {val_loss:.5f} lr {scheduler.get_last_lr()[0]:.5f}")


if __name__ == "__main__":
    main()
