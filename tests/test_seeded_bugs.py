"""The validator must catch real conversion bugs: each case takes the converter's real output for a
small corpus-like model, applies one textual mutation that reproduces a classic wrong conversion,
and runs `jaxport validate` (the CLI, in a subprocess): the mutated module must `fail` with a
counterexample and the command must exit 1. The unmutated conversion passes (exit 0).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from functools import lru_cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

MODELS = '''\
"""Small models for the seeded-bug tests of jaxport validate."""
import torch
import torch.nn as nn
import torch.nn.functional as F


class ConvFlatten(nn.Module):
    def __init__(self, in_channels=3, classes=5):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 4, kernel_size=3, padding=1)
        self.fc = nn.Linear(4 * 6 * 6, classes)

    def forward(self, x):
        x = F.relu(self.conv(x))
        x = torch.flatten(x, 1)
        return self.fc(x)


class ConvPool(nn.Module):
    def __init__(self, in_channels=2):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 6, kernel_size=3, padding=1)
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        x = torch.tanh(self.conv(x))
        return self.head(x.mean(dim=(2, 3)))


class GeluMLP(nn.Module):
    def __init__(self, d=8, hidden=16):
        super().__init__()
        self.fc1 = nn.Linear(d, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, d)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class NormHead(nn.Module):
    def __init__(self, d=8):
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.out = nn.Linear(d, 4)

    def forward(self, x):
        return self.out(self.norm(x))


class AttnScores(nn.Module):
    def __init__(self, d=8):
        super().__init__()
        self.q = nn.Linear(d, d)
        self.k = nn.Linear(d, d)

    def forward(self, x):
        scores = self.q(x) @ self.k(x).transpose(1, 2)
        return F.softmax(scores, dim=-1)


class AffineMap(nn.Module):
    def __init__(self, d_in=6, d_out=5):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(d_out, d_in) * 0.3)
        self.bias = nn.Parameter(torch.randn(d_out))

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)


class BNClassifier(nn.Module):
    def __init__(self, d=6, classes=3):
        super().__init__()
        self.fc = nn.Linear(d, 12)
        self.bn = nn.BatchNorm1d(12)
        self.out = nn.Linear(12, classes)

    def forward(self, x):
        return self.out(F.relu(self.bn(self.fc(x))))


class FeatureStats(nn.Module):
    def __init__(self, d=8):
        super().__init__()
        self.proj = nn.Linear(d, d)

    def forward(self, x):
        h = self.proj(x)
        return torch.cat([h.mean(dim=1, keepdim=True), h.var(dim=1, keepdim=True)], dim=1)
'''

SPEC = '''
[ConvFlatten]
inputs = ["float32[B, 3, 6, 6]"]
dims = { B = [1, 3] }

[NormHead]                      # small features: LayerNorm's eps matters
inputs = ["float32[B, 8] range(-0.05, 0.05)"]
dims = { B = [1, 3] }

[AttnScores]
inputs = ["float32[B, T, 8]"]
dims = { B = [1, 2], T = [2, 4] }

[AffineMap]
inputs = ["float32[B, 6]"]
dims = { B = [1, 3] }
'''

PRELUDE = "<prelude>"   # a mutation of a helper copied into the converted file

# (id, class it breaks, where, text of the real conversion, wrong text, check that must fail:
#  None = any; the shrunk input may show a small bug in the gradients only)
BUGS = [
    ("flatten_nhwc", "ConvFlatten", "ConvFlatten", "jax.lax.collapse(x, 1)",
     "jnp.transpose(x, (0, 2, 3, 1)).reshape(x.shape[0], -1)", None),
    ("padding_off_by_one", "ConvPool", "ConvPool", "padding=1)", "padding=2)", None),
    ("gelu_tanh", "GeluMLP", "GeluMLP", "approximate=False", "approximate=True", None),
    ("layernorm_eps", "NormHead", "NormHead", "epsilon=1e-05", "epsilon=1e-06", None),
    ("softmax_axis", "AttnScores", "AttnScores", "softmax(scores, axis=-1)",
     "softmax(scores, axis=1)", None),
    ("dropped_bias", "AffineMap", "AffineMap", "jnp.matmul(x, self.weight.T) + self.bias",
     "jnp.matmul(x, self.weight.T)", None),
    ("batchnorm_momentum", "BNClassifier", "BNClassifier", "momentum=0.9", "momentum=0.1",
     "train_stats"),
    ("kernel_transpose", "ConvPool", PRELUDE, 'spatial + "IO"', 'spatial[::-1] + "IO"', None),
    ("biased_var", "FeatureStats", "FeatureStats", "ddof=1", "ddof=0", None),
]

# bugs that can share one converted file (different classes, no prelude clash): one CLI run each
GROUPS = {
    "a": ["flatten_nhwc", "padding_off_by_one", "gelu_tanh", "layernorm_eps"],
    "b": ["softmax_axis", "dropped_bias", "batchnorm_momentum"],
    "c": ["kernel_transpose", "biased_var"],
}


def jaxport(*args, timeout=600):
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return subprocess.run([sys.executable, str(ROOT / "cli.py"), *map(str, args)],
                          capture_output=True, timeout=timeout, env=env)


@lru_cache(maxsize=None)
def converted() -> str:
    from transpiler.api import convert_source
    result = convert_source(MODELS, "seeded.py")
    assert result.status in ("converted", "partial"), result.diagnostics
    return result.output.decode("utf-8")


def class_span(text: str, cls: str) -> tuple[int, int]:
    start = text.index(f"\nclass {cls}(") + 1
    nxt = text.find("\nclass ", start)
    return start, (len(text) if nxt < 0 else nxt + 1)


def mutate(text: str, where: str, old: str, new: str) -> str:
    if where == PRELUDE:   # the helpers (classes among them) end where the source's first class starts
        lo, hi = 0, min(text.index(f"\nclass {b[1]}(") for b in BUGS)
    else:
        lo, hi = class_span(text, where)
    block = text[lo:hi]
    assert block.count(old) == 1, f"the conversion of {where} no longer contains {old!r} once:\n{block}"
    return text[:lo] + block.replace(old, new) + text[hi:]


def write_case(tmp_path, text: str) -> tuple[Path, Path]:
    original = tmp_path / "seeded.py"
    original.write_text(MODELS, encoding="utf-8")
    (tmp_path / "seeded.toml").write_text(SPEC, encoding="utf-8")
    conv = tmp_path / "seeded_jax.py"
    conv.write_text(text, encoding="utf-8")
    return original, conv


def check_report_contract(report: dict) -> None:
    assert set(report) == {"modules", "summary"}
    assert set(report["summary"]) == {"pass", "fail", "error", "skip"}
    assert sum(report["summary"].values()) == len(report["modules"])
    for m in report["modules"]:
        assert {"name", "status", "checks", "examples", "max_abs_err", "max_rel_err", "message"} <= set(m)
        assert m["status"] in ("pass", "fail", "error", "skip")
        assert isinstance(m["examples"], int) and isinstance(m["message"], str)
        for c in m["checks"]:
            assert {"name", "status", "max_abs_err", "max_rel_err", "message"} <= set(c)
    for status in ("pass", "fail", "error", "skip"):
        assert report["summary"][status] == sum(m["status"] == status for m in report["modules"])


def test_every_bug_is_a_real_mutation_of_the_conversion():
    text = converted()
    assert len({b[0] for b in BUGS}) == len(BUGS) >= 8
    assert sorted(n for g in GROUPS.values() for n in g) == sorted(b[0] for b in BUGS)
    for _, _, where, old, new, _ in BUGS:
        assert mutate(text, where, old, new) != text


def test_correct_conversion_passes(tmp_path):
    original, conv = write_case(tmp_path, converted())
    proc = jaxport("validate", original, conv, "--examples", "3", "--json", tmp_path / "r.json",
                   "--junit", tmp_path / "r.xml")
    out = proc.stdout.decode()
    assert proc.returncode == 0, out + proc.stderr.decode()
    report = json.loads((tmp_path / "r.json").read_text())
    check_report_contract(report)
    statuses = {m["name"]: m["status"] for m in report["modules"]}
    assert statuses == {cls: "pass" for cls in ("ConvFlatten", "ConvPool", "GeluMLP", "NormHead",
                                                 "AttnScores", "AffineMap", "BNClassifier",
                                                 "FeatureStats")}, out
    bn = next(m for m in report["modules"] if m["name"] == "BNClassifier")
    # BatchNorm: training-mode pass and updated statistics compared, the running variance as
    # torch stores it (no caveat)
    assert any(c["name"].startswith("train_stats:batch_stats/bn/var") for c in bn["checks"])
    assert "unbiased" not in bn["message"]
    suite = ET.parse(tmp_path / "r.xml").getroot()
    cases = suite.findall(".//testcase")
    assert len(cases) == 8 and not suite.findall(".//failure") and suite.get("failures") == "0"
    assert out.count("PASS") == 8 and "8 passed" in out


@pytest.mark.parametrize("group", sorted(GROUPS))
def test_seeded_bugs_fail_with_a_counterexample(group, tmp_path):
    bugs = [b for b in BUGS if b[0] in GROUPS[group]]
    text = converted()
    for _, _, where, old, new, _ in bugs:
        text = mutate(text, where, old, new)
    original, conv = write_case(tmp_path, text)
    modules = [x for b in bugs for x in ("--module", b[1])]
    proc = jaxport("validate", original, conv, *modules, "--examples", "3", "--seed", "1",
                   "--json", tmp_path / "r.json", "--junit", tmp_path / "r.xml")
    out = proc.stdout.decode()
    assert proc.returncode == 1, out + proc.stderr.decode()
    report = json.loads((tmp_path / "r.json").read_text())
    check_report_contract(report)
    by_name = {m["name"]: m for m in report["modules"]}
    assert set(by_name) == {b[1] for b in bugs}
    for bug, cls, _, _, _, check in bugs:
        m = by_name[cls]
        assert m["status"] == "fail", f"{bug}: {m['status']} {m['message']}"
        failed = [c["name"] for c in m["checks"] if c["status"] == "fail"]
        assert failed and (check is None or any(n.startswith(check) for n in failed)), \
            f"{bug}: failed checks {failed}"
        ce = m["counterexample"]
        assert ce and ce["args"] and ce["args"][0]["shape"] and ce["args"][0]["values"], bug
        assert "counterexample:" in m["message"]
        assert m["max_abs_err"] is not None and m["max_abs_err"] > 0
    suite = ET.parse(tmp_path / "r.xml").getroot()
    failures = suite.findall(".//testcase/failure")
    assert len(failures) == len(bugs) and suite.get("failures") == str(len(bugs))
    assert all("counterexample:" in f.text for f in failures)
    assert "FAIL" in out and f"{len(bugs)} failed" in out


def test_shrinking_reaches_the_smallest_dims(tmp_path):
    """The counterexample is shrunk: the smallest batch that shows the bug."""
    text = mutate(converted(), "GeluMLP", "approximate=False", "approximate=True")
    original, conv = write_case(tmp_path, text)
    proc = jaxport("validate", original, conv, "--module", "GeluMLP", "--examples", "10",
                   "--json", tmp_path / "r.json")
    assert proc.returncode == 1
    (m,) = json.loads((tmp_path / "r.json").read_text())["modules"]
    assert m["counterexample"]["dims"] == {"B": 2}     # zero-config dims: B in [2, 4]
    assert m["counterexample"]["args"][0]["shape"] == [2, 8]
