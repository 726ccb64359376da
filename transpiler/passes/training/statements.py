"""Statement and call rewrites outside the step: train()/eval()/zero_grad() removal,
schedulers, checkpoints, GradScaler/autocast, eval_step calls, functions that take and
return the state."""
from __future__ import annotations

import libcst as cst

from ...names import dotted, qualify
from ...walk import transform
from .common import COMMA, HOST_SCHEDULERS, OPTIMIZER_PREFIX, RNG_KEY, SCALERS, SCHEDULER_PREFIX, STATE
from .optimizers import inject_learning_rate, selector_lambda
from .rng import added_keys
from .syntax import add_kwarg, assigned_names, code_of, ends_with_return, is_docstring, method_stmt, with_param


class Returns(cst.CSTTransformer):
    def visit_FunctionDef(self, node) -> bool:
        return False

    def visit_Lambda(self, node) -> bool:
        return False

    def leave_Return(self, original: cst.Return, updated: cst.Return) -> cst.Return:
        if updated.value is None:
            return updated.with_changes(value=cst.Name(STATE))
        value = updated.value
        if isinstance(value, cst.Tuple) and not value.lpar:
            elements = [cst.Element(cst.Name(STATE), comma=COMMA), *value.elements]
        else:
            elements = [cst.Element(cst.Name(STATE), comma=COMMA), cst.Element(value)]
        return updated.with_changes(value=cst.Tuple(elements, lpar=[], rpar=[]),
                                    whitespace_after_return=cst.SimpleWhitespace(" "))


