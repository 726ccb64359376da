"""Plain classes that hold a model and its optimizer (``self.model`` / ``self.optimizer`` of a
``Trainer`` that is not an ``nn.Module``): their training steps keep the state on the instance
(``self.train_state``, None from ``__init__``, created at the first batch), and the class's
other uses of the model and the optimizer are rewritten around that state."""
from __future__ import annotations

import libcst as cst

from ...names import dotted, qualify
from .common import COMMA, OPTIMIZER_PREFIX, SCHEDULER_PREFIX, STATE, TrainerInfo
from .syntax import code_of, find_all, method_stmt

TRAINER_STATE = "self." + STATE

# what a trainer class may do with its model and optimizer attributes, besides calling the model
MODEL_METHODS = {"train", "eval", "state_dict", "load_state_dict", "parameters", "to", "cuda", "cpu"}
OPTIMIZER_METHODS = {"zero_grad", "step", "state_dict", "load_state_dict"}


def _self_attr(node) -> str | None:
    """``X`` of ``self.X``."""
    if isinstance(node, cst.Attribute) and isinstance(node.value, cst.Name) and node.value.value == "self":
        return node.attr.value
    return None


def unwrap_module(name: str | None) -> str | None:
    """``self.model.module`` (the model inside DistributedDataParallel) → ``self.model``."""
    while name and name.endswith(".module"):
        name = name[:-len(".module")]
    return name


