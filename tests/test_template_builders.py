"""Compiled templates (transpiler/template.py builders) render exactly what the template
rules say, checked against a plain libcst transformer that applies those rules node by node
(the way rendering worked before templates were compiled), on every template of the tables
and on the corner cases of the rules."""
import pickle
import random

import libcst as cst
import pytest

from transpiler import template as T
from transpiler.mapping import load_tables
from transpiler.template import (VAR_KEYWORD, VAR_POSITIONAL, Bound, Signature, bind, references,
                                 render, render_variants, template_builder)

code = cst.Module([]).code_for_node

# literal folding compiles what it tries, ``0.5[0]`` included (Python warns, and it does not fold)
pytestmark = pytest.mark.filterwarnings("ignore::SyntaxWarning")


# ---------------------------------------------------------------- the reference renderer

class _NotApplicable(Exception):
    pass


class _Reference(cst.CSTTransformer):
    """The template rules as one libcst transformer over the whole template tree."""

    def __init__(self, sig: Signature, bound: Bound, always: frozenset, strict: bool):
        self.sig, self.bound, self.always, self.strict = sig, bound, always, strict
        self.params = {p.name for p in sig.params}
        self.dropped: set[int] = set()
        self.keywords: set[int] = set()

    def _refs(self, node) -> set[str]:
        return references(node, self.params)

    def visit_Arg(self, node: cst.Arg) -> bool:
        if node.keyword is not None:
            self.keywords.add(id(node.keyword))
            if node.keyword.value not in self.always and any(
                    not self.bound.supplied(r) for r in self._refs(node.value)):
                self.dropped.add(id(node))
                return False
        return True

    def leave_Call(self, original, updated):
        last = len(updated.args) - 1
        return updated.with_changes(args=[
            a.with_changes(comma=cst.MaybeSentinel.DEFAULT if i == last else
                           cst.Comma(whitespace_after=cst.SimpleWhitespace(" ")))
            for i, a in enumerate(updated.args)])

    def leave_Arg(self, original, updated):
        if id(original) in self.dropped:
            return cst.RemoveFromParent()
        name = original.value.value if isinstance(original.value, cst.Name) else None
        if original.star == "*" and name in self.bound.varargs:
            return cst.FlattenSentinel(self.bound.varargs[name])
        if original.star == "*" and name in self.params:
            return cst.RemoveFromParent()
        if original.star == "**" and name in self.params:
            extra = self.bound.varkw.get(name, [])
            return cst.FlattenSentinel(extra) if extra else cst.RemoveFromParent()
        return updated.with_changes(keyword=original.keyword, value=T._strip_parens_if_sole(updated.value))

    def leave_Attribute(self, original, updated):
        return updated.with_changes(attr=original.attr, value=T._parens(updated.value))

    def leave_Subscript(self, original, updated):
        folded = T._fold(updated)
        return folded if folded is not updated else updated.with_changes(value=T._parens(updated.value))

    def leave_Name(self, original, updated):
        name = original.value
        if name not in self.params or id(original) in self.keywords:
            return updated
        if name in self.bound.values:
            return T._parens(self.bound.values[name])
        param = self.sig.get(name)
        if param.kind in (VAR_POSITIONAL, VAR_KEYWORD):
            return updated
        if self.strict or param.default is None:
            raise _NotApplicable(name)
        return cst.parse_expression(param.default)

    def leave_BinaryOperation(self, original, updated):
        return T._fold(updated)

    leave_UnaryOperation = leave_Comparison = leave_BooleanOperation = leave_BinaryOperation


def reference_render(text, sig, bound, always=frozenset(), strict=False):
    try:
        out = cst.parse_expression(text).visit(_Reference(sig, bound, frozenset(always), strict))
    except _NotApplicable:
        return None
    return T._strip_parens_if_sole(out)


def same(a, b) -> bool:
    if a is None or b is None:
        return a is b
    return a.deep_equals(b) and code(a) == code(b)


# ---------------------------------------------------------------- every table template

_VALUES = ["x", "3", "0.5", "-1", "a + b", "(a + b)", "(2, 3)", "True", "None", "f(y)", "not z",
           "q if c else r", "lambda t: t", "'s'", "x.shape[0]"]


