"""Time to validate each corpus model with ``jaxport validate`` (default 25 examples).

    python -m benchmarks.validate_speed [--examples 25] [--json FILE] [--only STEM ...]
                                        [--target 30] [--quick]

Each ``corpus/models/NAME.py`` that has a spec ``NAME.toml`` is converted with jaxport into a
temporary directory, then validated exactly as ``jaxport validate NAME.py NAME_jax.py --spec
NAME.toml --examples N`` does (child process, hypothesis, forward + gradients + BatchNorm
train-mode statistics). Reported per spec case: status, seconds (inside the child: build,
transfer, compile, examples, shrinking) and CPU seconds of the child during the case (all its
threads, XLA's compiler included: less sensitive than seconds to other processes on the
machine); per file: wall time including the child's start (imports of torch/jax/flax). The
load average before and after the run is printed: on a shared machine, seconds are noisy.
``--quick`` validates ``tiny_gpt`` only (the slowest file so far).

A table goes to stdout; ``--json`` writes ``{"examples", "target_s", "load_before",
"load_after", "cases": [{"file", "case", "status", "seconds", "cpu_seconds", "examples"}],
"files": [{"file", "wall_s"}]}``. ``measure(quick)`` returns benchmark rows
``{"target", "goal", "measured", "met", "note"}``: one per case, then the slowest case.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "corpus" / "models"
TARGET_S = 30.0
QUICK = ("tiny_gpt",)


def _load() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def run(examples: int = 25, only: list[str] | None = None, target: float = TARGET_S,
        echo=print) -> dict:
    """Validate the corpus files; returns the JSON report described in the module docstring."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from transpiler.api import convert_source
    from transpiler.validate.runner import run_validation

    files = sorted(p for p in CORPUS.glob("*.py") if p.with_suffix(".toml").exists())
    if only:
        files = [f for f in files if f.stem in only]
    cases, walls = [], []
    load_before = _load()
    echo(f"{'case':40s} {'status':6s} {'seconds':>8s} {'cpu s':>7s} {'examples':>8s}")
    with tempfile.TemporaryDirectory(prefix="jaxport-bench-") as tmp:
        for f in files:
            conv = Path(tmp) / f"{f.stem}_jax.py"
            conv.write_bytes(convert_source(f.read_text(encoding="utf-8"), str(f)).output)
            started = time.monotonic()
            results = run_validation(f, conv, spec=f.with_suffix(".toml"), examples=examples)
            wall = time.monotonic() - started
            walls.append({"file": f.name, "wall_s": round(wall, 2)})
            for m in results:
                secs = m.get("seconds") or 0.0
                cpu = m.get("cpu_seconds") or 0.0
                flag = "  <-- over target" if secs > target else ""
                echo(f"{f.stem + '::' + m['name']:40s} {m['status']:6s} {secs:8.1f} {cpu:7.1f} "
                     f"{m.get('examples', 0):8d}{flag}")
                cases.append({"file": f.name, "case": m["name"], "status": m["status"],
                              "seconds": secs, "cpu_seconds": cpu, "examples": m.get("examples", 0),
                              "message": (m.get("message") or "")[:300] if m["status"] in ("fail", "error") else ""})
    report = {"examples": examples, "target_s": target, "load_before": load_before,
              "load_after": _load(), "cases": cases, "files": walls}
    secs = [c["seconds"] for c in cases if c["status"] != "skip"]
    if secs:
        echo(f"\n{len(cases)} cases in {len(files)} files: median {sorted(secs)[len(secs) // 2]:.1f} s, "
             f"max {max(secs):.1f} s; {sum(s > target for s in secs)} over {target:g} s; statuses: "
             + ", ".join(f"{s} {sum(c['status'] == s for c in cases)}" for s in ("pass", "fail", "error", "skip"))
             + f"; load average {load_before} before, {report['load_after']} after (2 cores)")
    return report


def rows_from_report(report: dict) -> list[dict]:
    target = report["target_s"]
    n = report["examples"]
    load = f"load average {report['load_before']} -> {report['load_after']} (shared machine: noisy)"
    rows = []
    timed = [c for c in report["cases"] if c["status"] != "skip"]
    for c in timed:
        ok = c["status"] == "pass" and c["seconds"] < target
        note = f"{c['status']}, {c['examples']} examples, {c['cpu_seconds']:.1f} CPU s"
        if c["status"] != "pass" and c.get("message"):
            note += f": {c['message'][:120]}"
        rows.append({"target": f"validate {Path(c['file']).stem}::{c['case']} ({n} examples), s",
                     "goal": f"< {target:g}", "measured": round(c["seconds"], 2), "met": ok,
                     "note": note})
    if timed:
        worst = max(timed, key=lambda c: c["seconds"])
        secs = sorted(c["seconds"] for c in timed)
        rows.append({"target": f"validate: slowest corpus case ({n} examples), s",
                     "goal": f"< {target:g}", "measured": round(worst["seconds"], 2),
                     "met": all(r["met"] for r in rows),
                     "note": f"{Path(worst['file']).stem}::{worst['case']}; median "
                             f"{secs[len(secs) // 2]:.1f} s over {len(timed)} cases; {load}"})
    return rows


def measure(quick: bool = False) -> list[dict]:
    """Benchmark rows ``{"target", "goal", "measured", "met", "note"}``: seconds to validate
    each corpus case with 25 examples (``quick``: tiny_gpt only), then the slowest case."""
    report = run(25, list(QUICK) if quick else None, TARGET_S, echo=lambda s: None)
    return rows_from_report(report)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--examples", type=int, default=25)
    p.add_argument("--json", dest="json_path")
    p.add_argument("--only", nargs="*", default=None, help="corpus file stems to run")
    p.add_argument("--target", type=float, default=TARGET_S, help="seconds per case to flag")
    p.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK)}")
    args = p.parse_args(argv)
    only = args.only if args.only else (list(QUICK) if args.quick else None)
    report = run(args.examples, only, args.target, echo=lambda s: print(s, flush=True))
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(report, indent=2) + "\n")
    else:
        print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
