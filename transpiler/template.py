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
"""
from __future__ import annotations

import ast
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Sequence

import libcst as cst

from .codegen import code_of
from .walk import skipped_types, transform, walk

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
        for p in self.params:
            if p.name == name:
                return p
        return None


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
    params = list(sig.params)
    if receiver is not None:
        if not params or params[0].name != "self":
            raise TemplateError("method signature must start with self")
        bound.values["self"] = receiver
        params = params[1:]
    positional = [p for p in params if p.kind == POSITIONAL]
    var_pos = next((p for p in params if p.kind == VAR_POSITIONAL), None)
    var_kw = next((p for p in params if p.kind == VAR_KEYWORD), None)
    by_name = {p.name: p for p in params if p.kind in (POSITIONAL, KEYWORD_ONLY)}
    index = 0
    for arg in args:
        if arg.star == "**":
            if var_kw is None:
                raise BindError("**kwargs cannot be mapped")
            bound.varkw.setdefault(var_kw.name, []).append(arg)
            continue
        if arg.star == "*":
            if var_pos is None or index < len(positional):
                raise BindError("*args cannot be mapped here")
            bound.varargs.setdefault(var_pos.name, []).append(arg)
            continue
        if arg.keyword is None:
            if index < len(positional):
                bound.values[positional[index].name] = arg.value
                index += 1
            elif var_pos is not None:
                bound.varargs.setdefault(var_pos.name, []).append(arg)
            else:
                raise BindError("too many positional arguments")
            continue
        name = arg.keyword.value
        if name in by_name:
            if name in bound.values:
                raise BindError(f"argument {name!r} given twice")
            bound.values[name] = arg.value
        elif var_pos is not None and name == var_pos.name and not bound.varargs.get(name):
            # torch.zeros(size=(2, 3)): the variadic sizes given as one keyword sequence
            bound.varargs[name] = [cst.Arg(arg.value)]
        elif var_kw is not None:
            bound.varkw.setdefault(var_kw.name, []).append(arg)
        else:
            raise BindError(f"unknown keyword argument {name!r}")
    for p in params:
        if p.required and p.name not in bound.values:
            raise BindError(f"missing argument {p.name!r}")
    return bound


# ---------------------------------------------------------------- templates


@lru_cache(maxsize=None)
def _parse_template(text: str) -> cst.BaseExpression:
    try:
        return cst.parse_expression(text)
    except cst.ParserSyntaxError as exc:
        raise TemplateError(f"bad template {text!r}: {exc}") from None


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
    params = {p.name for p in sig.params}
    return {n for n in template_names(text) if n not in params and n not in _BUILTIN_NAMES}


_BUILTIN_NAMES = {"None", "True", "False", "len", "tuple", "list", "int", "float", "bool",
                  "range", "min", "max", "abs", "isinstance", "slice", "Ellipsis", "sum", "dict"}

_ATOMS = (cst.Name, cst.Attribute, cst.Call, cst.Subscript, cst.Integer, cst.Float,
          cst.SimpleString, cst.ConcatenatedString, cst.FormattedString, cst.List, cst.Tuple,
          cst.Dict, cst.Set, cst.Imaginary, cst.ListComp, cst.GeneratorExp)


def _needs_parens(node: cst.BaseExpression) -> bool:
    return not isinstance(node, _ATOMS) and not node.lpar


def _parens(node: cst.BaseExpression) -> cst.BaseExpression:
    if _needs_parens(node):
        return node.with_changes(lpar=[cst.LeftParen()], rpar=[cst.RightParen()])
    return node


def references(node: cst.CSTNode, params: set[str] | None = None) -> set[str]:
    """The names among ``params`` that ``node`` reads (every name it reads without
    ``params``; attribute names and keywords are not reads)."""
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


class _NotApplicable(Exception):
    pass


class _Render(cst.CSTTransformer):
    # hooks by node type, looked up once per process (libcst's own dispatch formats and
    # looks up each hook's name at every node)
    _VISITS: dict[type, object] = {}
    _LEAVES: dict[type, object] = {}

    def on_visit(self, node: cst.CSTNode) -> bool:
        t = type(node)
        try:
            hook = self._VISITS[t]
        except KeyError:
            hook = self._VISITS[t] = getattr(_Render, f"visit_{t.__name__}", None)
        return hook is None or hook(self, node) is not False

    def on_leave(self, original: cst.CSTNode, updated: cst.CSTNode):
        t = type(original)
        try:
            hook = self._LEAVES[t]
        except KeyError:
            hook = self._LEAVES[t] = getattr(_Render, f"leave_{t.__name__}", None)
        return updated if hook is None else hook(self, original, updated)

    def __init__(self, sig: Signature, bound: Bound, always: frozenset[str], strict: bool):
        self.sig = sig
        self.bound = bound
        self.always = always
        self.strict = strict
        self.params = {p.name for p in sig.params}
        self.dropped: set[int] = set()
        self.keywords: set[int] = set()

    # keyword arguments referring to unsupplied parameters are dropped (and, being dropped,
    # do not make a variant inapplicable: their names are never substituted)
    def visit_Arg(self, node: cst.Arg) -> bool:
        if node.keyword is not None:
            self.keywords.add(id(node.keyword))   # an output keyword is never a reference
        if node.keyword is not None and node.keyword.value not in self.always:
            refs = _names_in_template(node.value) & self.params
            if any(not self.bound.supplied(r) for r in refs):
                self.dropped.add(id(node))
                return False
        return True

    def leave_Call(self, original: cst.Call, updated: cst.Call) -> cst.BaseExpression:
        if _commas_fixed(updated.args):
            return updated
        return updated.with_changes(args=_fix_commas(updated.args))

    def leave_Arg(self, original: cst.Arg, updated: cst.Arg):
        if id(original) in self.dropped:
            return cst.RemoveFromParent()
        refs = _names_in_template(original.value) & self.params
        if original.star == "*" and isinstance(original.value, cst.Name) and original.value.value in self.bound.varargs:
            return cst.FlattenSentinel(self.bound.varargs[original.value.value])
        if original.star == "*" and isinstance(original.value, cst.Name) and original.value.value in self.params:
            return cst.RemoveFromParent()  # empty varargs
        if original.star == "**" and isinstance(original.value, cst.Name) and original.value.value in self.params:
            extra = self.bound.varkw.get(original.value.value, [])
            return cst.FlattenSentinel(extra) if extra else cst.RemoveFromParent()
        if original.keyword is not None:
            missing = [r for r in refs if not self.bound.supplied(r)]
            if missing and original.keyword.value not in self.always:
                return cst.RemoveFromParent()
        value = _strip_parens_if_sole(updated.value)
        if updated.keyword is original.keyword and value is updated.value:
            return updated
        return updated.with_changes(keyword=original.keyword, value=value)

    def leave_Attribute(self, original: cst.Attribute, updated: cst.Attribute) -> cst.BaseExpression:
        # the attribute name is never a parameter reference
        value = _parens(updated.value)
        if updated.attr is original.attr and value is updated.value:
            return updated
        return updated.with_changes(attr=original.attr, value=value)

    def leave_Subscript(self, original: cst.Subscript, updated: cst.Subscript) -> cst.BaseExpression:
        folded = _fold(updated)          # (0.9, 0.999)[0] → 0.9
        if folded is not updated:
            return folded
        value = _parens(updated.value)
        return updated if value is updated.value else updated.with_changes(value=value)

    def leave_Name(self, original: cst.Name, updated: cst.Name) -> cst.BaseExpression:
        name = original.value
        if name not in self.params or id(original) in self.keywords:
            return updated
        if name in self.bound.values:
            return _parens(self.bound.values[name])
        param = self.sig.get(name)
        if param is not None and param.kind in (VAR_POSITIONAL, VAR_KEYWORD):
            return updated  # spliced by leave_Arg
        if self.strict or param is None or param.default is None:
            raise _NotApplicable(name)
        return _parsed_expression(param.default)

    def leave_BinaryOperation(self, original, updated):
        return _fold(updated)

    def leave_UnaryOperation(self, original, updated):
        return _fold(updated)

    def leave_Comparison(self, original, updated):
        return _fold(updated)

    def leave_BooleanOperation(self, original, updated):
        return _fold(updated)


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
        out.append(arg.with_changes(comma=comma))
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
    code = code_of(node.with_changes(lpar=[], rpar=[]))
    try:
        tree = ast.parse(code, mode="eval")
    except SyntaxError:
        return node
    if not all(isinstance(n, _FOLDABLE) for n in ast.walk(tree)):
        return node
    try:
        value = eval(compile(tree, "<fold>", "eval"), {"__builtins__": {}}, {})  # literals only
    except Exception:
        return node
    if isinstance(value, float):
        text = repr(round(value, 12))
    elif isinstance(value, (bool, int, str)):
        text = repr(value)
    else:
        return node
    return _parsed_expression(text)


_RENDER_SKIP = skipped_types(_Render(Signature(()), Bound(), frozenset(), False))


def render(template: str, sig: Signature, bound: Bound, always: frozenset[str] = frozenset(),
           strict: bool = False) -> cst.BaseExpression | None:
    """Render one template; None when ``strict`` and a referenced parameter was not passed."""
    tree = _parse_template(template)
    try:
        out = transform(tree, _Render(sig, bound, always, strict), _RENDER_SKIP)
    except _NotApplicable:
        return None
    assert isinstance(out, cst.BaseExpression)
    return _strip_parens_if_sole(out)


def render_variants(templates: Sequence[str], sig: Signature, bound: Bound,
                    always: frozenset[str] = frozenset()) -> tuple[cst.BaseExpression, str] | None:
    """Render the first applicable template of ``templates``; returns (expression, template)."""
    for i, text in enumerate(templates):
        out = render(text, sig, bound, always, strict=i < len(templates) - 1)
        if out is not None:
            return out, text
    return None
