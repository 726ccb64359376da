"""Table-driven rewriting of torch functions, tensor methods, tensor attributes and values.

Every torch-qualified name is looked up in the tables once, at its outermost dotted chain.
What is converted is replaced by the entry's rendering; what is not is rewritten to its fully
qualified torch name (so local torch aliases such as ``F`` can go away) and reported.
"""
from __future__ import annotations

import libcst as cst

from ..codegen import code_of
from ..names import dotted, qualified_expr, qualify
from ..render import Rendered, render_attribute, render_call, render_value
from ..template import Signature, _parse_template, emitted_roots
from .base import Rule
from .tensors import TensorNames
from .runtime import DROPPED_CALLS, REMOVED_CONTEXTS, SEEDS
from ..walk import transform

# Structural torch.nn names handled by the modules pass, never by the op tables.
STRUCTURAL = {"torch.nn.Module", "torch.nn.Sequential", "torch.nn.ModuleList",
              "torch.nn.ModuleDict", "torch.nn.Parameter", "torch.nn.ParameterList",
              "torch.nn.ParameterDict"}

# Names another rule rewrites as a whole (statement level).
OWNED_BY_OTHER_PASSES = REMOVED_CONTEXTS | SEEDS | DROPPED_CALLS   # the runtime rule's statements

_NON_TENSOR_LITERALS = (cst.SimpleString, cst.ConcatenatedString, cst.FormattedString,
                        cst.List, cst.Dict, cst.Set, cst.Tuple, cst.Integer, cst.Float,
                        cst.ListComp, cst.DictComp, cst.SetComp)


_NO_PARAMETERS = Signature(())

RNG_KEY = "rng_key"          # the free name random-op templates use for their key
SAMPLE_STREAM = "sample"     # flax rng stream for random ops inside modules
DROPOUT_STREAM = "dropout"   # ... and for functional dropout, as flax's nn.Dropout uses


class _ReplaceName(cst.CSTTransformer):
    def __init__(self, name: str, replacement: cst.BaseExpression) -> None:
        self.name, self.replacement = name, replacement

    def leave_Arg(self, original: cst.Arg, updated: cst.Arg) -> cst.Arg:
        return updated.with_changes(keyword=original.keyword)  # a keyword is not a reference

    def leave_Attribute(self, original: cst.Attribute, updated: cst.Attribute) -> cst.Attribute:
        return updated.with_changes(attr=original.attr)

    def leave_Name(self, original: cst.Name, updated: cst.Name) -> cst.BaseExpression:
        return self.replacement if original.value == self.name else updated


