"""``jaxport validate --record "python train.py ..."``: validation specs recorded from a real run.

The user's script runs briefly, under torch, in a child process
(``python -m transpiler.validate.record --original A.py --out EVENTS -- path train.py ARGS``).
Before it starts, the child

* gives ``torch.nn.Module`` an ``__init_subclass__`` that wraps the ``__init__`` of every
  class defined in the ORIGINAL file, so the constructor arguments of each instance are known
  (bound to parameter names; ``*args`` and values a TOML file cannot hold are noted);
* replaces ``torch.nn.Module.__call__`` by a wrapper that, for instances of those classes,
  describes the call (every tensor's dtype and shape, the value range of integer and float
  tensors, literals, nesting of tuples and lists) before running it.

The script then runs as ``python train.py ARGS`` would (``runpy``, ``sys.argv``, the script's
folder first on ``sys.path``, same working directory) until it ends, or until every class
called so far has been recorded ``max_calls`` times (and every instantiated class too, or the
outermost modules were called ``4 * max_calls`` times), or until ``budget`` seconds have
passed. Each call is one JSON line in EVENTS as soon as it is seen, so a script killed by the
parent's hard timeout still leaves what it recorded.

The parent (``record_script``) reads the events; ``recorded_specs`` turns them into spec
tables (``spec_toml`` writes them as TOML, the format of DESIGN.md):

* calls are grouped by class, constructor arguments and call structure (number and kinds of
  arguments, keyword names, dtypes and ranks, literal values); the first group of class ``C``
  is table ``C``, the next ``C_2`` (``class = "C"``), ...;
* a dim whose recorded sizes vary across the calls of a group becomes symbolic with the range
  ``[min, max]`` seen (dims that vary together share one name: ``B`` first seen on axis 0,
  ``T`` on axis 1, else ``D1``, ``D2``...); a dim that never varies keeps its recorded size;
* integer tensors get ``range(min, max + 1)`` of the values seen, float tensors the
  ``range(lo, hi)`` of the values seen (rounded outwards), when finite and not constant;
* ``None`` passed for a parameter whose default is ``None`` is left out (later positional
  arguments are then passed by keyword); any other ``None``, dict or object argument, or a
  constructor argument a spec cannot hold, makes the table a ``skip`` that says why.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

DEFAULT_CALLS = 5
DEFAULT_BUDGET = 60.0
STARTUP_ALLOWANCE = 60.0      # importing torch before the budget's clock starts
SPEC_DTYPES = {"float16", "bfloat16", "float32", "float64", "int32", "int64", "bool"}
NARROW_INTS = {"uint8", "int8", "int16"}     # recorded as int32 (the spec has no narrower ints)
PYTHON_NAMES = ("python", "python3")


class RecordError(Exception):
    """The script could not be recorded; the message says why (shown as is to the user)."""


# ============================================================================ command line

def parse_command(command: str) -> tuple[str, str, list[str]]:
    """``"python train.py --lr 3"`` → ``("path", "train.py", ["--lr", "3"])``;
    ``"python -m pkg.train -x"`` → ``("module", "pkg.train", ["-x"])``; a leading
    ``python``/``python3``/``python3.X`` (or a path to one) may be left out."""
    try:
        words = shlex.split(command)
    except ValueError as exc:
        raise RecordError(f"--record {command!r}: {exc}") from None
    if words:
        head = os.path.basename(words[0])
        if head in PYTHON_NAMES or (head.startswith("python3.") and head[8:].isdigit()):
            words = words[1:]
    while words and words[0].startswith("-") and words[0] != "-m":
        flag = words.pop(0)       # interpreter options: -u, -B, -O, -W arg, -X opt, ...
        if flag in ("-W", "-X") and words:
            words.pop(0)
    if len(words) >= 2 and words[0] == "-m":
        return "module", words[1], words[2:]
    if words and words[0].endswith(".py"):
        return "path", words[0], words[1:]
    raise RecordError(f"--record {command!r}: expected 'python SCRIPT.py [ARGS...]' or "
                      "'python -m MODULE [ARGS...]'")


# ============================================================================ child side

class _Stop(BaseException):
    """Raised inside the script when enough has been recorded (a BaseException, so that the
    script's own ``except Exception`` does not swallow it)."""


def _function_file(cls) -> str | None:
    """The file defining ``cls``: from the code of a function in its own namespace, else its
    module's ``__file__``."""
    for value in vars(cls).values():
        fn = getattr(value, "__func__", value)
        code = getattr(fn, "__code__", None)
        if code is not None:
            return code.co_filename
    mod = sys.modules.get(getattr(cls, "__module__", ""), None)
    return getattr(mod, "__file__", None)


def _same_file(a: str | None, b: str) -> bool:
    if not a:
        return False
    try:
        return os.path.realpath(a) == b
    except (OSError, ValueError):
        return False


def _toml_value(v, depth: int = 0):
    """``(ok, value)``: ``value`` as a TOML-writable Python value (tuples become lists)."""
    if depth > 8:
        return False, None
    if isinstance(v, bool) or isinstance(v, str):
        return True, v
    if isinstance(v, int):
        return (True, v) if -2**63 <= v < 2**63 else (False, None)
    if isinstance(v, float):
        return True, v
    if isinstance(v, (list, tuple)):
        out = []
        for x in v:
            ok, y = _toml_value(x, depth + 1)
            if not ok:
                return False, None
            out.append(y)
        return True, out
    if isinstance(v, dict) and all(isinstance(k, str) for k in v):
        out = {}
        for k, x in v.items():
            ok, y = _toml_value(x, depth + 1)
            if not ok:
                return False, None
            out[k] = y
        return True, out
    return False, None


def _short_repr(v, limit: int = 80) -> str:
    try:
        text = repr(v)
    except Exception:  # noqa: BLE001 - user objects
        text = f"<{type(v).__name__}>"
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def describe_init(init_fn, self, args, kwargs) -> dict:
    """``{"init": {name: value}, "problems": [...]}`` for one constructor call."""
    import inspect
    try:
        sig = inspect.signature(init_fn)
        bound = sig.bind(self, *args, **kwargs)
    except (TypeError, ValueError) as exc:
        return {"init": {}, "problems": [f"its constructor arguments could not be bound ({exc})"]}
    init, problems = {}, []
    params = list(sig.parameters.values())
    for i, (name, value) in enumerate(bound.arguments.items()):
        p = sig.parameters[name]
        if i == 0 and p is params[0]:
            continue        # self
        if p.kind is p.VAR_POSITIONAL:
            if value:
                problems.append(f"it takes *{name} ({len(value)} positional value(s)), which a "
                                "spec's init table cannot give")
            continue
        items = value.items() if p.kind is p.VAR_KEYWORD else [(name, value)]
        for k, v in items:
            if v is None and (p.kind is p.VAR_KEYWORD or p.default is None):
                continue    # the default
            ok, tv = _toml_value(v)
            if ok:
                init[k] = tv
            else:
                problems.append(f"constructor argument {k} = {_short_repr(v)} ({type(v).__name__}) "
                                "cannot be written in a spec")
    return {"init": init, "problems": problems}


def _dtype_name(t) -> str:
    return str(t.dtype).replace("torch.", "")


def describe_value(v, depth: int = 0) -> dict:
    import torch
    if isinstance(v, torch.Tensor):
        d = {"kind": "tensor", "dtype": _dtype_name(v), "shape": [int(s) for s in v.shape]}
        if v.numel() and v.dtype != torch.bool and not v.is_complex():
            try:
                with torch.no_grad():
                    x = v.detach()
                    if x.is_floating_point():
                        x = x[torch.isfinite(x)]
                    if x.numel():
                        d["min"] = float(x.min().item()) if x.is_floating_point() else int(x.min().item())
                        d["max"] = float(x.max().item()) if x.is_floating_point() else int(x.max().item())
            except Exception:  # noqa: BLE001 - exotic tensors (meta, sparse): no range
                pass
        return d
    if v is None:
        return {"kind": "none"}
    if isinstance(v, (bool, int, float, str)):
        ok, tv = _toml_value(v)
        if ok:
            return {"kind": "literal", "value": tv}
    if isinstance(v, (tuple, list)) and depth < 6:
        return {"kind": "tuple", "items": [describe_value(x, depth + 1) for x in v],
                "type": type(v).__name__}
    return {"kind": "other", "type": type(v).__name__, "repr": _short_repr(v, 60)}


def describe_call(forward, args, kwargs) -> dict:
    """``{"args": [...], "kwargs": {...}, "dropped": [...]}``: ``None`` given for a parameter
    whose default is ``None`` is dropped; later positional arguments then go by keyword."""
    import inspect
    try:
        sig = inspect.signature(forward)
        bound = sig.bind(*args, **kwargs)
    except (TypeError, ValueError):
        return {"args": [describe_value(a) for a in args],
                "kwargs": {k: describe_value(v) for k, v in kwargs.items()}, "dropped": []}
    out_args, out_kwargs, dropped = [], {}, []
    positional = True
    for name, value in bound.arguments.items():
        p = sig.parameters[name]
        if p.kind is p.VAR_POSITIONAL:
            if positional:
                out_args += [describe_value(a) for a in value]
            else:
                out_args = None      # cannot be expressed; keep the raw call below
                break
            continue
        if p.kind is p.VAR_KEYWORD:
            out_kwargs.update({k: describe_value(v) for k, v in value.items()})
            continue
        if value is None and p.default is None:
            dropped.append(name)
            if p.kind is not p.KEYWORD_ONLY:
                positional = False
            continue
        if positional and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and name not in kwargs:
            out_args.append(describe_value(value))
        else:
            if p.kind is p.POSITIONAL_ONLY:
                out_args = None
                break
            positional = positional and p.kind is not p.POSITIONAL_OR_KEYWORD
            out_kwargs[name] = describe_value(value)
    if out_args is None:
        return {"args": [describe_value(a) for a in args],
                "kwargs": {k: describe_value(v) for k, v in kwargs.items()}, "dropped": []}
    return {"args": out_args, "kwargs": out_kwargs, "dropped": dropped}


class _Recorder:
    def __init__(self, original: str, names: set[str], out, max_calls: int):
        self.original = os.path.realpath(original)
        self.names = names
        self.out = out
        self.max_calls = max_calls
        self.is_target: dict[type, bool] = {}
        self.inits: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
        self.instantiated: set[str] = set()
        self.calls: dict[str, int] = {}        # class -> recorded calls
        self.seen: dict[str, int] = {}         # class -> all calls
        self.root_calls = 0
        self.depth = 0
        self.stopping = False

    def emit(self, **event) -> None:
        self.out.write(json.dumps(event) + "\n")
        self.out.flush()

    def target(self, cls) -> bool:
        hit = self.is_target.get(cls)
        if hit is None:
            hit = cls.__name__ in self.names and (
                _same_file(_function_file(cls), self.original))
            self.is_target[cls] = hit
        return hit

    def done(self) -> bool:
        called = [c for c, n in self.calls.items()]
        if not called or any(self.calls[c] < self.max_calls for c in called):
            return False
        if all(self.calls.get(c, 0) >= self.max_calls for c in self.instantiated):
            return True
        return self.root_calls >= 4 * self.max_calls

    def install(self) -> None:
        import torch
        import torch.nn as tnn
        rec = self
        original_call = tnn.Module.__call__

        def recording_call(module, *args, **kwargs):
            cls = type(module)
            if rec.stopping or not rec.target(cls):
                return original_call(module, *args, **kwargs)
            name = cls.__name__
            rec.seen[name] = rec.seen.get(name, 0) + 1
            if rec.depth == 0:
                rec.root_calls += 1
            if rec.calls.get(name, 0) < 2 * rec.max_calls:
                try:
                    call = describe_call(module.forward, args, kwargs)
                except Exception as exc:  # noqa: BLE001 - never break the user's script
                    call = {"args": [], "kwargs": {}, "dropped": [],
                            "problem": f"the call could not be described: {type(exc).__name__}: {exc}"}
                init = rec.inits.get(module)
                rec.emit(event="call", cls=name, instance=id(module),
                         init=(init or {}).get("init", {}),
                         init_problems=(init or {}).get("problems",
                                                        ["its constructor was not seen"] if init is None else []),
                         call=call, depth=rec.depth)
                rec.calls[name] = rec.calls.get(name, 0) + 1
            if rec.done():
                rec.stopping = True
                raise _Stop
            rec.depth += 1
            try:
                return original_call(module, *args, **kwargs)
            finally:
                rec.depth -= 1

        tnn.Module.__call__ = recording_call

        def init_subclass(cls, **kw):
            super(tnn.Module, cls).__init_subclass__(**kw)
            if "__init__" in vars(cls) and rec.target(cls):
                rec.wrap_init(cls)
        tnn.Module.__init_subclass__ = classmethod(init_subclass)
        del torch

    def wrap_init(self, cls) -> None:
        import functools
        rec = self
        orig = cls.__init__

        @functools.wraps(orig)
        def init(module, *args, **kwargs):
            outermost = module not in rec.inits
            if outermost:
                try:
                    rec.inits[module] = describe_init(orig, module, args, kwargs)
                except Exception as exc:  # noqa: BLE001
                    rec.inits[module] = {"init": {}, "problems": [f"constructor not understood: {exc}"]}
            orig(module, *args, **kwargs)
            if outermost:
                rec.instantiated.add(type(module).__name__)
        cls.__init__ = init


def _script_frame(tb, script: str | None) -> str:
    """``"train.py, line 12"`` for the innermost frame outside this package."""
    import traceback
    here = str(Path(__file__).resolve().parents[1])
    where = ""
    for frame in traceback.extract_tb(tb):
        fname = frame.filename or ""
        if fname.startswith(here) or "runpy" in os.path.basename(fname):
            continue
        where = f"{os.path.basename(fname)}, line {frame.lineno}"
    return where


def child_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m transpiler.validate.record")
    p.add_argument("--original", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--max-calls", type=int, default=DEFAULT_CALLS)
    p.add_argument("--budget", type=float, default=DEFAULT_BUDGET)
    p.add_argument("--names", required=True, help="comma-separated class names of ORIGINAL")
    p.add_argument("kind", choices=["path", "module"])
    p.add_argument("target")
    p.add_argument("args", nargs=argparse.REMAINDER)
    a = p.parse_args(argv)
    out = open(a.out, "a", encoding="utf-8")
    import torch  # noqa: F401 - imported before the clock starts
    rec = _Recorder(a.original, {n for n in a.names.split(",") if n}, out, a.max_calls)
    rec.install()
    script_args = a.args[1:] if a.args[:1] == ["--"] else a.args

    def on_alarm(signum, frame):
        if not rec.stopping:
            rec.stopping = True
            raise _Stop
    signal.signal(signal.SIGALRM, on_alarm)
    import runpy
    status, message, where = "finished", "", ""
    started = time.monotonic()
    signal.setitimer(signal.ITIMER_REAL, max(a.budget, 0.001))
    try:
        if a.kind == "path":
            script = os.path.abspath(a.target)
            sys.argv = [a.target, *script_args]
            sys.path[0] = os.path.dirname(script)
            runpy.run_path(script, run_name="__main__")
        else:
            sys.argv = [a.target, *script_args]
            sys.path[0] = os.getcwd()
            runpy.run_module(a.target, run_name="__main__", alter_sys=True)
    except _Stop:
        status = "stopped"
    except SystemExit as exc:
        code = exc.code
        if code not in (None, 0):
            status, message = "failed", f"exit status {code}"
    except BaseException as exc:  # noqa: BLE001 - the user's script
        status = "failed"
        text = str(exc).strip().splitlines()
        message = f"{type(exc).__name__}: {text[0][:300] if text else ''}".rstrip(": ")
        where = _script_frame(exc.__traceback__, a.target)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    rec.emit(event="end", status=status, message=message, where=where,
             seconds=round(time.monotonic() - started, 3), seen=rec.seen)
    out.close()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)       # no atexit handlers or lingering threads of the user's script


# ============================================================================ parent side

@dataclass
class Recording:
    command: str
    status: str                       # finished | stopped | failed | timeout
    message: str = ""
    where: str = ""
    calls: list[dict] = field(default_factory=list)
    seen: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    log_tail: str = ""


def _tail(path: Path, lines: int = 8) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.rstrip().splitlines()[-lines:])


