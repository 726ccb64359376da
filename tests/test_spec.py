"""Validation spec parsing and input drawing."""
from __future__ import annotations

from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

from transpiler.validate.spec import (ArraySpec, Literal, ModuleSpec, SpecError, draw_dims,
                                      draw_inputs, parse_array_spec, parse_module_spec,
                                      parse_spec_file, parse_spec_text, smallest_dims)

CORPUS = Path(__file__).resolve().parent.parent / "corpus" / "models"


@pytest.mark.parametrize("text, dtype, shape, rng", [
    ("float32[B, 1, 28, 28]", "float32", ("B", 1, 28, 28), None),
    ("int64[B, T] range(0, 65)", "int64", ("B", "T"), (0, 65)),
    ("  bool[4]  ", "bool", (4,), None),
    ("float16[]", "float16", (), None),
    ("bfloat16[2,3]", "bfloat16", (2, 3), None),
    ("float64[N] range(-0.5, 1e-1)", "float64", ("N",), (-0.5, 0.1)),
    ("int32[x_1, 3]range(-3,3)", "int32", ("x_1", 3), (-3, 3)),
])
def test_parse_array_spec(text, dtype, shape, rng):
    a = parse_array_spec(text)
    assert (a.dtype, a.shape, a.range) == (dtype, shape, rng)


@pytest.mark.parametrize("text, fragment", [
    ("float8[2]", "unknown dtype 'float8'"),
    ("float32(2, 3)", "bad array spec"),
    ("float32[2, -1]", "bad dim '-1'"),
    ("float32[2, B+1]", "bad dim 'B+1'"),
    ("int64[2] range(0)", "bad range"),
    ("int64[2] range(0.5, 3)", "integer bounds"),
    ("float32[2] range(1, 1)", "empty range"),
    ("bool[2] range(0, 2)", "bool"),
    ("float32[2] extra", "bad array spec"),
])
def test_bad_array_specs(text, fragment):
    with pytest.raises(SpecError, match="where") as info:
        parse_array_spec(text, "where")
    assert fragment in str(info.value)


def test_spec_table_and_error_locations():
    text = '''
[TinyGPT]
init = { vocab_size = 65, block_size = 32 }
inputs = ["int64[B, T] range(0, 65)", ["float32[B, 4]", "float32[4]"], { value = 3 }]
kwargs = { targets = "int64[B, T] range(0, 65)", mask = { value = [true, false], dtype = "bool" } }
dims = { B = [1, 4], T = 8 }
rtol = 1e-4
skip_grad = "sampling"

[Other]
class = "TinyGPT"
method = "encode"
'''
    specs = parse_spec_text(text, "gpt.toml")
    assert list(specs) == ["TinyGPT", "Other"]
    s = specs["TinyGPT"]
    assert s.cls == "TinyGPT" and s.init == {"vocab_size": 65, "block_size": 32}
    assert isinstance(s.inputs[0], ArraySpec) and isinstance(s.inputs[1], tuple)
    assert s.inputs[2] == Literal(3)
    assert s.dims == {"B": (1, 4), "T": (8, 8)}
    assert s.rtol == 1e-4 and s.atol is None and s.skip_grad == "sampling"
    assert specs["Other"].cls == "TinyGPT" and specs["Other"].method == "encode"

    bad = text.replace('T = 8', 'T = [8, 2]')
    with pytest.raises(SpecError) as info:
        parse_spec_text(bad, "gpt.toml")
    assert str(info.value).startswith("gpt.toml: [TinyGPT].dims.T: ")


