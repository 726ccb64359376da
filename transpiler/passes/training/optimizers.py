"""Optimizers: learning-rate injection, parameter groups (optax.multi_transform), param_groups
lr writes."""
from __future__ import annotations

import libcst as cst

from ...names import dotted, qualify
from ...walk import transform
from .common import COMMA
from .syntax import code_of, names_read


def inject_learning_rate(expr: cst.BaseExpression) -> cst.BaseExpression | None:
    """Wrap the call of a converted optimizer that takes ``learning_rate=`` in
    ``optax.inject_hyperparams`` (``optax.sgd(learning_rate=0.1)`` →
    ``optax.inject_hyperparams(optax.sgd)(learning_rate=0.1)``), so a scheduler can set it."""
    wrap = _InjectLearningRate()
    out = transform(expr, wrap)
    return out if wrap.found else None


class _InjectLearningRate(cst.CSTTransformer):
    """Wraps the first call that takes ``learning_rate=`` (inside out)."""

    def __init__(self) -> None:
        super().__init__()
        self.found = False

    def leave_Call(self, original: cst.Call, updated: cst.Call) -> cst.BaseExpression:
        if self.found or not any(a.keyword is not None and a.keyword.value == "learning_rate" for a in updated.args):
            return updated
        self.found = True
        inject = cst.Call(func=cst.parse_expression("optax.inject_hyperparams"), args=[cst.Arg(updated.func)])
        return updated.with_changes(func=inject)


def param_groups_owner(expr) -> str | None:
    """``opt.param_groups`` → "opt"."""
    if isinstance(expr, cst.Attribute) and expr.attr.value == "param_groups":
        return dotted(expr.value)
    return None


def lr_write(loop: cst.For) -> cst.BaseExpression | None:
    """``for g in opt.param_groups: g["lr"] = value`` (value not reading g) → value."""
    if not isinstance(loop.target, cst.Name) or loop.orelse is not None or len(loop.body.body) != 1:
        return None
    stmt = loop.body.body[0]
    if not (isinstance(stmt, cst.SimpleStatementLine) and len(stmt.body) == 1 and isinstance(stmt.body[0], cst.Assign)):
        return None
    assign = stmt.body[0]
    if len(assign.targets) != 1:
        return None
    target = assign.targets[0].target
    if not (isinstance(target, cst.Subscript) and isinstance(target.value, cst.Name)
            and target.value.value == loop.target.value and len(target.slice) == 1
            and isinstance(target.slice[0].slice, cst.Index)
            and isinstance(target.slice[0].slice.value, cst.SimpleString)
            and target.slice[0].slice.value.evaluated_value == "lr"):
        return None
    if loop.target.value in names_read(assign.value):
        return None
    return assign.value


def parameter_selector(expr):
    """``[p for n, p in M.named_parameters() if cond]`` / ``[p for p in M.parameters() if cond]``
    → (M, name variable or None, param variable, conditions)."""
    if not isinstance(expr, cst.ListComp) or not isinstance(expr.elt, cst.Name):
        return None
    comp = expr.for_in
    if comp.inner_for_in is not None or comp.asynchronous is not None:
        return None
    it = comp.iter
    if not (isinstance(it, cst.Call) and isinstance(it.func, cst.Attribute) and not it.args):
        return None
    model = dotted(it.func.value)
    if model is None:
        return None
    if it.func.attr.value == "named_parameters" and isinstance(comp.target, cst.Tuple) \
            and len(comp.target.elements) == 2 and all(isinstance(e.value, cst.Name) for e in comp.target.elements):
        name_var, param_var = (e.value.value for e in comp.target.elements)
    elif it.func.attr.value == "parameters" and isinstance(comp.target, cst.Name):
        name_var, param_var = None, comp.target.value
    else:
        return None
    if expr.elt.value != param_var:
        return None
    return model, name_var, param_var, [c.test for c in comp.ifs]


def submodule_parameters(expr):
    """``M.sub.parameters()`` → (M, "sub."): a group holding one submodule's parameters."""
    if isinstance(expr, cst.Call) and isinstance(expr.func, cst.Attribute) and expr.func.attr.value == "parameters" \
            and not expr.args:
        path = dotted(expr.func.value)
        if path and "." in path:
            head, _, rest = path.partition(".")
            return head, rest + "."
    return None


def selector_lambda(expr) -> str | None:
    """The predicate ``lambda name, param: ...`` of a (converted) parameter selector."""
    sel = parameter_selector(expr)
    if sel is not None:
        _, name_var, param_var, conds = sel
        test = " and ".join(f"({code_of(c)})" if len(conds) > 1 else code_of(c) for c in conds) or "True"
        return f"lambda {name_var or '_name'}, {param_var}: {test}"
    sub = submodule_parameters(expr)
    if sub is not None:
        return f"lambda name, param: name.startswith({sub[1]!r})"
    if isinstance(expr, cst.Call) and isinstance(expr.func, cst.Attribute) and expr.func.attr.value == "parameters":
        return "lambda name, param: True"
    return None


