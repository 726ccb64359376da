"""Resolve torch import aliases once per file, with a light pass of our own.

libcst's QualifiedNameProvider costs ~7x a bare parse; a file's torch aliases are almost
always plain imports, so we read the import statements once and qualify dotted names by
looking up their head. ``F.relu`` → ``torch.nn.functional.relu`` after
``import torch.nn.functional as F``; ``Adam`` → ``torch.optim.Adam`` after
``from torch.optim import Adam``.
"""
from __future__ import annotations

from functools import lru_cache
from keyword import iskeyword

import re

import libcst as cst

ROOTS = ("torch",)


_Attribute, _Name = cst.Attribute, cst.Name     # final node classes: type(...) is, not isinstance


def dotted(node: cst.CSTNode) -> str | None:
    """``a.b.c`` for a Name/Attribute chain, else None."""
    if type(node) is _Name:
        return node.value
    parts: list[str] = []
    while type(node) is _Attribute:
        parts.append(node.attr.value)
        node = node.value
    if type(node) is _Name:
        parts.append(node.value)
        return ".".join(reversed(parts))
    return None


def _module_name(node: cst.BaseExpression | None) -> str:
    return dotted(node) or "" if node is not None else ""


def _is_torch(name: str) -> bool:
    return name.split(".", 1)[0] in ROOTS


class AliasCollector(cst.CSTVisitor):
    """Collects ``local name → qualified torch name`` from every import in a module.

    Imports are statements: the visitor walks statements and blocks only, never expressions,
    which keeps this pass a small fraction of a parse."""

    walk_tokens = False      # nothing to learn from whitespace and punctuation
    walk_expressions = False  # nor from expressions (transpiler.walk skips them)

    def on_visit(self, node: cst.CSTNode) -> bool:
        if isinstance(node, cst.BaseExpression):
            return False
        return super().on_visit(node)

    def __init__(self) -> None:
        self.aliases: dict[str, str] = {}
        self.other_imports: set[str] = set()    # names bound by non-torch imports (math, np)
        self.star_imports: list[tuple[int, str]] = []   # ``from .parts import *``: (dots, module)
        self.from_imports: list[tuple[int, str, str, str]] = []  # non-torch (dots, module, name, local)

    def visit_Import(self, node: cst.Import) -> bool:
        for alias in node.names:
            full = _module_name(alias.name)
            if not _is_torch(full):
                local = dotted(alias.asname.name) if alias.asname is not None else full.split(".", 1)[0]
                if local:
                    self.other_imports.add(local)
                continue
            if alias.asname is not None:
                local = dotted(alias.asname.name)
                if local:
                    self.aliases[local] = full
            else:
                head = full.split(".", 1)[0]
                self.aliases[head] = head
        return False

    def visit_ImportFrom(self, node: cst.ImportFrom) -> bool:
        base = _module_name(node.module)
        if isinstance(node.names, cst.ImportStar):
            if not _is_torch(base) or node.relative:
                self.star_imports.append((len(node.relative), base))
            return False
        if node.relative or not _is_torch(base):
            for alias in node.names:
                name = dotted(alias.name)
                local = dotted(alias.asname.name) if alias.asname is not None else name
                if local:
                    if not node.relative:
                        self.other_imports.add(local)
                    self.from_imports.append((len(node.relative), base, name, local))
            return False
        for alias in node.names:
            name = dotted(alias.name)
            local = dotted(alias.asname.name) if alias.asname is not None else name
            if name and local:
                self.aliases[local] = f"{base}.{name}"
        return False


