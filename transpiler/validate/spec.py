"""Validation specs: which module classes to compare, how to build them, what to feed them.

A spec file is TOML with one table per case (see DESIGN.md, "Validation spec (TOML)")::

    [TinyGPT]
    init = { vocab_size = 65, block_size = 32 }
    inputs = ["int64[B, T] range(0, 65)"]
    kwargs = { targets = "int64[B, T] range(0, 65)" }
    dims = { B = [1, 4], T = [1, 32] }

Array specs are ``dtype[dim, ...]`` with integer or symbolic dims and an optional
``range(lo, hi)`` (half-open, like Python's ``range``, for integers; ``[lo, hi)`` for floats).
A nested list in ``inputs`` is a tuple argument; ``{ value = ... }`` is a literal passed as is.

Drawing is split in two steps so that a hypothesis strategy can reuse the same pieces:
``draw_dims`` picks a value per symbolic dim, ``ArraySpec.shape_for(dims)`` and
``ArraySpec.bounds()`` describe each array, and ``draw_array``/``draw_inputs`` fill them from a
numpy ``Generator``.
"""
from __future__ import annotations

import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import numpy as np

FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")
INT_DTYPES = ("int32", "int64")
DTYPES = FLOAT_DTYPES + INT_DTYPES + ("bool",)

DEFAULT_FLOAT_RANGE = (-2.0, 2.0)
DEFAULT_INT_RANGE = (0, 10)

# keys a case table may carry; anything else is an error (typos must not pass silently)
KNOWN_KEYS = {
    "class": "name of the module class, when it differs from the table name",
    "init": "constructor keyword arguments",
    "inputs": "positional arguments (array specs; a nested list is a tuple)",
    "kwargs": "keyword arguments (array specs or { value = ... })",
    "dims": "symbolic dim -> [lo, hi] (inclusive) or a fixed int",
    "method": "compare this method instead of forward/__call__",
    "init_inputs": "positional arguments used only to initialise the flax variables",
    "rngs": "extra flax rng stream names to provide at init",
    "rtol": "relative tolerance (default 1e-5 for float32)",
    "atol": "absolute tolerance factor, scaled by max(1, max|reference|)",
    "grad_rtol": "relative tolerance for gradients (default: rtol)",
    "grad_atol": "absolute tolerance factor for gradients (default: atol)",
    "skip": "reason: do not run this case at all",
    "skip_grad": "reason: compare the forward pass only",
    "train_forward": "compare a training-mode forward pass and the updated BatchNorm statistics "
                     "(default: on for models with BatchNorm and no RNN/attention dropout)",
    "perturb": "randomise constant parameters and norm running stats first (default true)",
    "grad_params": "'auto' | 'leaves' | 'directional': how parameter gradients are compared",
    "examples": "how many random examples to draw (default 1)",
    "note": "free text",
}


class SpecError(ValueError):
    """A malformed spec; the message names the file, the table and the field."""

    def __init__(self, message: str, source: str = "<spec>", table: str | None = None,
                 key: str | None = None):
        where = source
        if table is not None:
            where += f": [{table}]"
        if key is not None:
            where += f".{key}"
        super().__init__(f"{where}: {message}")
        self.source, self.table, self.key, self.reason = source, table, key, message


Dim = Union[int, str]


@dataclass(frozen=True)
class ArraySpec:
    dtype: str
    shape: tuple[Dim, ...]
    range: tuple[float, float] | None = None
    text: str = ""

    @property
    def is_float(self) -> bool:
        return self.dtype in FLOAT_DTYPES

    @property
    def is_int(self) -> bool:
        return self.dtype in INT_DTYPES

    @property
    def symbols(self) -> tuple[str, ...]:
        return tuple(d for d in self.shape if isinstance(d, str))

    def shape_for(self, dims: dict[str, int]) -> tuple[int, ...]:
        out = []
        for d in self.shape:
            if isinstance(d, str):
                if d not in dims:
                    raise SpecError(f"dim {d!r} of {self.text or self.dtype!r} has no value")
                out.append(int(dims[d]))
            else:
                out.append(d)
        return tuple(out)

    def bounds(self) -> tuple[float, float]:
        """Value range: [lo, hi) for floats and ints; (0, 2) for bool."""
        if self.range is not None:
            return self.range
        if self.is_float:
            return DEFAULT_FLOAT_RANGE
        if self.is_int:
            return DEFAULT_INT_RANGE
        return (0, 2)

    def numpy_dtype(self) -> np.dtype:
        if self.dtype == "bfloat16":
            import ml_dtypes
            return np.dtype(ml_dtypes.bfloat16)
        return np.dtype(self.dtype)


