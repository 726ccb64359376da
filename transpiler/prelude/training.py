"""Helpers for converted training scripts: a flax TrainState that also carries BatchNorm
statistics and the dropout key, model init from a first batch, torch-style learning-rate
schedulers on top of ``optax.inject_hyperparams``, SGD with dampening, a dataset over
arrays and checkpoint files."""
import inspect
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import serialization
from flax.training.train_state import TrainState as FlaxTrainState
from typing import Any


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


def torch_clip_grad_value(grads, clip_value):
    """``torch.nn.utils.clip_grad_value_``."""
    return jax.tree_util.tree_map(lambda g: jnp.clip(g, -clip_value, clip_value), grads)


def torch_sgd_momentum(momentum=0.0, dampening=0.0, nesterov=False):
    """torch SGD's momentum buffer with ``dampening``: the first step stores the gradient,
    later steps buf = momentum * buf + (1 - dampening) * grad (nesterov: grad + momentum * buf)."""
    def init(params):
        return (jnp.zeros([], jnp.int32), jax.tree_util.tree_map(jnp.zeros_like, params))

    def update(updates, state, params=None):
        count, trace = state
        first = count == 0
        buf = jax.tree_util.tree_map(
            lambda g, t: jnp.where(first, g, momentum * t + (1.0 - dampening) * g), updates, trace)
        out = jax.tree_util.tree_map(lambda g, b: g + momentum * b, updates, buf) if nesterov else buf
        return out, (count + 1, buf)

    return optax.GradientTransformation(init, update)


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


def torch_step_lr(step_size, gamma=0.1):
    """``StepLR``: base * gamma ** (count // step_size)."""
    return lambda base: optax.exponential_decay(base, step_size, gamma, staircase=True)


def torch_multistep_lr(milestones, gamma=0.1):
    """``MultiStepLR``: base * gamma ** (number of milestones <= count; repeats count twice)."""
    return lambda base: (lambda count: base * gamma ** sum(1 for m in milestones if count >= m))


def torch_exponential_lr(gamma):
    """``ExponentialLR``: base * gamma ** count."""
    return lambda base: optax.exponential_decay(base, 1, gamma)


def torch_cosine_annealing_lr(T_max, eta_min=0.0):
    """``CosineAnnealingLR``: eta_min + (base - eta_min) * (1 + cos(pi * count / T_max)) / 2,
    also after T_max (torch keeps following the cosine; optax.cosine_decay_schedule stops)."""
    return lambda base: (lambda count: eta_min + (base - eta_min) * (1 + math.cos(math.pi * count / T_max)) / 2)


def torch_linear_lr(start_factor=1.0 / 3, end_factor=1.0, total_iters=5):
    """``LinearLR``: the factor goes linearly from start_factor to end_factor in total_iters steps."""
    return lambda base: optax.linear_schedule(base * start_factor, base * end_factor, total_iters)


def torch_lambda_lr(lr_lambda):
    """``LambdaLR``: base * lr_lambda(count)."""
    return lambda base: (lambda count: base * lr_lambda(count))


def torch_onecycle_lr(max_lr, total_steps=None, epochs=None, steps_per_epoch=None, pct_start=0.3,
                      anneal_strategy="cos", div_factor=25.0, final_div_factor=1e4, three_phase=False):
    """``OneCycleLR`` (learning rate only): warm up from max_lr / div_factor to max_lr over
    pct_start of the steps, then anneal to initial / final_div_factor (three_phase: back to the
    initial value first)."""
    if total_steps is None:
        total_steps = epochs * steps_per_epoch
    initial = max_lr / div_factor
    final = initial / final_div_factor
    if three_phase:
        phases = [(float(pct_start * total_steps) - 1, initial, max_lr),
                  (float(2 * pct_start * total_steps) - 2, max_lr, initial),
                  (total_steps - 1, initial, final)]
    else:
        phases = [(float(pct_start * total_steps) - 1, initial, max_lr), (total_steps - 1, max_lr, final)]

    def anneal(start, end, pct):
        if anneal_strategy == "cos":
            return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)
        return (end - start) * pct + start

    def schedule(count):
        start_step = 0.0
        for i, (end_step, start, end) in enumerate(phases):
            if count <= end_step or i == len(phases) - 1:
                return anneal(start, end, (count - start_step) / (end_step - start_step))
            start_step = end_step
        return final

    return lambda base: schedule


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


