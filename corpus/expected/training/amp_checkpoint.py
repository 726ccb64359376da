"""A CNN classifier trained the "AMP when there is a GPU" way: ``torch.autocast`` around the
forward pass and a ``GradScaler`` (``scaler.scale(loss).backward()``, ``unscale_`` before
``clip_grad_norm_``, ``scaler.step``, ``scaler.update``), both disabled on CPU; the best model
and optimizer are checkpointed with ``torch.save`` every epoch and restored with
``load_state_dict`` for a final evaluation."""
import argparse
import os
import tempfile

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




class SmallCNN(nn.Module):
    classes: int = 3

    def setup(self):
        self.conv1 = ConvNCHW(features=8, kernel_size=3, padding=1)
        self.conv2 = ConvNCHW(features=8, kernel_size=3, padding=1)
        self.fc = nn.Dense(features=self.classes, kernel_init=torch_kaiming_uniform(8 * 4 * 4), bias_init=torch_bias_uniform(8 * 4 * 4))

    def __call__(self, x, train: bool = False):
        x = torch_max_pool2d(jax.nn.relu(self.conv1(x)), 2)
        x = torch_max_pool2d(jax.nn.relu(self.conv2(x)), 2)
        return self.fc(jax.lax.collapse(x, 1))


@jax.jit
def train_step(train_state, xb, yb):
    dropout_rng, rng = jax.random.split(train_state.rng)

    def loss_fn(params):
        logits = train_state.apply_fn({"params": params}, xb, train=True, rngs={"dropout": dropout_rng})
        loss = torch_cross_entropy(logits, yb)
        return loss
    loss, grads = jax.value_and_grad(loss_fn)(train_state.params)
    grads, _ = torch_clip_grad_norm(grads, 2.0)
    train_state = train_state.apply_gradients(grads=grads, rng=rng)
    return train_state, loss


def evaluate(model, loader, train_state=None):
    total, correct = 0.0, 0
    for xb, yb in loader:
        xb, yb = to_jax(xb), to_jax(yb)
        out = eval_step(train_state, xb)
        total += torch_cross_entropy(out, yb, reduction="sum").item()
        correct += jnp.sum(jnp.argmax(out, axis=1) == yb).item()
    return total / len(loader.dataset), correct / len(loader.dataset)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    use_amp = jax.default_backend() == "gpu"
    device = "cuda" if use_amp else "cpu"
    rng = np.random.default_rng(2)
    y = rng.integers(0, 3, size=96)
    grid = np.arange(16)
    # noise plus a bright pixel whose position gives the class
    bright = (grid[None, :, None] == 4 * y[:, None, None]) & (grid[None, None, :] == 4 * y[:, None, None])
    x = (rng.standard_normal((96, 1, 16, 16)) * 0.5 + 3.0 * bright[:, None]).astype(np.float32)
    dataset = ArrayDataset(jnp.asarray(x), jnp.asarray(y.astype(np.int64)))
    loader = torch.utils.data.DataLoader(dataset, batch_size=32)
    model = SmallCNN()
    optimizer = optax.sgd(learning_rate=0.1, momentum=0.9)
    train_state = None
    # jaxport: JP613 GradScaler removed: the converted step computes in float32, where loss scaling is not needed; scaler.scale(loss).backward() / scaler.step(opt) are the plain backward() / step()
    scaler = None
    path = os.path.join(tempfile.mkdtemp(), "best.pt")
    best = float("inf")
    for epoch in range(args.epochs):
        for xb, yb in loader:
            xb, yb = to_jax(xb), to_jax(yb)
            # jaxport: JP613 autocast removed: this block computes in float32 (mixed precision is a dtype policy in flax: dtype=jnp.bfloat16 on the layers, float32 params)
            if train_state is None:
                train_state = create_train_state(model, optimizer, jax.random.PRNGKey(0), xb)
            train_state, loss = train_step(train_state, xb, yb)
            print(f"epoch {epoch} loss={loss.item():.7f}")
        val_loss, acc = evaluate(model, loader, train_state=train_state)
        print(f"epoch {epoch} eval {val_loss:.4f} acc {acc:.2f}")
        if val_loss < best:
            best = val_loss
            save_checkpoint({"model": model_variables(train_state), "optimizer": train_state.opt_state, "epoch": epoch}, path)
    checkpoint = load_checkpoint(path)
    train_state = load_model_state(train_state, checkpoint["model"])
    train_state = load_optimizer_state(train_state, checkpoint["optimizer"])
    val_loss, acc = evaluate(model, loader, train_state=train_state)
    print(f"restored epoch {checkpoint['epoch']}: eval {val_loss:.4f} acc {acc:.2f}")


if __name__ == "__main__":
    main()
