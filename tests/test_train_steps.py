"""`jaxport validate --train-steps K` and the training manifest (`<stem>.jaxport.json`).

* every training script of corpus/training converts (through the CLI, which writes the
  manifest beside it) and replays 3 optimizer steps in torch and JAX, from identical weights on
  identical batches, with every loss and parameter agreeing (exit 0);
* seeded training bugs in a converted file (decoupled instead of L2 weight decay, a wrong
  momentum, a wrong loss reduction, a scheduler off by one) fail with exit 1, and the report
  names the first failing step;
* the manifest of each corpus script records the model, optimizer, losses, scheduler, batch
  structure and steps per epoch; `convert` writes it only beside training scripts.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from transpiler.api import convert_source
from transpiler.cli import cli
from transpiler.manifest import build_manifest, sidecar_name

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "corpus" / "training"

# scripts of corpus/training that the replay cannot handle, with the reason
SKIP: dict[str, str] = {
    "gpt_accum.py": "gradient accumulation: backward() runs in an inner micro-batch loop and step() after "
                    "it, and the learning rate is written into param_groups every iteration; the replay "
                    "handles loops with backward() and step() in one body",
    "gan.py": "two optimizers stepped in one loop body (discriminator then generator) on sampled noise; "
              "the replay handles one backward()/step() pair per loop",
    "vae.py": "batches are sliced from a tensor inside the loop (no DataLoader batch to generate) and the "
              "step draws torch.randn_like noise, which the JAX side draws from its own key",
    "amp_checkpoint.py": "the loop steps through a GradScaler (scaler.scale(loss).backward(), "
                         "scaler.step(optimizer)), which the manifest analysis does not read yet",
    "char_rnn.py": "the forward pass carries a hidden state (out, hidden = model(x, hidden)) that the "
                   "replay does not thread from step to step yet",
    "reinforce_bandit.py": "the loss reads actions sampled from a Categorical inside the loop (the "
                           "replay reports 'names not found in the setup: actions'); the two "
                           "generators cannot draw the same actions anyway",
    "seq2seq_attention.py": "batches come from a function called inside the loop (src, tgt_in, tgt = "
                            "make_batch(...)), not from a loader: the replay cannot tell the model "
                            "inputs ('cannot infer 0 model inputs')",
}


def _scripts() -> list:
    out = []
    for p in sorted(CORPUS.glob("*.py")):
        marks = [pytest.mark.skip(reason=SKIP[p.name])] if p.name in SKIP else []
        out.append(pytest.param(p.name, marks=marks, id=p.stem))
    return out


def _convert_cli(src: Path, out: Path) -> None:
    res = CliRunner().invoke(cli, ["convert", str(src), "-o", str(out), "-q"])
    assert res.exit_code in (0, 1), res.output
    assert out.is_file()


def _validate(original: Path, converted: Path, tmp_path: Path, *extra: str) -> tuple[int, dict, str]:
    report = tmp_path / "report.json"
    proc = subprocess.run([sys.executable, str(ROOT / "cli.py"), "validate", str(original), str(converted),
                           "--train-steps", "3", "--json", str(report), *extra],
                          capture_output=True, text=True, timeout=900, cwd=tmp_path)
    data = json.loads(report.read_text()) if report.is_file() else {}
    return proc.returncode, data, proc.stdout + proc.stderr


@pytest.mark.parametrize("name", _scripts())
def test_corpus_script_replays_three_steps(name, tmp_path):
    converted = tmp_path / name
    _convert_cli(CORPUS / name, converted)
    sidecar = tmp_path / sidecar_name(name)
    assert sidecar.is_file(), "convert wrote no training manifest"
    code, report, out = _validate(CORPUS / name, converted, tmp_path)
    assert code == 0, out
    assert report["summary"]["pass"] >= 1 and report["summary"]["fail"] == 0 and report["summary"]["error"] == 0, out
    for m in report["modules"]:
        if m["status"] == "skip":
            continue
        assert m["name"].startswith("train:")
        steps = [c for c in m["checks"] if c.get("kind") == "train_step"]
        assert [c["step"] for c in steps] == [1, 1, 2, 2, 3, 3]
        assert {c["name"].split(":")[1] for c in steps} == {"loss", "params"}
        assert all(c["status"] == "pass" and c["max_abs_err"] is not None for c in steps)
        assert len(m["train_steps"]) == 3 and m["examples"] == 3
        print(name, [(s["torch_loss"], s["jax_loss"], s["param_max_abs_err"]) for s in m["train_steps"]])


# --------------------------------------------------------------------------- seeded bugs

BUGS_SRC = '''\
"""Training loops, each broken in one way after conversion (train_clean is not)."""
import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset


class Tiny(nn.Module):
    def __init__(self, n_in=6, n_out=3):
        super().__init__()
        self.fc1 = nn.Linear(n_in, 8)
        self.fc2 = nn.Linear(8, n_out)

    def forward(self, x):
        return self.fc2(torch.tanh(self.fc1(x)))


def data():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 6)).astype(np.float32)
    y = rng.integers(0, 3, size=16)
    return DataLoader(TensorDataset(torch.from_numpy(x), torch.from_numpy(y)), batch_size=4)


def train_clean():
    loader = data()
    model = Tiny()
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.8, weight_decay=0.1)
    for xb, yb in loader:
        optimizer.zero_grad()
        loss = criterion(model(xb), yb)
        loss.backward()
        optimizer.step()


def train_decay():
    loader = data()
    model = Tiny()
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05, weight_decay=0.5)
    for xb, yb in loader:
        optimizer.zero_grad()
        loss = criterion(model(xb), yb)
        loss.backward()
        optimizer.step()


def train_momentum():
    loader = data()
    model = Tiny()
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for xb, yb in loader:
        optimizer.zero_grad()
        loss = criterion(model(xb), yb)
        loss.backward()
        optimizer.step()


def train_reduction():
    loader = data()
    model = Tiny(n_out=1)
    criterion = nn.MSELoss(reduction="sum")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    for xb, yb in loader:
        optimizer.zero_grad()
        loss = criterion(model(xb).squeeze(1), yb.float())
        loss.backward()
        optimizer.step()


def train_schedule():
    loader = data()
    model = Tiny()
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    for epoch in range(2):
        for xb, yb in loader:
            optimizer.zero_grad()
            loss = criterion(model(xb), yb)
            loss.backward()
            optimizer.step()
        scheduler.step()
'''

# function → (regex on the converted text, replacement, first failing step)
BUGS = {
    # torch's Adam weight_decay is L2 on the gradient; decoupled decay (adamw) is a bug
    "train_decay": (r"optimizer = optax\.chain\(optax\.add_decayed_weights\(0\.5\), .*\)",
                    "optimizer = optax.adamw(learning_rate=0.05, weight_decay=0.5)", 1),
    # momentum only matters from the second step on
    "train_momentum": (r"momentum=0\.9", "momentum=0.5", 2),
    "train_reduction": (r'reduction="sum"', 'reduction="mean"', 1),
    # the schedule read one step ahead: the first step already uses gamma * lr
    "train_schedule": (r"torch_step_lr\(1, gamma=0\.5\)",
                       "(lambda base: (lambda count: torch_step_lr(1, gamma=0.5)(base)(count + 1)))", 1),
}


def test_seeded_training_bugs_fail_at_their_step(tmp_path):
    original = tmp_path / "bugs.py"
    original.write_text(BUGS_SRC, encoding="utf-8")
    converted = tmp_path / "bugs_jax.py"
    text = convert_source(BUGS_SRC, path="bugs.py").output.decode("utf-8")
    functions = re.split(r"(?m)^(?=def )", text)
    out = []
    for chunk in functions:
        fn = re.match(r"def (\w+)\(", chunk)
        if fn and fn.group(1) in BUGS:
            pattern, repl, _ = BUGS[fn.group(1)]
            chunk, n = re.subn(pattern, repl, chunk)
            assert n == 1, f"{fn.group(1)}: {pattern!r} not found in the converted code:\n{chunk}"
        out.append(chunk)
    converted.write_text("".join(out), encoding="utf-8")
    code, report, log = _validate(original, converted, tmp_path)
    assert code == 1, log
    by_fn = {m["name"].split("@")[1].split(":")[0]: m for m in report["modules"]}
    assert set(by_fn) == {"train_clean", *BUGS}, log
    assert by_fn["train_clean"]["status"] == "pass", by_fn["train_clean"]
    for fn, (_, _, step) in BUGS.items():
        m = by_fn[fn]
        assert m["status"] == "fail", (fn, m)
        assert m["message"].startswith(f"step {step} fails"), (fn, m["message"])
        failing = [c for c in m["checks"] if c["status"] == "fail"]
        assert failing and min(c["step"] for c in failing) == step, (fn, failing)
        assert all(c["status"] == "pass" for c in m["checks"] if c["step"] < step), fn
    assert report["summary"] == {"pass": 1, "fail": 4, "error": 0, "skip": 0}


# --------------------------------------------------------------------------- manifest

EXPECTED = {
    "mnist_steplr.py": {
        "model": ("Net", "Net(args.dropout)"),
        "optimizer": ("torch.optim.SGD", {"lr": 0.05, "momentum": 0.9}, "optax.sgd"),
        "losses": [("torch.nn.functional.nll_loss", "torch_nll_loss")],
        "scheduler": ("torch.optim.lr_scheduler.StepLR", "epoch", "torch_step_lr"),
        "batch": [("data", "input"), ("target", "target")],
        "steps": (16, 4),
    },
    "mlp_regression.py": {
        "model": ("MLP", "MLP()"),
        "optimizer": ("torch.optim.Adam", {"lr": 0.01, "weight_decay": 1e-4}, "add_decayed_weights(1e-4)"),
        "losses": [("torch.nn.MSELoss", "torch_mse_loss")],
        "scheduler": None,
        "batch": [("xb", "input"), ("yb", "target")],
        "steps": (32, 4),
    },
    "resnet_bn.py": {
        "model": ("SmallResNet", "SmallResNet()"),
        "optimizer": ("torch.optim.SGD", {"lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4},
                      "nesterov=True"),
        "losses": [("torch.nn.CrossEntropyLoss", "label_smoothing=0.1")],
        "scheduler": ("torch.optim.lr_scheduler.CosineAnnealingLR", "batch", "torch_cosine_annealing_lr"),
        "batch": [("inputs", "input"), ("labels", "target")],
        "steps": (16, 3),
    },
    "dropout_classifier.py": {
        "model": ("Classifier", "Classifier(p=args.dropout)"),
        "optimizer": ("torch.optim.AdamW", {"lr": 5e-3}, "weight_decay=0.01"),
        "losses": [("torch.nn.CrossEntropyLoss", "torch_cross_entropy"),
                   ("torch.nn.BCEWithLogitsLoss", "pos_weight")],
        "scheduler": ("torch.optim.lr_scheduler.LinearLR", "epoch", "torch_linear_lr"),
        "batch": [("xb", "input"), ("yb", "target"), ("fb", "target")],
        "steps": (32, 3),
    },
}


def _manifest(name: str) -> dict:
    text = (CORPUS / name).read_text(encoding="utf-8")
    converted = convert_source(text, path=name).output.decode("utf-8")
    return build_manifest(text, converted, name)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_manifest_of_corpus_script(name):
    m = _manifest(name)
    assert m is not None and m["jaxport_manifest"] == 1 and len(m["training"]) == 1
    e = m["training"][0]
    want = EXPECTED[name]
    assert e["problems"] == []
    assert (e["model"]["class"], e["model"]["call"]) == want["model"]
    assert e["model"]["converted"] == want["model"][1]
    cls, hyper, conv = want["optimizer"]
    assert e["optimizer"]["class"] == cls
    assert {k: v["value"] for k, v in e["optimizer"]["hyperparameters"].items()} == hyper
    assert conv in e["optimizer"]["converted"] and "optax." in e["optimizer"]["converted"]
    assert [(l.get("class") or l.get("function")) for l in e["losses"]] == [l[0] for l in want["losses"]]
    for loss, (_, needle) in zip(e["losses"], want["losses"]):
        assert needle in (loss.get("converted") or json.dumps(e["replay"]["jax"]))
    if want["scheduler"] is None:
        assert e["scheduler"] is None
    else:
        cls, step, conv = want["scheduler"]
        assert (e["scheduler"]["class"], e["scheduler"]["step"]) == (cls, step)
        assert conv in e["scheduler"]["converted"]
    assert [(b["name"], b["role"]) for b in e["batch"]] == want["batch"]
    for b in e["batch"]:
        if b["role"] == "target":
            assert b["loss"] in [l[0] for l in want["losses"]] and b["prediction"]
    assert (e["batch_size"], e["steps_per_epoch"]) == want["steps"]
    # replay: the converted step calls train_step and returns the loss by name
    assert any("train_step" in s for s in e["replay"]["jax"]["step"])
    assert e["replay"]["jax"]["loss"] == e["replay"]["torch"]["loss"] == "loss"
    assert any(s.endswith(".backward()") for s in e["replay"]["torch"]["step"])


def test_manifest_is_written_only_beside_training_scripts(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "train.py").write_text((CORPUS / "mlp_regression.py").read_text(), encoding="utf-8")
    (src / "model.py").write_text("import torch.nn as nn\n\n\nclass M(nn.Module):\n    def __init__(self):\n"
                                  "        super().__init__()\n        self.fc = nn.Linear(2, 2)\n\n"
                                  "    def forward(self, x):\n        return self.fc(x)\n", encoding="utf-8")
    (src / "notes.txt").write_text("hello\n", encoding="utf-8")
    out = tmp_path / "out"
    res = CliRunner().invoke(cli, ["convert", str(src), "-o", str(out), "-q"])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in out.iterdir()) == ["model.py", "notes.txt", "train.jaxport.json", "train.py"]
    written = json.loads((out / "train.jaxport.json").read_text())
    assert written == json.loads(json.dumps(build_manifest((src / "train.py").read_text(),
                                                           (out / "train.py").read_text(), "train.py")))
    assert written["training"][0]["model"]["class"] == "MLP"
    # --check writes nothing
    res = CliRunner().invoke(cli, ["convert", str(src), "--check", "-q"])
    assert not list(src.glob("*.jaxport.json"))


def test_no_training_loop_is_a_usage_error(tmp_path):
    original = tmp_path / "m.py"
    original.write_text("import torch.nn as nn\n", encoding="utf-8")
    res = CliRunner().invoke(cli, ["validate", str(original), str(original), "--train-steps", "2"])
    assert res.exit_code == 2, res.output
    assert "no training loop" in res.output
