"""The distributed conversion (issue 5): diagnostics and forms for the DDP APIs, both
``--parallel`` modes, the mapping entries, and the prelude helpers of prelude/parallel.py
(on 8 simulated CPU devices in a subprocess: the device count is fixed when jax starts)."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from transpiler.api import Options, convert_source
from transpiler.mapping import load_tables

ROOT = Path(__file__).resolve().parent.parent


def convert(source: str, mode: str = "pmap"):
    result = convert_source(textwrap.dedent(source), "script.py", Options(parallel=mode))
    assert result.status in ("converted", "partial"), [d.format("script.py") for d in result.diagnostics]
    return result.output.decode(), result.diagnostics


def codes(diags, prefix="JP7"):
    return sorted((d.line, d.code) for d in diags if d.code.startswith(prefix))


SCRIPT = '''\
import os
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.distributed import DistributedSampler


def run(rank, world_size):
    dist.init_process_group("nccl", rank=rank, world_size=world_size)
    local_rank = int(os.environ["LOCAL_RANK"])
    world = dist.get_world_size()
    data = TensorDataset(torch.randn(64, 4), torch.randn(64, 1))
    sampler = DistributedSampler(data, num_replicas=world_size, rank=rank)
    loader = DataLoader(data, batch_size=8, sampler=sampler)
    model = nn.Linear(4, 1)
    model = DDP(model, device_ids=[local_rank])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for epoch in range(2):
        sampler.set_epoch(epoch)
        for x, y in loader:
            optimizer.zero_grad()
            out = model(x)
            loss = nn.functional.mse_loss(out, y)
            loss.backward()
            optimizer.step()
        total = torch.tensor(loss.item())
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        gathered = [torch.zeros(1) for _ in range(world)]
        dist.all_gather(gathered, total)
        dist.broadcast(total, src=0)
        dist.barrier()
    if dist.get_rank() == 0:
        torch.save(model.module.state_dict(), "model.pt")
    dist.destroy_process_group()


if __name__ == "__main__":
    mp.spawn(run, args=(4,), nprocs=4, join=True)
'''


def test_ddp_api_diagnostics_and_lines():
    out, diags = convert(SCRIPT)
    assert codes(diags) == [
        (12, "JP701"), (13, "JP705"), (14, "JP705"), (16, "JP704"), (17, "JP704"), (19, "JP702"),
        (19, "JP703"), (30, "JP706"), (32, "JP706"), (33, "JP706"), (34, "JP706"), (35, "JP705"),
        (36, "JP702"), (37, "JP701"), (41, "JP709")]
    assert not [d for d in diags if d.code in ("JP101", "JP102", "JP103")], diags


def test_ddp_api_forms():
    out, _ = convert(SCRIPT)
    for line in [
        "initialize_distributed()",
        "local_rank = 0",
        "world = jax.process_count()",
        "sampler = ShardedSampler(data)",
        "loader = torch.utils.data.DataLoader(data, batch_size=8 * jax.local_device_count(), sampler=sampler, "
        "drop_last=True)",
        "total = process_all_reduce(total, op=\"sum\")",
        "gathered[:] = list(process_all_gather(total))",
        "total = process_broadcast(total, 0)",
        "sync_processes()",
        "if jax.process_index() == 0:",
        "save_checkpoint(model_variables(unreplicate(train_state)), \"model.pt\")",
        "run_as_single_process(run, (4,))",
        "train_state = replicate(create_train_state(model, optimizer, jax.random.PRNGKey(0), x))",
        "train_state, loss = unshard_outputs(train_step(train_state, shard_batch(x), shard_batch(y)))",
        '@partial(jax.pmap, axis_name="batch")',
        'grads = jax.lax.pmean(grads, axis_name="batch")',
        'loss = jax.lax.pmean(loss, axis_name="batch")',
        'dropout_rng = jax.random.fold_in(dropout_rng, jax.lax.axis_index("batch"))',
    ]:
        assert line in out, line
    body = out[out.index("def run("):]          # the script, after the helpers
    for gone in ("DDP", "destroy_process_group", "init_process_group", "model = model", ".module", "torch.distributed"):
        assert gone not in body, gone


def test_sharding_mode_forms():
    out, diags = convert(SCRIPT, "sharding")
    assert "@jax.jit\ndef train_step(train_state, x, y):" in out
    assert "train_state = replicate_on_mesh(create_train_state(model, optimizer, jax.random.PRNGKey(0), x))" in out
    assert "train_state, loss = local_outputs(train_step(train_state, shard_to_mesh(x), shard_to_mesh(y)))" in out
    assert "save_checkpoint(model_variables(train_state), \"model.pt\")" in out
    assert "pmap" not in out and "pmean" not in out and "unreplicate" not in out
    assert any(d.code == "JP703" and "Mesh" in d.message for d in diags)


def test_scheduler_and_eval_read_the_unreplicated_state():
    out, _ = convert('''\
        import torch
        import torch.nn as nn
        from torch.nn.parallel import DistributedDataParallel as DDP

        def main(loader):
            model = DDP(nn.Linear(4, 2))
            optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
            scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1)
            for x, y in loader:
                optimizer.zero_grad()
                loss = nn.functional.cross_entropy(model(x), y)
                loss.backward()
                optimizer.step()
                scheduler.step()
            model.eval()
            with torch.no_grad():
                print(model(x).sum())
        ''')
    assert "train_state = replicate(scheduler.step(unreplicate(train_state)))" in out
    assert "print(jnp.sum(eval_step(unreplicate(train_state), x)))" in out


def test_no_sync_if_else_and_context_variable():
    source = '''\
        import contextlib
        import torch
        import torch.nn as nn
        from torch.nn.parallel import DistributedDataParallel as DDP

        def main(batches, accum):
            model = DDP(nn.Linear(4, 2))
            optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
            for it in range(10):
                for micro in range(accum):
                    x, y = batches[micro]
                    MICRO_BLOCK
                optimizer.step()
                optimizer.zero_grad()
        '''
    if_else = '''if micro < accum - 1:
                        with model.no_sync():
                            loss = nn.functional.mse_loss(model(x), y) / accum
                            loss.backward()
                    else:
                        loss = nn.functional.mse_loss(model(x), y) / accum
                        loss.backward()'''
    variable = '''ctx = model.no_sync() if micro < accum - 1 else contextlib.nullcontext()
                    with ctx:
                        loss = nn.functional.mse_loss(model(x), y) / accum
                        loss.backward()'''
    for block in (if_else, variable):
        out, diags = convert(source.replace("MICRO_BLOCK", block))
        assert "no_sync" not in out
        assert {d.code for d in diags} >= {"JP707", "JP609", "JP601", "JP703"}, codes(diags, "JP")
        assert "optax.MultiSteps(optimizer, every_k_schedule=accum, use_grad_mean=False)" in out
        assert "unshard_outputs(train_step(train_state, replicate(accum), shard_batch(x), shard_batch(y)))" in out


def test_sync_batchnorm_axis_name_in_pmap_only():
    source = '''\
        import torch.nn as nn

        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.conv = nn.Conv2d(3, 4, 3)
                self.bn = nn.BatchNorm2d(4)
                self.sync = nn.SyncBatchNorm(4)

            def forward(self, x):
                return self.sync(self.bn(self.conv(x)))

        model = nn.SyncBatchNorm.convert_sync_batchnorm(Net())
        '''
    out, diags = convert(source)
    assert out.count('axis_name="batch"') == 2, out
    assert ("JP708" in {d.code for d in diags})
    out, _ = convert(source, "sharding")
    assert "axis_name=" not in out


def test_unsupported_collective_forms_are_marked():
    out, diags = convert('''\
        import torch
        import torch.distributed as dist

        def f(t):
            work = dist.all_reduce(t, async_op=True)
            dist.all_reduce(t * 2)
            dist.all_reduce(t, async_op=True)
        ''')
    assert codes(diags) == [(6, "JP710"), (7, "JP710")]
    assert "# jaxport: JP710" in out


def test_files_without_ddp_are_not_made_data_parallel():
    out, diags = convert('''\
        import torch
        import torch.nn as nn

        def main(loader):
            model = nn.Linear(4, 2)
            optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
            for x, y in loader:
                optimizer.zero_grad()
                loss = nn.functional.cross_entropy(model(x), y)
                loss.backward()
                optimizer.step()
        ''')
    assert "@jax.jit\ndef train_step" in out and "pmap" not in out
    assert not codes(diags)


def test_ddp_entries_left_the_unsupported_table():
    table = load_tables().functions
    for key in ("torch.nn.parallel.DistributedDataParallel", "torch.distributed.init_process_group",
                "torch.distributed.all_reduce", "torch.multiprocessing.spawn",
                "torch.utils.data.distributed.DistributedSampler"):
        assert table[key].unsupported is None and table[key].keep is None and table[key].templates, key
    assert table["torch.multiprocessing.Process"].unsupported   # not a DDP API: still unsupported


def test_sync_batchnorm_entry_matches_torch_batchnorm():
    import jax.numpy as jnp
    import torch
    from transpiler.render import render_call  # noqa: F401  (the table entry is rendered by the rules)
    out, _ = convert('''\
        import torch.nn as nn

        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.bn = nn.SyncBatchNorm(3, momentum=0.2)

            def forward(self, x):
                return self.bn(x)
        ''', "sharding")
    namespace: dict = {}
    exec(compile(out, "converted.py", "exec"), namespace)
    x = np.random.default_rng(0).standard_normal((4, 3, 5, 2)).astype(np.float32)
    net = namespace["Net"]()
    variables = net.init({"params": __import__("jax").random.PRNGKey(0)}, jnp.asarray(x))
    y, updates = net.apply(variables, jnp.asarray(x), train=True, mutable=["batch_stats"])
    layer = torch.nn.SyncBatchNorm(3, momentum=0.2)
    expected = layer(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(np.asarray(y), expected, atol=1e-5)
    np.testing.assert_allclose(np.asarray(updates["batch_stats"]["bn"]["mean"]), layer.running_mean.numpy(), atol=1e-6)


# ------------------------------------------------------------------------------ the sampler
def _sampler(**kw):
    from transpiler.prelude.parallel import ShardedSampler
    return ShardedSampler(list(range(kw.pop("n"))), **kw)


@pytest.mark.parametrize("n,replicas,drop_last", [(10, 3, False), (10, 3, True), (12, 4, False), (5, 8, False)])
def test_sampler_matches_torch_without_shuffle(n, replicas, drop_last):
    from torch.utils.data.distributed import DistributedSampler
    for rank in range(replicas):
        ours = list(_sampler(n=n, num_replicas=replicas, rank=rank, shuffle=False, drop_last=drop_last))
        torch_s = list(DistributedSampler(list(range(n)), num_replicas=replicas, rank=rank, shuffle=False,
                                          drop_last=drop_last))
        assert ours == torch_s
        assert len(_sampler(n=n, num_replicas=replicas, rank=rank, drop_last=drop_last)) == len(torch_s)


def test_sampler_shuffles_per_epoch_and_partitions():
    samplers = [_sampler(n=20, num_replicas=4, rank=r, seed=3) for r in range(4)]
    epochs = []
    for epoch in range(3):
        for s in samplers:
            s.set_epoch(epoch)
        shards = [list(s) for s in samplers]
        assert sorted(i for shard in shards for i in shard) == list(range(20))   # a partition
        assert [list(s) for s in samplers] == shards                             # deterministic
        epochs.append(shards)
    assert epochs[0] != epochs[1] != epochs[2]
    assert list(_sampler(n=20, num_replicas=4, rank=0, seed=4)) != epochs[0][0]   # the seed matters
    single = _sampler(n=6)                  # defaults: this process is the only one
    assert sorted(single) == list(range(6)) and single.num_replicas == 1 and single.rank == 0


# ------------------------------------------------------------------------------ device helpers
HELPERS = r'''
import json
import jax, jax.numpy as jnp, numpy as np, optax
from transpiler.prelude import parallel as P
from transpiler.prelude.training import create_train_state
import flax.linen as nn
out = {}
tree = {"w": jnp.arange(6.0).reshape(2, 3), "b": jnp.float32(2.0)}
rep = P.replicate(tree)
out["replicate_shape"] = [list(rep["w"].shape), list(rep["b"].shape)]
back = P.unreplicate(rep)
out["unreplicate_roundtrip"] = bool(jnp.array_equal(back["w"], tree["w"]) and back["b"] == 2.0)
x = np.arange(32.0).reshape(16, 2)
s = P.shard_batch((x, x[:, 0]))
out["shard_shapes"] = [list(s[0].shape), list(s[1].shape)]
out["shard_order"] = bool(np.array_equal(np.asarray(s[0]).reshape(16, 2), x))
try:
    P.shard_batch(np.zeros((12, 2)))
    out["shard_error"] = False
except ValueError:
    out["shard_error"] = True
per_device = jnp.arange(16.0).reshape(8, 2)
out["from_devices_examples"] = list(P.from_devices(per_device.reshape(8, 2, 1)).shape)
out["from_devices_scalar"] = float(P.from_devices(jnp.arange(8.0)))
st, a, b = P.unshard_outputs((rep, jnp.full((8,), 3.0), jnp.zeros((8, 2, 5))))
out["unshard_outputs"] = [float(a), list(b.shape), list(st["w"].shape)]
# pmean over pmap equals the mean over the global batch
f = jax.pmap(lambda v: jax.lax.pmean(jnp.mean(v), "batch"), axis_name="batch")
out["pmean_is_global_mean"] = bool(np.allclose(P.from_devices(f(P.shard_batch(x[:, 0]))), x[:, 0].mean()))
mesh = P.data_mesh()
out["mesh"] = [list(mesh.axis_names), int(mesh.devices.size)]
g = P.shard_to_mesh(x)
out["mesh_batch"] = [str(g.sharding.spec), len(g.addressable_shards), bool(np.array_equal(np.asarray(g), x))]
r = P.replicate_on_mesh(tree)
out["mesh_replicated"] = bool(r["w"].sharding.is_fully_replicated)
st2, loc = P.local_outputs((r, g))
out["local_outputs"] = bool(loc is g)
out["collectives"] = [float(P.process_all_reduce(jnp.float32(3.0))), list(P.process_all_gather(jnp.ones(2)).shape),
                      float(P.process_broadcast(jnp.float32(5.0))), P.sync_processes() is None]
P.initialize_distributed()
out["initialize_single_host"] = jax.distributed.is_initialized() is False and jax.process_count() == 1
out["spawn"] = P.run_as_single_process(lambda rank, a, b: (rank, a, b), (1, 2))
print("RESULT" + json.dumps(out))
'''


@pytest.fixture(scope="module")
def helpers():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": str(ROOT)}
    for key in ("JAX_COORDINATOR_ADDRESS", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"):
        env.pop(key, None)
    proc = subprocess.run([sys.executable, "-c", HELPERS], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads([l for l in proc.stdout.splitlines() if l.startswith("RESULT")][-1][6:])


@pytest.mark.parametrize("key,expected", [
    ("replicate_shape", [[8, 2, 3], [8]]),
    ("unreplicate_roundtrip", True),
    ("shard_shapes", [[8, 2, 2], [8, 2]]),
    ("shard_order", True),
    ("shard_error", True),
    ("from_devices_examples", [16, 1]),
    ("from_devices_scalar", 3.5),
    ("unshard_outputs", [3.0, [16, 5], [8, 2, 3]]),
    ("pmean_is_global_mean", True),
    ("mesh", [["data"], 8]),
    ("mesh_batch", ["P('data',)", 8, True]),
    ("mesh_replicated", True),
    ("local_outputs", True),
    ("collectives", [3.0, [1, 2], 5.0, True]),
    ("initialize_single_host", True),
    ("spawn", [0, 1, 2]),
])
def test_prelude_helpers_on_8_devices(helpers, key, expected):
    assert helpers[key] == expected
