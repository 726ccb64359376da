"""MNIST-style convnet (pytorch/examples layout: train()/test() functions, SGD + StepLR,
a test loop under no_grad, torch.save of the state dict) on synthetic images."""
import argparse

import numpy as np

import torch
import jax
import jax.numpy as jnp
import flax.linen as nn
import optax
import math
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


def ntuple(value, n):
    """``value`` repeated ``n`` times if it is a scalar, else as a tuple."""
    if isinstance(value, (int, float)):
        return (value,) * n
    return tuple(value)


def conv_dimension_numbers(nd):
    """lax dimension numbers for channels-first input and a (*spatial, in, out) kernel."""
    spatial = "DHW"[3 - nd:] if nd <= 3 else "".join(chr(ord("a") + i) for i in range(nd))
    return ("NC" + spatial, spatial + "IO", "NC" + spatial)


def conv_padding(padding, kernel_size, dilation):
    """torch Conv padding (int, tuple, 'valid' or 'same') as (low, high) pairs."""
    if padding == "valid":
        return [(0, 0)] * len(kernel_size)
    if padding == "same":
        pairs = []
        for k, d in zip(kernel_size, dilation):
            total = d * (k - 1)
            pairs.append((total // 2, total - total // 2))
        return pairs
    return [(p, p) for p in ntuple(padding, len(kernel_size))]


TORCH_PAD_MODES = {"zeros": "constant", "constant": "constant", "reflect": "reflect",
                   "replicate": "edge", "circular": "wrap"}


class ConvNCHW(nn.Module):
    """torch.nn.Conv1d/2d/3d on channels-first input.

    ``kernel`` is (*kernel_size, in // groups, out) as in nn.Conv; ``padding`` follows torch
    (int, tuple, 'same', 'valid'; ``padding_mode`` zeros/reflect/replicate/circular).
    Initialised like torch by default: U(+-1/sqrt(fan_in)) for kernel and bias.
    """
    features: int
    kernel_size: Any
    strides: Any = 1
    padding: Any = 0
    kernel_dilation: Any = 1
    feature_group_count: int = 1
    use_bias: bool = True
    padding_mode: str = "zeros"
    kernel_init: Any = None
    bias_init: Any = None
    precision: Any = None

    @nn.compact
    def __call__(self, x):
        nd = x.ndim - 2
        kernel_size = ntuple(self.kernel_size, nd)
        dilation = ntuple(self.kernel_dilation, nd)
        groups = self.feature_group_count
        fan_in = x.shape[1] // groups * math.prod(kernel_size)
        kernel = self.param("kernel", self.kernel_init or torch_kaiming_uniform(),
                            kernel_size + (x.shape[1] // groups, self.features))
        pads = conv_padding(self.padding, kernel_size, dilation)
        if self.padding_mode != "zeros":
            x = jnp.pad(x, [(0, 0), (0, 0)] + pads, mode=TORCH_PAD_MODES[self.padding_mode])
            pads = [(0, 0)] * nd
        y = jax.lax.conv_general_dilated(
            x, kernel.astype(x.dtype), ntuple(self.strides, nd), pads, rhs_dilation=dilation,
            dimension_numbers=conv_dimension_numbers(nd), feature_group_count=groups,
            precision=self.precision)
        if self.use_bias:
            bias = self.param("bias", self.bias_init or torch_bias_uniform(fan_in), (self.features,))
            y = y + bias.astype(y.dtype).reshape((-1,) + (1,) * nd)
        return y


def _tuple(v, n):
    return tuple(v) if isinstance(v, (tuple, list)) else (v,) * n


def _pool_padding(size, kernel, stride, pad, dilation, ceil_mode):
    span = dilation * (kernel - 1) + 1
    if ceil_mode:
        out = -(-(size + 2 * pad - span) // stride) + 1
        if (out - 1) * stride >= size + pad:
            out -= 1
    else:
        out = (size + 2 * pad - span) // stride + 1
    hi = (out - 1) * stride + span - size - pad
    return (pad, max(hi, 0))


def _pool(x, n, kernel_size, stride, padding, dilation, ceil_mode, init, op):
    kernel = _tuple(kernel_size, n)
    stride = _tuple(stride if stride not in (None, []) else kernel_size, n)
    padding, dilation = _tuple(padding, n), _tuple(dilation, n)
    pads = [_pool_padding(x.shape[x.ndim - n + i], kernel[i], stride[i], padding[i], dilation[i], ceil_mode)
            for i in range(n)]
    lead = x.ndim - n
    return jax.lax.reduce_window(x, init, op, (1,) * lead + kernel, (1,) * lead + stride,
                                 [(0, 0)] * lead + pads, window_dilation=(1,) * lead + dilation), pads


def torch_max_pool(x, n, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
    """``F.max_pool{n}d`` on channels-first input (padding counts as -inf)."""
    out, _ = _pool(x, n, kernel_size, stride, padding, dilation, ceil_mode, -jnp.inf, jax.lax.max)
    return out


def torch_max_pool2d(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
    """``F.max_pool2d`` on (N, C, H, W) input."""
    return torch_max_pool(x, 2, kernel_size, stride, padding, dilation, ceil_mode)


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


def torch_step_lr(step_size, gamma=0.1):
    """``StepLR``: base * gamma ** (count // step_size)."""
    return lambda base: optax.exponential_decay(base, step_size, gamma, staircase=True)


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




class Net(nn.Module):
    dropout: float = 0.25

    def setup(self):
        self.conv1 = ConvNCHW(features=4, kernel_size=3, strides=1)
        self.conv2 = ConvNCHW(features=8, kernel_size=3, strides=1)
        self.dropout1 = nn.Dropout(rate=self.dropout)
        self.fc1 = nn.Dense(features=16, kernel_init=torch_kaiming_uniform(8 * 5 * 5), bias_init=torch_bias_uniform(8 * 5 * 5))
        self.fc2 = nn.Dense(features=10, kernel_init=torch_kaiming_uniform(16), bias_init=torch_bias_uniform(16))

    def __call__(self, x, train: bool = False):
        x = jax.nn.relu(self.conv1(x))
        x = jax.nn.relu(self.conv2(x))
        x = torch_max_pool2d(x, 2)
        x = self.dropout1(x, deterministic=not train)
        x = jax.lax.collapse(x, 1)
        x = jax.nn.relu(self.fc1(x))
        x = self.fc2(x)
        return jax.nn.log_softmax(x, axis=1)


@jax.jit
def train_step(train_state, data, target):
    dropout_rng, rng = jax.random.split(train_state.rng)

    def loss_fn(params):
        output = train_state.apply_fn({"params": params}, data, train=True, rngs={"dropout": dropout_rng})
        loss = torch_nll_loss(output, target)
        return loss
    loss, grads = jax.value_and_grad(loss_fn)(train_state.params)
    train_state = train_state.apply_gradients(grads=grads, rng=rng)
    return train_state, loss


def train(args, model, device, train_loader, optimizer, epoch, train_state=None):
    for batch_idx, (data, target) in enumerate(train_loader):
        data, target = to_jax(data), to_jax(target)
        if train_state is None:
            train_state = create_train_state(model, optimizer, jax.random.PRNGKey(1), data)
        train_state, loss = train_step(train_state, data, target)
        if batch_idx % args.log_interval == 0:
            print(f"Train Epoch: {epoch} [{batch_idx}] loss={loss.item():.7f}")
    return train_state


def test(model, device, test_loader, train_state=None):
    test_loss = 0
    correct = 0
    for data, target in test_loader:
        data, target = to_jax(data), to_jax(target)
        output = eval_step(train_state, data)
        test_loss += torch_nll_loss(output, target, reduction="sum").item()
        pred = jnp.argmax(output, axis=1, keepdims=True)
        correct += jnp.sum(jnp.equal(pred, jnp.reshape(target, pred.shape))).item()
    test_loss /= len(test_loader.dataset)
    print(f"Test set: average loss {test_loss:.4f}, accuracy {correct}/{len(test_loader.dataset)}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--gamma", type=float, default=0.7)
    parser.add_argument("--log-interval", type=int, default=1)
    parser.add_argument("--dropout", type=float, default=0.25)
    parser.add_argument("--save", default="")
    args = parser.parse_args()
    rng_key = jax.random.PRNGKey(1)
    device = jax.devices()[0]
    data = np.random.default_rng(0)
    y_np = data.integers(0, 10, size=64)
    prototypes = data.standard_normal((10, 1, 14, 14))
    x_np = 0.5 * data.standard_normal((64, 1, 14, 14)) + prototypes[y_np]
    x = jnp.asarray(x_np.astype(np.float32))
    y = jnp.asarray(y_np)
    train_loader = torch.utils.data.DataLoader(ArrayDataset(x, y), batch_size=16)
    test_loader = torch.utils.data.DataLoader(ArrayDataset(x[:32], y[:32]), batch_size=16)
    model = Net(args.dropout)
    optimizer = optax.inject_hyperparams(optax.sgd)(learning_rate=args.lr, momentum=0.9)
    train_state = None
    scheduler = TorchLRScheduler(optimizer, torch_step_lr(1, gamma=args.gamma))
    optimizer = scheduler.optimizer
    for epoch in range(1, args.epochs + 1):
        train_state = train(args, model, device, train_loader, optimizer, epoch, train_state=train_state)
        test(model, device, test_loader, train_state=train_state)
        train_state = scheduler.step(train_state)
    if args.save:
        save_checkpoint(model_variables(train_state), args.save)


if __name__ == "__main__":
    main()
