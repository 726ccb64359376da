"""A tiny GPT trained with DDP and gradient accumulation, launched with torchrun:

    torchrun --nproc_per_node=8 ddp_gpt_accum.py --accum 2

Each optimizer step accumulates ``accum`` micro-batches; all but the last run under
``model.no_sync()`` so that DDP all-reduces the gradients once per step. AdamW, gradient
clipping on the accumulated gradients, a DistributedSampler over token windows, rank 0 logs
and saves the checkpoint."""
import argparse
import math
import os

import numpy as np
import torch
import jax
import jax.numpy as jnp
import flax.linen as nn
import optax
from functools import partial
from typing import Any
from typing import Sequence
import inspect
from flax.training.train_state import TrainState as FlaxTrainState
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


def torch_normal_init(padding_idx=None):
    """N(0, 1) with row ``padding_idx`` zeroed: torch's default for Embedding weights."""
    def init(key, shape, dtype=jnp.float32):
        table = jax.random.normal(key, shape, dtype)
        if padding_idx is not None:
            table = table.at[padding_idx].set(0)
        return table
    return init


def ntuple(value, n):
    """``value`` repeated ``n`` times if it is a scalar, else as a tuple."""
    if isinstance(value, (int, float)):
        return (value,) * n
    return tuple(value)


class LayerNormLastAxes(nn.Module):
    """torch.nn.LayerNorm: normalises over the last ``len(normalized_shape)`` axes;
    ``scale``/``bias`` have shape ``normalized_shape`` (two-pass variance, like torch)."""
    normalized_shape: Any
    epsilon: float = 1e-5
    use_scale: bool = True
    use_bias: bool = True
    scale_init: Any = nn.initializers.ones_init()
    bias_init: Any = nn.initializers.zeros_init()

    @nn.compact
    def __call__(self, x):
        shape = ntuple(self.normalized_shape, 1)
        axes = tuple(range(-len(shape), 0))
        mean = jnp.mean(x, axis=axes, keepdims=True)
        centred = x - mean
        mul = jax.lax.rsqrt(jnp.mean(jnp.square(centred), axis=axes, keepdims=True) + self.epsilon)
        if self.use_scale:   # scale folded into the per-row factor: one full-size product less
            mul = mul * self.param("scale", self.scale_init, shape)
        y = centred * mul
        if self.use_bias:
            y = y + self.param("bias", self.bias_init, shape)
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


def torch_split(x, split_size_or_sections, dim=0):
    """``torch.split``: an int is a chunk *size* (the last chunk may be smaller); a list gives
    the size of each piece (``jnp.split`` takes counts or cut indices instead)."""
    size = x.shape[dim]
    if isinstance(split_size_or_sections, int):
        cuts = list(range(split_size_or_sections, size, split_size_or_sections))
    else:
        cuts, total = [], 0
        for part in list(split_size_or_sections)[:-1]:
            total += int(part)
            cuts.append(total)
    return tuple(jnp.split(x, cuts, axis=dim))


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


def initialize_distributed():
    """``torch.distributed.init_process_group``: a no-op on one host. Several hosts run one
    process each and call ``jax.distributed.initialize``: explicitly when
    ``JAX_COORDINATOR_ADDRESS`` (with ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``) is set,
    or with JAX's own cluster detection under SLURM / Open MPI with more than one task."""
    if jax.distributed.is_initialized():
        return
    address = os.environ.get("JAX_COORDINATOR_ADDRESS")
    if address:
        jax.distributed.initialize(address, num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
                                   process_id=int(os.environ["JAX_PROCESS_ID"]))
    elif int(os.environ.get("SLURM_NTASKS", "1")) > 1 or int(os.environ.get("OMPI_COMM_WORLD_SIZE", "1")) > 1:
        jax.distributed.initialize()


def replicate(tree):
    """A copy of every leaf on each local device (a leading axis of size
    ``jax.local_device_count()``), as ``jax.pmap`` takes replicated state."""
    n = jax.local_device_count()
    return jax.tree_util.tree_map(lambda x: jnp.broadcast_to(jnp.asarray(x), (n,) + jnp.shape(x)), tree)


def unreplicate(tree):
    """The first device's copy of replicated state (for logging, evaluation, checkpoints)."""
    return jax.tree_util.tree_map(lambda x: x[0], tree)


