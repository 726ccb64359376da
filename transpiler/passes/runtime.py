"""Runtime concerns with no JAX counterpart in model code: autograd contexts.

``with torch.no_grad():`` and ``torch.inference_mode()`` blocks become plain blocks (JAX only
differentiates where ``jax.grad`` is applied); the same decorators are dropped.
"""
from __future__ import annotations

import libcst as cst

from ..names import qualify
from .base import Rule

GRAD_CONTEXTS = {"torch.no_grad", "torch.inference_mode", "torch.enable_grad",
                 "torch.autograd.no_grad", "torch.set_grad_enabled"}


class RuntimeRule(Rule):
    def _is_grad_context(self, expr: cst.BaseExpression) -> bool:
        func = expr.func if isinstance(expr, cst.Call) else expr
        return qualify(func, self.ctx.aliases) in GRAD_CONTEXTS

    def leave_With(self, original: cst.With, updated: cst.With):
        keep = [i for o, i in zip(original.items, updated.items) if not self._is_grad_context(o.item)]
        if len(keep) == len(updated.items):
            return updated
        self.ctx.report(original, "JP402", "autograd context removed: JAX differentiates only under jax.grad")
        if keep:
            keep[-1] = keep[-1].with_changes(comma=cst.MaybeSentinel.DEFAULT)
            return updated.with_changes(items=keep)
        body = updated.body
        if isinstance(body, cst.IndentedBlock):
            stmts = list(body.body)
            if stmts:
                stmts[0] = stmts[0].with_changes(leading_lines=[*updated.leading_lines, *stmts[0].leading_lines])
            return cst.FlattenSentinel(stmts)
        return cst.FlattenSentinel([cst.SimpleStatementLine(body=list(body.body))])

    def leave_FunctionDef(self, original: cst.FunctionDef, updated: cst.FunctionDef):
        decorators = [d for o, d in zip(original.decorators, updated.decorators)
                      if not self._is_grad_context(o.decorator)]
        if len(decorators) != len(updated.decorators):
            self.ctx.report(original, "JP402", "autograd decorator removed")
            return updated.with_changes(decorators=decorators)
        return updated