def _random_bound(sig: Signature, rng: random.Random) -> Bound:
    bound = Bound()
    for p in sig.params:
        if p.kind in (T.POSITIONAL, T.KEYWORD_ONLY) and rng.random() < 0.5:
            bound.values[p.name] = cst.parse_expression(rng.choice(_VALUES))
        elif p.kind == VAR_POSITIONAL and rng.random() < 0.7:
            bound.varargs[p.name] = [cst.Arg(cst.parse_expression(rng.choice(_VALUES)))
                                     for _ in range(rng.randint(1, 3))]
        elif p.kind == VAR_KEYWORD and rng.random() < 0.5:
            bound.varkw[p.name] = [cst.Arg(cst.Integer("1"), keyword=cst.Name("extra"))]
    return bound


def _entries():
    tables = load_tables()
    for table in ("functions", "tensor_methods", "tensor_attributes", "layers", "initializers"):
        for entry in getattr(tables, table).values():
            if entry.sig is not None:
                for templates in (entry.templates, entry.nhwc_templates):
                    if templates:
                        yield entry, templates


def test_every_table_template_renders_as_the_rules_say():
    rng = random.Random(8)
    checked = 0
    for entry, templates in _entries():
        for _ in range(3):
            bound = _random_bound(entry.sig, rng)
            for i, text in enumerate(templates):
                strict = i < len(templates) - 1
                expected = reference_render(text, entry.sig, bound, entry.always, strict)
                assert same(render(text, entry.sig, bound, entry.always, strict), expected), text
                checked += 1
    assert checked > 2000


@pytest.mark.parametrize("sig, templates, call, always", [
    # a strict variant's attribute named like a parameter the call did not pass
    ("input, *, dtype=None", ["f(input.dtype)", "g(input)"], "h(x)", ()),
    ("input, *, dtype=None", ["f(input.dtype)", "g(input)"], "h(x, dtype=d)", ()),
    # literal arithmetic of the template alone, and with an argument
    ("x, m=0.1", "f(x, m=1 - 0.25, n=1 - m)", "h(a)", ("n",)),
    ("x, m=0.1", "f(x, m=1 - 0.25, n=1 - m)", "h(a, 0.5)", ()),
    ("x, m=0.1", "f(x, n=(1 - m) * g(2))", "h(a, 0.5)", ()),
    # commas of a template call that were irregular, and of one left with fewer arguments
    ("x, a=None, b=None", "f(x ,a=a,  b=b)", "h(1)", ()),
    ("x, a=None, b=None", "f(x, g(y, z=a), b=b)", "h(1, b=2)", ()),
    # splices: none, one, several, a sequence given by keyword, **kwargs
    ("*size, dtype=None", "jnp.zeros(*size, dtype=dtype)", "h()", ()),
    ("*size, dtype=None", "jnp.zeros(*size, dtype=dtype)", "h(2, 3, dtype=t)", ()),
    ("*size, dtype=None", "jnp.zeros(*size, dtype=dtype)", "h(size=(2, 3))", ()),
    ("x, **kw", "f(x, **kw)", "h(1, a=2, b=3)", ()),
    ("x, **kw", "f(x, **kw)", "h(1)", ()),
    # precedence: substituted expressions under attributes, subscripts, operators
    ("self, other", "(self - other * 2).sum()[0]", "h(a + b, c if d else e)", ()),
    ("self", "self.T", "h(-x)", ()),
    ("self", "f((self))", "h(a + b)", ()),
    # a parameter shadowed by a lambda parameter of the template
    ("x, y=2", "f(lambda y: y + x)", "h(1)", ()),
    # a template with no parameter at all
    ("x", "jnp.float32", "h(1)", ()),
])
def test_corner_cases_render_as_the_rules_say(sig, templates, call, always):
    s = Signature.parse(sig)
    bound = bind(s, cst.parse_expression(call).args)
    templates = templates if isinstance(templates, list) else [templates]
    for i, text in enumerate(templates):
        strict = i < len(templates) - 1
        assert same(render(text, s, bound, frozenset(always), strict),
                    reference_render(text, s, bound, always, strict)), text
    chosen = render_variants(templates, s, bound, frozenset(always))
    assert chosen is not None