@dataclass(frozen=True)
class Literal:
    """A non-array argument passed through unchanged (``{ value = ... }``), or, with a
    dtype (``{ value = [[1, 0]], dtype = "bool" }``), a fixed array."""
    value: Any
    dtype: str | None = None

    def array(self) -> np.ndarray | None:
        if self.dtype is None:
            return None
        if self.dtype == "bfloat16":
            import ml_dtypes
            return np.asarray(self.value, dtype=np.float32).astype(ml_dtypes.bfloat16)
        return np.asarray(self.value, dtype=self.dtype)


InputSpec = Union[ArraySpec, Literal, tuple]  # a tuple holds InputSpecs


_ARRAY_RE = re.compile(
    r"^\s*(?P<dtype>[a-z0-9]+)\s*\[(?P<dims>[^\]]*)\]\s*"
    r"(?:range\s*\((?P<range>[^)]*)\))?\s*$")
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_NUMBER_RE = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")


def parse_array_spec(text: str, where: str = "<array spec>") -> ArraySpec:
    """Parse ``"float32[B, 1, 28, 28]"`` / ``"int64[B, T] range(0, 65)"`` / ``"bool[4]"``."""
    if not isinstance(text, str):
        raise SpecError(f"array spec must be a string, got {type(text).__name__}", where)
    m = _ARRAY_RE.match(text)
    if not m:
        raise SpecError(f"bad array spec {text!r}: expected 'dtype[dim, ...]' with an "
                        "optional 'range(lo, hi)'", where)
    dtype = m.group("dtype")
    if dtype not in DTYPES:
        raise SpecError(f"unknown dtype {dtype!r} in {text!r} (known: {', '.join(DTYPES)})", where)
    dims: list[Dim] = []
    body = m.group("dims").strip()
    if body:
        for part in body.split(","):
            part = part.strip()
            if re.fullmatch(r"\d+", part):
                dims.append(int(part))
            elif _NAME_RE.match(part):
                dims.append(part)
            else:
                raise SpecError(f"bad dim {part!r} in {text!r}: expected an integer or a name", where)
    rng = None
    if m.group("range") is not None:
        parts = [p.strip() for p in m.group("range").split(",")]
        if len(parts) != 2 or not all(_NUMBER_RE.match(p) for p in parts):
            raise SpecError(f"bad range in {text!r}: expected range(lo, hi) with two numbers", where)
        lo, hi = (float(p) for p in parts)
        if dtype == "bool":
            raise SpecError(f"range() makes no sense for bool in {text!r}", where)
        if dtype in INT_DTYPES:
            if lo != int(lo) or hi != int(hi):
                raise SpecError(f"integer range must have integer bounds in {text!r}", where)
            lo, hi = int(lo), int(hi)
        if not hi > lo:
            raise SpecError(f"empty range in {text!r}: need lo < hi", where)
        rng = (lo, hi)
    return ArraySpec(dtype, tuple(dims), rng, text.strip())


@dataclass
class ModuleSpec:
    name: str                                   # table name (the case name)
    cls: str                                    # module class to build
    init: dict[str, Any] = field(default_factory=dict)
    inputs: tuple = ()                          # InputSpecs
    kwargs: dict[str, Any] = field(default_factory=dict)
    dims: dict[str, tuple[int, int]] = field(default_factory=dict)
    method: str | None = None
    init_inputs: tuple | None = None
    rngs: tuple[str, ...] = ()
    rtol: float | None = None
    atol: float | None = None
    grad_rtol: float | None = None
    grad_atol: float | None = None
    skip: str | None = None
    skip_grad: str | None = None
    train_forward: bool | None = None          # None: automatic (BatchNorm models)
    perturb: bool = True
    grad_params: str = "auto"
    examples: int = 1
    note: str = ""
    source: str = "<spec>"

    def array_specs(self) -> list[ArraySpec]:
        out: list[ArraySpec] = []

        def walk(s):
            if isinstance(s, ArraySpec):
                out.append(s)
            elif isinstance(s, tuple):
                for x in s:
                    walk(x)
        for s in (*self.inputs, *self.kwargs.values(), *(self.init_inputs or ())):
            walk(s)
        return out

    def symbols(self) -> set[str]:
        return {d for a in self.array_specs() for d in a.symbols}


