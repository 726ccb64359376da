"""Which local names hold tensors, and which hold NumPy arrays, as far as one reading of the
code can tell (no type inference): names bound to torch results (``pe = torch.zeros(n, d)``,
``t = x.transpose(0, 1)``) are tensors; names bound to expressions rooted at NumPy
(``np.zeros(3)``, ``rng.standard_normal(...)`` after ``rng = np.random.default_rng()``) are
arrays that stay NumPy in converted code. Rules consult it outside a module's forward, where
receivers are not assumed to be tensors.

Scopes are functions, closed lazily by statement depth (a rule that removes a function ends
the traversal of the other rules' leave hooks, so no leave hook is relied upon).
"""
from __future__ import annotations

import libcst as cst

from ..names import qualify

# torch namespaces whose functions do not return tensors (or are not functions).
_NON_TENSOR_NAMESPACES = ("torch.optim", "torch.utils", "torch.nn.init", "torch.distributions",
                          "torch.distributed", "torch.cuda", "torch.backends", "torch.autograd",
                          "torch.jit", "torch.fx", "torch.multiprocessing")

def _is_tensor_function(q: str, tables) -> bool:
    """``torch.zeros``, ``F.relu``: functions in the tables that return a tensor."""
    if q.startswith(_NON_TENSOR_NAMESPACES) or q.rsplit(".", 1)[-1][:1].isupper():
        return False
    if q.startswith("torch.nn.") and not q.startswith("torch.nn.functional."):
        return False
    entry = tables.functions.get(q)
    return entry is not None and entry.keep is None and not entry.unsupported


def _root_name(expr: cst.BaseExpression) -> str | None:
    """``rng`` for ``rng.standard_normal((2, 3)).astype(np.float32)[0]``."""
    while True:
        if isinstance(expr, cst.Call):
            expr = expr.func
        elif isinstance(expr, (cst.Attribute, cst.Subscript)):
            expr = expr.value
        else:
            break
    return expr.value if isinstance(expr, cst.Name) else None


class TensorNames:
    def __init__(self, ctx) -> None:
        self.ctx = ctx
        # per function: (statement depth of the def, tensor names, NumPy names)
        self.scopes: list[tuple[int, set[str], set[str]]] = [(0, set(), set())]
        self.numpy_modules = {"np", "numpy"} & set(ctx.other_imports)

    def enter_function(self) -> None:
        self.scopes.append((len(self.ctx.statement_stack), set(), set()))

    def _scope(self) -> tuple[int, set[str], set[str]]:
        depth = len(self.ctx.statement_stack)
        while len(self.scopes) > 1 and self.scopes[-1][0] >= depth:
            self.scopes.pop()
        return self.scopes[-1]

    def observe(self, node: cst.Assign) -> None:
        """``name = value`` (original code): remember what kind of value the name holds."""
        if len(node.targets) != 1 or not isinstance(node.targets[0].target, cst.Name):
            return
        name = node.targets[0].target.value
        _, tensors, arrays = self._scope()
        is_tensor = self.produces_tensor(node.value)     # the value may read the old binding
        is_array = not is_tensor and self.produces_numpy(node.value)
        tensors.discard(name)
        arrays.discard(name)
        if is_tensor:
            tensors.add(name)
        elif is_array:
            arrays.add(name)

    def produces_tensor(self, expr: cst.BaseExpression) -> bool:
        """Whether ``expr`` (original code) certainly evaluates to a tensor."""
        if isinstance(expr, cst.Name):
            return expr.value in self._scope()[1]
        if isinstance(expr, cst.Call):
            q = qualify(expr.func, self.ctx.aliases)
            if q is not None:
                return _is_tensor_function(q, self.ctx.tables)
            if isinstance(expr.func, cst.Attribute):
                entry = self.ctx.tables.tensor_methods.get(expr.func.attr.value)
                return (entry is not None and entry.returns == "tensor"     # not .item(), .size()
                        and self.produces_tensor(expr.func.value))
            return False
        if isinstance(expr, cst.Attribute):
            return expr.attr.value in ("T", "mT", "data") and self.produces_tensor(expr.value)
        if isinstance(expr, cst.Subscript):
            return self.produces_tensor(expr.value)
        if isinstance(expr, cst.BinaryOperation):
            return self.produces_tensor(expr.left) or self.produces_tensor(expr.right)
        if isinstance(expr, cst.UnaryOperation):
            return self.produces_tensor(expr.expression)
        return False

    def produces_numpy(self, expr: cst.BaseExpression) -> bool:
        """Whether ``expr`` (original code) is rooted at NumPy: ``np.zeros(3)``,
        ``rng.normal(size=3) * 2`` with ``rng`` a NumPy name, ``t.numpy()``."""
        if isinstance(expr, cst.BinaryOperation):
            return (self.produces_numpy(expr.left) or self.produces_numpy(expr.right)) \
                and not (self.produces_tensor(expr.left) or self.produces_tensor(expr.right))
        if isinstance(expr, cst.UnaryOperation):
            return self.produces_numpy(expr.expression)
        if isinstance(expr, cst.Call) and isinstance(expr.func, cst.Attribute) \
                and expr.func.attr.value == "numpy":
            return True
        root = _root_name(expr)
        return root is not None and (root in self.numpy_modules or root in self._scope()[2])
