"""CIFAR-style small ResNet with BatchNorm trained with SGD (nesterov, weight decay), a
cosine schedule stepped per batch and label smoothing; evaluation with running statistics."""
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
class TorchBatchNorm(nn.BatchNorm):
    """torch.nn.BatchNorm1d/2d/3d and SyncBatchNorm as flax's ``nn.BatchNorm``: same fields
    (``momentum`` is flax's, 1 - torch's), same variables (``params/scale|bias``,
    ``batch_stats/mean|var``). In training it normalises with the biased batch variance and,
    as torch does, updates ``var`` with the unbiased one (x n/(n-1), n the elements per
    feature over every device of ``axis_name``); flax's BatchNorm stores the biased one.
    The variance is two-pass unless ``use_fast_variance``; statistics are at least float32
    with ``force_float32_reductions``."""
    use_fast_variance: bool = False

    @nn.compact
    def __call__(self, x, use_running_average=None):
        use_running_average = nn.merge_param("use_running_average", self.use_running_average,
                                             use_running_average)
        features = {a % x.ndim for a in (self.axis if isinstance(self.axis, tuple) else (self.axis,))}
        axes = tuple(i for i in range(x.ndim) if i not in features)
        shape = tuple(1 if i in axes else d for i, d in enumerate(x.shape))    # broadcasts on x
        feature_shape = tuple(x.shape[i] for i in sorted(features))
        stats_dtype = jnp.float32 if self.force_float32_reductions else self.param_dtype
        ra_mean = self.variable("batch_stats", "mean", jnp.zeros, feature_shape, stats_dtype)
        ra_var = self.variable("batch_stats", "var", jnp.ones, feature_shape, stats_dtype)
        if use_running_average:
            mean, var = ra_mean.value, ra_var.value
        else:
            xs = x.astype(jnp.promote_types(self.dtype or x.dtype, stats_dtype))
            axis_name = None if self.is_initializing() else self.axis_name

            def over_devices(reduce, v):
                if axis_name is None:
                    return v
                return reduce(v, axis_name, axis_index_groups=self.axis_index_groups)

            mean = over_devices(jax.lax.pmean, xs.mean(axes))
            if self.use_fast_variance:
                var = jnp.maximum(over_devices(jax.lax.pmean, (xs * xs).mean(axes)) - mean * mean, 0)
            else:
                var = over_devices(jax.lax.pmean, jnp.square(xs - mean.reshape(shape)).mean(axes))
            if not self.is_initializing():
                n = over_devices(jax.lax.psum, jnp.asarray(math.prod(x.shape[i] for i in axes), xs.dtype))
                m = self.momentum
                ra_mean.value = m * ra_mean.value + (1 - m) * mean
                ra_var.value = m * ra_var.value + (1 - m) * var * n / (n - 1)
        mul = jax.lax.rsqrt(var.reshape(shape) + self.epsilon)
        args = [x]
        if self.use_scale:
            scale = self.param("scale", self.scale_init, feature_shape, self.param_dtype)
            mul = mul * scale.reshape(shape)
            args.append(scale)
        y = (x - mean.reshape(shape)) * mul
        if self.use_bias:
            bias = self.param("bias", self.bias_init, feature_shape, self.param_dtype)
            y = y + bias.reshape(shape)
            args.append(bias)
        return y.astype(self.dtype or jnp.result_type(*args))


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


def _tuple(v, n):
    return tuple(v) if isinstance(v, (tuple, list)) else (v,) * n


def torch_adaptive_pool(x, output_size, n, reduce):
    """Adaptive pooling over the last ``n`` axes: bin i spans floor(i*in/out)..ceil((i+1)*in/out)."""
    sizes = _tuple(output_size, n)
    for i in range(n):
        axis = x.ndim - n + i
        size_in = x.shape[axis]
        size_out = size_in if sizes[i] is None else sizes[i]
        pieces = []
        for j in range(size_out):
            lo, hi = (j * size_in) // size_out, -(-((j + 1) * size_in) // size_out)
            pieces.append(reduce(jax.lax.slice_in_dim(x, lo, hi, axis=axis), axis=axis, keepdims=True))
        x = jnp.concatenate(pieces, axis=axis)
    return x


def torch_adaptive_avg_pool2d(x, output_size):
    """``F.adaptive_avg_pool2d`` on (N, C, H, W) input."""
    return torch_adaptive_pool(x, output_size, 2, jnp.mean)


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


def torch_cosine_annealing_lr(T_max, eta_min=0.0):
    """``CosineAnnealingLR``: eta_min + (base - eta_min) * (1 + cos(pi * count / T_max)) / 2,
    also after T_max (torch keeps following the cosine; optax.cosine_decay_schedule stops)."""
    return lambda base: (lambda count: eta_min + (base - eta_min) * (1 + math.cos(math.pi * count / T_max)) / 2)


class ArrayDataset:
    """``TensorDataset`` over JAX/NumPy arrays (kept as NumPy on the host): a map-style
    dataset that torch's DataLoader batches like a TensorDataset."""

    def __init__(self, *arrays):
        self.arrays = tuple(np.array(a) for a in arrays)

    def __len__(self):
        return len(self.arrays[0])

    def __getitem__(self, index):
        return tuple(a[index] for a in self.arrays)