def load_checkpoint(path):
    """``torch.load`` of a file written by ``save_checkpoint``: the nested dict of arrays."""
    with open(path, "rb") as fh:
        return serialization.msgpack_restore(fh.read())


def torch_param_name(path):
    """The torch-style name of a flax parameter path, for the name tests of parameter groups
    (``named_parameters()``): keys joined with '.', Sequential children ``layers_3`` → ``3``,
    list/dict children ``blocks_0`` → ``blocks.0``, and flax's ``kernel``/``scale``/
    ``embedding`` leaves → ``weight``."""
    keys = [str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path]
    out = []
    for i, key in enumerate(keys):
        head, _, tail = key.rpartition("_")
        if i == len(keys) - 1 and key in ("kernel", "scale", "embedding"):
            out.append("weight")
        elif head == "layers" and tail.isdigit():
            out.append(tail)
        elif head and tail.isdigit():
            out += [head, tail]
        else:
            out.append(key)
    return ".".join(out)


def param_group_labels(groups):
    """``optax.multi_transform`` labels for torch parameter groups: ``groups`` maps a label
    to a predicate ``select(name, param)`` (name as ``torch_param_name`` gives it); a
    parameter gets the first label whose predicate holds, or "frozen" (torch does not
    update parameters that are in no group)."""
    def labels(params):
        def label(path, param):
            name = torch_param_name(path)
            for key, select in groups.items():
                if select(name, param):
                    return key
            return "frozen"
        return jax.tree_util.tree_map_with_path(label, params)
    return labels


def set_optimizer_lr(state, tx, lr):
    """``for g in optimizer.param_groups: g["lr"] = lr``: the learning rate of every
    ``optax.inject_hyperparams`` state set to ``lr``. Returns ``(state, tx)``: before the
    training state exists (``state is None``) the optimizer is rebuilt so that its state
    starts at ``lr``, as the first torch step would use it."""
    if state is not None:
        return state.replace(opt_state=set_learning_rate(state.opt_state, lr)), tx
    update = tx.update

    def init(params):
        return set_learning_rate(tx.init(params), lr)

    return None, optax.GradientTransformationExtraArgs(init, update)


def torch_clip_by_norm(max_norm, norm_type=2.0):
    """``clip_grad_norm_`` as an optax transformation (torch's max_norm / (norm + 1e-6) scale),
    for gradients that an accumulating optimizer clips once per step."""
    def init(params):
        return optax.EmptyState()

    def update(updates, state, params=None):
        return torch_clip_grad_norm(updates, max_norm, norm_type)[0], state

    return optax.GradientTransformation(init, update)


def torch_clip_by_value(clip_value):
    """``clip_grad_value_`` as an optax transformation."""
    def init(params):
        return optax.EmptyState()

    def update(updates, state, params=None):
        return torch_clip_grad_value(updates, clip_value), state

    return optax.GradientTransformation(init, update)


def load_model_state(state, variables):
    """``model.load_state_dict(sd)`` with ``sd`` read by ``load_checkpoint`` from a file that
    ``save_checkpoint(model_variables(state), path)`` wrote: parameters (and BatchNorm
    statistics) restored into the training state, their structure checked against it."""
    if state is None:
        raise ValueError("load_state_dict before the training state exists: run a training step "
                         "(or call create_train_state) first, then restore into it")
    params = serialization.from_state_dict(state.params, variables["params"])
    stats = state.batch_stats
    if state.batch_stats and "batch_stats" in variables:
        stats = serialization.from_state_dict(state.batch_stats, variables["batch_stats"])
    return state.replace(params=params, batch_stats=stats)


def load_optimizer_state(state, opt_state):
    """``optimizer.load_state_dict(sd)`` with ``sd`` saved from ``state.opt_state``."""
    if state is None:
        raise ValueError("load_state_dict before the training state exists: run a training step "
                         "(or call create_train_state) first, then restore into it")
    return state.replace(opt_state=serialization.from_state_dict(state.opt_state, opt_state))
