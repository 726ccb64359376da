"""Conversion speed and memory: the issue #8 conversion targets, measured in one run.

    python -m benchmarks.conversion [--quick] [--json FILE]

Rows (``measure(quick)`` returns them as ``{"target", "goal", "measured", "met", "note"}``):

* conversion cost / parse+print: CPU time of converting every ``.py`` file of a tree the way
  ``jaxport convert -j 1`` does (``convert_tree`` in this process: read, convert, write)
  over the CPU time of a bare ``libcst.parse_module(text).code`` of the same files, best of
  several interleaved rounds. On ``corpus/`` (models and training scripts) and on a
  generated 100-file repository made of copies of them. CPU time, not wall time, so other
  load on the machine disturbs the ratio little.
  The note splits the conversion's CPU by phase (:mod:`benchmarks.conversion_phases`).
* ``-j 2`` over ``-j 1``: wall time of ``convert_tree`` on the 100-file repository with one
  and with two workers (pool start included). Needs two idle cores: the load average at
  the time is in the note, with the CPU time of both runs (workers included), whose ratio
  is the work the parallel run adds whatever the load.
* time to the first file: wall time of ``python cli.py convert FILE -o OUT`` on one small
  corpus model (interpreter start, imports, conversion, write), best of three, with byte
  code and jaxport's disk cache (``transpiler/cache.py``) warm in private folders, as for an
  installed jaxport after its first run; the cold first run, and the floor any conversion
  pays (starting Python and importing libcst and click), are in the note; and whether the
  conversion path imported torch, jax or flax.
* memory: peak resident memory (summed over the CLI process and its workers, sampled from
  /proc) of ``jaxport convert`` on a generated repository of 100k lines (20k with
  ``--quick``).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
from benchmarks.conversion_phases import summary as phase_summary  # noqa: E402
CORPUS_DIRS = (ROOT / "corpus" / "models", ROOT / "corpus" / "training")
RATIO_GOAL = 2.0
SPEEDUP_GOAL = 1.7
FIRST_FILE_GOAL_S = 0.5
RSS_GOAL_MB = 1024.0
# sizes (--quick: a smoke run, not numbers to quote)
REPO_FILES, QUICK_REPO_FILES = 100, 20
RSS_LINES, QUICK_RSS_LINES = 100_000, 5_000


def corpus_files() -> list[Path]:
    return sorted(p for d in CORPUS_DIRS for p in d.glob("*.py"))


def make_repo(dest: Path, n_files: int | None = None, n_lines: int | None = None) -> tuple[int, int]:
    """A repository of copies of the corpus files (``pkg_K/NAME_I.py``): ``n_files`` files,
    or as many as it takes to reach ``n_lines`` lines. Returns (files, lines)."""
    sources = [(p.stem, p.read_text(encoding="utf-8")) for p in corpus_files()]
    files = lines = 0
    while (n_files is not None and files < n_files) or (n_lines is not None and lines < n_lines):
        stem, text = sources[files % len(sources)]
        pkg = dest / f"pkg_{files // 25}"
        pkg.mkdir(parents=True, exist_ok=True)
        (pkg / f"{stem}_{files}.py").write_text(text, encoding="utf-8")
        files += 1
        lines += text.count("\n")
    return files, lines


def _py_files(root: Path) -> list[Path]:
    return sorted(root.rglob("*.py"))


def _parse_print(paths: list[Path]) -> None:
    import libcst as cst
    for p in paths:
        cst.parse_module(p.read_bytes().decode("utf-8")).code


def _convert_j1(roots: list[Path], out: Path) -> float:
    """Convert with one job; returns the CPU seconds of it spent writing training manifests
    (``<script>.jaxport.json``, built by transpiler/manifest.py), measured by wrapping the
    function that writes them."""
    import transpiler.tree as tree
    if out.exists():
        shutil.rmtree(out)
    original, spent = tree._write_manifest, [0.0]

    def timed(*args):
        t = time.process_time()
        try:
            return original(*args)
        finally:
            spent[0] += time.process_time() - t

    tree._write_manifest = timed
    try:
        tree.convert_tree([str(r) for r in roots], str(out), jobs=1)
    finally:
        tree._write_manifest = original
    return spent[0]


def conversion_ratio(roots: list[Path], rounds: int) -> dict:
    """CPU seconds of convert -j 1 over the directories ``roots`` and of parse+print of their
    ``.py`` files (best of ``rounds`` interleaved rounds)."""
    inputs = list(roots)
    paths = [p for r in inputs for p in _py_files(r)]
    lines = sum(p.read_bytes().count(b"\n") for p in paths)
    with tempfile.TemporaryDirectory(prefix="jaxport-bench-") as tmp:
        out = Path(tmp) / "out"
        _parse_print(paths)           # warm: imports, tables, cached helper text
        _convert_j1(inputs, out)
        pp, conv = [], []
        for _ in range(rounds):
            t = time.process_time()
            _parse_print(paths)
            pp.append(time.process_time() - t)
            t = time.process_time()
            manifests = _convert_j1(inputs, out)
            conv.append((time.process_time() - t, manifests))
    best_pp, (best_conv, manifests) = min(pp), min(conv)
    return {"files": len(paths), "lines": lines, "parse_print_s": best_pp, "convert_s": best_conv,
            "ratio": best_conv / best_pp, "lines_per_s": lines / best_conv, "manifest_s": manifests,
            "ratio_without_manifests": (best_conv - manifests) / best_pp}


def _children_cpu() -> float:
    import resource
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def parallel_speedup(repo: Path, rounds: int) -> dict:
    """Wall seconds with one and two workers (best of ``rounds``), and the CPU seconds each
    spent in all (this process and its reaped workers): their ratio is the work the parallel
    run adds (pool start, per-worker loading, transfers), whatever the machine's load."""
    from transpiler.tree import convert_tree
    walls: dict[int, list[float]] = {1: [], 2: []}
    cpus: dict[int, list[float]] = {1: [], 2: []}
    with tempfile.TemporaryDirectory(prefix="jaxport-bench-") as tmp:
        for _ in range(rounds):
            for jobs in (1, 2):
                out = Path(tmp) / f"out{jobs}"
                if out.exists():
                    shutil.rmtree(out)
                c, k = time.process_time(), _children_cpu()
                t = time.perf_counter()
                convert_tree([str(repo)], str(out), jobs=jobs)
                walls[jobs].append(time.perf_counter() - t)
                cpus[jobs].append(time.process_time() - c + _children_cpu() - k)
    j1, j2 = min(walls[1]), min(walls[2])
    return {"j1_s": j1, "j2_s": j2, "speedup": j1 / j2, "cpu_j1_s": min(cpus[1]), "cpu_j2_s": min(cpus[2])}


