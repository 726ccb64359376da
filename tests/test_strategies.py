"""hypothesis strategies from specs, and the property-based comparison (in process, with the
hand-written flax counterparts of test_harness.py)."""
from __future__ import annotations

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import seed as hseed

from transpiler.validate.harness import _Run, load_module_from_path
from transpiler.validate.spec import parse_module_spec, parse_spec_file
from transpiler.validate.strategies import (SMALL_ARRAY, Example, counterexample_text, dim_buckets, dim_combos,
                                            example_strategy, hypothesis_compare)

from tests.test_harness import (CORPUS, FlaxMLP, FlaxMLPStopGrad, FlaxMLPWrongActivation,
                                hand_transfer)


def test_dim_buckets():
    assert dim_buckets(3, 3) == [3]
    assert dim_buckets(2, 4) == [2, 4]
    assert dim_buckets(1, 8) == [1, 4, 8]
    assert dim_buckets(1, 32) == [1, 16, 32]
    assert dim_buckets(5, 12) == [5, 8, 12]
    for lo, hi in [(0, 7), (9, 100), (2, 6)]:
        b = dim_buckets(lo, hi)
        assert b == sorted(b) and b[0] == lo and b[-1] == hi and len(b) <= 3


def test_dim_combos_bound_the_number_of_shapes():
    two = parse_module_spec("M", {"inputs": ["float32[B, T]"], "dims": {"B": [1, 2], "T": [3, 4]}})
    assert dim_combos(two) == [{"B": 1, "T": 3}, {"B": 1, "T": 4}, {"B": 2, "T": 3}, {"B": 2, "T": 4}]
    gpt = parse_module_spec("M", {"inputs": ["int64[B, T]"], "dims": {"B": [1, 4], "T": [1, 32]}})
    assert dim_combos(gpt) == [{"B": 1, "T": 1}, {"B": 4, "T": 32}, {"B": 4, "T": 1}, {"B": 1, "T": 32}]
    one = parse_module_spec("M", {"inputs": ["float32[B]"], "dims": {"B": [1, 8]}})
    assert dim_combos(one) == [{"B": 1}, {"B": 4}, {"B": 8}]


SPEC = parse_module_spec("M", {
    "inputs": ["float32[B, 3] range(-0.5, 0.5)", "int64[B, T] range(2, 5)",
               ["bool[T]", "float16[2]"], {"value": "literal"}, "float32[B, 40]"],
    "kwargs": {"h": "bfloat16[T]", "fixed": {"value": [[1, 2]], "dtype": "int32"}},
    "dims": {"B": [1, 8], "T": [2, 3]},
})


def test_examples_follow_the_spec():
    seen_b = set()

    @settings(max_examples=40, deadline=None, database=None)
    @hseed(0)
    @given(example_strategy(SPEC))
    def check(ex: Example):
        b, t = ex.dims["B"], ex.dims["T"]
        seen_b.add(b)
        assert (b, t) in [(1, 2), (8, 3), (8, 2), (1, 3)]
        x, idx, (mask, half), lit, big = ex.args
        assert x.shape == (b, 3) and x.dtype == np.float32
        assert np.isfinite(x).all() and (x >= -0.5).all() and (x < 0.5).all()
        assert idx.shape == (b, t) and idx.dtype == np.int64 and idx.min() >= 2 and idx.max() < 5
        assert mask.dtype == bool and mask.shape == (t,)
        assert half.dtype == np.float16 and np.isfinite(half).all() and (np.abs(half) <= 2).all()
        assert lit == "literal"
        # large arrays are filled from a drawn seed: varied values, not a constant fill
        assert big.shape == (b, 40) and (b * 40 <= SMALL_ARRAY or np.unique(big).size > 10)
        assert ex.kwargs["h"].dtype.name == "bfloat16" and ex.kwargs["h"].shape == (t,)
        assert ex.kwargs["fixed"].tolist() == [[1, 2]]
    check()
    assert seen_b == {1, 8}


def test_examples_are_deterministic_under_a_seed():
    def draw(s):
        out = []

        @settings(max_examples=10, deadline=None, database=None)
        @hseed(s)
        @given(example_strategy(SPEC))
        def collect(ex):
            out.append(ex.fingerprint())
        collect()
        return out
    assert draw(3) == draw(3)
    assert draw(3) != draw(4)


@pytest.fixture(scope="module")
def mlp():
    return load_module_from_path(CORPUS / "mlp.py").MLP


MLP_SPEC = parse_spec_file(CORPUS / "mlp.toml")["MLP"]


def test_hypothesis_compare_passes_and_aggregates(mlp):
    r = hypothesis_compare(mlp, FlaxMLP, MLP_SPEC, examples=6, transfer=hand_transfer)
    assert r.status == "pass", str(r)
    assert r.examples >= 4 and r.counterexample is None
    names = [c.name for c in r.checks]
    assert len(names) == len(set(names)) and "forward:out" in names and "grad:params/fc1/kernel" in names


def test_failure_is_shrunk_to_the_smallest_input(mlp):
    r = hypothesis_compare(mlp, FlaxMLPWrongActivation, MLP_SPEC, examples=8, transfer=hand_transfer)
    assert r.status == "fail"
    ce = r.counterexample
    assert ce["dims"] == {"B": 1}                       # the smallest batch
    assert ce["args"][0]["shape"] == [1, 16] and len(ce["args"][0]["values"]) == 6
    assert "counterexample: B=1; arg0=float32[1, 16]" in r.message
    assert counterexample_text(ce).startswith("B=1; arg0=float32[1, 16] [")
    # deterministic: the same seed gives the same verdict and counterexample
    again = hypothesis_compare(mlp, FlaxMLPWrongActivation, MLP_SPEC, examples=8, transfer=hand_transfer)
    assert again.counterexample == ce


def test_gradient_only_bug_fails_with_counterexample(mlp):
    r = hypothesis_compare(mlp, FlaxMLPStopGrad, MLP_SPEC, examples=4, transfer=hand_transfer)
    assert r.status == "fail" and r.counterexample is not None
    assert all(not c.name.startswith("forward") for c in r.failures)


def test_an_error_is_reported_not_shrunk(mlp):
    class Broken(FlaxMLP):
        def __call__(self, x, train: bool = False):
            raise RuntimeError("boom")
    r = hypothesis_compare(mlp, Broken, MLP_SPEC, examples=5, transfer=hand_transfer)
    assert r.status == "error" and "boom" in r.message and "counterexample:" in r.message


def test_compiled_program_is_reused_across_examples_of_the_same_shape(mlp):
    run = _Run(mlp, FlaxMLP, MLP_SPEC, 0, "MLP", None, hand_transfer, None, None, True)
    rng = np.random.default_rng(0)
    for b in (2, 3, 2, 3, 2, 3):
        x = rng.uniform(-2, 2, (b, 16)).astype(np.float32)
        checks = run.run_example({"B": b}, (x,), {}, np.random.default_rng(1))
        assert all(c.status == "pass" for c in checks)
    (fn,) = run._jitted.values()
    assert fn._cache_size() == 2           # one compilation per input shape, not per example
