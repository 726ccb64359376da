"""Every corpus model, converted by jaxport, must match the original numerically.

For each ``corpus/models/NAME.py`` and each table of ``NAME.toml``: convert the file with
``transpiler.api.convert_source``, import both versions, transfer the weights and compare
forward outputs and gradients with ``compare_module``.
"""
from __future__ import annotations

import ast
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
import torch

from transpiler.validate.harness import (_fill, _leaves, _split_arrays, _to_torch, _tuplify,
                                         compare_module, load_module_from_path)
from transpiler.validate.spec import draw_inputs, parse_spec_file

CORPUS = Path(__file__).resolve().parent.parent / "corpus" / "models"
MODEL_FILES = sorted(p for p in CORPUS.glob("*.py") if p.name != "__init__.py")
CASES = [pytest.param(p.stem, case, id=f"{p.stem}::{case}")
         for p in MODEL_FILES if p.with_suffix(".toml").exists()
         for case in parse_spec_file(p.with_suffix(".toml"))]


def test_corpus_has_enough_models_each_with_a_spec():
    assert len(MODEL_FILES) >= 20
    missing = [p.name for p in MODEL_FILES if not p.with_suffix(".toml").exists()]
    assert not missing, f"models without a spec: {missing}"
    orphans = [p.name for p in CORPUS.glob("*.toml") if not p.with_suffix(".py").exists()]
    assert not orphans, f"specs without a model: {orphans}"


def test_every_spec_names_an_nn_module_of_its_file():
    for py in MODEL_FILES:
        tree = ast.parse(py.read_text(encoding="utf-8"))
        classes = {n.name for n in tree.body if isinstance(n, ast.ClassDef)}
        for case, spec in parse_spec_file(py.with_suffix(".toml")).items():
            assert spec.cls in classes, f"{py.name}: [{case}] names unknown class {spec.cls}"


def test_readme_lists_every_case():
    readme = (CORPUS.parent / "README.md").read_text(encoding="utf-8")
    for py in MODEL_FILES:
        assert py.name in readme, f"corpus/README.md does not mention {py.name}"


@pytest.mark.parametrize("stem, case", CASES)
def test_corpus_case_runs_under_torch(stem, case):
    """The spec itself is right: the original model runs forward and backward on its inputs."""
    spec = parse_spec_file(CORPUS / f"{stem}.toml")[case]
    module = load_module_from_path(CORPUS / f"{stem}.py", stem)
    torch.manual_seed(0)
    model = getattr(module, spec.cls)(**_tuplify(spec.init)).eval()
    skeleton, arrays = _split_arrays(draw_inputs(spec, np.random.default_rng(0)))
    tensors = [_to_torch(a) for a in arrays]
    for t in tensors:
        if t.is_floating_point():
            t.requires_grad_(True)
    args, kwargs = _fill(skeleton, tensors)
    out = getattr(model, spec.method)(*args, **kwargs) if spec.method else model(*args, **kwargs)
    diff = [v for _, v in _leaves(out) if isinstance(v, torch.Tensor) and v.requires_grad]
    assert diff, "no differentiable output"
    sum(v.float().sum() for v in diff).backward()
    assert all(torch.isfinite(v).all() for _, v in _leaves(out) if isinstance(v, torch.Tensor))


@lru_cache(maxsize=None)
def _converted(stem: str) -> tuple[str, str, str]:
    from transpiler.api import convert_source
    path = CORPUS / f"{stem}.py"
    result = convert_source(path.read_text(encoding="utf-8"), str(path))
    diags = "\n".join(f"  {d.line}:{d.col}: {d.code} {d.message}" for d in result.diagnostics)
    return result.status, result.output.decode("utf-8"), diags


@pytest.mark.parametrize("stem, case", CASES)
def test_corpus_case_is_equivalent_after_conversion(stem, case, tmp_path):
    status, output, diags = _converted(stem)
    assert status in ("converted", "partial"), f"conversion {status}:\n{diags}"
    converted = tmp_path / f"{stem}_jax.py"
    converted.write_text(output, encoding="utf-8")
    spec = parse_spec_file(CORPUS / f"{stem}.toml")[case]
    original = load_module_from_path(CORPUS / f"{stem}.py", stem)
    try:
        flax_module = load_module_from_path(converted, f"{stem}_jax")
    except Exception as exc:  # noqa: BLE001
        pytest.fail(f"converted file does not import: {type(exc).__name__}: {exc}\n"
                    f"diagnostics:\n{diags}")
    flax_cls = getattr(flax_module, spec.cls, None)
    assert flax_cls is not None, f"class {spec.cls} missing from the converted file"
    result = compare_module(getattr(original, spec.cls), flax_cls, spec, seed=0, name=case)
    assert result.status == "pass", f"{result}\ndiagnostics:\n{diags}"
