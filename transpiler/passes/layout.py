"""``--layout nhwc``: converted image models that run channels-last (issue #8).

Runs on the torch source tree before the table-driven rules, only under ``--layout nhwc``.

1. Analysis. For each ``nn.Module`` class of the file: what each attribute built in
   ``__init__`` (and the helpers it calls) holds (a layer, a Sequential of layers, a class of
   this file, a module passed to the constructor), then an abstract run of ``forward`` that
   follows image tensors (4-D, N C H W in torch) through its statements: which parameters are
   images, which expressions depend on the image layout (dims, sizes, flattens, padding), and
   what is returned. Anything not understood that touches an image makes the class keep NCHW
   (JP202, at that line). Classes that hand images to each other (a block and the network
   that calls it, a module built by one class and passed to another) form one group that is
   channels-last as a whole or not at all.
2. Rewrite, still in torch terms, for the channels-last classes: dims remapped (1 → 3, 2 → 1,
   3 → 2), ``x.size()`` unpacking reordered, ``F.pad`` given the channel pair, a flatten either
   left as it is (the Dense that reads it gets a ``flatten_rows`` entry, or the map is 1x1) or
   preceded by a permute back to channels-first; their image layers and pooling/resampling
   functions are marked (``ctx.channels_last``) so the rules render the entries' ``to_nhwc``
   templates; each class gets the ``jaxport_layout`` ClassVar of the layout contract.
3. Callers in the same file (scripts, train loops) that call a channels-last model with an
   image batch pass ``torch.permute(data, (0, 2, 3, 1))``; where a caller gets images back,
   or the model is reached through a name whose class is unknown, the classes keep NCHW.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import libcst as cst

from ..mapping import ELEMENTWISE, IMAGE_ROLES
from ..names import dotted, qualify
from ..walk import walk

# ----------------------------------------------------------------------------- tables
# Which layers, functions and tensor methods are image ops (and how they treat the axes) or
# elementwise is table data: the ``channels`` key of their entries in mappings/ (roles in
# transpiler.mapping.IMAGE_ROLES). The sets below are the dim-taking ops this pass rewrites.
BINARY_METHODS = {"add", "sub", "mul", "div", "add_", "sub_", "mul_", "div_"}
REDUCTIONS = {"mean", "sum", "amax", "amin", "std", "var", "logsumexp"}
SOFTMAX = {"torch.nn.functional.softmax", "torch.nn.functional.log_softmax", "torch.softmax",
           "torch.log_softmax"}
CAT = {"torch.cat", "torch.concat", "torch.concatenate"}
NCHW_TO_NHWC = {0: 0, 1: 3, 2: 1, 3: 2}
MODULE_BASES = {"torch.nn.Module", "torch.nn.Sequential"}
MODEL_NAMES = {"model", "net", "netG", "netD", "generator", "discriminator", "classifier", "encoder",
               "decoder", "module", "models"}
SCRIPT_MODEL_METHODS = {"train", "eval", "parameters", "named_parameters", "state_dict", "zero_grad",
                        "load_state_dict", "to", "modules", "children", "cuda", "cpu"}


def image_role(entries: dict, q: str | None) -> str | None:
    """The ``channels`` role of a layer or function entry that is an image op, else None."""
    entry = entries.get(q) if q else None
    return entry.channels if entry is not None and entry.channels in IMAGE_ROLES else None


def is_elementwise(entries: dict, q: str | None) -> bool:
    entry = entries.get(q) if q else None
    return entry is not None and entry.channels == ELEMENTWISE


def is_elementwise_method(methods: dict, name: str) -> bool:
    """``x.relu()``, and ``x.relu_()`` through its out-of-place twin (the tables list in-place
    methods by their twins: the mutation pass rewrites them after this pass)."""
    return is_elementwise(methods, name) or (name.endswith("_") and is_elementwise(methods, name[:-1]))


def remap_dim(d: int) -> int | None:
    if not -4 <= d < 4:
        return None
    return NCHW_TO_NHWC[d % 4]


# ----------------------------------------------------------------------------- specs
@dataclass(frozen=True)
class Layer:
    q: str
    role: str            # define | keep | pool | resize | elem | flatten | linear | other
    one: bool = False    # adaptive pooling to 1x1


@dataclass(frozen=True)
class Seq:               # nn.Sequential with known order (children layers_{i})
    items: tuple


@dataclass(frozen=True)
class Dyn:               # nn.Sequential(*layers) built by appends: order not tracked
    items: frozenset
    last: object = None  # the element known to come last, if any


@dataclass(frozen=True)
class ModList:
    items: frozenset


@dataclass(frozen=True)
class ClassRef:
    names: frozenset


@dataclass(frozen=True)
class FieldModule:       # self.x = <constructor argument>
    cls: str
    param: str


@dataclass(frozen=True)
class Union:
    items: frozenset


@dataclass(frozen=True)
class NoneSpec:
    pass


@dataclass(frozen=True)
class Unknown:
    what: str


@dataclass(frozen=True)
class ListSpec:          # a python list of modules in a builder
    ordered: tuple | None
    items: frozenset
    last: object = None


def _union(specs) -> object:
    flat: set = set()
    for s in specs:
        if isinstance(s, Union):
            flat |= s.items
        else:
            flat.add(s)
    if len(flat) == 1:
        return next(iter(flat))
    return Union(frozenset(flat)) if flat else Unknown("nothing")


# ----------------------------------------------------------------------------- values
@dataclass
class Site:
    """A flatten of a channels-last map."""
    node: cst.CSTNode | None
    how: str                     # arg0 (torch.flatten) | receiver (x.flatten / view / reshape)
    src: str | None
    one: bool
    dense: list = field(default_factory=list)
    bad: bool = False


@dataclass
class V:
    kind: str                    # img | plain | unknown | size | batch | int | tuple | module
    src: str | None = None       # img: flax path of the layer that fixed C
    one: bool = False            # img: spatial size 1x1
    site: Site | None = None     # plain: flattened from an image
    param: str | None = None     # unknown: forward parameter it comes from
    items: tuple = ()
    spec: object = None          # module
    path: str | None = None      # module: flax path


PLAIN = V("plain")
INT = V("int")


class Fail(Exception):
    def __init__(self, node, what: str, image: bool = True) -> None:
        super().__init__(what)
        self.node, self.what, self.image = node, what, image


class NeedImage(Exception):
    def __init__(self, param: str) -> None:
        super().__init__(param)
        self.param = param


def _code(node) -> str:
    text = cst.Module([]).code_for_node(node).strip()
    text = " ".join(text.split())
    return text if len(text) <= 60 else text[:57] + "..."


def _int(node) -> int | None:
    if isinstance(node, cst.Integer):
        return int(node.value)
    if isinstance(node, cst.UnaryOperation) and isinstance(node.operator, cst.Minus) \
            and isinstance(node.expression, cst.Integer):
        return -int(node.expression.value)
    return None


def _ints(node) -> tuple[int, ...] | None:
    one = _int(node)
    if one is not None:
        return (one,)
    if isinstance(node, (cst.Tuple, cst.List)):
        out = tuple(_int(e.value) for e in node.elements)
        return out if all(v is not None for v in out) and out else None
    return None


def _is_one(node) -> bool:
    values = _ints(node)
    return values is not None and all(v == 1 for v in values) and len(values) in (1, 2)


def _bool(node) -> bool | None:
    if isinstance(node, cst.Name) and node.value in ("True", "False"):
        return node.value == "True"
    return None


def _arg(call: cst.Call, index: int | None, name: str | None):
    """The argument bound to (position, keyword), or None."""
    for a in call.args:
        if a.keyword is not None and name is not None and a.keyword.value == name:
            return a
    positional = [a for a in call.args if a.keyword is None and not a.star]
    if index is not None and index < len(positional):
        return positional[index]
    return None


_COMMA = cst.Comma(whitespace_after=cst.SimpleWhitespace(" "))


def _int_node(v: int) -> cst.BaseExpression:
    return cst.Integer(str(v)) if v >= 0 else cst.UnaryOperation(cst.Minus(), cst.Integer(str(-v)))


# ----------------------------------------------------------------------------- class scan
@dataclass
class ClassScan:
    name: str
    node: cst.ClassDef
    methods: dict
    init_params: list                        # constructor parameter names (after self)
    init_defaults: dict
    specs: dict = field(default_factory=dict)            # attr → spec
    tensor_attrs: set = field(default_factory=set)       # nn.Parameter / buffers
    builders: set = field(default_factory=set)           # __init__ + helpers it calls
    renamed: set = field(default_factory=set)
    seq_items: object = None                             # nn.Sequential subclass: its Seq spec
    scalar_attrs: set = field(default_factory=set)       # attributes that hold Python numbers
    forward_params: list = field(default_factory=list)


@dataclass
class Summary:
    image_params: tuple
    ret: V
    ok: bool


class Layout:
    def __init__(self, module: cst.Module, ctx) -> None:
        self.module, self.ctx = module, ctx
        self.aliases = ctx.aliases
        self.classes: dict[str, ClassScan] = {}
        self.value_classes: frozenset = frozenset()
        self.passes: dict[tuple[str, str], list] = {}     # (class, ctor param) → specs passed
        self.edges: set[tuple[str, str]] = set()
        self.results: dict[str, object] = {}              # class → Analysis | Fail
        self.forced: dict[str, set] = {}
        self.builder_calls: set[int] = set()               # class-constructor calls seen in builders

    # ------------------------------------------------------------------ scanning
    def scan(self) -> None:
        defs = [s for s in self.module.body if isinstance(s, cst.ClassDef)]
        names: set[str] = set()
        changed = True
        while changed:
            changed = False
            for c in defs:
                if c.name.value not in names and any(
                        qualify(b.value, self.aliases) in MODULE_BASES or dotted(b.value) in names for b in c.bases):
                    names.add(c.name.value)
                    changed = True
        for c in defs:
            if c.name.value not in names:
                continue
            methods = {s.name.value: s for s in c.body.body if isinstance(s, cst.FunctionDef)}
            init = methods.get("__init__")
            params, defaults = [], {}
            if init is not None:
                for p in [*init.params.params[1:], *init.params.kwonly_params]:
                    params.append(p.name.value)
                    if p.default is not None:
                        defaults[p.name.value] = p.default
            scan = ClassScan(c.name.value, c, methods, params, defaults)
            fwd = methods.get("forward")
            if fwd is not None:
                scan.forward_params = [p.name.value for p in fwd.params.params[1:]]
            self.classes[scan.name] = scan
        # local classes used as values (``block=BasicBlock``, ``make(Bottleneck, ...)``)
        used: set[str] = set()
        local = set(self.classes)

        class _Values(cst.CSTVisitor):
            def visit_Call(self, node):
                if dotted(node.func) in ("super", "isinstance", "issubclass", "type", "print"):
                    return
                for a in node.args:
                    if isinstance(a.value, cst.Name) and a.value.value in local:
                        used.add(a.value.value)

            def visit_Param(self, node):
                if isinstance(node.default, cst.Name) and node.default.value in local:
                    used.add(node.default.value)

        walk(self.module, _Values())
        self.value_classes = frozenset(used)
        for scan in self.classes.values():
            self._scan_class(scan)
            for b in scan.node.bases:
                if dotted(b.value) in self.classes:     # inherited forward / layers: one layout
                    self.edges.add((scan.name, dotted(b.value)))

    def _scan_class(self, scan: ClassScan) -> None:
        init = scan.methods.get("__init__")
        if init is None:
            return
        builders = {"__init__"}
        pending = [init]
        while pending:
            fn = pending.pop()
            for call in _calls(fn):
                name = dotted(call.func)
                if name and name.startswith("self.") and name[5:] in scan.methods and name[5:] not in builders:
                    builders.add(name[5:])
                    pending.append(scan.methods[name[5:]])
        scan.builders = builders
        self._helper_cache: dict = {}
        env = self._run_builder(init, scan, {})
        attrs: dict[str, list] = {}
        for name in sorted(builders - {"__init__"}):
            fn = scan.methods[name]
            for attr, value, fenv in self._self_assignments(fn, scan):
                attrs.setdefault(attr, []).append(self._spec(value, fenv, scan))
        for attr, value, fenv in self._self_assignments(init, scan):
            if attr in scan.init_params and not (isinstance(value, cst.Name) and value.value == attr):
                scan.renamed.add(attr)
            attrs.setdefault(attr, []).append(self._spec(value, fenv, scan))
        for stmt_call in _calls(init):
            if dotted(stmt_call.func) == "self.register_buffer" and stmt_call.args and \
                    isinstance(stmt_call.args[0].value, cst.SimpleString):
                scan.tensor_attrs.add(str(stmt_call.args[0].value.evaluated_value))
            # nn.Sequential subclass: super().__init__(layers...)
            f = stmt_call.func
            if isinstance(f, cst.Attribute) and f.attr.value == "__init__" and isinstance(f.value, cst.Call) \
                    and dotted(f.value.func) == "super" and stmt_call.args and \
                    any(qualify(b.value, self.aliases) == "torch.nn.Sequential" for b in scan.node.bases):
                scan.seq_items = self._seq_spec(stmt_call, env, scan)
        values: dict[str, list] = {}
        for name in builders:
            for attr, value, _ in self._self_assignments(scan.methods[name], scan):
                values.setdefault(attr, []).append(value)
        scan.scalar_attrs = {a for a, vs in values.items() if all(self._scalar(v, scan) for v in vs)}
        for attr, found in attrs.items():
            spec = _union(found)
            if isinstance(spec, (Layer, Seq, Dyn, ModList, ClassRef, FieldModule, Union)) and \
                    not (isinstance(spec, Union) and all(isinstance(i, (Unknown,)) for i in spec.items)):
                scan.specs[attr] = spec
            elif isinstance(spec, Unknown) and spec.what.startswith("tensor"):
                scan.tensor_attrs.add(attr)
            elif isinstance(spec, Unknown) and spec.what != "value":
                scan.specs[attr] = spec

    def _self_assignments(self, fn, scan):
        """(attr, value, env) for ``self.attr = value`` in a builder, with the local names
        bound before it (one flow-insensitive env per function: every binding of a name counts)."""
        env = self._run_builder(fn, scan, {})
        out = []
        for node in _assigns(fn):
            for t in node.targets:
                name = dotted(t.target)
                if name and name.startswith("self.") and name.count(".") == 1:
                    out.append((name[5:], node.value, env))
        return out

    def _run_builder(self, fn, scan, _env) -> dict:
        """Local names of a builder function → the union of the specs bound to them."""
        key = (scan.name, fn.name.value)
        cache = getattr(self, "_envs", None)
        if cache is None:
            cache = self._envs = {}
        if key in cache:
            return cache[key]
        env: dict[str, list] = {}
        cache[key] = env
        params = {p.name.value for p in [*fn.params.params, *fn.params.kwonly_params]}
        for p in [*fn.params.params, *fn.params.kwonly_params]:
            if p.name.value == "self":
                continue
            env[p.name.value] = [FieldModule(scan.name, p.name.value) if fn.name.value == "__init__"
                                 else Unknown("param")]
        lists: dict[str, dict] = {}     # name → {"ordered": [...] | None, "items": set, "last": spec}

        def visit(stmts, depth):
            for stmt in stmts:
                if isinstance(stmt, cst.SimpleStatementLine):
                    for small in stmt.body:
                        simple(small, depth)
                elif isinstance(stmt, (cst.If, cst.For, cst.While, cst.With, cst.Try)):
                    for block in _blocks(stmt):
                        visit(block, depth + 1)

        def spec(value):
            return self._spec(value, env, scan)

        def simple(small, depth):
            if isinstance(small, cst.Assign) and len(small.targets) == 1 and isinstance(small.targets[0].target, cst.Name):
                name = small.targets[0].target.value
                value = small.value
                if isinstance(value, (cst.List, cst.Tuple, cst.ListComp)) or (
                        isinstance(value, cst.BinaryOperation) and isinstance(value.left, cst.List)):
                    s = spec(value)
                    if not isinstance(s, ListSpec):
                        env.setdefault(name, []).append(s)
                        return
                    if name in lists:
                        lists[name]["ordered"] = None
                        lists[name]["items"] |= set(s.items)
                    else:
                        lists[name] = {"ordered": list(s.ordered) if s.ordered is not None and depth == 0 else None,
                                       "items": set(s.items), "last": s.last if depth == 0 else None}
                    env[name] = [self._list_spec(lists[name])]
                else:
                    env.setdefault(name, []).append(spec(value))
                    if name in params and fn.name.value != "__init__":
                        pass
            elif isinstance(small, cst.AugAssign) and isinstance(small.target, cst.Name) and \
                    isinstance(small.operator, cst.AddAssign) and small.target.value in lists:
                add(small.target.value, spec(small.value), depth)
            elif isinstance(small, cst.Expr) and isinstance(small.value, cst.Call):
                call = small.value
                f = call.func
                if isinstance(f, cst.Attribute) and isinstance(f.value, cst.Name) and f.value.value in lists \
                        and f.attr.value in ("append", "extend", "insert") and call.args:
                    value = call.args[-1].value
                    s = spec(value)
                    if f.attr.value == "append":
                        s = ListSpec((s,), frozenset({s}), s)
                    if f.attr.value == "insert":
                        lists[f.value.value]["ordered"] = None
                        lists[f.value.value]["items"] |= set(s.items)
                        env[f.value.value] = [self._list_spec(lists[f.value.value])]
                    else:
                        add(f.value.value, s, depth)
                else:
                    spec(call)     # records constructor arguments passed to classes

        def add(name, s, depth):
            entry = lists[name]
            if not isinstance(s, ListSpec):
                entry["ordered"] = None
                entry["items"].add(Unknown("list"))
                env[name] = [self._list_spec(entry)]
                return
            if entry["ordered"] is not None and depth == 0 and s.ordered is not None:
                entry["ordered"] = entry["ordered"] + list(s.ordered)
            else:
                entry["ordered"] = None
            entry["items"] |= set(s.items)
            entry["last"] = s.last if depth == 0 else None
            env[name] = [self._list_spec(entry)]

        visit(fn.body.body, 0)
        return env

    def _scalar(self, value, scan: ClassScan) -> bool:
        """A Python number for sure: literals, constructor arguments whose default is a
        number, and arithmetic of those."""
        if isinstance(value, (cst.Integer, cst.Float)):
            return True
        if isinstance(value, cst.Name):
            if value.value in ("True", "False"):
                return True
            default = scan.init_defaults.get(value.value)
            return isinstance(default, (cst.Integer, cst.Float)) or (
                isinstance(default, cst.Name) and default.value in ("True", "False")) or (
                isinstance(default, cst.UnaryOperation) and isinstance(default.expression, (cst.Integer, cst.Float)))
        if isinstance(value, cst.Attribute):
            name = dotted(value)
            return bool(name) and name.startswith("self.") and name.count(".") == 1 and \
                name[5:] in scan.init_params and self._scalar(cst.Name(name[5:]), scan)
        if isinstance(value, cst.UnaryOperation):
            return self._scalar(value.expression, scan)
        if isinstance(value, cst.BinaryOperation):
            return self._scalar(value.left, scan) and self._scalar(value.right, scan)
        return False

    @staticmethod
    def _list_spec(entry) -> ListSpec:
        ordered = tuple(entry["ordered"]) if entry["ordered"] is not None else None
        return ListSpec(ordered, frozenset(entry["items"]), entry["last"])

    def _spec(self, value, env, scan) -> object:
        if isinstance(value, cst.Name):
            if value.value == "None":
                return NoneSpec()
            if value.value in env:
                return _union(env[value.value])
            return Unknown("value")
        if isinstance(value, (cst.List, cst.Tuple)):
            items = []
            for el in value.elements:
                if isinstance(el, cst.StarredElement):
                    inner = self._spec(el.value, env, scan)
                    if isinstance(inner, ListSpec):
                        return ListSpec(None, frozenset(items) | inner.items, None)
                    return ListSpec(None, frozenset({Unknown("list")}), None)
                items.append(self._spec(el.value, env, scan))
            return ListSpec(tuple(items), frozenset(items), items[-1] if items else None)
        if isinstance(value, cst.ListComp):
            s = self._spec(value.elt, env, scan)
            return ListSpec(None, frozenset({s}), None)
        if isinstance(value, cst.BinaryOperation) and isinstance(value.operator, cst.Add):
            left, right = self._spec(value.left, env, scan), self._spec(value.right, env, scan)
            if isinstance(left, ListSpec) and isinstance(right, ListSpec):
                ordered = left.ordered + right.ordered if left.ordered is not None and right.ordered is not None else None
                return ListSpec(ordered, left.items | right.items, right.last)
            return Unknown("value")
        if isinstance(value, cst.IfExp):
            return _union([self._spec(value.body, env, scan), self._spec(value.orelse, env, scan)])
        if not isinstance(value, cst.Call):
            return Unknown("value")
        q = qualify(value.func, self.aliases)
        if q == "torch.nn.Sequential":
            return self._seq_spec(value, env, scan)
        if q == "torch.nn.ModuleList":
            if not value.args:
                return ModList(frozenset())
            inner = self._spec(value.args[0].value, env, scan)
            return ModList(inner.items) if isinstance(inner, ListSpec) else Unknown("a ModuleList")
        if q in ("torch.nn.Parameter", "torch.nn.ParameterList", "torch.nn.ParameterDict") or \
                (q and q.startswith("torch.") and q not in self.ctx.tables.layers and q != "torch.nn.ModuleDict"):
            return Unknown("tensor")
        if q == "torch.nn.ModuleDict":
            return Unknown("a ModuleDict")
        if q is not None:
            role = image_role(self.ctx.tables.layers, q)
            if role is not None:
                one = role == "pool" and bool(value.args) and _is_one(value.args[0].value)
                return Layer(q, role, one)
            if is_elementwise(self.ctx.tables.layers, q):
                return Layer(q, "elem")
            if q == "torch.nn.Flatten":
                return Layer(q, "flatten" if not value.args else "other")
            if q == "torch.nn.Linear":
                return Layer(q, "linear")
            return Layer(q, "other")
        name = dotted(value.func)
        if name and name.startswith("self.") and name[5:] in scan.methods:
            key = (scan.name, name[5:])
            cache = self._helper_cache
            if key not in cache:
                cache[key] = Unknown("recursive builder")
                fn = scan.methods[name[5:]]
                fenv = self._run_builder(fn, scan, {})
                cache[key] = _union([self._spec(r, fenv, scan) for r in _returns(fn)] or [Unknown("value")])
            return cache[key]
        if isinstance(value.func, cst.Name):
            callee = value.func.value
            if callee in self.classes and callee not in env:
                targets = frozenset({callee})
                self.builder_calls.add(id(value))
            elif callee in env and self.value_classes:
                targets = self.value_classes
            else:
                return Unknown(f"{callee}(...)")
            for target in targets:
                self._record_passes(target, value, env, scan)
            return ClassRef(targets)
        return Unknown("value")

    def _seq_spec(self, call: cst.Call, env, scan):
        args = call.args
        if len(args) == 1 and not args[0].star and _looks_like_ordered_dict(args[0].value):
            return Unknown("an OrderedDict Sequential")
        items, dynamic, last = [], None, None
        for a in args:
            if a.keyword is not None:
                return Unknown("value")
            if a.star == "*":
                inner = self._spec(a.value, env, scan)
                if not isinstance(inner, ListSpec):
                    return Unknown("a Sequential of unknown layers")
                if inner.ordered is not None and dynamic is None:
                    items.extend(inner.ordered)
                    continue
                dynamic = (dynamic or set()) | set(items) | set(inner.items)
                last = inner.last
                continue
            s = self._spec(a.value, env, scan)
            if dynamic is not None:
                dynamic.add(s)
                last = s
            else:
                items.append(s)
        if dynamic is not None:
            return Dyn(frozenset(dynamic), last)
        return Seq(tuple(items))

    def _record_passes(self, target: str, call: cst.Call, env, scan) -> None:
        cls = self.classes.get(target)
        if cls is None:
            return
        bound: dict[str, cst.BaseExpression] = {}
        positional = [a for a in call.args if a.keyword is None]
        if any(a.star for a in call.args):
            for p in cls.init_params:
                self.passes.setdefault((target, p), []).append(Unknown("starred arguments"))
            return
        for p, a in zip(cls.init_params, positional):
            bound[p] = a.value
        for a in call.args:
            if a.keyword is not None:
                bound[a.keyword.value] = a.value
        for p, v in bound.items():
            self.passes.setdefault((target, p), []).append((self._spec(v, env, scan), scan.name))

    def field_spec(self, cls: ClassScan, param: str):
        """What ``self.x = param`` holds: the union of what this file's builders pass (or the
        default), when every construction of the class is one of theirs."""
        specs = []
        for item in self.passes.get((cls.name, param), []):
            if isinstance(item, tuple):
                spec, passer = item
                specs.append(spec)
                if not isinstance(spec, NoneSpec):
                    self.edges.add((passer, cls.name))
            else:
                specs.append(item)
        # constructions outside the builders we read (script code) that pass this argument
        index = cls.init_params.index(param) if param in cls.init_params else 99
        for call in _calls(self.module):
            if isinstance(call.func, cst.Name) and call.func.value == cls.name and id(call) not in self.builder_calls:
                positional = [a for a in call.args if a.keyword is None]
                if len(positional) > index or any(a.keyword is not None and a.keyword.value == param for a in call.args) \
                        or any(a.star for a in call.args):
                    specs.append(Unknown(f"a module passed to {cls.name}() outside this file's models"))
        default = cls.init_defaults.get(param)
        specs.append(NoneSpec() if default is None or (isinstance(default, cst.Name) and default.value == "None")
                     else Unknown("a default module"))
        return _union(specs)

    # ------------------------------------------------------------------ analysis
    def summary(self, name: str) -> Summary | None:
        result = self.results.get(name)
        if result is None and name not in self._in_progress:
            self.analyze(name)
            result = self.results.get(name)
        if isinstance(result, Analysis):
            return Summary(tuple(result.image_params), result.ret, True)
        return None

    def analyze(self, name: str) -> None:
        self._in_progress.add(name)
        try:
            cls = self.classes[name]
            forced = set(self.forced.get(name, ()))
            image_params = set(forced)
            for _ in range(len(cls.forward_params) + 2):
                analysis = Analysis(self, cls, image_params)
                try:
                    analysis.run()
                except NeedImage as need:
                    image_params.add(need.param)
                    continue
                except Fail as fail:
                    self.results[name] = fail
                    return
                self.results[name] = analysis
                return
            self.results[name] = Fail(cls.node, "forward's parameters")
        finally:
            self._in_progress.discard(name)

    def run(self) -> None:
        self.scan()
        self._in_progress: set[str] = set()
        for _ in range(6):
            before = {k: set(v) for k, v in self.forced.items()}
            self.results = {}
            self.edges_calls: set[tuple[str, str]] = set()
            for name in self.classes:
                if name not in self.results:
                    self.analyze(name)
            if before == {k: set(v) for k, v in self.forced.items()}:
                break

    # ------------------------------------------------------------------ decisions
    def decide(self) -> tuple[set[str], dict[str, object]]:
        """(channels-last classes, failures to report: class → Fail)."""
        image = set()
        failures: dict[str, Fail] = {}
        for name, result in self.results.items():
            if isinstance(result, Fail):
                if self._touches_images(name):
                    failures[name] = result
            elif result.is_image:
                image.add(name)
            elif self._has_image_layers(name):
                failures[name] = Fail(self.classes[name].node, "image layers that forward does not use on images")
        edges = self.edges | self.edges_calls
        parent = {n: n for n in self.classes}

        def find(n):
            while parent[n] != n:
                parent[n] = parent[parent[n]]
                n = parent[n]
            return n

        for a, b in edges:
            if a in parent and b in parent:
                parent[find(a)] = find(b)
        bad_roots = {find(n): n for n in failures}
        kept: dict[str, Fail] = dict(failures)
        for n in sorted(image):
            root = find(n)
            if root in bad_roots:
                culprit = bad_roots[root]
                kept[n] = Fail(self.classes[n].node, f"it exchanges images with {culprit}, which keeps NCHW")
        channels_last = {n for n in image if n not in kept}
        return channels_last, kept

    def _touches_images(self, name: str) -> bool:
        result = self.results.get(name)
        return self._has_image_layers(name) or bool(self.forced.get(name)) or \
            (isinstance(result, Fail) and result.image)

    def _has_image_layers(self, name: str) -> bool:
        cls = self.classes[name]
        found = False

        tables = self.ctx.tables

        class _V(cst.CSTVisitor):
            def visit_Call(inner, node):
                nonlocal found
                q = qualify(node.func, self.aliases)
                if image_role(tables.layers, q) or image_role(tables.functions, q):
                    found = True

        walk(cls.node, _V())
        return found


def _looks_like_ordered_dict(expr) -> bool:
    return isinstance(expr, cst.Call) and (dotted(expr.func) or "").endswith("OrderedDict")


def _blocks(stmt) -> list:
    out = []
    if isinstance(stmt, cst.If):
        out.append(stmt.body.body)
        if stmt.orelse is not None:
            if isinstance(stmt.orelse, cst.If):
                out.extend(_blocks(stmt.orelse))
            else:
                out.append(stmt.orelse.body.body)
    elif isinstance(stmt, (cst.For, cst.While)):
        out.append(stmt.body.body)
        if stmt.orelse is not None:
            out.append(stmt.orelse.body.body)
    elif isinstance(stmt, cst.With):
        out.append(stmt.body.body)
    elif isinstance(stmt, cst.Try):
        out.append(stmt.body.body)
        for h in stmt.handlers:
            out.append(h.body.body)
        if stmt.orelse is not None:
            out.append(stmt.orelse.body.body)
        if stmt.finalbody is not None:
            out.append(stmt.finalbody.body.body)
    return out


def _calls(node) -> list[cst.Call]:
    found = []

    class _V(cst.CSTVisitor):
        def visit_Call(self, n):
            found.append(n)

    walk(node, _V())
    return found


def _assigns(fn) -> list[cst.Assign]:
    found = []

    class _V(cst.CSTVisitor):
        def visit_Assign(self, n):
            found.append(n)

    walk(fn, _V())
    return found


def _returns(fn) -> list:
    found = []

    class _V(cst.CSTVisitor):
        def visit_Return(self, n):
            if n.value is not None:
                found.append(n.value)

        def visit_FunctionDef(self, n):
            return n is fn

    walk(fn, _V())
    return found


def _names_in(node) -> set[str]:
    found = set()

    class _V(cst.CSTVisitor):
        def visit_Name(self, n):
            found.add(n.value)

    walk(node, _V())
    return found


# ----------------------------------------------------------------------------- forward analysis
class Analysis:
    """An abstract run of one class's ``forward`` (or a Sequential subclass's chain) with the
    given parameters as channels-last images. Raises Fail or NeedImage."""

    def __init__(self, layout: Layout, cls: ClassScan, image_params: set[str]) -> None:
        self.layout, self.cls = layout, cls
        self.tables = layout.ctx.tables
        self.aliases = layout.aliases
        self.image_params = [p for p in cls.forward_params if p in image_params] or \
            ([p for p in ("x",) if p in image_params] if cls.seq_items is not None else [])
        self.rewrites: dict[int, object] = {}
        self.marks: set[int] = set()
        self.sites: list[Site] = []
        self.returns: list[V] = []
        self.ret = PLAIN
        self.is_image = False
        self.flatten_rows: dict[str, str] = {}
        self.touched = bool(self.image_params)
        self.returns_images = False
        self.dense_inputs: dict[str, list] = {}    # Dense path → the flatten sites it reads (None: other input)

    # ------------------------------------------------------------------ driver
    def run(self) -> None:
        cls = self.cls
        if cls.seq_items is not None and "forward" not in cls.methods:
            x = V("img") if "x" in self.image_params else V("unknown", param="x")
            out = self.apply(cls.seq_items, x, "", cls.node)
            self.returns.append(out)
            self._finish()
            return
        fn = cls.methods.get("forward")
        if fn is None:
            return
        env: dict[str, V] = {}
        for p in fn.params.params[1:]:
            name = p.name.value
            env[name] = V("img") if name in self.image_params else V("unknown", param=name)
        if fn.params.star_arg not in (None, cst.MaybeSentinel.DEFAULT) and isinstance(fn.params.star_arg, cst.Param):
            env[fn.params.star_arg.name.value] = PLAIN
        for p in fn.params.kwonly_params:
            env[p.name.value] = V("unknown", param=p.name.value)
        self.block(fn.body.body, env)
        # other methods must not use image layers (they would see channels-last layers)
        for name, method in cls.methods.items():
            if name in ("forward", *cls.builders) or name.startswith("__"):
                continue
            used = {dotted(c.func)[5:] for c in _calls(method)
                    if (dotted(c.func) or "").startswith("self.") and dotted(c.func).count(".") == 1}
            for attr in used & set(cls.specs):
                if self._spec_has_images(cls.specs[attr]):
                    raise Fail(method, f"self.{attr} used in {name}()")
        self._finish()

    def _spec_has_images(self, spec) -> bool:
        if isinstance(spec, Layer):
            return spec.role in IMAGE_ROLES
        if isinstance(spec, Seq):
            return any(self._spec_has_images(s) for s in spec.items)
        if isinstance(spec, (Dyn, ModList, Union)):
            return any(self._spec_has_images(s) for s in spec.items)
        return isinstance(spec, (ClassRef, FieldModule))

    def _finish(self) -> None:
        imgs = [v for v in self.returns]
        kinds = {self._shape(v) for v in imgs}
        if len(kinds) > 1:
            raise Fail(self.cls.methods.get("forward", self.cls.node), "returns of different kinds")
        self.ret = imgs[0] if imgs else PLAIN
        self.returns_images = any(self._has_img(v) for v in imgs)
        self.is_image = self.touched or self.returns_images or bool(self.marks)
        if self.returns_images and any(self._has_unknown(v) for v in imgs):
            raise Fail(self.cls.methods.get("forward", self.cls.node),
                       "returns images and a tensor of unknown layout")
        # a Dense whose rows would be permuted must read nothing but flattens of one layer's maps
        # (a flatten transposed back to channels-first takes every flatten it shares a Dense with)
        changed = True
        while changed:
            changed = False
            for path, inputs in self.dense_inputs.items():
                permuted = [i for i in inputs if i is not None and not i.one]
                if permuted and (len({i.src for i in permuted}) > 1 or None in inputs
                                 or any(i.bad or i.src is None for i in permuted)):
                    for i in permuted:
                        if not i.bad:
                            i.bad = changed = True
        for site in self.sites:
            if site.one:
                continue
            if site.src is not None and site.dense and not site.bad:
                for path in site.dense:
                    if self.flatten_rows.get(path, site.src) != site.src:
                        raise Fail(site.node, "a Dense fed by two different flattens")
                    self.flatten_rows[path] = site.src
                continue
            if site.node is None:
                raise Fail(self.cls.node, "nn.Flatten of a channels-last map whose channel count is unknown")
            self.rewrites[id(site.node)] = _permute_before_flatten(site.how)

    def _shape(self, v: V):
        if v.kind == "tuple":
            return ("tuple", tuple(self._shape(i) for i in v.items))
        return "img" if v.kind == "img" else "other"

    def _has_unknown(self, v: V) -> bool:
        return v.kind == "unknown" or (v.kind == "tuple" and any(self._has_unknown(i) for i in v.items))

    def _has_img(self, v: V) -> bool:
        return v.kind == "img" or (v.kind == "tuple" and any(self._has_img(i) for i in v.items))

    # ------------------------------------------------------------------ statements
    def block(self, stmts, env) -> bool:
        """Run statements; True when the block always returns."""
        for stmt in stmts:
            if isinstance(stmt, cst.SimpleStatementLine):
                for small in stmt.body:
                    if self.small(small, env):
                        return True
            elif isinstance(stmt, cst.If):
                self.consume(self.ev(stmt.test, env), stmt.test)
                orelse = stmt.orelse
                envs, done = [], []
                e1 = dict(env)
                done.append(self.block(stmt.body.body, e1))
                envs.append(e1)
                e2 = dict(env)
                if orelse is None:
                    done.append(False)
                elif isinstance(orelse, cst.If):
                    done.append(self.block([orelse], e2))
                else:
                    done.append(self.block(orelse.body.body, e2))
                envs.append(e2)
                live = [e for e, d in zip(envs, done) if not d]
                if not live:
                    return True
                self._merge(env, live, stmt)
            elif isinstance(stmt, cst.For):
                it = stmt.iter
                name = dotted(it)
                spec = self.cls.specs.get(name[5:]) if name and name.startswith("self.") else None
                if isinstance(spec, (ModList, Seq, Dyn)):
                    items = spec.items if not isinstance(spec, Seq) else frozenset(spec.items)
                    loop_value = V("module", spec=Dyn(frozenset(items)), path=None)
                else:
                    v = self.ev(it, env)
                    if v.kind in ("img", "unknown") and v.kind == "img":
                        raise Fail(stmt, f"a loop over an image ({_code(it)})")
                    self.consume(v, it)
                    loop_value = PLAIN
                for _ in range(2):
                    before = {k: v.kind for k, v in env.items()}
                    self._bind(stmt.target, loop_value, env, stmt)
                    inner = dict(env)
                    self.block(stmt.body.body, inner)
                    self._merge(env, [env, inner], stmt)
                    if before == {k: v.kind for k, v in env.items()}:
                        break
                if stmt.orelse is not None:
                    self.block(stmt.orelse.body.body, env)
            else:
                self._opaque(stmt, env, f"a {type(stmt).__name__.lower()} statement")
        return False

    def _opaque(self, node, env, what: str) -> None:
        """A construct the analysis does not follow: fine unless it reads an image (or a
        parameter that may be one)."""
        kinds = {env.get(n, PLAIN).kind for n in _names_in(node)}
        if "img" in kinds or "unknown" in kinds:
            raise Fail(node, what, image="img" in kinds)

    def _merge(self, env, envs, stmt) -> None:
        keys = set().union(*[set(e) for e in envs])
        for k in keys:
            values = [e.get(k) for e in envs]
            present = [v for v in values if v is not None]
            kinds = {v.kind for v in present}
            if "img" in kinds and (len(kinds) > 1 or len(present) != len(values)):
                raise Fail(stmt, f"{k} is an image on one path only")
            first = present[0]
            if first.kind == "img":
                srcs = {v.src for v in present}
                env[k] = V("img", src=first.src if len(srcs) == 1 else None, one=all(v.one for v in present))
            elif len(kinds) == 1:
                env[k] = first
            else:
                env[k] = next((v for v in present if v.kind == "unknown"), PLAIN)

    def small(self, small, env) -> bool:
        if isinstance(small, cst.Return):
            v = self.ev(small.value, env) if small.value is not None else PLAIN
            self._returned(v, small)
            self.returns.append(v)
            return True
        if isinstance(small, cst.Assign):
            v = self.ev(small.value, env)
            for t in small.targets:
                self._bind(t.target, v, env, small, t)
            return False
        if isinstance(small, cst.AnnAssign):
            if small.value is not None:
                self._bind(small.target, self.ev(small.value, env), env, small)
            return False
        if isinstance(small, cst.AugAssign):
            if not isinstance(small.target, cst.Name):
                raise Fail(small, _code(small))
            left = env.get(small.target.value, PLAIN)
            right = self.ev(small.value, env)
            env[small.target.value] = self.combine(left, right, small, small.operator)
            return False
        if isinstance(small, cst.Expr):
            v = self.ev(small.value, env)
            self.consume(v, small.value)
            return False
        if isinstance(small, (cst.Pass, cst.Break, cst.Continue)):
            return False
        if isinstance(small, cst.Assert):
            self.consume(self.ev(small.test, env), small)
            return False
        if isinstance(small, cst.Raise):
            return True
        self._opaque(small, env, _code(small))
        return False

    def _returned(self, v: V, node) -> None:
        if v.site is not None:
            v.site.bad = True
        if v.kind == "tuple":
            for i in v.items:
                self._returned(i, node)
        if v.kind in ("size", "tokens"):
            raise Fail(node, f"{_code(node)} (returns an image's size or channels-first tokens)")

    def _bind(self, target, v: V, env, stmt, assign_target=None) -> None:
        if isinstance(target, cst.Name):
            env[target.value] = v
            return
        if isinstance(target, (cst.Tuple, cst.List)):
            names = [e.value for e in target.elements]
            if any(isinstance(n, cst.StarredElement) or isinstance(e, cst.StarredElement)
                   for e, n in zip(target.elements, names)):
                if v.kind in ("img", "size", "tuple"):
                    raise Fail(stmt, _code(stmt))
                for n in names:
                    self._bind(n.value if isinstance(n, cst.StarredElement) else n, PLAIN, env, stmt)
                return
            if v.kind == "size":
                if len(names) != 4:
                    raise Fail(stmt, _code(stmt))
                self.rewrites[id(target)] = _reorder_targets((0, 2, 3, 1))
                for i, n in enumerate(names):
                    self._bind(n, V("batch") if i == 0 else INT, env, stmt)
                return
            if v.kind == "tuple":
                if len(v.items) != len(names):
                    raise Fail(stmt, _code(stmt))
                for n, item in zip(names, v.items):
                    self._bind(n, item, env, stmt)
                return
            if v.kind == "img":
                raise Fail(stmt, f"unpacking an image ({_code(stmt)})")
            for n in names:
                self._bind(n, PLAIN if v.kind != "int" else INT, env, stmt)
            return
        # self.x = ..., x[i] = ...
        if v.kind == "img":
            raise Fail(stmt, _code(stmt))
        self.consume(v, stmt)

    # ------------------------------------------------------------------ expressions
    def consume(self, v: V, node) -> None:
        """``v`` used in a way the analysis does not follow."""
        if v.kind in ("img", "tokens"):
            raise Fail(node, _code(node))
        if v.kind == "size":
            raise Fail(node, f"{_code(node)} (an image's shape used as a whole)")
        if v.site is not None:
            v.site.bad = True
        if v.kind == "tuple":
            for i in v.items:
                self.consume(i, node)

    def need_image(self, v: V, node) -> None:
        if v.kind == "unknown" and v.param is not None:
            raise NeedImage(v.param)
        if v.kind != "img":
            raise Fail(node, f"{_code(node)} on a tensor that is not a 4-D image")
        self.touched = True

    def ev(self, node, env) -> V:
        if isinstance(node, cst.Name):
            if node.value in env:
                return env[node.value]
            return PLAIN
        if isinstance(node, (cst.Integer, cst.Float)):
            return INT
        if isinstance(node, (cst.SimpleString, cst.ConcatenatedString, cst.FormattedString, cst.Ellipsis)):
            return PLAIN
        if isinstance(node, cst.Attribute):
            return self.attribute(node, env)
        if isinstance(node, cst.Call):
            return self.call(node, env)
        if isinstance(node, cst.BinaryOperation):
            return self.combine(self.ev(node.left, env), self.ev(node.right, env), node, node.operator)
        if isinstance(node, cst.UnaryOperation):
            v = self.ev(node.operand if hasattr(node, "operand") else node.expression, env)
            if isinstance(node.operator, cst.Not):
                self.consume(v, node)
                return PLAIN
            return v
        if isinstance(node, cst.Comparison):
            vs = [self.ev(node.left, env)] + [self.ev(c.comparator, env) for c in node.comparisons]
            identity = all(isinstance(c.operator, (cst.Is, cst.IsNot)) for c in node.comparisons)
            for v in vs:
                if not identity:
                    self.consume(v, node)
                elif v.site is not None:
                    v.site.bad = True
            return PLAIN
        if isinstance(node, cst.BooleanOperation):
            for side in (node.left, node.right):
                self.consume(self.ev(side, env), node)
            return PLAIN
        if isinstance(node, (cst.Tuple, cst.List)):
            items = []
            for el in node.elements:
                if isinstance(el, cst.StarredElement):
                    self.consume(self.ev(el.value, env), node)
                    return PLAIN
                items.append(self.ev(el.value, env))
            return V("tuple", items=tuple(items))
        if isinstance(node, cst.Subscript):
            return self.subscript(node, env)
        if isinstance(node, cst.IfExp):
            self.consume(self.ev(node.test, env), node.test)
            a, b = self.ev(node.body, env), self.ev(node.orelse, env)
            if (a.kind == "img") != (b.kind == "img"):
                raise Fail(node, _code(node))
            if a.kind == "img":
                return V("img", src=a.src if a.src == b.src else None, one=a.one and b.one)
            return a if a.kind == b.kind else PLAIN
        self._opaque(node, env, _code(node))
        return PLAIN

    def attribute(self, node: cst.Attribute, env) -> V:
        name = dotted(node)
        if name and name.startswith("self.") and name.count(".") == 1:
            attr = name[5:]
            spec = self.cls.specs.get(attr)
            if spec is not None and not isinstance(spec, FieldModule):
                return V("module", spec=spec, path=self._attr_path(attr))
            return INT if attr in self.cls.scalar_attrs else PLAIN
        base = self.ev(node.value, env)
        attr = node.attr.value
        if base.kind == "img":
            if attr == "shape":
                return V("size")
            if attr in ("ndim", "dtype", "device", "is_cuda", "requires_grad"):
                return INT
            if attr == "data":
                return base
            raise Fail(node, _code(node))
        if base.kind == "unknown":
            return V("unknown", param=base.param) if attr == "data" else PLAIN
        if base.site is not None and attr not in ("shape", "dtype", "device", "ndim"):
            base.site.bad = True
        return PLAIN

    def _attr_path(self, attr: str) -> str:
        return attr + "_" if attr in self.cls.renamed else attr

    def combine(self, left: V, right: V, node, op) -> V:
        if isinstance(op, (cst.MatrixMultiply, cst.MatrixMultiplyAssign)):
            self.consume(left, node)
            self.consume(right, node)
            return PLAIN
        if left.kind == "img" and right.kind == "img":
            return V("img", src=left.src or right.src, one=left.one and right.one)
        for a, b in ((left, right), (right, left)):
            if a.kind == "img":
                if b.kind in ("int", "batch"):
                    return V("img", src=a.src, one=a.one)
                raise Fail(node, f"{_code(node)} (an image with a tensor of unknown layout)")
        for v in (left, right):
            if v.site is not None:
                v.site.bad = True
        if left.kind == "unknown" and right.kind in ("int", "batch"):
            return left
        if right.kind == "unknown" and left.kind in ("int", "batch"):
            return right
        if left.kind in ("int", "batch") and right.kind in ("int", "batch"):
            return INT
        return PLAIN

    def subscript(self, node: cst.Subscript, env) -> V:
        base = self.ev(node.value, env)
        elements = node.slice
        if base.kind == "size":
            if len(elements) != 1:
                raise Fail(node, _code(node))
            el = elements[0].slice
            if isinstance(el, cst.Index):
                d = _int(el.value)
                if d is None or remap_dim(d) is None:
                    raise Fail(node, _code(node))
                new = remap_dim(d)
                self.rewrites[id(el.value)] = _const(new)
                return V("batch") if new == 0 else INT
            if isinstance(el, cst.Slice) and el.step is None:
                lo = _int(el.lower) if el.lower is not None else 0
                hi = _int(el.upper) if el.upper is not None else 4
                if lo is None or hi is None:
                    raise Fail(node, _code(node))
                dims = list(range(4))[lo:hi]
                mapped = [NCHW_TO_NHWC[d] for d in dims]
                if mapped != list(range(mapped[0], mapped[0] + len(mapped))) if mapped else False:
                    raise Fail(node, f"{_code(node)} (not contiguous channels-last)")
                if mapped:
                    self.rewrites[id(el)] = _slice(mapped[0], mapped[-1] + 1)
                return V("tuple", items=tuple(V("batch") if m == 0 else INT for m in mapped))
            raise Fail(node, _code(node))
        if base.kind == "tuple":
            if len(elements) == 1 and isinstance(elements[0].slice, cst.Index):
                i = _int(elements[0].slice.value)
                if i is not None and -len(base.items) <= i < len(base.items):
                    return base.items[i]
            for item in base.items:
                self.consume(item, node)
            return PLAIN
        if base.kind == "module":
            raise Fail(node, _code(node))
        if base.kind == "img":
            if len(elements) > 4 or not all(isinstance(e.slice, cst.Slice) for e in elements):
                raise Fail(node, f"{_code(node)} (indexing an image)")
            for e in elements:
                for part in (e.slice.lower, e.slice.upper, e.slice.step):
                    if part is not None:
                        self.consume(self.ev(part, env), node)
            full = [e.slice for e in elements] + [None] * (4 - len(elements))
            order = [full[0], full[2], full[3], full[1]]
            while order and order[-1] is None:
                order.pop()
            self.rewrites[id(node)] = _reslice(order)
            channel_sliced = len(elements) > 1 and not _full_slice(elements[1].slice)
            return V("img", src=None if channel_sliced else base.src, one=base.one)
        for e in elements:
            if isinstance(e.slice, cst.Index):
                self.consume(self.ev(e.slice.value, env), node)
        if base.site is not None:
            base.site.bad = True
        if base.kind == "unknown":
            return PLAIN
        return PLAIN

    # ------------------------------------------------------------------ calls
    def call(self, node: cst.Call, env) -> V:
        func = node.func
        q = qualify(func, self.aliases)
        if q is not None:
            return self.torch_call(node, q, env)
        if isinstance(func, cst.Attribute):
            name = dotted(func)
            if name and name.startswith("self.") and name.count(".") == 1:
                attr = name[5:]
                spec = self.cls.specs.get(attr)
                if spec is not None:
                    if isinstance(spec, FieldModule):
                        spec = self.layout.field_spec(self.cls, spec.param)
                    return self.module_call(spec, self._attr_path(attr), node, env)
                for a in node.args:
                    self.consume(self.ev(a.value, env), node)
                return PLAIN
            recv = self.ev(func.value, env)
            if recv.kind == "module":
                return self.module_call(recv.spec, recv.path, node, env)
            return self.method(node, recv, func.attr.value, env)
        if isinstance(func, cst.Subscript):
            base = func.value
            name = dotted(base)
            spec = self.cls.specs.get(name[5:]) if name and name.startswith("self.") else None
            if isinstance(spec, (ModList, Seq)):
                items = spec.items if isinstance(spec, ModList) else frozenset(spec.items)
                return self.module_call(Dyn(frozenset(items)), None, node, env)
        if isinstance(func, cst.Name) and func.value == "len" and len(node.args) == 1:
            v = self.ev(node.args[0].value, env)
            if v.kind == "img":
                return V("batch")
            self.consume(v, node)
            return INT
        if isinstance(func, cst.Name) and func.value in ("int", "float", "round", "max", "min", "abs"):
            vs = [self.ev(a.value, env) for a in node.args]
            for v in vs:
                if v.kind not in ("int", "batch"):
                    self.consume(v, node)
            return INT
        self.ev(func, env) if not isinstance(func, cst.Name) else None
        for a in node.args:
            self.consume(self.ev(a.value, env), node)
        return PLAIN

    def module_call(self, spec, path, node: cst.Call, env) -> V:
        args = [a for a in node.args]
        if len(args) == 1 and args[0].keyword is None and not args[0].star:
            return self.apply(spec, self.ev(args[0].value, env), path, node)
        values = [self.ev(a.value, env) for a in args]
        if isinstance(spec, ClassRef) and all(a.keyword is None and not a.star for a in args):
            return self.apply_class(spec.names, values, node)
        for v in values:
            self.consume(v, node)
        if isinstance(spec, Layer) and spec.role in ("elem", "linear", "other"):
            return PLAIN
        raise Fail(node, f"{_code(node)} (a call with several arguments)")

    def apply(self, spec, v: V, path, node) -> V:
        if isinstance(spec, Layer):
            role = spec.role
            if role == "elem":
                return v
            if role in IMAGE_ROLES:
                self.need_image(v, node)
                src = path if role == "define" else v.src
                one = spec.one if role == "pool" else (v.one if role == "keep" else False)
                return V("img", src=src, one=one or (v.one and role == "pool"))
            if role == "flatten":
                if v.kind == "img":
                    site = Site(None, "layer", v.src, v.one)
                    self.sites.append(site)
                    return V("plain", site=site)
                self.consume(v, node)
                return PLAIN
            if role == "linear":
                if v.kind == "img":
                    raise Fail(node, f"{_code(node)} (a Linear on the last axis of an image)")
                if v.site is not None:
                    if path is None:
                        v.site.bad = True
                    else:
                        v.site.dense.append(path)
                if path is not None:
                    self.dense_inputs.setdefault(path, []).append(v.site)
                return PLAIN
            if v.kind == "img":
                raise Fail(node, f"{_code(node)} ({spec.q.rsplit('.', 1)[-1]} on an image)")
            self.consume(v, node)
            return PLAIN
        if isinstance(spec, Seq):
            for i, item in enumerate(spec.items):
                v = self.apply(item, v, f"{path}/layers_{i}" if path is not None and path != "" else
                               (f"layers_{i}" if path == "" else None), node)
            return v
        if isinstance(spec, Dyn):
            if v.kind not in ("img", "unknown"):
                results = [self.apply(item, v, None, node) for item in spec.items]
                if any(r.kind in ("img", "tokens") for r in results):
                    raise Fail(node, f"{_code(node)} (a Sequential whose layers' order is not known)")
                return PLAIN
            results = [self.apply(item, v, None, node) for item in spec.items]
            if v.kind == "unknown":
                if any(r.kind == "img" for r in results):
                    raise NeedImage(v.param)
                return v
            if any(r.kind != "img" for r in results):
                raise Fail(node, f"{_code(node)} (a Sequential whose layers' order is not known)")
            one = False
            if spec.last is not None:
                one = self.apply(spec.last, v, None, node).one
            return V("img", src=None, one=one)
        if isinstance(spec, Union):
            results = [self.apply(item, v, path, node) for item in spec.items if not isinstance(item, NoneSpec)]
            if not results:
                return v
            kinds = {r.kind for r in results}
            if len(kinds) > 1:
                raise Fail(node, _code(node))
            first = results[0]
            if first.kind == "img":
                srcs = {r.src for r in results}
                return V("img", src=first.src if len(srcs) == 1 else None, one=all(r.one for r in results))
            return first if len(results) == 1 else (first if first.kind == "unknown" else PLAIN)
        if isinstance(spec, ClassRef):
            return self.apply_class(spec.names, [v], node)
        if isinstance(spec, NoneSpec):
            return v
        if isinstance(spec, ModList):
            raise Fail(node, _code(node))
        if isinstance(spec, FieldModule):
            return self.apply(self.layout.field_spec(self.cls, spec.param), v, path, node)
        # Unknown
        if v.kind == "img":
            what = getattr(spec, "what", "")
            raise Fail(node, f"{_code(node)} ({what})" if what and what != "value" else _code(node))
        self.consume(v, node)
        return PLAIN

    def apply_class(self, names, values: list[V], node) -> V:
        results = []
        for name in sorted(names):
            cls = self.layout.classes.get(name)
            if cls is None:
                raise Fail(node, _code(node))
            summ = self.layout.summary(name)
            params = cls.forward_params if cls.seq_items is None or "forward" in cls.methods else ["x"]
            touches = any(v.kind == "img" for v in values)
            if summ is None:
                if touches or any(v.kind == "unknown" for v in values):
                    raise Fail(node, f"{_code(node)} ({name} keeps NCHW)",
                               image=touches or self.layout._has_image_layers(name))
                for v in values:
                    self.consume(v, node)
                results.append(PLAIN)
                continue
            for p, v in zip(params, values):
                if v.kind == "img":
                    if p not in summ.image_params:
                        self.layout.forced.setdefault(name, set()).add(p)
                elif p in summ.image_params:
                    if v.kind == "unknown" and v.param is not None:
                        raise NeedImage(v.param)
                    raise Fail(node, f"{_code(node)} (a non-image argument where {name} takes an image)")
                else:
                    self.consume(v, node)
            if touches or summ.image_params:
                self.layout.edges_calls.add((self.cls.name, name))
            ret = summ.ret
            results.append(self._fresh(ret))
        if not results:
            return PLAIN
        shapes = {self._shape(r) for r in results}
        if len(shapes) > 1:
            raise Fail(node, _code(node))
        return results[0]

    def _fresh(self, v: V) -> V:
        if v.kind == "img":
            return V("img")
        if v.kind == "tuple":
            return V("tuple", items=tuple(self._fresh(i) for i in v.items))
        return PLAIN if v.kind != "int" else INT

    # ------------------------------------------------------------------ torch functions
    def torch_call(self, node: cst.Call, q: str, env) -> V:
        role = image_role(self.tables.functions, q)
        if role is not None:
            first = _arg(node, 0, "input")
            if first is None:
                raise Fail(node, _code(node))
            v = self.ev(first.value, env)
            self.need_image(v, node)
            for a in node.args:
                if a is not first:
                    self.consume(self.ev(a.value, env), node)
            self.marks.add(id(node))
            one = False
            if role == "pool":
                size = _arg(node, 1, "output_size")
                one = size is not None and _is_one(size.value)
            return V("img", src=v.src, one=one)
        if is_elementwise(self.tables.functions, q):
            first = _arg(node, 0, "input")
            if first is None:
                raise Fail(node, _code(node))
            v = self.ev(first.value, env)
            for a in node.args:
                if a is not first:
                    self.consume(self.ev(a.value, env), node)
            return v
        if q in CAT:
            return self.cat(node, env)
        if q == "torch.flatten":
            first = _arg(node, 0, "input")
            v = self.ev(first.value, env) if first is not None else PLAIN
            if v.kind == "img":
                return self.flatten(node, v, _arg(node, 1, "start_dim"), _arg(node, 2, "end_dim"), "arg0")
            self.consume(v, node)
            return PLAIN
        if q in SOFTMAX:
            first = _arg(node, 0, "input")
            v = self.ev(first.value, env) if first is not None else PLAIN
            if v.kind == "img":
                self._remap_arg(node, _arg(node, 1, "dim"))
                for a in node.args[2:]:
                    self.consume(self.ev(a.value, env), node)
                return V("img", src=v.src, one=v.one)
            self.consume(v, node)
            return PLAIN
        if q in {f"torch.{r}" for r in REDUCTIONS}:
            first = _arg(node, 0, "input")
            v = self.ev(first.value, env) if first is not None else PLAIN
            if v.kind == "img":
                return self.reduce(node, v, _arg(node, 1, "dim"), _arg(node, 2, "keepdim"))
            self.consume(v, node)
            return PLAIN
        if q == "torch.nn.functional.pad":
            first = _arg(node, 0, "input")
            v = self.ev(first.value, env) if first is not None else PLAIN
            if v.kind != "img":
                self.consume(v, node)
                return PLAIN
            pad = _arg(node, 1, "pad")
            if pad is None or not isinstance(pad.value, (cst.List, cst.Tuple)) or \
                    len(pad.value.elements) not in (2, 4) or \
                    any(isinstance(e, cst.StarredElement) for e in pad.value.elements):
                raise Fail(node, f"{_code(node)} (F.pad needs a literal list of 2 or 4 amounts)")
            for e in pad.value.elements:
                self.consume(self.ev(e.value, env), node)
            for a in node.args[2:]:
                self.consume(self.ev(a.value, env), node)
            self.rewrites[id(pad.value)] = _prepend_channel_pad
            return V("img", src=v.src)
        values = [self.ev(a.value, env) for a in node.args]
        for v in values:
            self.consume(v, node)
        return PLAIN

    def _remap_arg(self, node, arg) -> None:
        if arg is None:
            raise Fail(node, f"{_code(node)} (no dim)")
        d = _int(arg.value)
        if d is None or remap_dim(d) is None:
            raise Fail(node, f"{_code(node)} (a dim that is not a literal)")
        self.rewrites[id(arg.value)] = _const(remap_dim(d))

    def cat(self, node, env) -> V:
        first = _arg(node, 0, "tensors")
        if first is None or not isinstance(first.value, (cst.List, cst.Tuple)):
            if first is not None:
                v = self.ev(first.value, env)
                self.consume(v, node)
            return PLAIN
        values = [self.ev(e.value, env) if not isinstance(e, cst.StarredElement) else PLAIN
                  for e in first.value.elements]
        if not any(v.kind == "img" for v in values):
            for v in values:
                self.consume(v, node)
            return PLAIN
        for e, v in zip(first.value.elements, values):
            if isinstance(e, cst.StarredElement):
                raise Fail(node, _code(node))
            self.need_image(v, node)
        dim = _arg(node, 1, "dim")
        if dim is not None:
            self._remap_arg(node, dim)
        return V("img", one=all(v.one for v in values))

    def flatten(self, node, v: V, start, end, how) -> V:
        s = _int(start.value) if start is not None else 0
        e = _int(end.value) if end is not None else -1
        if s is None or e is None or e % 4 != 3 or s % 4 not in (0, 1):
            raise Fail(node, f"{_code(node)} (a partial flatten of an image)")
        if s % 4 == 0:
            site = Site(node, how, None, v.one)
        else:
            site = Site(node, how, v.src, v.one)
        self.sites.append(site)
        if s % 4 == 0:
            site.bad = True
        return V("plain", site=site)

    def reduce(self, node, v: V, dim_arg, keep_arg) -> V:
        if dim_arg is None:
            return PLAIN
        dims = _ints(dim_arg.value)
        if dims is None or any(remap_dim(d) is None for d in dims):
            raise Fail(node, f"{_code(node)} (dims that are not literals)")
        keep = False
        if keep_arg is not None:
            keep = _bool(keep_arg.value)
            if keep is None:
                raise Fail(node, _code(node))
        nchw = {d % 4 for d in dims}
        new = tuple(remap_dim(d) for d in dims)
        value = dim_arg.value
        self.rewrites[id(value)] = _const(new[0]) if isinstance(value, (cst.Integer, cst.UnaryOperation)) \
            else _const_tuple(new, isinstance(value, cst.List))
        if 0 in nchw and keep:
            raise Fail(node, _code(node))
        if keep:
            return V("img", src=None if 1 in nchw else v.src, one=v.one or {2, 3} <= nchw)
        remaining = {1, 2, 3} - nchw
        if 1 in remaining and len(remaining) > 1:
            raise Fail(node, f"{_code(node)} (the channel axis would not stay in place)")
        return PLAIN

    # ------------------------------------------------------------------ tensor methods
    def method(self, node: cst.Call, recv: V, name: str, env) -> V:
        args = node.args
        if recv.kind == "tokens":
            # x.flatten(2).transpose(1, 2): (N, C, H*W) → (N, H*W, C), x.flatten(1, 2) channels-last
            dims = tuple(_int(a.value) for a in args if a.keyword is None)
            if len(dims) == len(args) and ((name == "transpose" and dims in ((1, 2), (2, 1), (-1, -2), (-2, -1)))
                                           or (name == "permute" and dims == (0, 2, 1))):
                self.rewrites[id(node)] = lambda updated: updated.func.value
                return PLAIN
            raise Fail(node, f"{_code(node)} (channels-first tokens)")
        if recv.kind == "unknown":
            for a in args:
                self.consume(self.ev(a.value, env), node)
            if is_elementwise_method(self.tables.tensor_methods, name):
                return recv
            return PLAIN
        if recv.kind != "img":
            values = [self.ev(a.value, env) for a in args]
            if recv.kind == "plain" and name in ("view", "reshape") and self._unflatten(node, values):
                return V("img")
            if recv.site is not None and is_elementwise_method(self.tables.tensor_methods, name):
                for v in values:
                    self.consume(v, node)
                return recv
            if recv.site is not None:
                recv.site.bad = True
            for v in values:
                self.consume(v, node)
            if recv.kind == "size" and name in ("numel",):
                return INT
            return PLAIN if recv.kind != "int" else INT
        # recv is an image
        if name == "size":
            if not args:
                return V("size")
            d = _arg(node, 0, "dim")
            if d is None:
                raise Fail(node, _code(node))
            self._remap_arg(node, d)
            return V("batch") if _int(d.value) % 4 == 0 else INT
        if name in ("dim", "ndimension", "numel", "nelement", "element_size", "get_device", "is_contiguous"):
            return INT
        if is_elementwise_method(self.tables.tensor_methods, name):
            for a in args:
                self.consume(self.ev(a.value, env), node)
            return V("img", src=recv.src, one=recv.one)
        if name in BINARY_METHODS:
            if len(args) != 1 or args[0].keyword is not None:
                raise Fail(node, _code(node))
            return self.combine(recv, self.ev(args[0].value, env), node, cst.Add())
        if name in ("expand_as", "type_as", "view_as", "reshape_as"):
            other = self.ev(args[0].value, env) if args else PLAIN
            if name in ("expand_as", "view_as", "reshape_as"):
                self.need_image(other, node)
            return V("img", src=recv.src if name == "type_as" else other.src, one=other.one)
        if name == "flatten":
            start, end = _arg(node, 0, "start_dim"), _arg(node, 1, "end_dim")
            if start is not None and _int(start.value) == 2 and (end is None or _int(end.value) in (3, -1)) \
                    and len(args) == (1 if end is None else 2):
                self.rewrites[id(node)] = _flatten_spatial
                return V("tokens")
            return self.flatten(node, recv, start, end, "receiver")
        if name in ("view", "reshape"):
            values = [a for a in args]
            if len(values) == 1 and isinstance(values[0].value, (cst.Tuple, cst.List)):
                shape = [e.value for e in values[0].value.elements]
            else:
                shape = [a.value for a in values if a.keyword is None and not a.star]
                if len(shape) != len(values):
                    raise Fail(node, _code(node))
            if len(shape) == 2:
                first = self.ev(shape[0], env)
                self.consume(self.ev(shape[1], env), node)
                if first.kind == "batch":
                    site = Site(node, "receiver", recv.src, recv.one)
                    self.sites.append(site)
                    return V("plain", site=site)
            raise Fail(node, f"{_code(node)} (a reshape of an image)")
        if name in REDUCTIONS:
            return self.reduce(node, recv, _arg(node, 0, "dim"), _arg(node, 1, "keepdim"))
        if name in ("softmax", "log_softmax"):
            self._remap_arg(node, _arg(node, 0, "dim"))
            return V("img", src=recv.src, one=recv.one)
        raise Fail(node, f"{_code(node)} (.{name}() on an image)")

    def _unflatten(self, node, values) -> bool:
        """``y.view(b, c, 1, 1)`` / ``y.view(b, c, h, w)`` of a plain (N, C*H*W) tensor: the
        channels-last image of that torch image."""
        args = node.args
        if len(args) != 4 or any(a.keyword is not None or a.star for a in args):
            return False
        if values[0].kind != "batch":
            return False
        self.touched = True
        if _int(args[2].value) == 1 and _int(args[3].value) == 1:
            self.rewrites[id(node)] = _reorder_args((0, 2, 3, 1))
        else:
            self.rewrites[id(node)] = _permute_after((0, 2, 3, 1))
        return True


def _full_slice(s) -> bool:
    return isinstance(s, cst.Slice) and s.lower is None and s.upper is None and s.step is None


# ----------------------------------------------------------------------------- rewrites (torch terms)
def _const(v: int):
    return lambda updated: _int_node(v)


def _const_tuple(values, as_list: bool):
    def build(updated):
        els = [cst.Element(_int_node(v), comma=_COMMA if i < len(values) - 1 or (len(values) == 1 and not as_list) else
                           cst.MaybeSentinel.DEFAULT) for i, v in enumerate(values)]
        if len(values) == 1 and not as_list:
            els = [cst.Element(_int_node(values[0]), comma=cst.Comma())]
        return cst.List(els) if as_list else cst.Tuple(els)
    return build


def _slice(lo: int, hi: int):
    def build(updated):
        return cst.Slice(lower=cst.Integer(str(lo)) if lo else None, upper=cst.Integer(str(hi)) if hi != 4 else None)
    return build


def _reslice(order):
    def build(updated: cst.Subscript):
        elements = []
        originals = list(updated.slice)
        # map the updated slices back by position (same order as the originals)
        by_pos = [e.slice for e in originals] + [None] * 4
        index = {0: 0, 1: 2, 2: 3, 3: 1}
        for i in range(len(order)):
            s = by_pos[index[i]]
            if s is None:
                s = cst.Slice(lower=None, upper=None)
            elements.append(cst.SubscriptElement(s, comma=_COMMA if i < len(order) - 1 else cst.MaybeSentinel.DEFAULT))
        return updated.with_changes(slice=elements)
    return build


def _reorder_targets(order):
    def build(updated):
        els = list(updated.elements)
        new = [els[i] for i in order]
        new = [e.with_changes(comma=_COMMA if i < len(new) - 1 else cst.MaybeSentinel.DEFAULT) for i, e in enumerate(new)]
        return updated.with_changes(elements=new)
    return build


def _reorder_args(order):
    def build(updated: cst.Call):
        args = list(updated.args)
        new = [args[i] for i in order]
        new = [a.with_changes(comma=_COMMA if i < len(new) - 1 else cst.MaybeSentinel.DEFAULT) for i, a in enumerate(new)]
        return updated.with_changes(args=new)
    return build


def _permute_call(value, order) -> cst.Call:
    args = [cst.Arg(_int_node(o), comma=_COMMA if i < len(order) - 1 else cst.MaybeSentinel.DEFAULT)
            for i, o in enumerate(order)]
    if isinstance(value, (cst.BinaryOperation, cst.UnaryOperation, cst.IfExp, cst.Comparison)) and not value.lpar:
        value = value.with_changes(lpar=[cst.LeftParen()], rpar=[cst.RightParen()])
    return cst.Call(func=cst.Attribute(value=value, attr=cst.Name("permute")), args=args)


def _permute_after(order):
    return lambda updated: _permute_call(updated, order)


def _permute_before_flatten(how):
    def build(updated: cst.Call):
        if how == "arg0":
            args = list(updated.args)
            args[0] = args[0].with_changes(value=_permute_call(args[0].value, (0, 3, 1, 2)))
            return updated.with_changes(args=args)
        func = updated.func
        attr = func.attr if func.attr.value == "flatten" else cst.Name("reshape")
        return updated.with_changes(func=func.with_changes(value=_permute_call(func.value, (0, 3, 1, 2)), attr=attr))
    return build


def _flatten_spatial(updated: cst.Call) -> cst.Call:
    """``x.flatten(2)`` (before a transpose to tokens) → ``x.flatten(1, 2)`` on (N, H, W, C)."""
    return updated.with_changes(args=[cst.Arg(cst.Integer("1"), comma=_COMMA), cst.Arg(cst.Integer("2"))])


def _prepend_channel_pad(updated):
    zero = [cst.Element(cst.Integer("0"), comma=_COMMA), cst.Element(cst.Integer("0"), comma=_COMMA)]
    els = list(updated.elements)
    return updated.with_changes(elements=[*zero, *els])


# ----------------------------------------------------------------------------- callers (scripts)
class _Callers:
    """Calls of channels-last models from the file's own script code: ``model(data)`` where
    ``model`` was built from a class of this file (``model = Net().to(device)``), or is a
    parameter of a function that uses it as a model (``model.train()``, ``model(x)``)."""

    def __init__(self, layout: Layout, channels_last: set[str]) -> None:
        self.layout = layout
        self.channels_last = channels_last
        self.rewrites: dict[int, object] = {}
        self.fails: dict[str, Fail] = {}
        self.constructed: set[str] = set()
        self.unbound: list[tuple[str, cst.Call]] = []

    def run(self, module: cst.Module) -> None:
        scopes = [("<module>", [s for s in module.body if not isinstance(s, (cst.ClassDef, cst.FunctionDef))], set())]
        functions: dict[str, cst.FunctionDef] = {}
        for s in module.body:
            if isinstance(s, cst.FunctionDef):
                functions[s.name.value] = s
            elif isinstance(s, cst.ClassDef) and s.name.value not in self.layout.classes:
                for m in s.body.body:
                    if isinstance(m, cst.FunctionDef):
                        scopes.append((f"{s.name.value}.{m.name.value}", [m.body],
                                       {p.name.value for p in [*m.params.params, *m.params.kwonly_params]}))
        for fn in functions.values():
            params = {p.name.value for p in [*fn.params.params, *fn.params.kwonly_params]}
            scopes.append((fn.name.value, [fn.body], params))
        # constructions: which classes the scripts build, and where the instances go
        for _, stmts, _ in scopes:
            for stmt in stmts:
                for call in _calls(stmt):
                    if isinstance(call.func, cst.Name) and call.func.value in self.layout.classes:
                        self.constructed.add(call.func.value)
        self.bound_calls: set[int] = set()
        self.functions = functions
        self.model_params: dict[str, set[str]] = {}
        found = [(name, stmts, params, self._instances(stmts)) for name, stmts, params in scopes]
        # instances passed to this file's functions: those parameters hold models
        for _, stmts, _, (instances, _) in found:
            for stmt in stmts:
                for call in _calls(stmt):
                    fn = functions.get(call.func.value) if isinstance(call.func, cst.Name) else None
                    if fn is None:
                        continue
                    names = [p.name.value for p in fn.params.params]
                    for i, a in enumerate(call.args):
                        if isinstance(a.value, cst.Name) and a.value.value in instances:
                            target = a.keyword.value if a.keyword is not None else (names[i] if i < len(names) else None)
                            if target:
                                self.model_params.setdefault(fn.name.value, set()).add(target)
        for name, stmts, params, (instances, ever) in found:
            self._scope(name, stmts, params, instances, ever)
        # a construction whose instance is not bound to a plain name: its calls are not seen
        for _, stmts, _ in scopes:
            for stmt in stmts:
                for call in _calls(stmt):
                    if isinstance(call.func, cst.Name) and call.func.value in self.channels_last \
                            and id(call) not in self.bound_calls:
                        self.fails.setdefault(call.func.value, Fail(
                            call, f"an instance built by {_code(call)} is not bound to a name this pass follows"))

    def _instances(self, stmts) -> tuple[dict[str, str], dict[str, str]]:
        """(name → class of the instance it holds, name → class it held at some point)."""
        instances: dict[str, str] = {}
        ever: dict[str, str] = {}
        for stmt in stmts:
            for node in _assigns(stmt):
                cls = self._constructed_class(node.value)
                if cls is not None and len(node.targets) == 1 and isinstance(node.targets[0].target, cst.Name):
                    instances[node.targets[0].target.value] = cls
                    ever[node.targets[0].target.value] = cls
                    continue
                for t in node.targets:
                    for n in _names_in(t.target):
                        instances.pop(n, None)     # rebound to something else
        return instances, ever

    def _scope(self, name, stmts, params, instances, ever) -> None:
        models: set[str] = set(self.model_params.get(name, ()))
        for stmt in stmts:
            for call in _calls(stmt):
                f = call.func
                if isinstance(f, cst.Attribute) and isinstance(f.value, cst.Name) and f.value.value in params \
                        and f.attr.value in SCRIPT_MODEL_METHODS:
                    models.add(f.value.value)
        for stmt in stmts:
            for call in _calls(stmt):
                f = call.func
                if isinstance(f, cst.Attribute) and f.attr.value == "forward" and isinstance(f.value, cst.Name):
                    target = f.value.value
                elif isinstance(f, cst.Name):
                    target = f.value
                else:
                    continue
                if target in instances:
                    self._model_call(call, {instances[target]})
                elif target in ever:
                    if ever[target] in self.channels_last:
                        self.fails.setdefault(ever[target], Fail(
                            call, f"{_code(call)}: {target} was rebound (a wrapper?) and is called"))
                elif target in models or (target in params and target in MODEL_NAMES):
                    candidates = self.constructed & set(self.layout.classes)
                    image = candidates & self.channels_last
                    if not candidates:
                        image = set(self.channels_last)
                        candidates = set(self.layout.classes)
                    if image and image != candidates:
                        for c in image:
                            self.fails.setdefault(c, Fail(call, f"{_code(call)} calls a model whose class is not known"))
                        continue
                    if image:
                        self._model_call(call, image)

    def _constructed_class(self, value) -> str | None:
        """``Net(...)`` or ``Net(...).to(device)`` / ``.eval()`` chains."""
        node = value
        while isinstance(node, cst.Call) and isinstance(node.func, cst.Attribute) and \
                node.func.attr.value in ("to", "eval", "train", "cuda", "cpu", "float", "double"):
            node = node.func.value
        if isinstance(node, cst.Call) and isinstance(node.func, cst.Name) and node.func.value in self.layout.classes:
            self.bound_calls.add(id(node))
            return node.func.value
        return None

    def _model_call(self, call: cst.Call, classes: set[str]) -> None:
        layouts = set()
        for c in classes:
            result = self.layout.results.get(c)
            if c not in self.channels_last or not isinstance(result, Analysis):
                return
            cls = self.layout.classes[c]
            params = cls.forward_params if "forward" in cls.methods else ["x"]
            positions = tuple(i for i, p in enumerate(params) if p in result.image_params)
            layouts.add((positions, tuple(result.image_params), self_shape(result.ret)))
        if len(layouts) != 1:
            for c in classes:
                self.fails.setdefault(c, Fail(call, f"{_code(call)} calls models of different layouts"))
            return
        positions, names, ret = next(iter(layouts))
        if ret not in ("img", "other"):
            for c in classes:
                self.fails.setdefault(c, Fail(call, f"{_code(call)}: the caller receives channels-last images"))
            return
        if any(a.star for a in call.args):
            for c in classes:
                self.fails.setdefault(c, Fail(call, _code(call)))
            return
        wrap: set[int] = set()
        positional = [i for i, a in enumerate(call.args) if a.keyword is None]
        for k, i in enumerate(positional):
            if k in positions:
                wrap.add(i)
        for i, a in enumerate(call.args):
            if a.keyword is not None and a.keyword.value in names:
                wrap.add(i)
        self.rewrites[id(call)] = _script_call(wrap, ret == "img")


def self_shape(v: V):
    if v.kind == "tuple":
        return ("tuple", tuple(self_shape(i) for i in v.items))
    return "img" if v.kind == "img" else "other"


def _torch_permute(value, order) -> cst.Call:
    dims = cst.Tuple([cst.Element(_int_node(o), comma=_COMMA if i < len(order) - 1 else cst.MaybeSentinel.DEFAULT)
                      for i, o in enumerate(order)])
    return cst.Call(func=cst.parse_expression("torch.permute"),
                    args=[cst.Arg(value, comma=_COMMA), cst.Arg(dims)])


def _script_call(wrap: set[int], back: bool):
    def build(updated: cst.Call):
        args = [a.with_changes(value=_torch_permute(a.value, (0, 2, 3, 1))) if i in wrap else a
                for i, a in enumerate(updated.args)]
        out = updated.with_changes(args=args)
        return _torch_permute(out, (0, 3, 1, 2)) if back else out
    return build


# ----------------------------------------------------------------------------- the pass
class _Apply(cst.CSTTransformer):
    def __init__(self, rewrites: dict, marks: set, class_vars: dict) -> None:
        super().__init__()
        self.rewrites, self.marks, self.class_vars = rewrites, marks, class_vars
        self.marked: set[int] = set()
        self.moved: dict = {}

    def on_leave(self, original, updated):
        result = super().on_leave(original, updated)
        key = id(original)
        if key in self.rewrites and isinstance(result, cst.CSTNode):
            result = self.rewrites[key](result)
        if key in self.marks and isinstance(result, cst.CSTNode):
            self.marked.add(id(result))
            self.moved[result] = original
        elif isinstance(result, cst.CSTNode) and result is not original:
            self.moved[result] = original
        return result

    def leave_ClassDef(self, original, updated):
        stmt = self.class_vars.get(original.name.value)
        if stmt is None:
            return updated
        body = list(updated.body.body)
        at = 1 if body and isinstance(body[0], cst.SimpleStatementLine) and isinstance(body[0].body[0], cst.Expr) \
            and isinstance(body[0].body[0].value, (cst.SimpleString, cst.ConcatenatedString)) else 0
        if at < len(body) and not body[at].leading_lines:
            body[at] = body[at].with_changes(leading_lines=[cst.EmptyLine(indent=False)])
        body.insert(at, stmt)
        return updated.with_changes(body=updated.body.with_changes(body=body))


def _class_var(analysis: Analysis) -> cst.SimpleStatementLine:
    inputs = tuple(analysis.image_params)
    rows = ", ".join(f"{k!r}: {v!r}" for k, v in sorted(analysis.flatten_rows.items()))
    text = (f"jaxport_layout: ClassVar[dict] = {{\"inputs\": {inputs!r}, \"returns\": "
            f"{bool(analysis.returns_images)}, \"flatten_rows\": {{{rows}}}}}").replace("'", '"')
    stmt = cst.parse_statement(text + "\n")
    comment = cst.EmptyLine(indent=True, comment=cst.Comment(
        "# jaxport --layout nhwc: images are channels-last (N, H, W, C)"))
    return stmt.with_changes(leading_lines=[comment])


def prepare(module: cst.Module, ctx) -> cst.Module:
    """Analyse and rewrite ``module`` for ``--layout nhwc`` (see the module docstring). A
    construct the analysis itself trips on leaves the whole file channels-first."""
    try:
        return _prepare(module, ctx)
    except RecursionError:
        raise
    except Exception as exc:     # noqa: BLE001  (never wrong code: the file keeps NCHW)
        ctx.channels_last.clear()
        ctx.report(None, "JP202", f"this file keeps NCHW under --layout nhwc: its analysis failed "
                   f"({type(exc).__name__}: {exc})", marker=False)
        return module


def _prepare(module: cst.Module, ctx) -> cst.Module:
    layout = Layout(module, ctx)
    layout.run()
    if not layout.classes:
        return module
    channels_last, kept = layout.decide()
    callers = None
    for _ in range(4):
        callers = _Callers(layout, channels_last)
        callers.run(module)
        if not callers.fails:
            break
        for name, fail in callers.fails.items():
            kept.setdefault(name, fail)
        channels_last, kept2 = _regroup(layout, channels_last, kept)
        kept.update(kept2)
    for name, fail in sorted(kept.items()):
        ctx.report(fail.node, "JP202", f"{name} keeps NCHW under --layout nhwc: {fail.what}", marker=False)
    if not channels_last:
        return module
    rewrites: dict[int, object] = {}
    marks: set[int] = set()
    class_vars = {}
    for name in channels_last:
        analysis = layout.results[name]
        rewrites.update(analysis.rewrites)
        marks |= analysis.marks
        cls = layout.classes[name]
        for builder in cls.builders:
            for call in _calls(cls.methods[builder]):
                if image_role(layout.ctx.tables.layers, qualify(call.func, layout.aliases)):
                    marks.add(id(call))
        class_vars[name] = _class_var(analysis)
    if callers is not None:
        rewrites.update(callers.rewrites)
    applier = _Apply(rewrites, marks, class_vars)
    out = module.visit(applier)
    ctx.channels_last |= applier.marked
    ctx.alias_rebuilt(applier.moved)
    ctx.emits.add("ClassVar")
    return out


def _regroup(layout: Layout, channels_last: set[str], kept: dict) -> tuple[set[str], dict]:
    """Classes that keep NCHW take the classes they exchange images with along."""
    edges = layout.edges | layout.edges_calls
    out: dict[str, Fail] = {}
    changed = True
    current = set(channels_last) - set(kept)
    while changed:
        changed = False
        for a, b in edges:
            for x, y in ((a, b), (b, a)):
                if x not in current and y in current and (x in kept or x in out):
                    current.discard(y)
                    out[y] = Fail(layout.classes[y].node, f"it exchanges images with {x}, which keeps NCHW")
                    changed = True
    return current, out