def record_script(original: str | Path, command: str, class_names: list[str], *,
                  max_calls: int = DEFAULT_CALLS, budget: float = DEFAULT_BUDGET,
                  python: str | None = None, cwd: str | Path | None = None) -> Recording:
    """Run ``command`` (``python SCRIPT ARGS``) in a child with the recording hooks; returns
    what it recorded. Raises ``RecordError`` when the script is missing, failed before any
    call of ORIGINAL's classes was recorded, or recorded nothing."""
    kind, target, args = parse_command(command)
    base = Path(cwd) if cwd else Path.cwd()
    if kind == "path" and not (base / target).is_file():
        raise RecordError(f"--record: no such script {target}")
    root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    shown = target if kind == "path" else f"-m {target}"
    with tempfile.TemporaryDirectory(prefix="jaxport-record-") as tmp:
        events = Path(tmp) / "events.jsonl"
        log = Path(tmp) / "log.txt"
        events.touch()
        cmd = [python or sys.executable, "-m", "transpiler.validate.record",
               "--original", str(Path(original).resolve()), "--out", str(events),
               "--max-calls", str(max_calls), "--budget", repr(float(budget)),
               "--names", ",".join(class_names), kind, target, "--", *args]
        started = time.monotonic()
        timed_out = False
        with open(log, "wb") as logf:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf,
                                    env=env, cwd=str(base), start_new_session=True)
            try:
                proc.wait(timeout=budget + STARTUP_ALLOWANCE)
            except subprocess.TimeoutExpired:
                timed_out = True
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait()
            finally:
                try:       # DataLoader workers and other children of the script
                    os.killpg(proc.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
        rec = Recording(command, "timeout" if timed_out else "failed",
                        seconds=time.monotonic() - started, log_tail=_tail(log))
        end = None
        for line in events.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                ev = json.loads(line)
            except json.JSONDecodeError:
                continue     # a line cut by a kill
            if ev.get("event") == "call":
                rec.calls.append(ev)
            elif ev.get("event") == "end":
                end = ev
        if end is not None:
            rec.status, rec.message, rec.where = end["status"], end.get("message", ""), end.get("where", "")
            rec.seen = end.get("seen", {})
        elif not timed_out:
            rec.message = f"the recording process ended with exit status {proc.returncode}"
    where = f" ({rec.where})" if rec.where else ""
    if rec.status == "failed" and not rec.calls:
        tail = f"\nlast lines of its output:\n{rec.log_tail}" if rec.log_tail and not rec.where else ""
        raise RecordError(f"--record: the script {shown} failed before any call of a module class "
                          f"of {Path(original).name} was recorded: {rec.message}{where}{tail}")
    if not rec.calls:
        if rec.status == "timeout":
            raise RecordError(f"--record: the script {shown} was killed after {budget + STARTUP_ALLOWANCE:g} s "
                              f"without calling a module class of {Path(original).name}")
        raise RecordError(f"--record: the script {shown} ran ({rec.status}) but called no module class "
                          f"of {Path(original).name} ({', '.join(class_names) or 'none defined'})")
    return rec


# --- records -> spec tables -------------------------------------------------------------------

def _spec_dtype(dtype: str) -> str | None:
    if dtype in SPEC_DTYPES:
        return dtype
    if dtype in NARROW_INTS:
        return "int32"
    return None


def _structure(d: dict):
    """Hashable description of a value without sizes and ranges (the grouping key)."""
    kind = d["kind"]
    if kind == "tensor":
        return ("tensor", d["dtype"], len(d["shape"]))
    if kind == "tuple":
        return ("tuple",) + tuple(_structure(x) for x in d["items"])
    if kind == "literal":
        return ("literal", json.dumps(d["value"], sort_keys=True))
    return (kind, d.get("type", ""))


def _call_key(call: dict):
    return (tuple(_structure(a) for a in call["args"]),
            tuple(sorted((k, _structure(v)) for k, v in call["kwargs"].items())))


@dataclass
class RecordedTable:
    name: str
    cls: str
    init: dict
    inputs: list
    kwargs: dict
    dims: dict[str, list[int]]
    calls: int
    skip: str | None = None
    comments: list[str] = field(default_factory=list)


def _leaves(call: dict) -> list[tuple[str, dict]]:
    """``[(path, tensor description)]`` in a fixed order."""
    out = []

    def walk(d, path):
        if d["kind"] == "tensor":
            out.append((path, d))
        elif d["kind"] == "tuple":
            for i, x in enumerate(d["items"]):
                walk(x, f"{path}[{i}]")
    for i, a in enumerate(call["args"]):
        walk(a, f"arg{i}")
    for k in sorted(call["kwargs"]):
        walk(call["kwargs"][k], k)
    return out


def _round_out(lo: float, hi: float) -> tuple[float, float]:
    scale = max(abs(lo), abs(hi), 1e-30)
    step = 10 ** (math.floor(math.log10(scale)) - 3)
    return math.floor(lo / step) * step, math.ceil(hi / step) * step


def _fmt_num(x: float) -> str:
    text = f"{x:.6g}"
    return text if ("e" in text or "." in text) else text + ".0"


def _table_for(name: str, cls: str, init: dict, calls: list[dict], init_problems: list[str]) -> RecordedTable:
    first = calls[0]["call"]
    table = RecordedTable(name, cls, init, [], {}, {}, len(calls))
    problems = list(init_problems)
    # sizes per (leaf, axis) across the calls; equal sequences share a symbol
    leaves_per_call = [_leaves(c["call"]) for c in calls]
    paths = [p for p, _ in leaves_per_call[0]]
    symbols: dict[tuple, str] = {}
    used: set[str] = set()
    dim_of: dict[tuple[str, int], Any] = {}
    for li, path in enumerate(paths):
        rank = len(leaves_per_call[0][li][1]["shape"])
        for axis in range(rank):
            seq = tuple(lc[li][1]["shape"][axis] for lc in leaves_per_call)
            if len(set(seq)) == 1:
                dim_of[(path, axis)] = seq[0]
                continue
            if seq not in symbols:
                pref = {0: "B", 1: "T"}.get(axis)
                if pref is None or pref in used:
                    k = 1
                    while f"D{k}" in used:
                        k += 1
                    pref = f"D{k}"
                symbols[seq] = pref
                used.add(pref)
                table.dims[pref] = [min(seq), max(seq)]
            dim_of[(path, axis)] = symbols[seq]
    ranges: dict[str, tuple] = {}
    for li, path in enumerate(paths):
        descs = [lc[li][1] for lc in leaves_per_call]
        if not all("min" in d for d in descs):
            continue
        ranges[path] = (min(d["min"] for d in descs), max(d["max"] for d in descs))

    def spec_of(d: dict, path: str):
        kind = d["kind"]
        if kind == "tensor":
            dt = _spec_dtype(d["dtype"])
            if dt is None:
                problems.append(f"{path} is a {d['dtype']} tensor, a dtype the spec does not have")
                return "float32[]"
            if dt != d["dtype"]:
                table.comments.append(f"{path}: recorded {d['dtype']}, drawn as {dt}")
            dims = ", ".join(str(dim_of[(path, ax)]) for ax in range(len(d["shape"])))
            text = f"{dt}[{dims}]"
            rng = ranges.get(path)
            if rng is not None and dt != "bool":
                lo, hi = rng
                if dt.startswith("int"):
                    text += f" range({int(lo)}, {int(hi) + 1})"
                elif math.isfinite(lo) and math.isfinite(hi) and hi > lo:
                    lo, hi = _round_out(lo, hi)
                    text += f" range({_fmt_num(lo)}, {_fmt_num(hi)})"
            return text
        if kind == "tuple":
            return [spec_of(x, f"{path}[{i}]") for i, x in enumerate(d["items"])]
        if kind == "literal":
            return {"value": d["value"]}
        if kind == "none":
            problems.append(f"{path} is None where the parameter's default is not None")
            return {"value": 0}
        problems.append(f"{path} is a {d.get('type', 'value')} ({d.get('repr', '')}), which a spec cannot express")
        return {"value": 0}

    table.inputs = [spec_of(a, f"arg{i}") for i, a in enumerate(first["args"])]
    table.kwargs = {k: spec_of(first["kwargs"][k], k) for k in sorted(first["kwargs"])}
    if first.get("problem"):
        problems.append(first["problem"])
    if first.get("dropped"):
        table.comments.append("left out (None, their default): " + ", ".join(first["dropped"]))
    if not table.inputs and not table.kwargs:
        problems.append("it was called without arguments")
    if problems:
        table.skip = ("recorded, but cannot be validated from the recording: " + "; ".join(dict.fromkeys(problems))
                      + f". Describe {cls} in a spec (--spec) instead")
    shapes = []
    for lc in leaves_per_call:
        shapes.append(" ".join(f"{d['dtype']}{list(d['shape'])}" for _, d in lc))
    distinct = list(dict.fromkeys(shapes))
    table.comments.insert(0, f"{len(calls)} recorded call(s); shapes seen: " + " | ".join(distinct[:4])
                          + (" | ..." if len(distinct) > 4 else ""))
    return table


def recorded_specs(rec: Recording, class_order: list[str] | None = None) -> list[RecordedTable]:
    """Spec tables from a recording, in ``class_order`` (the ORIGINAL's class order)."""
    groups: dict[tuple, list[dict]] = {}
    for ev in rec.calls:
        key = (ev["cls"], json.dumps(ev["init"], sort_keys=True),
               json.dumps(ev["init_problems"]), _call_key(ev["call"]))
        groups.setdefault(key, []).append(ev)
    order = {c: i for i, c in enumerate(class_order or [])}
    keys = sorted(groups, key=lambda k: order.get(k[0], len(order)))   # stable: first seen first
    tables, count = [], {}
    for key in keys:
        cls = key[0]
        count[cls] = count.get(cls, 0) + 1
        name = cls if count[cls] == 1 else f"{cls}_{count[cls]}"
        evs = groups[key]
        tables.append(_table_for(name, cls, evs[0]["init"], evs, evs[0]["init_problems"]))
    return tables


# --- TOML ---------------------------------------------------------------------------------------

def _key(k: str) -> str:
    import re
    return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else json.dumps(k)


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{_key(k)} = {toml_value(x)}" for k, x in v.items()) + " }" if v else "{}"
    raise TypeError(f"cannot write {type(v).__name__} in TOML")


