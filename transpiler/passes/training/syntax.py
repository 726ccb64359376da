"""Read-only questions about libcst trees (names read and bound, calls, statement shapes)."""
from __future__ import annotations

import dataclasses
import re

import libcst as cst

from ...codegen import code_of as _code_of
from ...names import dotted
from ...walk import _NODE_TYPE, TOKEN_TYPES, _is_node_type, child_fields, walk
from .common import COMMA


def code_of(node: cst.CSTNode) -> str:
    return _code_of(node)       # cst.Module([]).code_for_node(node), printed faster


def _token_only(annotation: str | None) -> bool:
    words = set(re.findall(r"[A-Za-z_]\w*", annotation or "")) - _TYPING_WORDS
    return bool(words) and words <= _TOKEN_NAMES


_TOKEN_NAMES = frozenset(t.__name__ for t in TOKEN_TYPES)
_TYPING_WORDS = {"Sequence", "Optional", "Union", "MaybeSentinel", "None", "Literal", "typing"}
_FIELDS: dict[type, tuple[str, ...]] = {}


def children(node: cst.CSTNode) -> list[cst.CSTNode]:
    """``node``'s children in the order libcst visits them, without the punctuation and
    whitespace (which hold no names): the nodes a read-only visitor would be shown."""
    cls = type(node)
    names = _FIELDS.get(cls)
    if names is None:
        declared = {f.name: str(f.type) for f in dataclasses.fields(cls)}
        names = _FIELDS[cls] = tuple(n for n in child_fields(node) if not _token_only(declared.get(n)))
    out = []
    for name in names:
        value = getattr(node, name)
        vt = type(value)
        if vt is tuple or vt is list:
            for item in value:
                if type(item) not in TOKEN_TYPES:
                    out.append(item)
        elif vt not in TOKEN_TYPES and ((known := _NODE_TYPE.get(vt)) or (known is None and _is_node_type(vt))):
            out.append(value)       # (isinstance(value, CSTNode), cached by type)
    return out


class _Finder(cst.CSTVisitor):
    walk_tokens = False     # (on_visit would otherwise be shown every token)

    def __init__(self, kind, statements: bool) -> None:
        self.kind, self.found = kind, []
        if statements:
            self.walk_expressions = False    # statements are never inside an expression

    def on_visit(self, node: cst.CSTNode) -> bool:
        if isinstance(node, self.kind):
            self.found.append(node)
        return True


def find_all(node: cst.CSTNode, kind) -> list:
    """The nodes of type ``kind`` (a type or a tuple of types) in ``node``, ``node`` included,
    in visiting order."""
    kinds = kind if isinstance(kind, tuple) else (kind,)
    finder = _Finder(kind, all(issubclass(k, (cst.BaseSmallStatement, cst.BaseStatement)) for k in kinds))
    walk(node, finder)
    return finder.found


def _names(node: cst.CSTNode, out: list[str], targets: bool) -> None:
    """The names ``node`` holds, in visiting order, except attribute and keyword names and
    names inside lambdas; without plain assignment targets when ``targets`` is false."""
    t = type(node)
    if t is cst.Name:
        out.append(node.value)
    elif t is cst.Attribute or t is cst.Arg:
        _names(node.value, out, targets)
    elif t is cst.AssignTarget and not targets:
        if not isinstance(node.target, (cst.Name, cst.Tuple, cst.List)):
            _names(node.target, out, targets)
    elif t is not cst.Lambda:
        for child in children(node):
            _names(child, out, targets)


def names_read(node: cst.CSTNode) -> set[str]:
    """Names a node reads (not attribute names, not keyword names)."""
    out: list[str] = []
    _names(node, out, False)
    return set(out)


def bound_names(target: cst.BaseExpression) -> list[str]:
    if isinstance(target, cst.Name):
        return [target.value]
    if isinstance(target, (cst.Tuple, cst.List)):
        out: list[str] = []
        for el in target.elements:
            out += bound_names(el.value)
        return out
    if isinstance(target, cst.StarredElement):
        return bound_names(target.value)
    return []


def _assigned(node: cst.CSTNode, out: list[str]) -> None:
    t = type(node)
    if t is cst.AssignTarget or t is cst.AugAssign or t is cst.AnnAssign or t is cst.For:
        out.extend(bound_names(node.target))
    elif t is cst.FunctionDef or t is cst.ClassDef:
        out.append(node.name.value)
        return
    elif t is cst.Import:
        for a in node.names:
            out.append(dotted(a.asname.name) if a.asname else (dotted(a.name) or "").split(".")[0])
        return
    elif t is cst.ImportFrom:
        if not isinstance(node.names, cst.ImportStar):
            for a in node.names:
                out.append(dotted(a.asname.name) if a.asname else dotted(a.name))
        return
    elif t is cst.Param:
        out.append(node.name.value)
    elif t is cst.Lambda:
        return
    for child in children(node):
        _assigned(child, out)


