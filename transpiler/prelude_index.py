"""Index the helper definitions in ``transpiler/prelude/*.py`` without importing them (the
conversion path must not import jax), and produce the source of the helpers a file needs.
The index is cached on disk (:mod:`transpiler.cache`, keyed by the prelude's bytes)."""
from __future__ import annotations

import ast
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path


@dataclass(frozen=True)
class Helper:
    name: str
    source: str
    order: tuple[str, int]            # (file, line) to keep the emitted order stable
    helpers: frozenset[str]           # other helpers it uses
    imports: frozenset[str]           # names provided by imports (jnp, nn, ...)


def _free_names(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}


def _prelude_files() -> list:
    from .cache import package_files
    return [e for e in package_files("transpiler.prelude") if e.name.endswith(".py") and e.name != "__init__.py"]


def _sources() -> list:
    return [*_prelude_files(), Path(__file__).resolve()]


@lru_cache(maxsize=1)
def helpers() -> dict[str, Helper]:
    from .cache import cached
    table, statements = cached("prelude", _sources, _index)
    _IMPORT_STATEMENTS.clear()
    _IMPORT_STATEMENTS.update(statements)
    return table


def _index() -> tuple[dict[str, Helper], dict[str, str]]:
    """(helpers by name, the import statement that binds each imported name)."""
    raw: dict[str, tuple[str, ast.stmt, str, int]] = {}
    import_names: set[str] = set()
    statements: dict[str, str] = {}
    for entry in _prelude_files():
        text = entry.read_text(encoding="utf-8")
        tree = ast.parse(text)
        lines = text.splitlines()
        for stmt in tree.body:
            if isinstance(stmt, (ast.Import, ast.ImportFrom)):
                for alias in stmt.names:
                    bound = (alias.asname or alias.name).split(".")[0]
                    import_names.add(bound)
                    if isinstance(stmt, ast.Import):
                        statement = f"import {alias.name}" + (f" as {alias.asname}" if alias.asname else "")
                    else:
                        statement = f"from {stmt.module} import {alias.name}" + (f" as {alias.asname}" if alias.asname else "")
                    statements.setdefault(bound, statement)
                continue
            if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant):
                continue  # module docstring
            if isinstance(stmt, (ast.FunctionDef, ast.ClassDef)):
                name = stmt.name
            elif isinstance(stmt, (ast.Assign, ast.AnnAssign)):
                target = stmt.targets[0] if isinstance(stmt, ast.Assign) else stmt.target
                name = target.id  # type: ignore[attr-defined]
            else:
                raise ValueError(f"prelude/{entry.name}:{stmt.lineno}: only definitions allowed")
            if name in raw:
                raise ValueError(f"prelude helper {name!r} defined twice")
            decorators = getattr(stmt, "decorator_list", None) or []
            first = min([stmt.lineno, *(d.lineno for d in decorators)]) - 1
            segment = "\n".join(lines[first: stmt.end_lineno])
            start = first
            raw[name] = (segment, stmt, entry.name, start)
    out = {}
    for name, (segment, stmt, file, line) in raw.items():
        names = _free_names(stmt)
        out[name] = Helper(name, segment, (file, line),
                           frozenset(n for n in names if n in raw and n != name),
                           frozenset(n for n in names if n in import_names))
    return out, statements


_IMPORT_STATEMENTS: dict[str, str] = {}


def import_statement(name: str) -> str | None:
    """The import statement the prelude files use to bind ``name`` (``inspect``, ``nn``)."""
    helpers()
    return _IMPORT_STATEMENTS.get(name)


def closure(names: set[str]) -> list[Helper]:
    """The helpers named, plus the helpers they use, in a stable definition order."""
    table = helpers()
    seen: set[str] = set()
    stack = [n for n in names if n in table]
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        stack.extend(table[n].helpers)
    return sorted((table[n] for n in seen), key=lambda h: h.order)
