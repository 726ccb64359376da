"""Named rewriters for op-table entries whose output a template cannot express.

A table entry names one with ``rewriter = "name"``; ``transpiler.render.render_call`` binds the
user's call to the entry's ``sig`` and calls ``fn(entry, bound, call)``. A rewriter returns a
libcst expression (exactness and emitted names then come from the entry) or a ``Rendered``
(to refuse a call with a diagnostic, or to report its own emitted names / approximation).
Each one is small and only decides *which* form applies; the forms themselves stay in the
entry's ``to`` templates wherever possible, so the tables remain the place to read.

This module is on the conversion path: it must not import torch, jax or flax.
"""
from __future__ import annotations

from functools import lru_cache

import libcst as cst

from .mapping import Entry
from .render import Rendered, _finish, rewriter
from .template import (POSITIONAL, VAR_POSITIONAL, Bound, Param, Signature, _parse_template,
                       emitted_roots, references, render_variants)

# torch dtype spellings → the key of their value entry in functions.toml
_DTYPE_NAMES = {
    "float32", "float", "float64", "double", "float16", "half", "bfloat16", "int64", "long",
    "int32", "int", "int16", "short", "int8", "uint8", "bool", "complex64", "complex128", "cfloat",
    "cdouble",
}
_JAX_DTYPES = {"float32", "float64", "float16", "bfloat16", "int64", "int32", "int16", "int8",
               "uint8", "uint16", "uint32", "bool_", "complex64", "complex128"}
_LEGACY_TYPES = {
    "FloatTensor": "float32", "DoubleTensor": "float64", "HalfTensor": "float16",
    "BFloat16Tensor": "bfloat16", "LongTensor": "long", "IntTensor": "int32",
    "ShortTensor": "int16", "CharTensor": "int8", "ByteTensor": "uint8", "BoolTensor": "bool",
}
_DEVICE_HINTS = ("device", "dev", "cuda", "gpu", "cpu", "rank", "mps")


def _dotted(node: cst.BaseExpression) -> str | None:
    if isinstance(node, cst.Name):
        return node.value
    if isinstance(node, cst.Attribute):
        base = _dotted(node.value)
        return None if base is None else f"{base}.{node.attr.value}"
    return None


def _code(node: cst.CSTNode) -> str:
    return cst.Module([]).code_for_node(node)


def _int_literal(node: cst.BaseExpression) -> bool:
    if isinstance(node, cst.Integer):
        return True
    return (isinstance(node, cst.UnaryOperation) and isinstance(node.operator, cst.Minus)
            and isinstance(node.expression, cst.Integer))


def _bool_literal(node: cst.BaseExpression) -> bool:
    return isinstance(node, cst.Name) and node.value in ("True", "False")


def _dtype_value(name: str) -> str | None:
    """The JAX spelling of the torch dtype value entry ``torch.<name>``."""
    from .mapping import load_tables
    entry = load_tables().functions.get(f"torch.{name}")
    if entry is None or entry.sig is not None or not entry.templates:
        return None
    return entry.templates[0]


def dtype_of(node: cst.BaseExpression) -> cst.BaseExpression | None:
    """If ``node`` spells a dtype (``torch.float32``, already converted ``jnp.float32``,
    ``torch.FloatTensor``, ``'torch.FloatTensor'``, ``x.dtype``, a name like ``dtype``),
    the JAX expression for it; else None."""
    dotted = _dotted(node)
    if isinstance(node, cst.SimpleString):
        text = node.evaluated_value if isinstance(node.evaluated_value, str) else ""
        name = text.rsplit(".", 1)[-1]
        if name in _LEGACY_TYPES:
            dotted = f"torch.{name}"
        elif text.startswith("torch.") and name in _DTYPE_NAMES:
            dotted = text
        else:
            return None
    if dotted is None:
        return None
    parts = dotted.split(".")
    if parts[0] == "torch":
        last = parts[-1]
        name = _LEGACY_TYPES.get(last, last if len(parts) == 2 else None)
        if name in _DTYPE_NAMES:
            value = _dtype_value(name)
            return cst.parse_expression(value) if value else None
        return None
    if parts[0] in ("jnp", "np", "numpy", "jax") and parts[-1] in _JAX_DTYPES:
        return node
    if "dtype" in parts[-1].lower():
        return node
    return None