def assigned_names(stmt: cst.CSTNode) -> list[str]:
    """The names a statement binds, in order (nested functions and classes by their name)."""
    out: list[str] = []
    _assigned(stmt, out)
    return out


def method_stmt(stmt: cst.CSTNode, method: str) -> tuple[cst.BaseExpression, cst.Call] | None:
    """``<receiver>.<method>(...)`` as a whole statement → (receiver, call)."""
    if not (isinstance(stmt, cst.SimpleStatementLine) and len(stmt.body) == 1 and isinstance(stmt.body[0], cst.Expr)):
        return None
    call = stmt.body[0].value
    if isinstance(call, cst.Call) and isinstance(call.func, cst.Attribute) and call.func.attr.value == method:
        return call.func.value, call
    return None


def _calls(node: cst.CSTNode, out: list[cst.Call]) -> None:
    if type(node) is cst.Call and type(node.func) is cst.Name:
        out.append(node)
    for child in children(node):
        _calls(child, out)


def named_calls(node: cst.CSTNode) -> list[cst.Call]:
    """The calls of a plain name (``f(x)``, not ``a.f(x)``) in ``node``, in visiting order."""
    out: list[cst.Call] = []
    _calls(node, out)
    return out


def _any_calls(node: cst.CSTNode, out: list[cst.Call]) -> None:
    if type(node) is cst.Call:
        out.append(node)
    for child in children(node):
        _any_calls(child, out)


def model_calls(node: cst.CSTNode, names: set[str]) -> list[cst.Call]:
    """The calls in ``node`` whose callee is one of ``names``: plain (``model(x)``) or dotted
    (``self.model(x)``) names."""
    if not any("." in n for n in names):
        return [c for c in named_calls(node) if c.func.value in names]
    out: list[cst.Call] = []
    _any_calls(node, out)
    return [c for c in out if dotted(c.func) in names]


def calls_name(node: cst.CSTNode, names: set[str]) -> bool:
    return bool(model_calls(node, names))


def loop_batch_names(loop: cst.For) -> list[str]:
    """The names a loop over a data loader binds to a batch (not the index of enumerate,
    nothing for a loop over range)."""
    target = loop.target
    if isinstance(loop.iter, cst.Call) and dotted(loop.iter.func) == "range":
        return []
    if isinstance(loop.iter, cst.Call) and dotted(loop.iter.func) == "enumerate" \
            and isinstance(target, cst.Tuple) and len(target.elements) == 2:
        target = target.elements[1].value
    return bound_names(target)


def reads_of(stmts) -> set[str]:
    out: set[str] = set()
    for s in stmts:
        out |= names_read(s)
    return out


def target_size(target) -> int:
    return len(bound_names(target))


def ordered_assigned(stmts) -> list[str]:
    out: list[str] = []
    for s in stmts:
        for n in assigned_names(s):
            if n not in out:
                out.append(n)
    return out


def calls_of(stmts, model: str) -> list[cst.Call]:
    return [c for s in stmts for c in model_calls(s, {model})]


def is_assigned_call(stmts, model: str) -> bool:
    for s in stmts:
        small = s.body[0]
        if isinstance(small, cst.Assign) and isinstance(small.value, cst.Call) and dotted(small.value.func) == model:
            return True
    return False


def add_kwarg(call: cst.Call, name: str, value: cst.BaseExpression) -> cst.Call:
    args = list(call.args)
    if args:
        args[-1] = args[-1].with_changes(comma=COMMA)
    return call.with_changes(args=[*args, cst.Arg(value, keyword=cst.Name(name), equal=cst.AssignEqual(
        whitespace_before=cst.SimpleWhitespace(""), whitespace_after=cst.SimpleWhitespace("")))])


def ends_with_return(stmt) -> bool:
    return isinstance(stmt, cst.SimpleStatementLine) and isinstance(stmt.body[-1], cst.Return)


