"""Declarative call templates: the small language the mapping tables are written in.

A table entry describes a torch callable by its *signature* and the JAX code to emit as a
*template*, a Python expression over the torch parameter names:

    sig = "input, dim=None, keepdim=False, *, dtype=None"
    to  = "jnp.sum(input, axis=dim, keepdims=keepdim, dtype=dtype)"

Rendering binds the user's call arguments to the signature, then substitutes them into the
template:

* a keyword argument of the template whose value refers to a parameter the user did not
  pass is left out (so ``torch.sum(x)`` becomes ``jnp.sum(x)``), unless the keyword is
  listed in ``always``, in which case the torch default is spelled out;
* any other reference to a parameter that was not passed is replaced by its torch default;
* ``*name`` splices a variadic parameter (``x.view(2, 3)`` and ``x.view((2, 3))`` both work);
* literal arithmetic introduced by the template is folded (BatchNorm ``momentum=1 - momentum``
  with ``momentum=0.1`` renders ``momentum=0.9``).

An entry may give several templates; every template but the last applies only when all the
parameters it refers to (outside droppable keywords) were passed by the user.

Rendering is compiled. Each (template, signature, ``always``) is turned once into a
*builder* (:func:`template_builder`), a tree of parts that mirrors the template's syntax tree
but keeps only what a call can change:

* a :class:`_Reference` for each name that refers to a parameter (what it becomes is decided
  per call: the user's argument, parenthesized where precedence needs it, the torch
  default, or "not applicable" for a strict variant);
* a :class:`_Spine` for each node above a reference, holding its references' parts, what
  its own rule is (an argument is left out or spliced, a call's commas are normalised, an
  attribute's or subscript's base is parenthesized, literal arithmetic is folded), and the
  facts that rule needs, found once (the parameters an argument's value refers to, whether
  an arithmetic node can ever fold);
* everything else, the parts of the template no call can change, is rendered once, when the
  builder is made (folded, commas fixed), and reused by every call.

Rendering a call walks the spine only, rebuilding a node only where one of its children
changed, exactly as a libcst transformer would (same nodes, same validation, same order of
errors); :func:`render` and :func:`render_variants` are the entry points.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from typing import Sequence

import libcst as cst

from .codegen import code_of
from .walk import TOKEN_TYPES, copy_with, rebuilt, node_fields, walk

POSITIONAL = "positional"   # may be given positionally or by keyword
VAR_POSITIONAL = "var_positional"
KEYWORD_ONLY = "keyword_only"
VAR_KEYWORD = "var_keyword"


class TemplateError(ValueError):
    """A table entry's signature or template is malformed (a bug in the tables)."""


class BindError(ValueError):
    """A user's call does not fit the torch signature we know (unknown keyword, ...)."""


@dataclass(frozen=True)
class Param:
    name: str
    kind: str
    default: str | None = None  # source text of the torch default; None: required

    @property
    def required(self) -> bool:
        return self.default is None and self.kind in (POSITIONAL, KEYWORD_ONLY)


@dataclass(frozen=True)
class Signature:
    params: tuple[Param, ...]

    @staticmethod
    @lru_cache(maxsize=None)
    def parse(text: str) -> "Signature":
        try:
            tree = ast.parse(f"def _({text}): pass")
        except SyntaxError as exc:
            raise TemplateError(f"bad signature {text!r}: {exc.msg}") from None
        a = tree.body[0].args  # type: ignore[attr-defined]
        params: list[Param] = []
        positional = a.posonlyargs + a.args
        defaults = [None] * (len(positional) - len(a.defaults)) + list(a.defaults)
        for arg, default in zip(positional, defaults):
            params.append(Param(arg.arg, POSITIONAL, _src(default)))
        if a.vararg:
            params.append(Param(a.vararg.arg, VAR_POSITIONAL))
        for arg, default in zip(a.kwonlyargs, a.kw_defaults):
            params.append(Param(arg.arg, KEYWORD_ONLY, _src(default)))
        if a.kwarg:
            params.append(Param(a.kwarg.arg, VAR_KEYWORD))
        return Signature(tuple(params))

    def get(self, name: str) -> Param | None:
        return self._by_name.get(name)

    # Facts derived from ``params``, found once per signature and kept on it (never pickled:
    # a hash of strings differs between processes).
    @cached_property
    def _by_name(self) -> dict[str, Param]:
        found: dict[str, Param] = {}
        for p in self.params:
            found.setdefault(p.name, p)      # the first parameter of a name, as a search finds
        return found

    @cached_property
    def _hash(self) -> int:
        return hash(self.params)

    def __hash__(self) -> int:
        return self._hash

    def __getstate__(self) -> dict:
        return {"params": self.params}

    @cached_property
    def _layouts(self) -> dict[bool, "_Layout"]:
        return {}

    def layout(self, method: bool) -> "_Layout":
        """How call arguments bind to this signature (to a method's without ``self``)."""
        found = self._layouts.get(method)
        if found is None:
            found = self._layouts[method] = _Layout.of(self.params, method)
        return found


