"""torch.nn.LSTM/GRU/RNN and their cells vs. the converted flax modules.

Each case renders the flax constructor from the mapping entry (the path a user's file takes),
execs it with the prelude helpers it needs, fills the weights with the entry's converter and
compares outputs (sequence and final states) and gradients w.r.t. inputs and parameters,
eagerly and under jax.jit, in eval mode.
"""
import copy
import importlib

import jax
import jax.numpy as jnp
import libcst as cst
import numpy as np
import pytest
import torch

from transpiler import prelude_index
from transpiler.mapping import load_tables
from transpiler.render import code_of, render_call

TOL = 1e-5
BASE_IMPORTS = ("import jax", "import jax.numpy as jnp", "import flax.linen as nn",
                "from functools import partial")


# ---------------------------------------------------------------- harness

def _dotted(node):
    if isinstance(node, cst.Name):
        return node.value
    if isinstance(node, cst.Attribute):
        inner = _dotted(node.value)
        return None if inner is None else f"{inner}.{node.attr.value}"
    return None


def render_layer(src):
    """Render a torch layer constructor (``nn.LSTM(4, 6)``, nested layers too) through the
    mapping tables; returns (flax module, rendered code, entries used)."""
    tables = load_tables()
    emits, entries = set(), []

    class Convert(cst.CSTTransformer):
        def leave_Call(self, original, updated):
            name = _dotted(updated.func)
            if name and name.startswith("nn."):
                entry = tables.layers["torch." + name]
                rendered = render_call(entry, updated.args)
                assert rendered.expr is not None, rendered.message
                # documented approximations (JP201) are allowed: the callers compare numerics
                assert rendered.code in (None, "JP201"), rendered.message
                emits.update(rendered.emits)
                entries.append(entry)
                return rendered.expr
            return updated

    code = code_of(cst.parse_expression(src).visit(Convert()))
    namespace = {}
    for statement in BASE_IMPORTS:
        exec(statement, namespace)
    for helper in prelude_index.closure(emits):
        for name in helper.imports:
            exec(tables.imports[name], namespace)
        exec(helper.source, namespace)
    return eval(code, namespace), code, entries


def converter_of(entry):
    module, name = entry.params_converter.split(":")
    return getattr(importlib.import_module(f"transpiler.validate.layouts_{module}"), name)


def _flatten(tree):
    """Leaves of nested tuples/lists in order; None kept as a leaf marker."""
    if isinstance(tree, (tuple, list)):
        return [leaf for item in tree for leaf in _flatten(item)]
    return [tree]


def _to_torch(tree):
    if isinstance(tree, (tuple, list)):
        return type(tree)(_to_torch(t) for t in tree)
    return None if tree is None else torch.tensor(tree)


def _to_jax(tree):
    if isinstance(tree, (tuple, list)):
        return type(tree)(_to_jax(t) for t in tree)
    return None if tree is None else jnp.asarray(tree)


def _close(actual, expected, what, tol):
    actual = np.asarray(actual)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != torch {expected.shape}"
    np.testing.assert_allclose(actual, expected, rtol=tol, atol=tol, err_msg=what)


