"""Run a validation in a child process: user code is imported there, never in the caller.

Child (``python -m transpiler.validate.runner --original A.py --converted B.py --out EVENTS``):
imports both files, plans the cases (one per ``nn.Module`` class of the original, or per spec
table), and for each case writes JSON lines to EVENTS: ``{"event": "start", "name"}`` then
``{"event": "result", "result": {...}}``; first ``{"event": "plan", "cases": [...]}``; a
problem that stops everything is ``{"event": "fatal", "message", "usage"}``.

Parent (``run_validation``): ``supervise`` starts the child, follows EVENTS and kills the child
(its whole process group) when one case runs longer than ``timeout`` seconds; a crash or a
timeout is an ``error`` result for that case, and a new child starts for the cases left. The
training replay (``train_steps.run_train_validation``) supervises its child the same way.
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

DEFAULT_TIMEOUT = 600.0
STARTUP_ALLOWANCE = 120.0     # seconds for the child to import torch/jax and the user files


# ============================================================================ child side

def _single_thread_torch() -> None:
    """Small models: torch's intra-op threads only fight XLA's for the cores (measured 70x
    slower convolutions on 2 cores after a jax computation)."""
    import torch
    torch.set_num_threads(1)


def _setup_device(device: str) -> str | None:
    """Select the JAX backend; returns an error message if it is not available."""
    if device == "cpu":
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax
    jax.config.update("jax_default_matmul_precision", "highest")
    _single_thread_torch()
    try:
        import torch
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    except Exception:  # noqa: BLE001
        pass
    if device != "cpu":
        try:
            devices = jax.devices(device)
        except RuntimeError as exc:
            return (f"--device {device}: JAX has no {device} backend here ({str(exc).splitlines()[0]}); "
                    f"install the jax build for {device} or use --device cpu")
        if not devices:
            return f"--device {device}: no {device} device found"
        jax.config.update("jax_default_device", devices[0])
    return None


def torch_classes(module) -> list:
    """nn.Module subclasses defined in ``module``, in definition order."""
    import torch.nn as tnn
    out = []
    for obj in vars(module).values():
        if (isinstance(obj, type) and issubclass(obj, tnn.Module)
                and obj.__module__ == module.__name__):
            out.append(obj)
    return out


def plan_cases(tmod, specs: dict, modules: list[str] | None) -> list[tuple[str, str, object]]:
    """``[(case name, class name, ModuleSpec or None)]``: every spec table of a class, or the
    class itself (zero-config) when no table names it; ``modules`` filters by case or class."""
    classes = [c.__name__ for c in torch_classes(tmod)]
    by_class: dict[str, list[str]] = {}
    for case, ms in specs.items():
        by_class.setdefault(ms.cls, []).append(case)
    cases = []
    for cls in classes:
        tables = by_class.get(cls)
        if tables:
            cases += [(case, cls, specs[case]) for case in tables]
        else:
            cases.append((cls, cls, None))
    for case, ms in specs.items():
        if ms.cls not in classes:
            cases.append((case, ms.cls, ms))
    if modules:
        cases = [c for c in cases if c[0] in modules or c[1] in modules]
    return cases


def run_case(tmod, fmod, case: str, cls: str, ms, *, examples: int, seed: int,
             rtol: float | None, atol: float | None):
    """Validate one case in this process; never raises for problems of the code under test."""
    from .harness import ComparisonResult
    from .infer import NotInferable, infer_spec, init_hint, required_init_args
    from .strategies import hypothesis_compare

    tcls, fcls = getattr(tmod, cls, None), getattr(fmod, cls, None)
    if tcls is None or fcls is None:
        side = "original" if tcls is None else "converted"
        return ComparisonResult(case, "error", message=f"class {cls} not found in the {side} file")
    if ms is not None and ms.skip:
        return ComparisonResult(case, "skip", message=ms.skip)
    if ms is None or (not ms.inputs and not ms.kwargs):
        try:
            ms = infer_spec(tcls, case, ms)
        except NotInferable as exc:
            return ComparisonResult(case, "skip", message=str(exc))
    else:
        missing = [n for n in required_init_args(tcls) if n not in ms.init]
        if missing:
            return ComparisonResult(case, "skip", message=init_hint(cls, missing))
    result = hypothesis_compare(tcls, fcls, ms, seed=seed, examples=examples, name=case,
                                rtol=rtol, atol=atol)
    if ms.note and "inferred" in ms.note:
        result.message = (result.message + " | " if result.message else "") + ms.note
    return result


def check_case(original, converted, case: str, spec=None, *, examples: int = 25, seed: int = 0,
               rtol: float | None = None, atol: float | None = None):
    """In-process validation of one case (used by the pytest files of ``--emit-tests``)."""
    from .harness import ComparisonResult, load_module_from_path
    from .spec import parse_spec_file
    _single_thread_torch()
    specs = parse_spec_file(spec) if spec else {}
    tmod = load_module_from_path(original)
    fmod = load_module_from_path(converted)
    for name, cls, ms in plan_cases(tmod, specs, [case]):
        if name == case:
            return run_case(tmod, fmod, name, cls, ms, examples=examples, seed=seed, rtol=rtol, atol=atol)
    return ComparisonResult(case, "error", message=f"no case {case!r}")


def child_parser(prog: str) -> argparse.ArgumentParser:
    """The arguments every validation child process takes from its parent."""
    p = argparse.ArgumentParser(prog=prog)
    p.add_argument("--original", required=True)
    p.add_argument("--converted", required=True)
    p.add_argument("--spec")
    p.add_argument("--module", action="append", default=[])
    p.add_argument("--case", action="append", default=[])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rtol", type=float)
    p.add_argument("--atol", type=float)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", required=True)
    return p


def event_writer(path: str):
    """``emit(**event)``: one JSON line per event, appended and flushed (the parent reads the
    file even when the child dies)."""
    out = open(path, "a", encoding="utf-8")

    def emit(**event):
        out.write(json.dumps(event) + "\n")
        out.flush()

    return emit


def child_main(argv: list[str] | None = None) -> int:
    p = child_parser("python -m transpiler.validate.runner")
    p.add_argument("--examples", type=int, default=25)
    a = p.parse_args(argv)
    emit = event_writer(a.out)
    err = _setup_device(a.device)
    if err:
        emit(event="fatal", message=err, usage=True)
        return 2
    from .harness import load_module_from_path
    from .spec import SpecError, parse_spec_file
    try:
        specs = parse_spec_file(a.spec) if a.spec else {}
    except SpecError as exc:
        emit(event="fatal", message=str(exc), usage=True)
        return 2
    for path in (a.converted, a.original):   # sibling imports of the user's files
        folder = str(Path(path).resolve().parent)
        if folder not in sys.path:
            sys.path.insert(0, folder)
    loaded = {}
    for which in ("original", "converted"):
        path = getattr(a, which)
        try:
            loaded[which] = load_module_from_path(path)
        except BaseException as exc:  # noqa: BLE001 - user code
            msg = f"importing the {which} file {path} failed: {type(exc).__name__}: {exc}"
            emit(event="fatal", message=msg.splitlines()[0][:500], usage=False)
            return 1
    cases = plan_cases(loaded["original"], specs, a.module or None)
    if a.case:
        cases = [c for c in cases if c[0] in a.case]
    emit(event="plan", cases=[c[0] for c in cases])
    for case, cls, ms in cases:
        emit(event="start", name=case)
        started, cpu = time.monotonic(), time.process_time()
        r = run_case(loaded["original"], loaded["converted"], case, cls, ms, examples=a.examples,
                     seed=a.seed, rtol=a.rtol, atol=a.atol)
        d = r.to_json()
        d["seconds"] = round(time.monotonic() - started, 3)
        d["cpu_seconds"] = round(time.process_time() - cpu, 3)   # all threads (XLA compiles too)
        emit(event="result", result=d)
    return 0


# ============================================================================ parent side

def class_names(path: str | Path) -> list[str]:
    """Top-level class names of a Python file (AST only: nothing is imported)."""
    try:
        tree = ast.parse(Path(path).read_bytes())
    except (OSError, SyntaxError, ValueError):
        return []
    return [n.name for n in tree.body if isinstance(n, ast.ClassDef)]


def _error(name: str, message: str, seconds: float = 0.0) -> dict:
    return {"name": name, "status": "error", "checks": [], "examples": 0, "max_abs_err": None,
            "max_rel_err": None, "message": message, "counterexample": None,
            "seconds": round(seconds, 3)}


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.rstrip().splitlines()[-lines:])


class Fatal(Exception):
    """The validation could not run at all (``usage``: a usage error, exit 2)."""

    def __init__(self, message: str, usage: bool):
        super().__init__(message)
        self.usage = usage


@dataclass
class ChildRun:
    """How one child process ended (``supervise``)."""
    plan: list[str] | None = None        # the latest plan event
    current: str | None = None           # the case running when it ended or was killed
    killed: bool = False                 # killed for running past the time limit
    returncode: int | None = None
    fatal: dict | None = None            # a fatal event (the child stopped on it)
    seconds: float = 0.0                 # since the current case started
    tail: str = ""                       # the end of its output, when it crashed


def child_environment() -> dict:
    """The environment of a validation child: this checkout first on the import path."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def supervise(cmd: list[str], workdir: str | Path, timeout: float, on_result: Callable[[dict], None],
              tag: str = "") -> ChildRun:
    """Run one validation child (``cmd`` plus ``--out EVENTS``), passing each result event to
    ``on_result`` as it arrives; kill its process group when a case runs past ``timeout``
    seconds (the start-up, before the first case, gets at least ``STARTUP_ALLOWANCE``)."""
    events_path, log_path = Path(workdir) / f"events{tag}.jsonl", Path(workdir) / f"log{tag}.txt"
    events_path.touch()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd + ["--out", str(events_path)], stdin=subprocess.DEVNULL, stdout=log,
                                stderr=log, env=child_environment(), start_new_session=True)
    run, started, offset = ChildRun(), time.monotonic(), 0
    while True:
        rc = proc.poll()
        with open(events_path, "r", encoding="utf-8") as f:
            f.seek(offset)
            chunk = f.read()
        complete = chunk[:chunk.rfind("\n") + 1] if "\n" in chunk else ""
        offset += len(complete.encode("utf-8"))
        for line in complete.splitlines():
            ev = json.loads(line)
            kind = ev.get("event")
            if kind == "fatal":
                proc.wait()
                run.fatal, run.returncode = ev, proc.returncode
                return run
            if kind == "plan":
                run.plan = list(ev["cases"])
            elif kind == "start":
                run.current, started = ev["name"], time.monotonic()
            elif kind == "result":
                on_result(ev["result"])
                run.current, started = None, time.monotonic()
        if rc is not None:
            break
        limit = timeout if run.current is not None else max(timeout, STARTUP_ALLOWANCE)
        if time.monotonic() - started > limit:
            run.killed = True
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
            break
        time.sleep(0.05)
    run.returncode, run.seconds = proc.returncode, time.monotonic() - started
    if not run.killed and (run.current is not None or run.plan is None):
        run.tail = _tail(log_path)
    return run