def _attribute_reads(node: cst.CSTNode, name: str, attrs: list[str], bad: list) -> None:
    t = type(node)
    if t is cst.Call:
        func = node.func
        if isinstance(func, cst.Attribute) and isinstance(func.value, cst.Name) and func.value.value == name:
            bad.append(node)
    elif t is cst.Attribute:
        if isinstance(node.value, cst.Name) and node.value.value == name:
            if node.attr.value not in attrs:
                attrs.append(node.attr.value)
            return
    elif t is cst.Arg:
        _attribute_reads(node.value, name, attrs, bad)
        return
    elif t is cst.Name:
        if node.value == name:
            bad.append(node)
    for child in children(node):
        _attribute_reads(child, name, attrs, bad)


def attribute_reads(stmts, name: str) -> list[str]:
    """The attributes read on ``name`` when every read of it in ``stmts`` is ``name.attr``
    (not a call of a method); otherwise []."""
    attrs: list[str] = []
    bad: list = []
    for s in stmts:
        _attribute_reads(s, name, attrs, bad)
    return [] if bad else attrs


_SCALAR_CALLS = {"int", "float", "len", "round", "bool", "str", "min", "max", "abs"}


def _scalar_expr(expr) -> bool:
    if isinstance(expr, (cst.Integer, cst.Float, cst.SimpleString, cst.Name)) and not (
            isinstance(expr, cst.Name) and expr.value not in ("True", "False", "None")):
        return True
    if isinstance(expr, cst.UnaryOperation):
        return _scalar_expr(expr.expression)
    if isinstance(expr, cst.Call) and isinstance(expr.func, cst.Name) and expr.func.value in _SCALAR_CALLS:
        return True
    return False


def _scalar_bindings(node: cst.CSTNode, scope, name: str, ok: list[bool]) -> None:
    """Appends to ``ok``, for every binding of ``name`` in ``node``, whether it binds a scalar."""
    t = type(node)
    if t is cst.ClassDef or (t is cst.FunctionDef and node is not scope):
        return
    if t is cst.Param:
        if node.name.value == name:
            ok.append(False)
    elif t is cst.For or t is cst.AugAssign:
        if name in bound_names(node.target):
            ok.append(False)
    elif t is cst.Assign:
        for target in node.targets:
            if isinstance(target.target, cst.Name) and target.target.value == name:
                ok.append(_scalar_expr(node.value))
            elif isinstance(target.target, cst.Tuple) and name in bound_names(target.target):
                names = [e.value for e in target.target.elements]
                if isinstance(node.value, cst.Tuple) and len(node.value.elements) == len(names):
                    ok.append(all(_scalar_expr(v.value) for tn, v in zip(names, node.value.elements)
                                  if isinstance(tn, cst.Name) and tn.value == name))
                else:
                    ok.append(False)
    for child in children(node):
        _scalar_bindings(child, scope, name, ok)


def scalar_bound(scope, name: str) -> bool:
    """Every binding of ``name`` in ``scope`` is a Python scalar (a literal, ``int(...)``,
    ``len(...)``, a literal tuple unpacked), so it can be a static argument of train_step."""
    ok: list[bool] = []
    _scalar_bindings(scope, scope, name, ok)
    return bool(ok) and all(ok)


def count_name(node: cst.CSTNode, name: str) -> int:
    """How often ``node`` holds the name ``name`` (not as an attribute or keyword name, not
    inside a lambda)."""
    out: list[str] = []
    _names(node, out, True)
    return out.count(name)


def is_docstring(stmt) -> bool:
    return isinstance(stmt, cst.SimpleStatementLine) and isinstance(stmt.body[0], cst.Expr) \
        and isinstance(stmt.body[0].value, (cst.SimpleString, cst.ConcatenatedString))


def attribute_names(node: cst.CSTNode) -> set[str]:
    """The attribute names a node reads (``grad`` in ``p.grad.norm()``)."""
    out: set[str] = set()

    def visit(n):
        if type(n) is cst.Attribute:
            out.add(n.attr.value)
        for child in children(n):
            visit(child)
    visit(node)
    return out


def with_param(params: cst.Parameters, name: str) -> cst.Parameters:
    """``params`` with ``name=None`` added last (keyword-only after ``*args`` or ``*``)."""
    param = cst.Param(cst.Name(name), default=cst.Name("None"),
                      equal=cst.AssignEqual(whitespace_before=cst.SimpleWhitespace(""),
                                            whitespace_after=cst.SimpleWhitespace("")))
    if params.star_arg not in (cst.MaybeSentinel.DEFAULT, None) or params.kwonly_params or params.star_kwarg:
        return params.with_changes(kwonly_params=[*params.kwonly_params, param])
    plist = list(params.params)
    if plist:
        plist[-1] = plist[-1].with_changes(comma=COMMA)
    return params.with_changes(params=[*plist, param])