def is_device(node: cst.BaseExpression) -> bool:
    """``node`` spells a device: a string, ``torch.device(...)``, an int, or a name/attribute
    that says so (``device``, ``args.device``, ``x.device``, ``local_rank``)."""
    if isinstance(node, (cst.SimpleString, cst.FormattedString, cst.ConcatenatedString)) or _int_literal(node):
        return True
    if isinstance(node, cst.Subscript) and isinstance(node.value, cst.Call):
        node = node.value  # jax.devices()[0], what torch.device(...) and x.device become
    if isinstance(node, cst.Call):
        name = _dotted(node.func) or ""
        return name.endswith(("device", "devices", "current_accelerator"))
    dotted = _dotted(node)
    if dotted is None:
        return False
    last = dotted.rsplit(".", 1)[-1].lower()
    return any(h in last for h in _DEVICE_HINTS)


def _required_refs(template: str, params: set[str], always: frozenset[str]) -> frozenset[str]:
    """Parameters a template needs passed: its references outside keyword arguments that are
    dropped when their parameter is missing (found once per template)."""
    return _required_refs_of(template, frozenset(params), always)


@lru_cache(maxsize=None)
def _required_refs_of(template: str, params: frozenset[str], always: frozenset[str]) -> frozenset[str]:
    needed: set[str] = set()

    class _Visit(cst.CSTVisitor):
        def visit_Arg(self, node: cst.Arg) -> bool:
            if node.keyword is not None and node.keyword.value not in always:
                return False
            return True

        def visit_Attribute(self, node: cst.Attribute) -> bool:
            node.value.visit(self)
            return False

        def visit_Name(self, node: cst.Name) -> None:
            if node.value in params:
                needed.add(node.value)

    _parse_template(template).visit(_Visit())
    return frozenset(needed)


def render_templates(entry: Entry, bound: Bound, sig: Signature | None = None,
                     templates: tuple[str, ...] | None = None) -> Rendered:
    """Render the entry's templates the way the table format documents: every template but
    the last applies when the user passed each parameter it needs (references inside
    droppable keyword arguments do not count); then the unused-argument check."""
    sig = sig or entry.sig
    templates = templates if templates is not None else entry.templates
    params = {p.name for p in sig.params}
    chosen = None
    for i, text in enumerate(templates):
        last = i == len(templates) - 1
        if not last and not all(bound.supplied(n) for n in _required_refs(text, params, entry.always)):
            continue
        out = render_variants((text,), sig, bound, entry.always)
        if out is not None:
            chosen = out
            break
    if chosen is None:
        return Rendered(None, "JP103", f"{entry.key}: arguments do not fit any known form")
    expr, template = chosen
    used = references(_parse_template(template), params)
    supplied = set(bound.values) | {k for k, v in bound.varargs.items() if v} | {k for k, v in bound.varkw.items() if v}
    unused = sorted(n for n in supplied if n not in used and n not in entry.ignore and n != "self")
    if unused:
        names = ", ".join(repr(n) for n in unused)
        return Rendered(None, "JP103", f"{entry.key}: argument {names} has no JAX equivalent here")
    return _finish(entry, expr, emitted_roots(template, sig))


@rewriter("variants")
def variants(entry: Entry, bound: Bound, call):
    """Plain template variants, selected as documented in mappings/README.md (a variant whose
    only missing parameters sit in droppable keyword arguments still applies). Used by
    entries whose earlier variants carry such keywords."""
    return render_templates(entry, bound)


def _refuse(entry: Entry, message: str, code: str = "JP103") -> Rendered:
    return Rendered(None, code, f"{entry.key}: {message}")


def _tuple_of(args: list[cst.Arg]) -> cst.BaseExpression:
    elements = []
    for i, arg in enumerate(args):
        comma = cst.MaybeSentinel.DEFAULT
        if len(args) == 1:
            comma = cst.Comma()
        elif i < len(args) - 1:
            comma = cst.Comma(whitespace_after=cst.SimpleWhitespace(" "))
        if arg.star == "*":
            elements.append(cst.StarredElement(arg.value, comma=comma))
        else:
            elements.append(cst.Element(arg.value, comma=comma))
    return cst.Tuple(elements)


@rewriter("pack_varargs")
def pack_varargs(entry: Entry, bound: Bound, call):
    """Sizes given either as varargs or as one sequence (``torch.zeros(2, 3)``,
    ``torch.zeros((2, 3))``, ``x.permute(0, 2, 1)``, ``x.new_zeros(x.shape)``): the variadic
    parameter is packed into one expression (the sequence itself, or a tuple of the
    arguments) and the templates use it as a plain name."""
    sig = entry.sig
    var = next(p for p in sig.params if p.kind == VAR_POSITIONAL)
    args = bound.varargs.get(var.name, [])
    if len(args) == 1 and args[0].star == "":
        packed = args[0].value
    else:
        packed = _tuple_of(args)
    params = tuple(Param(p.name, POSITIONAL, "()") if p is var else p for p in sig.params)
    new_bound = Bound(dict(bound.values), {}, dict(bound.varkw))
    new_bound.values[var.name] = packed
    return render_templates(entry, new_bound, Signature(params))