@dataclass(frozen=True)
class _Layout:
    """The parameters of a signature as :func:`bind` reads them."""

    positional: tuple[str, ...]          # names that may be given positionally, in order
    var_positional: str | None           # the ``*name`` parameter
    var_keyword: str | None              # the ``**name`` parameter
    keywords: frozenset[str]             # names that may be given by keyword
    required: tuple[str, ...]            # names a call must pass, in order
    no_self: bool                        # a method signature that does not start with self

    @staticmethod
    def of(params: tuple[Param, ...], method: bool) -> "_Layout":
        no_self = method and (not params or params[0].name != "self")
        if method:
            params = params[1:]
        return _Layout(
            positional=tuple(p.name for p in params if p.kind == POSITIONAL),
            var_positional=next((p.name for p in params if p.kind == VAR_POSITIONAL), None),
            var_keyword=next((p.name for p in params if p.kind == VAR_KEYWORD), None),
            keywords=frozenset(p.name for p in params if p.kind in (POSITIONAL, KEYWORD_ONLY)),
            required=tuple(p.name for p in params if p.required),
            no_self=no_self)


def _src(node: ast.expr | None) -> str | None:
    return None if node is None else ast.unparse(node)


@dataclass
class Bound:
    """The user's arguments bound to a torch signature."""

    values: dict[str, cst.BaseExpression] = field(default_factory=dict)
    varargs: dict[str, list[cst.Arg]] = field(default_factory=dict)
    varkw: dict[str, list[cst.Arg]] = field(default_factory=dict)

    def supplied(self, name: str) -> bool:
        return name in self.values or bool(self.varargs.get(name)) or bool(self.varkw.get(name))


def bind(sig: Signature, args: Sequence[cst.Arg], receiver: cst.BaseExpression | None = None) -> Bound:
    """Bind call arguments (and a method receiver, as parameter ``self``) to ``sig``."""
    bound = Bound()
    layout = sig.layout(receiver is not None)
    if receiver is not None:
        if layout.no_self:
            raise TemplateError("method signature must start with self")
        bound.values["self"] = receiver
    positional, var_pos, var_kw = layout.positional, layout.var_positional, layout.var_keyword
    index = 0
    for arg in args:
        if arg.star == "**":
            if var_kw is None:
                raise BindError("**kwargs cannot be mapped")
            bound.varkw.setdefault(var_kw, []).append(arg)
            continue
        if arg.star == "*":
            if var_pos is None or index < len(positional):
                raise BindError("*args cannot be mapped here")
            bound.varargs.setdefault(var_pos, []).append(arg)
            continue
        if arg.keyword is None:
            if index < len(positional):
                bound.values[positional[index]] = arg.value
                index += 1
            elif var_pos is not None:
                bound.varargs.setdefault(var_pos, []).append(arg)
            else:
                raise BindError("too many positional arguments")
            continue
        name = arg.keyword.value
        if name in layout.keywords:
            if name in bound.values:
                raise BindError(f"argument {name!r} given twice")
            bound.values[name] = arg.value
        elif var_pos is not None and name == var_pos and not bound.varargs.get(name):
            # torch.zeros(size=(2, 3)): the variadic sizes given as one keyword sequence
            bound.varargs[name] = [cst.Arg(arg.value)]
        elif var_kw is not None:
            bound.varkw.setdefault(var_kw, []).append(arg)
        else:
            raise BindError(f"unknown keyword argument {name!r}")
    for name in layout.required:
        if name not in bound.values:
            raise BindError(f"missing argument {name!r}")
    return bound