def _env() -> dict:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    env["NO_COLOR"] = "1"
    return env


def _installed_env(tmp: str) -> dict:
    """The environment of an installed jaxport: byte-code caches written and used (pip
    compiles them at install; here they go to a private folder, whatever
    PYTHONDONTWRITEBYTECODE says) and jaxport's disk cache in a private folder too."""
    env = _env()
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(Path(tmp) / "pycache")
    env["JAXPORT_CACHE_DIR"] = str(Path(tmp) / "jaxport-cache")
    env.pop("JAXPORT_NO_CACHE", None)
    return env


def _best_wall(cmd: list[str], env: dict, rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        t = time.perf_counter()
        subprocess.run(cmd, env=env, check=True, capture_output=True)
        best = min(best, time.perf_counter() - t)
    return best


def first_file(rounds: int = 3) -> dict:
    """Wall seconds of the CLI converting one small file (byte code and jaxport's disk cache
    warm, as after the first run of an installed jaxport; the first, cold run is reported
    too), the floor under it (starting Python and importing libcst and click, which any
    conversion needs), and the modules imported on that path."""
    src = ROOT / "corpus" / "models" / "mlp.py"
    with tempfile.TemporaryDirectory(prefix="jaxport-bench-") as tmp:
        env = _installed_env(tmp)
        cmd = [sys.executable, str(ROOT / "cli.py"), "convert", str(src), "-o", str(Path(tmp) / "mlp_jax.py")]
        cold = _best_wall(cmd, env, 1)          # writes the byte code and the disk cache
        best = _best_wall(cmd, env, rounds)
        floor = _best_wall([sys.executable, "-c", "import libcst, click"], env, rounds)
        bare = _best_wall([sys.executable, "-c", "pass"], env, rounds)
        probe = ("import sys; from transpiler.api import convert_bytes; import transpiler.cli, transpiler.tree; "
                 f"convert_bytes(open({str(src)!r}, 'rb').read(), 'mlp.py'); "
                 "print(','.join(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'jax', 'flax', 'optax'})))")
        heavy = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=_env(), check=True,
                               capture_output=True, text=True).stdout.strip()
    return {"seconds": best, "cold_s": cold, "floor_s": floor, "python_s": bare,
            "heavy_imports": heavy.split(",") if heavy else []}


