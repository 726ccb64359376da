"""A small CNN with BatchNorm trained with DDP, launched with mp.spawn (one process per GPU):

    python ddp_cnn_syncbn.py --world-size 4

BatchNorm layers are turned into SyncBatchNorm (statistics over the global batch), SGD with
momentum, the sampler's shard per rank, correct predictions summed over ranks with
all_reduce, evaluation in eval mode (running statistics), rank 0 prints and checkpoints."""
import argparse
import os

import numpy as np
import torch
import jax
import jax.numpy as jnp
import flax.linen as nn
import optax
import math
from functools import partial
from typing import Any
from jax.sharding import Mesh
from functools import lru_cache
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec
from jax.experimental import multihost_utils
from flax.training.train_state import TrainState as FlaxTrainState
import inspect
from flax import serialization


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


MESH_AXIS = "data"      # the mesh axis the batch is split over under --parallel sharding


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


def run_as_single_process(fn, args=()):
    """``torch.multiprocessing.spawn(fn, args, nprocs=n)``: one JAX process drives every
    local device, so ``fn`` runs once, in this process, as rank 0."""
    return fn(0, *args)


@lru_cache(maxsize=None)
def data_mesh():
    """A one-axis mesh over every device of every process (the batch is split over it)."""
    return Mesh(np.array(jax.devices()), (MESH_AXIS,))


def replicated_sharding():
    return NamedSharding(data_mesh(), PartitionSpec())


def batch_sharding():
    return NamedSharding(data_mesh(), PartitionSpec(MESH_AXIS))


def replicate_on_mesh(tree):
    """Train state with every leaf replicated over the mesh (parameters are not split)."""
    return jax.device_put(tree, replicated_sharding())


def shard_to_mesh(batch):
    """A process's batch → one global array split over the mesh's data axis (the processes'
    batches are concatenated in process order)."""
    def place(x):
        x = np.asarray(x)
        if x.ndim == 0 or x.shape[0] % jax.local_device_count():
            raise ValueError(f"a batch of shape {x.shape} cannot be split over {jax.local_device_count()} "
                             "devices: make the batch size a multiple of the local device count (drop_last=True)")
        return jax.make_array_from_process_local_data(batch_sharding(), x)

    return jax.tree_util.tree_map(place, batch)


def local_outputs(result):
    """``(state, *outputs)`` of a step over the mesh: outputs split over several hosts come
    back as this process's part (single host: unchanged)."""
    state, *outputs = result

    def local(x):
        if not isinstance(x, jax.Array) or x.is_fully_addressable or x.sharding.is_fully_replicated:
            return x
        return multihost_utils.global_array_to_host_local_array(x, data_mesh(), PartitionSpec(MESH_AXIS))

    return (state, *[jax.tree_util.tree_map(local, o) for o in outputs])


REDUCE_OPS = {"sum": np.sum, "avg": np.mean, "product": np.prod, "min": np.min, "max": np.max}


def process_all_reduce(x, op="sum"):
    """``dist.all_reduce`` of a host-side value (a metric): reduced over processes. Each process's
    value already covers all of its local devices, so one host returns ``x`` unchanged."""
    if jax.process_count() == 1:
        return x
    gathered = multihost_utils.process_allgather(np.asarray(x))
    return jnp.asarray(REDUCE_OPS[op](gathered, axis=0))


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




class ConvNet(nn.Module):
    num_classes: int = 4

    def setup(self):
        self.conv1 = ConvNCHW(features=8, kernel_size=3, padding=1)
        self.bn1 = TorchBatchNorm(axis=1, momentum=0.9, epsilon=1e-05)
        self.conv2 = ConvNCHW(features=16, kernel_size=3, strides=2, padding=1)
        self.bn2 = TorchBatchNorm(axis=1, momentum=0.9, epsilon=1e-05)
        self.fc = nn.Dense(features=self.num_classes, kernel_init=torch_kaiming_uniform(16), bias_init=torch_bias_uniform(16))

    def __call__(self, x, train: bool = False):
        x = jax.nn.relu(self.bn1(self.conv1(x), use_running_average=not train))
        x = jax.nn.relu(self.bn2(self.conv2(x), use_running_average=not train))
        x = jnp.mean(x, axis=(2, 3))
        return self.fc(x)


@partial(jax.jit, static_argnames=('criterion',))
def train_step(train_state, images, labels, criterion):
    dropout_rng, rng = jax.random.split(train_state.rng)

    def loss_fn(params):
        logits, updates = train_state.apply_fn({"params": params, "batch_stats": train_state.batch_stats}, images, train=True, rngs={"dropout": dropout_rng}, mutable=["batch_stats"])
        loss = criterion(logits, labels)
        return loss, (updates, logits)
    (loss, (updates, logits)), grads = jax.value_and_grad(loss_fn, has_aux=True)(train_state.params)
    train_state = train_state.apply_gradients(grads=grads, rng=rng, batch_stats=updates["batch_stats"])
    return train_state, loss, logits


def make_dataset(n=128):
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 4, size=n)
    images = rng.standard_normal((n, 3, 8, 8)).astype(np.float32) + labels[:, None, None, None].astype(np.float32) / 4
    return ArrayDataset(jnp.asarray(images), jnp.asarray(labels))


def run(rank, world_size, args):
    os.environ["MASTER_ADDR"] = "localhost"
    os.environ["MASTER_PORT"] = "29500"
    initialize_distributed()
    rng_key = jax.random.PRNGKey(0)
    dataset = make_dataset()
    sampler = ShardedSampler(dataset)
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size * jax.local_device_count(), sampler=sampler, drop_last=True)
    model = ConvNet()
    ddp_model = model
    optimizer = optax.sgd(learning_rate=args.lr, momentum=0.9)
    train_state = None
    criterion = partial(torch_cross_entropy)
    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        correct = 0
        for images, labels in loader:
            images, labels = to_jax(images), to_jax(labels)
            if train_state is None:
                train_state = replicate_on_mesh(create_train_state(ddp_model, optimizer, jax.random.PRNGKey(0), images))
            train_state, loss, logits = local_outputs(train_step(train_state, shard_to_mesh(images), shard_to_mesh(labels), criterion))
            correct += jnp.sum(jnp.argmax(logits, axis=1) == labels).item()
            if rank == 0:
                print(f"epoch {epoch} loss={loss.item():.6f}")
        stats = jnp.asarray([correct, len(sampler)], dtype=jnp.float32)
        stats = process_all_reduce(stats, op="sum")
        if rank == 0:
            print(f"epoch {epoch} train accuracy {stats[0].item() / stats[1].item():.3f}")
    images, labels = dataset[:32]
    accuracy = jnp.mean((jnp.argmax(eval_step(train_state, images), axis=1) == labels).astype(jnp.float32))
    if rank == 0:
        print(f"eval accuracy {accuracy.item():.3f}")
        if args.checkpoint:
            save_checkpoint(model_variables(train_state), args.checkpoint)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--world-size", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=4, help="per device")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--checkpoint", default="")
    args = parser.parse_args()
    run_as_single_process(run, (args.world_size, args))


if __name__ == "__main__":
    main()