def compare(src, args, kwargs=None, seed=0, tol=TOL, eager=False):
    """Torch layer ``src`` vs. its conversion on positional ``args`` (numpy arrays, tuples of
    them or None; float arrays are differentiated) and constant ``kwargs`` (masks, flags).
    Always jitted (forward and gradients); ``eager`` also runs the forward op by op."""
    kwargs = kwargs or {}
    torch.manual_seed(seed)
    tmod = eval(src, {"nn": torch.nn}).eval()
    fmod, code, entries = render_layer(src)
    t_args = _to_torch(list(args))
    t_kwargs = {k: _to_torch(v) if isinstance(v, np.ndarray) else v for k, v in kwargs.items()}
    j_args = _to_jax(list(args))
    j_kwargs = {k: jnp.asarray(v) if isinstance(v, np.ndarray) else v for k, v in kwargs.items()}

    # only shapes are needed: every leaf is replaced by the torch layer's weights
    variables = jax.eval_shape(lambda key, a: fmod.init(key, *a, **j_kwargs), jax.random.PRNGKey(0), j_args)
    convert = converter_of(entries[-1])
    params = jax.tree_util.tree_map(jnp.asarray, convert(tmod, variables))

    # torch: forward, then gradients of a fixed random projection of every output leaf
    for leaf in _flatten(t_args):
        if leaf is not None and leaf.is_floating_point():
            leaf.requires_grad_(True)
    t_leaves = _flatten(tmod(*t_args, **t_kwargs))
    rng = np.random.default_rng(seed + 1)
    cotangents = [None if e is None else rng.standard_normal(e.shape).astype(np.float32) for e in t_leaves]
    sum((e * torch.tensor(c)).sum() for e, c in zip(t_leaves, cotangents) if e is not None).backward()

    # flax: one jitted program gives the outputs and the same gradients
    def j_loss(p, a):
        out = fmod.apply(p, *a, **j_kwargs)
        leaves = _flatten(out)
        return sum((leaf * c).sum() for leaf, c in zip(leaves, cotangents) if c is not None), out

    (_, jitted), (g_params, g_args) = jax.jit(jax.value_and_grad(j_loss, argnums=(0, 1), has_aux=True))(params, j_args)
    runs = [(jitted, "jit")]
    if eager:
        runs.append((fmod.apply(params, *j_args, **j_kwargs), "eager"))
    for out, how in runs:
        leaves = _flatten(out)
        assert len(leaves) == len(t_leaves), f"{how}: output structure differs from torch"
        for i, (a, e) in enumerate(zip(leaves, t_leaves)):
            if e is None:
                assert a is None, f"{how}: output {i} should be None"
                continue
            _close(a, e.detach().numpy(), f"{code} [{how}] output {i}", tol)

    grad_module = copy.deepcopy(tmod)
    with torch.no_grad():
        for (name, p), (_, g) in zip(grad_module.named_parameters(), tmod.named_parameters()):
            p.copy_(g.grad if g.grad is not None else torch.zeros_like(p))
    expected = convert(grad_module, variables)
    flat_expected = dict(jax.tree_util.tree_leaves_with_path(expected))
    for path, g in jax.tree_util.tree_leaves_with_path(g_params):
        _close(g, flat_expected[path], f"{code} grad {jax.tree_util.keystr(path)}", tol)
    for i, (a, e) in enumerate(zip(_flatten(g_args), _flatten(t_args))):
        if e is not None and e.is_floating_point():
            _close(a, e.grad.numpy(), f"{code} grad of input {i}", tol)
    return code


