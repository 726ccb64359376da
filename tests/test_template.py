"""The template language of the mapping tables (transpiler/template.py)."""
import libcst as cst
import pytest

from transpiler.template import BindError, Signature, bind, render_variants


def render(sig, templates, call, always=(), method=False):
    s = Signature.parse(sig)
    c = cst.parse_expression(call)
    receiver = c.func.value if method else None
    bound = bind(s, c.args, receiver)
    out = render_variants(templates if isinstance(templates, list) else [templates], s, bound, frozenset(always))
    return None if out is None else cst.Module([]).code_for_node(out[0])


SUM = "jnp.sum(input, axis=dim, keepdims=keepdim, dtype=dtype)"


@pytest.mark.parametrize("call, expected", [
    ("torch.sum(x)", "jnp.sum(x)"),
    ("torch.sum(x, 1)", "jnp.sum(x, axis=1)"),
    ("torch.sum(x, dim=(1, 2), keepdim=True)", "jnp.sum(x, axis=(1, 2), keepdims=True)"),
    ("torch.sum(a + b, 0)", "jnp.sum(a + b, axis=0)"),
])
def test_keywords_of_unsupplied_parameters_are_left_out(call, expected):
    assert render("input, dim=None, keepdim=False, *, dtype=None", SUM, call) == expected


def test_always_spells_out_torch_defaults_and_folds_arithmetic():
    sig = "num_features, eps=1e-05, momentum=0.1, affine=True"
    tmpl = "nn.BatchNorm(axis=1, momentum=1 - momentum, epsilon=eps)"
    assert render(sig, tmpl, "nn.BatchNorm2d(8)", always=["momentum", "epsilon"]) == \
        "nn.BatchNorm(axis=1, momentum=0.9, epsilon=1e-05)"
    assert render(sig, tmpl, "nn.BatchNorm2d(8, momentum=m)", always=["momentum", "epsilon"]) == \
        "nn.BatchNorm(axis=1, momentum=1 - m, epsilon=1e-05)"


def test_varargs_splice_both_call_forms():
    assert render("self, *shape", "self.reshape(*shape)", "x.view(2, -1)", method=True) == "x.reshape(2, -1)"
    assert render("self, *shape", "self.reshape(*shape)", "x.view(s)", method=True) == "x.reshape(s)"


def test_variadic_sizes_may_be_given_as_one_keyword_sequence():
    """torch.zeros(size=(2, 3)) and x.permute(dims=(1, 0)) are legal torch."""
    assert render("*size, dtype=None", "jnp.zeros(*size, dtype=dtype)", "torch.zeros(size=(2, 3))") == \
        "jnp.zeros((2, 3))"
    assert render("self, *dims", "jnp.transpose(self, *dims)", "x.permute(dims=(1, 0))", method=True) == \
        "jnp.transpose(x, (1, 0))"
    with pytest.raises(BindError):
        bind(Signature.parse("*size, dtype=None"), cst.parse_expression("f(2, size=(2,))").args)


def test_variants_need_every_parameter_they_use():
    variants = ["self.shape[dim]", "self.shape"]
    assert render("self, dim=None", variants, "x.size()", method=True) == "x.shape"
    assert render("self, dim=None", variants, "x.size(1)", method=True) == "x.shape[1]"


def test_substituted_expressions_keep_precedence():
    assert render("self, other", "self - other * 2", "(a + b).sub(c + d)", method=True) == "(a + b) - (c + d) * 2"


def test_keyword_names_and_attribute_names_are_not_parameters():
    assert render("dim", "f(dim=dim).dim", "g(3)") == "f(dim=3).dim"


def test_comparison_of_literals_is_folded():
    assert render('approximate="none"', 'partial(nn.gelu, approximate=approximate == "tanh")', "nn.GELU()",
                  always=["approximate"]) == "partial(nn.gelu, approximate=False)"


@pytest.mark.parametrize("call, message", [
    ("f(1, 2, 3)", "too many positional"),
    ("f(1, nope=2)", "unknown keyword"),
    ("f()", "missing argument"),
    ("f(1, a=2)", "given twice"),
])
def test_calls_that_do_not_fit_the_signature_are_rejected(call, message):
    with pytest.raises(BindError, match=message):
        bind(Signature.parse("a, b=1"), cst.parse_expression(call).args)


def test_output_keywords_named_like_parameters_are_not_references():
    sig = "params, lr=0.01, eps=1e-10"
    variants = ["opt(learning_rate=lr, eps=eps)", "opt(learning_rate=lr)"]
    assert render(sig, variants, "Adagrad(p, lr=0.1)") == "opt(learning_rate=0.1)"


def test_literal_subscripts_are_folded():
    assert render("params, betas=(0.9, 0.999)", "adam(b1=betas[0], b2=betas[1])",
                  "Adam(p, betas=(0.8, 0.95))", always=["b1", "b2"]) == "adam(b1=0.8, b2=0.95)"
    assert render("params, betas=(0.9, 0.999)", "adam(b1=betas[0])", "Adam(p, betas=b)") == "adam(b1=b[0])"