# ---------------------------------------------------------------- templates


@lru_cache(maxsize=None)
def _parse_template(text: str) -> cst.BaseExpression:
    try:
        tree = cst.parse_expression(text)
    except cst.ParserSyntaxError as exc:
        raise TemplateError(f"bad template {text!r}: {exc}") from None
    _PARSED_TEMPLATES.add(id(tree))
    return tree


# ids of the parsed templates: they live as long as the process (the cache above), so an id
# found here is that template's
_PARSED_TEMPLATES: set[int] = set()


def template_names(text: str) -> set[str]:
    """Every free name a template refers to (parameters and emitted globals alike)."""
    return set(_template_names(text))


class _NameCollector(cst.CSTVisitor):
    """Names read by an expression (attribute names and keywords are not references); with
    ``only``, just those among it."""

    def __init__(self, only: set[str] | None = None) -> None:
        self.only = only
        self.found: set[str] = set()

    def visit_Attribute(self, node: cst.Attribute) -> bool:
        walk(node.value, self)
        return False

    def visit_Arg(self, node: cst.Arg) -> bool:
        walk(node.value, self)
        return False

    def visit_Name(self, node: cst.Name) -> None:
        if self.only is None or node.value in self.only:
            self.found.add(node.value)


@lru_cache(maxsize=None)
def _template_names(text: str) -> frozenset[str]:
    """What :class:`_NameCollector` finds in the libcst tree of ``text``, read from Python's
    much cheaper ``ast`` (the tables hold hundreds of templates, all read at start-up): names
    read, ``True``/``False``/``None`` (names in libcst), and lambda parameters (libcst
    ``Name`` nodes too); attribute names and keywords are strings in ``ast``."""
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError:
        tree = None
    if tree is None:
        collector = _NameCollector()
        walk(_parse_template(text), collector)     # raises TemplateError for a bad template
        return frozenset(collector.found)
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            found.add(node.id)
        elif isinstance(node, ast.Constant) and (node.value is True or node.value is False or node.value is None):
            found.add(repr(node.value))
        elif isinstance(node, ast.arg):
            found.add(node.arg)
    return frozenset(found)


def _template_names_cst(text: str) -> frozenset[str]:
    collector = _NameCollector()
    walk(_parse_template(text), collector)
    return frozenset(collector.found)


def emitted_roots(text: str, sig: Signature) -> set[str]:
    """The global names a template emits (``jnp``, ``nn``, helper functions, ...)."""
    return set(_emitted_roots(text, sig))


@lru_cache(maxsize=None)
def _emitted_roots(text: str, sig: Signature) -> frozenset[str]:
    params = {p.name for p in sig.params}
    return frozenset(n for n in _template_names(text) if n not in params and n not in _BUILTIN_NAMES)


@lru_cache(maxsize=None)
def template_parameters(text: str, sig: Signature) -> frozenset[str]:
    """The parameters of ``sig`` a template refers to."""
    return _template_names(text) & frozenset(p.name for p in sig.params)


_BUILTIN_NAMES = {"None", "True", "False", "len", "tuple", "list", "int", "float", "bool",
                  "range", "min", "max", "abs", "isinstance", "slice", "Ellipsis", "sum", "dict"}

_ATOMS = (cst.Name, cst.Attribute, cst.Call, cst.Subscript, cst.Integer, cst.Float,
          cst.SimpleString, cst.ConcatenatedString, cst.FormattedString, cst.List, cst.Tuple,
          cst.Dict, cst.Set, cst.Imaginary, cst.ListComp, cst.GeneratorExp)


def _with(node: cst.CSTNode, **changes) -> cst.CSTNode:
    """``node.with_changes(**changes)`` (the same construction and validation), cheaper."""
    return copy_with(node, changes)


def _needs_parens(node: cst.BaseExpression) -> bool:
    return not isinstance(node, _ATOMS) and not node.lpar