def run_validation(original, converted, *, spec=None, modules=(), examples: int = 25, seed: int = 0,
                   rtol: float | None = None, atol: float | None = None, device: str = "cpu",
                   timeout: float = DEFAULT_TIMEOUT, on_result: Callable[[dict], None] | None = None,
                   python: str | None = None) -> list[dict]:
    """Validate in child processes; returns the module entries of the validation report.
    Raises ``Fatal`` when nothing could be validated for a reason that is not a module's."""
    base = [python or sys.executable, "-m", "transpiler.validate.runner",
            "--original", str(original), "--converted", str(converted),
            "--examples", str(examples), "--seed", str(seed), "--device", device]
    if spec:
        base += ["--spec", str(spec)]
    for m in modules:
        base += ["--module", m]
    if rtol is not None:
        base += ["--rtol", repr(rtol)]
    if atol is not None:
        base += ["--atol", repr(atol)]
    results: dict[str, dict] = {}
    plan: list[str] | None = None
    todo: list[str] | None = None

    def record(d: dict) -> None:
        results[d["name"]] = d
        if on_result is not None:
            on_result(d)

    def everything_failed(message: str) -> list[dict]:
        names = list(modules) or class_names(original) or [Path(original).stem]
        for n in names:
            record(_error(n, message))
        return [results[n] for n in names]

    with tempfile.TemporaryDirectory(prefix="jaxport-validate-") as tmp:
        attempt = 0
        while True:
            attempt += 1
            cmd = base + [a for c in (todo or []) for a in ("--case", c)]
            run = supervise(cmd, tmp, timeout, record, tag=str(attempt))
            if run.fatal is not None:
                if run.fatal.get("usage"):
                    raise Fatal(run.fatal["message"], True)
                return everything_failed(run.fatal["message"])
            if plan is None:
                plan = run.plan
            tail = f":\n{run.tail}" if run.tail else ""
            killed = run.current if run.killed else None
            if killed is not None:
                record(_error(killed, f"timed out after {timeout:g} s (--timeout); "
                              "the validation process was killed", timeout))
            elif run.current is not None:
                record(_error(run.current, f"the validation process crashed (exit status {run.returncode}) "
                                           f"while validating {run.current}{tail}", run.seconds))
            if plan is None:
                return everything_failed(f"the validation process failed before starting (exit status "
                                         f"{run.returncode}){tail}")
            todo = [c for c in plan if c not in results]
            if not todo:
                break
            if killed is None and run.current is None:
                # the child ended cleanly without doing everything: should not happen
                for c in todo:
                    record(_error(c, f"not run: the validation process ended (exit status {run.returncode})"))
                break
    return [results[c] for c in plan]


if __name__ == "__main__":
    sys.exit(child_main())
