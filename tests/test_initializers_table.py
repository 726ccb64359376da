"""Every entry of mappings/initializers.toml: the flax initializer it renders draws from the
same distribution as the torch.nn.init function (moments and bounds on a large sample)."""
import libcst as cst
import numpy as np
import pytest

from transpiler.mapping import load_tables
from transpiler.prelude_index import closure
from transpiler.render import code_of, render_call

torch = pytest.importorskip("torch")
jax = pytest.importorskip("jax")

SHAPE_TORCH = (64, 48, 3, 3)            # conv weight (out, in, kh, kw)
SHAPE_FLAX = (3, 3, 48, 64)             # the flax kernel of the same layer

ENTRIES = sorted(load_tables().initializers.items())


def flax_initializer(entry, example: str):
    call = cst.parse_expression(example)
    if entry.key.startswith("Tensor."):
        target = call.func.value
        args = [cst.Arg(target), *call.args]
    else:
        args = list(call.args)
    rendered = render_call(entry, args)
    assert rendered.expr is not None, rendered.message
    import flax.linen as nn
    import jax.numpy as jnp
    from functools import partial
    namespace = {"nn": nn, "jax": jax, "jnp": jnp, "partial": partial, "math": __import__("math")}
    for helper in closure(rendered.emits):
        exec(helper.source, namespace)
    return eval(code_of(rendered.expr), namespace)


def torch_sample(entry, example: str):
    w = torch.empty(SHAPE_TORCH)
    namespace = {"torch": torch, "w": w, "math": __import__("math")}
    torch.manual_seed(0)
    exec(example, namespace)
    return w.numpy()


@pytest.mark.parametrize("key, entry", ENTRIES, ids=[k for k, _ in ENTRIES])
def test_initializer_matches_torch_distribution(key, entry):
    init = flax_initializer(entry, entry.example)
    ours = np.asarray(init(jax.random.PRNGKey(0), SHAPE_FLAX))
    theirs = torch_sample(entry, entry.example)
    assert ours.shape == SHAPE_FLAX
    if key.endswith("orthogonal_"):
        # the approximation the table declares: orthogonal in flax's (in, out) flattening
        flat = ours.reshape(-1, SHAPE_FLAX[-1])
        gram = flat.T @ flat
        scale = gram[0, 0]
        np.testing.assert_allclose(gram, scale * np.eye(SHAPE_FLAX[-1]), atol=1e-3 * scale)
        return
    tol = 0.02 * max(1e-3, float(np.abs(theirs).std()) + float(np.abs(theirs.mean())))
    assert abs(ours.mean() - theirs.mean()) < tol + 1e-3 * abs(theirs.mean()), (ours.mean(), theirs.mean())
    assert abs(ours.std() - theirs.std()) < tol + 0.02 * theirs.std(), (ours.std(), theirs.std())
    assert ours.min() >= theirs.min() - 0.25 * max(theirs.std(), 1e-6) - 1e-9
    assert ours.max() <= theirs.max() + 0.25 * max(theirs.std(), 1e-6) + 1e-9