def _local_module(origin: str, dots: int, name: str):
    """The file that ``from <dots><name> import ...`` in ``origin`` reads when it is a module
    of the same source tree: ``dots`` directories up for a relative import, a sibling module
    for an absolute one. None when there is no such file."""
    from pathlib import Path
    base = Path(origin).parent
    for _ in range(max(dots - 1, 0)):
        base = base.parent
    stem = base.joinpath(*name.split(".")) if name else base
    for candidate in (stem.with_suffix(".py"), stem / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


@lru_cache(maxsize=256)
def _module_summary(path: str, mtime: float):
    """(torch aliases, star imports, nn.Module subclasses, ``__all__``) of a local module."""
    import ast
    try:
        text = open(path, encoding="utf-8").read()
        module = cst.parse_module(text)
    except (OSError, UnicodeDecodeError, cst.ParserSyntaxError):
        return None
    imported = collect_imports(module)
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return None
    classes = _module_classes(tree, imported.aliases)
    return imported.aliases, tuple(imported.star_imports), frozenset(classes), _declared_all(ast, tree)


def _summary_of(candidate):
    try:
        return _module_summary(str(candidate.resolve()), candidate.stat().st_mtime)
    except OSError:
        return None


def _module_classes(tree, aliases: dict[str, str]) -> set[str]:
    """Classes of a module that subclass torch's nn.Module (directly or through each other)."""
    bases: dict[str, list[str]] = {}
    import ast
    for stmt in tree.body:
        if isinstance(stmt, ast.ClassDef):
            bases[stmt.name] = [ast.unparse(b) for b in stmt.bases]
    modules: set[str] = set()
    changed = True
    while changed:
        changed = False
        for name, names in bases.items():
            if name in modules:
                continue
            for base in names:
                head, _, rest = base.partition(".")
                qualified = aliases.get(head)
                full = f"{qualified}.{rest}" if qualified and rest else qualified
                if full in ("torch.nn.Module", "torch.nn.modules.module.Module") or base in modules:
                    modules.add(name)
                    changed = True
                    break
    return modules


def star_import_aliases(origin: str | None, star_imports: list[tuple[int, str]],
                        seen: frozenset[str] = frozenset()) -> dict[str, str]:
    """The torch aliases a file receives through ``from <local module> import *``.

    ``from .unet_parts import *`` binds every public module-level name of unet_parts.py,
    its ``import torch.nn as nn`` included, so ``nn.Module`` in the importing file is
    torch's. ``origin`` is the importing file on disk; a module not found beside it, or
    names its ``__all__`` leaves out, contribute nothing."""
    found: dict[str, str] = {}
    for local, qualified in _star_names(origin, star_imports, seen, aliases=True):
        found.setdefault(local, qualified)
    return found


def _star_names(origin, star_imports, seen, aliases: bool):
    if not origin:
        return
    for dots, name in star_imports:
        candidate = _local_module(origin, dots, name)
        key = str(candidate.resolve()) if candidate is not None else None
        if candidate is None or key in seen:
            continue
        summary = _summary_of(candidate)
        if summary is None:
            continue
        module_aliases, stars, classes, public = summary
        names = dict(module_aliases) if aliases else {c: c for c in classes}
        for local, value in _star_names(key, list(stars), seen | {key}, aliases):
            names.setdefault(local, value)
        for local, value in names.items():
            if not local.startswith("_") and (public is None or local in public):
                yield local, value


def local_module_classes(origin: str | None, imports: "AliasCollector") -> set[str]:
    """Names this file imports from modules of its own source tree (``from .parts import
    DoubleConv``, ``from models import Net``, star imports) that are nn.Module subclasses
    there: jaxport converts those modules too, so their classes take the ``train`` flag."""
    if not origin:
        return set()
    found = {local for local, _ in _star_names(origin, imports.star_imports, frozenset(), aliases=False)}
    for dots, module, name, local in imports.from_imports:
        candidate = _local_module(origin, dots, module)
        summary = _summary_of(candidate) if candidate is not None else None
        if summary is not None and name in summary[2]:
            found.add(local)
    return found


def _declared_all(ast, tree) -> frozenset[str] | None:
    """The names of a literal ``__all__ = [...]`` at module level, else None."""
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in stmt.targets):
            try:
                return frozenset(ast.literal_eval(stmt.value))
            except ValueError:
                return None
    return None


def collect_aliases(module: cst.Module) -> dict[str, str]:
    return collect_imports(module).aliases


# An import that is not a top-level statement of its own: indented (in a function, a class,
# a try or if block), after a colon (``if x: import y``) or after a semicolon.
NESTED_IMPORT = re.compile(r"^[ \t]+(?:import|from)\b|[:;][ \t]*(?:import|from)\b", re.MULTILINE)


def imports_only_at_top_level(text: str | None) -> bool:
    """Whether the source ``text`` certainly has all its imports as top-level statements of
    their own (False when unknown)."""
    return text is not None and NESTED_IMPORT.search(text) is None


def collect_imports(module: cst.Module, text: str | None = None) -> AliasCollector:
    """Torch aliases and the other imported names of a module, in one visit (of its top-level
    statements only when its source ``text`` has no import below them)."""
    from .walk import walk
    collector = AliasCollector()
    if imports_only_at_top_level(text):
        for stmt in module.body:
            if isinstance(stmt, cst.SimpleStatementLine):
                walk(stmt, collector)
    else:
        walk(module, collector)
    return collector


def qualified_expr(name: str) -> cst.BaseExpression:
    """The expression spelling the dotted ``name``: the tree ``cst.parse_expression(name)``
    makes, built directly (parsing costs about a hundred times more)."""
    parts = name.split(".")
    if not all(part.isidentifier() and not iskeyword(part) for part in parts):
        return cst.parse_expression(name)
    expr: cst.BaseExpression = cst.Name(parts[0])
    for part in parts[1:]:
        expr = cst.Attribute(value=expr, attr=cst.Name(part))
    return expr


def qualify(node: cst.CSTNode, aliases: dict[str, str]) -> str | None:
    """The qualified torch name of a Name/Attribute chain, or None if it is not torch's."""
    parts: list[str] = []
    while type(node) is _Attribute:
        parts.append(node.attr.value)
        node = node.value
    if type(node) is not _Name:
        return None
    target = aliases.get(node.value)        # the head: only torch's aliases are in the table
    if target is None or not parts:
        return target
    parts.append(target)
    return ".".join(reversed(parts))
