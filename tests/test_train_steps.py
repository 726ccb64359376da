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

# scripts of corpus/training whose loops the loop replay cannot rebuild (it feeds generated
# batches to one backward()/step() pair per iteration), so `--replay auto` runs the scripts
# themselves for them (transpiler/validate/script_replay.py), with the reason the loop replay gives
SCRIPT_REPLAYED: dict[str, str] = {
    "gpt_accum.py": "inner loop",            # backward() in a micro-batch loop, step() after it
    "gan.py": "cannot infer 0 model inputs",  # two optimizers; the batch is sampled noise
    "vae.py": "xb = data[perm[i:i + args.batch]]",   # batches sliced from a tensor in the loop
    "amp_checkpoint.py": "GradScaler",
    "char_rnn.py": "hidden",                 # out, hidden = model(x, hidden)
    "reinforce_bandit.py": "names not found in the setup",   # actions sampled in the loop
    "seq2seq_attention.py": "cannot infer 0 model inputs",   # batches from make_batch(...) in the loop
    "actor_critic.py": "names not found in the setup",      # one loss, two optimizers; sampled actions
    "trainer_class.py": "one optimizer step per call of this function",   # Trainer._run_batch, no loop of its own
    "step_function.py": "one optimizer step per call of this function",   # train(input, target) called in a loop
    "trainer_loop.py": "the optimizer 'self.optimizer' is not built in Trainer.fit",   # held by a Trainer
}


def _scripts() -> list:
    return [pytest.param(p.name, id=p.stem) for p in sorted(CORPUS.glob("*.py"))]


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
    replayed = [m for m in report["modules"] if m["status"] != "skip"]
    assert {m["replay"] for m in replayed} == {"script" if name in SCRIPT_REPLAYED else "loop"}, out
    for m in report["modules"]:
        if m["status"] == "skip":     # a loop the loop replay could not rebuild: the scripts ran instead
            assert name in SCRIPT_REPLAYED and "replayed by running the scripts instead" in m["message"], m
            assert SCRIPT_REPLAYED[name] in m["message"], m["message"]
            continue
        assert m["name"].startswith("train:")
        steps = [c for c in m["checks"] if c.get("kind") == "train_step"]
        assert all(c["status"] == "pass" and c["max_abs_err"] is not None for c in steps)
        by_model: dict = {}
        for c in steps:
            by_model.setdefault(c["name"].split(":")[1] if c["name"].count(":") == 2 else "", []).append(c)
        for checks in by_model.values():   # every model: its parameters after each of its 3 steps
            assert [c["step"] for c in checks if c["name"].endswith(":params")] == [1, 2, 3]
        # the losses: with each model's steps, or (one summed loss stepping two optimizers) with one
        losses = [c for c in steps if c["name"].endswith(":loss")]
        assert len(losses) >= 3 and sorted({c["step"] for c in losses}) == [1, 2, 3]
        assert len(m["train_steps"]) == 3 * len(by_model) and m["examples"] == 3
        print(name, m["replay"], [(s["torch_loss"], s["jax_loss"], s["param_max_abs_err"]) for s in m["train_steps"]])


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


# --------------------------------------------------------------------------- the script replay

# corpus script → (regex on its converted text, replacement, failing model, first failing step)
SCRIPT_BUGS = {
    # the discriminator's Adam with b1=0.9 instead of 0.5: identical first step (Adam's first
    # update does not depend on b1), different from the second on
    "gan.py": (r"opt_d = optax\.adam\(learning_rate=2e-3, b1=0\.5", "opt_d = optax.adam(learning_rate=2e-3, b1=0.9",
               "Discriminator#0", 2),
    # the accumulated micro-batch loss divided twice
    "gpt_accum.py": (r"\) / args_accum\n", ") / (2 * args_accum)\n", "GPT#0", 1),
}


@pytest.mark.parametrize("name", sorted(SCRIPT_BUGS))
def test_seeded_bug_fails_the_script_replay(name, tmp_path):
    pattern, repl, model, step = SCRIPT_BUGS[name]
    text = convert_source((CORPUS / name).read_text(encoding="utf-8"), path=name).output.decode("utf-8")
    text, n = re.subn(pattern, repl, text)
    assert n == 1, f"{pattern!r} not found in the converted {name}"
    converted = tmp_path / name
    converted.write_text(text, encoding="utf-8")
    code, report, log = _validate(CORPUS / name, converted, tmp_path, "--replay", "script")
    assert code == 1, log
    [m] = report["modules"]
    assert m["replay"] == "script" and m["status"] == "fail", m
    assert m["message"].startswith(f"{model} step {step} fails"), m["message"]
    failing = [c for c in m["checks"] if c["status"] == "fail"]
    assert min(c["step"] for c in failing) == step
    assert all(c["status"] == "pass" for c in m["checks"] if c["step"] < step)


def test_script_replay_reports_a_script_that_cannot_run(tmp_path):
    """A converted script that crashes before its first step: an error naming the script's
    exception, not a traceback of the validator."""
    name = "mlp_regression.py"
    text = convert_source((CORPUS / name).read_text(encoding="utf-8"), path=name).output.decode("utf-8")
    converted = tmp_path / name
    converted.write_text(text.replace("optimizer = optax.", "raise RuntimeError('broken on purpose')\noptimizer = optax.", 1),
                         encoding="utf-8")
    code, report, log = _validate(CORPUS / name, converted, tmp_path, "--replay", "script")
    assert code == 1, log
    [m] = report["modules"]
    assert m["status"] == "error" and "RuntimeError: broken on purpose" in m["message"], m


def test_manifest_source_segments_match_the_ast_module():
    """The manifest's line table gives every node the text ast.get_source_segment gives it
    (CRLF and CR line ends, a form feed, which str.splitlines would split at, non-ASCII)."""
    import ast
    from transpiler.manifest import _Side
    text = ("x = 'é'\r\ny = (1 +\r\n     2)\n\x0cz = (3, '\x0c')\rw = [\n    'ü', f(a=1,\n"
            "           b='∂')]\nfor i in range(3):\n    loss = w[i] * 2\n")
    side = _Side(text)
    nodes = [n for n in ast.walk(side.tree) if hasattr(n, "end_col_offset")]
    assert len(nodes) > 20
    for node in nodes:
        assert side.src(node) == ast.get_source_segment(text, node), ast.dump(node)
