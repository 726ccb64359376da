"""hypothesis strategies built from validation specs, and the property-based comparison.

``example_strategy(spec)`` draws one ``Example`` (symbolic dims, positional args, kwargs):

* each symbolic dim is drawn from a few *buckets* of its ``[lo, hi]`` range (``lo``, ``hi``
  and a power of two between them, see ``dim_buckets``; with several dims, at most 4
  combinations or lowest/highest/one-dim-high, see ``dim_combos``), so 25 examples need only
  a handful of input shapes and the jitted flax program (cached per shape by the harness) is
  compiled a handful of times; shrinking moves the dims to the smallest combination;
* arrays of at most ``SMALL_ARRAY`` elements are drawn element by element (finite values in
  the spec range; integers in ``[lo, hi)``; bools), so hypothesis shrinks their values too;
  larger arrays are filled from a numpy generator whose seed hypothesis draws (values
  uniform in the range, like the single-example engine);
* tuples (nested lists in the spec), literals and kwargs are kept as the spec says.

``hypothesis_compare`` runs the harness (``harness._Run.run_example``, the single-example
engine) on every drawn example, lets hypothesis shrink a failure to the smallest failing input
and reports it as the counterexample. It is deterministic for a given ``seed``
(``hypothesis.seed``, no example database). Health checks that only say "this is slow" or
"this draws much data" are suppressed: every example runs two frameworks (and compiles on a
new shape), and arrays are data by nature; ``deadline=None`` for the same reason.
"""
from __future__ import annotations

import hashlib
import math
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from .spec import ArraySpec, Literal, ModuleSpec, SpecError, as_module_spec

SMALL_ARRAY = 64          # arrays up to this many elements are drawn element by element
DEFAULT_EXAMPLES = 25
SHRINK_BUDGET_S = 60.0    # stop shrinking (keep the smallest failure so far) after this long


@dataclass
class Example:
    dims: dict[str, int]
    args: tuple
    kwargs: dict[str, Any] = field(default_factory=dict)

    def fingerprint(self) -> str:
        h = hashlib.sha1()

        def feed(v):
            if isinstance(v, np.ndarray):
                h.update(f"{v.dtype}{v.shape}".encode())
                h.update(np.ascontiguousarray(v).tobytes())
            elif isinstance(v, tuple):
                h.update(b"(")
                for x in v:
                    feed(x)
                h.update(b")")
            else:
                h.update(repr(v).encode())
        h.update(repr(sorted(self.dims.items())).encode())
        feed(self.args)
        for k in sorted(self.kwargs):
            h.update(k.encode())
            feed(self.kwargs[k])
        return h.hexdigest()