class OptimizerMixin:
    """Parameter groups of an optimizer → optax.multi_transform (JP604, JP608)."""

    def _parameter_groups(self, value: cst.BaseExpression):
        """``[{"params": decay, "weight_decay": 0.1}, {"params": no_decay, ...}]`` (or a name
        bound to such a list) → (model, [(label, params expression, the group's dict)]) when
        every group's parameters are a selector over one model (a comprehension over
        ``M.named_parameters()`` / ``M.parameters()``, or ``M.sub.parameters()``)."""
        if isinstance(value, cst.Name) and value.value in self.lists:
            value = self.lists[value.value]
        if not isinstance(value, cst.List) or not value.elements:
            return None
        models, groups = set(), []
        for i, el in enumerate(value.elements):
            d = el.value
            if not isinstance(d, cst.Dict):
                return None
            params = None
            for item in d.elements:
                if not isinstance(item, cst.DictElement) or not isinstance(item.key, cst.SimpleString):
                    return None
                if item.key.evaluated_value == "params":
                    params = item.value
            if params is None:
                return None
            if isinstance(params, cst.Name) and params.value in self.selectors:
                models.add(self.selectors[params.value])
                label = params.value
            elif submodule_parameters(params) is not None:
                models.add(submodule_parameters(params)[0])
                label = f"group_{i}"
            else:
                return None
            groups.append((label, params, d))
        if len(models) != 1 or len({g[0] for g in groups}) != len(groups):
            return None
        return models.pop(), groups

    def _selector_used(self, name: str) -> bool:
        return any(label == name for groups in self.groups.values() for label, _, _ in groups)

    def _multi_transform(self, original, name: str, call: cst.Call) -> cst.BaseExpression | None:
        """An optimizer over parameter groups → ``optax.multi_transform`` with one optax
        optimizer per group (the call's hyperparameters with the group's own on top) and
        labels chosen by the groups' selectors."""
        from ...render import render_call
        entry = self.ctx.tables.functions.get(qualify(call.func, self.ctx.aliases) or "")
        if entry is None:
            return None
        inject = name in self.schedulers.values() or name in self.lr_written
        transforms, selectors = [], []
        base = [a for a in call.args[1:]]
        for label, params, group in self.groups[name]:
            overrides = {}
            for item in group.elements:
                key = item.key.evaluated_value
                if key != "params":
                    overrides[key] = item.value
            args = [cst.Arg(cst.Name("params"), comma=COMMA)]
            for a in base:
                if a.keyword is not None and a.keyword.value in overrides:
                    continue
                args.append(a.with_changes(comma=COMMA))
            for key, value in overrides.items():
                args.append(cst.Arg(value, keyword=cst.Name(key), comma=COMMA,
                                    equal=cst.AssignEqual(whitespace_before=cst.SimpleWhitespace(""),
                                                          whitespace_after=cst.SimpleWhitespace(""))))
            args[-1] = args[-1].with_changes(comma=cst.MaybeSentinel.DEFAULT)
            result = render_call(entry, args)
            if result.expr is None:
                self.ctx.report(original, "JP604", f"parameter group {label!r} not converted: {result.message}")
                return None
            if result.code:
                self.ctx.report(original, result.code, result.message)
            self.ctx.emits |= result.emits
            expr = result.expr
            if inject:
                expr = inject_learning_rate(expr) or expr
            transforms.append(f'"{label}": {code_of(expr)}')
            if isinstance(params, cst.Name):
                selectors.append(f'"{label}": {label}')
            else:
                selectors.append(f'"{label}": {selector_lambda(params)}')
        self.ctx.emits |= {"param_group_labels", "optax"}
        self.ctx.report(original, "JP608", f"{len(transforms)} parameter groups → optax.multi_transform, each "
                        "parameter labelled by its group's selector (parameters in no group are frozen, as in torch)")
        text = (f"optax.multi_transform({{{', '.join(transforms)}, \"frozen\": optax.set_to_zero()}}, "
                f"param_group_labels({{{', '.join(selectors)}}}))")
        return cst.parse_expression(text)

    def _check_groups(self, original) -> None:
        stmt = original.body[0]
        if isinstance(stmt, cst.Assign) and isinstance(stmt.value, cst.Call) and stmt.value.args:
            first = stmt.value.args[0].value
            ok = isinstance(first, cst.Call) and isinstance(first.func, cst.Attribute) \
                and first.func.attr.value == "parameters"
            if not ok:
                self.ctx.report(original, "JP604", "optimizer parameter groups / parameter lists are not "
                                "converted: every parameter gets the same hyperparameters")