def _tree_rss_kb(pid: int) -> int:
    """Resident memory of a process and all its descendants (Linux /proc), in KiB."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            ppid = int(fields[1])
            with open(f"/proc/{entry}/statm") as fh:
                pages = int(fh.read().split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
        rss[int(entry)] = pages * (os.sysconf("SC_PAGE_SIZE") // 1024)
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        total += rss.get(p, 0)
        stack.extend(children.get(p, []))
    return total


def peak_rss(n_lines: int, jobs: int = 2) -> dict:
    with tempfile.TemporaryDirectory(prefix="jaxport-bench-") as tmp:
        repo = Path(tmp) / "repo"
        files, lines = make_repo(repo, n_lines=n_lines)
        t = time.perf_counter()
        proc = subprocess.Popen([sys.executable, str(ROOT / "cli.py"), "convert", str(repo), "-o",
                                 str(Path(tmp) / "out"), "-j", str(jobs)], env=_env(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        peak = 0
        while proc.poll() is None:
            if os.path.isdir("/proc"):
                peak = max(peak, _tree_rss_kb(proc.pid))
            time.sleep(0.2)
        wall = time.perf_counter() - t
    return {"files": files, "lines": lines, "peak_mb": peak / 1024, "seconds": wall, "jobs": jobs,
            "exit": proc.returncode}


def _load() -> str:
    try:
        return "load average %.1f on %d cores" % (os.getloadavg()[0], os.cpu_count() or 0)
    except OSError:
        return ""


def measure(quick: bool = False) -> list[dict]:
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    rows: list[dict] = []
    rounds = 1 if quick else 3
    corpus = conversion_ratio(list(CORPUS_DIRS), rounds)
    rows.append({"target": "convert -j 1 / libcst parse+print (corpus/)", "goal": f"<= {RATIO_GOAL:.1f}x",
                 "measured": round(corpus["ratio"], 2), "met": corpus["ratio"] <= RATIO_GOAL,
                 "note": f"{corpus['files']} files, {corpus['lines']} lines: convert {corpus['convert_s']:.2f} s "
                         f"CPU ({corpus['lines_per_s']:.0f} lines/s), parse+print {corpus['parse_print_s']:.2f} s; "
                         f"of the conversion, {corpus['manifest_s']:.2f} s writes training manifests "
                         f"(x{corpus['ratio_without_manifests']:.2f} without them); where the CPU goes: "
                         f"{phase_summary(list(CORPUS_DIRS))}"})
    with tempfile.TemporaryDirectory(prefix="jaxport-bench-") as tmp:
        repo = Path(tmp) / "repo"
        files, lines = make_repo(repo, n_files=QUICK_REPO_FILES if quick else REPO_FILES)
        if not quick:
            synth = conversion_ratio([repo], rounds)
            rows.append({"target": "convert -j 1 / libcst parse+print (100-file repo)",
                         "goal": f"<= {RATIO_GOAL:.1f}x", "measured": round(synth["ratio"], 2),
                         "met": synth["ratio"] <= RATIO_GOAL,
                         "note": f"{files} files, {lines} lines (copies of corpus files): "
                                 f"{synth['lines_per_s']:.0f} lines/s; x{synth['ratio_without_manifests']:.2f} "
                                 "without the training manifests"})
        load_before = _load()
        par = parallel_speedup(repo, 1 if quick else 2)
        rows.append({"target": f"convert -j 2 speedup over -j 1 ({files}-file repo)", "goal": f">= {SPEEDUP_GOAL}x",
                     "measured": round(par["speedup"], 2), "met": par["speedup"] >= SPEEDUP_GOAL,
                     "note": f"wall {par['j1_s']:.1f} s vs {par['j2_s']:.1f} s; CPU {par['cpu_j1_s']:.1f} s vs "
                             f"{par['cpu_j2_s']:.1f} s (x{par['cpu_j2_s'] / par['cpu_j1_s']:.2f}: the work "
                             f"two workers add); {load_before} before, {_load()} after (needs two idle cores)"})
    ff = first_file(1 if quick else 3)
    rows.append({"target": "CLI start to first file converted", "goal": f"<= {FIRST_FILE_GOAL_S} s",
                 "measured": round(ff["seconds"], 2),
                 "met": ff["seconds"] <= FIRST_FILE_GOAL_S and not ff["heavy_imports"],
                 "note": "whole `cli.py convert mlp.py` run incl. interpreter start, byte code and "
                         f"jaxport cache warm (first run {ff['cold_s']:.2f} s); floor: python + import "
                         f"libcst, click {ff['floor_s']:.2f} s (python alone {ff['python_s']:.2f} s); "
                         f"{_load()}; heavy imports on the conversion path: "
                         f"{', '.join(ff['heavy_imports']) or 'none'}"})
    target_lines = QUICK_RSS_LINES if quick else RSS_LINES
    mem = peak_rss(target_lines)
    rows.append({"target": f"peak RSS converting a {mem['lines'] // 1000}k-line repo",
                 "goal": f"< {RSS_GOAL_MB:.0f} MB", "measured": round(mem["peak_mb"]),
                 "met": mem["peak_mb"] < RSS_GOAL_MB and mem["exit"] in (0, 1),
                 "note": f"{mem['files']} files, {mem['lines']} lines, -j {mem['jobs']} (CLI + workers), "
                         f"{mem['seconds']:.0f} s wall, exit {mem['exit']}"
                         + ("" if not quick else "; 100k lines without --quick")})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--json", dest="json_path")
    args = p.parse_args(argv)
    rows = measure(args.quick)
    for r in rows:
        print(f"{r['target']:52s} {r['goal']:>9s} {r['measured']!s:>8s} {'yes' if r['met'] else 'no':>4s}  {r['note']}")
    if args.json_path:
        Path(args.json_path).write_text(json.dumps({"rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