class OpsRule(Rule):
    """Functions, layer constructors, methods, attributes and values from the tables."""

    def __init__(self, ctx) -> None:
        super().__init__(ctx)
        self.skip: set[int] = set()      # Name nodes that are not references (keywords, attrs)
        self.inner: set[int] = set()     # nodes that are the .value of an Attribute
        self.callee: set[int] = set()    # nodes that are a Call's func
        self.targets: set[int] = set()   # assignment targets
        self.tensors = TensorNames(ctx)  # names bound to tensors (outside forward)

    # ---------------------------------------------------------------- bookkeeping
    def visit_Import(self, node) -> bool:
        return False

    def visit_ImportFrom(self, node) -> bool:
        return False

    def visit_WithItem(self, node: cst.WithItem) -> bool:
        """``with sdpa_kernel(SDPBackend.MATH):`` goes as a whole (runtime rule): its arguments
        are not references to convert or report."""
        item = node.item.func if isinstance(node.item, cst.Call) else node.item
        return qualify(item, self.ctx.aliases) not in OWNED_BY_OTHER_PASSES

    def visit_Arg(self, node: cst.Arg) -> None:
        if node.keyword is not None:
            self.skip.add(id(node.keyword))

    def visit_Attribute(self, node: cst.Attribute) -> None:
        self.skip.add(id(node.attr))
        self.inner.add(id(node.value))

    def visit_Call(self, node: cst.Call) -> None:
        self.callee.add(id(node.func))

    def visit_FunctionDef(self, node: cst.FunctionDef) -> None:
        self.skip.add(id(node.name))
        self.tensors.enter_function()

    def visit_Assign(self, node: cst.Assign) -> None:
        self.tensors.observe(node)

    def _produces_tensor(self, expr: cst.BaseExpression) -> bool:
        return self.tensors.produces_tensor(expr)

    def visit_ClassDef(self, node: cst.ClassDef) -> None:
        self.skip.add(id(node.name))

    def visit_Param(self, node: cst.Param) -> None:
        self.skip.add(id(node.name))

    def visit_AssignTarget(self, node: cst.AssignTarget) -> None:
        self.targets.add(id(node.target))

    # ---------------------------------------------------------------- calls
    def leave_Call(self, original: cst.Call, updated: cst.Call) -> cst.BaseExpression:
        q = qualify(original.func, self.ctx.aliases)
        if q is not None:
            return self._torch_call(original, updated, q)
        if isinstance(original.func, cst.Attribute) and isinstance(updated.func, cst.Attribute):
            return self._method_call(original, updated)
        return updated

    def _torch_call(self, original: cst.Call, updated: cst.Call, q: str) -> cst.BaseExpression:
        if q in STRUCTURAL or q in OWNED_BY_OTHER_PASSES:
            return updated
        if q.startswith("torch.nn.init.") and self.ctx.in_constructor():
            return updated  # the modules pass reports initialisation code as a whole
        entry = self.ctx.tables.lookup_qualified(q)
        if entry is None:
            self.ctx.call_site(False)
            self.ctx.report(original, "JP101", f"{q} has no mapping")
            return updated.with_changes(func=qualified_expr(q))
        if entry.keep:
            self.ctx.call_site(True)
            self.ctx.report(original, "JP105", f"{q} stays on torch: {entry.keep}")
            return updated.with_changes(func=qualified_expr(q))
        if self.ctx.channels_last and id(original) in self.ctx.channels_last:
            entry = entry.channels_last()       # --layout nhwc (passes/layout.py)
        result = render_call(entry, updated.args, call=updated)
        plan = self.ctx.init_plan
        if result.expr is not None and plan is not None and id(original) in plan.call_overrides:
            from .initialization import apply_overrides
            result.expr = apply_overrides(result.expr, entry, plan.call_overrides[id(original)])
        return self._apply(original, updated, result, q)

    def _apply(self, original, updated, result: Rendered, name: str, method: bool = False):
        self.ctx.call_site(result.expr is not None)
        if result.expr is None:
            self.ctx.report(original, result.code or "JP101", result.message)
            if not method:
                return updated.with_changes(func=qualified_expr(name))
            return updated
        if result.code:
            self.ctx.report(original, result.code, result.message)
        expr = result.expr
        if RNG_KEY in result.emits:
            dropout = "dropout" in name or "dropout" in code_of(expr)
            expr = self._thread_rng(original, expr, DROPOUT_STREAM if dropout else SAMPLE_STREAM)
        self.ctx.emits |= result.emits - {RNG_KEY}
        return expr

    def _thread_rng(self, original, expr: cst.BaseExpression, stream: str) -> cst.BaseExpression:
        """Random ops take an explicit key. In a module's forward it comes from flax's
        ``sample`` rng stream; inside ``nn.Parameter(...)`` the param initializer binds it;
        elsewhere the script must provide ``rng_key`` (issue 4 threads it automatically)."""
        if self.ctx.in_module_code():
            return transform(expr, _ReplaceName(RNG_KEY, cst.parse_expression(f'self.make_rng("{stream}")')))
        if self.ctx.in_constructor():
            return expr  # nn.Parameter(...) becomes self.param(name, lambda rng_key: ...)
        self.ctx.report(original, "JP403", "random op needs an explicit PRNG key: define rng_key "
                        "(e.g. rng_key, sub = jax.random.split(rng_key)) before this line")
        return expr

    def _method_call(self, original: cst.Call, updated: cst.Call) -> cst.BaseExpression:
        name = updated.func.attr.value
        entry = self.ctx.tables.tensor_methods.get(name)
        if entry is None and name.endswith("_") and not name.endswith("__"):
            # an in-place method used for its value: on a temporary (torch.zeros(n).scatter_add_(...))
            # nothing else sees the mutation, so the out-of-place twin computes the same thing.
            # Statements such as x.add_(y) are rewritten by the mutation rule.
            twin = self.ctx.tables.tensor_methods.get(name[:-1])
            if twin is not None and isinstance(original.func.value, (cst.Call, cst.BinaryOperation)):
                entry = twin
        if entry is None:
            return updated
        receiver = updated.func.value
        if not self._may_be_tensor(original.func.value, entry.receiver):
            if entry.receiver == "tensor" and self.ctx.in_module_code():
                self.ctx.report(original, "JP104", f".{name}() left alone: receiver may not be a tensor")
            return updated
        result = render_call(entry, updated.args, receiver=receiver, call=updated)
        return self._apply(original, updated, result, name, method=True)

    def _may_be_tensor(self, receiver: cst.BaseExpression, kind: str) -> bool:
        if isinstance(receiver, _NON_TENSOR_LITERALS):
            return False
        if qualify(receiver, self.ctx.aliases) is not None:
            return False
        name = dotted(receiver)
        if name == "self" or (name and self.ctx.is_submodule_ref(name)):
            return False
        if name and name.split(".", 1)[0] in self.ctx.other_imports:
            return False  # math.sqrt, np.mean, os.path.join: a module, not a tensor
        if kind == "any":
            return True
        return self.ctx.in_module_code() or self._produces_tensor(receiver)

    # ---------------------------------------------------------------- values and attributes
    def leave_Attribute(self, original: cst.Attribute, updated: cst.Attribute) -> cst.BaseExpression:
        if id(original) in self.inner or id(original) in self.callee or id(original) in self.targets:
            return updated
        q = qualify(original, self.ctx.aliases)
        if q is not None:
            return self._torch_value(original, updated, q)
        entry = self.ctx.tables.tensor_attributes.get(original.attr.value)
        if entry is None or not self._may_be_tensor(original.value, entry.receiver):
            return updated
        if entry.unsupported:
            self.ctx.report(original, "JP102", entry.unsupported)
            return updated
        result = render_attribute(entry, updated.value)
        if result.expr is None:
            self.ctx.report(original, result.code or "JP102", result.message)
            return updated
        if result.code:
            self.ctx.report(original, result.code, result.message)
        self.ctx.emits |= result.emits
        return result.expr

    def leave_Name(self, original: cst.Name, updated: cst.Name) -> cst.BaseExpression:
        if id(original) in self.skip or id(original) in self.inner or id(original) in self.callee:
            return updated
        if original.value not in self.ctx.aliases or original.value == "torch":
            return updated
        q = self.ctx.aliases[original.value]
        if q.count(".") < 1 or q in ("torch.nn", "torch.nn.functional", "torch.optim"):
            return updated
        return self._torch_value(original, updated, q)

    def _torch_value(self, original, updated, q: str) -> cst.BaseExpression:
        if q == "torch.nn.Module":
            self.ctx.emits.add("nn")
            return qualified_expr("nn.Module")
        if q in STRUCTURAL:
            return updated
        entry = self.ctx.tables.lookup_qualified(q)
        if entry is not None and entry.keep:
            return qualified_expr(q)
        if entry is not None and entry.table.startswith("layers"):
            result = _class_as_value(entry)
            if result is not None:
                self.ctx.emits |= result.emits
                return result.expr
        if entry is None:
            if _is_module_path(q):
                return updated
            self.ctx.report(original, "JP101", f"{q} has no mapping")
            return qualified_expr(q)
        if entry.value is not None:
            result = Rendered(_parse_template(entry.value), None, "", emitted_roots(entry.value, _NO_PARAMETERS))
        else:
            result = render_value(entry) if entry.sig is None else _function_as_value(entry)
        if result.expr is None:
            self.ctx.report(original, result.code or "JP101", result.message)
            return qualified_expr(q)
        if result.code:
            self.ctx.report(original, result.code, result.message)
        self.ctx.emits |= result.emits
        return result.expr


