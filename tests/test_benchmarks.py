"""Smoke test of the benchmark entry point: ``python -m benchmarks --quick`` runs and its JSON
has the documented shape. Sizes are shrunk further; no timing is asserted (timings belong
to the benchmark's table, never to tests)."""
from __future__ import annotations

import json

import pytest

from benchmarks import __main__ as bench
from benchmarks import conversion


def test_quick_conversion_benchmark_emits_the_table_and_json(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(conversion, "QUICK_REPO_FILES", 5)
    monkeypatch.setattr(conversion, "QUICK_RSS_LINES", 300)
    out = tmp_path / "bench.json"
    assert bench.main(["--quick", "--only", "conversion", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["quick"] is True
    assert {"cpu", "cores", "python", "libcst", "date"} <= set(data["machine"])
    rows = data["rows"]
    targets = [r["target"] for r in rows]
    assert len(rows) == 4, rows
    assert targets[0].startswith("convert -j 1 / libcst parse+print")
    assert "speedup" in targets[1] and "first file" in targets[2] and "RSS" in targets[3]
    for r in rows:
        assert set(r) == {"target", "goal", "measured", "met", "note", "part"}
        assert isinstance(r["measured"], (int, float)) and r["measured"] > 0, r
        assert isinstance(r["met"], bool), r
    # the conversion path must not import torch, jax or flax (the note names any it did)
    assert rows[2]["note"].endswith("none"), rows[2]
    printed = capsys.readouterr().out
    assert "target" in printed and "measured" in printed and rows[0]["target"] in printed


def test_missing_or_failing_part_is_a_row_not_a_crash(monkeypatch):
    def boom(name, quick):
        if name == "train_step":
            raise ModuleNotFoundError("no", name="benchmarks.train_step")
        raise RuntimeError("broken")
    monkeypatch.setattr(bench, "_part", boom)
    rows = bench.run(["train_step", "validate"], quick=True)
    assert [r["met"] for r in rows] == [None, None]
    assert "not there" in rows[0]["note"] and "RuntimeError: broken" in rows[1]["note"]


def test_synthetic_repo_is_made_of_corpus_files(tmp_path):
    files, lines = conversion.make_repo(tmp_path, n_files=7)
    made = sorted(tmp_path.rglob("*.py"))
    assert files == len(made) == 7 and lines == sum(p.read_text().count("\n") for p in made)
    sources = {p.read_text() for p in conversion.corpus_files()}
    assert all(p.read_text() in sources for p in made)


def test_phase_breakdown_accounts_for_the_whole_conversion(tmp_path):
    from benchmarks import conversion_phases
    src = tmp_path / "src"
    src.mkdir()
    (src / "net.py").write_text("import torch\nimport torch.nn as nn\n\n\nclass Net(nn.Module):\n"
                                "    def __init__(self):\n        super().__init__()\n"
                                "        self.fc = nn.Linear(4, 2)\n\n"
                                "    def forward(self, x):\n        return torch.relu(self.fc(x))\n")
    total, spent = conversion_phases.phase_seconds([src])
    assert total > 0 and {"parse", "rules", "imports and print"} <= set(spent)
    rows = conversion_phases.shares(total, spent)
    assert rows[-1][0] == "the rest"
    # each CPU second counts once (a phase inside another counts for the outer one)
    assert abs(sum(share for _, share in rows) - 1.0) < 1e-9 and rows[-1][1] >= 0
    # the wrappers are gone afterwards
    import libcst
    assert libcst.parse_module.__module__.startswith("libcst")