class TrainerMixin:
    """Finds trainer classes (visit_Module) and rewrites their methods."""

    def _scan_trainers(self, node: cst.Module) -> None:
        for cls in [s for s in node.body if isinstance(s, cst.ClassDef)]:
            info = self._trainer_of(cls)
            if info is not None:
                self.trainers[cls.name.value] = info
                if info.problem is None:
                    self._plan_trainer(cls, info)

    def _plan_trainer(self, cls: cst.ClassDef, info: TrainerInfo) -> None:
        """Plans every training step of the class before any of it is converted: the class is
        rewritten around ``self.train_state`` only when all of them convert."""
        saved = self.trainer, self.class_depth, self.def_stack
        planned_before = set(self.plans)
        failed_before = set(self.failed)
        self.trainer, self.class_depth = info, 1
        try:
            for method in [s for s in cls.body.body if isinstance(s, cst.FunctionDef)]:
                self.def_stack = [method]
                self._plan_function(method)
                if id(method) in self.function_failed:
                    info.problem = self.function_failed[id(method)]
                for loop in find_all(method.body, cst.For):
                    self.visit_For(loop)
        finally:
            self.trainer, self.class_depth, self.def_stack = saved
        new_plans = [k for k in self.plans if k not in planned_before]
        new_failed = [k for k in self.failed if k not in failed_before]
        if new_failed and info.problem is None:
            info.problem = f"a training loop of the class is not converted ({self.failed[new_failed[0]]})"
        if not new_plans and info.problem is None:
            info.problem = ("its backward() and step() are not direct statements of a method's body or of a for "
                            "loop's body in a method")
        if info.problem is not None:
            for k in new_plans:
                plan = self.plans.pop(k)
                for s in plan.segment + plan.deferred + plan.removed:
                    self.segment_ids.pop(id(s), None)

    def _trainer_of(self, cls: cst.ClassDef) -> TrainerInfo | None:
        if any(dotted(b.value) != "object" for b in cls.bases) or cls.keywords:
            return None
        methods = [s for s in cls.body.body if isinstance(s, cst.FunctionDef)]
        statements = [(m, find_all(m, (cst.Assign, cst.SimpleStatementLine))) for m in methods]
        if not any(type(s) is cst.SimpleStatementLine and method_stmt(s, "backward") for _, nodes in statements
                   for s in nodes):
            return None     # (no training step in the class)
        info = TrainerInfo(cls.name.value, methods={m.name.value for m in methods})
        assigned: dict[str, list[cst.Assign]] = {}
        for m, nodes in statements:
            for a in nodes:
                if type(a) is cst.Assign:
                    for t in a.targets:
                        attr = _self_attr(t.target)
                        if attr is not None:
                            assigned.setdefault(attr, []).append(a)
        stepped: set[str] = set()
        steppers: list[cst.FunctionDef] = []
        for m, nodes in statements:
            for stmt in nodes:
                if type(stmt) is not cst.SimpleStatementLine:
                    continue
                found = method_stmt(stmt, "step")
                attr = _self_attr(found[0]) if found is not None else None
                if attr is not None and attr in assigned and not found[1].args:
                    stepped.add(attr)
                    if m not in steppers:
                        steppers.append(m)
        if not stepped:
            return None
        if len(stepped) > 1:
            info.problem = (f"the class steps {len(stepped)} optimizers ({', '.join(sorted(stepped))}): only a "
                            "class holding one model and its optimizer is converted")
            return info
        opt = stepped.pop()
        info.optimizer = f"self.{opt}"
        model = None
        for a in assigned[opt]:
            q = qualify(a.value.func, self.ctx.aliases) if isinstance(a.value, cst.Call) else None
            if q and q.startswith(OPTIMIZER_PREFIX) and a.value.args:
                first = a.value.args[0].value
                if isinstance(first, cst.Call) and isinstance(first.func, cst.Attribute) \
                        and first.func.attr.value == "parameters" and not first.args:
                    model = _self_attr(unwrap_module_node(first.func.value))
        if model is None:
            called = set()
            for m in steppers:
                for call in find_all(m, cst.Call):
                    attr = _self_attr(call.func)
                    if attr is not None and attr in assigned and attr not in info.methods and attr != opt \
                            and not any(self._loss_module(a.value) for a in assigned[attr]):
                        called.add(attr)
            if len(called) != 1:
                info.problem = (f"cannot tell which attribute is the model stepped by self.{opt} "
                                f"({', '.join(sorted(called)) or 'no self.<attribute>(...) call'})")
                return info
            model = called.pop()
        info.model = f"self.{model}"
        info.init = next((m for m in methods if m.name.value == "__init__"), None)
        if info.init is None:
            info.problem = "the class has no __init__ to start the training state in"
            return info
        if any((qualify(c.func, self.ctx.aliases) or "").startswith(SCHEDULER_PREFIX) for c in find_all(cls, cst.Call)):
            info.problem = "a learning-rate scheduler is built in the class (only schedulers of local optimizers " \
                           "are converted)"
            return info
        for attr in find_all(cls, cst.Attribute):
            owner = unwrap_module(dotted(attr.value))
            if owner == info.model and attr.attr.value not in MODEL_METHODS | {"module"}:
                info.problem = f"the class uses {code_of(attr)} (only calls, train()/eval() and state_dict() of the model are converted)"
                return info
            if owner == info.optimizer and attr.attr.value not in OPTIMIZER_METHODS:
                info.problem = f"the class uses {code_of(attr)} (only zero_grad(), step() and state_dict() of the optimizer are converted)"
                return info
        return info

    def _loss_module(self, value) -> bool:
        """``nn.MSELoss(...)``-like constructor calls (a loss module, not the model)."""
        q = qualify(value.func, self.ctx.aliases) if isinstance(value, cst.Call) else None
        entry = self.ctx.tables.functions.get(q) if q else None
        return bool(q) and (q.endswith("Loss") or (entry is not None and entry.key.endswith("Loss")))

    def _in_trainer(self) -> bool:
        """Inside a method (not a nested function) of a trainer class whose steps are converted."""
        return self.trainer is not None and self.trainer.problem is None and self.class_depth == 1 \
            and len(self.def_stack) == 1

    def _pairs(self) -> dict[str, str]:
        """optimizer → model, in the current scope."""
        if self._in_trainer():
            return {self.trainer.optimizer: self.trainer.model}
        return self.optimizers

    def _trainer_statement(self, original: cst.SimpleStatementLine, updated: cst.SimpleStatementLine):
        """Statements of a trainer method: train()/eval()/zero_grad() removed, state_dict loads
        restored into the state."""
        info = self.trainer
        held = {info.model, info.optimizer}
        for method in ("train", "eval", "zero_grad"):
            found = method_stmt(original, method)
            if found is not None and unwrap_module(dotted(found[0])) in held:
                self.ctx.report(original, "JP603", f"{dotted(found[0])}.{method}() removed: "
                                "train_step/eval_step pass the train flag; gradients are not accumulated")
                return cst.RemoveFromParent()
        found = method_stmt(original, "load_state_dict")
        if found is not None and unwrap_module(dotted(found[0])) in held and len(found[1].args) == 1 \
                and found[1].args[0].keyword is None and isinstance(updated.body[0], cst.Expr) \
                and isinstance(updated.body[0].value, cst.Call) and updated.body[0].value.args:
            owner = unwrap_module(dotted(found[0]))
            value = code_of(updated.body[0].value.args[0].value)
            helper = "load_model_state" if owner == info.model else "load_optimizer_state"
            self.ctx.emits.add(helper)
            self.ctx.report(original, "JP614", f"{owner}.load_state_dict(...) → {TRAINER_STATE} = {helper}("
                            f"{TRAINER_STATE}, ...): the saved arrays restored into the training state (which must "
                            "exist by then)")
            return cst.parse_statement(f"{TRAINER_STATE} = {helper}({TRAINER_STATE}, {value})\n").with_changes(
                leading_lines=updated.leading_lines)
        return updated

    def _trainer_call(self, original: cst.Call, updated: cst.Call) -> cst.BaseExpression:
        """Calls in a trainer method: the model's state_dict() → its variables in the state, a
        model call outside the step → eval_step on the state."""
        info = self.trainer
        func = original.func
        if isinstance(func, cst.Attribute) and func.attr.value == "state_dict" and not original.args:
            owner = unwrap_module(dotted(func.value))
            if owner == info.model:
                self.ctx.emits.add("model_variables")
                return cst.parse_expression(f"model_variables({TRAINER_STATE})")
            if owner == info.optimizer:
                return cst.parse_expression(f"{TRAINER_STATE}.opt_state")
        if unwrap_module(dotted(func)) == info.model and not self.segment_depth:
            if any(a.keyword is not None or a.star for a in updated.args):
                self.ctx.report(original, "JP606", f"{dotted(func)}(...) with keyword arguments is not converted")
                return updated
            self.ctx.emits.add("eval_step")
            return cst.Call(func=cst.Name("eval_step"),
                            args=[cst.Arg(cst.parse_expression(TRAINER_STATE), comma=COMMA), *updated.args])
        return updated

    def _trainer_init(self, original: cst.FunctionDef, updated: cst.FunctionDef) -> cst.FunctionDef:
        """``__init__`` of a trainer class ends with ``self.train_state = None``."""
        body = list(updated.body.body)
        body.append(cst.parse_statement(f"{TRAINER_STATE} = None\n"))
        self.ctx.report(original, "JP605", f"{self.trainer.name} keeps the training state in {TRAINER_STATE} "
                        f"(model {self.trainer.model}, optimizer {self.trainer.optimizer})")
        return updated.with_changes(body=updated.body.with_changes(body=body))


def unwrap_module_node(node):
    while isinstance(node, cst.Attribute) and node.attr.value == "module":
        node = node.value
    return node