@rewriter("needs_dim")
def needs_dim(entry: Entry, bound: Bound, call):
    """softmax-like functions: torch's implicit ``dim`` (deprecated; it depends on the rank)
    is refused rather than guessed."""
    if not bound.supplied("dim"):
        return _refuse(entry, "call without dim= relies on torch's deprecated implicit dimension; "
                              "pass dim explicitly", "JP102")
    return render_templates(entry, bound)


@rewriter("max_min")
def max_min(entry: Entry, bound: Bound, call):
    """``torch.max/min`` (and the methods): no second argument → full reduction; a dim
    (int literal, ``dim=``, or a name that says dim/axis) → (values, indices); anything else
    → the elementwise ``maximum``/``minimum`` with that tensor.

    Templates, in order: reduction, (values, indices) by dim, elementwise."""
    reduce_t, dim_t, other_t = entry.templates
    second = bound.values.get("dim")
    if second is None and "other" in bound.values:
        return render_templates(entry, bound, templates=(other_t,))
    if second is None:
        if bound.supplied("keepdim"):
            return _refuse(entry, "keepdim without dim")
        return render_templates(entry, bound, templates=(reduce_t,))
    name = (_dotted(second) or "").rsplit(".", 1)[-1].lower()
    keyword_dim = call is not None and any(a.keyword is not None and a.keyword.value == "dim" for a in call.args)
    if keyword_dim or _int_literal(second) or "dim" in name or "axis" in name:
        return render_templates(entry, bound, templates=(dim_t,))
    if bound.supplied("keepdim"):
        return render_templates(entry, bound, templates=(dim_t,))
    values = dict(bound.values)
    values["other"] = values.pop("dim")
    return render_templates(entry, Bound(values, dict(bound.varargs), dict(bound.varkw)), templates=(other_t,))


@rewriter("var_std")
def var_std(entry: Entry, bound: Bound, call):
    """``var``/``std``: torch's default is the unbiased estimate; ``unbiased`` (a bool, also
    the legacy second positional form ``torch.var(x, False)``) and ``correction`` both become
    ``ddof``, which the templates spell ``ddof=correction``."""
    values = dict(bound.values)
    if "dim" in values and _bool_literal(values["dim"]) and "unbiased" not in values:
        values["unbiased"] = values.pop("dim")
    if "correction" in values and "unbiased" in values:
        return _refuse(entry, "both unbiased and correction given")
    if "unbiased" in values:
        u = values.pop("unbiased")
        if _bool_literal(u):
            values["correction"] = cst.Integer("1" if u.value == "True" else "0")
        else:
            values["correction"] = cst.parse_expression(f"int({_code(u)})")
    elif "correction" not in values:
        values["correction"] = cst.Integer("1")
    return render_templates(entry, Bound(values, dict(bound.varargs), dict(bound.varkw)))


@rewriter("tensor_to")
def tensor_to(entry: Entry, bound: Bound, call):
    """``Tensor.to``: device moves vanish (JAX places arrays itself); a dtype becomes
    ``astype``. ``.to(other_tensor)`` cannot be told from ``.to(device_variable)`` by syntax:
    an argument that is neither a dtype nor device-like is assumed to be a device and the
    conversion is reported as approximate."""
    me = bound.values["self"]
    dtype = None
    guessed = []
    for arg in bound.varargs.get("args", []):
        if arg.star:
            return _refuse(entry, "*args cannot be mapped")
        found = dtype_of(arg.value)
        if found is not None:
            dtype = found
        elif not is_device(arg.value):
            guessed.append(_code(arg.value))
    for arg in bound.varkw.get("kwargs", []):
        key = arg.keyword.value if arg.keyword else None
        if key == "dtype":
            dtype = dtype_of(arg.value) or arg.value
        elif key in ("device", "non_blocking", "copy", "memory_format"):
            continue
        else:
            return _refuse(entry, f"argument {key!r} has no JAX equivalent here")
    out = me if dtype is None else cst.parse_expression(_simplify_astype(_code(me), _code(dtype)))
    emits = _roots(dtype) if dtype is not None else set()
    if guessed:
        return Rendered(out, "JP201", f"{entry.key}: assumed {', '.join(guessed)} is a device "
                                      f"(dropped); if it is a tensor, use .astype(other.dtype)",
                        emits, approximate=True)
    return Rendered(out, None, "", emits)


