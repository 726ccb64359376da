"""Fold torch weight-initialisation code into flax initializers.

torch initialises in place after construction; flax builds parameters from initializers. The
three idioms of ``__init__`` are recognised and become ``kernel_init=``/``bias_init=``/...
arguments of the layers they touch (or the initializer of a ``self.param``):

* direct calls: ``nn.init.xavier_uniform_(self.fc.weight)``, ``self.fc.bias.data.zero_()``,
  ``nn.init.trunc_normal_(self.cls_token, std=0.02)``;
* ``for m in self.modules(): if isinstance(m, nn.Conv2d): nn.init.kaiming_normal_(m.weight)``;
* ``self.apply(self._init_weights)`` with the same isinstance dispatch in the function.

Loops and ``self.apply`` reach the layers of the class and of the converted submodules it
builds, as torch's ``self.modules()`` does. Anything the analysis does not understand is left
to the modules pass, which comments it out with JP305.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import libcst as cst

from ..names import dotted, qualify
from ..render import render_call
from ..template import references
from ..walk import transform, walk

METHOD_FORMS = {"normal_", "uniform_", "fill_", "zero_"}


@dataclass
class InitPlan:
    call_overrides: dict[int, dict[str, cst.BaseExpression]] = field(default_factory=dict)
    param_overrides: dict[tuple[str, str], cst.BaseExpression] = field(default_factory=dict)
    consumed: set[int] = field(default_factory=set)          # statements folded into the plan
    removed_methods: set[tuple[str, str]] = field(default_factory=set)
    emits: set[str] = field(default_factory=set)


class _Lazy:
    """A value computed on first use (a class's layer calls: most classes never need them)."""

    def __init__(self, compute) -> None:
        self._compute, self._value = compute, None

    @property
    def value(self):
        if self._compute is not None:
            self._value, self._compute = self._compute(), None
        return self._value


@dataclass
class _Rule:
    layers: set[str]                                    # qualified torch layer names
    inits: dict[str, cst.BaseExpression]                # torch param name → initializer


class _Planner:
    def __init__(self, module: cst.Module, classes: dict, ctx) -> None:
        self.ctx = ctx
        self.classes = classes
        self.classdefs = {s.name.value: s for s in module.body if isinstance(s, cst.ClassDef)}
        self.functions = {s.name.value: s for s in module.body if isinstance(s, cst.FunctionDef)}
        self.plan = InitPlan()
        self._layer_calls: dict[str, list] = {}
        self.applied_functions: dict[str, int] = {}   # module-level init function → folded uses

    # ---------------------------------------------------------------- one init statement
    def initializer(self, call: cst.Call) -> tuple[str, cst.BaseExpression] | None:
        """(target dotted name, flax initializer) for an init call, else None."""
        q = qualify(call.func, self.ctx.aliases)
        tables = self.ctx.tables.initializers
        if q is not None and q in tables and call.args:
            entry, args, target = tables[q], call.args, call.args[0].value
        elif isinstance(call.func, cst.Attribute) and call.func.attr.value in METHOD_FORMS:
            entry = tables.get(f"Tensor.{call.func.attr.value}")
            target = call.func.value
            if isinstance(target, cst.Attribute) and target.attr.value == "data":
                target = target.value
            args = [cst.Arg(target), *call.args]
        else:
            return None
        if isinstance(target, cst.Attribute) and target.attr.value == "data":
            target = target.value          # nn.init.normal_(m.weight.data, ...)
        name = dotted(target)
        if entry is None or name is None:
            return None
        rendered = render_call(entry, args)
        if rendered.expr is None:
            return None
        self.plan.emits |= rendered.emits
        return name, rendered.expr

    # ---------------------------------------------------------------- isinstance dispatch
    def rules(self, body, var: str) -> list[_Rule] | None:
        out: list[_Rule] = []
        class_name_var = None
        for stmt in body:
            if class_name_var is None and _class_name_binding(stmt, var):
                class_name_var = _class_name_binding(stmt, var)
                continue
            if isinstance(stmt, cst.If):
                branch: cst.If | None = stmt
                while branch is not None:
                    rule = self._branch(branch, var, class_name_var)
                    if rule is None:
                        return None
                    out.append(rule)
                    orelse = branch.orelse
                    if isinstance(orelse, cst.Else):
                        return None if orelse.body.body else out
                    branch = orelse
                continue
            if isinstance(stmt, cst.SimpleStatementLine) and all(isinstance(s, cst.Pass) for s in stmt.body):
                continue
            return None
        return out

    def _branch(self, branch: cst.If, var: str, class_name_var: str | None = None) -> _Rule | None:
        layers = self._dispatch_layers(branch.test, var, class_name_var)
        if not layers:
            return None
        inits: dict[str, cst.BaseExpression] = {}
        if not self._collect(branch.body.body, var, inits):
            return None
        return _Rule(layers, inits)

    def _dispatch_layers(self, test, var: str, class_name_var: str | None) -> set[str] | None:
        """The torch layers an ``if`` of an init function selects: ``isinstance(m, (A, B))``,
        ``type(m) == A``, or DCGAN's ``classname.find('Conv') != -1`` / ``'Conv' in classname``
        on ``classname = m.__class__.__name__`` (every table layer whose name contains it)."""
        layers_table = self.ctx.tables.layers
        if isinstance(test, cst.Call) and dotted(test.func) == "isinstance" and len(test.args) == 2 \
                and dotted(test.args[0].value) == var:
            kinds = test.args[1].value
            names = [e.value for e in kinds.elements] if isinstance(kinds, (cst.Tuple, cst.List)) else [kinds]
        elif isinstance(test, cst.Comparison) and len(test.comparisons) == 1:
            op, right = test.comparisons[0].operator, test.comparisons[0].comparator
            left = test.left
            if isinstance(left, cst.Call) and dotted(left.func) == "type" and len(left.args) == 1 \
                    and dotted(left.args[0].value) == var and isinstance(op, (cst.Equal, cst.Is, cst.In)):
                names = [e.value for e in right.elements] if isinstance(right, (cst.Tuple, cst.List)) else [right]
            else:
                fragment = _class_name_test(left, op, right, class_name_var)
                if fragment is None:
                    return None
                return {q for q in layers_table if fragment in q.rsplit(".", 1)[-1]} or None
        else:
            return None
        layers = {qualify(n, self.ctx.aliases) for n in names}
        if None in layers or not all(l in layers_table for l in layers):
            return None
        return layers

    def _collect(self, stmts, var: str, inits: dict) -> bool:
        for stmt in stmts:
            if isinstance(stmt, cst.If) and stmt.orelse is None:
                # `if m.bias is not None:` (or `exists(m.bias)`, `m.bias is not None and ...`)
                # guards the bias init: flax layers without a bias ignore bias_init
                if _is_bias_guard(stmt.test, var):
                    if not self._collect(stmt.body.body, var, inits):
                        return False
                    continue
                return False
            if not (isinstance(stmt, cst.SimpleStatementLine) and len(stmt.body) == 1
                    and isinstance(stmt.body[0], cst.Expr) and isinstance(stmt.body[0].value, cst.Call)):
                return False
            found = self.initializer(stmt.body[0].value)
            if found is None:
                return False
            target, init = found
            parts = target.split(".")
            if len(parts) != 2 or parts[0] != var:
                return False
            inits[parts[1]] = init
        return True

    # ---------------------------------------------------------------- per class
    def layer_calls(self, class_name: str) -> list[tuple[str, cst.Call, str | None]]:
        """(qualified layer, call, attribute it is assigned to) for every layer built in the
        constructor and setup helpers of a class (computed once per class)."""
        if class_name not in self._layer_calls:
            self._layer_calls[class_name] = self._find_layer_calls(class_name)
        return self._layer_calls[class_name]

    def _find_layer_calls(self, class_name: str) -> list[tuple[str, cst.Call, str | None]]:
        cls = self.classdefs.get(class_name)
        info = self.classes.get(class_name)
        if cls is None or info is None:
            return []
        found: list[tuple[str, cst.Call, str | None]] = []
        aliases, layers = self.ctx.aliases, self.ctx.tables.layers
        for stmt in cls.body.body:
            if not (isinstance(stmt, cst.FunctionDef)
                    and (stmt.name.value == "__init__" or stmt.name.value in info.setup_helpers)):
                continue
            direct: dict[int, str] = {}   # id(call) → attribute it is assigned to

            class _Calls(cst.CSTVisitor):
                # one walk: an assignment is visited before the call that is its value
                def visit_Assign(self, node: cst.Assign) -> None:
                    target = dotted(node.targets[0].target) if len(node.targets) == 1 else None
                    if target and target.startswith("self.") and target.count(".") == 1 \
                            and isinstance(node.value, cst.Call):
                        direct[id(node.value)] = target[5:]

                def visit_Call(self, node: cst.Call) -> None:
                    q = qualify(node.func, aliases)
                    if q in layers:
                        found.append((q, node, direct.get(id(node))))

            walk(stmt, _Calls())
        return found

    def reachable(self, class_name: str) -> list[str]:
        seen, stack = [], [class_name]
        while stack:
            name = stack.pop()
            if name in seen or name not in self.classdefs:
                continue
            seen.append(name)
            cls = self.classdefs[name]
            for n in _called_names(cls):
                if n in self.classes and n not in seen:
                    stack.append(n)
        return seen

    def apply_rules(self, class_name: str, rules: list[_Rule]) -> bool:
        """Give the matching layers of the class (and of the converted classes it builds) the
        rules' initializers. Refused (False, nothing changed) when an initializer reads ``self``
        and would land in another class, whose ``self`` is not the one it meant."""
        targets = [(name, q, call) for name in self.reachable(class_name)
                   for q, call, _ in self.layer_calls(name)
                   for rule in rules if q in rule.layers]
        reads_self = any(_reads_self(e) for rule in rules for e in rule.inits.values())
        if reads_self and any(name != class_name for name, _, _ in targets):
            return False
        for _, q, call in targets:
            for rule in rules:
                if q in rule.layers:
                    self._override(call, q, rule.inits)
        return True

    def _override(self, call: cst.Call, q: str, inits: dict[str, cst.BaseExpression]) -> None:
        entry = self.ctx.tables.layers[q]
        usable = {p: e for p, e in inits.items() if p in entry.params and not entry.params_converter}
        if usable:
            self.plan.call_overrides.setdefault(id(call), {}).update(usable)

    def plan_class(self, cls: cst.ClassDef) -> None:
        info = self.classes[cls.name.value]
        methods = {s.name.value: s for s in cls.body.body if isinstance(s, cst.FunctionDef)}
        init = methods.get("__init__")
        if init is None:
            return
        direct_calls = _Lazy(lambda: {attr: (q, call) for q, call, attr in self.layer_calls(cls.name.value) if attr})
        params = {attr for attr, kind in info.submodules.items() if kind.kind == "param"}
        bodies = [init, *(methods[h] for h in sorted(info.setup_helpers) if h in methods)]
        module_names = {*self.classdefs, *self.functions, *self.ctx.other_imports}
        for body in bodies:
            self._plan_body(cls, info, methods, body, direct_calls, params, module_names)

    def _plan_body(self, cls, info, methods, body, direct_calls, params, module_names) -> None:
        constants: dict[str, cst.BaseExpression] = {}   # locals bound to constant expressions
        if body.name.value == "__init__":   # constructor arguments are fields in setup()
            constants = {name: cst.Attribute(cst.Name("self"), cst.Name(name))
                         for name in info.field_names - info.reassigned}
        for stmt in _statements([body], self.ctx):
            _record_constant(stmt, constants, module_names)
            if isinstance(stmt, cst.SimpleStatementLine) and len(stmt.body) == 1 \
                    and isinstance(stmt.body[0], cst.Expr) and isinstance(stmt.body[0].value, cst.Call):
                call = stmt.body[0].value
                if dotted(call.func) == "self.apply" and len(call.args) == 1:
                    self._plan_apply(cls, methods, stmt, call.args[0].value)
                    continue
                found = self.initializer(call)
                if found is None:
                    continue
                target, init_expr = found
                # the initializer moves to the layer's constructor call, which may come before
                # (or, from a helper method, outside) the local it reads: inline constants
                init_expr = transform(init_expr, _InlineNames(constants))
                parts = target.split(".")
                if len(parts) == 3 and parts[0] == "self" and parts[1] in direct_calls.value:
                    q, layer_call = direct_calls.value[parts[1]]
                    entry = self.ctx.tables.layers[q]
                    if parts[2] in entry.params and not entry.params_converter:
                        self.plan.call_overrides.setdefault(id(layer_call), {})[parts[2]] = init_expr
                        self.plan.consumed.add(id(stmt))
                elif len(parts) == 2 and parts[0] == "self" and parts[1] in params:
                    self.plan.param_overrides[(cls.name.value, parts[1])] = _torch_layout_fans(init_expr)
                    self.plan.consumed.add(id(stmt))
            elif isinstance(stmt, cst.For) and isinstance(stmt.iter, cst.Call) \
                    and dotted(stmt.iter.func) in ("self.modules", "self.named_modules"):
                var = _loop_var(stmt)
                rules = self.rules(stmt.body.body, var) if var else None
                if rules is not None and stmt.orelse is None and self.apply_rules(cls.name.value, rules):
                    self.plan.consumed.add(id(stmt))
            elif isinstance(stmt, cst.For) and isinstance(stmt.iter, cst.Call) \
                    and dotted(stmt.iter.func) == "self.named_parameters" and stmt.orelse is None:
                if self._plan_named_parameters(cls.name.value, stmt, constants):
                    self.plan.consumed.add(id(stmt))

    def _plan_named_parameters(self, class_name: str, loop: cst.For, constants: dict) -> bool:
        """GPT's ``for pn, p in self.named_parameters(): if pn.endswith("c_proj.weight"):
        nn.init.normal_(p, std=...)``: the parameter of every layer, in the class and the
        converted classes it builds, whose attribute name ends like the suffix."""
        target = loop.target
        if not (isinstance(target, cst.Tuple) and len(target.elements) == 2
                and all(isinstance(e.value, cst.Name) for e in target.elements)):
            return False
        name_var, param_var = (e.value.value for e in target.elements)
        body = [s for s in loop.body.body if not _is_docstring(s)]
        if len(body) != 1 or not isinstance(body[0], cst.If) or body[0].orelse is not None:
            return False
        test = body[0].test
        if not (isinstance(test, cst.Call) and dotted(test.func) == f"{name_var}.endswith"
                and len(test.args) == 1 and isinstance(test.args[0].value, cst.SimpleString)):
            return False
        stem, _, param = test.args[0].value.evaluated_value.rpartition(".")
        if not stem or "." in stem or param not in ("weight", "bias"):
            return False      # a suffix across several path components is not resolved here
        inits = []
        for stmt in body[0].body.body:
            if not (isinstance(stmt, cst.SimpleStatementLine) and len(stmt.body) == 1
                    and isinstance(stmt.body[0], cst.Expr) and isinstance(stmt.body[0].value, cst.Call)):
                return False
            found = self.initializer(stmt.body[0].value)
            if found is None or found[0] != param_var:
                return False
            inits.append(found[1].visit(_InlineNames(constants)))
        if len(inits) != 1:
            return False
        targets = [(name, q, call) for name in self.reachable(class_name)
                   for q, call, attr in self.layer_calls(name) if attr is not None and attr.endswith(stem)]
        if not targets or (_reads_self(inits[0]) and any(n != class_name for n, _, _ in targets)):
            return False      # (an initializer reading this class's fields cannot move to another)
        for _, q, call in targets:
            self._override(call, q, {param: inits[0]})
        return True

    def _plan_apply(self, cls, methods, stmt, fn_expr) -> None:
        name = dotted(fn_expr)
        fn = None
        if name and name.startswith("self.") and name[5:] in methods:
            fn = methods[name[5:]]
            static = any(dotted(d.decorator) == "staticmethod" for d in fn.decorators)
            params = [p.name.value for p in fn.params.params[0 if static else 1:]]
        elif name in self.functions:
            fn = self.functions[name]
            params = [p.name.value for p in fn.params.params]
        if fn is None or len(params) != 1:
            return
        body = [s for s in fn.body.body if not _is_docstring(s)]
        rules = self.rules(body, params[0])
        if rules is None or not self.apply_rules(cls.name.value, rules):
            return
        self.plan.consumed.add(id(stmt))
        if name.startswith("self."):
            self.plan.removed_methods.add((cls.name.value, name[5:]))
        else:
            self.applied_functions[name] = self.applied_functions.get(name, 0) + 1


def _record_constant(stmt, constants: dict, module_names: set[str]) -> None:
    """``initrange = 0.1``: remember locals bound to expressions of literals, ``self``
    attributes, module-level names and earlier constants; forget rebound ones."""
    if not isinstance(stmt, cst.SimpleStatementLine):
        return
    for small in stmt.body:
        if isinstance(small, (cst.Assign, cst.AnnAssign, cst.AugAssign)):
            targets = ([t.target for t in small.targets] if isinstance(small, cst.Assign)
                       else [small.target])
            names = [t.value for t in targets if isinstance(t, cst.Name)]
            for name in names:
                constants.pop(name, None)
            if isinstance(small, cst.Assign) and len(names) == 1 == len(targets) \
                    and small.value is not None:
                value = transform(small.value, _InlineNames(constants))
                if references(value) <= {"self", *module_names}:
                    constants[names[0]] = value


class _InlineNames(cst.CSTTransformer):
    """Replace references to known constant locals by their (parenthesised) values."""

    def __init__(self, constants: dict[str, cst.BaseExpression]) -> None:
        self.constants = constants

    def visit_Attribute(self, node: cst.Attribute) -> bool:
        return True

    def leave_Attribute(self, original: cst.Attribute, updated: cst.Attribute) -> cst.Attribute:
        return updated.with_changes(attr=original.attr)

    def leave_Arg(self, original: cst.Arg, updated: cst.Arg) -> cst.Arg:
        if isinstance(original.value, cst.Name) and original.value.value in self.constants:
            # a whole argument needs no parentheses
            updated = updated.with_changes(value=updated.value.with_changes(lpar=[], rpar=[]))
        return updated.with_changes(keyword=original.keyword)

    def leave_Name(self, original: cst.Name, updated: cst.Name) -> cst.BaseExpression:
        value = self.constants.get(original.value)
        if value is None:
            return updated
        if isinstance(value, (cst.Name, cst.Attribute, cst.Integer, cst.Float, cst.Call,
                              cst.SimpleString)):
            return value
        return value.with_changes(lpar=[cst.LeftParen()], rpar=[cst.RightParen()])


def _is_bias_guard(test, var: str) -> bool:
    """``m.bias is not None``, ``exists(m.bias)``, ``m.bias``, and ``and`` of those with
    ``isinstance(m, ...)`` checks (the branch already selected the layer type)."""
    if isinstance(test, cst.BooleanOperation) and isinstance(test.operator, cst.And):
        parts = [test.left, test.right]
        return all(_is_bias_guard(p, var) or _is_isinstance_of(p, var) for p in parts) \
            and any(_is_bias_guard(p, var) for p in parts)
    if isinstance(test, cst.Comparison):
        return dotted(test.left) == f"{var}.bias" and len(test.comparisons) == 1 \
            and isinstance(test.comparisons[0].operator, cst.IsNot) \
            and dotted(test.comparisons[0].comparator) == "None"
    if isinstance(test, cst.Call) and len(test.args) == 1 and dotted(test.func) in ("exists", "bool"):
        return dotted(test.args[0].value) == f"{var}.bias"
    return dotted(test) == f"{var}.bias"


def _is_isinstance_of(test, var: str) -> bool:
    return isinstance(test, cst.Call) and dotted(test.func) == "isinstance" and len(test.args) == 2 \
        and dotted(test.args[0].value) == var


def _reads_self(expr: cst.BaseExpression) -> bool:
    return "self" in references(expr)


def _class_name_binding(stmt, var: str) -> str | None:
    """``classname = m.__class__.__name__`` → "classname"."""
    if isinstance(stmt, cst.SimpleStatementLine) and len(stmt.body) == 1 \
            and isinstance(stmt.body[0], cst.Assign) and len(stmt.body[0].targets) == 1 \
            and isinstance(stmt.body[0].targets[0].target, cst.Name) \
            and dotted(stmt.body[0].value) in (f"{var}.__class__.__name__", f"type({var}).__name__"):
        return stmt.body[0].targets[0].target.value
    return None


def _class_name_test(left, op, right, class_name_var: str | None) -> str | None:
    """The fragment of ``classname.find('Conv') != -1`` or ``'Conv' in classname``."""
    if class_name_var is None:
        return None
    if isinstance(op, cst.In) and isinstance(right, cst.Name) and right.value == class_name_var \
            and isinstance(left, cst.SimpleString):
        return left.evaluated_value
    if isinstance(op, (cst.NotEqual, cst.GreaterThanEqual)) and isinstance(left, cst.Call) \
            and dotted(left.func) == f"{class_name_var}.find" and len(left.args) == 1 \
            and isinstance(left.args[0].value, cst.SimpleString):
        minus_one = (isinstance(right, cst.UnaryOperation) and isinstance(right.operator, cst.Minus)
                     and isinstance(right.expression, cst.Integer) and right.expression.value == "1")
        zero = isinstance(right, cst.Integer) and right.value == "0"
        if (isinstance(op, cst.NotEqual) and minus_one) or (isinstance(op, cst.GreaterThanEqual) and zero):
            return left.args[0].value.evaluated_value
    return None


def _statements(functions, ctx):
    """Top-level statements of the given functions, looking inside ``with torch.no_grad():``."""
    for fn in functions:
        stack = list(reversed(fn.body.body))
        while stack:
            stmt = stack.pop()
            if isinstance(stmt, cst.With) and all(
                    qualify(i.item.func if isinstance(i.item, cst.Call) else i.item, ctx.aliases)
                    in ("torch.no_grad", "torch.autograd.no_grad") for i in stmt.items):
                stack.extend(reversed(stmt.body.body))
                continue
            yield stmt


def _torch_layout_fans(init: cst.BaseExpression) -> cst.BaseExpression:
    """A raw nn.Parameter keeps torch's (out, in, ...) layout: fans come from axes 1 and 0."""
    if isinstance(init, cst.Call) and dotted(init.func) == "nn.initializers.variance_scaling":
        eq = cst.AssignEqual(whitespace_before=cst.SimpleWhitespace(""), whitespace_after=cst.SimpleWhitespace(""))
        comma = cst.Comma(whitespace_after=cst.SimpleWhitespace(" "))
        args = [*init.args[:-1], init.args[-1].with_changes(comma=comma),
                cst.Arg(keyword=cst.Name("in_axis"), value=cst.Integer("1"), equal=eq, comma=comma),
                cst.Arg(keyword=cst.Name("out_axis"), value=cst.Integer("0"), equal=eq)]
        return init.with_changes(args=args)
    return init


def _loop_var(stmt: cst.For) -> str | None:
    if isinstance(stmt.target, cst.Name):
        return stmt.target.value
    if isinstance(stmt.target, cst.Tuple) and len(stmt.target.elements) == 2 \
            and isinstance(stmt.target.elements[1].value, cst.Name):
        return stmt.target.elements[1].value.value
    return None


def _is_docstring(stmt) -> bool:
    return (isinstance(stmt, cst.SimpleStatementLine) and isinstance(stmt.body[0], cst.Expr)
            and isinstance(stmt.body[0].value, (cst.SimpleString, cst.ConcatenatedString)))


def _called_names(node: cst.CSTNode) -> set[str]:
    names: set[str] = set()

    class _V(cst.CSTVisitor):
        def visit_Name(self, n: cst.Name) -> None:
            names.add(n.value)  # classes passed around (block=BasicBlock) count too

    walk(node, _V())
    return names


_MODEL_MOVES = {"to", "cuda", "cpu", "float", "double", "half", "train", "eval"}


def _constructed_class(value: cst.BaseExpression) -> str | None:
    """``Generator(ngpu).to(device)`` → "Generator"."""
    while isinstance(value, cst.Call) and isinstance(value.func, cst.Attribute) \
            and value.func.attr.value in _MODEL_MOVES:
        value = value.func.value
    if isinstance(value, cst.Call) and isinstance(value.func, cst.Name):
        return value.func.value
    return None


def _script_statements(body):
    """Statements of a block in order, inside compound statements but not nested defs."""
    for stmt in body:
        yield stmt
        if isinstance(stmt, (cst.FunctionDef, cst.ClassDef)):
            continue
        for block in ("body", "orelse", "finalbody"):
            inner = getattr(stmt, block, None)
            while isinstance(inner, (cst.Else, cst.If, cst.IndentedBlock, cst.Finally)):
                if isinstance(inner, cst.If):
                    yield from _script_statements(inner.body.body)
                    inner = inner.orelse
                    continue
                yield from _script_statements(inner.body.body if not isinstance(inner, cst.IndentedBlock)
                                              else inner.body)
                break
        for handler in getattr(stmt, "handlers", ()):
            yield from _script_statements(handler.body.body)


def _references(module: cst.Module, name: str) -> int:
    count = 0

    class _V(cst.CSTVisitor):
        def visit_Name(self, node: cst.Name) -> None:
            nonlocal count
            count += node.value == name

    walk(module, _V())
    return count


def _plan_script_applies(planner: "_Planner", module: cst.Module) -> None:
    """``netG = Generator(ngpu).to(device); netG.apply(weights_init)`` (the DCGAN idiom): the
    init function's isinstance/class-name dispatch becomes the initializers of the layers the
    class builds (every instance of the class, where torch initialises that one object); the
    statement goes, and the function too once nothing else uses it."""
    applied = planner.applied_functions
    for body in (module.body, *(f.body.body for f in planner.functions.values())):
        bound: dict[str, str] = {}
        for stmt in _script_statements(body):
            if not (isinstance(stmt, cst.SimpleStatementLine) and len(stmt.body) == 1):
                continue
            small = stmt.body[0]
            if isinstance(small, cst.Assign) and len(small.targets) == 1 \
                    and isinstance(small.targets[0].target, cst.Name):
                cls = _constructed_class(small.value)
                name = small.targets[0].target.value
                if cls in planner.classes:
                    bound[name] = cls
                else:
                    bound.pop(name, None)
                continue
            if not (isinstance(small, cst.Expr) and isinstance(small.value, cst.Call)):
                continue
            call = small.value
            owner = dotted(call.func)
            if not (owner and owner.endswith(".apply") and owner[:-6] in bound and len(call.args) == 1):
                continue
            fn_name = dotted(call.args[0].value)
            fn = planner.functions.get(fn_name)
            if fn is None or len(fn.params.params) != 1:
                continue
            rules = planner.rules([s for s in fn.body.body if not _is_docstring(s)],
                                  fn.params.params[0].name.value)
            if not rules or not planner.apply_rules(bound[owner[:-6]], rules):
                continue
            planner.plan.consumed.add(id(stmt))
            applied[fn_name] = applied.get(fn_name, 0) + 1


def plan_initialization(module: cst.Module, classes: dict, ctx) -> InitPlan:
    planner = _Planner(module, classes, ctx)
    for name in classes:
        cls = planner.classdefs.get(name)
        if cls is not None:
            planner.plan_class(cls)
    if ctx.source is None or ".apply(" in ctx.source:
        _plan_script_applies(planner, module)
    for fn_name, uses in planner.applied_functions.items():
        if _references(module, fn_name) == uses + 1:     # the def's own name + the folded applies
            planner.plan.consumed.add(id(planner.functions[fn_name]))
    return planner.plan


def apply_overrides(rendered: cst.BaseExpression, entry, overrides: dict[str, cst.BaseExpression]) -> cst.BaseExpression:
    """Set ``<flax param>_init=`` keywords on a rendered layer constructor."""
    if not isinstance(rendered, cst.Call):
        return rendered
    args = list(rendered.args)
    for torch_param, init in overrides.items():
        layout = entry.params[torch_param]
        flax_name = layout.split("/")[-1].split(":")[0]
        keyword = f"{flax_name}_init"
        new_arg = cst.Arg(keyword=cst.Name(keyword), value=init,
                          equal=cst.AssignEqual(whitespace_before=cst.SimpleWhitespace(""),
                                                whitespace_after=cst.SimpleWhitespace("")))
        for i, a in enumerate(args):
            if a.keyword is not None and a.keyword.value == keyword:
                args[i] = new_arg.with_changes(comma=a.comma)
                break
        else:
            if args:
                args[-1] = args[-1].with_changes(comma=cst.Comma(whitespace_after=cst.SimpleWhitespace(" ")))
            args.append(new_arg)
    return rendered.with_changes(args=args)
