"""Imports of other libraries' torch integrations that have a JAX/flax flavour
(``from einops.layers.torch import Rearrange`` → ``from einops.layers.flax import Rearrange``),
redirected through ``mappings/third_party.toml``; calls of the imported names are adapted where
the flax flavour gathers extra keyword arguments into one field (``sizes=``)."""
from __future__ import annotations

import libcst as cst

from ..names import dotted
from .base import Rule


def _module_expr(path: str) -> cst.BaseExpression:
    return cst.parse_expression(path)


class ThirdPartyImportsRule(Rule):
    """``from <torch flavour> import a, b`` → ``from <JAX flavour> import a, b``."""

    def __init__(self, ctx) -> None:
        super().__init__(ctx)
        self.local_names: dict[str, dict] = {}   # local name → its `names` entry

    def visit_Module(self, node: cst.Module) -> None:
        for stmt in node.body:
            if not isinstance(stmt, cst.SimpleStatementLine):
                continue
            for small in stmt.body:
                if isinstance(small, cst.ImportFrom) and self._entry(small) is not None \
                        and not isinstance(small.names, cst.ImportStar):
                    known = self._entry(small).get("names", {})
                    for alias in small.names:
                        name = dotted(alias.name)
                        if name in known:
                            local = alias.asname.name.value if alias.asname else name
                            self.local_names[local] = known[name]

    def _entry(self, node: cst.ImportFrom) -> dict | None:
        if node.relative or node.module is None:
            return None
        return self.ctx.tables.third_party.get(dotted(node.module) or "")

    def leave_ImportFrom(self, original: cst.ImportFrom, updated: cst.ImportFrom):
        entry = self._entry(original)
        if entry is None:
            return updated
        path = dotted(original.module)
        if isinstance(original.names, cst.ImportStar):
            self.ctx.report(original, "JP101", f"from {path} import *: import the names you use "
                                               f"from {entry['to']} instead")
            return updated
        known = entry.get("names", {})
        missing = [dotted(a.name) for a in original.names if dotted(a.name) not in known]
        if missing:
            self.ctx.report(original, "JP101", f"{', '.join(missing)} from {path} has no counterpart "
                                               f"in {entry['to']}")
            return updated
        self.ctx.report(original, "JP106", f"{path} → {entry['to']}")
        return updated.with_changes(module=_module_expr(entry["to"]))

    def leave_Call(self, original: cst.Call, updated: cst.Call) -> cst.BaseExpression:
        if not isinstance(original.func, cst.Name) or original.func.value not in self.local_names:
            return updated
        spec = self.local_names[original.func.value]
        field = spec.get("extra_keywords")
        params = set(spec.get("params", ()))
        extra = [a for a in updated.args if a.keyword is not None and a.keyword.value not in params
                 and a.keyword.value not in ("name", field)]
        if not field or not extra or any(a.star for a in updated.args):
            return updated
        kept = [a for a in updated.args if a not in extra]
        entries = [cst.DictElement(cst.SimpleString(repr(a.keyword.value)), a.value,
                                   comma=cst.Comma(whitespace_after=cst.SimpleWhitespace(" "))
                                   if i < len(extra) - 1 else cst.MaybeSentinel.DEFAULT)
                   for i, a in enumerate(extra)]
        if kept:
            kept[-1] = kept[-1].with_changes(comma=cst.Comma(whitespace_after=cst.SimpleWhitespace(" ")))
        sizes = cst.Arg(keyword=cst.Name(field), value=cst.Dict(entries),
                        equal=cst.AssignEqual(whitespace_before=cst.SimpleWhitespace(""),
                                              whitespace_after=cst.SimpleWhitespace("")))
        return updated.with_changes(args=[*kept, sizes])