def _parens(node: cst.BaseExpression) -> cst.BaseExpression:
    if _needs_parens(node):
        return _with(node, lpar=[cst.LeftParen()], rpar=[cst.RightParen()])
    return node


def references(node: cst.CSTNode, params: set[str] | None = None) -> set[str]:
    """The names among ``params`` that ``node`` reads (every name it reads without
    ``params``; attribute names and keywords are not reads)."""
    if id(node) in _PARSED_TEMPLATES:          # a whole template: its names are known
        names = _names_in_template(node)
        return set(names) if params is None else {n for n in names if n in params}
    collector = _NameCollector(params)
    walk(node, collector)
    return collector.found


_TEMPLATE_NAMES: dict[int, frozenset[str]] = {}


def _names_in_template(node: cst.CSTNode) -> frozenset[str]:
    """Every name a node of a parsed template reads, found once per node: template trees
    live as long as the process (``_parse_template``'s cache), so their ids are keys."""
    found = _TEMPLATE_NAMES.get(id(node))
    if found is None:
        collector = _NameCollector()
        walk(node, collector)
        found = _TEMPLATE_NAMES[id(node)] = frozenset(collector.found)
    return found


def _strip_parens_if_sole(node: cst.BaseExpression) -> cst.BaseExpression:
    if node.lpar and isinstance(node, (cst.BinaryOperation, cst.UnaryOperation, cst.Comparison,
                                        cst.BooleanOperation, cst.IfExp)):
        return node.with_changes(lpar=[], rpar=[])
    return node


@lru_cache(maxsize=None)
def _parsed_expression(text: str) -> cst.BaseExpression:
    """``cst.parse_expression(text)`` once per text (trees are immutable, so shared)."""
    return cst.parse_expression(text)


def _commas_fixed(args: Sequence[cst.Arg]) -> bool:
    """Whether :func:`_fix_commas` would print ``args`` as they are."""
    last = len(args) - 1
    for i, arg in enumerate(args):
        comma = arg.comma
        if i == last:
            if comma is not cst.MaybeSentinel.DEFAULT:
                return False
        elif not (type(comma) is cst.Comma and type(comma.whitespace_before) is cst.SimpleWhitespace
                  and comma.whitespace_before.value == "" and type(comma.whitespace_after) is cst.SimpleWhitespace
                  and comma.whitespace_after.value == " "):
            return False
    return True


def _fix_commas(args: Sequence[cst.Arg]) -> list[cst.Arg]:
    out = []
    for i, arg in enumerate(args):
        last = i == len(args) - 1
        comma = cst.MaybeSentinel.DEFAULT if last else cst.Comma(whitespace_after=cst.SimpleWhitespace(" "))
        out.append(_with(arg, comma=comma))
    return out


_FOLDABLE = (ast.Constant, ast.BinOp, ast.UnaryOp, ast.Compare, ast.BoolOp, ast.operator,
             ast.unaryop, ast.cmpop, ast.boolop, ast.Expression, ast.Tuple, ast.List, ast.Load,
             ast.Subscript)


# Expression nodes that print as literal-only Python (what _FOLDABLE accepts once parsed);
# punctuation and whitespace aside, an expression with any other node cannot fold.
_LITERAL_PARTS = (cst.Integer, cst.Float, cst.SimpleString, cst.ConcatenatedString, cst.BinaryOperation,
                  cst.UnaryOperation, cst.Comparison, cst.ComparisonTarget, cst.BooleanOperation,
                  cst.Tuple, cst.List, cst.Element, cst.Subscript, cst.SubscriptElement, cst.Index)
_LITERAL_NAMES = ("True", "False", "None")


class _NotLiteral(Exception):
    pass


class _LiteralCheck(cst.CSTVisitor):
    walk_tokens = False

    def on_visit(self, node: cst.CSTNode) -> bool:
        if isinstance(node, cst.Name):
            if node.value not in _LITERAL_NAMES:
                raise _NotLiteral
        elif not isinstance(node, _LITERAL_PARTS) and isinstance(node, cst.BaseExpression):
            raise _NotLiteral
        elif isinstance(node, (cst.BaseSlice, cst.BaseElement)) and not isinstance(node, _LITERAL_PARTS):
            raise _NotLiteral
        return True


