"""In-place tensor updates → functional updates (JAX arrays are immutable).

* ``x.add_(y)`` (a statement) → ``x = <rendering of x.add(y)>``; the out-of-place twin comes
  from the tensor-method table (``fill_``/``zero_``/``copy_`` have their own entries);
* ``x[idx] = v`` → ``x = x.at[idx].set(v)``, ``x[idx] += v`` → ``x = x.at[idx].add(v)``.

Subscript assignment is also how dicts, lists and NumPy arrays are written, so it is only
rewritten where the target is known to be a JAX array: inside converted module code, a name
bound to a torch result, or array-style indexing (slices, ``...``, several axes:
``x[:, 0] = 0``) of a value not known to be NumPy (transpiler/passes/tensors.py).
"""
from __future__ import annotations

import libcst as cst

from ..names import dotted, qualify
from ..render import render_call
from .base import Rule
from .tensors import TensorNames

_AT_METHODS = {cst.AddAssign: "add", cst.SubtractAssign: "subtract", cst.MultiplyAssign: "multiply",
               cst.DivideAssign: "divide", cst.PowerAssign: "power"}


def _is_array_index(sub: cst.Subscript) -> bool:
    if len(sub.slice) > 1:
        return True
    index = sub.slice[0].slice
    if isinstance(index, cst.Slice):
        return True
    value = getattr(index, "value", None)
    return isinstance(value, (cst.Ellipsis,)) or (isinstance(value, cst.Name) and value.value == "None")


def _original_base(stmt) -> cst.BaseExpression:
    """The subscripted value of an original ``x[i] = v`` / ``x[i] += v`` statement."""
    target = stmt.targets[0].target if isinstance(stmt, cst.Assign) else stmt.target
    return target.value


def _assign(target: cst.BaseExpression, value: cst.BaseExpression) -> cst.Assign:
    return cst.Assign(targets=[cst.AssignTarget(target=target)], value=value)


def _at(base: cst.BaseExpression, sub: cst.Subscript, method: str, value: cst.BaseExpression) -> cst.Call:
    at = cst.Subscript(value=cst.Attribute(value=base, attr=cst.Name("at")), slice=sub.slice)
    return cst.Call(func=cst.Attribute(value=at, attr=cst.Name(method)), args=[cst.Arg(value=value)])


class MutationRule(Rule):
    def __init__(self, ctx) -> None:
        super().__init__(ctx)
        self.tensors = TensorNames(ctx)

    def visit_FunctionDef(self, node: cst.FunctionDef) -> None:
        self.tensors.enter_function()

    def visit_Assign(self, node: cst.Assign) -> None:
        self.tensors.observe(node)

    def leave_SimpleStatementLine(self, original: cst.SimpleStatementLine, updated: cst.SimpleStatementLine):
        if len(updated.body) != 1 or len(original.body) != 1:
            return updated
        stmt, orig = updated.body[0], original.body[0]
        new = None
        if isinstance(stmt, cst.Expr) and isinstance(stmt.value, cst.Call):
            new = self._inplace_method(orig, stmt.value)
        elif isinstance(stmt, cst.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0].target, cst.Subscript):
            new = self._index_assign(orig, stmt.targets[0].target, "set", stmt.value)
        elif isinstance(stmt, cst.AugAssign) and isinstance(stmt.target, cst.Subscript):
            method = _AT_METHODS.get(type(stmt.operator))
            if method:
                new = self._index_assign(orig, stmt.target, method, stmt.value)
        if new is None:
            return updated
        return updated.with_changes(body=[new])

    def _inplace_method(self, orig, call: cst.Call):
        func = call.func
        if not isinstance(func, cst.Attribute):
            return None
        name = func.attr.value
        if not name.endswith("_") or name.endswith("__"):
            return None
        receiver = func.value
        if qualify(receiver, self.ctx.aliases) is not None or dotted(receiver) == "self":
            return None
        receiver_name = dotted(receiver)
        if receiver_name and self.ctx.is_submodule_ref(receiver_name):
            return None
        table = self.ctx.tables.tensor_methods
        entry = table.get(name) or table.get(name[:-1])
        if entry is None or entry.receiver != "any" and not self.ctx.in_module_code() and name not in table:
            return None
        result = render_call(entry, call.args, receiver=receiver, call=call)
        self.ctx.call_site(result.expr is not None)
        if result.expr is None:
            self.ctx.report(orig, result.code or "JP103", result.message)
            return None
        self.ctx.emits |= result.emits
        if result.code:
            self.ctx.report(orig, result.code, result.message)
        self.ctx.report(orig, "JP501", f".{name}() rewritten as an assignment")
        if isinstance(receiver, cst.Subscript):
            return _assign(receiver.value, _at(receiver.value, receiver, "set", result.expr))
        if isinstance(receiver, (cst.Name, cst.Attribute)):
            return _assign(receiver, result.expr)
        return None

    def _index_assign(self, orig, target: cst.Subscript, method: str, value: cst.BaseExpression):
        base = target.value
        if not isinstance(base, (cst.Name, cst.Attribute, cst.Subscript)):
            return None
        name = dotted(base)
        if name == "self" or (name and self.ctx.is_submodule_ref(name)):
            return None
        if self.tensors.produces_numpy(_original_base(orig)):
            return None     # a NumPy array (table = np.array(...); table[:, 0::2] = ...), even in a module
        if not self.ctx.in_module_code():
            # outside forward: a tensor we saw being made, or array-style indexing of anything
            # that is not NumPy (whose arrays stay NumPy and mutable in converted code)
            known = self.tensors.produces_tensor(orig_base := _original_base(orig))
            if not (known or (_is_array_index(target) and not self.tensors.produces_numpy(orig_base))):
                return None
        if name and name.startswith("self.") and self.ctx.in_module_code():
            self.ctx.report(orig, "JP302", f"{name}[...] assigned in forward: flax modules are immutable in __call__")
            return None
        self.ctx.report(orig, "JP501", "index assignment rewritten as .at[...]." + method)
        return _assign(base, _at(base, target, method, value))
