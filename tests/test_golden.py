"""Golden outputs: the converted code of every corpus case, committed for review under
corpus/expected/. A change to the converter that changes an output fails here with the diff;
after reviewing it, refresh the goldens with

    JAXPORT_UPDATE_GOLDENS=1 python -m pytest tests/test_golden.py
"""
import difflib
import os
from pathlib import Path

import pytest

from transpiler.api import convert_bytes

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "corpus"
EXPECTED = CORPUS / "expected"
CASES = sorted(p for sub in ("models", "training") for p in (CORPUS / sub).glob("*.py"))
UPDATE = os.environ.get("JAXPORT_UPDATE_GOLDENS") == "1"


@pytest.mark.parametrize("source", CASES, ids=[f"{p.parent.name}/{p.stem}" for p in CASES])
def test_conversion_matches_golden(source: Path):
    result = convert_bytes(source.read_bytes(), str(source.relative_to(CORPUS)))
    assert result.status in ("converted", "partial"), [d.format(source.name) for d in result.diagnostics]
    golden = EXPECTED / source.parent.name / source.name
    if UPDATE:
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_bytes(result.output)
        return
    assert golden.exists(), f"no golden for {source.name}: run with JAXPORT_UPDATE_GOLDENS=1 and review it"
    expected = golden.read_text(encoding="utf-8")
    actual = result.output.decode("utf-8")
    if actual != expected:
        diff = "".join(list(difflib.unified_diff(
            expected.splitlines(True), actual.splitlines(True), str(golden), "converted"))[:80])
        pytest.fail(f"conversion of {source.name} changed:\n{diff}")


def test_every_golden_has_a_corpus_case():
    stale = [p for p in EXPECTED.rglob("*.py")   # distributed/<mode>/: tests/test_distributed_golden.py
             if not (CORPUS / p.relative_to(EXPECTED)).exists() and p.relative_to(EXPECTED).parts[0] != "distributed"]
    assert not stale, f"goldens without a corpus case: {stale}"
