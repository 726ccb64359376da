"""Read-only questions about libcst trees (names read and bound, calls, statement shapes)."""
from __future__ import annotations

import libcst as cst

from ...names import dotted
from ...walk import walk
from .common import COMMA


def code_of(node: cst.CSTNode) -> str:
    return cst.Module([]).code_for_node(node)


def names_read(node: cst.CSTNode) -> set[str]:
    """Names a node reads (not attribute names, not keyword names)."""
    names: set[str] = set()

    class _V(cst.CSTVisitor):
        def visit_Attribute(self, n: cst.Attribute) -> bool:
            walk(n.value, self)
            return False

        def visit_Arg(self, n: cst.Arg) -> bool:
            walk(n.value, self)
            return False

        def visit_AssignTarget(self, n: cst.AssignTarget) -> bool:
            if not isinstance(n.target, (cst.Name, cst.Tuple, cst.List)):
                walk(n.target, self)
            return False

        def visit_Lambda(self, n: cst.Lambda) -> bool:
            return False

        def visit_Name(self, n: cst.Name) -> None:
            names.add(n.value)

    walk(node, _V())
    return names


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


def assigned_names(stmt: cst.CSTNode) -> list[str]:
    out: list[str] = []

    class _V(cst.CSTVisitor):
        def visit_AssignTarget(self, n: cst.AssignTarget) -> None:
            out.extend(bound_names(n.target))

        def visit_AugAssign(self, n: cst.AugAssign) -> None:
            out.extend(bound_names(n.target))

        def visit_AnnAssign(self, n: cst.AnnAssign) -> None:
            out.extend(bound_names(n.target))

        def visit_For(self, n: cst.For) -> None:
            out.extend(bound_names(n.target))

        def visit_FunctionDef(self, n: cst.FunctionDef) -> bool:
            out.append(n.name.value)
            return False

        def visit_ClassDef(self, n: cst.ClassDef) -> bool:
            out.append(n.name.value)
            return False

        def visit_Import(self, n: cst.Import) -> bool:
            for a in n.names:
                out.append(dotted(a.asname.name) if a.asname else (dotted(a.name) or "").split(".")[0])
            return False

        def visit_ImportFrom(self, n: cst.ImportFrom) -> bool:
            if not isinstance(n.names, cst.ImportStar):
                for a in n.names:
                    out.append(dotted(a.asname.name) if a.asname else dotted(a.name))
            return False

        def visit_Param(self, n: cst.Param) -> None:
            out.append(n.name.value)

        def visit_Lambda(self, n: cst.Lambda) -> bool:
            return False

    walk(stmt, _V())
    return out


def method_stmt(stmt: cst.CSTNode, method: str) -> tuple[cst.BaseExpression, cst.Call] | None:
    """``<receiver>.<method>(...)`` as a whole statement → (receiver, call)."""
    if not (isinstance(stmt, cst.SimpleStatementLine) and len(stmt.body) == 1 and isinstance(stmt.body[0], cst.Expr)):
        return None
    call = stmt.body[0].value
    if isinstance(call, cst.Call) and isinstance(call.func, cst.Attribute) and call.func.attr.value == method:
        return call.func.value, call
    return None


def calls_name(node: cst.CSTNode, names: set[str]) -> bool:
    hit = []

    class _V(cst.CSTVisitor):
        def visit_Call(self, n: cst.Call) -> None:
            if isinstance(n.func, cst.Name) and n.func.value in names:
                hit.append(n)

    walk(node, _V())
    return bool(hit)


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
    calls: list[cst.Call] = []

    class _V(cst.CSTVisitor):
        def visit_Call(self, n: cst.Call) -> None:
            if isinstance(n.func, cst.Name) and n.func.value == model:
                calls.append(n)

    for s in stmts:
        walk(s, _V())
    return calls


def is_assigned_call(stmts, model: str) -> bool:
    for s in stmts:
        small = s.body[0]
        if isinstance(small, cst.Assign) and isinstance(small.value, cst.Call) \
                and isinstance(small.value.func, cst.Name) and small.value.func.value == model:
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


def attribute_reads(stmts, name: str) -> list[str]:
    """The attributes read on ``name`` when every read of it in ``stmts`` is ``name.attr``
    (not a call of a method); otherwise []."""
    attrs: list[str] = []
    bad = []

    class _V(cst.CSTVisitor):
        def visit_Call(self, n: cst.Call) -> None:
            if isinstance(n.func, cst.Attribute) and isinstance(n.func.value, cst.Name) and n.func.value.value == name:
                bad.append(n)

        def visit_Attribute(self, n: cst.Attribute) -> bool:
            if isinstance(n.value, cst.Name) and n.value.value == name:
                if n.attr.value not in attrs:
                    attrs.append(n.attr.value)
                return False
            return True

        def visit_Arg(self, n: cst.Arg) -> bool:
            walk(n.value, self)
            return False

        def visit_Name(self, n: cst.Name) -> None:
            if n.value == name:
                bad.append(n)

    for s in stmts:
        walk(s, _V())
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


def scalar_bound(scope, name: str) -> bool:
    """Every binding of ``name`` in ``scope`` is a Python scalar (a literal, ``int(...)``,
    ``len(...)``, a literal tuple unpacked), so it can be a static argument of train_step."""
    found = []
    ok = []

    class _V(cst.CSTVisitor):
        def visit_ClassDef(self, n) -> bool:
            return False

        def visit_FunctionDef(self, n) -> bool:
            return n is scope

        def visit_Param(self, n: cst.Param) -> None:
            if n.name.value == name:
                found.append(n)
                ok.append(False)

        def visit_For(self, n: cst.For) -> None:
            if name in bound_names(n.target):
                found.append(n)
                ok.append(False)

        def visit_AugAssign(self, n: cst.AugAssign) -> None:
            if name in bound_names(n.target):
                found.append(n)
                ok.append(False)

        def visit_Assign(self, n: cst.Assign) -> None:
            for t in n.targets:
                if isinstance(t.target, cst.Name) and t.target.value == name:
                    found.append(n)
                    ok.append(_scalar_expr(n.value))
                elif isinstance(t.target, cst.Tuple) and name in bound_names(t.target):
                    found.append(n)
                    names = [e.value for e in t.target.elements]
                    if isinstance(n.value, cst.Tuple) and len(n.value.elements) == len(names):
                        ok.append(all(_scalar_expr(v.value) for tn, v in zip(names, n.value.elements)
                                      if isinstance(tn, cst.Name) and tn.value == name))
                    else:
                        ok.append(False)

    walk(scope, _V())
    return bool(found) and all(ok)


def count_name(node: cst.CSTNode, name: str) -> int:
    count = [0]

    class _V(cst.CSTVisitor):
        def visit_Lambda(self, n) -> bool:
            return False

        def visit_Name(self, n: cst.Name) -> None:
            if n.value == name:
                count[0] += 1

        def visit_Attribute(self, n: cst.Attribute) -> bool:
            walk(n.value, self)
            return False

        def visit_Arg(self, n: cst.Arg) -> bool:
            walk(n.value, self)
            return False

    walk(node, _V())
    return count[0]


def is_docstring(stmt) -> bool:
    return isinstance(stmt, cst.SimpleStatementLine) and isinstance(stmt.body[0], cst.Expr) \
        and isinstance(stmt.body[0].value, (cst.SimpleString, cst.ConcatenatedString))
