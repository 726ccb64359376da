"""Numerical equivalence of a torch module and its converted flax module.

``compare_module`` builds both modules from the same constructor kwargs, copies the torch
weights into the flax variables (``transpiler.validate.weights.load_torch_state``), draws
inputs from the spec and compares, in eval mode:

* every output leaf (tuples, lists and dicts are walked; integer and bool leaves exactly);
* gradients of ``sum(out * cotangent)`` for a fixed random cotangent, w.r.t. every float
  input and every parameter. Torch's ``.grad`` tensors are put into a copy of the module and
  sent through the same transfer, so they land in the flax parameter layout. When the
  transfer merges torch parameters (the flax tree has fewer parameter elements, e.g. an LSTM
  whose two biases become one) a per-leaf comparison is meaningless; parameter gradients are
  then compared as directional derivatives ``<grad, v>`` for random directions ``v``;
* optionally (``train_forward = true``) the outputs of one training-mode forward pass.

The flax side always runs under ``jax.jit``. Tolerance for a float leaf with reference ``r``:
``|a - r| <= atol * max(1, max|r|) + rtol * |r|`` elementwise (defaults 1e-5 / 1e-5 for
float32, 1e-2 for float16/bfloat16). ``max_rel_err`` is ``max|a - r| / max(1e-12, max|r|)``.

A float check that fails is re-judged against a float64 reference (``noise_check``): the
example's torch pass is repeated on a float64 copy of the module (same inputs, weights and
cotangents, widened), and the check passes when flax is within ``NOISE_MULTIPLE`` (10) times
torch's own float32 error ``max|torch32 - torch64|`` of the float64 value: the quantity is
float32 rounding noise (a gradient whose true value is 0, such as a conv bias feeding
InstanceNorm). Such a check keeps its measured errors and says so in its message; the
float64 pass runs only for examples with a failed check.
"""
from __future__ import annotations

import copy
import functools
import importlib.util
import threading
import inspect
import itertools
import math
import os
import re
import sys
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Mapping

import numpy as np

from .channels_last import to_flax_inputs, to_torch_outputs
from .spec import (ModuleSpec, SpecError, as_module_spec, draw_dims, draw_inputs, draw_value,
                   parse_spec_file)

STATUSES = ("pass", "fail", "error", "skip")

DEFAULT_TOL = {  # dtype of the reference -> (rtol, atol factor)
    "float16": (1e-2, 1e-2),
    "bfloat16": (1e-2, 1e-2),
    "float32": (1e-5, 1e-5),
    "float64": (1e-5, 1e-5),  # jax runs without x64 by default: float32 precision
}


@dataclass
class Check:
    name: str                      # forward:out[0], grad:input[0], grad:params/fc1/kernel, ...
    status: str                    # pass | fail
    max_abs_err: float = 0.0
    max_rel_err: float = 0.0
    message: str = ""

    def to_json(self) -> dict:
        out = asdict(self)
        out["max_abs_err"], out["max_rel_err"] = _finite(self.max_abs_err), _finite(self.max_rel_err)
        return out


@dataclass
class ComparisonResult:
    name: str
    status: str                    # pass | fail | error | skip
    checks: list[Check] = field(default_factory=list)
    max_abs_err: float = 0.0
    max_rel_err: float = 0.0
    message: str = ""
    examples: int = 0
    counterexample: dict | None = None   # the (shrunk) failing input: dims, args, kwargs

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if c.status != "pass"]

    def to_json(self) -> dict:
        return {"name": self.name, "status": self.status,
                "checks": [c.to_json() for c in self.checks], "examples": self.examples,
                "max_abs_err": _finite(self.max_abs_err), "max_rel_err": _finite(self.max_rel_err),
                "message": self.message, "counterexample": self.counterexample}

    def __str__(self) -> str:
        lines = [f"{self.name}: {self.status} (max_abs_err={self.max_abs_err:.3g}, "
                 f"max_rel_err={self.max_rel_err:.3g}) {self.message}".rstrip()]
        lines += [f"  {c.name}: {c.status} abs={c.max_abs_err:.3g} rel={c.max_rel_err:.3g} "
                  f"{c.message}".rstrip() for c in self.failures]
        return "\n".join(lines)


def _finite(x: float):
    """JSON has no inf/nan: they are written as null."""
    return x if isinstance(x, (int, float)) and math.isfinite(x) else None


def summarize(results: list[ComparisonResult]) -> dict:
    """The validation report of DESIGN.md: ``{"modules": [...], "summary": {...}}``."""
    counts = {s: 0 for s in STATUSES}
    for r in results:
        counts[r.status] += 1
    return {"modules": [r.to_json() for r in results], "summary": counts}


# --- loading --------------------------------------------------------------------------------

_counter = itertools.count()


