"""Goldens of the DDP corpus in both --parallel modes: corpus/expected/distributed/<mode>/.
Refresh after reviewing a change with

    JAXPORT_UPDATE_GOLDENS=1 python -m pytest tests/test_distributed_golden.py
"""
import difflib
import os
from pathlib import Path

import pytest

from transpiler.api import Options, convert_bytes

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "corpus"
EXPECTED = CORPUS / "expected" / "distributed"
CASES = sorted((CORPUS / "distributed").glob("*.py"))
MODES = ("pmap", "sharding")
UPDATE = os.environ.get("JAXPORT_UPDATE_GOLDENS") == "1"


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("source", CASES, ids=[p.stem for p in CASES])
def test_distributed_conversion_matches_golden(source: Path, mode: str):
    result = convert_bytes(source.read_bytes(), str(source.relative_to(CORPUS)), Options(parallel=mode))
    assert result.status == "converted", [d.format(source.name) for d in result.diagnostics]
    golden = EXPECTED / mode / source.name
    if UPDATE:
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_bytes(result.output)
        return
    assert golden.exists(), f"no golden for {mode}/{source.name}: run with JAXPORT_UPDATE_GOLDENS=1 and review it"
    expected, actual = golden.read_text(encoding="utf-8"), result.output.decode("utf-8")
    if actual != expected:
        diff = "".join(list(difflib.unified_diff(
            expected.splitlines(True), actual.splitlines(True), str(golden), "converted"))[:80])
        pytest.fail(f"conversion of {source.name} (--parallel {mode}) changed:\n{diff}")


def test_every_distributed_golden_has_a_corpus_case():
    stale = [p for p in EXPECTED.rglob("*.py") if p.parent.name not in MODES
             or not (CORPUS / "distributed" / p.name).exists()]
    assert not stale, f"goldens without a corpus case: {stale}"
