"""`jaxport validate --record`: a training script's real calls become the validation spec.

End to end on models the zero-config inference cannot handle (two inputs; an Embedding after a
reshape), the spec tables built from recorded calls, and clean errors for failing scripts."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from transpiler.validate.record import (RecordError, Recording, parse_command, record_script,
                                        recorded_spec_text, recorded_specs, spec_toml)
from transpiler.validate.spec import parse_spec_file, parse_spec_text

ROOT = Path(__file__).resolve().parent.parent

MODELS = '''\
import torch
import torch.nn as nn


class TwoTower(nn.Module):
    def __init__(self, d_user, d_item, hidden=8):
        super().__init__()
        self.user = nn.Linear(d_user, hidden)
        self.item = nn.Linear(d_item, hidden)

    def forward(self, u, i):
        return (torch.tanh(self.user(u)) * self.item(i)).sum(-1)


class Patches(nn.Module):
    """Tokens [B, N, W]: the embedding runs on a reshaped view."""

    def __init__(self, vocab=11, dim=4, width=3):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.fc = nn.Linear(width * dim, 2)

    def forward(self, tokens, mask=None):
        b, n, w = tokens.shape
        h = self.emb(tokens.reshape(b, n * w))
        h = h.reshape(b, n, -1)
        return self.fc(h).mean(1)


class Unused(nn.Module):
    def forward(self, x):
        return x
'''

TRAIN = '''\
import argparse

import torch

from models import Patches, TwoTower

p = argparse.ArgumentParser()
p.add_argument("--steps", type=int, default=1)
a = p.parse_args()
torch.manual_seed(0)
towers = TwoTower(6, d_item=5)
patches = Patches(vocab=13)
opt = torch.optim.SGD([*towers.parameters(), *patches.parameters()], lr=0.1)
for step in range(a.steps):
    b = 4 if step % 3 else 3
    loss = towers(torch.randn(b, 6), torch.rand(b, 5)).pow(2).mean()
    loss = loss + patches(torch.randint(0, 13, (b, 2 + step % 2, 3)), mask=None).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
'''


def jaxport(*args, cwd=None, timeout=600):
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return subprocess.run([sys.executable, str(ROOT / "cli.py"), *map(str, args)],
                          capture_output=True, timeout=timeout, env=env, cwd=cwd)


@pytest.fixture()
def project(tmp_path):
    from transpiler.api import convert_source
    (tmp_path / "models.py").write_text(MODELS)
    (tmp_path / "train.py").write_text(TRAIN)
    (tmp_path / "models_jax.py").write_bytes(convert_source(MODELS, "models.py").output)
    return tmp_path


def test_zero_config_cannot_infer_these_models(project):
    from transpiler.validate.harness import load_module_from_path
    from transpiler.validate.infer import NotInferable, infer_spec
    from transpiler.validate.spec import parse_module_spec
    mod = load_module_from_path(project / "models.py")
    with pytest.raises(NotInferable):
        infer_spec(mod.TwoTower, "TwoTower", parse_module_spec("TwoTower", {"init": {"d_user": 6, "d_item": 5}}))
    with pytest.raises(NotInferable):
        infer_spec(mod.Patches, "Patches")


def test_recorded_spec_validates_and_is_saved(project):
    proc = jaxport("validate", "models.py", "models_jax.py", "--record", "python train.py --steps 7",
                   "--save-spec", "recorded.toml", "--examples", "6", "--json", "r.json", cwd=project)
    out, err = proc.stdout.decode(), proc.stderr.decode()
    assert proc.returncode == 0, out + err
    assert "recorded 10 call(s) of TwoTower (5), Patches (5)" in err
    specs = parse_spec_file(project / "recorded.toml")
    assert list(specs) == ["TwoTower", "Patches"]          # Unused was never called
    tt, pt = specs["TwoTower"], specs["Patches"]
    assert tt.init == {"d_user": 6, "d_item": 5}           # positional arg bound to its name
    assert [a.text.split(" range")[0] for a in tt.inputs] == ["float32[B, 6]", "float32[B, 5]"]
    assert tt.dims == {"B": (3, 4)}                        # batch sizes 3 and 4 were seen
    lo, hi = tt.inputs[1].range                            # torch.rand: values in [0, 1)
    assert 0 <= lo < 0.2 and 0.8 < hi <= 1
    assert pt.init == {"vocab": 13}
    assert [a.text for a in pt.inputs] == ["int64[B, T, 3] range(0, 13)"]
    assert pt.dims == {"B": (3, 4), "T": (2, 3)} and pt.kwargs == {}   # mask=None left out
    report = json.loads((project / "r.json").read_text())
    assert [(m["name"], m["status"]) for m in report["modules"]] == [
        ("TwoTower", "pass"), ("Patches", "pass"), ("Unused", "skip")]   # not recorded: zero-config
    assert all(m["examples"] >= 4 for m in report["modules"][:2])
    # the recorded spec catches a bug in the converted file
    bad = (project / "models_jax.py").read_text().replace("jnp.tanh(", "jax.nn.sigmoid(")
    (project / "bad_jax.py").write_text(bad)
    proc = jaxport("validate", "models.py", "bad_jax.py", "--spec", "recorded.toml", "--module", "TwoTower",
                   "--examples", "5", cwd=project)
    assert proc.returncode == 1 and "FAIL  TwoTower" in proc.stdout.decode().replace("\x1b[0m", "")


def test_failing_script_is_a_clean_error_naming_it(project):
    (project / "broken.py").write_text("import torch\nfrom models import TwoTower\n"
                                       "m = TwoTower(2, 3)\nscale = 1 / 0\n")
    proc = jaxport("validate", "models.py", "models_jax.py", "--record", "python broken.py", cwd=project)
    err = proc.stderr.decode()
    assert proc.returncode == 2, err
    assert "broken.py" in err and "ZeroDivisionError" in err and "line 4" in err
    assert "Traceback" not in err
    proc = jaxport("validate", "models.py", "models_jax.py", "--record", "python missing.py", cwd=project)
    assert proc.returncode == 2 and b"no such script missing.py" in proc.stderr
    proc = jaxport("validate", "models.py", "models_jax.py", "--record", "make train", cwd=project)
    assert proc.returncode == 2 and b"python SCRIPT.py" in proc.stderr
    proc = jaxport("validate", "models.py", "models_jax.py", "--save-spec", "x.toml", cwd=project)
    assert proc.returncode == 2 and b"--record" in proc.stderr
    help_text = jaxport("validate", "--help").stdout
    for option in (b"--record", b"--save-spec", b"--record-calls", b"--record-time"):
        assert option in help_text


def test_time_budget_and_a_script_that_calls_nothing(project):
    (project / "forever.py").write_text(
        "import torch\nfrom models import TwoTower\nm = TwoTower(2, 3)\n"
        "while True:\n    m(torch.zeros(1, 2), torch.zeros(1, 3))\n")
    rec = record_script(project / "models.py", "python forever.py", ["TwoTower", "Patches"],
                        max_calls=3, budget=30, cwd=project)
    assert rec.status == "stopped" and len(rec.calls) == 3 and rec.seconds < 30
    (project / "idle.py").write_text("import time\nimport models\ntime.sleep(60)\n")
    with pytest.raises(RecordError, match="idle.py .*called no module class of models.py"):
        record_script(project / "models.py", "python idle.py", ["TwoTower"], budget=1.5, cwd=project)


def test_parse_command():
    assert parse_command("python train.py --lr 3 'a b'") == ("path", "train.py", ["--lr", "3", "a b"])
    assert parse_command("/usr/bin/python3.11 -u -W ignore t.py") == ("path", "t.py", [])
    assert parse_command("python -m pkg.train -x") == ("module", "pkg.train", ["-x"])
    assert parse_command("train.py") == ("path", "train.py", [])
    for bad in ("make train", "python", "python -c 'print(1)'", "python 'unclosed"):
        with pytest.raises(RecordError):
            parse_command(bad)


def _tensor(dtype, shape, lo=None, hi=None):
    d = {"kind": "tensor", "dtype": dtype, "shape": list(shape)}
    if lo is not None:
        d["min"], d["max"] = lo, hi
    return d


def _call(cls, args, kwargs=None, init=None, problems=()):
    return {"event": "call", "cls": cls, "init": init or {}, "init_problems": list(problems),
            "call": {"args": args, "kwargs": kwargs or {}, "dropped": []}}


def test_tables_from_records():
    calls = [
        # same batch in both inputs (varying together) -> one symbol; a constant dim stays
        _call("Seq", [_tensor("int64", (2, 7), 0, 40), _tensor("float32", (2, 7, 5), -1.5, 2.0)],
              {"lengths": _tensor("int64", (2,), 1, 7)}),
        _call("Seq", [_tensor("int64", (8, 7), 3, 63), _tensor("float32", (8, 7, 5), -0.5, 1.25)],
              {"lengths": _tensor("int64", (8,), 2, 7)}),
        # another structure (a tuple state and a literal) -> a second table
        _call("Seq", [_tensor("int64", (1, 4), 0, 9),
                      {"kind": "tuple", "items": [_tensor("float32", (1, 3)), _tensor("bool", (1, 3))]},
                      {"kind": "literal", "value": 2}]),
        _call("Cfg", [_tensor("uint8", (1, 3, 4, 4), 0, 255)], init={"k": [1, 2]},
              problems=["constructor argument cfg = Config() (Config) cannot be written in a spec"]),
    ]
    rec = Recording("python t.py", "finished", calls=calls, seen={"Seq": 3, "Cfg": 1})
    tables = {t.name: t for t in recorded_specs(rec, ["Cfg", "Seq"])}
    assert list(tables) == ["Cfg", "Seq", "Seq_2"]
    seq = tables["Seq"]
    assert seq.inputs == ["int64[B, 7] range(0, 64)", "float32[B, 7, 5] range(-1.5, 2.0)"]
    assert seq.kwargs == {"lengths": "int64[B] range(1, 8)"} and seq.dims == {"B": [2, 8]}
    assert tables["Seq_2"].inputs == ["int64[1, 4] range(0, 10)", ["float32[1, 3]", "bool[1, 3]"],
                                      {"value": 2}]
    assert tables["Cfg"].skip and "Config()" in tables["Cfg"].skip and "--spec" in tables["Cfg"].skip
    assert tables["Cfg"].inputs == ["int32[1, 3, 4, 4] range(0, 256)"]   # uint8 drawn as int32
    text = recorded_spec_text(rec, ["Cfg", "Seq"])
    parsed = parse_spec_text(text)        # the TOML written is a valid spec
    assert parsed["Seq_2"].cls == "Seq" and parsed["Seq"].dims == {"B": (2, 8)}
    assert parsed["Cfg"].skip and parsed["Cfg"].init == {"k": [1, 2]}
    assert isinstance(parsed["Seq_2"].inputs[1], tuple)
    assert recorded_spec_text(rec, ["Cfg", "Seq"], {"Cfg"}).count("[Cfg]") == 0


def test_dims_varying_differently_get_different_symbols_and_toml_escapes():
    calls = [_call("M", [_tensor("float32", (b, t, 3))], init={"name": 'a "q"\n', "r": 0.5})
             for b, t in ((2, 5), (2, 9), (4, 5))]
    (table,) = recorded_specs(Recording("c", "stopped", calls=calls))
    assert table.inputs == ["float32[B, T, 3]"] and table.dims == {"B": [2, 4], "T": [5, 9]}
    parsed = parse_spec_text(spec_toml([table]))
    assert parsed["M"].init == {"name": 'a "q"\n', "r": 0.5}


def test_describe_call_and_init_in_process():
    import torch

    from transpiler.validate.record import describe_call, describe_init

    class M(torch.nn.Module):
        def __init__(self, n, *extra, act="relu", device=None, **kw):
            super().__init__()

        def forward(self, x, mask=None, scale=None, *, flag=False):
            return x

    m = M.__new__(M)
    d = describe_init(M.__init__, m, (3,), {"act": "gelu", "dtype": torch.float32})
    assert d["init"] == {"n": 3, "act": "gelu"} and "dtype = torch.float32" in d["problems"][0]
    assert describe_init(M.__init__, m, (3, 4), {})["problems"][0].startswith("it takes *extra")
    x = torch.tensor([[1, 5], [2, 3]])
    c = describe_call(M.forward.__get__(m), (x, None, 2.0), {"flag": True})
    assert c["dropped"] == ["mask"]
    assert c["args"] == [{"kind": "tensor", "dtype": "int64", "shape": [2, 2], "min": 1, "max": 5}]
    assert c["kwargs"] == {"scale": {"kind": "literal", "value": 2.0}, "flag": {"kind": "literal", "value": True}}