def dim_buckets(lo: int, hi: int) -> list[int]:
    """A few values of ``[lo, hi]``: ``lo``, ``hi`` and, for ranges wider than 4, the largest
    power of two strictly between them (or the midpoint), ascending (hypothesis shrinks
    towards the first). Each distinct shape costs one compilation of the flax program."""
    values = {lo, hi}
    if hi - lo > 4:
        p = 1 << int(math.floor(math.log2(max(hi - 1, 1))))
        values.add(p if lo < p < hi else (lo + hi) // 2)
    return sorted(values)


def dim_combos(spec: ModuleSpec) -> list[dict[str, int]]:
    """The dims an example may take, smallest first. One symbolic dim: its buckets. Several:
    every combination of buckets if there are at most 4, else all-lowest, all-highest and
    each dim alone at its highest (each distinct combination is one compilation)."""
    import itertools
    names = list(spec.dims)
    buckets = [dim_buckets(*spec.dims[d]) for d in names]
    product = [dict(zip(names, vals)) for vals in itertools.product(*buckets)]
    if len(product) <= 4:
        return product
    lo = {d: spec.dims[d][0] for d in names}
    hi = {d: spec.dims[d][1] for d in names}
    out = [lo, hi] + [{**lo, d: hi[d]} for d in names]
    unique = []
    for c in out:
        if c not in unique:
            unique.append(c)
    return unique


def _float_bounds(a: ArraySpec) -> tuple[float, float]:
    lo, hi = a.bounds()
    return float(lo), float(hi)


def _numpy_fill(a: ArraySpec, shape: tuple[int, ...], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    lo, hi = a.bounds()
    if a.is_float:
        return rng.uniform(lo, hi, size=shape).astype(a.numpy_dtype())
    if a.is_int:
        return rng.integers(int(lo), int(hi), size=shape).astype(a.dtype)
    return rng.integers(0, 2, size=shape).astype(bool)


def array_strategy(a: ArraySpec, dims: dict[str, int]):
    """Strategy for one array of the spec with the given dims."""
    from hypothesis import strategies as st
    from hypothesis.extra import numpy as hnp

    shape = a.shape_for(dims)
    size = math.prod(shape)
    if size > SMALL_ARRAY:
        return st.integers(0, 2**32 - 1).map(lambda s: _numpy_fill(a, shape, s))
    if a.is_float:
        lo, hi = _float_bounds(a)
        elements = st.floats(lo, hi, exclude_max=True, allow_nan=False, allow_infinity=False)
        store = np.float64
    elif a.is_int:
        lo, hi = a.bounds()
        elements = st.integers(int(lo), int(hi) - 1)
        store = np.int64
    else:
        elements = st.booleans()
        store = np.bool_
    dtype = a.numpy_dtype()

    def cast(x: np.ndarray) -> np.ndarray:
        if a.is_float:
            lo_, hi_ = _float_bounds(a)
            y = x.astype(dtype)
            # rounding to a narrow float type must not reach the excluded upper bound
            below = np.nextafter(np.asarray(hi_, dtype), np.asarray(lo_, dtype))
            return np.minimum(y, below).astype(dtype)
        return x.astype(dtype)
    return hnp.arrays(store, shape, elements=elements, fill=st.nothing()).map(cast)


def value_strategy(s, dims: dict[str, int]):
    from hypothesis import strategies as st
    if isinstance(s, ArraySpec):
        return array_strategy(s, dims)
    if isinstance(s, Literal):
        arr = s.array()
        return st.just(s.value if arr is None else arr)
    return st.tuples(*(value_strategy(x, dims) for x in s))


def example_strategy(spec: ModuleSpec | dict, fixed_dims: dict[str, int] | None = None):
    """Strategy of ``Example`` for a spec (dims from buckets unless ``fixed_dims``)."""
    from hypothesis import strategies as st
    spec = as_module_spec(spec)
    combos = dim_combos(spec)

    @st.composite
    def draw_example(draw):
        dims = dict(fixed_dims) if fixed_dims else dict(draw(st.sampled_from(combos)))
        args = tuple(draw(value_strategy(s, dims)) for s in spec.inputs)
        kwargs = {k: draw(value_strategy(s, dims)) for k, s in spec.kwargs.items()}
        return Example(dims, args, kwargs)
    return draw_example()


# --- describing a counterexample ---------------------------------------------------------------

def describe_value(v, max_values: int = 6):
    if isinstance(v, np.ndarray):
        flat = v.reshape(-1)
        shown = [x.item() if hasattr(x, "item") else x for x in flat[:max_values]]
        shown = [round(x, 6) if isinstance(x, float) else x for x in shown]
        out = {"dtype": str(v.dtype), "shape": list(v.shape), "values": shown}
        if v.size and v.dtype.kind in "fiu":
            out["min"] = round(float(np.min(v.astype(np.float64))), 6)
            out["max"] = round(float(np.max(v.astype(np.float64))), 6)
        return out
    if isinstance(v, tuple):
        return [describe_value(x, max_values) for x in v]
    return {"value": repr(v)}


def describe_example(ex: Example) -> dict:
    return {"dims": dict(ex.dims), "args": [describe_value(a) for a in ex.args],
            "kwargs": {k: describe_value(v) for k, v in ex.kwargs.items()}}


def counterexample_text(ce: dict) -> str:
    def one(d):
        if isinstance(d, list):
            return "(" + ", ".join(one(x) for x in d) + ")"
        if "shape" in d:
            more = "..." if len(d["values"]) < math.prod(d["shape"]) else ""
            vals = ", ".join(f"{x:.4g}" if isinstance(x, float) else str(x) for x in d["values"])
            return f"{d['dtype']}{d['shape']} [{vals}{more}]"
        return d["value"]
    parts = []
    if ce.get("dims"):
        parts.append(" ".join(f"{k}={v}" for k, v in ce["dims"].items()))
    parts += [f"arg{i}={one(a)}" for i, a in enumerate(ce.get("args", []))]
    parts += [f"{k}={one(v)}" for k, v in ce.get("kwargs", {}).items()]
    return "; ".join(parts)


# --- the property-based comparison ------------------------------------------------------------

class _ExampleFailed(AssertionError):
    pass


class _ExampleError(Exception):
    pass


def hypothesis_compare(torch_cls, flax_cls, spec_table: ModuleSpec | dict, *, seed: int = 0,
                       examples: int = DEFAULT_EXAMPLES, name: str | None = None,
                       transfer: Callable | None = None, rtol: float | None = None,
                       atol: float | None = None, check_grads: bool = True,
                       dims: dict[str, int] | None = None,
                       shrink_budget_s: float = SHRINK_BUDGET_S):
    """``compare_module`` driven by hypothesis: ``examples`` drawn inputs, the failure (if
    any) shrunk to the smallest failing input. Returns a ``ComparisonResult`` whose
    ``counterexample`` describes that input (dims, shapes, a few values)."""
    from hypothesis import HealthCheck, Phase, Verbosity, given, settings
    from hypothesis import seed as hseed

    from .harness import ComparisonResult, _Failed, _Run

    try:
        spec = as_module_spec(spec_table, name or getattr(torch_cls, "__name__", "<module>"))
    except SpecError as exc:
        return ComparisonResult(name or "<module>", "error", message=str(exc))
    name = name or spec.name
    if spec.skip:
        return ComparisonResult(name, "skip", message=spec.skip)
    if not spec.inputs and not spec.kwargs:
        return ComparisonResult(name, "skip", message="no inputs in the spec")
    run = _Run(torch_cls, flax_cls, spec, seed, name, dims, transfer, rtol, atol, check_grads)
    combos = [dict(dims)] if dims else dim_combos(spec)
    if examples >= 3 * len(combos):     # enough examples to draw each combination: compile ahead
        run.precompile_dims = combos
    seen: dict[str, tuple[str, list, str | None]] = {}
    state: dict[str, Any] = {"frozen": False, "first_failure": None, "last": None, "ran": 0,
                             "per_check": {}}

    def evaluate(ex: Example):
        ct_rng = np.random.default_rng([seed, 1])
        try:
            import jax
            with jax.default_matmul_precision("highest"):
                checks = run.run_example(ex.dims, ex.args, ex.kwargs, ct_rng)
        except _Failed:
            return "fail", list(run.current), None
        except Exception as exc:  # noqa: BLE001 - a problem of the code under test
            tb = traceback.format_exc(limit=-4)
            return "error", list(run.current), f"{run.phase}: {type(exc).__name__}: {exc}\n{tb}"
        status = "fail" if any(c.status != "pass" for c in checks) else "pass"
        return status, list(checks), None

    def prop(ex: Example):
        fp = ex.fingerprint()
        if fp in seen:
            outcome = seen[fp]
        elif state["frozen"]:
            return
        else:
            outcome = evaluate(ex)
            seen[fp] = outcome
            state["ran"] += 1
            status, checks, _ = outcome
            if status == "pass":
                for c in checks:
                    prev = state["per_check"].get(c.name)
                    if prev is None or c.max_abs_err > prev.max_abs_err:
                        state["per_check"][c.name] = c
            elif status == "error":
                state["frozen"] = True     # an error is reported as found, not shrunk
            elif state["first_failure"] is None:
                state["first_failure"] = time.monotonic()
            elif time.monotonic() - state["first_failure"] > shrink_budget_s:
                state["frozen"] = True
        status, checks, error = outcome
        if status == "pass":
            return
        state["last"] = (ex, status, checks, error)
        if status == "error":
            raise _ExampleError(error)
        raise _ExampleFailed("; ".join(c.name for c in checks if c.status != "pass"))

    test = settings(
        max_examples=examples, deadline=None, database=None, derandomize=False,
        phases=[Phase.explicit, Phase.generate, Phase.shrink], report_multiple_bugs=False,
        print_blob=False, verbosity=Verbosity.quiet,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                               HealthCheck.large_base_example, HealthCheck.filter_too_much],
    )(hseed(seed)(given(example_strategy(spec, dims))(prop)))
    try:
        test()
    except (_ExampleFailed, _ExampleError):
        pass
    except Exception as exc:  # noqa: BLE001 - hypothesis itself complained (flaky, ...)
        if state["last"] is None:
            return ComparisonResult(name, "error", message=f"hypothesis: {type(exc).__name__}: {exc}",
                                    examples=state["ran"])
    finally:
        run.close()
    notes = "; ".join(run.notes)
    if state["last"] is None:
        checks = sorted(state["per_check"].values(), key=lambda c: c.name)
        if not checks:
            return ComparisonResult(name, "error", message="nothing was compared", examples=state["ran"])
        return ComparisonResult(name, "pass", checks, max(c.max_abs_err for c in checks),
                                max(c.max_rel_err for c in checks), notes, state["ran"])
    ex, status, checks, error = state["last"]
    ce = describe_example(ex)
    text = counterexample_text(ce)
    if status == "error":
        msg = f"{error.rstrip()}\ncounterexample: {text}"
        r = ComparisonResult(name, "error", checks, message=msg, examples=state["ran"])
    else:
        bad = [c for c in checks if c.status != "pass"]
        msg = (f"{len(bad)} check(s) failed: " + "; ".join(f"{c.name}: {c.message}" for c in bad[:5])
               + f" | counterexample: {text}")
        if notes:
            msg += f" | {notes}"
        finite = [c for c in bad if math.isfinite(c.max_abs_err)] or bad
        r = ComparisonResult(name, "fail", checks, max(c.max_abs_err for c in finite),
                             max(c.max_rel_err for c in finite), msg, state["ran"])
    r.counterexample = ce
    return r