def arr(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def spec_array(spec, seed=0):
    dtype, dims = spec.split("[")
    shape = [int(d) for d in dims.rstrip("]").split(",")]
    assert dtype == "float32"
    return arr(*shape, seed=seed)


RECURRENT_KEYS = ["torch.nn.LSTM", "torch.nn.GRU", "torch.nn.RNN",
                  "torch.nn.LSTMCell", "torch.nn.GRUCell", "torch.nn.RNNCell"]


# ---------------------------------------------------------------- table examples

@pytest.mark.parametrize("key", RECURRENT_KEYS)
def test_table_example(key):
    entry = load_tables().layers[key]
    assert entry.params_converter and entry.params_converter.startswith("recurrent:")
    args = [spec_array(spec, seed=i) for i, spec in enumerate(entry.inputs.values())]
    code = compare(entry.example, args, eager=key == 'torch.nn.LSTM')  # op by op once; jit always
    assert code.startswith("Torch")


@pytest.mark.parametrize("key", ["torch.nn.LSTM", "torch.nn.GRU", "torch.nn.RNN"])
def test_stack_entries_pass_train(key):
    assert load_tables().layers[key].call == "train"


# ---------------------------------------------------------------- stacks

L, N, F, H = 5, 3, 4, 6


def _state(layers, dirs, out=H, seed=10, unbatched=False):
    return arr(layers * dirs, out, seed=seed) if unbatched else arr(layers * dirs, N, out, seed=seed)


def _lstm_state(layers, dirs, out=H, unbatched=False):
    return (_state(layers, dirs, out, 10, unbatched), _state(layers, dirs, H, 11, unbatched))


@pytest.mark.parametrize("src,x_shape,state", [
    ("nn.LSTM(4, 6)", (L, N, F), None),
    # dropout between layers is inactive in eval mode
    ("nn.LSTM(4, 6, 2, batch_first=True, bidirectional=True, dropout=0.5)", (N, L, F), _lstm_state(2, 2)),
    ("nn.LSTM(4, 6, num_layers=2, bias=False, bidirectional=True, proj_size=3)", (L, N, F), _lstm_state(2, 2, 3)),
    ("nn.LSTM(4, 6, 2, batch_first=True, bidirectional=True)", (L, F), _lstm_state(2, 2, unbatched=True)),
    ("nn.LSTM(4, 6, batch_first=True)", (L, F), None),
    ("nn.GRU(4, 6)", (L, N, F), _state(1, 1)),
    ("nn.GRU(4, 6, 2, bias=False, bidirectional=True)", (L, N, F), None),
    ("nn.GRU(4, 6, num_layers=2, bidirectional=True)", (L, F), _state(2, 2, unbatched=True)),
    ("nn.RNN(4, 6)", (L, N, F), None),
    ("nn.RNN(4, 6, 2, 'tanh', False, True)", (N, L, F), _state(2, 1)),  # positional bias, batch_first
    ("nn.RNN(4, 6, nonlinearity='relu', bidirectional=True)", (L, F), None),
])
def test_stack(src, x_shape, state):
    x = arr(*x_shape)
    compare(src, [x] if state is None else [x, state])


# ---------------------------------------------------------------- cells

@pytest.mark.parametrize("src,x_shape,state", [
    ("nn.LSTMCell(4, 6)", (N, F), (arr(N, H, seed=1), arr(N, H, seed=2))),
    ("nn.LSTMCell(4, 6)", (F,), None),
    ("nn.LSTMCell(4, 6, bias=False)", (F,), (arr(H, seed=1), arr(H, seed=2))),
    ("nn.GRUCell(4, 6)", (N, F), arr(N, H, seed=1)),
    ("nn.GRUCell(4, 6, bias=False)", (F,), None),
    ("nn.RNNCell(4, 6, nonlinearity='relu')", (N, F), None),
    ("nn.RNNCell(4, 6, False)", (F,), arr(H, seed=1)),
])
def test_cell(src, x_shape, state):
    x = arr(*x_shape)
    compare(src, [x] if state is None else [x, state])


# ---------------------------------------------------------------- modes, init, converters

def test_dropout_between_layers_only_in_train():
    x = jnp.asarray(arr(L, N, F))
    rngs = {"dropout": jax.random.PRNGKey(1)}
    for src, layers in (("nn.RNN(4, 6, num_layers=2, dropout=0.5)", 2), ("nn.RNN(4, 6, dropout=0.5)", 1)):
        fmod, _, _ = render_layer(src)
        variables = fmod.init(jax.random.PRNGKey(0), x)
        run = jax.jit(lambda v, train: fmod.apply(v, x, train=train, rngs=rngs)[0], static_argnums=1)
        eval_out, train_out = run(variables, False), run(variables, True)
        if layers == 2:
            assert not np.allclose(train_out, eval_out)
            np.testing.assert_array_equal(train_out, run(variables, True))   # same key, same mask
        else:  # a single layer: torch applies no dropout at all, not even in training
            np.testing.assert_array_equal(train_out, eval_out)


@pytest.mark.parametrize("src", ["nn.LSTM(4, 6, 2, bidirectional=True)", "nn.RNN(4, 6)", "nn.GRUCell(4, 6)"])
def test_init_like_torch(src):
    """Every recurrent weight and bias ~ U(±1/sqrt(hidden_size)), as in torch."""
    fmod, _, _ = render_layer(src)
    x = jnp.zeros((L, N, F) if "Cell" not in src else (N, F))
    leaves = jax.tree_util.tree_leaves(fmod.init(jax.random.PRNGKey(0), x))
    values = np.concatenate([np.ravel(v) for v in leaves])
    bound = 1 / np.sqrt(H)
    assert np.all(np.abs(values) <= bound)
    assert values.max() > 0.9 * bound and values.min() < -0.9 * bound
    assert abs(values.mean()) < 0.1 * bound
    assert all(np.ravel(leaf).std() > 0.3 * bound for leaf in leaves)  # biases too, unlike flax


def test_flax_tree_names_follow_torch():
    fmod, _, _ = render_layer("nn.LSTM(4, 6, 2, bidirectional=True, proj_size=3)")
    params = fmod.init(jax.random.PRNGKey(0), jnp.zeros((L, N, F)))["params"]
    # torch attributes user code reads keep their names; flatten_parameters() is a no-op
    assert (fmod.hidden_size, fmod.num_layers, fmod.bidirectional, fmod.proj_size) == (6, 2, True, 3)
    assert fmod.flatten_parameters() is None
    assert sorted(params) == ["l0", "l0_reverse", "l1", "l1_reverse"]
    assert sorted(params["l1"]) == ["hh", "hr", "ih"]
    assert params["l1"]["ih"]["kernel"].shape == (6, 24)   # (2 directions * proj 3, 4 gates * 6)
    assert params["l0"]["hh"]["kernel"].shape == (3, 24)


def _variables(src, x):
    fmod, _, entries = render_layer(src)
    return fmod.init(jax.random.PRNGKey(0), jnp.asarray(x)), converter_of(entries[-1])


@pytest.mark.parametrize("torch_src,flax_src,message", [
    ("nn.LSTM(4, 7)", "nn.LSTM(4, 6)", "shape"),
    ("nn.LSTM(4, 6, bias=False)", "nn.LSTM(4, 6)", "does not have"),
    ("nn.LSTM(4, 6)", "nn.LSTM(4, 6, bias=False)", "no place"),
    ("nn.LSTM(4, 6, 2)", "nn.LSTM(4, 6)", "weight_ih_l1"),
    ("nn.GRU(4, 6)", "nn.LSTM(4, 6)", "expected a torch.nn.LSTM"),
    ("nn.RNN(4, 6)", "nn.GRU(4, 6)", "expected a torch.nn.GRU"),
])
def test_converter_rejects_mismatch(torch_src, flax_src, message):
    variables, convert = _variables(flax_src, np.zeros((L, N, F), np.float32))
    with pytest.raises(ValueError, match=message):
        convert(eval(torch_src, {"nn": torch.nn}), variables)


def test_converter_rejects_unknown_leaf():
    variables, convert = _variables("nn.GRUCell(4, 6)", np.zeros((N, F), np.float32))
    variables = {"params": {**variables["params"], "extra": {"kernel": jnp.zeros((2, 2))}}}
    with pytest.raises(ValueError, match="params/extra/kernel has no torch counterpart"):
        convert(torch.nn.GRUCell(4, 6), variables)


def test_converter_accepts_shape_structs():
    fmod, _, entries = render_layer("nn.GRU(4, 6, 2)")
    shapes = jax.eval_shape(fmod.init, jax.random.PRNGKey(0), jnp.zeros((L, N, F)))
    out = converter_of(entries[-1])(torch.nn.GRU(4, 6, 2), shapes)
    assert out["params"]["l1"]["hh"]["kernel"].dtype == np.float32


def test_bad_shapes_raise_like_torch():
    lstm, _, _ = render_layer("nn.LSTM(4, 6)")
    with pytest.raises(ValueError, match="input"):
        lstm.init(jax.random.PRNGKey(0), jnp.zeros((L, N, 5)))
    flat_state = (jnp.zeros((1, H)), jnp.zeros((1, H)))   # unbatched state for batched input
    with pytest.raises(ValueError, match="hidden state"):
        lstm.init(jax.random.PRNGKey(0), jnp.zeros((L, N, F)), flat_state)
    with pytest.raises(RuntimeError):
        torch.nn.LSTM(4, 6)(torch.zeros(L, N, F), (torch.zeros(1, H), torch.zeros(1, H)))
    cell, _, _ = render_layer("nn.GRUCell(4, 6)")
    with pytest.raises(ValueError, match="expected input"):
        cell.init(jax.random.PRNGKey(0), jnp.zeros((L, N, F)))
    with pytest.raises(ValueError, match="hidden state"):
        cell.init(jax.random.PRNGKey(0), jnp.zeros((N, F)), jnp.zeros((H,)))
