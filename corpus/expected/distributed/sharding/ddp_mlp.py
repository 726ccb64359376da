"""A regression MLP trained with DistributedDataParallel, launched the torchrun way:

    torchrun --nproc_per_node=4 ddp_mlp.py --epochs 2

Rank and world size come from torchrun's environment, each rank reads its shard of the data
through a DistributedSampler (reshuffled every epoch with set_epoch), the epoch loss is
averaged over ranks with all_reduce and only rank 0 prints and saves the checkpoint."""
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


def torch_mse_loss(input, target, reduction="mean"):
    """``F.mse_loss``."""
    return torch_reduce(jnp.square(input - target), reduction)


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


def sync_processes(name="barrier"):
    """``dist.barrier()``: wait for every process (nothing to wait for on one host)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


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




class MLP(nn.Module):
    d_in: int = 8
    hidden: int = 32
    d_out: int = 1

    def setup(self):
        self.fc1 = nn.Dense(features=self.hidden, kernel_init=torch_kaiming_uniform(self.d_in), bias_init=torch_bias_uniform(self.d_in))
        self.fc2 = nn.Dense(features=self.hidden, kernel_init=torch_kaiming_uniform(self.hidden), bias_init=torch_bias_uniform(self.hidden))
        self.out = nn.Dense(features=self.d_out, kernel_init=torch_kaiming_uniform(self.hidden), bias_init=torch_bias_uniform(self.hidden))

    def __call__(self, x, train: bool = False):
        x = jnp.tanh(self.fc1(x))
        x = jax.nn.relu(self.fc2(x))
        return self.out(x)


@partial(jax.jit, static_argnames=('criterion',))
def train_step(train_state, xb, yb, criterion):
    dropout_rng, rng = jax.random.split(train_state.rng)

    def loss_fn(params):
        pred = train_state.apply_fn({"params": params}, xb, train=True, rngs={"dropout": dropout_rng})
        loss = criterion(pred, yb)
        return loss
    loss, grads = jax.value_and_grad(loss_fn)(train_state.params)
    train_state = train_state.apply_gradients(grads=grads, rng=rng)
    return train_state, loss


def setup():
    initialize_distributed()
    rank = jax.process_index()
    local_rank = 0
    world_size = jax.process_count()
    return rank, local_rank, world_size


def make_dataset(n=256, d_in=8):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, d_in)).astype(np.float32)
    w = rng.standard_normal((d_in, 1)).astype(np.float32)
    y = (np.sin(x) @ w + 0.1 * rng.standard_normal((n, 1))).astype(np.float32)
    return ArrayDataset(jnp.asarray(x), jnp.asarray(y))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=4, help="per device")
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--checkpoint", default="")
    args = parser.parse_args()
    rank, local_rank, world_size = setup()
    rng_key = jax.random.PRNGKey(0)
    dataset = make_dataset()
    sampler = ShardedSampler(dataset, shuffle=True, seed=0)
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size * jax.local_device_count(), sampler=sampler, drop_last=True)
    model = MLP()
    optimizer = optax.adam(learning_rate=args.lr)
    train_state = None
    criterion = partial(torch_mse_loss)
    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        total = 0.0
        for xb, yb in loader:
            xb, yb = to_jax(xb), to_jax(yb)
            if train_state is None:
                train_state = replicate_on_mesh(create_train_state(model, optimizer, jax.random.PRNGKey(0), xb))
            train_state, loss = local_outputs(train_step(train_state, shard_to_mesh(xb), shard_to_mesh(yb), criterion))
            total += loss.item()
        epoch_loss = jnp.asarray(total / len(loader))
        epoch_loss = process_all_reduce(epoch_loss, op="sum")
        epoch_loss = epoch_loss / world_size
        if rank == 0:
            print(f"epoch {epoch} loss={epoch_loss.item():.6f}")
    if rank == 0 and args.checkpoint:
        save_checkpoint(model_variables(train_state), args.checkpoint)
    sync_processes()


if __name__ == "__main__":
    main()
