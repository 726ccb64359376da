"""Converted DDP scripts train data-parallel on 8 simulated CPU devices, and the result equals
the single-device step on the same global batch.

Each script of corpus/distributed/ is converted with ``--parallel pmap`` and with
``--parallel sharding``. One subprocess with ``XLA_FLAGS=--xla_force_host_platform_device_count=8``
(the flag must be set before jax is imported) runs both conversions end to end with a
per-device batch of B (global batch 8·B); a second subprocess with one device runs the sharding
conversion with a per-device batch of 8·B: plain ``jax.jit`` on one device, same global batches
(one process either way, so the sampler's shard and order are the same). The checkpoints rank 0
writes after K optimizer steps must agree.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from transpiler.api import Options, convert_source

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "corpus" / "distributed"
SCRIPTS = {            # script → extra arguments (small runs: compile time dominates)
    "ddp_mlp": ["--epochs", "1"],
    "ddp_cnn_syncbn": ["--epochs", "1"],
    "ddp_gpt_accum": ["--epochs", "1"],
}
PER_DEVICE = 2
DEVICES = 8
TOLERANCE = 1e-5

RUNNER = r'''
import io, json, runpy, sys, contextlib
import jax
jax.config.update("jax_enable_x64", False)
from flax import serialization
jobs = json.loads(sys.argv[1])
out = {}
for job in jobs:
    buf = io.StringIO()
    sys.argv = [job["path"], *job["args"]]
    with contextlib.redirect_stdout(buf):
        runpy.run_path(job["path"], run_name="__main__")
    out[job["name"]] = {"stdout": buf.getvalue(), "devices": jax.device_count()}
print("RESULT" + json.dumps(out))
'''


def _run(jobs, devices, tmp_path):
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
           "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", RUNNER, json.dumps(jobs)], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT")][-1]
    return json.loads(line[len("RESULT"):])


def _leaves(path):
    from flax import serialization
    import jax
    tree = serialization.msgpack_restore(Path(path).read_bytes())
    return {jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_leaves_with_path(tree)}


def _losses(stdout):
    return [float(l.split("loss=")[1].split()[0]) for l in stdout.splitlines() if "loss=" in l]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    parallel, single = [], []
    for name, extra in SCRIPTS.items():
        source = (CORPUS / f"{name}.py").read_text()
        for mode in ("pmap", "sharding"):
            result = convert_source(source, f"{name}.py", Options(parallel=mode))
            assert result.status in ("converted", "partial"), [d.format(name) for d in result.diagnostics]
            path = tmp / f"{name}_{mode}.py"
            path.write_bytes(result.output)
            parallel.append({"name": f"{name}/{mode}", "path": str(path), "args": [
                *extra, "--batch-size", str(PER_DEVICE), "--checkpoint", str(tmp / f"{name}_{mode}_8.msgpack")]})
        single.append({"name": f"{name}/single", "path": str(tmp / f"{name}_sharding.py"), "args": [
            *extra, "--batch-size", str(PER_DEVICE * DEVICES), "--checkpoint", str(tmp / f"{name}_single.msgpack")]})
    out = _run(parallel, DEVICES, tmp)
    out.update(_run(single, 1, tmp))
    return tmp, out


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_trains_on_8_devices_in_both_modes(runs, name):
    tmp, out = runs
    for mode in ("pmap", "sharding"):
        run = out[f"{name}/{mode}"]
        assert run["devices"] == DEVICES
        losses = _losses(run["stdout"])
        assert losses and all(np.isfinite(losses)), run["stdout"]
    assert out[f"{name}/single"]["devices"] == 1


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_data_parallel_equals_single_device(runs, name):
    tmp, out = runs
    reference = _leaves(tmp / f"{name}_single.msgpack")
    single_losses = _losses(out[f"{name}/single"]["stdout"])
    for mode in ("pmap", "sharding"):
        leaves = _leaves(tmp / f"{name}_{mode}_8.msgpack")
        assert leaves.keys() == reference.keys()
        diff = max(float(np.max(np.abs(leaves[k] - reference[k]))) for k in reference)
        print(f"{name} {mode}: {len(single_losses)} logged losses, max |param diff| vs single device = {diff:.2e}")
        assert diff < TOLERANCE, (mode, diff)
        np.testing.assert_allclose(_losses(out[f"{name}/{mode}"]["stdout"]), single_losses, rtol=1e-4, atol=1e-6)
