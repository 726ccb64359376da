"""Render one mapping-table entry at one call site: the single path every pass and every
table test goes through, so a table example that passes in the tests converts the same way
in a user's file."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import libcst as cst

from .codegen import code_of as _code_of
from .mapping import Entry
from .template import (BindError, Bound, Signature, bind, emitted_roots, references, render,
                       render_variants, template_parameters, _parse_template)


@dataclass
class Rendered:
    expr: cst.BaseExpression | None          # None: not converted (see problem)
    code: str | None = None                  # diagnostic code when not converted / approximate
    message: str = ""
    emits: set[str] = field(default_factory=set)  # global names the output uses
    approximate: bool = False


# name → function(entry, bound, call, receiver) -> cst expression; see rewriters.py
REWRITERS: dict[str, Callable[..., cst.BaseExpression]] = {}


def rewriter(name: str):
    def register(fn):
        REWRITERS[name] = fn
        return fn
    return register


def _unused_supplied(entry: Entry, bound: Bound, template: str) -> list[str]:
    used = template_parameters(template, entry.sig) if entry.sig else frozenset()
    supplied = [*bound.values, *(k for k, v in bound.varargs.items() if v), *(k for k, v in bound.varkw.items() if v)]
    return sorted({n for n in supplied if n not in used and n not in entry.ignore and n != "self"})


def render_call(entry: Entry, args: Sequence[cst.Arg], receiver: cst.BaseExpression | None = None,
                call: cst.Call | None = None) -> Rendered:
    """Render ``entry`` for a call with ``args`` (and a method ``receiver``)."""
    if entry.unsupported:
        return Rendered(None, "JP102", entry.unsupported)
    if entry.sig is None:
        return Rendered(None, "JP103", f"{entry.key} is a value, not a callable")
    try:
        bound = bind(entry.sig, args, receiver)
    except BindError as exc:
        return Rendered(None, "JP103", f"{entry.key}: {exc}")
    if entry.rewriter:
        fn = REWRITERS.get(entry.rewriter)
        if fn is None:
            raise KeyError(f"mapping {entry.key} names unknown rewriter {entry.rewriter!r}")
        result = fn(entry, bound, call)
        if isinstance(result, Rendered):
            return result
        return _finish(entry, result, entry.emits)
    chosen = render_variants(entry.templates, entry.sig, bound, entry.always)
    if chosen is None:
        return Rendered(None, "JP103", f"{entry.key}: arguments do not fit any known form")
    expr, template = chosen
    unused = _unused_supplied(entry, bound, template)
    if unused:
        names = ", ".join(repr(n) for n in unused)
        return Rendered(None, "JP103", f"{entry.key}: argument {names} has no JAX equivalent here")
    return _finish(entry, expr, emitted_roots(template, entry.sig))


def render_value(entry: Entry) -> Rendered:
    """Render an entry used as a value (``torch.float32``, or ``F.relu`` passed as a function)."""
    if entry.unsupported:
        return Rendered(None, "JP102", entry.unsupported)
    if entry.sig is not None:
        return Rendered(None, "JP103", f"{entry.key} used as a value")
    text = entry.templates[0]
    return _finish(entry, _parse_template(text), emitted_roots(text, _NO_PARAMETERS))


def _finish(entry: Entry, expr: cst.BaseExpression, emits: set[str]) -> Rendered:
    if not entry.exact:
        return Rendered(expr, "JP201", f"{entry.key}: {entry.note}", emits, approximate=True)
    return Rendered(expr, None, "", emits)


_NO_PARAMETERS = Signature(())
_SELF_ONLY = Signature.parse("self")


def code_of(node: cst.CSTNode) -> str:
    return _code_of(node)


def render_attribute(entry: Entry, receiver: cst.BaseExpression) -> Rendered:
    """Render a tensor attribute read (``x.T``, ``x.data``); templates refer to ``self``."""
    if entry.unsupported:
        return Rendered(None, "JP102", entry.unsupported)
    sig = entry.sig or _SELF_ONLY
    bound = Bound(values={"self": receiver})
    text = entry.templates[0]
    expr = render(text, sig, bound, entry.always)
    if expr is None:
        return Rendered(None, "JP103", f"cannot render attribute {entry.key}")
    return _finish(entry, expr, emitted_roots(text, sig))
