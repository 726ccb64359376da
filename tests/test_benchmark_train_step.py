"""Smoke tests for benchmarks/train_step.py (no timing is asserted: the machine is shared)."""
from __future__ import annotations

import jax
import numpy as np
import pytest

from benchmarks import train_step as B

KEYS = {"target", "goal", "measured", "met", "note"}


def test_quick_run_rows():
    rows = B.measure(quick=True)
    assert [r["target"] for r in rows] == ["train step MLP: converted / flax reference",
                                          "train step MLP: converted / torch eager"], rows
    for r in rows:
        assert set(r) == KEYS
        assert isinstance(r["measured"], float) and r["measured"] > 0, r
    assert rows[0]["goal"] == "<= 1.10" and rows[0]["met"] == (rows[0]["measured"] <= 1.10)
    assert rows[1]["met"] is None and "torch eager" in rows[1]["note"]
    assert "params 1732 vs 1732" in rows[0]["note"]


def _param_shapes(model, x):
    variables = jax.eval_shape(lambda: model.init({"params": jax.random.PRNGKey(0),
                                                   "dropout": jax.random.PRNGKey(1)}, x))
    return sorted(int(np.prod(a.shape)) for a in jax.tree_util.tree_leaves(variables["params"]))


@pytest.mark.parametrize("name", ["MLP", "LeNet", "ResNet", "TinyGPT", "NanoGPT", "UNet", "LSTM"])
def test_reference_matches_the_corpus_architecture(name, tmp_path):
    """The hand-written reference has the converted model's parameter tensors (same sizes),
    except the LSTM, whose flax cell has one bias per gate where torch has two."""
    case = next(c for c in B._cases() if c.name == name)
    x, _ = case.make_batch(np.random.RandomState(0))
    x = x[:2]
    converted = getattr(B.convert_corpus(case.corpus, tmp_path), case.cls)(
        **{k: tuple(v) if isinstance(v, list) else v for k, v in case.init.items()})
    ref_x = np.moveaxis(x, 1, -1) if case.nchw else x
    conv, ref = _param_shapes(converted, x), _param_shapes(case.ref(), ref_x)
    if name == "LSTM":
        hidden, layers = case.init["hidden_size"], case.init["num_layers"]
        assert sum(conv) - sum(ref) == layers * 4 * hidden
    else:
        assert conv == ref


@pytest.mark.parametrize("name", ["LeNet", "ResNet", "UNet"])
def test_nhwc_conversion_matches_the_reference(name, tmp_path):
    """The --layout nhwc conversion of an image model, fed channels-last images as the
    reference is, has the reference's parameter tensors and output shape."""
    case = next(c for c in B._cases() if c.name == name)
    x, _ = case.make_batch(np.random.RandomState(0))
    x = np.moveaxis(x[:2], 1, -1)
    cls = getattr(B.convert_corpus(case.corpus, tmp_path, "nhwc"), case.cls)
    if B.channels_last(cls) is None:
        pytest.skip(f"the converter kept {name} NCHW (no jaxport_layout)")
    model = cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in case.init.items()})
    assert _param_shapes(model, x) == _param_shapes(case.ref(), x)
    out = jax.eval_shape(lambda: model.init_with_output({"params": jax.random.PRNGKey(0),
                                                         "dropout": jax.random.PRNGKey(1)}, x)[0])
    ref = jax.eval_shape(lambda: case.ref().init_with_output({"params": jax.random.PRNGKey(0),
                                                              "dropout": jax.random.PRNGKey(1)}, x)[0])
    assert B._first(out).shape == B._first(ref).shape


def test_quick_image_rows():
    """An image model's rows: the nhwc conversion's (measured, with the goal, or skipped when
    the converter kept NCHW: never a number then), the default conversion's, torch eager."""
    rows = B.measure(quick=True, only=["LeNet"])
    assert [r["target"] for r in rows] == ["train step LeNet: converted --layout nhwc / flax reference",
                                          "train step LeNet: converted / flax reference",
                                          "train step LeNet: converted / torch eager"], rows
    nhwc, nchw, eager = rows
    assert all(set(r) == KEYS for r in rows)
    assert isinstance(nchw["measured"], float) and isinstance(eager["measured"], float)
    if nhwc["measured"] is None:
        assert nhwc["met"] is None and nhwc["note"].startswith("skipped: the converter kept NCHW")
        assert nchw["goal"] == "<= 1.10" and nchw["met"] == (nchw["measured"] <= 1.10)
    else:
        assert nhwc["goal"] == "<= 1.10" and nhwc["met"] == (nhwc["measured"] <= 1.10)
        assert "params 14410 vs 14410" in nhwc["note"]
        assert nchw["goal"] == "report" and nchw["met"] is None
        assert "the --layout nhwc conversion" in eager["note"]


def test_loss_layouts_agree():
    """The torch-layout and channels-last losses give the same value on the same logits."""
    import jax.numpy as jnp
    logits = np.random.RandomState(0).standard_normal((2, 3, 4, 5)).astype(np.float32)
    y = np.random.RandomState(1).randint(0, 3, size=(2, 4, 5))
    a = B._jax_loss("ce_pixel", jnp.asarray(logits), jnp.asarray(y), channels_last=False)
    b = B._jax_loss("ce_pixel", jnp.asarray(np.moveaxis(logits, 1, -1)), jnp.asarray(y), channels_last=True)
    np.testing.assert_allclose(a, b, rtol=1e-6)


def _prelude(*names):
    from transpiler import prelude_index
    ns: dict = {}
    exec("import math\nimport jax\nimport jax.numpy as jnp\nimport numpy as np\nimport flax.linen as nn\n", ns)
    for helper in prelude_index.closure(set(names)):
        exec(compile(helper.source, f"<prelude {helper.name}>", "exec"), ns)
    return ns


@pytest.mark.parametrize("broadcast_dims", [(), (-2, -1), (0,)])
def test_flat_dropout_draws_flax_dropout_masks(broadcast_dims):
    """FlatDropout (the faster draw for channels-first activations) keeps nn.Dropout's masks."""
    import flax.linen as nn
    ns = _prelude("FlatDropout")
    x = jax.random.normal(jax.random.PRNGKey(0), (3, 4, 5, 5))
    rngs = {"dropout": jax.random.PRNGKey(7)}
    want = nn.Dropout(0.3, broadcast_dims=broadcast_dims).apply({}, x, deterministic=False, rngs=rngs)
    got = ns["FlatDropout"](0.3, broadcast_dims=broadcast_dims).apply({}, x, deterministic=False, rngs=rngs)
    np.testing.assert_array_equal(got, want)
    assert float((got == 0).mean()) > 0.1
    np.testing.assert_array_equal(ns["FlatDropout"](0.3).apply({}, x, deterministic=True), x)


def test_torch_dropout_masks_unchanged_by_the_flat_draw():
    import jax.numpy as jnp
    ns = _prelude("torch_dropout", "torch_dropout_channels")
    x = jax.random.normal(jax.random.PRNGKey(0), (3, 4, 5, 5))
    key = jax.random.PRNGKey(1)
    want = jnp.where(jax.random.bernoulli(key, 0.6, x.shape), x / 0.6, 0.0)
    np.testing.assert_array_equal(ns["torch_dropout"](x, 0.4, True, key), want)
    want = jnp.where(jax.random.bernoulli(key, 0.6, (3, 4, 1, 1)), x / 0.6, 0.0)
    np.testing.assert_array_equal(ns["torch_dropout_channels"](x, 0.4, True, key), want)