def load_module_from_path(path: str | Path, name: str | None = None) -> ModuleType:
    """Import a Python file by path under a fresh, unique module name (registered in
    ``sys.modules`` so that dataclasses/flax can resolve it)."""
    path = Path(path)
    base = "".join(c if c.isalnum() else "_" for c in (name or path.stem))
    modname = f"_jaxport_validate_{base}_{next(_counter)}"
    spec = importlib.util.spec_from_file_location(modname, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[modname] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(modname, None)
        raise
    return module


def default_transfer() -> Callable:
    from .weights import load_torch_state  # written separately; imported lazily
    return load_torch_state


# --- trees ----------------------------------------------------------------------------------

class _Slot:
    __slots__ = ("i",)

    def __init__(self, i: int):
        self.i = i


def _split_arrays(obj) -> tuple[Any, list[np.ndarray]]:
    """Replace numpy arrays in nested tuples/dicts by slots; returns (skeleton, arrays)."""
    arrays: list[np.ndarray] = []

    def walk(o):
        if isinstance(o, np.ndarray):
            arrays.append(o)
            return _Slot(len(arrays) - 1)
        if isinstance(o, tuple):
            return tuple(walk(x) for x in o)
        if isinstance(o, dict):
            return {k: walk(v) for k, v in o.items()}
        return o
    return walk(obj), arrays


def _fill(skeleton, values):
    if isinstance(skeleton, _Slot):
        return values[skeleton.i]
    if isinstance(skeleton, tuple):
        return tuple(_fill(x, values) for x in skeleton)
    if isinstance(skeleton, dict):
        return {k: _fill(v, values) for k, v in skeleton.items()}
    return skeleton


def _leaves(obj, path: str = "out") -> list[tuple[str, Any]]:
    """Flatten a model output: tuples/lists by index, mappings by key, everything else a leaf."""
    if isinstance(obj, Mapping):
        out = []
        for k in sorted(obj, key=str):
            out += _leaves(obj[k], f"{path}[{k!r}]")
        return out
    if isinstance(obj, (tuple, list)):
        out = []
        for i, x in enumerate(obj):
            out += _leaves(x, f"{path}[{i}]")
        return out
    return [(path, obj)]


def _tree_paths(tree, prefix: str = "") -> dict[str, Any]:
    """``{"fc1/kernel": leaf}`` for a nested mapping of arrays."""
    out: dict[str, Any] = {}
    if isinstance(tree, Mapping):
        for k, v in tree.items():
            out.update(_tree_paths(v, f"{prefix}/{k}" if prefix else str(k)))
    else:
        out[prefix] = tree
    return out


def _torch_to_numpy(x) -> Any:
    import torch
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        if x.dtype in (torch.bfloat16, torch.float16):
            return x.float().numpy(), str(x.dtype).replace("torch.", "")
        return x.numpy(), str(x.dtype).replace("torch.", "")
    if x is None:
        return None, None
    a = np.asarray(x)
    return a, a.dtype.name


def _jax_to_numpy(x) -> Any:
    if x is None:
        return None
    a = np.asarray(x)
    if a.dtype.name in ("bfloat16", "float16"):
        a = a.astype(np.float32)
    return a


# --- comparison of one leaf -----------------------------------------------------------------

def _tolerance(ref_dtype: str, rtol: float | None, atol: float | None) -> tuple[float, float]:
    dflt = DEFAULT_TOL.get(ref_dtype, DEFAULT_TOL["float32"])
    return (dflt[0] if rtol is None else rtol), (dflt[1] if atol is None else atol)


def compare_arrays(name: str, got, ref, ref_dtype: str | None, rtol: float | None = None,
                   atol: float | None = None) -> Check:
    """Compare ``got`` (flax) against ``ref`` (torch) with the tolerance rule of this module."""
    if ref is None or got is None:
        ok = ref is None and got is None
        return Check(name, "pass" if ok else "fail",
                     message="" if ok else f"one side is None (torch {ref is None}, flax {got is None})")
    got = np.asarray(got)
    ref = np.asarray(ref)
    if got.shape != ref.shape:
        return Check(name, "fail", float("inf"), float("inf"),
                     f"shape mismatch: flax {got.shape} vs torch {ref.shape}")
    kinds = {ref.dtype.kind, got.dtype.kind}
    if ref.dtype.kind in "biu" or got.dtype.kind in "biu":
        if not kinds <= {"i", "u"} and kinds != {"b"}:
            return Check(name, "fail", float("inf"), float("inf"),
                         f"dtype mismatch: flax {got.dtype} vs torch {ref_dtype or ref.dtype}")
        diff = np.abs(got.astype(np.int64) - ref.astype(np.int64)) if ref.size else np.zeros(0)
        err = float(diff.max()) if diff.size else 0.0
        bad = int((diff != 0).sum())
        return Check(name, "pass" if bad == 0 else "fail", err, err,
                     "" if bad == 0 else f"{bad}/{ref.size} integer elements differ")
    rtol, atol = _tolerance(ref_dtype or ref.dtype.name, rtol, atol)
    ref64 = ref.astype(np.float64)
    got64 = got.astype(np.float64)
    if ref.size == 0:
        return Check(name, "pass")
    nan_ref, nan_got = np.isnan(ref64), np.isnan(got64)
    if (nan_ref != nan_got).any():
        return Check(name, "fail", float("nan"), float("nan"),
                     f"NaN mismatch: torch has {int(nan_ref.sum())}, flax {int(nan_got.sum())}")
    finite = np.isfinite(ref64) & np.isfinite(got64)
    if (~np.isfinite(ref64) != ~np.isfinite(got64)).any() or (
            (~finite & ~nan_ref) & (ref64 != got64)).any():
        return Check(name, "fail", float("inf"), float("inf"), "inf mismatch")
    r, g = ref64[finite], got64[finite]
    diff = np.abs(g - r)
    max_ref = float(np.abs(r).max()) if r.size else 0.0
    max_abs = float(diff.max()) if diff.size else 0.0
    max_rel = max_abs / max(max_ref, 1e-12)
    allowed = atol * max(1.0, max_ref) + rtol * np.abs(r)
    bad = diff > allowed
    if bad.any():
        idx = np.unravel_index(int(np.argmax(diff - allowed)), ref.shape) if ref.shape else ()
        msg = (f"{int(bad.sum())}/{ref.size} elements outside rtol={rtol:g}, "
               f"atol={atol:g}*max(1, {max_ref:.3g}); worst at {tuple(int(i) for i in idx)}: "
               f"flax {got64[idx]:.6g} vs torch {ref64[idx]:.6g}")
        return Check(name, "fail", max_abs, max_rel, msg)
    return Check(name, "pass", max_abs, max_rel)


# --- float32 rounding noise, measured with a float64 torch reference --------------------------

# re-judge failed float32 checks against a float64 torch pass (JAXPORT_FLOAT64_REFERENCE=0: off)
FLOAT64_REFERENCE = os.environ.get("JAXPORT_FLOAT64_REFERENCE", "1") not in ("0", "false", "no")
NOISE_MULTIPLE = 10.0      # k: flax may be k times as far from float64 as torch's float32 is
NOISE_CAP = 1e-3           # torch-vs-float64 differences above this * max(1, max|ref|): no rounding
NOISE_NOTE = "within float32 rounding noise (float64 reference)"


def noise_check(check: Check, got, ref32, ref64, allowed=None, *, ref_dtype: str = "float32",
                rtol: float | None = None, atol: float | None = None, scale: float | None = None,
                noise: float | None = None, multiple: float | None = None) -> Check:
    """Re-judge the failed float32 comparison ``check`` of ``got`` (flax) against ``ref32``
    (torch, float32) with ``ref64``: the same quantity computed by a float64 copy of the torch
    module from the same (float32-valued) inputs, weights and cotangents.

    ``|ref32 - ref64|`` is torch's own float32 rounding error on this quantity; its maximum over
    the array, ``noise``, is the measured noise (a maximum over many elements is a stable
    figure; one element's error is not: torch may round one exactly by chance). The check
    passes when every element has ``|got_i - ref64_i| <= max(allowed_i, k * noise)``,
    ``allowed`` being the usual tolerance with ``ref64`` as the reference (or the caller's) and
    ``k = NOISE_MULTIPLE``. ``noise`` replaces the measured figure where the caller has a
    better one (a directional derivative: the bound ``sum |torch - float64| * |v|``). This widens the tolerance only where torch's own float32 error is
    a sizeable part of it, i.e. where float32 cannot resolve the quantity. A quantity whose true value is ~0 next to the magnitudes that made
    it (the gradient of a bias that feeds a normalisation) is pure rounding noise in float32,
    and two frameworks summing in different orders produce noise of different sizes.

    Not rounding: when torch's float32 value is more than ``NOISE_CAP * max(1, scale)`` from
    its float64 value (``scale`` defaults to ``max|ref64|``), the float64 pass did not reproduce
    the float32 one (randomness, a dtype-dependent branch) and the check keeps failing.
    Returns a new ``Check`` (same name and measured errors; the message tells the float64
    figures either way)."""
    k = NOISE_MULTIPLE if multiple is None else multiple
    g = np.asarray(got, np.float64)
    r32 = np.asarray(ref32, np.float64)
    r64 = np.asarray(ref64, np.float64)

    def verdict(ok: bool, why: str = "") -> Check:
        if not ok:
            return Check(check.name, "fail", check.max_abs_err, check.max_rel_err,
                         f"{check.message}; float64 reference: {why}".strip("; "))
        return Check(check.name, "pass", check.max_abs_err, check.max_rel_err, why)

    if not (g.shape == r32.shape == r64.shape) or r64.size == 0:
        return verdict(False, "unavailable (shapes differ)")
    finite = np.isfinite(g) & np.isfinite(r32) & np.isfinite(r64)
    if not finite.all():
        return verdict(False, "non-finite values")
    if allowed is None:
        rtol, atol = _tolerance(ref_dtype, rtol, atol)
        allowed = atol * max(1.0, float(np.abs(r64).max())) + rtol * np.abs(r64)
    scale = float(np.abs(r64).max()) if scale is None else float(scale)
    torch_err = np.abs(r32 - r64)
    flax_err = np.abs(g - r64)
    figures = (f"max|flax - float64| = {float(flax_err.max()):.3g}, "
               f"max|torch - float64| = {float(torch_err.max()):.3g}")
    if noise is None:
        noise = float(torch_err.max())
    else:
        figures += f", bound on torch's rounding error {float(noise):.3g}"
    cap = NOISE_CAP * max(1.0, scale)
    if max(noise, float(torch_err.max())) > cap:
        return verdict(False, f"{figures}: torch's float32 value is more than {cap:.3g} from its "
                              "float64 value, which is not rounding (the float64 pass differs)")
    bad = flax_err > np.maximum(allowed, k * noise)
    if bad.any():
        return verdict(False, f"{figures}: {int(bad.sum())}/{r64.size} elements beyond "
                              f"{k:g}x torch's rounding error, not float32 noise")
    return verdict(True, f"{NOISE_NOTE}: {figures} (accepted up to {k:g}x torch's rounding "
                         f"error); float32 comparison: {check.message}")


# --- the harness ----------------------------------------------------------------------------

def _accepts(fn, name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def _perturb(module, seed: int) -> None:
    """Make eval-mode checks meaningful: random running stats, and no constant parameters
    (ones/zeros from default or custom init would hide swapped scale/bias or mean/var)."""
    import torch
    gen = torch.Generator().manual_seed(seed + 7919)
    with torch.no_grad():
        for name, buf in module.named_buffers():
            if not buf.is_floating_point():
                continue
            leaf = name.rsplit(".", 1)[-1]
            if leaf == "running_mean":
                buf.copy_(torch.randn(buf.shape, generator=gen) * 0.2)
            elif leaf == "running_var":
                buf.copy_(torch.rand(buf.shape, generator=gen) * 0.5 + 0.75)
        for _, p in module.named_parameters():
            if p.is_floating_point() and p.numel() and bool((p == p.reshape(-1)[0]).all()):
                p.add_((torch.randn(p.shape, generator=gen) * 0.1).to(p.dtype))


def _to_torch(a):
    import torch
    if isinstance(a, np.ndarray):
        if a.dtype.name == "bfloat16":
            return torch.from_numpy(a.astype(np.float32)).to(torch.bfloat16)
        return torch.from_numpy(np.ascontiguousarray(a).copy())
    return a


def _to_jax(a):
    import jax
    import jax.numpy as jnp
    if not jax.config.jax_enable_x64:
        if a.dtype == np.int64:
            a = a.astype(np.int32)
        elif a.dtype == np.float64:
            a = a.astype(np.float32)
    return jnp.asarray(a)


def _is_float(a: np.ndarray) -> bool:
    return a.dtype.kind == "f" or a.dtype.name == "bfloat16"


def _param_size(tree) -> int:
    return sum(int(np.size(v)) for v in _tree_paths(tree).values())


class _Failed(Exception):
    pass


class _StructureMismatch(Exception):
    pass


def compare_module(torch_cls, flax_cls, spec_table: ModuleSpec | dict, seed: int = 0, *,
                   name: str | None = None, dims: dict[str, int] | None = None,
                   transfer: Callable | None = None, rtol: float | None = None,
                   atol: float | None = None, check_grads: bool = True,
                   examples: int | None = None) -> ComparisonResult:
    """Compare ``torch_cls`` and ``flax_cls`` on the case described by ``spec_table``.

    ``spec_table`` is a parsed ``ModuleSpec`` or a raw table (dict). ``dims`` fixes the
    symbolic dims (otherwise drawn from the spec ranges with ``seed``). ``transfer`` defaults
    to ``transpiler.validate.weights.load_torch_state(torch_module, variables) -> variables``.
    ``rtol``/``atol`` override the spec and the dtype defaults. Never raises for problems
    of the modules under test: they become ``status == "error"``.
    """
    try:
        spec = as_module_spec(spec_table, name or getattr(torch_cls, "__name__", "<module>"))
    except SpecError as exc:
        return ComparisonResult(name or "<module>", "error", message=str(exc))
    name = name or spec.name
    if spec.skip:
        return ComparisonResult(name, "skip", message=spec.skip)
    run = _Run(torch_cls, flax_cls, spec, seed, name, dims, transfer, rtol, atol, check_grads)
    n = examples if examples is not None else spec.examples
    try:
        import jax
        with jax.default_matmul_precision("highest"):  # no TF32/bf16 passes on GPU/TPU
            for i in range(n):
                run.example(i)
    except _Failed:
        pass
    except Exception as exc:  # noqa: BLE001 - every problem of the code under test is reported
        tb = traceback.format_exc(limit=-4)
        run.error = f"{run.phase}: {type(exc).__name__}: {exc}\n{tb}"
    return run.result()


class _Run:
    """One comparison: the modules are built on the first example; every example then runs
    torch forward/backward and one cached, jitted flax forward+grad program (jax retraces
    only for new input shapes, so examples of the same shapes reuse the compiled program)."""

    def __init__(self, torch_cls, flax_cls, spec: ModuleSpec, seed, name, dims, transfer,
                 rtol, atol, check_grads):
        self.torch_cls, self.flax_cls, self.spec, self.seed, self.name = torch_cls, flax_cls, spec, seed, name
        self.fixed_dims, self.transfer = dims, transfer
        self.rtol = rtol if rtol is not None else spec.rtol
        self.atol = atol if atol is not None else spec.atol
        self.grad_rtol = rtol if rtol is not None else (spec.grad_rtol if spec.grad_rtol is not None else spec.rtol)
        self.grad_atol = atol if atol is not None else (spec.grad_atol if spec.grad_atol is not None else spec.atol)
        self.check_grads = check_grads and not spec.skip_grad
        self.checks: list[Check] = []
        self.current: list[Check] = []
        self.phase = "setup"
        self.error: str | None = None
        self.examples = 0
        self.torch_module = None
        self.variables = None
        self.train_forward = spec.train_forward
        self.notes: list[str] = []
        self._jitted: dict = {}
        self._shadow = None            # a copy of the torch module for gradient transfers
        self.precompile_dims: list[dict] | None = None   # set by the hypothesis engine
        self._claims: dict = {}        # program signature -> threading.Event (compiled)
        self._claims_lock = threading.Lock()
        self._pool = None
        self.float64_reference = FLOAT64_REFERENCE
        self._pending: list[tuple] = []   # failed float32 checks of this example, to re-judge
        self._noise_names: list[str] = []  # checks that passed as float32 rounding noise
        self._t_param_grads: dict = {}     # torch's float32 parameter gradients of the example
        if spec.skip_grad:
            self.notes.append(f"gradients not compared: {spec.skip_grad}")

    # -- result
    def result(self) -> ComparisonResult:
        errs = [c.max_abs_err for c in self.checks] or [0.0]
        rels = [c.max_rel_err for c in self.checks] or [0.0]
        if self.error is not None:
            status, message = "error", self.error
        elif any(c.status != "pass" for c in self.checks):
            bad = [c for c in self.checks if c.status != "pass"]
            status = "fail"
            message = f"{len(bad)} check(s) failed: " + "; ".join(
                f"{c.name}: {c.message}" for c in bad[:5])
        elif not self.checks:
            status, message = "error", "nothing was compared"
        else:
            status, message = "pass", ""
        if self.notes:
            message = (message + " | " if message else "") + "; ".join(self.notes)
        return ComparisonResult(self.name, status, self.checks, max(errs), max(rels), message,
                                self.examples)

    def add(self, check: Check) -> None:
        self.checks.append(check)
        self.current.append(check)

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def _compare(self, key: tuple, name: str, got, ref, dt, rtol, atol) -> Check:
        """``compare_arrays``, added to the checks; a float failure with finite errors is kept
        (``key`` names the quantity) for the float64 re-judgement of this example."""
        check = compare_arrays(name, got, ref, dt, rtol, atol)
        if (check.status == "fail" and check.message.startswith("shape mismatch")
                and got is not None and ref is not None and np.ndim(got) == 4 and np.ndim(ref) == 4):
            g, r = np.shape(got), np.shape(ref)
            if g == (r[0], r[2], r[3], r[1]):
                check.message += (" (flax's array is torch's channels-last: see the flax class's "
                                  "jaxport_layout['returns'])")
            elif r == (g[0], g[2], g[3], g[1]):
                check.message += " (torch's array is flax's channels-last)"
        self.add(check)
        if (check.status == "fail" and self.float64_reference and math.isfinite(check.max_abs_err)
                and got is not None and ref is not None and _is_float(np.asarray(ref))):
            self._pending.append((key, check, np.asarray(got), np.asarray(ref), dt, rtol, atol))
        return check

    def _accept_noise(self, check: Check, judged: Check) -> None:
        check.status, check.message = judged.status, judged.message
        if judged.status != "pass":
            return
        base = re.sub(r"^(\w+)\[\d+\]", r"\1", check.name)     # without the example tag
        if base not in self._noise_names:
            self._noise_names.append(base)
        text = (f"{len(self._noise_names)} check(s) {NOISE_NOTE}: " + ", ".join(self._noise_names[:6])
                + (", ..." if len(self._noise_names) > 6 else ""))
        self.notes[:] = [n for n in self.notes if NOISE_NOTE not in n] + [text]

    def _rejudge(self, refs: dict) -> None:
        """Re-judge this example's pending failures with the float64 values ``refs[key]``."""
        pending, self._pending = self._pending, []
        for key, check, got, ref32, dt, rtol, atol in pending:
            ref64 = refs.get(key)
            if ref64 is None:
                continue
            if key[0] == "direction":       # (got, ref32; allowed, scale and noise from refs)
                ref64, allowed, scale, noise = ref64
                judged = noise_check(check, got, ref32, ref64, allowed, scale=scale, noise=noise)
            else:
                judged = noise_check(check, got, ref32, ref64, ref_dtype=dt or "float32",
                                     rtol=rtol, atol=atol)
            self._accept_noise(check, judged)

    # -- one example drawn with numpy (the single-example engine)
    def example(self, index: int) -> list[Check]:
        spec = self.spec
        rng = np.random.default_rng([self.seed, index])
        dims = dict(self.fixed_dims) if self.fixed_dims else draw_dims(spec, rng)
        self.phase = "drawing inputs"
        args, kwargs = draw_inputs(spec, rng, dims)
        return self.run_example(dims, args, kwargs, rng, f"[{index}]" if index else "")

    def setup(self, dims, skeleton, jarrays, rng) -> None:
        import jax
        import torch

        spec = self.spec
        self.phase = "constructing the torch module"
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.torch_module = self.torch_cls(**_tuplify(spec.init))
        if spec.perturb:
            _perturb(self.torch_module, self.seed)
        if self.train_forward is None:
            self.train_forward = _wants_train_check(self.torch_module)
        self.phase = "constructing the flax module"
        self.flax_module = self.flax_cls(**_tuplify(spec.init))
        self.phase = "initialising the flax variables"
        key = jax.random.PRNGKey(self.seed)
        names = ["params", "dropout", *spec.rngs]
        rngs = dict(zip(names, jax.random.split(key, len(names))))
        # only shapes are needed: every leaf is overwritten by the transfer
        # (channels-last classes: torch's NCHW images transposed, channels_last.py)
        if spec.method and spec.init_inputs is not None:
            sk, arrs = _split_arrays(tuple(draw_value(x, rng, dims) for x in spec.init_inputs))
            init_args = _fill(sk, [_to_jax(x) for x in arrs])
            init_args, _ = to_flax_inputs(self.flax_cls, None, tuple(init_args), {})
            variables = jax.eval_shape(lambda r: self.flax_module.init(r, *init_args), rngs)
        else:
            a, k = _fill(skeleton, jarrays)
            a, k = to_flax_inputs(self.flax_cls, spec.method, tuple(a), k)
            variables = jax.eval_shape(
                lambda r: self.flax_module.init(r, *a, **k, method=spec.method), rngs)
        variables = _unfreeze(variables)
        self.phase = "transferring weights"
        if self.transfer is None or self.transfer is default_transfer():
            # the default transfer, told the converted class (channels-last Dense rows)
            self._default_transfer = True
            self.transfer = functools.partial(default_transfer(), flax_class=self.flax_cls)
        transfer = self.transfer
        self.variables = _unfreeze(transfer(self.torch_module, variables))
        unfilled = [p for p, v in _tree_paths(self.variables).items()
                    if isinstance(v, jax.ShapeDtypeStruct)]
        if unfilled:
            raise ValueError(f"the transfer left flax leaves unfilled: {unfilled[:5]}")
        if self.precompile_dims:
            self._start_precompile(dims)

    # -- compiled programs: one per argument signature, compiled ahead in a background thread
    @staticmethod
    def _signature(kind, skeleton, float_idx, extra_key, floats, others, cts=None) -> tuple:
        shapes = tuple((tuple(x.shape), str(x.dtype)) for x in (*floats, *others))
        pattern = None if cts is None else tuple(None if c is None else tuple(c.shape) for c in cts)
        return (kind, _skeleton_key(skeleton), tuple(float_idx), tuple(extra_key), shapes, pattern)

    def _program(self, kind, skeleton, float_idx, extra_key, floats, others, cts=None):
        """The jitted program for these arguments; waits if the background thread is
        compiling exactly this one (it is then in jax's caches), else claims it so the
        background thread does not compile it a second time."""
        sig = self._signature(kind, skeleton, float_idx, extra_key, floats, others, cts)
        with self._claims_lock:
            event = self._claims.get(sig)
            if event is None:
                event = threading.Event()
                event.set()
                self._claims[sig] = event
        event.wait()
        return self._jit(kind, skeleton, float_idx, extra_key)

    def _start_precompile(self, current_dims) -> None:
        """Compile, in one background thread, the programs of the other dims the hypothesis
        engine may draw (XLA compiles without the GIL: on a second core this overlaps the
        torch side and the comparisons). Nothing is skipped: a program that was not compiled
        ahead is compiled when first needed, as before."""
        from concurrent.futures import ThreadPoolExecutor
        todo = [d for d in self.precompile_dims if d != current_dims]
        if not todo:
            return
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="jaxport-compile")
        for dims in todo:
            self._pool.submit(self._precompile, dims)

    def _precompile(self, dims) -> None:
        import jax
        import jax.numpy as jnp
        try:
            with jax.default_matmul_precision("highest"):
                rng = np.random.default_rng(0)
                skeleton, arrays = _split_arrays(draw_inputs(self.spec, rng, dims))
                float_idx = [i for i, a in enumerate(arrays) if _is_float(a)]
                jarrays = [_to_jax(a) for a in arrays]
                floats = [jax.ShapeDtypeStruct(jarrays[i].shape, jarrays[i].dtype) for i in float_idx]
                others = [jax.ShapeDtypeStruct(a.shape, a.dtype) for i, a in enumerate(jarrays)
                          if i not in float_idx]
                variables = self.variables
                jobs = []
                if self.check_grads:
                    out = jax.eval_shape(self._jit("forward", skeleton, float_idx), variables, floats, others)
                    cts = [jax.ShapeDtypeStruct(v.shape, jnp.float32)
                           if v is not None and hasattr(v, "dtype") and jnp.issubdtype(v.dtype, jnp.floating)
                           else None for _, v in _leaves(out)]
                    if any(c is not None for c in cts):
                        params = variables.get("params", {})
                        rest = {k: v for k, v in variables.items() if k != "params"}
                        jobs.append(("grad", (), (params, floats, others, cts, rest), cts))
                if not jobs:
                    jobs.append(("forward", (), (variables, floats, others), None))
                if self.train_forward:
                    mutable = tuple(c for c in variables if c != "params")
                    jobs.append(("train", mutable, (variables, floats, others, jax.random.PRNGKey(0)), None))
                for kind, extra, args, cts in jobs:
                    sig = self._signature(kind, skeleton, float_idx, extra, floats, others, cts)
                    with self._claims_lock:
                        if sig in self._claims:
                            continue
                        event = threading.Event()
                        self._claims[sig] = event
                    try:
                        self._jit(kind, skeleton, float_idx, extra).lower(*args).compile()
                    except Exception:  # noqa: BLE001 - the example that needs it reports it
                        pass
                    finally:
                        event.set()
        except Exception:  # noqa: BLE001
            pass

    def close(self) -> None:
        """Stop compiling ahead (a program being compiled finishes in the background)."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def _jit(self, kind: str, skeleton, float_idx, extra_key=()):
        """The jitted flax program of ``kind`` for this argument structure (cached)."""
        import jax
        key = (kind, _skeleton_key(skeleton), tuple(float_idx), extra_key)
        with self._claims_lock:     # one jitted function per key, whichever thread asks first
            fn = self._jitted.get(key)
            if fn is None:
                fn = self._make_jit(kind, skeleton, float_idx, extra_key)
                self._jitted[key] = fn
        return fn

    def _make_jit(self, kind: str, skeleton, float_idx, extra_key=()):
        import jax
        spec, flax_module = self.spec, self.flax_module
        method = spec.method or "__call__"
        takes_train = _accepts(getattr(self.flax_cls, method), "train")

        def merge(floats, others):
            arrs, fi, oi = [], iter(floats), iter(others)
            for i in range(len(floats) + len(others)):
                arrs.append(next(fi) if i in float_idx else next(oi))
            return arrs

        def apply(variables, floats, others):
            a, k = _fill(skeleton, merge(floats, others))
            a, k = to_flax_inputs(self.flax_cls, spec.method, tuple(a), k)
            extra = {"train": False} if takes_train else {}
            return to_torch_outputs(self.flax_cls,
                                    flax_module.apply(variables, *a, **k, **extra, method=spec.method))

        jit = functools.partial(jax.jit, compiler_options=_compiler_options())
        if kind == "forward":
            fn = jit(apply)
        elif kind == "grad":
            def loss_fn(p, floats, others, cts, rest):
                out = apply({**rest, "params": p}, floats, others)
                out_leaves = _leaves(out)
                if len(out_leaves) != len(cts):
                    raise _StructureMismatch
                import jax.numpy as jnp
                total = jnp.zeros((), jnp.float32)
                for (_, v), c in zip(out_leaves, cts):
                    if c is not None:
                        total = total + jnp.sum(jnp.asarray(v).astype(jnp.float32) * c)
                return total, out
            fn = jit(jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True))
        else:  # train
            mutable = list(extra_key)

            def apply_train(variables, floats, others, rng):
                import flax.linen as fnn
                a, k = _fill(skeleton, merge(floats, others))
                a, k = to_flax_inputs(self.flax_cls, spec.method, tuple(a), k)
                extra = {"train": True} if takes_train else {}
                with fnn.intercept_methods(_no_flax_dropout), fnn.intercept_methods(self._plain_batchnorm):
                    out = flax_module.apply(variables, *a, **k, **extra, method=spec.method,
                                            mutable=mutable, rngs={"dropout": rng})
                if mutable:
                    return to_torch_outputs(self.flax_cls, out[0]), out[1]
                return to_torch_outputs(self.flax_cls, out), {}
            fn = jit(apply_train)
        return fn

    def _plain_batchnorm(self, next_fun, args, kwargs, context):
        """flax method interceptor (training-mode program): notes whether the flax module
        has a plain flax ``nn.BatchNorm``, whose running variance is the biased one (files
        converted by older jaxport versions; converted files use ``TorchBatchNorm``)."""
        import flax.linen as fnn
        if type(context.module) is fnn.BatchNorm:
            self._biased_running_var = True
        return next_fun(*args, **kwargs)

    def run_example(self, dims, args, kwargs, rng: np.random.Generator, tag: str = "") -> list[Check]:
        """Compare both modules on one input; returns this example's checks (also kept in
        ``self.checks``). ``rng`` draws the output cotangents (and ``init_inputs``)."""
        import jax
        import jax.numpy as jnp
        import torch

        self.current = []
        self._pending = []
        spec = self.spec
        skeleton, arrays = _split_arrays((args, kwargs))
        float_idx = [i for i, a in enumerate(arrays) if _is_float(a)]
        jarrays = [_to_jax(a) for a in arrays]
        floats_j = [jarrays[i] for i in float_idx]
        others_j = [a for i, a in enumerate(jarrays) if i not in float_idx]

        if self.torch_module is None:
            self.setup(dims, skeleton, jarrays, rng)

        # --- torch: forward (eval mode), then backward of sum(out * cotangent)
        self.phase = "torch forward"
        tm = self.torch_module
        tm.eval()
        targs = [_to_torch(a) for a in arrays]
        leaves_in = {}
        for i in float_idx:
            leaves_in[i] = targs[i].detach().clone().requires_grad_(True)
            targs[i] = leaves_in[i].clone() if self.check_grads else leaves_in[i]
        for p in tm.parameters():
            p.grad = None
        ta, tk = _fill(skeleton, targs)
        with torch.set_grad_enabled(self.check_grads):
            tout = getattr(tm, spec.method)(*ta, **tk) if spec.method else tm(*ta, **tk)
        t_leaves = _leaves(tout)
        cts: list[np.ndarray | None] = []
        loss = None
        for _, tv in t_leaves:
            if isinstance(tv, torch.Tensor) and tv.is_floating_point():
                ct = rng.standard_normal(tuple(tv.shape)).astype(np.float32)
                cts.append(ct)
                if tv.requires_grad:
                    term = (tv.float() * torch.from_numpy(ct)).sum()
                    loss = term if loss is None else loss + term
            else:
                cts.append(None)
        grads = self.check_grads and loss is not None
        if self.check_grads and loss is None:
            self.note("no differentiable output: gradients not compared")
        if grads:
            self.phase = "torch backward"
            loss.backward()

        # --- flax: forward and gradients in one jitted function
        variables = self.variables
        flax_params = variables.get("params", {})
        rest = {k: v for k, v in variables.items() if k != "params"}
        jcts = [None if c is None else jnp.asarray(c) for c in cts]

        fout = g_params = g_inputs = None
        if grads:
            self.phase = "flax forward and gradients (jit)"
            try:
                fn = self._program("grad", skeleton, float_idx, (), floats_j, others_j, jcts)
                (_, fout), (g_params, g_inputs) = fn(flax_params, floats_j, others_j, jcts, rest)
            except Exception:  # noqa: BLE001 - retried below without gradients, for a clear report
                fout = None
        if fout is None:
            self.phase = "flax forward (jit)"
            fn = self._program("forward", skeleton, float_idx, (), floats_j, others_j)
            fout = fn(variables, floats_j, others_j)
        self.phase = "comparing outputs"
        f_leaves = _leaves(fout)
        if [p for p, _ in t_leaves] != [p for p, _ in f_leaves]:
            self.add(Check(f"forward{tag}", "fail", float("inf"), float("inf"),
                           f"output structure differs: torch {[p for p, _ in t_leaves]} vs "
                           f"flax {[p for p, _ in f_leaves]}"))
            raise _Failed
        for (path, tv), (_, fv) in zip(t_leaves, f_leaves):
            ref, dt = _torch_to_numpy(tv)
            self._compare(("out", path), f"forward{tag}:{path}", _jax_to_numpy(fv), ref, dt,
                          self.rtol, self.atol)
        self.examples += 1

        if grads:
            if g_params is None:
                if any(c.status == "fail" and c.message.startswith("shape mismatch") for c in self.current):
                    self.note("gradients not compared: output shapes differ")
                    raise _Failed
                self.phase = "flax gradients (jit)"
                self._jit("grad", skeleton, float_idx)(
                    flax_params, floats_j, others_j, jcts, rest)  # raises the real problem
                raise RuntimeError("flax gradients failed")
            self._grads(tag, leaves_in, float_idx, g_params, g_inputs)
        if self._pending:
            self._float64_eval(skeleton, arrays, float_idx, cts, grads)
        # --- training-mode forward (and updated BatchNorm statistics)
        if self.train_forward:
            self._train_forward(tag, skeleton, arrays, float_idx, floats_j, others_j)
        return self.current

    def _grads(self, tag, leaves_in, float_idx, g_params, g_inputs):
        import torch

        tm = self.torch_module
        variables = self.variables
        flax_params = variables.get("params", {})
        params = dict(tm.named_parameters())
        t_param_grads = {n: (p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p))
                         for n, p in params.items()}
        self._t_param_grads = t_param_grads
        t_input_grads = {i: (leaves_in[i].grad if leaves_in[i].grad is not None
                             else torch.zeros_like(leaves_in[i])) for i in float_idx}

        self.phase = "comparing input gradients"
        for k, i in enumerate(float_idx):
            ref, dt = _torch_to_numpy(t_input_grads[i])
            self._compare(("input_grad", i), f"grad{tag}:input#{i}", _jax_to_numpy(g_inputs[k]),
                          ref, dt, self.grad_rtol, self.grad_atol)

        if not params:
            return
        self.phase = "comparing parameter gradients"
        mode = self.spec.grad_params
        torch_size = sum(p.numel() for p in params.values())
        if mode == "auto":
            mode = "directional" if _param_size(flax_params) < torch_size else "leaves"
        if mode == "leaves":
            mapped = self._params_with_values(t_param_grads)
            fl = _tree_paths(g_params)
            for path in sorted(set(mapped) | set(fl)):
                if path not in fl or path not in mapped:
                    self.add(Check(f"grad{tag}:params/{path}", "fail", float("inf"), float("inf"),
                                   "parameter missing on the " + ("flax" if path not in fl else "torch") + " side"))
                    continue
                ref = _jax_to_numpy(mapped[path])
                self._compare(("param_grad", path), f"grad{tag}:params/{path}",
                              _jax_to_numpy(fl[path]), ref, "float32", self.grad_rtol, self.grad_atol)
        else:
            self.note("parameter gradients compared as directional derivatives")
            gen = torch.Generator().manual_seed(self.seed * 1000 + self.examples)
            fl = _tree_paths(g_params)
            for k in range(3):
                v = {n: torch.randn(p.shape, generator=gen).to(p.dtype) for n, p in params.items()}
                ref = sum(float((t_param_grads[n].double() * v[n].double()).sum()) for n in params)
                scale = sum(float((t_param_grads[n].double() * v[n].double()).abs().sum()) for n in params)
                tv = self._params_with_values(v)
                if set(tv) != set(fl):
                    self.add(Check(f"grad{tag}:params(direction {k})", "fail", float("inf"), float("inf"),
                                   f"parameter trees differ: {sorted(set(tv) ^ set(fl))}"))
                    return
                got = sum(float(np.sum(np.asarray(fl[p], np.float64) * np.asarray(tv[p], np.float64)))
                          for p in fl)
                atol = (self.grad_atol if self.grad_atol is not None else 1e-5)
                rtol = (self.grad_rtol if self.grad_rtol is not None else 1e-5)
                # a dot product accumulates error like the sum of |terms|
                err = abs(got - ref)
                ok = err <= atol * max(1.0, scale) + rtol * abs(ref)
                check = Check(f"grad{tag}:params(direction {k})", "pass" if ok else "fail", err,
                              err / max(abs(ref), 1e-12),
                              "" if ok else f"<grad, v>: flax {got:.6g} vs torch {ref:.6g}")
                self.add(check)
                if not ok and self.float64_reference and math.isfinite(err):
                    self._pending.append((("direction", k), check, got, ref, v, rtol, atol))

    def _numpy_state(self, module, keep_float64: bool = False) -> dict[str, np.ndarray]:
        """``{"params/fc1/kernel": array, "batch_stats/...": ...}``: ``module``'s state sent
        through the transfer, as numpy arrays (no device arrays are built when the transfer is
        the default one, which then keeps float64 values with ``keep_float64``; another
        transfer casts them to the flax dtypes, a rounding far below the noise it measures)."""
        if getattr(self, "_default_transfer", False):
            try:
                return _numpy_default_transfer(module, self.variables, keep_float64, self.flax_cls)
            except AttributeError:   # weights' internals changed: the public path below
                pass
        tree = _unfreeze(self.transfer(module, self.variables))
        return {k: _jax_to_numpy(v) for k, v in _tree_paths(tree).items()}

    # -- the float64 reference: only for the checks of an example that failed in float32
    def _torch64(self):
        """A float64 copy of the torch module in its current state (eval mode)."""
        m = copy.deepcopy(self.torch_module).double()
        for p in m.parameters():
            p.grad = None
        return m.eval()

    def _float64_eval(self, skeleton, arrays, float_idx, cts, grads) -> None:
        """Recompute this example's eval-mode outputs and gradients with a float64 copy of the
        torch module (float inputs and cotangents widened: the same values) and re-judge the
        failed checks with ``noise_check``."""
        import torch
        self.phase = "float64 reference (torch)"
        try:
            with torch.random.fork_rng(devices=[]), _default_dtype(torch.float64):
                tm = self._torch64()
                targs = [_to_torch(a) for a in arrays]
                leaves_in = {}
                for i in float_idx:
                    leaves_in[i] = targs[i].detach().double().requires_grad_(grads)
                    targs[i] = leaves_in[i].clone() if grads else leaves_in[i]
                ta, tk = _fill(skeleton, targs)
                with torch.set_grad_enabled(grads):
                    tout = getattr(tm, self.spec.method)(*ta, **tk) if self.spec.method else tm(*ta, **tk)
                t_leaves = _leaves(tout)
                refs: dict = {("out", path): _torch_to_numpy(tv)[0] for path, tv in t_leaves}
                loss = None
                for (_, tv), ct in zip(t_leaves, cts):
                    if ct is not None and isinstance(tv, torch.Tensor) and tv.requires_grad:
                        term = (tv.double() * torch.from_numpy(ct).double()).sum()
                        loss = term if loss is None else loss + term
                if grads and loss is not None:
                    loss.backward()
                    for i, leaf in leaves_in.items():
                        g = leaf.grad if leaf.grad is not None else torch.zeros_like(leaf)
                        refs[("input_grad", i)] = g.numpy()
                    pgrads = {n: (p.grad.detach() if p.grad is not None else torch.zeros_like(p))
                              for n, p in tm.named_parameters()}
                    if any(key[0] == "param_grad" for key, *_ in self._pending):
                        state = self._numpy_state(self._with_values(tm, pgrads), keep_float64=True)
                        refs.update({("param_grad", k[len("params/"):]): v for k, v in state.items()
                                     if k.startswith("params/")})
                    for key, _, _, _, v, rtol, atol in self._pending:
                        if key[0] != "direction":
                            continue
                        # one sum's error is a poor sample of the noise (torch may be exact by
                        # chance): bound it with torch's measured per-element gradient errors
                        g32 = self._t_param_grads
                        ref = sum(float((pgrads[n] * v[n].double()).sum()) for n in pgrads)
                        scale = sum(float((pgrads[n] * v[n].double()).abs().sum()) for n in pgrads)
                        noise = sum(float(((g32[n].double() - pgrads[n]).abs() * v[n].double().abs()).sum())
                                    for n in pgrads)
                        refs[key] = (ref, atol * max(1.0, scale) + rtol * abs(ref), scale, noise)
        except Exception as exc:  # noqa: BLE001 - the float32 verdicts stand
            self._pending = []
            self.note(f"float64 reference unavailable: {type(exc).__name__}: {exc}")
            return
        self._rejudge(refs)

    @staticmethod
    def _with_values(module, values: dict):
        """``module`` (a float64 copy, modified in place) with its parameters set to ``values``."""
        import torch
        with torch.no_grad():
            for n, p in module.named_parameters():
                p.copy_(values[n])
        return module

    def _params_with_values(self, values: dict) -> dict[str, np.ndarray]:
        """The flax ``params`` (``{"fc1/kernel": array}``) of the torch module with its
        parameters set to ``values``: a copy of the module, made once, is refilled each time
        (tied parameters stay tied)."""
        import torch
        if self._shadow is None:
            self._shadow = copy.deepcopy(self.torch_module)
            for p in self._shadow.parameters():
                p.grad = None
        with torch.no_grad():
            for n, p in self._shadow.named_parameters():
                p.copy_(values[n])
        return {k[len("params/"):]: v for k, v in self._numpy_state(self._shadow).items()
                if k.startswith("params/")}

    def _train_forward(self, tag, skeleton, arrays, float_idx, floats_j, others_j):
        """One training-mode forward pass on both sides (dropout layers switched off on both,
        so the pass is deterministic), then the updated mutable state (BatchNorm statistics,
        expected as torch stores them). Failed checks are re-judged against the same pass of
        a float64 copy of the module."""
        import torch

        self.phase = "torch forward (train mode)"
        tm = self.torch_module
        saved = {n: b.detach().clone() for n, b in tm.named_buffers()}
        self._pending = []
        try:
            self._train_forward_on(tm, tag, skeleton, arrays, float_idx, floats_j, others_j)
        finally:   # the module goes back to its eval-mode state for the next example
            with torch.no_grad():
                for n, b in tm.named_buffers():
                    if n in saved:
                        b.copy_(saved[n])
            tm.eval()
        if self._pending:
            self._float64_train(skeleton, arrays)

    def _torch_train_pass(self, tm, skeleton, arrays, widen: bool = False):
        """torch's training-mode forward (dropout layers off; float inputs widened to float64
        with ``widen``). Returns the output and, per BatchNorm layer, its calls: (biased batch
        variance, elements per channel, running_var before), for :meth:`_expected_state`."""
        import torch
        from torch.nn.modules.batchnorm import _BatchNorm
        from torch.nn.modules.dropout import _DropoutNd

        tm.train()
        for m in tm.modules():
            if isinstance(m, _DropoutNd):
                m.eval()
        bn_calls: dict[str, list] = {}
        hooks = []
        for name, m in tm.named_modules():
            if isinstance(m, _BatchNorm) and m.track_running_stats and m.running_var is not None:
                old_var = m.running_var.detach().clone()

                def hook(mod, inputs, _name=name, _old=old_var):
                    x = inputs[0].detach().double()
                    dims_ = [d for d in range(x.dim()) if d != 1]
                    biased = x.var(dim=dims_, unbiased=False)
                    n = x.numel() // max(x.shape[1], 1)
                    bn_calls.setdefault(_name, []).append((biased, n, _old))
                hooks.append(m.register_forward_pre_hook(hook))
        targs = [_to_torch(a) for a in arrays]
        if widen:
            targs = [t.double() if isinstance(t, torch.Tensor) and t.is_floating_point() else t
                     for t in targs]
        ta, tk = _fill(skeleton, targs)
        try:
            with torch.no_grad():
                tout = getattr(tm, self.spec.method)(*ta, **tk) if self.spec.method else tm(*ta, **tk)
        finally:
            for h in hooks:
                h.remove()
        return tout, bn_calls

    def _expected_state(self, tm, bn_calls, keep_float64: bool = False):
        """torch's state after the training pass as it is (``raw``) and as the flax module
        should hold it (``expected``): the same, unless the flax module has a plain flax
        ``nn.BatchNorm`` (a file converted by an older jaxport), which stores the biased batch
        variance: then each BatchNorm's running_var is torch's update with the biased one."""
        import torch
        raw = self._numpy_state(tm, keep_float64)
        if not getattr(self, "_biased_running_var", False):
            return raw, raw, []
        mods = dict(tm.named_modules())
        biased_note = []
        with torch.no_grad():
            for name, calls in bn_calls.items():
                m = mods[name]
                if len(calls) != 1:
                    self.note(f"BatchNorm {name} ran {len(calls)} times in one pass: its running_var "
                              "is compared as torch stores it (unbiased)")
                    continue
                biased, n, old = calls[0]
                if m.momentum is None:
                    factor = 1.0 / float(m.num_batches_tracked)
                else:
                    factor = float(m.momentum)
                m.running_var.copy_(((1 - factor) * old.double() + factor * biased).to(m.running_var.dtype))
                biased_note.append((name or "<root>", n, factor))
        return self._numpy_state(tm, keep_float64), raw, biased_note

    def _train_forward_on(self, tm, tag, skeleton, arrays, float_idx, floats_j, others_j):
        import jax

        tout, bn_calls = self._torch_train_pass(tm, skeleton, arrays)
        self.phase = "flax forward (train mode, jit)"
        mutable = tuple(c for c in self.variables if c != "params")
        fn = self._program("train", skeleton, float_idx, mutable, floats_j, others_j)
        fout, updates = fn(self.variables, floats_j, others_j, jax.random.PRNGKey(self.seed + 1))
        t_leaves, f_leaves = _leaves(tout), _leaves(fout)
        if [p for p, _ in t_leaves] != [p for p, _ in f_leaves]:
            self.add(Check(f"train_forward{tag}", "fail", float("inf"), float("inf"),
                           "output structure differs"))
            return
        for (path, tv), (_, fv) in zip(t_leaves, f_leaves):
            ref, dt = _torch_to_numpy(tv)
            self._compare(("train_out", path), f"train_forward{tag}:{path}", _jax_to_numpy(fv),
                          ref, dt, self.rtol, self.atol)
        updates = _unfreeze(updates)
        if not updates:
            return
        self.phase = "comparing updated statistics"
        expected, raw, biased_note = self._expected_state(tm, bn_calls)
        got = _tree_paths(updates)
        for path in sorted(got):
            if path not in expected:
                self.add(Check(f"train_stats{tag}:{path}", "fail", float("inf"), float("inf"),
                               "flax updated a variable that has no torch counterpart"))
                continue
            self._compare(("train_stats", path), f"train_stats{tag}:{path}",
                          _jax_to_numpy(got[path]), expected[path], "float32", self.rtol, self.atol)
        if biased_note:
            worst = 0.0
            for path in got:
                if path.endswith("/var") and path in raw:
                    worst = max(worst, float(np.max(np.abs(_jax_to_numpy(got[path]) - raw[path]),
                                                initial=0.0)))
            # one note for the run (the first example's layers, the worst raw difference so far)
            self._bn_worst = max(worst, getattr(self, "_bn_worst", 0.0))
            old = next((n for n in self.notes if n.startswith("BatchNorm running_var:")), None)
            if old is None:
                layers = ", ".join(f"{name} (n={n}, momentum={f:g})" for name, n, f in biased_note[:4])
                self.notes.append(f"BatchNorm running_var: torch stores the unbiased batch variance "
                                  f"(x n/(n-1)), flax's nn.BatchNorm the biased one (jaxport now "
                                  f"converts to TorchBatchNorm, as torch); compared against torch's update "
                                  f"with the biased variance for {layers}; raw difference from torch's "
                                  f"running_var up to {self._bn_worst:.3g}")
            else:
                self.notes[self.notes.index(old)] = (old.rsplit(" up to ", 1)[0]
                                                     + f" up to {self._bn_worst:.3g}")

    def _float64_train(self, skeleton, arrays) -> None:
        """The training-mode pass and updated statistics of a float64 copy of the torch module
        (in its eval-mode state, as the float32 pass started): re-judges the failed checks."""
        import torch
        self.phase = "float64 reference (torch, train mode)"
        try:
            with torch.random.fork_rng(devices=[]), _default_dtype(torch.float64):
                tm = self._torch64()
                tout, bn_calls = self._torch_train_pass(tm, skeleton, arrays, widen=True)
                refs: dict = {("train_out", path): _torch_to_numpy(tv)[0] for path, tv in _leaves(tout)}
                if any(key[0] == "train_stats" for key, *_ in self._pending):
                    expected, _, _ = self._expected_state(tm, bn_calls, keep_float64=True)
                    refs.update({("train_stats", path): v for path, v in expected.items()})
        except Exception as exc:  # noqa: BLE001 - the float32 verdicts stand
            self._pending = []
            self.note(f"float64 reference unavailable: {type(exc).__name__}: {exc}")
            return
        self._rejudge(refs)


class _default_dtype:
    """``torch.set_default_dtype`` for a block (tensors the model makes in ``forward`` follow
    the float64 reference)."""

    def __init__(self, dtype):
        self.dtype = dtype

    def __enter__(self):
        import torch
        self.saved = torch.get_default_dtype()
        torch.set_default_dtype(self.dtype)

    def __exit__(self, *exc):
        import torch
        torch.set_default_dtype(self.saved)


def _no_flax_dropout(next_fun, args, kwargs, context):
    """flax method interceptor: dropout layers are the identity (deterministic train pass)."""
    import flax.linen as fnn
    module = context.module
    if context.method_name == "__call__" and (isinstance(module, fnn.Dropout)
                                              or "Dropout" in type(module).__name__):
        return args[0]
    return next_fun(*args, **kwargs)


def _wants_train_check(torch_module) -> bool:
    """Auto mode of ``train_forward``: on for models with BatchNorm whose training pass is
    deterministic once dropout layers are off (no RNN/attention dropout)."""
    from torch.nn.modules.batchnorm import _BatchNorm
    has_bn = False
    for m in torch_module.modules():
        if isinstance(m, _BatchNorm) and m.track_running_stats:
            has_bn = True
        p = getattr(m, "dropout", None)
        if isinstance(p, float) and p > 0:
            return False
    return has_bn


def _skeleton_key(skeleton):
    if isinstance(skeleton, _Slot):
        return ("slot", skeleton.i)
    if isinstance(skeleton, tuple):
        return ("tuple",) + tuple(_skeleton_key(x) for x in skeleton)
    if isinstance(skeleton, dict):
        return ("dict",) + tuple((k, _skeleton_key(v)) for k, v in skeleton.items())
    return ("lit", repr(skeleton))


def _tuplify(kwargs: dict) -> dict:
    """TOML has arrays, not tuples: pass constructor sequences as (hashable) tuples."""
    def conv(v):
        if isinstance(v, list):
            return tuple(conv(x) for x in v)
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        return v
    return {k: conv(v) for k, v in kwargs.items()}


def _unfreeze(tree):
    try:
        from flax.core import unfreeze
        return unfreeze(tree)
    except Exception:  # noqa: BLE001
        return tree


# XLA options of the compared programs on CPU, fastest first: no LLVM optimisation passes and
# XLA's classic elemental emitters instead of the MLIR fusion emitters (compiling a model's
# forward+gradient program takes 2-4x less time; the programs are small and run a few times
# each). The computation is the same HLO; float semantics are unchanged (XLA CPU enables no
# fast-math). An XLA that does not know an option gets the next set.
_CPU_OPTION_SETS = (
    {"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False},
    {"xla_backend_optimization_level": 0},
    None,
)
_compiler_options_cache: list = []


def _compiler_options() -> dict | None:
    """The first of ``_CPU_OPTION_SETS`` this XLA accepts (on CPU; None elsewhere)."""
    import jax
    if jax.default_backend() != "cpu":
        return None
    if not _compiler_options_cache:
        import jax.numpy as jnp
        chosen = None
        for options in _CPU_OPTION_SETS:
            if options is None:
                break
            try:
                jax.jit(lambda x: jnp.tanh(x) + 1, compiler_options=options).lower(
                    jax.ShapeDtypeStruct((2,), jnp.float32)).compile()
            except Exception:  # noqa: BLE001 - unknown option in this XLA
                continue
            chosen = options
            break
        _compiler_options_cache.append(chosen)
    return _compiler_options_cache[0]


def _numpy_default_transfer(module, variables, keep_float64: bool = False,
                            flax_class=None) -> dict[str, np.ndarray]:
    """``weights.load_torch_state`` without building jax arrays: the same visit and the same
    problems, numpy leaves cast to the flax leaf dtypes (float leaves stay float64 with
    ``keep_float64``: the float64 reference)."""
    from .weights import WeightTransferError, _Transfer
    t = _Transfer(variables, flax_class)
    t.visit(module, (), "", flax_class)
    problems = list(t.problems) + [p for tid, p in t.unplaced if tid not in t.consumed]
    problems += [f"flax leaf {'/'.join(k)} has no torch counterpart" for k in t.leaves if k not in t.filled]
    if problems:
        raise WeightTransferError(problems)
    out = {}
    for key, leaf in t.leaves.items():
        a = np.asarray(t.filled[key])
        dt = np.dtype(getattr(leaf, "dtype", a.dtype))
        if dt.name in ("bfloat16", "float16"):
            dt = np.dtype(np.float32)
        if keep_float64 and dt.kind == "f" and a.dtype == np.float64:
            dt = a.dtype
        out["/".join(key)] = a.astype(dt, copy=False)
    return out


# --- files ----------------------------------------------------------------------------------

def compare_files(original: str | Path, converted: str | Path, spec: str | Path | dict | None = None,
                  modules: list[str] | None = None, seed: int = 0,
                  examples: int | None = None, transfer: Callable | None = None) -> list[ComparisonResult]:
    """Compare every case of a spec (default: ``original`` with suffix ``.toml``)."""
    original, converted = Path(original), Path(converted)
    if spec is None:
        spec = original.with_suffix(".toml")
    cases = spec if isinstance(spec, dict) else parse_spec_file(spec)
    cases = {k: as_module_spec(v, k) for k, v in cases.items()}
    if modules:
        cases = {k: v for k, v in cases.items() if k in modules or v.cls in modules}
    try:
        tmod = load_module_from_path(original, original.stem)
        fmod = load_module_from_path(converted, converted.stem)
    except Exception as exc:  # noqa: BLE001
        return [ComparisonResult(k, "error", message=f"import failed: {type(exc).__name__}: {exc}")
                for k in cases]
    results = []
    for case, ms in cases.items():
        tcls, fcls = getattr(tmod, ms.cls, None), getattr(fmod, ms.cls, None)
        if tcls is None or fcls is None:
            side = "original" if tcls is None else "converted"
            results.append(ComparisonResult(case, "error", message=f"class {ms.cls} not found in the {side} file"))
            continue
        results.append(compare_module(tcls, fcls, ms, seed, name=case, examples=examples,
                                      transfer=transfer))
    return results
