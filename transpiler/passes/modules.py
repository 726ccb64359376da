"""torch ``nn.Module`` classes → ``flax.linen.Module`` classes.

* constructor parameters become dataclass fields with the same names and defaults;
* ``__init__`` becomes ``setup()``: ``super().__init__()`` goes, parameters are read from the
  fields, ``nn.Sequential``/``ModuleList``/``ModuleDict`` become flax Sequential / lists /
  dicts (so ``features.0.weight`` ↔ ``features/layers_0/kernel``), ``nn.Parameter`` becomes
  ``self.param``, ``register_buffer`` a constant attribute;
* ``forward`` becomes ``__call__(..., train: bool = False)``; ``self.training`` reads the flag
  and calls to dropout, batch norm and converted submodules pass it on.

The layer constructors themselves are rewritten by the op tables (``layers.toml``); this
rule only needs their ``call`` kind, which it learns from a scan of each class before the
traversal reaches it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import libcst as cst

from ..names import dotted, qualified_expr, qualify
from .base import Rule
from .initialization import plan_initialization
from ..walk import walk

TRAIN = "train"
MODULE_BASES = {"torch.nn.Module", "torch.nn.Sequential"}
SEQUENTIAL_BASE = "torch.nn.Sequential"
INIT_STATEMENT_CALLS = ("torch.nn.init.",)


@dataclass
class SubmoduleKind:
    kind: str                    # layer | sequential | list | dict | custom | param | value
    call: str = "plain"          # plain | dropout | batchnorm | train
    element: "SubmoduleKind | None" = None   # lists/dicts: kind of their elements, if known
    items: dict = field(default_factory=dict)   # ModuleDict literal: key → SubmoduleKind


@dataclass
class ClassInfo:
    name: str
    fields: list[cst.Param] = field(default_factory=list)
    field_names: set[str] = field(default_factory=set)
    reassigned: set[str] = field(default_factory=set)     # parameters rebound inside __init__
    submodules: dict[str, SubmoduleKind] = field(default_factory=dict)
    setup_helpers: set[str] = field(default_factory=set)  # methods called from __init__
    runtime_methods: set[str] = field(default_factory=set)  # methods that take `train`
    accumulated: set[str] = field(default_factory=set)    # ModuleList() built by .append
    renamed: set[str] = field(default_factory=set)        # attributes that clash with a field → attr_
    tied: dict[str, str] = field(default_factory=dict)    # Linear attr → Embedding attr sharing its weight
    counting: set[str] = field(default_factory=set)       # methods reading self.parameters() (get_num_params)
    init_may_count: bool = False      # __init__ reads self.parameters() or calls a counting method
    has_init: bool = False
    has_forward: bool = False
    sequential_base: bool = False     # subclass of nn.Sequential: children live in `layers`
    local_base: str | None = None     # a converted class of this file it inherits from


# ------------------------------------------------------------------ pre-scan


# helper_returns keys of module-level functions (``conv_bn(inp, oup)`` returning an
# nn.Sequential), apart from the class's own helper methods reached through ``self.``
MODULE_FUNCTION = "<module>."


def _call_kind_for(expr: cst.BaseExpression, ctx, classes: dict[str, ClassInfo],
                   helper_returns: dict[str, SubmoduleKind]) -> SubmoduleKind:
    if isinstance(expr, cst.Call):
        q = qualify(expr.func, ctx.aliases)
        if q == "torch.nn.Sequential":
            return SubmoduleKind("sequential", "train")
        if q == "torch.nn.ModuleList":
            element = None
            if expr.args:
                element = _element_kind(expr.args[0].value, ctx, classes, helper_returns)
            return SubmoduleKind("list", element=element)
        if q == "torch.nn.ModuleDict":
            return SubmoduleKind("dict", items={k: _call_kind_for(v, ctx, classes, helper_returns)
                                                for k, v in _dict_items(expr).items()})
        if q == "torch.nn.Parameter":
            return SubmoduleKind("param")
        if q is not None:
            entry = ctx.tables.layers.get(q)
            if entry is not None:
                return SubmoduleKind("layer", entry.call)
            return SubmoduleKind("value")
        name = dotted(expr.func)
        if name in classes:
            return SubmoduleKind("custom", "train")
        if name and name.startswith("self.") and name[5:] in helper_returns:
            return helper_returns[name[5:]]
        if name and MODULE_FUNCTION + name in helper_returns:
            return helper_returns[MODULE_FUNCTION + name]
        if name in ctx.local_classes:      # an nn.Module of another converted file of this tree
            return SubmoduleKind("custom", "train")
        if name and name[:1].isupper():
            return SubmoduleKind("custom", "plain")
    if isinstance(expr, (cst.List, cst.Tuple)):
        return SubmoduleKind("list", element=_element_kind(expr, ctx, classes, helper_returns))
    if isinstance(expr, cst.IfExp):
        kinds = [_call_kind_for(e, ctx, classes, helper_returns) for e in (expr.body, expr.orelse)]
        return _combine(kinds) or SubmoduleKind("value")
    return SubmoduleKind("value")


def _element_kind(expr, ctx, classes, helper_returns) -> SubmoduleKind | None:
    if isinstance(expr, (cst.ListComp, cst.GeneratorExp)):
        return _call_kind_for(expr.elt, ctx, classes, helper_returns)
    if isinstance(expr, (cst.List, cst.Tuple)) and expr.elements:
        return _combine([_call_kind_for(e.value, ctx, classes, helper_returns) for e in expr.elements])
    return None


def _dict_items(call: cst.Call) -> dict[str, cst.BaseExpression]:
    """The literal items of ``nn.ModuleDict(dict(wte=..., h=...))`` / ``nn.ModuleDict({"wte": ...})``."""
    value = call.args[0].value if call.args else None
    if isinstance(value, cst.Call) and dotted(value.func) == "dict":
        return {a.keyword.value: a.value for a in value.args if a.keyword is not None}
    if isinstance(value, cst.Dict):
        return {e.key.evaluated_value: e.value for e in value.elements
                if isinstance(e, cst.DictElement) and isinstance(e.key, cst.SimpleString)}
    return {}


def _item_kind(info: "ClassInfo", path: str) -> "SubmoduleKind | None":
    """The kind of ``self.<attr>.<key>`` where ``attr`` is a ModuleDict built from a literal."""
    parts = path.split(".")
    kind = info.submodules.get(parts[0]) if len(parts) == 2 else None
    return kind.items.get(parts[1]) if kind is not None and kind.kind == "dict" else None


def _self_path(path: str) -> cst.BaseExpression:
    """``transformer.wte`` → ``self.transformer["wte"]`` (a ModuleDict item), ``lm_head`` → ``self.lm_head``."""
    attr, *keys = path.split(".")
    expr: cst.BaseExpression = qualified_expr(f"self.{attr}")
    for key in keys:
        expr = cst.Subscript(value=expr, slice=[cst.SubscriptElement(cst.Index(cst.SimpleString(repr(key))))])
    return expr


class _ParameterReads(cst.CSTVisitor):
    def __init__(self, methods: set[str], names: set[str], aliases: dict | None) -> None:
        self.methods, self.names, self.found, self.aliases = methods, names, False, aliases or {}
        self.optimizer = False

    def visit_Call(self, node: cst.Call) -> None:
        if (qualify(node.func, self.aliases) or "").startswith("torch.optim."):
            self.optimizer = True       # self.opt = Adam(self.parameters()): the training rule's
        if isinstance(node.func, cst.Attribute):
            base, attr = dotted(node.func.value) or "", node.func.attr.value
            if (base == "self" or base.startswith("self.")) and (
                    attr in ("parameters", "named_parameters") or (base == "self" and attr in self.methods)):
                self.found = True

    def visit_Name(self, node: cst.Name) -> None:
        self.found |= node.value in self.names


def _reads_parameters(node: cst.CSTNode, methods: set[str], names: set[str] = frozenset(),
                      aliases: dict | None = None) -> bool:
    """``node`` reads the module's parameters (``self.parameters()``, ``self.enc.named_parameters()``),
    calls one of ``methods`` that does, or reads one of ``names`` (not to build an optimizer)."""
    visitor = _ParameterReads(methods, names, aliases)
    walk(node, visitor)
    return visitor.found and not visitor.optimizer


def _methods(cls: cst.ClassDef) -> dict[str, cst.FunctionDef]:
    out = {}
    for stmt in cls.body.body:
        if isinstance(stmt, cst.FunctionDef):
            out[stmt.name.value] = stmt
    return out


@dataclass
class MethodFacts:
    """What the pre-scan asks of one method, gathered in one walk of it."""
    called: set[str] = field(default_factory=set)       # self.m(...) calls: m
    uses_training: bool = False                         # reads self.training
    reads_parameters: bool = False                      # self.parameters() / self.enc.named_parameters()
    builds_optimizer: bool = False                      # calls torch.optim.*
    self_assignments: list = field(default_factory=list)   # (attr, value) of self.attr = value
    aug_assigned: set[str] = field(default_factory=set)    # self.attr op= ...
    rebound: set[str] = field(default_factory=set)      # names the body binds (not inside attributes)
    returns: list = field(default_factory=list)         # returned values
    local_values: dict = field(default_factory=dict)    # name → values of ``name = value``


class _MethodFactsVisitor(cst.CSTVisitor):
    """Fills :class:`MethodFacts` for a function: calls and attribute reads anywhere in it;
    assignments, returns and bound names in its body (:func:`method_facts` walks the header
    with ``in_body`` off, then the body with it on)."""

    def __init__(self, facts: MethodFacts, aliases: dict) -> None:
        self.facts, self.aliases = facts, aliases
        self.in_body = False        # names bound and calls made in defaults do not count
        self.in_attribute = 0       # inside an attribute (``[x for x in y].z`` binds nothing here)

    def visit_Call(self, node: cst.Call) -> None:
        facts = self.facts
        name = dotted(node.func)
        if name and name.startswith("self.") and name.count(".") == 1:
            facts.called.add(name[5:])
        if not self.in_body:
            return
        if (qualify(node.func, self.aliases) or "").startswith("torch.optim."):
            facts.builds_optimizer = True
        if isinstance(node.func, cst.Attribute) and node.func.attr.value in ("parameters", "named_parameters"):
            base = dotted(node.func.value) or ""
            if base == "self" or base.startswith("self."):
                facts.reads_parameters = True

    def visit_Attribute(self, node: cst.Attribute) -> None:
        if not self.facts.uses_training and dotted(node) == "self.training":
            self.facts.uses_training = True
        self.in_attribute += 1

    def leave_Attribute(self, node: cst.Attribute) -> None:
        self.in_attribute -= 1

    def visit_Assign(self, node: cst.Assign) -> None:
        for t in node.targets:
            name = dotted(t.target)
            if name and name.startswith("self.") and name.count(".") == 1:
                self.facts.self_assignments.append((name[5:], node.value))
        if len(node.targets) == 1 and isinstance(node.targets[0].target, cst.Name):
            self.facts.local_values.setdefault(node.targets[0].target.value, []).append(node.value)

    def visit_AnnAssign(self, node: cst.AnnAssign) -> None:
        name = dotted(node.target)
        if node.value is not None and name and name.startswith("self.") and name.count(".") == 1:
            self.facts.self_assignments.append((name[5:], node.value))

    def visit_AugAssign(self, node: cst.AugAssign) -> None:
        name = dotted(node.target)
        if name and name.startswith("self.") and name.count(".") == 1:
            self.facts.aug_assigned.add(name[5:])
        self._binds(node.target)

    def visit_AssignTarget(self, node: cst.AssignTarget) -> None:
        self._binds(node.target)

    def visit_For(self, node: cst.For) -> None:
        self._binds(node.target)

    def visit_CompFor(self, node: cst.CompFor) -> None:
        self._binds(node.target)

    def _binds(self, target: cst.BaseExpression) -> None:
        if self.in_body and not self.in_attribute:
            self.facts.rebound.update(_bound_by(target))

    def visit_Return(self, node: cst.Return) -> None:
        if node.value is not None:
            self.facts.returns.append(node.value)


def method_facts(fn: cst.FunctionDef, aliases: dict) -> MethodFacts:
    facts = MethodFacts()
    visitor = _MethodFactsVisitor(facts, aliases)
    for part in (*fn.decorators, fn.params, fn.returns):
        if part is not None:
            walk(part, visitor)
    visitor.in_body = True
    walk(fn.body, visitor)
    return facts


def _returned(facts: MethodFacts) -> list[cst.BaseExpression]:
    """The values a function returns; a returned local name bound only to calls stands for them."""
    calls = {k: v for k, v in facts.local_values.items() if all(isinstance(x, cst.Call) for x in v)}
    return [v for value in facts.returns
            for v in (calls.get(value.value, [value]) if isinstance(value, cst.Name) else [value])]


def _field_call_kind(value: cst.BaseExpression, info: "ClassInfo") -> "SubmoduleKind | None":
    """``block(...)`` / ``self.cell_type(...)``: an instance of a class passed to the constructor,
    whose calls take the training flag if they can."""
    if isinstance(value, cst.Call):
        name = dotted(value.func) or ""
        if (name if "." not in name else name[5:] if name.startswith("self.") else "") in info.field_names:
            return SubmoduleKind("custom", "any")
    return None


def _bound_by(target: cst.BaseExpression) -> set[str]:
    """Names an assignment target binds (``a``, ``a, (b, c)``; not ``self.a`` or ``x[i]``)."""
    if isinstance(target, cst.Name):
        return {target.value}
    if isinstance(target, (cst.Tuple, cst.List)):
        out: set[str] = set()
        for el in target.elements:
            out |= _bound_by(el.value)
        return out
    if isinstance(target, cst.StarredElement):
        return _bound_by(target.value)
    return set()


def scan_classes(module: cst.Module, ctx) -> dict[str, ClassInfo]:
    """Find the nn.Module subclasses of a file and learn what each attribute holds."""
    classdefs = [s for s in module.body if isinstance(s, cst.ClassDef)]
    names: set[str] = set()
    changed = True
    while changed:  # subclasses of subclasses defined in the same file
        changed = False
        for cls in classdefs:
            if cls.name.value in names:
                continue
            for base in cls.bases:
                if qualify(base.value, ctx.aliases) in MODULE_BASES or dotted(base.value) in names:
                    names.add(cls.name.value)
                    changed = True
    classes = {n: ClassInfo(n) for n in names}
    # what module-level functions return, when they build layers (MobileViT's conv_nxn_bn)
    module_returns: dict[str, SubmoduleKind] = {}
    for fn in (s for s in module.body if isinstance(s, cst.FunctionDef)):
        kinds = [_call_kind_for(v, ctx, classes, {}) for v in _returned(method_facts(fn, ctx.aliases))]
        combined = _combine(kinds) if kinds else None
        if combined is not None and combined.kind != "value":
            module_returns[MODULE_FUNCTION + fn.name.value] = combined
    for cls in classdefs:
        info = classes.get(cls.name.value)
        if info is None:
            continue
        methods = _methods(cls)
        facts = {name: method_facts(fn, ctx.aliases) for name, fn in methods.items()}
        init = methods.get("__init__")
        info.counting = {n for n, f in facts.items()
                         if n != "__init__" and f.reads_parameters and not f.builds_optimizer}
        info.sequential_base = any(qualify(b.value, ctx.aliases) == SEQUENTIAL_BASE for b in cls.bases)
        info.local_base = next((dotted(b.value) for b in cls.bases if dotted(b.value) in classes), None)
        info.has_init = init is not None
        if init is not None:
            init_facts = facts["__init__"]
            info.init_may_count = init_facts.reads_parameters or bool(init_facts.called & info.counting)
        info.has_forward = "forward" in methods
        uses = facts
        # setup helpers: methods reachable from __init__
        if init is not None:
            pending = ["__init__"]
            while pending:
                v = uses.get(pending.pop())
                if v is None:
                    continue
                for callee in v.called:
                    if callee in methods and callee not in info.setup_helpers and callee != "__init__":
                        info.setup_helpers.add(callee)
                        pending.append(callee)
            params = init.params
            info.fields = [p for p in [*params.params[1:], *params.kwonly_params]]
            info.field_names = {p.name.value for p in info.fields}
            info.reassigned = facts["__init__"].rebound & info.field_names
        helper_returns: dict[str, SubmoduleKind] = dict(module_returns)
        for helper in info.setup_helpers:
            for value in _returned(facts[helper]):
                helper_returns[helper] = _field_call_kind(value, info) or \
                    _call_kind_for(value, ctx, classes, module_returns)
        kinds: dict[str, list[SubmoduleKind]] = {}
        assigned_in_init: dict[str, int] = {}
        for fn_name in ["__init__", *sorted(info.setup_helpers)]:
            fn = methods.get(fn_name)
            if fn is None:
                continue
            for attr, value in facts[fn_name].self_assignments:
                if fn_name == "__init__":
                    assigned_in_init[attr] = assigned_in_init.get(attr, 0) + 1
                if attr in info.field_names and not (isinstance(value, cst.Name) and value.value == attr):
                    info.renamed.add(attr)
                kind = _call_kind_for(value, ctx, classes, helper_returns)
                if kind.kind == "value":
                    kind = _field_call_kind(value, info) or kind
                if _is_empty_container(value, ctx):
                    if fn_name == "__init__":
                        info.accumulated.add(attr)
                    appended = [_call_kind_for(v, ctx, classes, helper_returns)
                                for f in [init, *(methods[h] for h in info.setup_helpers)] if f is not None
                                for v in _appended(f, attr)]
                    kind.element = _combine(appended)
                kinds.setdefault(attr, []).append(kind)
        for attr, found in kinds.items():
            useful = [k for k in found if k.kind != "value"] or found
            combined = _combine(useful) if len(useful) > 1 else useful[0]
            if combined.kind == "mixed" and all(k.kind == useful[0].kind for k in useful):
                combined = SubmoduleKind(useful[0].kind, combined.call, useful[-1].element)
            info.submodules[attr] = combined
        # flax names a submodule once: an attribute assigned twice in __init__ is built in a
        # local variable and assigned at the end (like a ModuleList filled by append)
        info.accumulated |= {a for a, n in assigned_in_init.items() if n > 1}
        # self.bottleneck_width *= 2 in a _make_layer helper: a field updated while building
        # becomes its own attribute (fields are frozen), read as self.bottleneck_width_
        for fn_name in ["__init__", *sorted(info.setup_helpers)]:
            if methods.get(fn_name) is not None:
                info.renamed |= facts[fn_name].aug_assigned & info.field_names
        # runtime methods: forward plus anything that needs the train flag
        runtime = {"forward"}
        changed = True
        while changed:
            changed = False
            for name, v in uses.items():
                if name in runtime or name in info.setup_helpers or name.startswith("__"):
                    continue
                if _is_static(methods[name]):
                    continue
                needs = v.uses_training or any(
                    c in runtime or (c in info.submodules and info.submodules[c].call != "plain")
                    for c in v.called)
                if needs:
                    runtime.add(name)
                    changed = True
        info.runtime_methods = runtime
        if init is not None:
            info.tied = _weight_ties(init, facts["__init__"].self_assignments, ctx)
    return classes


def _weight_ties(init: cst.FunctionDef, assignments: list, ctx) -> dict[str, str]:
    """``self.head.weight = self.emb.weight`` (either way round) between a bias-free Linear
    and an Embedding: the Linear's calls become ``self.emb.attend(x)``, flax's tied output."""
    ties: dict[str, str] = {}
    layer_of: dict[str, str] = {}
    pairs = []      # (attribute or ModuleDict item path, constructing expression)
    for attr, value in assignments:
        items = _dict_items(value) if isinstance(value, cst.Call) and \
            qualify(value.func, ctx.aliases) == "torch.nn.ModuleDict" else {}
        pairs += [(f"{attr}.{k}", v) for k, v in items.items()] or [(attr, value)]
    for attr, value in pairs:
        if isinstance(value, cst.Call):
            q = qualify(value.func, ctx.aliases)
            if q in ("torch.nn.Linear", "torch.nn.Embedding"):
                has_bias = q == "torch.nn.Linear" and not any(
                    (a.keyword is not None and a.keyword.value == "bias" or i == 2) and
                    isinstance(a.value, cst.Name) and a.value.value == "False"
                    for i, a in enumerate(value.args))
                layer_of[attr] = "biased" if has_bias else q
    for stmt in init.body.body:
        if not (isinstance(stmt, cst.SimpleStatementLine) and isinstance(stmt.body[0], cst.Assign)):
            continue
        assign = stmt.body[0]
        left, right = dotted(assign.targets[0].target), dotted(assign.value)
        if not (left and right and left.endswith(".weight") and right.endswith(".weight")):
            continue
        a, b = left[len("self."):-len(".weight")], right[len("self."):-len(".weight")]   # lm_head, transformer.wte
        kinds = {layer_of.get(a), layer_of.get(b)}
        if kinds == {"torch.nn.Linear", "torch.nn.Embedding"}:
            linear, embedding = (a, b) if layer_of[a] == "torch.nn.Linear" else (b, a)
            ties[linear] = embedding
    return ties


def _is_static(fn: cst.FunctionDef) -> bool:
    return any(dotted(d.decorator) in ("staticmethod", "classmethod", "property") for d in fn.decorators)


def _is_empty_container(value: cst.BaseExpression, ctx) -> bool:
    if isinstance(value, cst.Call) and qualify(value.func, ctx.aliases) in ("torch.nn.ModuleList", "torch.nn.ModuleDict"):
        if not value.args:
            return True
        inner = value.args[0].value
        return isinstance(inner, (cst.List, cst.Dict)) and not inner.elements
    return isinstance(value, (cst.List,)) and not value.elements


def _appended(fn: cst.FunctionDef, attr: str) -> list[cst.BaseExpression]:
    """Values passed to ``self.<attr>.append(v)`` in a method."""
    found: list[cst.BaseExpression] = []

    class _V(cst.CSTVisitor):
        def visit_Call(self, node: cst.Call) -> None:
            if dotted(node.func) == f"self.{attr}.append" and node.args:
                found.append(node.args[0].value)

    walk(fn, _V())
    return found


def _combine(kinds: list["SubmoduleKind"]) -> "SubmoduleKind | None":
    if not kinds:
        return None
    first = kinds[0]
    if all(k.kind == first.kind and k.call == first.call for k in kinds):
        return first
    if all(k.call == first.call for k in kinds):
        return SubmoduleKind("mixed", first.call)
    return SubmoduleKind("mixed", "any")


# ------------------------------------------------------------------ rewriting helpers


def _train_kwarg(call: str) -> cst.Arg | None:
    if call == "dropout":
        return cst.Arg(keyword=cst.Name("deterministic"), value=cst.parse_expression(f"not {TRAIN}"),
                       equal=_EQ)
    if call == "batchnorm":
        return cst.Arg(keyword=cst.Name("use_running_average"),
                       value=cst.parse_expression(f"not {TRAIN}"), equal=_EQ)
    if call == "train":
        return cst.Arg(keyword=cst.Name(TRAIN), value=cst.Name(TRAIN), equal=_EQ)
    return None


_EQ = cst.AssignEqual(whitespace_before=cst.SimpleWhitespace(""), whitespace_after=cst.SimpleWhitespace(""))


def _add_arg(call: cst.Call, arg: cst.Arg) -> cst.Call:
    if any(a.keyword is not None and a.keyword.value == arg.keyword.value for a in call.args):
        return call
    args = list(call.args)
    if args:
        args[-1] = args[-1].with_changes(comma=cst.Comma(whitespace_after=cst.SimpleWhitespace(" ")))
    return call.with_changes(args=[*args, arg])


def _annotation_for(param: cst.Param) -> cst.Annotation:
    if param.annotation is not None:
        return param.annotation
    d = param.default
    name = "Any"
    if isinstance(d, cst.Integer) or (isinstance(d, cst.UnaryOperation) and isinstance(d.expression, cst.Integer)):
        name = "int"
    elif isinstance(d, cst.Float) or (isinstance(d, cst.UnaryOperation) and isinstance(d.expression, cst.Float)):
        name = "float"
    elif isinstance(d, cst.Name) and d.value in ("True", "False"):
        name = "bool"
    elif isinstance(d, (cst.SimpleString, cst.ConcatenatedString)):
        name = "str"
    elif isinstance(d, cst.Tuple):
        name = "tuple"
    return cst.Annotation(annotation=cst.Name(name))


def _field_default(default: cst.BaseExpression | None) -> cst.BaseExpression | None:
    """Dataclass fields cannot default to a list/dict/set: use a tuple / frozen equivalent."""
    if isinstance(default, cst.List):
        return cst.Tuple(elements=[e.with_changes(comma=cst.MaybeSentinel.DEFAULT) if i == len(default.elements) - 1 and len(default.elements) > 1 else e
                                   for i, e in enumerate(default.elements)]
                         if len(default.elements) != 1 else
                         [default.elements[0].with_changes(comma=cst.Comma())])
    return default


# ------------------------------------------------------------------ the rule


class ModulesRule(Rule):
    def __init__(self, ctx) -> None:
        super().__init__(ctx)
        self.classes: dict[str, ClassInfo] = {}
        self.class_stack: list[ClassInfo | None] = []
        self.function_stack: list[str] = []
        self.loop_vars: list[dict[str, SubmoduleKind]] = []
        self.parameter_counts: set[str] = set()     # __init__ locals holding a parameter count
        self.skip: set[int] = set()
        self.converted_defaults: dict[tuple[str, str], cst.BaseExpression] = {}

    # -------------------------------------------------------------- scopes
    def visit_Module(self, node: cst.Module) -> None:
        self.classes = scan_classes(node, self.ctx)
        plan = plan_initialization(node, self.classes, self.ctx)
        self.ctx.init_plan = plan
        if plan.call_overrides or plan.param_overrides:
            self.ctx.emits |= plan.emits

    def visit_SimpleStatementLine(self, node: cst.SimpleStatementLine) -> bool:
        return id(node) not in self.ctx.init_plan.consumed

    def visit_For(self, node: cst.For) -> bool:
        if id(node) in self.ctx.init_plan.consumed:
            return False
        self._loop_kinds(node)
        return True

    def visit_Assign(self, node: cst.Assign) -> None:
        # level = getattr(self, "level_%d" % i) / self.__getattr__(...): a submodule looked up
        # by name (assigned with setattr in __init__); its calls take the flag if they can
        v = node.value
        if self._info() is not None and self.loop_vars and len(node.targets) == 1 \
                and isinstance(node.targets[0].target, cst.Name) and isinstance(v, cst.Call) and v.args \
                and (dotted(v.func) in ("self.__getattr__", "self.__getattribute__")
                     or (dotted(v.func) == "getattr" and dotted(v.args[0].value) == "self")):
            self.loop_vars[-1][node.targets[0].target.value] = SubmoduleKind("custom", "any")

    def visit_ClassDef(self, node: cst.ClassDef) -> None:
        info = self.classes.get(node.name.value) if not self.function_stack else None
        self.class_stack.append(info)
        self.ctx.current_class = info
        self._saved_functions = self.function_stack
        self.function_stack = []

    def visit_FunctionDef(self, node: cst.FunctionDef) -> bool:
        self.function_stack.append(node.name.value)
        if id(node) in self.ctx.init_plan.consumed:   # an init function folded into layers
            return False
        info = self._info()
        if len(self.function_stack) == 1 and info is not None and \
                (info.name, node.name.value) in self.ctx.init_plan.removed_methods:
            return False
        self.skip.add(id(node.name))
        if len(self.function_stack) == 1:
            self.ctx.current_function = node.name.value
            self.loop_vars.append({})
            self.parameter_counts = set()
        return True

    def visit_Param(self, node: cst.Param) -> None:
        self.skip.add(id(node.name))

    def visit_Arg(self, node: cst.Arg) -> None:
        if node.keyword is not None:
            self.skip.add(id(node.keyword))

    def visit_Attribute(self, node: cst.Attribute) -> None:
        self.skip.add(id(node.attr))

    def _loop_kinds(self, node: cst.For) -> None:
        info = self._info()
        if info is None or not self.loop_vars:
            return
        name = dotted(node.iter)
        if not (name and name.startswith("self.")):
            return
        kind = info.submodules.get(name[5:]) or _item_kind(info, name[5:])
        element = kind.element if kind is not None else None
        if element is None:
            return
        if isinstance(node.target, cst.Name):
            self.loop_vars[-1][node.target.value] = element
        elif isinstance(node.target, (cst.Tuple, cst.List)) and element.element is not None:
            for el in node.target.elements:
                if isinstance(el.value, cst.Name):
                    self.loop_vars[-1][el.value.value] = element.element

    def _info(self) -> ClassInfo | None:
        return self.class_stack[-1] if self.class_stack else None

    def _method(self) -> str | None:
        return self.function_stack[0] if self.function_stack else None

    # -------------------------------------------------------------- expressions
    def leave_Name(self, original: cst.Name, updated: cst.Name) -> cst.BaseExpression:
        info = self._info()
        if (info is None or self._method() != "__init__" or id(original) in self.skip
                or original.value not in info.field_names or original.value in info.reassigned):
            return updated
        return cst.Attribute(value=cst.Name("self"), attr=cst.Name(original.value))

    def leave_Attribute(self, original: cst.Attribute, updated: cst.Attribute) -> cst.BaseExpression:
        info = self._info()
        if info is None:
            return updated
        if dotted(original) == "self.training" and self._method() in info.runtime_methods:
            return cst.Name(TRAIN)
        name = dotted(original)
        parts = (name or "").split(".")
        if (len(parts) == 3 and parts[0] == "self" and parts[2] in ("weight", "bias")
                and parts[1] in info.submodules and info.submodules[parts[1]].kind == "layer"
                and self._method() in info.runtime_methods):
            self.ctx.report(original, "JP304", f"{name}: read the parameter through the layer "
                            "(flax creates it lazily), e.g. self.variables['params']")
        if (self._method() == "__init__" and name and name.startswith("self.")
                and name.count(".") == 1 and name[5:] in info.accumulated):
            return cst.Name(f"_{name[5:]}")
        if name and name.count(".") == 1 and name.startswith("self.") and name[5:] in info.renamed:
            return updated.with_changes(attr=cst.Name(f"{name[5:]}_"))
        if len(parts) == 3 and parts[0] == "self" and _item_kind(info, f"{parts[1]}.{parts[2]}") is not None:
            # self.transformer.wte (a ModuleDict item; flax keeps a dict) → self.transformer["wte"]
            return cst.Subscript(value=updated.value, slice=[
                cst.SubscriptElement(cst.Index(cst.SimpleString(repr(parts[2]))))])
        return updated

    def leave_Call(self, original: cst.Call, updated: cst.Call) -> cst.BaseExpression:
        q = qualify(original.func, self.ctx.aliases)
        if q == "torch.nn.Sequential":
            return self._sequential(original, updated)
        if q == "torch.nn.ModuleList":
            return self._module_list(original, updated)
        if q == "torch.nn.ModuleDict":
            return self._module_dict(original, updated)
        info = self._info()
        if info is None:
            return updated
        name = dotted(original.func)
        method = self._method()
        if name == "locals" and not original.args and method == "__init__":
            return self._constructor_locals(info)
        if method not in info.runtime_methods:
            return updated
        if (isinstance(original.func, cst.Attribute) and original.func.attr.value == "forward"
                and isinstance(original.func.value, cst.Call) and dotted(original.func.value.func) == "super"):
            return _add_arg(updated.with_changes(func=updated.func.with_changes(attr=cst.Name("__call__"))),
                            _train_kwarg("train"))
        if name and name.startswith("self.") and name.count(".") == 1 and name[5:] in info.tied:
            return updated.with_changes(func=cst.Attribute(value=_self_path(info.tied[name[5:]]), attr=cst.Name("attend")))
        if name and name.startswith("self.") and name.count(".") == 2 and _item_kind(info, name[5:]) is not None:
            return _call_with_kind(updated, _item_kind(info, name[5:]), self.ctx)
        if name and name.startswith("self.") and name.count(".") == 1:
            attr = name[5:]
            if attr == "forward":
                return _add_arg(updated.with_changes(func=cst.Name("self")), _train_kwarg("train"))
            kind = info.submodules.get(attr)
            if kind is not None and not (kind.kind == "value" and attr in info.field_names):
                return _call_with_kind(updated, kind, self.ctx)
            if attr in info.runtime_methods:
                return _add_arg(updated, _train_kwarg("train"))
            if attr in info.field_names:
                # a module (or function) passed to the constructor: take the flag if it can
                return _call_with_kind(updated, SubmoduleKind("mixed", "any"), self.ctx)
        if isinstance(original.func, cst.Name) and self.loop_vars:
            kind = self.loop_vars[-1].get(original.func.value)
            if kind is not None:
                return _call_with_kind(updated, kind, self.ctx)
        if isinstance(original.func, cst.Subscript):
            base = dotted(original.func.value)
            if base and base.startswith("self.") and base[5:] in info.submodules:
                element = info.submodules[base[5:]].element
                if element is not None:
                    return _call_with_kind(updated, element, self.ctx)
        return updated

    def _sequential(self, original: cst.Call, updated: cst.Call) -> cst.BaseExpression:
        args = updated.args
        if len(args) == 1 and args[0].star == "" and _looks_like_ordered_dict(args[0].value):
            self.ctx.report(original, "JP303", "nn.Sequential(OrderedDict(...)) is not converted yet")
            return updated.with_changes(func=qualified_expr("torch.nn.Sequential"))
        elements = []
        for a in args:
            if a.star == "*":
                elements.append(cst.StarredElement(value=a.value))
            else:
                elements.append(cst.Element(value=a.value))
        elements = [e.with_changes(comma=cst.Comma(whitespace_after=cst.SimpleWhitespace(" ")))
                    if i < len(elements) - 1 else e for i, e in enumerate(elements)]
        self.ctx.emits.add("Sequential")
        return cst.Call(func=cst.Name("Sequential"), args=[cst.Arg(value=cst.List(elements=elements))])

    def _module_list(self, original: cst.Call, updated: cst.Call) -> cst.BaseExpression:
        if not updated.args:
            return cst.List(elements=[])
        value = updated.args[0].value
        if isinstance(value, cst.List):
            return value
        if isinstance(value, cst.ListComp):
            return value
        if isinstance(value, cst.GeneratorExp):
            return cst.ListComp(elt=value.elt, for_in=value.for_in)
        return cst.Call(func=cst.Name("list"), args=[cst.Arg(value=value)])

    def _constructor_locals(self, info: ClassInfo) -> cst.BaseExpression:
        """``locals()`` in ``__init__`` (``kwargs = dict(locals())``) meant self and the
        constructor arguments; in setup() those are fields. (Locals bound before the call
        are not included: the idiom reads it first.)"""
        names = ["self", *(p.name.value for p in info.fields)]
        comma = cst.Comma(whitespace_after=cst.SimpleWhitespace(" "))
        elements = [cst.DictElement(cst.SimpleString(repr(n)),
                                    cst.Name("self") if n == "self" else qualified_expr(f"self.{n}"),
                                    comma=comma if i < len(names) - 1 else cst.MaybeSentinel.DEFAULT)
                    for i, n in enumerate(names)]
        return cst.Dict(elements)

    def _module_dict(self, original: cst.Call, updated: cst.Call) -> cst.BaseExpression:
        if not updated.args:
            return cst.Dict(elements=[])
        value = updated.args[0].value
        if isinstance(value, (cst.Dict, cst.DictComp)) or (isinstance(value, cst.Call) and dotted(value.func) == "dict"):
            return value
        return cst.Call(func=cst.Name("dict"), args=[cst.Arg(value=value)])

    # -------------------------------------------------------------- statements
    def leave_SimpleStatementLine(self, original: cst.SimpleStatementLine,
                                  updated: cst.SimpleStatementLine):
        info = self._info()
        if info is None and id(original) in self.ctx.init_plan.consumed:   # script: model.apply(init_fn)
            self.ctx.report(original, "JP308", "initialisation folded into the layers' initializers")
            return cst.RemoveFromParent()
        if info is None or not self.function_stack:
            return updated
        method = self._method()
        stmt = original.body[0] if len(original.body) == 1 else None
        new_stmt = updated.body[0] if len(updated.body) == 1 else None
        if stmt is None:
            return updated
        if id(original) in self.ctx.init_plan.consumed:
            self.ctx.report(original, "JP308", "initialisation folded into the layers' initializers")
            return cst.RemoveFromParent()
        if method == "__init__" and _is_super_init(stmt, self.ctx):
            super_args = updated.body[0].value.args if isinstance(updated.body[0], cst.Expr) else []
            if info.sequential_base and super_args:
                # nn.Sequential.__init__(*layers): the children, named layers_{i} in flax
                elements = [cst.StarredElement(a.value) if a.star == "*" else cst.Element(a.value)
                            for a in super_args]
                elements = [e.with_changes(comma=_COMMA) if i < len(elements) - 1 else e
                            for i, e in enumerate(elements)]
                return updated.with_changes(body=[cst.Assign(
                    targets=[cst.AssignTarget(qualified_expr("self.layers"))],
                    value=cst.List(elements))])
            if info.local_base:
                # the parent's layers are built by its setup(); its constructor arguments are
                # inherited dataclass fields, given when the subclass is constructed
                parent = self.classes.get(info.local_base)
                parent_fields = [p.name.value for p in parent.fields] if parent else []
                if not _forwards_same_names(stmt.value.args, parent_fields):
                    self.ctx.report(stmt, "JP309", f"arguments passed to {info.local_base}.__init__ "
                                    "become inherited fields: pass them when constructing this class")
                return updated.with_changes(body=[cst.Expr(cst.parse_expression("super().setup()"))])
            return cst.RemoveFromParent()
        if method == "__init__" and info.tied and isinstance(stmt, cst.Assign) and len(stmt.targets) == 1:
            target = dotted(stmt.targets[0].target) or ""
            parts = target.split(".")
            if len(parts) == 2 and parts[1] in info.tied:
                self.ctx.report(stmt, "JP307", f"self.{parts[1]} shares its weight with self.{info.tied[parts[1]]}: "
                                f"its calls use self.{info.tied[parts[1]]}.attend")
                return cst.RemoveFromParent()
            if parts[-1] == "weight" and ".".join(parts[1:-1]) in (*info.tied, *info.tied.values()):
                return cst.RemoveFromParent()
        if method in ("__init__", *info.setup_helpers) and isinstance(stmt, cst.Assign) and len(stmt.targets) == 1:
            target, source = dotted(stmt.targets[0].target) or "", dotted(stmt.value) or ""
            if target.startswith("self.") and target.count(".") >= 2 and target.rsplit(".", 1)[1] in ("weight", "bias") \
                    and source.startswith("self.") and source.count(".") >= 2:
                # self.proj.weight = self.decoder.emb.weight: flax layers own their parameters
                self.ctx.report(stmt, "JP304", f"{target} = {source}: weight sharing between these layers is not "
                                "converted, they keep separate parameters (share one layer instead, e.g. call "
                                "the Embed's .attend for a tied output projection)")
                return _commented_out(original)
        if method == "__init__" and info.init_may_count and not isinstance(stmt, (cst.Import, cst.ImportFrom)) \
                and _reads_parameters(
                stmt, info.counting, self.parameter_counts, self.ctx.aliases):
            # print(f"{sum(p.numel() for p in self.parameters())} parameters"): flax has no
            # parameters in setup (they are created by model.init)
            if isinstance(stmt, cst.Assign):
                self.parameter_counts |= {t.target.value for t in stmt.targets if isinstance(t.target, cst.Name)}
            self.ctx.report(stmt, "JP303", "the parameters do not exist yet in setup() (model.init creates them): "
                            "count them from the initialised variables, e.g. sum(x.size for x in "
                            "jax.tree_util.tree_leaves(variables['params']))")
            return _commented_out(original)
        if method in ("__init__", *info.setup_helpers):
            # `self.hidden = hidden` restates a field: flax already has it
            if isinstance(stmt, cst.Assign) and len(stmt.targets) == 1:
                target = dotted(stmt.targets[0].target)
                if (target and target.startswith("self.") and target[5:] in info.field_names
                        and target[5:] not in info.renamed
                        and isinstance(stmt.value, cst.Name) and stmt.value.value == target[5:]):
                    return cst.RemoveFromParent()
                if target and target.startswith("self.") and target[5:] in info.renamed:
                    self.ctx.report(stmt, "JP306",
                                    f"self.{target[5:]} renamed self.{target[5:]}_: {target[5:]} is also a "
                                    "constructor argument (a frozen flax field)")
            converted = self._parameter_or_buffer(stmt, new_stmt)
            if converted is not None:
                return updated.with_changes(body=[converted])
            init_call = self._init_statement(stmt)
            if init_call:
                self.ctx.report(stmt, "JP305", init_call)
                return _commented_out(original)
        if method not in ("__init__", *info.setup_helpers) and isinstance(stmt, (cst.Assign, cst.AugAssign)):
            targets = [t.target for t in stmt.targets] if isinstance(stmt, cst.Assign) else [stmt.target]
            for t in targets:
                name = dotted(t)
                if name and name.startswith("self."):
                    self.ctx.report(stmt, "JP302", f"{name} assigned in forward: flax modules are immutable in __call__")
        return updated

    def _parameter_or_buffer(self, stmt, new_stmt) -> cst.BaseSmallStatement | None:
        # self.w = nn.Parameter(expr)  →  self.w = self.param('w', lambda rng_key: expr)
        if isinstance(stmt, cst.Assign) and isinstance(stmt.value, cst.IfExp) and isinstance(new_stmt, cst.Assign) \
                and isinstance(new_stmt.value, cst.IfExp):
            # self.bias = nn.Parameter(torch.zeros(n)) if bias else None (nanoGPT's LayerNorm)
            inner = self._parameter_or_buffer(stmt.with_changes(value=stmt.value.body),
                                              new_stmt.with_changes(value=new_stmt.value.body))
            return None if inner is None else new_stmt.with_changes(value=new_stmt.value.with_changes(body=inner.value))
        if isinstance(stmt, cst.Assign) and len(stmt.targets) == 1 and isinstance(stmt.value, cst.Call):
            target = dotted(stmt.targets[0].target)
            q = qualify(stmt.value.func, self.ctx.aliases)
            if q == "torch.nn.Parameter" and target and target.startswith("self.") and target.count(".") == 1:
                value = new_stmt.value
                data = value.args[0].value if value.args else cst.Name("None")
                requires_grad = [a for a in value.args[1:] if a.keyword is None or a.keyword.value == "requires_grad"]
                if requires_grad:
                    self.ctx.report(stmt, "JP303", "nn.Parameter(requires_grad=...) : freeze it with optax.masked instead")
                param = cst.parse_expression(f"self.param({target[5:]!r}, lambda rng_key: None)")
                custom = self.ctx.init_plan.param_overrides.get((self._info().name, target[5:]))
                if custom is not None:
                    # torch initialises the parameter in place afterwards: keep its shape only
                    shape = cst.Call(func=qualified_expr("jnp.shape"), args=[cst.Arg(data)])
                    data = cst.Call(func=custom, args=[cst.Arg(cst.Name("rng_key"), comma=cst.Comma(
                        whitespace_after=cst.SimpleWhitespace(" "))), cst.Arg(shape)])
                    self.ctx.emits.add("jnp")
                lam = param.args[1].value.with_changes(body=data)
                param = param.with_changes(args=[param.args[0], param.args[1].with_changes(value=lam)])
                return new_stmt.with_changes(value=param)
        # self.register_buffer('name', tensor[, persistent=...]) → self.name = tensor
        if isinstance(stmt, cst.Expr) and isinstance(stmt.value, cst.Call):
            name = dotted(stmt.value.func)
            call = new_stmt.value
            if name == "self.register_buffer" and len(call.args) >= 2 and isinstance(call.args[0].value, cst.SimpleString):
                attr = call.args[0].value.evaluated_value
                if isinstance(attr, str) and attr.isidentifier():
                    value = call.args[1].value
                    if "\n" in cst.Module([]).code_for_node(value) and not value.lpar:
                        value = value.with_changes(lpar=[cst.LeftParen()], rpar=[cst.RightParen()])
                    return cst.Assign(targets=[cst.AssignTarget(target=qualified_expr(f"self.{attr}"))],
                                      value=value)
        return None

    def _init_statement(self, stmt) -> str | None:
        """A torch weight-initialisation statement in __init__, described; None otherwise."""
        if isinstance(stmt, cst.Expr) and isinstance(stmt.value, cst.Call):
            q = qualify(stmt.value.func, self.ctx.aliases) or ""
            if q.startswith(INIT_STATEMENT_CALLS):
                code = cst.Module([]).code_for_node(stmt)
                return f"weight initialisation not converted yet ({code.strip()}); layers keep torch's default init"
            if dotted(stmt.value.func) == "self.apply":
                return "self.apply(...) initialisation not converted yet; layers keep torch's default init"
        return None

    def leave_For(self, original: cst.For, updated: cst.For):
        if id(original) in self.ctx.init_plan.consumed:
            self.ctx.report(original, "JP308", "initialisation loop folded into the layers' initializers")
            return cst.RemoveFromParent()
        info = self._info()
        if info is None or self._method() not in ("__init__", *info.setup_helpers):
            return updated
        if dotted(original.iter.func) if isinstance(original.iter, cst.Call) else None:
            if dotted(original.iter.func) in ("self.modules", "self.named_modules", "self.children",
                                              "self.parameters", "self.named_parameters"):
                self.ctx.report(original, "JP305",
                                "initialisation loop over self.modules() not converted yet; "
                                "layers keep torch's default init")
                return cst.FlattenSentinel([_commented_out(original)])
        return updated

    # -------------------------------------------------------------- definitions
    def leave_FunctionDef(self, original: cst.FunctionDef, updated: cst.FunctionDef):
        name = self.function_stack.pop()
        info = self._info()
        if self.function_stack:
            return updated
        if id(original) in self.ctx.init_plan.consumed:
            self.ctx.report(original, "JP308", f"{name}() folded into the layers' initializers")
            return cst.RemoveFromParent()
        self.ctx.current_function = None
        if self.loop_vars:
            self.loop_vars.pop()
        if info is None:
            return updated
        if (info.name, name) in self.ctx.init_plan.removed_methods:
            self.ctx.report(original, "JP308", f"{name}() folded into the layers' initializers")
            return cst.RemoveFromParent()
        if name == "__init__":
            return self._setup(original, updated, info)
        if name == "forward":
            updated = updated.with_changes(name=cst.Name("__call__"))
            return _with_train_param(updated)
        if name in info.runtime_methods:
            return _with_train_param(updated)
        return updated

    def _setup(self, original: cst.FunctionDef, updated: cst.FunctionDef, info: ClassInfo):
        params = original.params
        if params.star_arg not in (cst.MaybeSentinel.DEFAULT, None) and isinstance(params.star_arg, cst.Param) \
                or params.star_kwarg is not None:
            self.ctx.report(original, "JP301", "*args/**kwargs in __init__ cannot become dataclass fields")
        # the rules converted the defaults (dtype=torch.float32 → jnp.float32): fields take them
        for param in (*updated.params.params, *updated.params.kwonly_params):
            if param.default is not None:
                self.converted_defaults[(info.name, param.name.value)] = param.default
        prologue = [cst.parse_statement(f"{n} = self.{n}") for n in sorted(info.reassigned)]
        epilogue = [cst.parse_statement(f"self.{a}{'_' if a in info.renamed else ''} = _{a}")
                    for a in sorted(info.accumulated)]
        body = list(updated.body.body)
        if epilogue:
            body = body + epilogue
        body = prologue + body
        if not body:
            body = [cst.SimpleStatementLine([cst.Pass()])]
        return updated.with_changes(
            name=cst.Name("setup"),
            params=cst.Parameters(params=[cst.Param(cst.Name("self"))]),
            body=updated.body.with_changes(body=body),
            returns=None,
        )

    def leave_ClassDef(self, original: cst.ClassDef, updated: cst.ClassDef):
        info = self.class_stack.pop()
        self.function_stack = getattr(self, "_saved_functions", [])
        self.ctx.current_class = next((c for c in reversed(self.class_stack) if c is not None), None)
        if info is None:
            return updated
        bases = []
        for base in updated.bases:
            q = qualify(base.value, self.ctx.aliases)
            if q in MODULE_BASES:
                bases.append(base.with_changes(value=qualified_expr("nn.Module")))
                self.ctx.emits.add("nn")
            else:
                bases.append(base)
        fields = []
        for p in info.fields:
            annotation = _annotation_for(p)
            if isinstance(annotation.annotation, cst.Name) and annotation.annotation.value == "Any":
                self.ctx.emits.add("Any")
            default = _field_default(self.converted_defaults.get((info.name, p.name.value), p.default))
            if default is not None:
                stmt = cst.AnnAssign(target=cst.Name(p.name.value), annotation=annotation, value=default)
            else:
                stmt = cst.AnnAssign(target=cst.Name(p.name.value), annotation=annotation, value=None)
            fields.append(cst.SimpleStatementLine([stmt]))
        body = list(updated.body.body)
        # keep a docstring first
        head = []
        if body and isinstance(body[0], cst.SimpleStatementLine) and isinstance(body[0].body[0], cst.Expr) \
                and isinstance(body[0].body[0].value, (cst.SimpleString, cst.ConcatenatedString)):
            head, body = body[:1], body[1:]
        if fields and body:
            body[0] = body[0].with_changes(leading_lines=[cst.EmptyLine(indent=False), *body[0].leading_lines]) \
                if not body[0].leading_lines else body[0]
        if info.sequential_base and not info.has_forward:
            self.ctx.emits.add("call_layer")
            body.append(cst.parse_statement(
                "def __call__(self, x, train: bool = False):\n"
                "    for layer in self.layers:\n"
                "        x = call_layer(layer, x, train)\n"
                "    return x\n").with_changes(leading_lines=[cst.EmptyLine(indent=False)]))
        return updated.with_changes(bases=bases, body=updated.body.with_changes(body=[*head, *fields, *body]))


def _call_with_kind(call: cst.Call, kind: SubmoduleKind, ctx) -> cst.BaseExpression:
    """Pass the training flag to a submodule call the way that submodule takes it."""
    if kind.call == "any":
        # layers of different kinds behind one name: let the helper pick at run time
        if len(call.args) == 1 and not call.args[0].keyword and not call.args[0].star:
            ctx.emits.add("call_layer")
            return cst.Call(func=cst.Name("call_layer"),
                            args=[cst.Arg(call.func, comma=_COMMA), call.args[0].with_changes(comma=_COMMA),
                                  cst.Arg(cst.Name(TRAIN))])
        return call
    arg = _train_kwarg(kind.call)
    return _add_arg(call, arg) if arg else call


_COMMA = cst.Comma(whitespace_after=cst.SimpleWhitespace(" "))


def _with_train_param(fn: cst.FunctionDef) -> cst.FunctionDef:
    params = fn.params
    existing = {p.name.value for p in [*params.params, *params.kwonly_params, *params.posonly_params]}
    if TRAIN in existing:
        return fn
    train = cst.Param(name=cst.Name(TRAIN), annotation=cst.Annotation(cst.Name("bool")),
                      default=cst.Name("False"),
                      equal=cst.AssignEqual(whitespace_before=cst.SimpleWhitespace(" "),
                                            whitespace_after=cst.SimpleWhitespace(" ")))
    if isinstance(params.star_arg, cst.Param) or params.kwonly_params:
        return fn.with_changes(params=params.with_changes(kwonly_params=[*params.kwonly_params, train]))
    if isinstance(params.star_arg, cst.ParamStar):
        return fn.with_changes(params=params.with_changes(kwonly_params=[*params.kwonly_params, train]))
    plist = list(params.params)
    if plist:
        plist[-1] = plist[-1].with_changes(comma=cst.Comma(whitespace_after=cst.SimpleWhitespace(" ")))
    return fn.with_changes(params=params.with_changes(params=[*plist, train]))


def _forwards_same_names(args, parent_fields: list[str]) -> bool:
    """``super().__init__(d, k=k)`` where every argument is the parent's field of that name:
    the inherited fields already carry those values."""
    for i, a in enumerate(args):
        name = a.keyword.value if a.keyword is not None else (parent_fields[i] if i < len(parent_fields) else None)
        if a.star or name is None or not (isinstance(a.value, cst.Name) and a.value.value == name):
            return False
    return True


def _is_super_init(stmt, ctx) -> bool:
    if not (isinstance(stmt, cst.Expr) and isinstance(stmt.value, cst.Call)):
        return False
    func = stmt.value.func
    if not (isinstance(func, cst.Attribute) and func.attr.value == "__init__"):
        return False
    inner = func.value
    if isinstance(inner, cst.Call) and dotted(inner.func) == "super":
        return True
    return qualify(inner, ctx.aliases) in MODULE_BASES


def _looks_like_ordered_dict(expr) -> bool:
    return isinstance(expr, cst.Call) and (dotted(expr.func) or "").endswith("OrderedDict")


def _commented_out(stmt: cst.CSTNode) -> cst.SimpleStatementLine:
    """Replace a statement with ``pass`` preceded by its original code as comments."""
    code = cst.Module([]).code_for_node(stmt.with_changes(leading_lines=[]))
    lines = [cst.EmptyLine(indent=True, comment=cst.Comment(f"# {line}" if line.strip() else "#"))
             for line in code.rstrip("\n").splitlines()]
    return cst.SimpleStatementLine(body=[cst.Pass()], leading_lines=[*stmt.leading_lines, *lines])
