"""`jaxport validate` end to end (CLI in a subprocess): module discovery, zero-config inputs,
skips with instructions, spec discovery, usage errors, crash and timeout isolation,
`--emit-tests`. Numerical bug-finding is in test_seeded_bugs.py."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

ORIGINAL = '''\
import os
import signal
import time

import torch
import torch.nn as nn


class Small(nn.Module):
    def __init__(self, d=4):
        super().__init__()
        self.fc = nn.Linear(d, 3)

    def forward(self, x):
        return torch.tanh(self.fc(x))


class NeedsArgs(nn.Module):
    def __init__(self, width, depth=2):
        super().__init__()
        self.fc = nn.Linear(width, width)

    def forward(self, x):
        return self.fc(x)


class NoLayers(nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(3))

    def forward(self, x):
        return x * self.scale


class Configured(nn.Module):
    def __init__(self, width, vocab=10):
        super().__init__()
        self.emb = nn.Embedding(vocab, width)

    def forward(self, tokens):
        return self.emb(tokens).sum(dim=1)


class Crasher(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(2, 2)

    def forward(self, x):
        os.kill(os.getpid(), signal.SIGKILL)


class Sleeper(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(2, 2)

    def forward(self, x):
        time.sleep(120)
'''

CONVERTED = '''\
import jax.numpy as jnp
import flax.linen as nn


class Small(nn.Module):
    d: int = 4

    def setup(self):
        self.fc = nn.Dense(3)

    def __call__(self, x, train: bool = False):
        return jnp.tanh(self.fc(x))


class NeedsArgs(nn.Module):
    width: int
    depth: int = 2

    def setup(self):
        self.fc = nn.Dense(self.width)

    def __call__(self, x, train: bool = False):
        return self.fc(x)


class NoLayers(nn.Module):
    def setup(self):
        self.scale = self.param("scale", nn.initializers.ones, (3,))

    def __call__(self, x, train: bool = False):
        return x * self.scale


class Configured(nn.Module):
    width: int
    vocab: int = 10

    def setup(self):
        self.emb = nn.Embed(self.vocab, self.width)

    def __call__(self, tokens, train: bool = False):
        return self.emb(tokens).sum(axis=1)


class Crasher(Small):
    pass


class Sleeper(Small):
    pass
'''


def jaxport(*args, cwd=None, timeout=600):
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return subprocess.run([sys.executable, str(ROOT / "cli.py"), *map(str, args)],
                          capture_output=True, timeout=timeout, env=env, cwd=cwd)


def project(tmp_path, spec: str | None = None) -> tuple[Path, Path]:
    original = tmp_path / "models.py"
    original.write_text(ORIGINAL)
    converted = tmp_path / "models_jax.py"
    converted.write_text(CONVERTED)
    if spec is not None:
        (tmp_path / "models.toml").write_text(textwrap.dedent(spec))
    return original, converted


def test_discovery_zero_config_skips_spec_and_emitted_tests(tmp_path):
    original, converted = project(tmp_path, """
        [Configured]
        init = { width = 5 }
    """)
    tests_dir = tmp_path / "ci_tests"
    proc = jaxport("validate", original, converted, "--module", "Small", "--module", "NeedsArgs",
                   "--module", "NoLayers", "--module", "Configured", "--examples", "4",
                   "--json", tmp_path / "r.json", "--emit-tests", tests_dir)
    out = proc.stdout.decode()
    assert proc.returncode == 0, out + proc.stderr.decode()
    report = json.loads((tmp_path / "r.json").read_text())
    by = {m["name"]: m for m in report["modules"]}
    assert [m["name"] for m in report["modules"]] == ["Small", "NeedsArgs", "NoLayers", "Configured"]
    assert report["summary"] == {"pass": 2, "fail": 0, "error": 0, "skip": 2}
    # zero-config: inputs inferred from the first Linear / Embedding (init from the spec beside it)
    assert by["Small"]["status"] == "pass" and by["Small"]["examples"] >= 3
    assert "float32[B, 4]" in by["Small"]["message"]
    assert by["Configured"]["status"] == "pass"
    assert "int64[B, T] range(0, 10)" in by["Configured"]["message"]
    # a class that needs constructor arguments: skipped with the line to write
    assert by["NeedsArgs"]["status"] == "skip"
    assert "init = { width = ... }" in by["NeedsArgs"]["message"]
    assert by["NoLayers"]["status"] == "skip" and "inputs = [" in by["NoLayers"]["message"]
    assert "SKIP" in out and "2 passed" in out and "2 skipped" in out
    # --emit-tests: the validated (not skipped) cases, the spec beside the original
    (emitted,) = tests_dir.glob("test_*.py")
    text = emitted.read_text()
    assert "CASES = ['Small', 'Configured']" in text and "EXAMPLES = 4" in text
    assert "models.toml" in text


def test_emit_tests_writes_passing_property_tests(tmp_path):
    from transpiler.validate.emit import emit_tests
    original, converted = project(tmp_path)
    emitted = emit_tests(tmp_path / "ci_tests", original, converted, None, ["Small", "NeedsArgs"], 3, 0)
    text = emitted.read_text()
    assert "check_case" in text and "EXAMPLES = 3" in text
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT)
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          str(emitted)], capture_output=True, cwd=tmp_path, env=env, timeout=600)
    assert run.returncode == 0, run.stdout.decode()[-3000:]
    assert b"1 passed, 1 skipped" in run.stdout    # NeedsArgs: skipped with its reason


def test_usage_errors_exit_2(tmp_path):
    original, converted = project(tmp_path)
    proc = jaxport("validate", original, converted, "--train-steps", "2")   # no training loop here
    assert proc.returncode == 2 and b"training loop" in proc.stderr and b"Traceback" not in proc.stderr
    proc = jaxport("validate", original, converted, "--module", "Nope")
    assert proc.returncode == 2 and b"Nope" in proc.stderr and b"Small" in proc.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text("[Small]\ninputs = [\"float32[N, 4]\"]\n")
    proc = jaxport("validate", original, converted, "--spec", bad)
    assert proc.returncode == 2 and b"N" in proc.stderr and b"Traceback" not in proc.stderr
    assert jaxport("validate", original, converted, "--examples", "0").returncode == 2
    assert jaxport("validate", original, tmp_path / "missing.py").returncode == 2
    help_text = jaxport("validate", "--help").stdout
    for option in (b"--module", b"--spec", b"--examples", b"--train-steps", b"--json", b"--junit",
                   b"--seed", b"--rtol", b"--atol", b"--device", b"--timeout", b"--emit-tests",
                   b"--record", b"--save-spec"):
        assert option in help_text


def test_absent_backend_is_a_clear_usage_error(tmp_path):
    original, converted = project(tmp_path)
    proc = jaxport("validate", original, converted, "--module", "Small", "--device", "tpu")
    assert proc.returncode == 2
    err = proc.stderr.decode()
    assert "--device tpu" in err and "backend" in err and "Traceback" not in err


def test_a_crash_is_an_error_for_that_module_only(tmp_path):
    original, converted = project(tmp_path)
    proc = jaxport("validate", original, converted, "--module", "Crasher", "--module", "Small",
                   "--examples", "3", "--json", tmp_path / "r.json")
    assert proc.returncode == 1
    by = {m["name"]: m for m in json.loads((tmp_path / "r.json").read_text())["modules"]}
    assert by["Crasher"]["status"] == "error" and "crashed" in by["Crasher"]["message"]
    assert by["Small"]["status"] == "pass"
    assert b"Traceback" not in proc.stdout + proc.stderr


def test_a_timeout_is_an_error_and_the_rest_still_runs(tmp_path):
    original, converted = project(tmp_path)
    proc = jaxport("validate", original, converted, "--module", "Sleeper", "--module", "Small",
                   "--examples", "3", "--timeout", "8", "--junit", tmp_path / "r.xml")
    assert proc.returncode == 1
    out = proc.stdout.decode()
    assert "timed out after 8 s" in out and "PASS  Small" in out.replace("\x1b[0m", "")
    xml = (tmp_path / "r.xml").read_text()
    assert xml.count("<testcase") == 2 and "<error" in xml and "timed out" in xml
