"""The issue #8 performance targets in one table.

    python -m benchmarks [--quick] [--json FILE] [--only conversion|validate|train_step ...]

Runs, in this order, ``benchmarks.conversion`` (conversion cost against a bare libcst
parse+print, ``-j 2`` speedup, CLI time to the first file, memory on a large repository),
``benchmarks.validate_speed`` (validating corpus models with 25 examples) and
``benchmarks.train_step`` (converted training steps against hand-written flax and PyTorch).
Each gives rows ``{"target", "goal", "measured", "met", "note"}``; ``met`` is true, false,
or null for a figure reported without a goal (and for a part that could not run: its note
says why). Prints the table and, with ``--json``, writes ``{"machine", "quick", "rows"}``.
``--quick`` uses fewer rounds and smaller inputs (a smoke run, not numbers to quote).
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PARTS = ("conversion", "validate", "train_step")
KEYS = ("target", "goal", "measured", "met", "note")


def machine() -> dict:
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        load = round(os.getloadavg()[0], 2)
    except OSError:
        load = None
    try:
        import libcst
        libcst_version = getattr(libcst, "__version__", "")
        if not libcst_version:
            from importlib.metadata import version
            libcst_version = version("libcst")
    except Exception:
        libcst_version = ""
    return {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "libcst": libcst_version, "load_average": load,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def validate_rows(quick: bool) -> list[dict]:
    """Validation time per corpus model with 25 examples (target: under 30 s)."""
    from benchmarks import validate_speed
    goal = 30.0
    only = ["mlp", "mnist_cnn"] if quick else None
    with tempfile.TemporaryDirectory(prefix="jaxport-bench-") as tmp:
        out = Path(tmp) / "validate.json"
        args = ["--examples", "25", "--json", str(out)] + (["--only", *only] if only else [])
        validate_speed.main(args)
        data = json.loads(out.read_text())
    rows = []
    for f in data["files"]:
        cases = [c for c in data["cases"] if c["file"] == f["file"]]
        statuses = ", ".join(f"{c['case']} {c['status']}" for c in cases)
        rows.append({"target": f"validate {f['file']} (25 examples)", "goal": f"< {goal:.0f} s",
                     "measured": f["wall_s"], "met": f["wall_s"] < goal,
                     "note": f"wall incl. child start; cases: {statuses}"})
    return rows


def _part(name: str, quick: bool) -> list[dict]:
    if name == "validate":
        return validate_rows(quick)
    module = importlib.import_module(f"benchmarks.{name}")
    return module.measure(quick)


def run(parts, quick: bool) -> list[dict]:
    rows: list[dict] = []
    for name in parts:
        started = time.perf_counter()
        try:
            got = _part(name, quick)
        except ModuleNotFoundError as exc:
            if exc.name != f"benchmarks.{name}":
                raise
            got = [{"target": name, "goal": "", "measured": None, "met": None,
                    "note": f"benchmarks/{name}.py is not there"}]
        except Exception as exc:    # one part failing must not hide the others
            traceback.print_exc(file=sys.stderr)
            got = [{"target": name, "goal": "", "measured": None, "met": None,
                    "note": f"could not run: {type(exc).__name__}: {exc}"}]
        for r in got:
            rows.append({k: r.get(k) for k in KEYS} | {"part": name})
        print(f"[{name}: {time.perf_counter() - started:.0f} s]", file=sys.stderr, flush=True)
    return rows


def table(rows: list[dict]) -> str:
    def met(v):
        return "yes" if v is True else "no" if v is False else "-"
    head = ("target", "goal", "measured", "met", "note")
    cells = [head] + [(r["target"], str(r["goal"] or ""), "" if r["measured"] is None else str(r["measured"]),
                       met(r["met"]), r["note"] or "") for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(4)]
    lines = []
    for c in cells:
        lines.append("  ".join(c[i].ljust(widths[i]) for i in range(4)) + "  " + c[4])
    lines.insert(1, "  ".join("-" * w for w in widths) + "  " + "-" * 4)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer rounds, smaller inputs")
    p.add_argument("--json", dest="json_path", help="write the rows and the machine here")
    p.add_argument("--only", nargs="*", choices=PARTS, help="parts to run (default: all)")
    args = p.parse_args(argv)
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    info = machine()
    rows = run(args.only or PARTS, args.quick)
    print(f"machine: {info['cpu']} ({info['cores']} cores), {info['platform']}, Python {info['python']}, "
          f"libcst {info['libcst']}, load average {info['load_average']}")
    print(table(rows))
    if args.json_path:
        Path(args.json_path).write_text(json.dumps({"machine": info, "quick": args.quick, "rows": rows},
                                                   indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