class StatementsMixin:
    """The rewrites of single statements, calls, with blocks and functions."""

    def visit_SimpleStatementLine(self, node) -> None:
        if id(node) in self.segment_ids:
            self.segment_depth += 1

    def leave_SimpleStatementLine(self, original: cst.SimpleStatementLine, updated: cst.SimpleStatementLine):
        self._check_leftover(original)
        result = self._leave_simple(original, updated)
        if id(original) in self.track_ids:
            nodes = list(result.nodes) if isinstance(result, cst.FlattenSentinel) else [result]
            first = nodes[0] if nodes else None
            if isinstance(first, cst.SimpleStatementLine):
                self.converted[id(original)] = first
                self.converted_all[id(original)] = [n for n in nodes if isinstance(n, cst.SimpleStatementLine)]
        return result

    def _leave_simple(self, original: cst.SimpleStatementLine, updated: cst.SimpleStatementLine):
        if id(original) in self.segment_ids:
            self.segment_depth -= 1
            if added_keys(original, updated) > 0:
                self._swap_pending("JP403", "JP612", "random op in the training step: its key is split from "
                                   "the training state's key at every step")
            self.converted[id(original)] = updated
            if id(original) in self.outer_removed:
                return cst.RemoveFromParent()
            return updated
        if not self.class_depth:
            updated = self._thread_key(original, updated)
            if isinstance(updated, cst.FlattenSentinel):
                return updated
        if self._in_trainer() and len(original.body) == 1:
            return self._trainer_statement(original, updated)
        if self.class_depth or len(original.body) != 1:
            return updated
        stmt = original.body[0]
        if isinstance(stmt, cst.Assign) and isinstance(stmt.value, cst.Call):
            q = qualify(stmt.value.func, self.ctx.aliases) or ""
            if q.startswith(OPTIMIZER_PREFIX) and not q.startswith(SCHEDULER_PREFIX) \
                    and not (len(stmt.targets) == 1 and dotted(stmt.targets[0].target) in self.groups):
                self._check_groups(original)
        if isinstance(stmt, cst.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0].target, cst.Name) \
                and stmt.targets[0].target.value in self.selectors and self._selector_used(stmt.targets[0].target.value):
            lam = selector_lambda(updated.body[0].value) if isinstance(updated.body[0], cst.Assign) else None
            if lam is not None:
                return updated.with_changes(body=[updated.body[0].with_changes(value=cst.parse_expression(lam))])
        found = method_stmt(original, "step")
        if found is not None and dotted(found[0]) in self.plateau and len(found[1].args) == 1 \
                and found[1].args[0].keyword is None:
            call = method_stmt(updated, "step")
            if call is not None:
                metric = code_of(call[1].args[0].value)
                st = self._opt_state(self.schedulers.get(dotted(found[0])))
                return cst.parse_statement(f"{st} = {dotted(found[0])}.step({st}, {metric})\n").with_changes(
                    leading_lines=updated.leading_lines)
        if found is not None and dotted(found[0]) in self.schedulers and found[1].args:
            self.ctx.report(original, "JP606", f"{dotted(found[0])}.step(...) with a metric is not converted")
            return updated
        if not self.optimizers:
            return updated
        # model.train() / model.eval() / optimizer.zero_grad()
        for method in ("train", "eval", "zero_grad"):
            found = method_stmt(original, method)
            if found is not None and dotted(found[0]) in (self.models | set(self.optimizers)):
                fn = self._function()
                if method in ("train", "eval") and fn is not None:
                    self.mode[fn] = method
                self.ctx.report(original, "JP603", f"{dotted(found[0])}.{method}() removed: "
                                "train_step/eval_step pass the train flag; gradients are not accumulated")
                return cst.RemoveFromParent()
        found = method_stmt(original, "step")
        if found is not None and dotted(found[0]) in self.schedulers:
            st = self._opt_state(self.schedulers.get(dotted(found[0])))
            return cst.parse_statement(f"{st} = {dotted(found[0])}.step({st})\n").with_changes(
                leading_lines=updated.leading_lines)
        if isinstance(stmt, cst.Assign) and len(stmt.targets) == 1 and isinstance(stmt.value, cst.Call) \
                and qualify(stmt.value.func, self.ctx.aliases) in SCALERS:
            self._swap_pending("JP101", "JP613", "GradScaler removed: the converted step computes in float32, "
                               "where loss scaling is not needed; scaler.scale(loss).backward() / scaler.step(opt) "
                               "are the plain backward() / step()")
            return updated.with_changes(body=[updated.body[0].with_changes(value=cst.Name("None"))])
        for method in ("update", "unscale_"):
            found = method_stmt(original, method)
            if found is not None and dotted(found[0]) in self.scalers:
                return cst.RemoveFromParent()
        found = method_stmt(original, "load_state_dict")
        if found is not None and dotted(found[0]) in (self.models | set(self.optimizers)) \
                and len(found[1].args) == 1 and found[1].args[0].keyword is None \
                and isinstance(updated.body[0], cst.Expr) and isinstance(updated.body[0].value, cst.Call):
            owner = dotted(found[0])
            value = code_of(updated.body[0].value.args[0].value)
            helper = "load_model_state" if owner in self.models else "load_optimizer_state"
            st = self._state(owner) if owner in self.models else self._opt_state(owner)
            self.ctx.emits.add(helper)
            self.ctx.report(original, "JP614", f"{owner}.load_state_dict(...) → {st} = {helper}({st}, ...): the "
                            "saved arrays restored into the training state (which must exist by then)")
            return cst.parse_statement(f"{st} = {helper}({st}, {value})\n").with_changes(
                leading_lines=updated.leading_lines)
        found = method_stmt(original, "load_state_dict")
        if found is not None and dotted(found[0]) in (self.models | set(self.optimizers)):
            self.ctx.report(original, "JP606", f"{dotted(found[0])}.load_state_dict(...) not converted: "
                            "restore into the TrainState, e.g. state = state.replace(params=...)")
            return updated
        if isinstance(stmt, cst.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0].target, cst.Name):
            name = stmt.targets[0].target.value
            if name in self.optimizers and isinstance(updated.body[0], cst.Assign):
                value = updated.body[0].value
                if name in self.groups:
                    value = self._multi_transform(original, name, stmt.value) or value
                elif name in self.schedulers.values() or name in self.lr_written:
                    wrapped = inject_learning_rate(value)
                    if wrapped is not None:
                        value = wrapped
                new = updated.with_changes(body=[updated.body[0].with_changes(value=value)])
                if not self._scope_trains():
                    return new      # a function that only builds (and returns) the optimizer
                return cst.FlattenSentinel([new, cst.parse_statement(f"{self._opt_state(name)} = None\n")])
            q = qualify(stmt.value.func, self.ctx.aliases) if isinstance(stmt.value, cst.Call) else None
            if name in self.schedulers and q in HOST_SCHEDULERS and isinstance(updated.body[0], cst.Assign) \
                    and isinstance(updated.body[0].value, cst.Call):
                helper = HOST_SCHEDULERS[q]
                self._swap_pending("JP101", "JP607", f"{q.rsplit('.', 1)[1]} → {helper} (prelude, host-side)")
                self.ctx.emits.add(helper)
                updated = updated.with_changes(body=[updated.body[0].with_changes(
                    value=updated.body[0].value.with_changes(func=cst.Name(helper)))])
            if name in self.schedulers and isinstance(updated.body[0], cst.Assign) \
                    and code_of(updated.body[0].value).split("(")[0] in ("TorchLRScheduler", *HOST_SCHEDULERS.values()):
                self.ctx.report(original, "JP607", f"{name} drives {self.schedulers[name]} through "
                                "optax.inject_hyperparams; step() → state = scheduler.step(state)")
                opt = self.schedulers[name]
                return cst.FlattenSentinel([updated, cst.parse_statement(f"{opt} = {name}.optimizer\n")])
        return self._thread_calls(original, updated)

    def _scope_trains(self) -> bool:
        """Whether the function being converted (True at module level) trains, evaluates or
        checkpoints a model, or calls a function that does: it needs the state it creates."""
        fn = self._function()
        if fn is None or fn not in self.functions:
            return True
        info = self.functions[fn]
        if info.trains is None:     # (what it depends on is known from the pre-scan on)
            info.trains = self._function_trains(fn, info)
        return info.trains

    def _function_trains(self, fn: str, info) -> bool:
        if self._calls_model(info):
            return True
        text = self._body_text(info)
        if ".backward(" in text or any(
                f"{m}.state_dict(" in text or f"{m}.load_state_dict(" in text for m in self.models | set(self.optimizers)):
            return True
        if any(f"{s}.step(" in text for s in self.schedulers):
            return True
        return any(self.functions[c].needs for c in info.called if c in self.functions and c != fn)

    def _thread_calls(self, original, updated):
        """``train(...)`` of a state-changing function → ``state = train(..., state=state)``."""
        if not self.optimizers or self.multi:
            return updated
        stmt = original.body[0]
        call = None
        if isinstance(stmt, cst.Expr) and isinstance(stmt.value, cst.Call):
            call = stmt.value
        elif isinstance(stmt, cst.Assign) and isinstance(stmt.value, cst.Call) and len(stmt.targets) == 1:
            call = stmt.value
        if call is None or not isinstance(call.func, cst.Name):
            return updated
        info = self.functions.get(call.func.value)
        if info is None or not info.returns or info.creates:
            return updated
        new = updated.body[0]
        if isinstance(new, cst.Expr):
            return updated.with_changes(body=[cst.Assign(targets=[cst.AssignTarget(cst.Name(STATE))], value=new.value)])
        if isinstance(new, cst.Assign):
            target = new.targets[0].target
            if isinstance(target, (cst.Tuple, cst.List)) and not (isinstance(target, cst.Tuple) and target.lpar) \
                    and not _returns_flat_tuple(info.node, len(target.elements)):
                target = target.with_changes(lpar=[cst.LeftParen()], rpar=[cst.RightParen()]) \
                    if isinstance(target, cst.Tuple) else target
            elements = [cst.Element(cst.Name(STATE)), cst.Element(target)]
            return updated.with_changes(body=[new.with_changes(
                targets=[cst.AssignTarget(cst.Tuple(elements, lpar=[], rpar=[]))])])
        return updated

    def leave_Call(self, original: cst.Call, updated: cst.Call) -> cst.BaseExpression:
        updated = self._key_argument(original, updated)
        if self._in_trainer():
            return self._trainer_call(original, updated)
        if not self.optimizers or self.class_depth:
            return updated
        func = original.func
        if isinstance(func, cst.Attribute) and func.attr.value == "state_dict" and not original.args:
            owner = dotted(func.value)
            if owner in self.models:
                self.ctx.emits.add("model_variables")
                return cst.parse_expression(f"model_variables({self._state(owner)})")
            if owner in self.optimizers:
                return cst.parse_expression(f"{self._opt_state(owner)}.opt_state")
        if isinstance(func, cst.Name) and func.value in self.functions and self.functions[func.value].needs \
                and not self.functions[func.value].creates and not self.multi:
            if not any(a.keyword is not None and a.keyword.value == STATE for a in updated.args):
                return add_kwarg(updated, STATE, cst.Name(STATE))
        if isinstance(func, cst.Name) and func.value in self.models and not self.segment_depth:
            fn = self._function()
            if self.multi and fn is not None and fn in self.functions and not self.functions[fn].creates \
                    and any(info.creates for info in self.functions.values()):   # (module-level states are globals)
                st = self._state(func.value)
                self.ctx.report(original, "JP606", f"{func.value}(...) in {fn}(): with several models the training "
                                f"states are not passed to functions, and {st} does not exist here: call the model "
                                f"where its optimizer is built, or pass {st} in (created before this call) and use "
                                f"eval_step({st}, ...)")
            if fn is not None and self.mode.get(fn) == "train":
                self.ctx.report(original, "JP606", f"{func.value}(...) in training mode outside the training step "
                                "is evaluated in eval mode (dropout off, BatchNorm running statistics)")
            if any(a.keyword is not None or a.star for a in updated.args):
                self.ctx.report(original, "JP606", f"{func.value}(...) with keyword arguments is not converted")
                return updated
            self.ctx.emits.add("eval_step")
            return cst.Call(func=cst.Name("eval_step"),
                            args=[cst.Arg(cst.Name(self._state(func.value)), comma=COMMA), *updated.args])
        return updated

    def leave_With(self, original: cst.With, updated: cst.With):
        if not self._autocast(original):
            return updated
        for code in ("JP101", "JP201"):     # JP201: the ops rule's Float32Context() approximation
            self._swap_pending(code, "JP613", "autocast removed: this block computes in float32 (mixed precision "
                               "is a dtype policy in flax: dtype=jnp.bfloat16 on the layers, float32 params)")
        body = updated.body
        if not isinstance(body, cst.IndentedBlock):
            return cst.FlattenSentinel([cst.SimpleStatementLine(body=list(body.body))])
        stmts = list(body.body)
        if stmts:
            stmts[0] = stmts[0].with_changes(leading_lines=[*updated.leading_lines, *stmts[0].leading_lines])
        return cst.FlattenSentinel(stmts)

    def leave_FunctionDef(self, original: cst.FunctionDef, updated: cst.FunctionDef):
        plan = self.plans.get(id(original))
        if plan is not None and plan.function:
            updated = self._leave_step_function(original, updated, plan)
        if self._in_trainer() and original is self.trainer.init:
            updated = self._trainer_init(original, updated)
        name = self.function_stack.pop() if self.function_stack else None
        if self.def_stack:
            self.def_stack.pop()
        if self.function_stack or self.class_depth or name is None:
            return updated
        updated = self._key_parameter(name, original, updated)
        if name in self.global_key:
            decl = cst.parse_statement(f"global {RNG_KEY}\n")
            body = list(updated.body.body)
            at = 1 if body and is_docstring(body[0]) else 0
            updated = updated.with_changes(body=updated.body.with_changes(body=[*body[:at], decl, *body[at:]]))
        info = self.functions.get(name)
        if info is None or info.creates or not info.needs or self.multi:
            return updated
        params = with_param(updated.params, STATE)
        self.ctx.report(original, "JP605", f"{name}() takes the training state"
                        + (" and returns it" if info.returns else ""))
        updated = updated.with_changes(params=params)
        if info.returns:
            body = list(updated.body.body)
            body = [transform(s, Returns()) for s in body]
            if not body or not ends_with_return(body[-1]):
                body.append(cst.parse_statement(f"return {STATE}\n"))
            updated = updated.with_changes(body=updated.body.with_changes(body=body))
        return updated

    def _leave_step_function(self, original: cst.FunctionDef, updated: cst.FunctionDef, plan) -> cst.FunctionDef:
        """A single-step function: its body with the segment replaced by the train_step call,
        its array parameters converted by to_jax first."""
        params = set(assigned_names(original.params))
        stmts = list(updated.body.body)
        at = 1 if stmts and is_docstring(stmts[0]) else 0
        body = self._emit_step(original, stmts[at:], plan, boundary=[])
        boundary = [n for n in plan.inputs if n in params and n not in plan.static and n != "self"]
        if boundary:
            self.ctx.emits.add("to_jax")
            names, values = ", ".join(boundary), ", ".join(f"to_jax({n})" for n in boundary)
            first = body[0] if body else None
            lead = first.leading_lines if first is not None else []
            if first is not None:
                body[0] = first.with_changes(leading_lines=[])
            body.insert(0, cst.parse_statement(f"{names} = {values}\n").with_changes(leading_lines=lead))
        where = f"{plan.trainer}.{original.name.value}" if plan.trainer else original.name.value
        kept = f"; the state is kept in {plan.state}" if plan.trainer else ""
        self.ctx.report(original, "JP601", f"single-step function {where}() → jitted {plan.step_name}(state, ...) "
                        f"with jax.value_and_grad and optax{kept}")
        return updated.with_changes(body=updated.body.with_changes(body=[*stmts[:at], *body]))


def _returns_flat_tuple(fn: cst.FunctionDef, size: int) -> bool:
    """Every ``return`` of ``fn`` (not of nested functions) returns an unparenthesised tuple of
    ``size`` values (which ``Returns`` extends with the state: the caller unpacks them all)."""
    found: list[bool] = []

    class Visitor(cst.CSTVisitor):
        def visit_FunctionDef(self, node) -> bool:
            return node is fn

        def visit_Lambda(self, node) -> bool:
            return False

        def visit_Return(self, node) -> None:
            v = node.value
            found.append(isinstance(v, cst.Tuple) and not v.lpar and len(v.elements) == size
                         and not any(isinstance(e, cst.StarredElement) for e in v.elements))
    fn.visit(Visitor())
    return bool(found) and all(found)
