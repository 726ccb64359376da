"""`jaxport weights`: a torch checkpoint becomes flax variables that reproduce the torch
model's outputs in the converted model (round trip through the CLI)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "corpus" / "models"

MODEL = '''\
import torch
import torch.nn as nn
import torch.nn.functional as F


class Tagger(nn.Module):
    def __init__(self, vocab, dim=8, tags=3):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.fc = nn.Linear(dim, 16)
        self.bn = nn.BatchNorm1d(16)
        self.out = nn.Linear(16, tags)

    def forward(self, tokens):
        h = self.emb(tokens).mean(dim=1)
        return self.out(F.relu(self.bn(self.fc(h))))
'''


def jaxport(*args, cwd=None):
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return subprocess.run([sys.executable, str(ROOT / "cli.py"), *map(str, args)],
                          capture_output=True, timeout=300, env=env, cwd=cwd)


def load_module(path: Path):
    from transpiler.validate.harness import load_module_from_path
    return load_module_from_path(path)


@pytest.fixture()
def trained(tmp_path):
    """The Tagger model with trained weights and moved BatchNorm statistics."""
    src = tmp_path / "tagger.py"
    src.write_text(MODEL)
    mod = load_module(src)
    torch.manual_seed(3)
    model = mod.Tagger(vocab=20)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(3):
        tokens = torch.randint(0, 20, (8, 5))
        loss = model(tokens).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return src, mod, model


def flax_outputs(src: Path, tmp_path: Path, msgpack: Path, tokens: np.ndarray, **init):
    """Convert ``src``, load the msgpack into the converted Tagger, run it in eval mode."""
    import jax
    import jax.numpy as jnp
    from flax import serialization

    from transpiler.api import convert_source
    conv = tmp_path / "tagger_jax.py"
    conv.write_bytes(convert_source(src.read_text(), str(src)).output)
    flax_model = load_module(conv).Tagger(**init)
    x = jnp.asarray(tokens.astype(np.int32))
    template = flax_model.init(jax.random.PRNGKey(0), x)
    variables = serialization.from_bytes(template, msgpack.read_bytes())
    return np.asarray(flax_model.apply(variables, x))


def test_round_trip_state_dict_under_a_usual_key(trained, tmp_path):
    src, _, model = trained
    ckpt = tmp_path / "ckpt.pt"
    torch.save({"epoch": 3, "model_state_dict": model.state_dict(), "lr": 0.5}, ckpt)
    out = tmp_path / "tagger.msgpack"
    proc = jaxport("weights", ckpt, "--module", f"{src}:Tagger", "--init", "vocab=20", "-o", out)
    assert proc.returncode == 0, proc.stderr.decode()
    assert b"model_state_dict" in proc.stdout and b"batch_stats" in proc.stdout
    tokens = np.random.default_rng(0).integers(0, 20, (4, 5))
    ref = model(torch.from_numpy(tokens)).detach().numpy()
    got = flax_outputs(src, tmp_path, out, tokens, vocab=20)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    # the running statistics were carried over: eval output differs from fresh statistics
    fresh = type(model)(vocab=20)
    fresh.load_state_dict({k: v for k, v in model.state_dict().items() if "running" not in k}, strict=False)
    assert not np.allclose(fresh.eval()(torch.from_numpy(tokens)).detach().numpy(), ref, atol=1e-4)


def test_plain_state_dict_with_dataparallel_prefix_and_converted_file(trained, tmp_path):
    from transpiler.api import convert_source
    src, _, model = trained
    ckpt = tmp_path / "plain.pt"
    torch.save({f"module.{k}": v for k, v in model.state_dict().items()}, ckpt)
    conv = tmp_path / "edited_jax.py"
    conv.write_bytes(convert_source(src.read_text(), str(src)).output)
    (tmp_path / "tagger.toml").write_text('[Tagger]\ninit = { vocab = 20 }\n'
                                          'inputs = ["int64[B, 5] range(0, 20)"]\ndims = { B = [1, 2] }\n')
    out = tmp_path / "p.msgpack"
    proc = jaxport("weights", ckpt, "--module", f"{src}:Tagger", "--converted", conv, "-o", out)
    assert proc.returncode == 0, proc.stderr.decode()
    tokens = np.random.default_rng(1).integers(0, 20, (3, 5))
    np.testing.assert_allclose(flax_outputs(src, tmp_path, out, tokens, vocab=20),
                               model(torch.from_numpy(tokens)).detach().numpy(), rtol=1e-5, atol=1e-5)


def test_pickled_module_needs_unsafe_load(trained, tmp_path):
    src, mod, model = trained
    ckpt = tmp_path / "full.pt"
    sys.modules[mod.__name__] = mod
    torch.save({"net": model}, ckpt)
    out = tmp_path / "x.msgpack"
    proc = jaxport("weights", ckpt, "--module", f"{src}:Tagger", "--init", "vocab=20", "-o", out)
    assert proc.returncode == 1 and not out.exists()
    err = proc.stderr.decode()
    assert "weights_only=True" in err and "--unsafe-load" in err and "Traceback" not in err


def test_errors_are_reported_without_tracebacks(trained, tmp_path):
    src, _, model = trained
    ckpt = tmp_path / "ckpt.pt"
    torch.save({"weights": model.state_dict()}, ckpt)
    out = tmp_path / "x.msgpack"
    proc = jaxport("weights", ckpt, "--module", f"{src}:Tagger", "--init", "vocab=20", "-o", out)
    assert proc.returncode == 1 and b"no state_dict" in proc.stderr and b"'weights'" in proc.stderr
    torch.save(model.state_dict(), ckpt)
    proc = jaxport("weights", ckpt, "--module", f"{src}:Tagger", "--init", "vocab=21", "-o", out)
    assert proc.returncode == 1 and b"does not fit" in proc.stderr and b"Traceback" not in proc.stderr


def test_missing_init_and_usage_errors(trained, tmp_path):
    src, _, model = trained
    ckpt = tmp_path / "ckpt.pt"
    torch.save(model.state_dict(), ckpt)
    out = tmp_path / "x.msgpack"
    proc = jaxport("weights", ckpt, "--module", f"{src}:Tagger", "-o", out)
    assert proc.returncode == 1 and b"--init" in proc.stderr and b"vocab" in proc.stderr
    assert jaxport("weights", ckpt, "--module", f"{src}", "-o", out).returncode == 2
    assert jaxport("weights", ckpt, "--module", f"{src}:Nope", "-o", out).returncode == 1
    assert jaxport("weights", ckpt, "--module", f"{tmp_path}/none.py:Tagger", "-o", out).returncode == 2
    assert not out.exists()
    help_text = jaxport("weights", "--help").stdout
    assert b"ORIGINAL" in help_text and b"--unsafe-load" in help_text and b"--converted" in help_text


def test_parse_init_and_extract_state_dict():
    from transpiler.validate.checkpoint import CheckpointError, extract_state_dict, parse_init
    assert parse_init(["a=3", "b=tiny", "c=(1, 2)", "d=True"]) == {"a": 3, "b": "tiny", "c": (1, 2), "d": True}
    with pytest.raises(ValueError):
        parse_init(["novalue"])
    sd = {"w": torch.zeros(2)}
    assert extract_state_dict(sd)[0] == sd
    for key in ("state_dict", "model", "model_state_dict", "net"):
        assert extract_state_dict({key: sd, "epoch": 1})[1] == f"key {key!r}"
    with pytest.raises(CheckpointError):
        extract_state_dict([1, 2])


def test_orbax_format_round_trip(trained, tmp_path):
    ocp = pytest.importorskip("orbax.checkpoint")
    import jax
    import jax.numpy as jnp

    from transpiler.api import convert_source
    src, _, model = trained
    ckpt = tmp_path / "ckpt.pt"
    torch.save(model.state_dict(), ckpt)
    out = tmp_path / "orbax_ckpt"
    proc = jaxport("weights", ckpt, "--module", f"{src}:Tagger", "--init", "vocab=20", "-o", out,
                   "--format", "orbax")
    assert proc.returncode == 0, proc.stderr.decode()
    assert out.is_dir() and b"batch_stats" in proc.stdout
    conv = tmp_path / "tagger_jax.py"
    conv.write_bytes(convert_source(src.read_text(), str(src)).output)
    flax_model = load_module(conv).Tagger(vocab=20)
    tokens = np.random.default_rng(2).integers(0, 20, (3, 5))
    x = jnp.asarray(tokens.astype(np.int32))
    template = flax_model.init(jax.random.PRNGKey(0), x)
    variables = ocp.StandardCheckpointer().restore(out.resolve(), template)
    got = np.asarray(flax_model.apply(variables, x))
    np.testing.assert_allclose(got, model(torch.from_numpy(tokens)).detach().numpy(), rtol=1e-5, atol=1e-5)
    # an existing output directory is never overwritten
    proc = jaxport("weights", ckpt, "--module", f"{src}:Tagger", "--init", "vocab=20", "-o", out,
                   "--format", "orbax")
    assert proc.returncode == 1 and b"exists" in proc.stderr and b"Traceback" not in proc.stderr


def test_orbax_not_installed_is_a_clean_error(trained, tmp_path):
    src, _, model = trained
    ckpt = tmp_path / "ckpt.pt"
    torch.save(model.state_dict(), ckpt)
    shadow = tmp_path / "no_orbax"          # an `orbax` package that cannot be imported
    (shadow / "orbax").mkdir(parents=True)
    (shadow / "orbax" / "__init__.py").write_text("raise ImportError('No module named orbax')\n")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(shadow), str(ROOT)])
    out = tmp_path / "o"
    proc = subprocess.run([sys.executable, str(ROOT / "cli.py"), "weights", str(ckpt), "--module",
                           f"{src}:Tagger", "--init", "vocab=20", "-o", str(out), "--format", "orbax"],
                          capture_output=True, timeout=300, env=env)
    err = proc.stderr.decode()
    assert proc.returncode == 1 and not out.exists(), err
    assert "pip install orbax-checkpoint" in err and "jaxport[orbax]" in err and "Traceback" not in err
    help_text = jaxport("weights", "--help").stdout
    assert b"--format" in help_text and b"orbax" in help_text
