"""One traversal, several concerns: a transformer that dispatches each node to every rule.

A rule is a plain object with libcst-style ``visit_<Node>(node)`` and
``leave_<Node>(original, updated)`` methods. Rules run in a fixed order on each node; a leave
hook that changes a node's type ends the chain for that node. The composite also turns the
diagnostics reported inside a statement into ``# jaxport: CODE message`` comment lines above
that statement.
"""
from __future__ import annotations

from typing import Sequence

import libcst as cst

from ..context import FileContext
from .. import walk as _walk
from ..walk import skipped_types, transform, walk  # noqa: F401  (the passes' tree walks)

MARKER_PREFIX = "# jaxport: "
HELPERS_BANNER = "# --- helpers added by jaxport (PyTorch semantics in JAX) ---"


def prelude_helper_names() -> set[str]:
    from ..prelude_index import helpers
    return set(helpers())


class Rule:
    def __init__(self, ctx: FileContext) -> None:
        self.ctx = ctx


def marker_lines(diags) -> list[cst.EmptyLine]:
    seen: set[str] = set()
    lines = []
    for d in diags:
        text = f"{MARKER_PREFIX}{d.code} {d.message}".replace("\n", " ")
        if text in seen:
            continue
        seen.add(text)
        lines.append(cst.EmptyLine(indent=True, comment=cst.Comment(text)))
    return lines


def _with_markers(node, markers: list[cst.EmptyLine]):
    if not markers:
        return node
    if isinstance(node, cst.FlattenSentinel):
        nodes = list(node.nodes)
        if nodes:
            nodes[0] = _with_markers(nodes[0], markers)
        return cst.FlattenSentinel(nodes)
    if isinstance(node, (cst.SimpleStatementLine, cst.BaseCompoundStatement)) and hasattr(node, "leading_lines"):
        existing = [l for l in node.leading_lines
                    if not (l.comment and l.comment.value.startswith(MARKER_PREFIX))]
        return node.with_changes(leading_lines=[*existing, *markers])
    return node


class Composite(cst.CSTTransformer):
    def __init__(self, ctx: FileContext, rules: Sequence[Rule]) -> None:
        super().__init__()
        self.ctx = ctx
        self.rules = list(rules)
        self._visit_hooks: dict[str, list] = {}
        self._helpers_present = False
        self._untouched: set[int] = set()
        self._leave_hooks: dict[str, list] = {}
        self._kinds: dict[type, tuple[bool, list, list]] = {}

    def skipped_types(self) -> frozenset:
        """Token types no rule hooks: :func:`transform` need not show them to the composite."""
        return skipped_types(*self.rules)

    def _hooks(self, cache: dict, prefix: str, type_name: str) -> list:
        hooks = cache.get(type_name)
        if hooks is None:
            hooks = [h for r in self.rules if (h := getattr(r, f"{prefix}{type_name}", None))]
            cache[type_name] = hooks
        return hooks

    def visit_Module(self, node: cst.Module) -> bool:
        # a file converted before carries copies of our helpers: they are JAX already
        self._helpers_present = any(
            l.comment is not None and l.comment.value == HELPERS_BANNER
            for stmt in node.body for l in getattr(stmt, "leading_lines", ()))
        return True

    def _kind(self, t: type) -> tuple[bool, list, list]:
        """(is a statement, visit hooks, leave hooks) of a node type, looked up once."""
        kind = self._kinds.get(t)
        if kind is None:
            name = t.__name__
            kind = self._kinds[t] = (issubclass(t, (cst.SimpleStatementLine, cst.BaseCompoundStatement)),
                                     self._hooks(self._visit_hooks, "visit_", name),
                                     self._hooks(self._leave_hooks, "leave_", name))
        return kind

    def on_visit(self, node: cst.CSTNode) -> bool:
        t = type(node)
        statement, visit_hooks, _ = self._kinds.get(t) or self._kind(t)
        if t is cst.Module:
            self.visit_Module(node)
        if statement:
            self.ctx.statement_stack.append([])
            if self._helpers_present and isinstance(node, (cst.FunctionDef, cst.ClassDef)) \
                    and node.name.value in prelude_helper_names():
                self._untouched.add(id(node))   # no rule sees it, on the way in or out
                return False
        descend = True
        for hook in visit_hooks:
            if hook(node) is False:
                descend = False
        return descend

    def on_leave(self, original: cst.CSTNode, updated: cst.CSTNode):
        if self._untouched and id(original) in self._untouched:
            self.ctx.statement_stack.pop()
            return updated
        result = updated
        t = type(original)
        statement, _, leave_hooks = self._kinds.get(t) or self._kind(t)
        if leave_hooks:
            type_name = t.__name__
            for hook in leave_hooks:
                result = hook(original, result)
                if not isinstance(result, cst.CSTNode) or type(result).__name__ != type_name:
                    break
        if statement:
            pending = self.ctx.statement_stack.pop()
            if pending:
                if isinstance(result, cst.RemovalSentinel) or (
                        isinstance(result, cst.FlattenSentinel) and not result.nodes):
                    if self.ctx.statement_stack:
                        self.ctx.statement_stack[-1].extend(pending)
                else:
                    result = _with_markers(result, marker_lines(pending))
        return result

    def fused_transform(self, node: cst.CSTNode, skip: frozenset | None = None):
        """``transform(node, self, skip)`` (:func:`transpiler.walk.transform`, which hands a
        composite to this method; ``skip`` by default :meth:`skipped_types`) with
        :meth:`on_visit` and :meth:`on_leave` inlined: the same hook calls in the same order
        and the same result, with less work per node."""
        if skip is None:
            skip = self.skipped_types()
        kinds, kind_of = self._kinds, self._kind
        fields_of, child_fields = _walk.fields_table(skip)
        transform_children = _walk.transform_children
        ctx, untouched = self.ctx, self._untouched
        module_type, defs = cst.Module, (cst.FunctionDef, cst.ClassDef)
        removal, flatten, node_base = cst.RemovalSentinel, cst.FlattenSentinel, cst.CSTNode

        def rec(node):
            t = type(node)
            statement, visit_hooks, leave_hooks = kinds.get(t) or kind_of(t)
            # -- on_visit
            if t is module_type:
                self.visit_Module(node)
            descend = True
            if statement:
                ctx.statement_stack.append([])
                if self._helpers_present and isinstance(node, defs) \
                        and node.name.value in prelude_helper_names():
                    untouched.add(id(node))   # no rule sees it, on the way in or out
                    descend = False
            if descend:
                for hook in visit_hooks:
                    if hook(node) is False:
                        descend = False
            # -- children
            updated = transform_children(node, rec, fields_of.get(t) or child_fields(node), skip) \
                if descend else node
            # -- on_leave
            if untouched and id(node) in untouched:
                ctx.statement_stack.pop()
                return updated
            result = updated
            if leave_hooks:
                type_name = t.__name__
                for hook in leave_hooks:
                    result = hook(node, result)
                    rt = type(result)
                    if rt is not t and (not isinstance(result, node_base) or rt.__name__ != type_name):
                        break
            if statement:
                pending = ctx.statement_stack.pop()
                if pending:
                    if isinstance(result, removal) or (isinstance(result, flatten) and not result.nodes):
                        if ctx.statement_stack:
                            ctx.statement_stack[-1].extend(pending)
                    else:
                        result = _with_markers(result, marker_lines(pending))
            if type(result) is not t and not isinstance(result, (node_base, removal, flatten)):
                raise cst.CSTValidationError("Expected a node of type CSTNode or a RemovalSentinel, "
                                             f"but got a return value of {type(result).__name__}")
            return result

        return rec(node)