def _is_module_path(q: str) -> bool:
    """``torch.nn`` or ``torch.cuda``: a package, not an API (its attribute will be handled)."""
    return q in {"torch", "torch.nn", "torch.nn.functional", "torch.optim", "torch.cuda",
                 "torch.utils", "torch.utils.data", "torch.distributed", "torch.nn.init",
                 "torch.autograd", "torch.backends", "torch.distributions", "torch.optim.lr_scheduler"}


def _class_as_value(entry) -> Rendered | None:
    """A layer class used as a value (``isinstance(m, nn.Linear)``) → the flax class it
    becomes (``nn.Dense``), when its template constructs a class."""
    if entry.unsupported or not entry.templates:
        return None
    tree = _parse_template(entry.templates[-1])
    name = dotted(tree.func) if isinstance(tree, cst.Call) else None
    if not name or name == "partial" or not name.split(".")[-1][:1].isupper():
        return None
    return Rendered(tree.func, None, "", {name.split(".")[0]})


def _function_as_value(entry) -> Rendered:
    """``F.relu`` passed as a value: allowed when the template is ``f(first_param)``."""
    if entry.unsupported:
        return Rendered(None, "JP102", entry.unsupported)
    if not entry.templates or not entry.sig or not entry.sig.params:
        return Rendered(None, "JP103", f"{entry.key} used as a value")
    tree = _parse_template(entry.templates[-1])
    first = entry.sig.params[0].name
    if (isinstance(tree, cst.Call) and len(tree.args) == 1 and tree.args[0].keyword is None
            and isinstance(tree.args[0].value, cst.Name) and tree.args[0].value.value == first
            and dotted(tree.func)):
        root = dotted(tree.func).split(".")[0]
        return Rendered(tree.func, "JP201" if not entry.exact else None,
                        entry.note, {root})
    return Rendered(None, "JP103", f"{entry.key} is used as a value; only direct calls are converted")
