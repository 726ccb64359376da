"""Helpers for converted DistributedDataParallel scripts.

JAX runs one process per host, and that process drives every local device; torchrun ran one
process per GPU. So a converted script has no ranks inside a host: the data a process loads is
split over its local devices (``jax.pmap``: a leading device axis; ``--parallel sharding``: a
global array on a one-axis ``Mesh``), and what torch's collectives did between processes of
one host happens inside the step (``jax.lax.pmean``) or is not needed at all. Between hosts,
the host-side collectives below stand in for ``torch.distributed``'s (metrics, barriers).
"""
import os
from functools import lru_cache

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

PMAP_AXIS = "batch"     # the axis name of pmapped train steps (and of SyncBatchNorm's statistics)
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


def process_all_gather(x):
    """``dist.all_gather``: the value of every process, stacked on a new leading axis."""
    if jax.process_count() == 1:
        return jnp.asarray(x)[None]
    return jnp.asarray(multihost_utils.process_allgather(np.asarray(x)))


def process_broadcast(x, src=0):
    """``dist.broadcast``: every process gets process ``src``'s value."""
    if jax.process_count() == 1:
        return x
    return jnp.asarray(multihost_utils.broadcast_one_to_all(np.asarray(x), is_source=jax.process_index() == src))


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