def spec_toml(tables: list[RecordedTable], header: str = "") -> str:
    lines = [f"# {line}" if line else "#" for line in header.splitlines()]
    for t in tables:
        if lines:
            lines.append("")
        lines += [f"# {c}" for c in t.comments]
        lines.append(f"[{_key(t.name)}]")
        if t.name != t.cls:
            lines.append(f"class = {toml_value(t.cls)}")
        if t.skip:
            lines.append(f"skip = {toml_value(t.skip)}")
        if t.init:
            lines.append(f"init = {toml_value(t.init)}")
        lines.append(f"inputs = {toml_value(t.inputs)}")
        if t.kwargs:
            lines.append(f"kwargs = {toml_value(t.kwargs)}")
        if t.dims:
            lines.append(f"dims = {toml_value(t.dims)}")
    return "\n".join(lines) + "\n"


def recorded_spec_text(rec: Recording, class_order: list[str], skip_classes: set[str] = frozenset()) -> str:
    """The TOML of a recording (tables of ``skip_classes`` left out: a user spec covers them)."""
    tables = [t for t in recorded_specs(rec, class_order) if t.cls not in skip_classes]
    seen = ", ".join(f"{c} x{n}" for c, n in rec.seen.items()) or f"{len(rec.calls)} calls"
    how = {"finished": "the script ran to its end", "stopped": "stopped once enough calls were recorded",
           "failed": f"the script failed: {rec.message}", "timeout": "the script was killed (time limit)"}
    header = (f"Recorded by `jaxport validate --record {json.dumps(rec.command)}`\n"
              f"({how.get(rec.status, rec.status)}; calls seen: {seen}).\n"
              f"Dims whose recorded sizes varied are symbolic; the others keep the recorded size.")
    return spec_toml(tables, header)