def _maybe_literal(node: cst.BaseExpression) -> bool:
    """False when ``node`` certainly holds something other than literals (a name, a call, an
    attribute, a slice, ...): a cheap test before printing and compiling it in _fold."""
    try:
        walk(node, _LiteralCheck())
    except _NotLiteral:
        return False
    return True


def _fold(node: cst.BaseExpression) -> cst.BaseExpression:
    """Fold literal-only arithmetic (``1 - 0.1`` → ``0.9``); anything else is left alone."""
    if not _maybe_literal(node):
        return node
    text = _folded_text(code_of(node.with_changes(lpar=[], rpar=[])))
    return node if text is None else _parsed_expression(text)


@lru_cache(maxsize=4096)
def _folded_text(code: str) -> str | None:
    """The value of literal-only Python ``code``, printed; None when it does not fold."""
    try:
        tree = ast.parse(code, mode="eval")
    except SyntaxError:
        return None
    if not all(isinstance(n, _FOLDABLE) for n in ast.walk(tree)):
        return None
    try:
        value = eval(compile(tree, "<fold>", "eval"), {"__builtins__": {}}, {})  # literals only
    except Exception:
        return None
    if isinstance(value, float):
        return repr(round(value, 12))
    if isinstance(value, (bool, int, str)):
        return repr(value)
    return None


# ---------------------------------------------------------------- builders


class _NotApplicable(Exception):
    """A strict variant refers to a parameter the call did not pass."""


_REMOVE = cst.RemoveFromParent()
_NO_ARGUMENTS = Bound()   # what a part no call can change is rendered with, once


class _Reference:
    """A name of the template that refers to a parameter (keywords of the template's own
    calls never do; attribute names do, as they always have: a strict variant whose
    attribute is named like a parameter the call did not pass does not apply)."""

    __slots__ = ("node", "name", "spliced", "default")

    def __init__(self, node: cst.Name, param: Param) -> None:
        self.node = node
        self.name = param.name
        self.spliced = param.kind in (VAR_POSITIONAL, VAR_KEYWORD)   # left for its argument to splice
        self.default = param.default

    def build(self, bound: Bound, strict: bool):
        values = bound.values
        if self.name in values:
            return _parens(values[self.name])
        if self.spliced:
            return self.node
        if strict or self.default is None:
            raise _NotApplicable(self.name)
        return _parsed_expression(self.default)


class _Fixed:
    """A part of the template that renders the same for every call, rendered once."""

    __slots__ = ("result",)

    def __init__(self, result: cst.CSTNode) -> None:
        self.result = result

    def build(self, bound: Bound, strict: bool):
        return self.result


class _Spine:
    """A template node with a reference below it (or one whose rendering failed when the
    builder was made). Rendering rebuilds it from its children's renderings, as a libcst
    transformer would, then applies its own rule, ``leave(part, updated, bound)``."""

    __slots__ = ("node", "children", "leave")

    def __init__(self, node: cst.CSTNode, children: tuple, leave) -> None:
        self.node = node
        self.children = children   # (field, child node, part): the children that may render differently
        self.leave = leave         # None: the node as rebuilt

    def build(self, bound: Bound, strict: bool):
        node = self.node
        changed = fields = None
        for field, child, part in self.children:
            result = part.build(bound, strict)
            if result is not child:
                if changed is None:
                    changed, fields = {}, []
                changed[id(child)] = result
                if not fields or fields[-1] != field:
                    fields.append(field)
        updated = node if changed is None else _rebuild(node, changed, fields)
        return updated if self.leave is None else self.leave(self, updated, bound)


def _rebuild(node: cst.CSTNode, changed: dict[int, object], fields: list[str]) -> cst.CSTNode:
    """``node`` with its children replaced as ``changed`` says (``id(old child)`` → result),
    as libcst's rebuild makes it, without its detour through a visitor: the node is
    constructed and validated anew; in a call's arguments, one left out is dropped and one
    spliced is spread (libcst's rule for a sequence). Anything else that is not a node goes
    through libcst's own rebuild (:func:`walk.rebuilt`)."""
    updates = {}
    for name in fields:
        value = getattr(node, name)
        if type(value) is tuple or type(value) is list:
            items = [changed.get(id(item), item) for item in value]
            if any(type(item) in _SENTINEL_TYPES for item in items):
                if type(node) is not cst.Call:
                    return rebuilt(node, changed, fields)
                items = _spliced(items)
            updates[name] = tuple(items)
        else:
            result = changed[id(value)]
            if type(result) in _SENTINEL_TYPES:
                return rebuilt(node, changed, fields)
            updates[name] = result
    return copy_with(node, updates)


