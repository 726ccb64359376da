"""Resolve torch import aliases once per file, with a light pass of our own.

libcst's QualifiedNameProvider costs ~7x a bare parse; a file's torch aliases are almost
always plain imports, so we read the import statements once and qualify dotted names by
looking up their head. ``F.relu`` → ``torch.nn.functional.relu`` after
``import torch.nn.functional as F``; ``Adam`` → ``torch.optim.Adam`` after
``from torch.optim import Adam``.
"""
from __future__ import annotations

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
        if node.relative:
            return False
        base = _module_name(node.module)
        if isinstance(node.names, cst.ImportStar):
            return False
        if not _is_torch(base):
            for alias in node.names:
                local = dotted(alias.asname.name) if alias.asname is not None else dotted(alias.name)
                if local:
                    self.other_imports.add(local)
            return False
        for alias in node.names:
            name = dotted(alias.name)
            local = dotted(alias.asname.name) if alias.asname is not None else name
            if name and local:
                self.aliases[local] = f"{base}.{name}"
        return False


def collect_aliases(module: cst.Module) -> dict[str, str]:
    return collect_imports(module).aliases


def collect_imports(module: cst.Module) -> AliasCollector:
    """Torch aliases and the other imported names of a module, in one visit."""
    from .walk import walk
    collector = AliasCollector()
    walk(module, collector)
    return collector


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