def prepare_spec(original: str | Path, command: str, user_spec: str | Path | None,
                 save_spec: str | Path | None, *, max_calls: int = DEFAULT_CALLS,
                 budget: float = DEFAULT_BUDGET, workdir: str | Path,
                 echo: Callable[[str], None] = lambda s: None) -> Path:
    """Record ``command``, write the spec to validate with (the user's spec tables first, then
    recorded tables for the classes it does not cover) to ``save_spec`` or into ``workdir``;
    returns its path."""
    import ast
    original = Path(original)
    try:
        tree = ast.parse(original.read_bytes())
        names = [n.name for n in tree.body if isinstance(n, ast.ClassDef)]
    except (OSError, SyntaxError, ValueError) as exc:
        raise RecordError(f"--record: cannot read {original}: {exc}") from None
    rec = record_script(original, command, names, max_calls=max_calls, budget=budget)
    if rec.status == "failed":
        echo(f"warning: the script failed after {len(rec.calls)} call(s) were recorded "
             f"({rec.message}{' at ' + rec.where if rec.where else ''}); validating with those")
    user_text, covered = "", set()
    if user_spec is not None:
        from .spec import parse_spec_file
        user_text = Path(user_spec).read_text(encoding="utf-8")
        covered = {ms.cls for ms in parse_spec_file(user_spec).values()}
    text = recorded_spec_text(rec, names, covered)
    if user_text:
        text = user_text.rstrip("\n") + f"\n\n# --- tables recorded from {command}\n" + text
    path = Path(save_spec) if save_spec else Path(workdir) / f"{original.stem}.recorded.toml"
    path.write_text(text, encoding="utf-8")
    counts = {}
    for ev in rec.calls:
        counts[ev["cls"]] = counts.get(ev["cls"], 0) + 1
    echo(f"recorded {len(rec.calls)} call(s) of {', '.join(f'{c} ({n})' for c, n in counts.items())} "
         f"in {rec.seconds:.1f} s" + (f"; spec written to {path}" if save_spec else ""))
    return path


if __name__ == "__main__":
    sys.exit(child_main())