_SENTINEL_TYPES = (cst.RemovalSentinel, cst.FlattenSentinel)


def _spliced(args: list) -> list[cst.Arg]:
    out: list[cst.Arg] = []
    for arg in args:
        if type(arg) is cst.FlattenSentinel:
            out.extend(arg.nodes)
        elif type(arg) is not cst.RemovalSentinel:
            out.append(arg)
    return out


class _ArgSpine(_Spine):
    """An argument of a call the template makes: a keyword argument whose value refers to a
    parameter the call did not pass is left out (unless its keyword is in ``always``), and
    ``*name`` / ``**name`` of a variadic parameter splice the call's extra arguments."""

    __slots__ = ("droppable_refs", "star_name", "star_is_param")

    def __init__(self, node: cst.Arg, children: tuple, params: frozenset[str], always: frozenset[str]) -> None:
        super().__init__(node, children, _leave_arg)
        keyword = node.keyword
        droppable = keyword is not None and keyword.value not in always
        self.droppable_refs = tuple(_names_in_template(node.value) & params) if droppable else ()
        starred = node.star in ("*", "**") and isinstance(node.value, cst.Name)
        self.star_name = node.value.value if starred else None
        self.star_is_param = starred and node.value.value in params

    def build(self, bound: Bound, strict: bool):
        for name in self.droppable_refs:
            if not bound.supplied(name):
                return _REMOVE   # its value is not rendered: it cannot make a variant inapplicable
        return _Spine.build(self, bound, strict)


def _leave_arg(part: _ArgSpine, updated: cst.Arg, bound: Bound):
    original = part.node
    name = part.star_name
    if name is not None:
        if original.star == "*" and name in bound.varargs:
            return cst.FlattenSentinel(bound.varargs[name])
        if original.star == "*" and part.star_is_param:
            return _REMOVE   # no extra positional arguments
        if original.star == "**" and part.star_is_param:
            extra = bound.varkw.get(name, [])
            return cst.FlattenSentinel(extra) if extra else _REMOVE
    value = _strip_parens_if_sole(updated.value)
    if updated.keyword is original.keyword and value is updated.value:
        return updated
    return _with(updated, keyword=original.keyword, value=value)


def _leave_call(part: _Spine, updated: cst.Call, bound: Bound):
    if _commas_fixed(updated.args):
        return updated
    return _with(updated, args=_fix_commas(updated.args))


def _leave_attribute(part: _Spine, updated: cst.Attribute, bound: Bound):
    original = part.node          # the attribute name is never replaced
    value = _parens(updated.value)
    if updated.attr is original.attr and value is updated.value:
        return updated
    return _with(updated, attr=original.attr, value=value)


def _leave_subscript(part: _Spine, updated: cst.Subscript, bound: Bound):
    value = _parens(updated.value)
    return updated if value is updated.value else _with(updated, value=value)


def _leave_subscript_folding(part: _Spine, updated: cst.Subscript, bound: Bound):
    folded = _fold(updated)          # (0.9, 0.999)[0] → 0.9
    if folded is not updated:
        return folded
    return _leave_subscript(part, updated, bound)


def _leave_folding(part: _Spine, updated: cst.BaseExpression, bound: Bound):
    return _fold(updated)


_FOLDING_TYPES = (cst.BinaryOperation, cst.UnaryOperation, cst.Comparison, cst.BooleanOperation)


def _rule_of(node: cst.CSTNode, params: frozenset[str]):
    """The rule a node of the template follows once its children are rendered."""
    t = type(node)
    if t is cst.Call:
        return _leave_call
    if t is cst.Attribute:
        return _leave_attribute
    if t is cst.Subscript:
        return _leave_subscript_folding if _may_fold(node, params) else _leave_subscript
    if t in _FOLDING_TYPES:
        return _leave_folding if _may_fold(node, params) else None
    return None


