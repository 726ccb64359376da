"""``jaxport validate --emit-tests DIR``: pytest files for the user's CI.

One file per original, ``DIR/test_<stem>_jaxport.py``, with one test per validated case. Each
test is a hypothesis property test run through ``transpiler.validate.runner.check_case``
(the same engine as ``jaxport validate``: weights transferred, forward and gradients compared
on ``EXAMPLES`` drawn inputs, failures shrunk). Paths are stored relative to the test file, so
the directory can be committed next to the code.
"""
from __future__ import annotations

import os
from pathlib import Path

TEMPLATE = '''"""Equivalence of {original_name} (PyTorch) and {converted_name} (JAX), written by
`jaxport validate --emit-tests`. Each test draws {examples} inputs with hypothesis (seed {seed}),
runs both modules with the same weights and compares outputs and gradients; a failure shows the
smallest failing input. Requires jaxport with its `validate` extra (torch, jax, flax, hypothesis).
"""
from pathlib import Path

import pytest

from transpiler.validate.runner import check_case

HERE = Path(__file__).resolve().parent
ORIGINAL = HERE / {original!r}
CONVERTED = HERE / {converted!r}
SPEC = {spec}
EXAMPLES = {examples}
SEED = {seed}
CASES = {cases!r}


@pytest.mark.parametrize("case", CASES)
def test_converted_module_matches_original(case):
    result = check_case(ORIGINAL, CONVERTED, case, SPEC, examples=EXAMPLES, seed=SEED)
    if result.status == "skip":
        pytest.skip(result.message)
    assert result.status == "pass", str(result)
'''


def emit_tests(out_dir: str | Path, original: str | Path, converted: str | Path,
               spec: str | Path | None, cases: list[str], examples: int, seed: int) -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    base = out_dir.resolve()

    def rel(p) -> str:
        return Path(os.path.relpath(Path(p).resolve(), base)).as_posix()
    original = Path(original)
    stem = "".join(c if c.isalnum() else "_" for c in original.stem)
    path = out_dir / f"test_{stem}_jaxport.py"
    text = TEMPLATE.format(original_name=original.name, converted_name=Path(converted).name,
                           original=rel(original), converted=rel(converted),
                           spec=f"HERE / {rel(spec)!r}" if spec else "None",
                           examples=examples, seed=seed, cases=list(cases))
    path.write_text(text, encoding="utf-8")
    return path
