"""backward() and optimizer step() calls the rule does not convert: each gets JP602 with the
reason and what to do (never a silent ``.backward()`` on a JAX array)."""
from __future__ import annotations

import libcst as cst

from ...names import dotted, qualify
from ...walk import walk
from .common import OPTIMIZER_PREFIX
from .syntax import assigned_names, bound_names, children, code_of, find_all, method_stmt, named_calls, names_read

APPENDS = {"append", "extend", "appendleft", "insert"}


def _small_statements(node: cst.CSTNode, out: list) -> None:
    """Every (binding or mutating) statement in ``node``, nested blocks included, not inside
    nested functions or classes: (bound names, read expression or node) pairs."""
    t = type(node)
    if t in (cst.FunctionDef, cst.ClassDef, cst.Lambda):
        return
    if t is cst.For:
        out.append((bound_names(node.target), node.iter))
    elif t in (cst.Assign, cst.AugAssign, cst.AnnAssign) and node.value is not None:
        out.append((assigned_names(node), node.value))
    elif t is cst.Expr and isinstance(node.value, cst.Call) and isinstance(node.value.func, cst.Attribute) \
            and node.value.func.attr.value in APPENDS and dotted(node.value.func.value):
        out.append(([dotted(node.value.func.value)], node.value))
    for child in children(node):
        _small_statements(child, out)


def stored_reads(node: cst.CSTNode, owners: set[str]) -> list[str]:
    """``owner.attr`` reads in ``node`` that are values, not method calls (``policy.saved_log_probs``)."""
    out: list[str] = []

    def visit(n):
        if type(n) is cst.Call and isinstance(n.func, cst.Attribute):
            visit(n.func.value)         # self.pi(s): a call, not a stored value
            for a in n.args:
                visit(a)
            return
        if type(n) is cst.Attribute and isinstance(n.value, cst.Name) and n.value.value in owners:
            text = dotted(n)
            if text and text not in out:
                out.append(text)
            return
        for child in children(n):
            visit(child)
    visit(node)
    return out


def _calls_forward(node: cst.CSTNode, models: set[str], in_class: bool) -> bool:
    """Whether ``node`` runs a model: ``model(x)``, or in a method ``self(x)`` / ``self.pi(x)``."""
    if any(c.func.value in models or (in_class and c.func.value == "self") for c in named_calls(node)):
        return True
    if not in_class:
        return False
    found = []

    def visit(n):
        if type(n) is cst.Call and isinstance(n.func, cst.Attribute) and isinstance(n.func.value, cst.Name) \
                and n.func.value.value == "self":
            found.append(n)
        for child in children(n):
            visit(child)
    visit(node)
    return bool(found)


class _Path(cst.CSTVisitor):
    """The For / While statements around one statement."""

    def __init__(self, target) -> None:
        self.target, self.stack, self.found = target, [], None

    def visit_For(self, n) -> None:
        self.stack.append(n)

    def leave_For(self, n) -> None:
        self.stack.pop()

    def visit_While(self, n) -> None:
        self.stack.append(n)

    def leave_While(self, n) -> None:
        self.stack.pop()

    def visit_SimpleStatementLine(self, n) -> bool:
        if n is self.target:
            self.found = list(self.stack)
        return False