def test_attribute_named_like_a_missing_parameter_makes_a_strict_variant_inapplicable():
    s = Signature.parse("input, *, dtype=None")
    variants = ["f(input.dtype)", "g(input)"]
    without = bind(s, cst.parse_expression("h(x)").args)
    with_dtype = bind(s, cst.parse_expression("h(x, dtype=d)").args)
    assert code(render_variants(variants, s, without)[0]) == "g(x)"
    assert code(render_variants(variants, s, with_dtype)[0]) == "f(x.dtype)"


# ---------------------------------------------------------------- what is compiled once

def test_a_template_is_compiled_once_per_signature_and_always_set():
    s = Signature.parse("input, dim=None")
    same_sig = Signature(tuple(s.params))          # equal, made apart (as rewriters make them)
    b = template_builder("jnp.sum(input, axis=dim)", s)
    assert template_builder("jnp.sum(input, axis=dim)", same_sig) is b
    assert template_builder("jnp.sum(input, axis=dim)", s, frozenset({"axis"})) is not b


def test_parts_no_call_can_change_are_rendered_once_and_shared():
    s = Signature.parse("x, m=0.1")
    text = "nn.BatchNorm(use_running_average=not True, momentum=1 - m, axis=(1 - 0.5) * 2)"
    first = render(text, s, bind(s, cst.parse_expression("h(a)").args))
    second = render(text, s, bind(s, cst.parse_expression("h(b, m=0.2)").args))
    assert code(first) == "nn.BatchNorm(use_running_average=False, axis=1.0)"
    assert code(second) == "nn.BatchNorm(use_running_average=False, momentum=0.8, axis=1.0)"
    assert first.func is second.func                            # never changes: the template's node
    assert first.args[0] is second.args[0]                      # folded once, when compiled
    assert first.args[-1].value is second.args[-1].value


def test_a_template_without_parameters_renders_as_parsed():
    s = Signature.parse("x")
    out = render("jnp.float32", s, bind(s, cst.parse_expression("h(1)").args))
    assert out is T._parse_template("jnp.float32")


def test_signatures_pickle_without_their_cached_facts():
    """Tables are cached on disk; a hash of strings differs between processes, so a
    signature's cached hash (and derived lookups) must not travel with it."""
    s = Signature.parse("input, dim=None, *, dtype=None")
    hash(s), s.get("dim"), s.layout(False)
    restored = pickle.loads(pickle.dumps(s))
    assert vars(restored) == {"params": s.params}
    assert restored == s and hash(restored) == hash(s)
    assert restored.get("dtype").kind == T.KEYWORD_ONLY


def test_references_of_a_whole_template_match_a_walk():
    tree = T._parse_template("f(x, axis=dim, keepdims=k).dim + g(lambda t: t)")
    assert references(tree, {"x", "dim", "k", "t", "nope"}) == {"x", "dim", "k", "t"}
    assert references(tree) == {"f", "x", "dim", "k", "g", "t"}
    copy = cst.parse_expression("f(x, axis=dim, keepdims=k).dim + g(lambda t: t)")
    assert references(copy, {"x", "dim", "k", "t"}) == references(tree, {"x", "dim", "k", "t"})


def test_bind_checks_match_the_signature():
    s = Signature.parse("self, a, b=1, *rest, c, **kw")
    bound = bind(s, cst.parse_expression("f(1, 2, 3, c=4, d=5)").args, receiver=cst.Name("x"))
    assert set(bound.values) == {"self", "a", "b", "c"} and len(bound.varargs["rest"]) == 1
    assert [a.keyword.value for a in bound.varkw["kw"]] == ["d"]
    with pytest.raises(T.BindError, match="missing argument 'c'"):
        bind(s, cst.parse_expression("f(1)").args, receiver=cst.Name("x"))
    with pytest.raises(T.TemplateError):
        bind(Signature.parse("a"), cst.parse_expression("f(1)").args, receiver=cst.Name("x"))
