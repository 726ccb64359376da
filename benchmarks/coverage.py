"""How much of the torch code in real model files jaxport converts.

    python -m benchmarks.coverage DIR [DIR ...] [--json FILE] [--all-files]

A *model file* defines at least one ``nn.Module`` subclass (``--all-files`` counts every
file that imports torch). A *torch reference* is an outermost dotted name that resolves to
torch (``F.relu``, ``nn.Linear``, ``torch.cat``, ``Adam``), counted in the input; the
references left in the output (always spelled ``torch.…`` there) are the unconverted ones.
References to APIs kept on torch by design (data loading: ``keep`` entries of the tables)
are counted apart, and the rate is also given without them. Also reported: files whose
output does not compile (must be 0) and files that failed.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter

import libcst as cst

from transpiler.api import convert_bytes
from transpiler.mapping import load_tables
from transpiler.names import collect_aliases, dotted, qualify


class _Refs(cst.CSTVisitor):
    def __init__(self, aliases: dict[str, str]) -> None:
        self.aliases = aliases
        self.found: list[str] = []

    def visit_Import(self, node) -> bool:
        return False

    def visit_ImportFrom(self, node) -> bool:
        return False

    def visit_Attribute(self, node: cst.Attribute) -> bool:
        q = qualify(node, self.aliases)
        if q is not None:
            self.found.append(q)
            return False
        return True

    def visit_Name(self, node: cst.Name) -> None:
        q = qualify(node, self.aliases)
        if q is not None and node.value in self.aliases:
            self.found.append(q)


def torch_references(module: cst.Module, aliases: dict[str, str] | None = None) -> list[str]:
    visitor = _Refs(aliases if aliases is not None else collect_aliases(module))
    module.visit(visitor)
    return visitor.found


def _is_kept(name: str) -> bool:
    entry = load_tables().functions.get(name)
    return entry is not None and entry.keep is not None


def is_model_file(module: cst.Module, aliases: dict[str, str]) -> bool:
    for stmt in module.body:
        if isinstance(stmt, cst.ClassDef):
            for base in stmt.bases:
                if qualify(base.value, aliases) == "torch.nn.Module":
                    return True
    return False


def measure(root: str, all_files: bool = False) -> dict:
    totals = Counter()
    left: Counter = Counter()
    failures = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.endswith(".py"):
                continue
            path = os.path.join(dirpath, name)
            data = open(path, "rb").read()
            try:
                module = cst.parse_module(data.decode("utf-8"))
            except Exception:
                continue
            aliases = collect_aliases(module)
            if not aliases or not (all_files or is_model_file(module, aliases)):
                continue
            before = torch_references(module, aliases)
            result = convert_bytes(data, os.path.relpath(path, root), origin=path)
            totals["files"] += 1
            totals["references"] += len(before)
            if result.status == "failed":
                failures.append((result.path, [d.code for d in result.diagnostics]))
                totals["failed"] += 1
                left.update(before)
                totals["remaining"] += len(before)     # a failed file converted nothing
                continue
            out = result.output.decode("utf-8")
            try:
                compile(out, path, "exec")
            except SyntaxError:
                totals["not_compiling"] += 1
            out_module = cst.parse_module(out)
            remaining = torch_references(out_module, {"torch": "torch"})
            kept = [r for r in remaining if _is_kept(r)]
            remaining = [r for r in remaining if not _is_kept(r)]
            left.update(remaining)
            totals["remaining"] += len(remaining)
            totals["kept"] += len(kept)
    converted = totals["references"] - totals["remaining"] - totals["kept"]
    rate = converted / totals["references"] if totals["references"] else 1.0
    considered = totals["references"] - totals["kept"]
    rate_without_kept = converted / considered if considered else 1.0
    return {"root": root, "files": totals["files"], "references": totals["references"],
            "converted": converted, "kept": totals["kept"], "rate": round(rate, 4),
            "rate_without_kept": round(rate_without_kept, 4), "failed": totals["failed"],
            "not_compiling": totals["not_compiling"], "failures": failures,
            "top_unconverted": left.most_common(25)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dirs", nargs="+")
    parser.add_argument("--json")
    parser.add_argument("--all-files", action="store_true")
    args = parser.parse_args(argv)
    results = [measure(d, args.all_files) for d in args.dirs]
    print(f"{'tree':32} {'files':>5} {'refs':>6} {'converted':>9} {'kept':>5} {'rate':>6} "
          f"{'w/o kept':>8} {'failed':>6} {'!compile':>8}")
    for r in results:
        print(f"{os.path.basename(r['root'].rstrip('/')):32} {r['files']:5} {r['references']:6} "
              f"{r['converted']:9} {r['kept']:5} {r['rate']:6.1%} {r['rate_without_kept']:8.1%} "
              f"{r['failed']:6} {r['not_compiling']:8}")
    for r in results:
        print(f"\n{r['root']}: most frequent unconverted: " +
              ", ".join(f"{n} ×{c}" for n, c in r["top_unconverted"][:15]))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