def _roots(node: cst.BaseExpression) -> set[str]:
    """Module names (jnp, np, jax) an emitted dtype expression needs imported."""
    root = (_dotted(node) or "").split(".")[0]
    return {root} if root in ("jnp", "np", "jax") else set()


def _simplify_astype(receiver: str, dtype: str) -> str:
    try:
        node = cst.parse_expression(receiver)
    except cst.ParserSyntaxError:
        return f"({receiver}).astype({dtype})"
    from .template import _needs_parens
    recv = f"({receiver})" if _needs_parens(node) else receiver
    return f"{recv}.astype({dtype})"


@rewriter("tensor_type")
def tensor_type(entry: Entry, bound: Bound, call):
    """``Tensor.type(t)``: a dtype or legacy tensor type (``torch.FloatTensor``, also as a
    string) → ``astype``; ``.type()`` with no argument (the type name) is refused."""
    if "dtype" not in bound.values:
        return _refuse(entry, ".type() without an argument returns torch's type name; use x.dtype")
    dtype = dtype_of(bound.values["dtype"])
    if dtype is None:
        return _refuse(entry, f"cannot tell which dtype {_code(bound.values['dtype'])} is")
    expr = cst.parse_expression(_simplify_astype(_code(bound.values["self"]), _code(dtype)))
    return Rendered(expr, None, "", _roots(dtype))


@rewriter("legacy_tensor")
def legacy_tensor(entry: Entry, bound: Bound, call):
    """``torch.FloatTensor(...)``/``torch.LongTensor(...)``/``torch.Tensor(...)``: sizes (several
    ints, one int literal, a ``torch.Size``/``.size()``/``.shape``) → an array of zeros (torch
    leaves it uninitialised); one literal sequence → ``jnp.asarray`` with the dtype; one
    argument known only at run time (a name, ``len(x)``) → the third template, which decides
    there (an int is a size). Templates: (zeros, asarray, run-time), over ``args``."""
    zeros_t, data_t, runtime_t = entry.templates
    args = bound.varargs.get("args", [])
    if any(a.star for a in args):
        return _refuse(entry, "*args cannot be mapped")
    sig = Signature((Param("args", POSITIONAL),) + tuple(p for p in entry.sig.params if p.kind != VAR_POSITIONAL))
    values = {k: v for k, v in bound.values.items()}
    if not args:
        values["args"] = cst.parse_expression("(0,)")
        return render_templates(entry, Bound(values), sig, (zeros_t,))
    first = args[0].value
    sizes = (len(args) > 1 or _int_literal(first)
             or (isinstance(first, cst.Call) and (_dotted(first.func) or "").endswith(("size", "Size")))
             or (isinstance(first, cst.Attribute) and first.attr.value == "shape"))
    if sizes:
        values["args"] = first if len(args) == 1 and not _int_literal(first) else _tuple_of(args)
        return render_templates(entry, Bound(values), sig, (zeros_t,))
    values["args"] = first
    literal_data = isinstance(first, (cst.List, cst.Tuple, cst.ListComp, cst.GeneratorExp))
    return render_templates(entry, Bound(values), sig, (data_t if literal_data else runtime_t,))


@rewriter("randint")
def randint(entry: Entry, bound: Bound, call):
    """``torch.randint(high, size)`` or ``torch.randint(low, high, size)``: the first
    positional argument is ``low`` only when three are given."""
    values = dict(bound.values)
    if "size" not in values:
        if "high" not in values:
            return _refuse(entry, "missing size")
        values["size"] = values.pop("high")
        values["high"] = values.pop("low")
    return render_templates(entry, Bound(values, dict(bound.varargs), dict(bound.varkw)))


@rewriter("sdpa")
def sdpa(entry: Entry, bound: Bound, call):
    """``F.scaled_dot_product_attention``: attention dropout needs a PRNG key, so the template
    with ``rng_key`` (second) is used only when ``dropout_p`` is given and not literally 0."""
    plain_t, rng_t = entry.templates
    p = bound.values.get("dropout_p")
    zero = p is None or (isinstance(p, (cst.Integer, cst.Float)) and float(p.value) == 0.0)
    return render_templates(entry, bound, templates=(plain_t if zero else rng_t,))
