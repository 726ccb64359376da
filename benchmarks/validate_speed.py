"""Time to validate each corpus model with ``jaxport validate`` (default 25 examples).

    python -m benchmarks.validate_speed [--examples 25] [--json FILE] [--only STEM ...]
                                        [--target 30]

Each ``corpus/models/NAME.py`` is converted with jaxport into a temporary directory, then
validated exactly as ``jaxport validate NAME.py NAME_jax.py --spec NAME.toml --examples N``
does (child process, hypothesis, forward + gradients + BatchNorm train-mode statistics).
Reported per spec case: status and seconds (inside the child: build, transfer, compile,
examples, shrinking); per file: wall time including the child's start (imports of torch/jax).
A table goes to stdout; ``--json`` writes ``{"examples", "target_s", "cases": [{"file",
"case", "status", "seconds", "examples"}], "files": [{"file", "wall_s"}]}``.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "corpus" / "models"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--examples", type=int, default=25)
    p.add_argument("--json", dest="json_path")
    p.add_argument("--only", nargs="*", default=None, help="corpus file stems to run")
    p.add_argument("--target", type=float, default=30.0, help="seconds per case to flag")
    args = p.parse_args(argv)
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from transpiler.api import convert_source
    from transpiler.validate.runner import run_validation

    files = sorted(p for p in CORPUS.glob("*.py") if p.with_suffix(".toml").exists())
    if args.only:
        files = [f for f in files if f.stem in args.only]
    cases, walls = [], []
    print(f"{'case':40s} {'status':6s} {'seconds':>8s} {'examples':>8s}")
    with tempfile.TemporaryDirectory(prefix="jaxport-bench-") as tmp:
        for f in files:
            conv = Path(tmp) / f"{f.stem}_jax.py"
            conv.write_bytes(convert_source(f.read_text(encoding="utf-8"), str(f)).output)
            started = time.monotonic()
            results = run_validation(f, conv, spec=f.with_suffix(".toml"), examples=args.examples)
            wall = time.monotonic() - started
            walls.append({"file": f.name, "wall_s": round(wall, 2)})
            for m in results:
                secs = m.get("seconds") or 0.0
                flag = "  <-- over target" if secs > args.target else ""
                print(f"{f.stem + '::' + m['name']:40s} {m['status']:6s} {secs:8.1f} "
                      f"{m.get('examples', 0):8d}{flag}", flush=True)
                cases.append({"file": f.name, "case": m["name"], "status": m["status"],
                              "seconds": secs, "examples": m.get("examples", 0)})
    secs = [c["seconds"] for c in cases]
    if secs:
        print(f"\n{len(cases)} cases in {len(files)} files: median {sorted(secs)[len(secs) // 2]:.1f} s, "
              f"max {max(secs):.1f} s; {sum(s > args.target for s in secs)} over {args.target:g} s; "
              f"statuses: " + ", ".join(f"{s} {sum(c['status'] == s for c in cases)}"
                                        for s in ("pass", "fail", "error", "skip")))
    report = {"examples": args.examples, "target_s": args.target, "cases": cases, "files": walls}
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(report, indent=2) + "\n")
    else:
        print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