def shard_batch(batch):
    """A process's batch (N, ...) → (local devices, N // local devices, ...) for ``jax.pmap``."""
    n = jax.local_device_count()

    def split(x):
        x = x if isinstance(x, jax.Array) else np.asarray(x)   # host data goes straight to its device
        if x.ndim == 0 or x.shape[0] % n:
            raise ValueError(f"a batch of shape {x.shape} cannot be split over {n} devices: make the "
                             f"batch size a multiple of the local device count (drop_last=True)")
        return x.reshape((n, x.shape[0] // n) + x.shape[1:])

    return jax.tree_util.tree_map(split, batch)


def from_devices(x):
    """One output of a pmapped step as the host sees it: per-example values (devices, n, ...)
    → (devices * n, ...); per-device scalars → their mean (the loss is already ``pmean``-ed)."""
    x = jnp.asarray(x)
    if x.ndim == 1:
        return jnp.mean(x, axis=0) if jnp.issubdtype(x.dtype, jnp.inexact) else x[0]
    return x.reshape((x.shape[0] * x.shape[1],) + x.shape[2:])


def unshard_outputs(result):
    """``(state, *outputs)`` of a pmapped train step: the state stays replicated, each output
    is gathered with ``from_devices``."""
    state, *outputs = result
    return (state, *[jax.tree_util.tree_map(from_devices, o) for o in outputs])


class ShardedSampler:
    """``DistributedSampler`` for one JAX process per host: this process's share of the
    dataset's indices. Shuffled with a NumPy generator seeded by ``seed + epoch`` (call
    ``set_epoch`` every epoch, as with torch); without ``drop_last`` the indices are padded by
    repeating the first ones so that every process gets the same number. Shards over
    ``jax.process_count()`` processes unless ``num_replicas`` / ``rank`` say otherwise."""

    def __init__(self, dataset, num_replicas=None, rank=None, shuffle=True, seed=0, drop_last=False):
        self.size = len(dataset)
        self.num_replicas = jax.process_count() if num_replicas is None else num_replicas
        self.rank = jax.process_index() if rank is None else rank
        self.shuffle, self.seed, self.drop_last = shuffle, seed, drop_last
        self.epoch = 0
        if drop_last:
            self.num_samples = self.size // self.num_replicas
        else:
            self.num_samples = -(-self.size // self.num_replicas)
        self.total_size = self.num_samples * self.num_replicas

    def set_epoch(self, epoch):
        self.epoch = epoch

    def indices(self):
        order = (np.random.default_rng(self.seed + self.epoch).permutation(self.size) if self.shuffle
                 else np.arange(self.size))
        if self.total_size > self.size:
            order = np.resize(order, self.total_size)   # repeats from the start, like torch's padding
        order = order[:self.total_size]
        return order[self.rank:self.total_size:self.num_replicas]

    def __iter__(self):
        return iter(self.indices().tolist())

    def __len__(self):
        return self.num_samples


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


def torch_clip_by_norm(max_norm, norm_type=2.0):
    """``clip_grad_norm_`` as an optax transformation (torch's max_norm / (norm + 1e-6) scale),
    for gradients that an accumulating optimizer clips once per step."""
    def init(params):
        return optax.EmptyState()

    def update(updates, state, params=None):
        return torch_clip_grad_norm(updates, max_norm, norm_type)[0], state

    return optax.GradientTransformation(init, update)




class CausalSelfAttention(nn.Module):
    dim: Any
    heads: Any
    block_size: Any

    def setup(self):
        self.qkv = nn.Dense(features=3 * self.dim, use_bias=False, kernel_init=torch_kaiming_uniform(self.dim), bias_init=torch_bias_uniform(self.dim))
        self.proj = nn.Dense(features=self.dim, kernel_init=torch_kaiming_uniform(self.dim), bias_init=torch_bias_uniform(self.dim))
        self.mask = jnp.reshape(jnp.tril(jnp.ones((self.block_size, self.block_size))), (1, 1, self.block_size, self.block_size))

    def __call__(self, x, train: bool = False):
        b, t, c = x.shape
        q, k, v = torch_split(self.qkv(x), c, dim=2)
        q = jnp.swapaxes(jnp.reshape(q, (b, t, self.heads, c // self.heads)), 1, 2)
        k = jnp.swapaxes(jnp.reshape(k, (b, t, self.heads, c // self.heads)), 1, 2)
        v = jnp.swapaxes(jnp.reshape(v, (b, t, self.heads, c // self.heads)), 1, 2)
        att = (q @ jnp.swapaxes(k, -2, -1)) * (1.0 / math.sqrt(k.shape[(-1)]))
        att = jnp.where(self.mask[:, :, :t, :t] == 0, float("-inf"), att)
        att = jax.nn.softmax(att, axis=-1)
        y = jnp.reshape(jnp.swapaxes(att @ v, 1, 2), (b, t, c))
        return self.proj(y)


class Block(nn.Module):
    dim: Any
    heads: Any
    block_size: Any

    def setup(self):
        self.ln1 = LayerNormLastAxes(normalized_shape=self.dim, epsilon=1e-05, use_bias=True)
        self.attn = CausalSelfAttention(self.dim, self.heads, self.block_size)
        self.ln2 = LayerNormLastAxes(normalized_shape=self.dim, epsilon=1e-05, use_bias=True)
        self.mlp = Sequential([nn.Dense(features=4 * self.dim, kernel_init=torch_kaiming_uniform(self.dim), bias_init=torch_bias_uniform(self.dim)), partial(nn.gelu, approximate=False), nn.Dense(features=self.dim, kernel_init=torch_kaiming_uniform(4 * self.dim), bias_init=torch_bias_uniform(4 * self.dim))])

    def __call__(self, x, train: bool = False):
        x = x + self.attn(self.ln1(x), train=train)
        return x + self.mlp(self.ln2(x), train=train)


class GPT(nn.Module):
    vocab: int = 16
    dim: int = 32
    heads: int = 2
    layers: int = 2
    block_size: int = 8

    def setup(self):
        self.tok_emb = nn.Embed(num_embeddings=self.vocab, features=self.dim, embedding_init=torch_normal_init())
        self.pos_emb = self.param('pos_emb', lambda rng_key: jnp.zeros((1, self.block_size, self.dim)))
        self.blocks = [Block(self.dim, self.heads, self.block_size) for _ in range(self.layers)]
        self.ln_f = LayerNormLastAxes(normalized_shape=self.dim, epsilon=1e-05, use_bias=True)
        self.head = nn.Dense(features=self.vocab, kernel_init=torch_kaiming_uniform(self.dim), bias_init=torch_bias_uniform(self.dim))

    def __call__(self, idx, train: bool = False):
        t = idx.shape[1]
        x = self.tok_emb(idx) + self.pos_emb[:, :t, :]
        for block in self.blocks:
            x = block(x, train=train)
        return self.head(self.ln_f(x))


@partial(jax.pmap, axis_name="batch", static_broadcasted_argnums=(3,))
def train_step(train_state, xb, yb, args_accum):
    dropout_rng, rng = jax.random.split(train_state.rng)
    dropout_rng = jax.random.fold_in(dropout_rng, jax.lax.axis_index("batch"))

    def loss_fn(params):
        logits = train_state.apply_fn({"params": params}, xb, train=True, rngs={"dropout": dropout_rng})
        loss = torch_cross_entropy(jnp.reshape(logits, (-1, logits.shape[(-1)])), jnp.reshape(yb, -1)) / args_accum
        return loss
    loss, grads = jax.value_and_grad(loss_fn)(train_state.params)
    grads = jax.lax.pmean(grads, axis_name="batch")
    loss = jax.lax.pmean(loss, axis_name="batch")
    train_state = train_state.apply_gradients(grads=grads, rng=rng)
    return train_state, loss


def token_windows(n=512, block_size=8, vocab=16):
    """A noisy counting sequence cut into (input, next-token) windows."""
    rng = np.random.default_rng(0)
    data = np.cumsum(rng.integers(1, 3, size=n + block_size + 1)) % vocab
    x = np.stack([data[i:i + block_size] for i in range(n)]).astype(np.int64)
    y = np.stack([data[i + 1:i + block_size + 1] for i in range(n)]).astype(np.int64)
    return ArrayDataset(jnp.asarray(x), jnp.asarray(y))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--accum", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=4, help="per device and micro-batch")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--checkpoint", default="")
    args = parser.parse_args()
    initialize_distributed()
    rank = jax.process_index()
    rng_key = jax.random.PRNGKey(0)
    dataset = token_windows()
    sampler = ShardedSampler(dataset, shuffle=True, seed=1)
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size * jax.local_device_count(), sampler=sampler, drop_last=True)
    model = GPT()
    optimizer = optax.adamw(learning_rate=args.lr, weight_decay=0.01)
    train_state = None
    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        batches = iter(loader)
        for it in range(len(loader) // args.accum):
            for micro in range(args.accum):
                xb, yb = next(batches)
                if train_state is None:
                    train_state = replicate(create_train_state(model, optax.MultiSteps(optax.chain(torch_clip_by_norm(1.0), optimizer), every_k_schedule=args.accum, use_grad_mean=False).gradient_transformation(), jax.random.PRNGKey(0), to_jax(xb)))
                train_state, loss = unshard_outputs(train_step(train_state, shard_batch(xb), shard_batch(yb), args.accum))
            if rank == 0:
                print(f"epoch {epoch} iter {it} loss={loss.item() * args.accum:.6f}")
    if rank == 0 and args.checkpoint:
        save_checkpoint(model_variables(unreplicate(train_state)), args.checkpoint)


if __name__ == "__main__":
    main()