class _LiteralWithHoles(_LiteralCheck):
    """:class:`_LiteralCheck` with references as holes: what a reference becomes is known
    only at a call."""

    def __init__(self, params: frozenset[str]) -> None:
        self.params = params

    def on_visit(self, node: cst.CSTNode) -> bool:
        if type(node) is cst.Name and node.value in self.params:
            return False
        return super().on_visit(node)


def _may_fold(node: cst.BaseExpression, params: frozenset[str]) -> bool:
    """False when some part of ``node`` that no call replaces is not a literal: a name, a
    call, an attribute... Rendering keeps such a part (or a call or attribute around it), so
    :func:`_fold` would leave the rendered node alone for every call."""
    try:
        walk(node, _LiteralWithHoles(params))
    except _NotLiteral:
        return False
    return True


def _compile(node: cst.CSTNode, sig: Signature, params: frozenset[str], always: frozenset[str]):
    """The part that renders ``node``; None when it renders as itself for every call."""
    if type(node) is cst.Name and node.value in params:
        return _Reference(node, sig.get(node.value))
    children = []
    fixed = True
    for field in node_fields(node):
        if field == "keyword" and type(node) is cst.Arg:
            continue   # the template's own keyword, never a reference
        value = getattr(node, field)
        for item in (value if type(value) in (tuple, list) else (value,)):
            if not isinstance(item, cst.CSTNode) or type(item) in TOKEN_TYPES:
                continue
            part = _compile(item, sig, params, always)
            if part is not None:
                children.append((field, item, part))
                fixed = fixed and type(part) is _Fixed
    if type(node) is cst.Arg:
        spine = _ArgSpine(node, tuple(children), params, always)
    else:
        spine = _Spine(node, tuple(children), _rule_of(node, params))
    if not fixed:
        return spine
    if not children and spine.leave is None:
        return None
    try:
        result = spine.build(_NO_ARGUMENTS, False)
    except Exception:
        return spine   # fails for every call: it fails at each rendering, as it always did
    return None if result is node else _Fixed(result)


class TemplateBuilder:
    """One template compiled for one signature and ``always`` set (see the module docstring)."""

    __slots__ = ("tree", "root")

    def __init__(self, text: str, sig: Signature, always: frozenset[str]) -> None:
        params = frozenset(p.name for p in sig.params)
        self.tree = _parse_template(text)
        self.root = _compile(self.tree, sig, params, always)   # None: the template as it is

    def render(self, bound: Bound, strict: bool = False) -> cst.BaseExpression | None:
        """The template for the call ``bound``; None when ``strict`` and a referenced
        parameter was not passed."""
        if self.root is None:
            out = self.tree
        else:
            try:
                out = self.root.build(bound, strict)
            except _NotApplicable:
                return None
        assert isinstance(out, cst.BaseExpression)
        return _strip_parens_if_sole(out)


_BUILDERS: dict[tuple[str, Signature, frozenset[str]], TemplateBuilder] = {}


def template_builder(text: str, sig: Signature, always: frozenset[str] = frozenset()) -> TemplateBuilder:
    """The builder of ``text`` for ``sig`` and ``always``, made once per process."""
    if type(always) is not frozenset:
        always = frozenset(always)
    key = (text, sig, always)
    builder = _BUILDERS.get(key)
    if builder is None:
        builder = _BUILDERS[key] = TemplateBuilder(text, sig, always)
    return builder


def render(template: str, sig: Signature, bound: Bound, always: frozenset[str] = frozenset(),
           strict: bool = False) -> cst.BaseExpression | None:
    """Render one template; None when ``strict`` and a referenced parameter was not passed."""
    return template_builder(template, sig, always).render(bound, strict)


def render_variants(templates: Sequence[str], sig: Signature, bound: Bound,
                    always: frozenset[str] = frozenset()) -> tuple[cst.BaseExpression, str] | None:
    """Render the first applicable template of ``templates``; returns (expression, template)."""
    last = len(templates) - 1
    for i, text in enumerate(templates):
        out = template_builder(text, sig, always).render(bound, strict=i < last)
        if out is not None:
            return out, text
    return None