class BasicBlock(nn.Module):
    in_planes: Any
    planes: Any
    stride: int = 1

    def setup(self):
        self.conv1 = ConvNCHW(features=self.planes, kernel_size=3, strides=self.stride, padding=1, use_bias=False)
        self.bn1 = TorchBatchNorm(axis=1, momentum=0.9, epsilon=1e-05)
        self.conv2 = ConvNCHW(features=self.planes, kernel_size=3, strides=1, padding=1, use_bias=False)
        self.bn2 = TorchBatchNorm(axis=1, momentum=0.9, epsilon=1e-05)
        _shortcut = Sequential([])
        if self.stride != 1 or self.in_planes != self.planes:
            _shortcut = Sequential([ConvNCHW(features=self.planes, kernel_size=1, strides=self.stride, use_bias=False), TorchBatchNorm(axis=1, momentum=0.9, epsilon=1e-05)])
        self.shortcut = _shortcut

    def __call__(self, x, train: bool = False):
        out = jax.nn.relu(self.bn1(self.conv1(x), use_running_average=not train))
        out = self.bn2(self.conv2(out), use_running_average=not train)
        out += self.shortcut(x, train=train)
        return jax.nn.relu(out)


class SmallResNet(nn.Module):
    num_classes: int = 10

    def setup(self):
        self.conv1 = ConvNCHW(features=8, kernel_size=3, strides=1, padding=1, use_bias=False)
        self.bn1 = TorchBatchNorm(axis=1, momentum=0.9, epsilon=1e-05)
        self.layer1 = BasicBlock(8, 8)
        self.layer2 = BasicBlock(8, 16, stride=2)
        self.fc = nn.Dense(features=self.num_classes, kernel_init=torch_kaiming_uniform(16), bias_init=torch_bias_uniform(16))

    def __call__(self, x, train: bool = False):
        out = jax.nn.relu(self.bn1(self.conv1(x), use_running_average=not train))
        out = self.layer2(self.layer1(out, train=train), train=train)
        out = jax.lax.collapse(torch_adaptive_avg_pool2d(out, 1), 1)
        return self.fc(out)


@partial(jax.jit, static_argnames=('criterion',))
def train_step(train_state, inputs, labels, criterion):
    dropout_rng, rng = jax.random.split(train_state.rng)

    def loss_fn(params):
        outputs, updates = train_state.apply_fn({"params": params, "batch_stats": train_state.batch_stats}, inputs, train=True, rngs={"dropout": dropout_rng}, mutable=["batch_stats"])
        loss = criterion(outputs, labels)
        return loss, (updates, outputs)
    (loss, (updates, outputs)), grads = jax.value_and_grad(loss_fn, has_aux=True)(train_state.params)
    train_state = train_state.apply_gradients(grads=grads, rng=rng, batch_stats=updates["batch_stats"])
    return train_state, loss, outputs


def train_epoch(model, loader, optimizer, scheduler, criterion, train_state=None):
    correct = 0
    for inputs, labels in loader:
        inputs, labels = to_jax(inputs), to_jax(labels)
        if train_state is None:
            train_state = create_train_state(model, optimizer, jax.random.PRNGKey(0), inputs)
        train_state, loss, outputs = train_step(train_state, inputs, labels, criterion)
        train_state = scheduler.step(train_state)
        correct += jnp.sum(jnp.argmax(outputs, axis=1) == labels).item()
        print(f"loss={loss.item():.7f} lr={scheduler.get_last_lr()[0]:.5f}")
    return train_state, correct / len(loader.dataset)


def evaluate(model, loader, train_state=None):
    correct = 0
    for inputs, labels in loader:
        inputs, labels = to_jax(inputs), to_jax(labels)
        correct += jnp.sum(jnp.argmax(eval_step(train_state, inputs), axis=1) == labels).item()
    return correct / len(loader.dataset)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, size=48)
    images = rng.standard_normal((48, 3, 8, 8)).astype(np.float32) + labels[:, None, None, None] / 10
    loader = torch.utils.data.DataLoader(ArrayDataset(jnp.asarray(images.astype(np.float32)), jnp.asarray(labels)),
                        batch_size=16)
    model = SmallResNet()
    criterion = partial(torch_cross_entropy, label_smoothing=0.1)
    optimizer = optax.chain(optax.add_decayed_weights(5e-4), optax.inject_hyperparams(optax.sgd)(learning_rate=0.05, momentum=0.9, nesterov=True))
    train_state = None
    scheduler = TorchLRScheduler(optimizer, torch_cosine_annealing_lr(args.epochs * len(loader)))
    optimizer = scheduler.optimizer
    for epoch in range(args.epochs):
        train_state, acc = train_epoch(model, loader, optimizer, scheduler, criterion, train_state=train_state)
        print(f"epoch {epoch} train acc {acc:.3f} eval acc {evaluate(model, loader, train_state=train_state):.3f}")


if __name__ == "__main__":
    main()