@pytest.mark.parametrize("table, where", [
    ({"inputs": "float32[2]"}, "[M].inputs"),
    ({"inputs": ["float32[N]"]}, "[M].dims"),
    ({"inputs": [["float32[2]", "floaty[2]"]]}, "[M].inputs[0][1]"),
    ({"kwargs": {"x": {"val": 1}}}, "[M].kwargs.x"),
    ({"kwargs": {"x": {"value": [1, 2], "dtype": "int8"}}}, "[M].kwargs.x"),
    ({"init": [1]}, "[M].init"),
    ({"rtol": -1}, "[M].rtol"),
    ({"rtol": "big"}, "[M].rtol"),
    ({"skip": ""}, "[M].skip"),
    ({"train_forward": "yes"}, "[M].train_forward"),
    ({"grad_params": "some"}, "[M].grad_params"),
    ({"examples": 0}, "[M].examples"),
    ({"dims": {"B": [3]}}, "[M].dims.B"),
    ({"method": "not a name"}, "[M].method"),
    ({"inptus": []}, "[M]: unknown key(s) inptus"),
])
def test_bad_tables_name_the_field(table, where):
    with pytest.raises(SpecError) as info:
        parse_module_spec("M", table, "f.toml")
    assert str(info.value).startswith(f"f.toml: {where}")


def test_invalid_toml_and_missing_file(tmp_path):
    with pytest.raises(SpecError, match=r"^x\.toml: invalid TOML"):
        parse_spec_text("[A\n", "x.toml")
    with pytest.raises(SpecError, match="cannot read spec"):
        parse_spec_file(tmp_path / "nope.toml")
    with pytest.raises(SpecError, match=r"\[A\]: expected a table"):
        parse_spec_text("A = 3\n", "x.toml")


def test_draw_inputs_shapes_dtypes_and_ranges():
    spec = parse_module_spec("M", {
        "inputs": ["float32[B, 3]", "int64[B, T] range(5, 9)", ["bool[T]", "bfloat16[2]"],
                   {"value": "literal"}],
        "kwargs": {"h": "float64[T] range(10, 11)", "fixed": {"value": [[1, 2]], "dtype": "int32"}},
        "dims": {"B": [2, 5], "T": [3, 3]},
    })
    rng = np.random.default_rng(0)
    dims = draw_dims(spec, rng)
    assert 2 <= dims["B"] <= 5 and dims["T"] == 3
    args, kwargs = draw_inputs(spec, rng, dims)
    x, idx, (mask, half), lit = args
    assert x.shape == (dims["B"], 3) and x.dtype == np.float32
    assert -2 <= x.min() and x.max() < 2
    assert idx.dtype == np.int64 and idx.min() >= 5 and idx.max() < 9
    assert mask.dtype == bool and mask.shape == (3,)
    assert half.dtype == np.dtype(ml_dtypes.bfloat16)
    assert lit == "literal"
    assert kwargs["h"].dtype == np.float64 and (kwargs["h"] >= 10).all() and (kwargs["h"] < 11).all()
    assert kwargs["fixed"].dtype == np.int32 and kwargs["fixed"].tolist() == [[1, 2]]


def test_draw_is_deterministic_and_covers_the_dim_range():
    spec = parse_module_spec("M", {"inputs": ["int64[B] range(0, 3)"], "dims": {"B": [1, 4]}})
    a = draw_inputs(spec, np.random.default_rng(7))
    b = draw_inputs(spec, np.random.default_rng(7))
    assert np.array_equal(a[0][0], b[0][0])
    seen = {draw_dims(spec, np.random.default_rng(i))["B"] for i in range(60)}
    assert seen == {1, 2, 3, 4}
    assert smallest_dims(spec) == {"B": 1}
    with pytest.raises(SpecError, match="'B'"):
        ArraySpec("float32", ("B",)).shape_for({})


def test_draw_inputs_accepts_raw_tables():
    args, kwargs = draw_inputs({"inputs": ["float32[2]"]}, np.random.default_rng(0))
    assert args[0].shape == (2,) and kwargs == {}


def test_every_corpus_spec_parses():
    files = sorted(CORPUS.glob("*.toml"))
    assert files
    for f in files:
        specs = parse_spec_file(f)
        assert specs, f
        for s in specs.values():
            assert isinstance(s, ModuleSpec) and (s.inputs or s.kwargs), (f, s.name)