def _parse_input(value: Any, source: str, table: str, key: str) -> InputSpec:
    if isinstance(value, str):
        return parse_array_spec(value, f"{source}: [{table}].{key}")
    if isinstance(value, list):
        return tuple(_parse_input(v, source, table, f"{key}[{i}]") for i, v in enumerate(value))
    if isinstance(value, dict):
        if "value" not in value or not set(value) <= {"value", "dtype"}:
            raise SpecError("an inline table argument must be { value = ... [, dtype = ...] }",
                            source, table, key)
        dtype = value.get("dtype")
        if dtype is not None and dtype not in DTYPES:
            raise SpecError(f"unknown dtype {dtype!r} (known: {', '.join(DTYPES)})", source, table, key)
        lit = Literal(value["value"], dtype)
        if dtype is not None:
            try:
                lit.array()
            except (TypeError, ValueError) as exc:
                raise SpecError(f"cannot make a {dtype} array of {value['value']!r}: {exc}",
                                source, table, key) from None
        return lit
    if isinstance(value, (bool, int, float)):
        return Literal(value)
    raise SpecError(f"unsupported argument {value!r}", source, table, key)


def _number(table_dict, key, source, table, positive=True) -> float | None:
    if key not in table_dict:
        return None
    v = table_dict[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (positive and v < 0) or math.isnan(v):
        raise SpecError(f"expected a non-negative number, got {v!r}", source, table, key)
    return float(v)


def _reason(table_dict, key, source, table) -> str | None:
    if key not in table_dict:
        return None
    v = table_dict[key]
    if not isinstance(v, str) or not v.strip():
        raise SpecError("expected a non-empty string giving the reason", source, table, key)
    return v


def parse_module_spec(name: str, table: Any, source: str = "<spec>") -> ModuleSpec:
    if not isinstance(table, dict):
        raise SpecError(f"expected a table, got {type(table).__name__}", source, name)
    unknown = sorted(set(table) - set(KNOWN_KEYS))
    if unknown:
        raise SpecError(f"unknown key(s) {', '.join(unknown)} (known: {', '.join(KNOWN_KEYS)})",
                        source, name)
    cls = table.get("class", name)
    if "class" in table and (not isinstance(cls, str) or not _NAME_RE.match(cls)):
        raise SpecError(f"expected a class name, got {cls!r}", source, name, "class")
    init = table.get("init", {})
    if not isinstance(init, dict):
        raise SpecError("expected a table of constructor kwargs", source, name, "init")
    raw_inputs = table.get("inputs", [])
    if not isinstance(raw_inputs, list):
        raise SpecError("expected a list of argument specs", source, name, "inputs")
    inputs = tuple(_parse_input(v, source, name, f"inputs[{i}]") for i, v in enumerate(raw_inputs))
    raw_kwargs = table.get("kwargs", {})
    if not isinstance(raw_kwargs, dict):
        raise SpecError("expected a table of keyword argument specs", source, name, "kwargs")
    kwargs = {k: _parse_input(v, source, name, f"kwargs.{k}") for k, v in raw_kwargs.items()}
    init_inputs = None
    if "init_inputs" in table:
        if not isinstance(table["init_inputs"], list):
            raise SpecError("expected a list of argument specs", source, name, "init_inputs")
        init_inputs = tuple(_parse_input(v, source, name, f"init_inputs[{i}]")
                            for i, v in enumerate(table["init_inputs"]))
    raw_dims = table.get("dims", {})
    if not isinstance(raw_dims, dict):
        raise SpecError("expected a table of dim ranges", source, name, "dims")
    dims: dict[str, tuple[int, int]] = {}
    for d, r in raw_dims.items():
        if isinstance(r, int) and not isinstance(r, bool):
            r = [r, r]
        if (not isinstance(r, list) or len(r) != 2
                or not all(isinstance(x, int) and not isinstance(x, bool) for x in r)):
            raise SpecError(f"expected [lo, hi] integers or an int, got {r!r}", source, name, f"dims.{d}")
        lo, hi = r
        if lo < 0 or hi < lo:
            raise SpecError(f"bad range [{lo}, {hi}]: need 0 <= lo <= hi", source, name, f"dims.{d}")
        dims[d] = (lo, hi)
    method = table.get("method")
    if method is not None and (not isinstance(method, str) or not _NAME_RE.match(method)):
        raise SpecError(f"expected a method name, got {method!r}", source, name, "method")
    rngs = table.get("rngs", [])
    if not isinstance(rngs, list) or not all(isinstance(r, str) for r in rngs):
        raise SpecError("expected a list of rng stream names", source, name, "rngs")
    for flag in ("train_forward", "perturb"):
        if flag in table and not isinstance(table[flag], bool):
            raise SpecError("expected true or false", source, name, flag)
    grad_params = table.get("grad_params", "auto")
    if grad_params not in ("auto", "leaves", "directional"):
        raise SpecError(f"expected 'auto', 'leaves' or 'directional', got {grad_params!r}",
                        source, name, "grad_params")
    examples = table.get("examples", 1)
    if not isinstance(examples, int) or isinstance(examples, bool) or examples < 1:
        raise SpecError(f"expected a positive integer, got {examples!r}", source, name, "examples")
    note = table.get("note", "")
    if not isinstance(note, str):
        raise SpecError("expected a string", source, name, "note")
    spec = ModuleSpec(
        name=name, cls=cls, init=dict(init), inputs=inputs, kwargs=kwargs, dims=dims,
        method=method, init_inputs=init_inputs, rngs=tuple(rngs),
        rtol=_number(table, "rtol", source, name), atol=_number(table, "atol", source, name),
        grad_rtol=_number(table, "grad_rtol", source, name),
        grad_atol=_number(table, "grad_atol", source, name),
        skip=_reason(table, "skip", source, name), skip_grad=_reason(table, "skip_grad", source, name),
        train_forward=table.get("train_forward"), perturb=table.get("perturb", True),
        grad_params=grad_params, examples=examples, note=note, source=source)
    missing = sorted(spec.symbols() - set(dims))
    if missing:
        raise SpecError(f"symbolic dim(s) {', '.join(missing)} used in an array spec but not "
                        "given a range", source, name, "dims")
    return spec


def parse_spec_text(text: str, source: str = "<spec>") -> dict[str, ModuleSpec]:
    """Parse a whole spec file's text into ``{case name: ModuleSpec}`` (file order)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"invalid TOML: {exc}", source) from None
    return {name: parse_module_spec(name, table, source) for name, table in data.items()}


def parse_spec_file(path: str | Path) -> dict[str, ModuleSpec]:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"cannot read spec: {exc}", str(path)) from None
    return parse_spec_text(text, str(path))


def as_module_spec(spec: ModuleSpec | dict, name: str = "<module>", source: str = "<spec>") -> ModuleSpec:
    return spec if isinstance(spec, ModuleSpec) else parse_module_spec(name, spec, source)


# --- drawing -----------------------------------------------------------------------------

def draw_dims(spec: ModuleSpec, rng: np.random.Generator) -> dict[str, int]:
    """One value per symbolic dim, uniform over its inclusive range."""
    return {d: int(rng.integers(lo, hi + 1)) for d, (lo, hi) in spec.dims.items()}


def smallest_dims(spec: ModuleSpec) -> dict[str, int]:
    return {d: lo for d, (lo, _) in spec.dims.items()}


def draw_array(a: ArraySpec, rng: np.random.Generator, dims: dict[str, int]) -> np.ndarray:
    shape = a.shape_for(dims)
    lo, hi = a.bounds()
    if a.is_float:
        x = rng.uniform(lo, hi, size=shape)
        return x.astype(a.numpy_dtype())
    if a.is_int:
        return rng.integers(int(lo), int(hi), size=shape).astype(a.dtype)
    return rng.integers(0, 2, size=shape).astype(bool)


def draw_value(s: InputSpec, rng: np.random.Generator, dims: dict[str, int]):
    if isinstance(s, ArraySpec):
        return draw_array(s, rng, dims)
    if isinstance(s, Literal):
        arr = s.array()
        return s.value if arr is None else arr
    return tuple(draw_value(x, rng, dims) for x in s)


def draw_inputs(spec: ModuleSpec | dict, rng: np.random.Generator,
                dims: dict[str, int] | None = None) -> tuple[tuple, dict]:
    """Draw ``(args, kwargs)`` as numpy arrays (tuples for nested lists, literals as given).

    ``dims`` defaults to a fresh ``draw_dims``; floats are uniform in ``[-2, 2)`` unless a
    range is given, integers uniform in ``[lo, hi)``.
    """
    spec = as_module_spec(spec)
    if dims is None:
        dims = draw_dims(spec, rng)
    args = tuple(draw_value(s, rng, dims) for s in spec.inputs)
    kwargs = {k: draw_value(s, rng, dims) for k, s in spec.kwargs.items()}
    return args, kwargs
