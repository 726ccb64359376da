"""Where the CPU of a conversion goes, phase by phase: the reason the conversion ratio is what
it is.

    python -m benchmarks.conversion_phases [DIR ...]      (default: corpus/models, corpus/training)

Converts the directories once to warm up, then once with each phase's entry point wrapped
by a CPU timer (``time.process_time``), and prints each phase's share of the conversion:

* parse: ``libcst.parse_module`` of each file (the floor every conversion pays);
* compile checks: CPython compiling the input (its syntax errors are reported) and the
  converted text (a file that would not compile is refused);
* before the rules: the passes that run on the torch tree first (distributed, layout);
* rules: the one traversal of the table-driven rules, with their per-file analyses;
* imports and print: the imports and prelude helpers the output needs, and printing it;
* diagnostic positions: the partial print that finds where each diagnostic points;
* manifests: the training manifests written beside converted scripts;
* the rest: reading and writing files, decoding, the records, everything not above.

Shares, not seconds: the machine's speed varies from minute to minute, the split much less.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DIRS = (ROOT / "corpus" / "models", ROOT / "corpus" / "training")


@contextmanager
def _timed(owner, name: str, spent: dict, label: str, depth: list[int]):
    """Wrap ``owner.name`` so that its CPU time adds to ``spent[label]``, unless it runs
    inside another timed phase (``depth``, shared by all the wrappers): each CPU second
    counts once, for the outermost phase."""
    original = getattr(owner, name)

    def wrapper(*args, **kwargs):
        depth[0] += 1
        start = time.process_time()
        try:
            return original(*args, **kwargs)
        finally:
            depth[0] -= 1
            if depth[0] == 0:
                spent[label] = spent.get(label, 0.0) + time.process_time() - start

    setattr(owner, name, wrapper)
    try:
        yield
    finally:
        setattr(owner, name, original)


def phase_seconds(roots: list[Path]) -> tuple[float, dict[str, float]]:
    """(CPU seconds of ``convert -j 1`` over ``roots``, CPU seconds per phase)."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    import libcst

    import transpiler.api as api
    import transpiler.context as context
    import transpiler.pipeline as pipeline
    import transpiler.tree as tree
    from transpiler.passes import distributed
    spent: dict[str, float] = {}
    wrapped = [(libcst, "parse_module", "parse"), (api, "_compile_error", "compile checks"),
               (distributed, "prepare", "before the rules"), (pipeline, "transform", "rules"),
               (pipeline, "finalize_code_parts", "imports and print"),
               (context.FileContext, "place_diagnostics", "diagnostic positions"),
               (tree, "_write_manifest", "manifests")]
    with tempfile.TemporaryDirectory(prefix="jaxport-phases-") as tmp:
        out = Path(tmp) / "out"
        tree.convert_tree([str(r) for r in roots], str(out), jobs=1)     # warm: imports, tables
        shutil.rmtree(out)
        with _all_timed(wrapped, spent):
            start = time.process_time()
            tree.convert_tree([str(r) for r in roots], str(out), jobs=1)
            total = time.process_time() - start
    return total, spent


@contextmanager
def _all_timed(wrapped, spent, depth=None):
    depth = depth if depth is not None else [0]
    if not wrapped:
        yield
        return
    (owner, name, label), *rest = wrapped
    with _timed(owner, name, spent, label, depth), _all_timed(rest, spent, depth):
        yield


def shares(total: float, spent: dict[str, float]) -> list[tuple[str, float]]:
    """(phase, share of ``total``) with "the rest" last, largest phases first."""
    rows = sorted(spent.items(), key=lambda kv: -kv[1])
    rows.append(("the rest", total - sum(spent.values())))
    return [(label, seconds / total) for label, seconds in rows]


def summary(roots: list[Path] | None = None) -> str:
    """One line: each phase's share of a conversion of ``roots`` (the corpus by default)."""
    total, spent = phase_seconds(list(roots or DEFAULT_DIRS))
    return ", ".join(f"{label} {share:.0%}" for label, share in shares(total, spent))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dirs", nargs="*", type=Path)
    args = p.parse_args(argv)
    total, spent = phase_seconds(args.dirs or list(DEFAULT_DIRS))
    print(f"conversion: {total:.2f} s CPU")
    for label, share in shares(total, spent):
        print(f"  {label:22s} {share:6.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