class LeftoversMixin:
    """JP602 on every backward() / optimizer step() left in the output."""

    @property
    def held(self) -> dict[str, str]:
        """Optimizers built in a class (``self.optimizer = optim.Adam(self.parameters())``):
        the attribute names → the classes holding them. Looked for on first use (only a
        ``self.x.step()`` left in the output asks)."""
        if self._held is None:
            self._held = {}
            for cls in [s for s in self.module_node.body if isinstance(s, cst.ClassDef)]:
                for fn in [s for s in cls.body.body if isinstance(s, cst.FunctionDef)]:
                    for found in find_all(fn, cst.Assign):
                        q = qualify(found.value.func, self.ctx.aliases) if isinstance(found.value, cst.Call) else None
                        if q and q.startswith(OPTIMIZER_PREFIX) and "lr_scheduler" not in q:
                            for t in found.targets:
                                if isinstance(t.target, cst.Attribute) and dotted(t.target.value) == "self":
                                    self._held[t.target.attr.value] = cls.name.value
        return self._held

    def _covered(self, loop: cst.CSTNode) -> None:
        """The backward() / step() statements of a loop that gets its own JP602."""
        for stmt in find_all(loop, cst.SimpleStatementLine):
            if method_stmt(stmt, "backward") or self._optimizer_step(stmt):
                self.covered.add(id(stmt))

    def _optimizer_step(self, stmt) -> str | None:
        found = method_stmt(stmt, "step")
        if found is None:
            return None
        name = self._stepped(stmt)
        if name is not None:
            return name
        receiver = found[0]
        if self.trainer is not None and dotted(receiver) == self.trainer.optimizer and not found[1].args:
            return self.trainer.optimizer
        if isinstance(receiver, cst.Attribute) and receiver.attr.value in self.held and not found[1].args:
            return dotted(receiver) or receiver.attr.value
        return None

    def _check_leftover(self, original: cst.SimpleStatementLine) -> None:
        if id(original) in self.segment_ids or id(original) in self.covered:
            return
        backward = method_stmt(original, "backward")
        optimizer = None if backward else self._optimizer_step(original)
        if backward is None and optimizer is None:
            return
        scope = self.def_stack[-1] if self.def_stack else self.module_node
        if backward is not None:
            what, reason = f"{code_of(backward[0])}.backward()", self._leftover_reason(original, scope)
        else:
            first = next((s for s in find_all(scope, cst.SimpleStatementLine) if method_stmt(s, "backward")), None)
            what = f"{optimizer}.step()"
            reason = self._leftover_reason(first, scope, optimizer) if first is not None else \
                "no backward() before it in this function: the gradients come from elsewhere"
        self.ctx.report(original, "JP602", f"{what} not converted: {reason}")

    def _leftover_reason(self, stmt, scope, optimizer: str | None = None) -> str:
        reasons = []
        cls = self.class_stack[-1].name.value if self.class_stack else None
        held = [a for a, c in self.held.items() if c == cls] if cls else []
        if optimizer and optimizer.startswith("self.") and optimizer.split(".", 1)[1] in self.held:
            held = [optimizer.split(".", 1)[1]]
        trainer = self.trainer if self.trainer is not None and self.trainer.problem else None
        if held and trainer is None and cls not in self.trainers:
            reasons.append(f"the optimizer is an attribute of the module (self.{held[0]}): keep the optimizer and "
                           "its state outside the flax module, and write the update as a jitted function of the "
                           "parameters (jax.value_and_grad + optax)")
        loss = method_stmt(stmt, "backward")[0]
        sources, forward = self._loss_sources(loss, scope, cls is not None)
        if not forward:
            where = f" ({', '.join(sources)})" if sources else ""
            reasons.append(f"the loss is built from tensors computed outside this function{where}: in JAX the "
                           "forward pass must run inside the differentiated function — store the inputs (states and "
                           "actions), recompute the outputs (log-probabilities, values) in a loss function")
        if reasons:
            return "; ".join(reasons)
        if trainer is not None:
            return f"the class {trainer.name} holds the optimizer, and {trainer.problem}"
        path = _Path(stmt)
        walk(scope, path)
        loops = path.found or []
        if loops and isinstance(loops[-1], cst.While):
            return ("the training loop is a while loop: only a for loop holding zero_grad / forward / backward / "
                    "step becomes a jitted train_step")
        failed = self.function_failed.get(id(scope))
        if not loops and failed:
            return f"backward() outside a for loop, in a single-step function not converted: {failed}"
        if not loops:
            return ("backward() outside a for loop: only a for loop whose body holds zero_grad / forward / "
                    "backward / step becomes a jitted train_step — move this code into the training loop, or "
                    "write the train step by hand (jax.value_and_grad + optax)")
        if not self.optimizers:
            return ("no optimizer built from model.parameters() (or parameter groups of one model) was found: "
                    "the rule converts a loop only for such an optimizer")
        return "backward() is not a direct statement of a training loop's body (zero_grad / forward / backward / step)"

    def _loss_sources(self, loss, scope, in_class: bool) -> tuple[list[str], bool]:
        """What the loss is computed from in ``scope``: the stored values it reads
        (``policy.saved_log_probs``, ``self.data``) and whether a forward pass is among its sources."""
        bindings: list = []
        body = scope.body if hasattr(scope, "body") else scope
        for stmt in body if isinstance(body, (list, tuple)) else [body]:   # a Module's body is a sequence
            _small_statements(stmt, bindings)
        needed = set(names_read(loss))
        sources = [loss]
        changed = True
        used: set[int] = set()
        while changed:
            changed = False
            for i, (bound, value) in enumerate(bindings):
                if i in used or not set(bound) & needed:
                    continue
                used.add(i)
                sources.append(value)
                needed |= names_read(value)
                changed = True
        forward = any(_calls_forward(v, self.models, in_class) for v in sources)
        owners = set(self.models) | ({"self"} if in_class else set())
        stored: list[str] = []
        for v in sources:
            stored += [s for s in stored_reads(v, owners) if s not in stored]
        filled = self._filled_by_forward()
        return [s for s in stored if s in filled] or stored, forward

    def _filled_by_forward(self) -> set[str]:
        """``X.attr`` lists appended to with a model's output (``policy.saved_log_probs.append(m.log_prob(a))``
        where ``m`` comes from ``policy(state)``), anywhere in the module's functions."""
        if hasattr(self, "_filled"):
            return self._filled
        self._filled: set[str] = set()
        for info in self.functions.values():
            bindings: list = []
            _small_statements(info.node.body, bindings)
            tainted: set[str] = set()
            for bound, value in bindings:
                if _calls_forward(value, self.models, False) or names_read(value) & tainted:
                    if isinstance(value, cst.Call) and isinstance(value.func, cst.Attribute) \
                            and value.func.attr.value in APPENDS:
                        self._filled.add(bound[0])
                    else:
                        tainted |= set(bound)
        return self._filled
