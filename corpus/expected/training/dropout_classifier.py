"""An MLP classifier with dropout (AdamW, gradient clipping, a LinearLR warm-up stepped
per epoch, BCEWithLogits with pos_weight for a binary head and CrossEntropy for classes)."""
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


def torch_binary_cross_entropy_with_logits(input, target, weight=None, reduction="mean", pos_weight=None):
    """``F.binary_cross_entropy_with_logits`` (numerically stable, optional ``pos_weight``)."""
    log_sig = jax.nn.log_sigmoid(input)
    log_sig_neg = jax.nn.log_sigmoid(-input)
    if pos_weight is not None:
        loss = -(pos_weight * target * log_sig + (1 - target) * log_sig_neg)
    else:
        loss = -(target * log_sig + (1 - target) * log_sig_neg)
    if weight is not None:
        loss = loss * weight
    return torch_reduce(loss, reduction)


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


def torch_cross_entropy(input, target, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0):
    """``F.cross_entropy``: logits with classes on axis 1 (axis 0 when unbatched); ``target``
    holds class indices (honouring ``weight``, ``ignore_index``, ``label_smoothing``) or,
    when it has the input's shape and a float dtype, class probabilities."""
    axis = 1 if input.ndim > 1 else 0
    classes = input.shape[axis]
    logp = jax.nn.log_softmax(input, axis=axis)
    wshape = [1] * input.ndim
    wshape[axis] = classes
    if jnp.issubdtype(target.dtype, jnp.floating):
        if label_smoothing:
            target = target * (1 - label_smoothing) + label_smoothing / classes
        weighted = logp if weight is None else logp * weight.reshape(wshape)
        loss = -jnp.sum(weighted * target, axis=axis)
        if reduction == "mean":
            return jnp.sum(loss) / (loss.size if loss.ndim else 1)
        return torch_reduce(loss, reduction)
    nll = torch_nll_loss(logp, target, weight, ignore_index, reduction)
    if not label_smoothing:
        return nll
    valid = target != ignore_index
    weighted = logp if weight is None else logp * weight.reshape(wshape)
    smooth = jnp.where(valid, -jnp.sum(weighted, axis=axis), 0.0)
    if reduction == "mean":
        if weight is None:
            smooth = jnp.sum(smooth) / jnp.sum(valid)
        else:
            smooth = jnp.sum(smooth) / jnp.sum(jnp.where(valid, weight[jnp.where(valid, target, 0)], 0.0))
    else:
        smooth = torch_reduce(smooth, reduction)
    return (1 - label_smoothing) * nll + label_smoothing / classes * smooth


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


def torch_clip_grad_norm(grads, max_norm, norm_type=2.0):
    """``torch.nn.utils.clip_grad_norm_``: scale all gradients by max_norm / (total_norm + 1e-6)
    when that is below 1. Returns the clipped gradients and the total norm."""
    leaves = jax.tree_util.tree_leaves(grads)
    if norm_type == math.inf:
        total = jnp.max(jnp.stack([jnp.max(jnp.abs(g)) for g in leaves]))
    else:
        total = jnp.sum(jnp.stack([jnp.sum(jnp.abs(g) ** norm_type) for g in leaves])) ** (1.0 / norm_type)
    scale = jnp.minimum(max_norm / (total + 1e-6), 1.0)
    return jax.tree_util.tree_map(lambda g: g * scale, grads), total


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




class Classifier(nn.Module):
    n_in: int = 16
    hidden: int = 32
    n_classes: int = 4
    p: float = 0.3

    def setup(self):
        self.body = Sequential([nn.Dense(features=self.hidden, kernel_init=torch_kaiming_uniform(self.n_in), bias_init=torch_bias_uniform(self.n_in)), nn.relu, nn.Dropout(rate=self.p), nn.Dense(features=self.hidden, kernel_init=torch_kaiming_uniform(self.hidden), bias_init=torch_bias_uniform(self.hidden)), partial(nn.gelu, approximate=False), nn.Dropout(rate=self.p)])
        self.classes = nn.Dense(features=self.n_classes, kernel_init=torch_kaiming_uniform(self.hidden), bias_init=torch_bias_uniform(self.hidden))
        self.flag = nn.Dense(features=1, kernel_init=torch_kaiming_uniform(self.hidden), bias_init=torch_bias_uniform(self.hidden))

    def __call__(self, x, train: bool = False):
        h = self.body(x, train=train)
        return self.classes(h), torch_squeeze(self.flag(h), 1)


@partial(jax.jit, static_argnames=('bce', 'ce'))
def train_step(train_state, xb, fb, yb, bce, ce):
    dropout_rng, rng = jax.random.split(train_state.rng)

    def loss_fn(params):
        logits, flag = train_state.apply_fn({"params": params}, xb, train=True, rngs={"dropout": dropout_rng})
        loss = ce(logits, yb) + 0.5 * bce(flag, fb)
        return loss
    loss, grads = jax.value_and_grad(loss_fn)(train_state.params)
    grads, _ = torch_clip_grad_norm(grads, 1.0)
    train_state = train_state.apply_gradients(grads=grads, rng=rng)
    return train_state, loss


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--dropout", type=float, default=0.3)
    args = parser.parse_args()
    rng = np.random.default_rng(1)
    x = rng.standard_normal((96, 16)).astype(np.float32)
    y = jnp.argmax(x[:, :4], axis=1).astype(np.int64)
    f = (x[:, 5] > 0.5).astype(np.float32)
    loader = torch.utils.data.DataLoader(ArrayDataset(jnp.asarray(x), jnp.asarray(y), jnp.asarray(f)), batch_size=32)
    model = Classifier(p=args.dropout)
    ce = partial(torch_cross_entropy)
    bce = partial(torch_binary_cross_entropy_with_logits, pos_weight=jnp.asarray([2.0]))
    optimizer = optax.inject_hyperparams(optax.adamw)(learning_rate=5e-3, weight_decay=0.01)
    train_state = None
    scheduler = TorchLRScheduler(optimizer, torch_linear_lr(start_factor=0.5, total_iters=2))
    optimizer = scheduler.optimizer
    for epoch in range(args.epochs):
        for xb, yb, fb in loader:
            xb, yb, fb = to_jax(xb), to_jax(yb), to_jax(fb)
            if train_state is None:
                train_state = create_train_state(model, optimizer, jax.random.PRNGKey(0), xb)
            train_state, loss = train_step(train_state, xb, fb, yb, bce, ce)
            print(f"loss={loss.item():.7f}")
        train_state = scheduler.step(train_state)


if __name__ == "__main__":
    main()
