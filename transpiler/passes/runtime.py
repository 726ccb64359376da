"""Runtime concerns with no JAX counterpart: autograd contexts, seeding, backend flags.

* ``with torch.no_grad():`` and ``torch.inference_mode()`` blocks become plain blocks (JAX only
  differentiates where ``jax.grad`` is applied); the same decorators are dropped;
* ``torch.manual_seed(s)`` becomes ``rng_key = jax.random.PRNGKey(s)``, the key the converted
  random calls use; CUDA seeding and cudnn/TF32 switches are dropped (reported as info).
"""
from __future__ import annotations

import libcst as cst

from ..names import dotted, qualify
from .base import Rule

SEEDS = {"torch.manual_seed", "torch.random.manual_seed"}
DROPPED_CALLS = {"torch.cuda.manual_seed", "torch.cuda.manual_seed_all", "torch.cuda.empty_cache",
                 "torch.cuda.set_device",
                 "torch.cuda.synchronize", "torch.set_float32_matmul_precision",
                 "torch.use_deterministic_algorithms", "torch.backends.cudnn.enabled"}
DROPPED_FLAG_PREFIXES = ("torch.backends.cudnn.", "torch.backends.cuda.matmul.")

GRAD_CONTEXTS = {"torch.no_grad", "torch.inference_mode", "torch.enable_grad",
                 "torch.autograd.no_grad", "torch.set_grad_enabled"}
# context managers that select torch's attention kernel: XLA chooses its own
KERNEL_CONTEXTS = {"torch.nn.attention.sdpa_kernel", "torch.backends.cuda.sdp_kernel"}
# `with` contexts (and decorators) removed, their block kept, with the diagnostic each gets;
# the ops rule leaves these names to this rule
REMOVED_CONTEXTS = GRAD_CONTEXTS | KERNEL_CONTEXTS
_REMOVAL_REPORTS = [
    (GRAD_CONTEXTS, "JP402", "autograd context removed: JAX differentiates only under jax.grad"),
    (KERNEL_CONTEXTS, "JP401", "attention kernel selection removed: XLA picks the kernel"),
]


def _same_code(a: cst.CSTNode, b: cst.CSTNode) -> bool:
    return a.deep_equals(b)


class RuntimeRule(Rule):
    def _is_grad_context(self, expr: cst.BaseExpression) -> bool:
        func = expr.func if isinstance(expr, cst.Call) else expr
        return qualify(func, self.ctx.aliases) in REMOVED_CONTEXTS

    def leave_With(self, original: cst.With, updated: cst.With):
        keep = [i for o, i in zip(original.items, updated.items) if not self._is_grad_context(o.item)]
        if len(keep) == len(updated.items):
            return updated
        removed = {qualify(o.item.func if isinstance(o.item, cst.Call) else o.item, self.ctx.aliases)
                   for o in original.items}
        for names, code, message in _REMOVAL_REPORTS:
            if removed & names:
                self.ctx.report(original, code, message)
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

    def leave_SimpleStatementLine(self, original: cst.SimpleStatementLine, updated: cst.SimpleStatementLine):
        if len(original.body) != 1:
            return updated
        stmt = original.body[0]
        if isinstance(stmt, cst.Expr) and isinstance(stmt.value, cst.Call):
            q = qualify(stmt.value.func, self.ctx.aliases)
            if q in SEEDS and stmt.value.args:
                self.ctx.report(original, "JP404", "torch.manual_seed → rng_key = jax.random.PRNGKey(seed)")
                seed = updated.body[0].value.args[0].value if isinstance(updated.body[0], cst.Expr) \
                    and isinstance(updated.body[0].value, cst.Call) else stmt.value.args[0].value
                key = cst.Call(func=cst.parse_expression("jax.random.PRNGKey"), args=[cst.Arg(seed)])
                self.ctx.emits.add("jax")
                return updated.with_changes(body=[cst.Assign(
                    targets=[cst.AssignTarget(cst.Name("rng_key"))], value=key)])
            if q in DROPPED_CALLS:
                self.ctx.report(original, "JP401", f"{q}(...) has no JAX counterpart and was removed")
                return cst.RemoveFromParent()
        new = updated.body[0] if len(updated.body) == 1 else None
        if (isinstance(stmt, cst.Assign) and isinstance(new, cst.Assign) and len(new.targets) == 1
                and _same_code(new.targets[0].target, new.value) and _same_code(stmt.targets[0].target, new.value)
                and not _same_code(stmt.value, new.value)):
            # `x = x.to(device)` once the device move is gone: nothing left to do
            self.ctx.report(original, "JP401", "device transfer removed")
            return cst.RemoveFromParent()
        if isinstance(stmt, cst.Assign) and len(stmt.targets) == 1:
            q = qualify(stmt.targets[0].target, self.ctx.aliases) or ""
            if q.startswith(DROPPED_FLAG_PREFIXES):
                self.ctx.report(original, "JP401", f"{q} is a CUDA backend switch; removed")
                return cst.RemoveFromParent()
        return updated

    def leave_FunctionDef(self, original: cst.FunctionDef, updated: cst.FunctionDef):
        decorators = [d for o, d in zip(original.decorators, updated.decorators)
                      if not self._is_grad_context(o.decorator)]
        if len(decorators) != len(updated.decorators):
            self.ctx.report(original, "JP402", "autograd decorator removed")
            return updated.with_changes(decorators=decorators)
        return updated
