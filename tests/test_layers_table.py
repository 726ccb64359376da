"""Every entry of mappings/layers.toml is checked against real torch.

For each entry (and the extra cases below): the torch layer is built from the example, the
flax constructor is rendered through ``transpiler.render`` (the converter's path) and
evaluated with the prelude helpers it needs, torch weights are copied with
``load_torch_state``, and forward outputs and input gradients are compared (eval mode; also
train mode for BatchNorm, with the updated running statistics). The flax side runs under
``jax.jit``. Initialisers are compared with torch's by distribution.
"""
from __future__ import annotations

import copy
import math
import tomllib
import warnings
from functools import partial
from pathlib import Path
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import libcst as cst
import numpy as np
import pytest
import scipy.stats
import torch

from transpiler import prelude_index
from transpiler.mapping import _entry
from transpiler.render import code_of, render_call
from transpiler.validate.layouts import parse_param_spec
from transpiler.validate.spec import parse_array_spec
from transpiler.validate.weights import load_torch_state

jax.config.update("jax_enable_x64", False)

TABLE = Path(__file__).resolve().parent.parent / "mappings" / "layers.toml"
LAYERS = {key: _entry("layers", key, raw) for key, raw in tomllib.loads(TABLE.read_text()).items()}
RTOL = ATOL = 1e-5

# (key, example, inputs): variants the single example of an entry does not cover.
EXTRA = [
    ("torch.nn.Linear", "nn.Linear(4, 3, bias=False)", ["float32[3, 4]"]),
    ("torch.nn.Conv1d", "nn.Conv1d(3, 4, 3, padding='same', dilation=2, padding_mode='reflect')", ["float32[2, 3, 9]"]),
    ("torch.nn.Conv1d", "nn.Conv1d(3, 4, 4, padding='same', padding_mode='circular', bias=False)", ["float32[2, 3, 9]"]),
    ("torch.nn.Conv2d", "nn.Conv2d(3, 4, 3)", ["float32[2, 3, 7, 6]"]),
    ("torch.nn.Conv2d", "nn.Conv2d(3, 4, 4, padding='same')", ["float32[2, 3, 7, 6]"]),
    ("torch.nn.Conv2d", "nn.Conv2d(3, 4, (2, 3), stride=2, padding='valid')", ["float32[2, 3, 7, 6]"]),
    ("torch.nn.Conv2d", "nn.Conv2d(3, 5, 3, padding=(1, 2), padding_mode='circular')", ["float32[2, 3, 6, 5]"]),
    ("torch.nn.Conv2d", "nn.Conv2d(3, 2, 3, stride=2, padding=2, padding_mode='reflect')", ["float32[1, 3, 7, 8]"]),
    ("torch.nn.Conv2d", "nn.Conv2d(4, 8, 3, padding=1, groups=4, bias=False)", ["float32[2, 4, 5, 5]"]),
    ("torch.nn.Conv3d", "nn.Conv3d(2, 4, (1, 2, 3), stride=(1, 2, 1), padding=(0, 1, 1), groups=2)", ["float32[1, 2, 3, 5, 4]"]),
    ("torch.nn.ConvTranspose2d", "nn.ConvTranspose2d(3, 2, 4, stride=2, padding=1)", ["float32[2, 3, 4, 5]"]),
    ("torch.nn.ConvTranspose2d", "nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1, groups=2, bias=False)", ["float32[1, 4, 3, 4]"]),
    ("torch.nn.ConvTranspose2d", "nn.ConvTranspose2d(2, 2, 3, stride=3, padding=3)", ["float32[1, 2, 5, 5]"]),
    ("torch.nn.ConvTranspose1d", "nn.ConvTranspose1d(2, 3, 3, dilation=2, bias=False)", ["float32[2, 2, 6]"]),
    ("torch.nn.BatchNorm1d", "nn.BatchNorm1d(5)", ["float32[8, 5]"]),
    ("torch.nn.BatchNorm2d", "nn.BatchNorm2d(3, momentum=0.3, affine=False)", ["float32[4, 3, 2, 3]"]),
    ("torch.nn.LayerNorm", "nn.LayerNorm(6)", ["float32[2, 3, 6]"]),
    ("torch.nn.LayerNorm", "nn.LayerNorm([3, 6], elementwise_affine=False)", ["float32[2, 3, 6]"]),
    ("torch.nn.LayerNorm", "nn.LayerNorm(6, eps=1e-3, bias=False)", ["float32[4, 6]"]),
    ("torch.nn.GroupNorm", "nn.GroupNorm(3, 6, affine=False)", ["float32[2, 6, 5]"]),
    ("torch.nn.GroupNorm", "nn.GroupNorm(1, 4, eps=1e-3)", ["float32[2, 4, 3, 2, 2]"]),
    ("torch.nn.InstanceNorm2d", "nn.InstanceNorm2d(3, affine=True)", ["float32[2, 3, 4, 5]"]),
    ("torch.nn.InstanceNorm1d", "nn.InstanceNorm1d(3)", ["float32[2, 3, 6]"]),
    ("torch.nn.Embedding", "nn.Embedding(7, 3)", ["int64[4] range(0, 7)"]),
    ("torch.nn.Embedding", "nn.Embedding(7, 3, padding_idx=-1, sparse=True)", ["int64[2, 4] range(0, 7)"]),
    ("torch.nn.Flatten", "nn.Flatten(0, 2)", ["float32[2, 3, 4, 5]"]),
    ("torch.nn.Flatten", "nn.Flatten(start_dim=2)", ["float32[2, 3, 4, 5]"]),
    ("torch.nn.Unflatten", "nn.Unflatten(-1, (2, 3))", ["float32[2, 4, 6]"]),
    ("torch.nn.Upsample", "nn.Upsample(scale_factor=2)", ["float32[2, 3, 4, 5]"]),
    ("torch.nn.Upsample", "nn.Upsample(scale_factor=1.5, mode='nearest')", ["float32[2, 3, 5, 7]"]),
    ("torch.nn.Upsample", "nn.Upsample(size=(7, 9), mode='bilinear', align_corners=True)", ["float32[2, 3, 4, 5]"]),
    ("torch.nn.Upsample", "nn.Upsample(size=(3, 8), mode='bilinear')", ["float32[2, 3, 4, 5]"]),
    ("torch.nn.Upsample", "nn.Upsample(scale_factor=(2, 3), mode='bilinear', align_corners=False)", ["float32[1, 2, 3, 4]"]),
    ("torch.nn.Upsample", "nn.Upsample(scale_factor=1.7, mode='bilinear', recompute_scale_factor=True)", ["float32[1, 2, 5, 6]"]),
    ("torch.nn.Upsample", "nn.Upsample(scale_factor=1.7, mode='bilinear')", ["float32[1, 2, 5, 6]"]),
    ("torch.nn.Upsample", "nn.Upsample(size=11, mode='nearest-exact')", ["float32[2, 3, 4, 7]"]),
    ("torch.nn.Upsample", "nn.Upsample(scale_factor=3, mode='linear')", ["float32[2, 3, 5]"]),
    ("torch.nn.Upsample", "nn.Upsample(size=(3, 5, 4), mode='trilinear')", ["float32[1, 2, 2, 3, 4]"]),
    ("torch.nn.Upsample", "nn.Upsample(size=(3, 2), mode='area')", ["float32[1, 2, 7, 5]"]),
    ("torch.nn.MaxPool2d", "nn.MaxPool2d(2)", ["float32[2, 3, 7, 6]"]),
    ("torch.nn.MaxPool2d", "nn.MaxPool2d(3, 2, ceil_mode=True)", ["float32[2, 3, 8, 8]"]),
    ("torch.nn.MaxPool2d", "nn.MaxPool2d(3, 2, padding=1, ceil_mode=True)", ["float32[1, 2, 6, 7]"]),
    ("torch.nn.MaxPool1d", "nn.MaxPool1d(2)", ["float32[2, 3, 9]"]),
    ("torch.nn.AvgPool2d", "nn.AvgPool2d(2)", ["float32[2, 3, 7, 6]"]),
    ("torch.nn.AvgPool2d", "nn.AvgPool2d(3, stride=2, padding=1, ceil_mode=True, count_include_pad=False)", ["float32[2, 3, 8, 7]"]),
    ("torch.nn.AvgPool2d", "nn.AvgPool2d(3, stride=2, padding=1, divisor_override=4)", ["float32[1, 2, 6, 6]"]),
    ("torch.nn.AvgPool1d", "nn.AvgPool1d(4, stride=3, padding=2, ceil_mode=True)", ["float32[2, 3, 11]"]),
    ("torch.nn.AdaptiveAvgPool2d", "nn.AdaptiveAvgPool2d((1, 1))", ["float32[2, 3, 5, 4]"]),
    ("torch.nn.AdaptiveAvgPool2d", "nn.AdaptiveAvgPool2d((3, 4))", ["float32[2, 3, 7, 9]"]),
    ("torch.nn.AdaptiveAvgPool2d", "nn.AdaptiveAvgPool2d(2)", ["float32[2, 3, 6, 4]"]),
    ("torch.nn.AdaptiveMaxPool2d", "nn.AdaptiveMaxPool2d(1)", ["float32[2, 3, 5, 4]"]),
    ("torch.nn.AdaptiveMaxPool1d", "nn.AdaptiveMaxPool1d(4)", ["float32[2, 3, 10]"]),
    ("torch.nn.ReflectionPad2d", "nn.ReflectionPad2d(2)", ["float32[2, 3, 4, 5]"]),
    ("torch.nn.ConstantPad2d", "nn.ConstantPad2d((-1, 2, 0, 1), -2.0)", ["float32[2, 3, 4, 5]"]),
    ("torch.nn.ReplicationPad1d", "nn.ReplicationPad1d((1, 2))", ["float32[2, 3, 4]"]),
    ("torch.nn.ZeroPad2d", "nn.ZeroPad2d((1, 0, 2, 3))", ["float32[2, 3, 4, 5]"]),
    ("torch.nn.Softmax", "nn.Softmax()", ["float32[2, 5]"]),
    ("torch.nn.Softmax", "nn.Softmax()", ["float32[2, 3, 5]"]),
    ("torch.nn.LogSoftmax", "nn.LogSoftmax(dim=-1)", ["float32[2, 5]"]),
    ("torch.nn.LeakyReLU", "nn.LeakyReLU()", ["float32[3, 4]"]),
    ("torch.nn.ELU", "nn.ELU()", ["float32[3, 4]"]),
    ("torch.nn.GELU", "nn.GELU(approximate='tanh')", ["float32[3, 4]"]),
    ("torch.nn.GELU", "nn.GELU()", ["float32[3, 4]"]),
    ("torch.nn.Softplus", "nn.Softplus()", ["float32[3, 4]"]),
    ("torch.nn.Softplus", "nn.Softplus(beta=0.5)", ["float32[3, 4]"]),
    ("torch.nn.PReLU", "nn.PReLU()", ["float32[3, 4, 2]"]),
    ("torch.nn.Hardtanh", "nn.Hardtanh()", ["float32[3, 4]"]),
    ("torch.nn.GLU", "nn.GLU()", ["float32[3, 4]"]),
    ("torch.nn.ReLU", "nn.ReLU(inplace=True)", ["float32[3, 4]"]),
]


def _helpers_namespace(emits: set[str]) -> dict[str, Any]:
    ns: dict[str, Any] = {"jax": jax, "jnp": jnp, "nn": nn, "partial": partial, "np": np,
                          "math": math, "Any": Any, "Sequence": Sequence}
    for helper in prelude_index.closure(emits):
        missing = helper.imports - set(ns)
        assert not missing, f"helper {helper.name} needs imports {missing} unknown to converted code"
        exec(compile(helper.source, f"<prelude {helper.name}>", "exec"), ns)
    return ns


def render_layer(key: str, example: str):
    """Render ``example`` (a torch constructor call) with ``key``'s entry; returns (code, factory)."""
    entry = LAYERS[key]
    call = cst.parse_expression(example)
    assert isinstance(call, cst.Call)
    rendered = render_call(entry, call.args, call=call)
    assert rendered.expr is not None, f"{key}: {rendered.code} {rendered.message}"
    assert rendered.approximate == (not entry.exact)
    code = code_of(rendered.expr)
    ns = _helpers_namespace(rendered.emits)
    return code, (lambda: eval(code, ns))


class FlaxWrap(nn.Module):
    make: Callable
    call: str = "plain"

    def setup(self):
        self.layer = self.make()

    def __call__(self, *xs, train: bool = False):
        if self.call == "dropout":
            return self.layer(*xs, deterministic=not train)
        if self.call == "batchnorm":
            return self.layer(*xs, use_running_average=not train)
        if self.call == "train":
            return self.layer(*xs, train=train)
        return self.layer(*xs)


class TorchWrap(torch.nn.Module):
    def __init__(self, layer):
        super().__init__()
        self.layer = layer


def draw_inputs(specs: Sequence[str], seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for text in specs:
        a = parse_array_spec(text)
        shape = a.shape_for({})
        if a.is_float:
            out.append((rng.standard_normal(shape) * 1.5).astype(a.dtype))
        else:
            lo, hi = a.range
            out.append(rng.integers(int(lo), int(hi), size=shape).astype(a.dtype))
    return out


def assert_close(actual, expected, what: str):
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != torch {expected.shape}"
    scale = max(1.0, float(np.max(np.abs(expected)))) if expected.size else 1.0
    err = np.abs(actual - expected)
    bad = err > ATOL * scale + RTOL * np.abs(expected)
    assert not bad.any(), f"{what}: max abs err {err.max():.3g} (scale {scale:.3g})"


def torch_torch_forward(layer, xs, train: bool):
    layer.train(train)
    txs = [torch.tensor(x, requires_grad=np.issubdtype(x.dtype, np.floating)) for x in xs]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = layer(*[t * 1 if t.requires_grad else t for t in txs])  # inplace layers
    return txs, out


def check_case(key: str, example: str, input_specs: Sequence[str], seed: int = 0):
    entry = LAYERS[key]
    code, make = render_layer(key, example)
    torch.manual_seed(seed)
    tlayer = eval(example, {"nn": torch.nn})
    xs = draw_inputs(input_specs, seed)
    model = FlaxWrap(make, entry.call)
    jxs = [jnp.asarray(x) for x in xs]
    # shapes only (the transfer reads nothing else); init itself is tested below
    shapes = jax.eval_shape(partial(model.init, {"params": jax.random.PRNGKey(seed)}), *jxs)
    variables = load_torch_state(TorchWrap(tlayer), shapes)
    float_args = [i for i, x in enumerate(xs) if np.issubdtype(x.dtype, np.floating)]

    modes = [False, True] if entry.call == "batchnorm" else [False]
    for train in modes:
        tlayer.zero_grad()
        txs, tout = torch_torch_forward(tlayer, xs, train)
        g = np.random.default_rng(seed + 1).standard_normal(tuple(tout.shape)).astype(np.float32)
        if float_args or variables.get("params"):
            (tout * torch.tensor(g)).sum().backward()

        def f(params, *fargs, train=train):
            args = list(jxs)
            for i, a in zip(float_args, fargs):
                args[i] = a
            v = {**variables, "params": params}
            if train:
                return model.apply(v, *args, train=True, mutable=["batch_stats"])
            return model.apply(v, *args), {}

        @jax.jit
        def forward_and_grads(params, fargs, g):
            (out, updates), vjp = jax.vjp(f, params, *fargs)
            return out, updates, vjp((g, jax.tree_util.tree_map(jnp.zeros_like, updates)))

        out, updates, (pgrads, *grads) = forward_and_grads(
            variables.get("params", {}), [jxs[i] for i in float_args], jnp.asarray(g))
        where = f"{key} {example} -> {code} (train={train})"
        assert_close(out, tout.detach().numpy(), f"{where}: output")
        for i, gr in zip(float_args, grads):
            assert_close(gr, txs[i].grad.numpy(), f"{where}: grad input[{i}]")
        if variables.get("params"):
            check_param_grads(tlayer, shapes, pgrads, where)
        if train and entry.call == "batchnorm":
            check_running_stats(tlayer, variables, updates, where)
    return code


def check_param_grads(tlayer, shapes, pgrads, where):
    """torch's parameter gradients, sent through the same transfer, equal flax's."""
    grad_layer = copy.deepcopy(tlayer)
    with torch.no_grad():
        for (name, p), (_, q) in zip(tlayer.named_parameters(), grad_layer.named_parameters()):
            grad = p.grad if p.grad is not None else torch.zeros_like(p)
            q.copy_(grad.to_dense() if grad.is_sparse else grad)
    expected = load_torch_state(TorchWrap(grad_layer), shapes)["params"]
    flat_expected = jax.tree_util.tree_leaves_with_path(expected)
    flat_got = dict(jax.tree_util.tree_leaves_with_path(pgrads))
    for path, value in flat_expected:
        assert_close(flat_got[path], value, f"{where}: grad params{jax.tree_util.keystr(path)}")


def check_running_stats(tlayer, variables, updates, where):
    """The updated running mean and variance are torch's (the unbiased batch variance in
    running_var, x n/(n-1))."""
    stats = updates["batch_stats"]["layer"]
    old = variables["batch_stats"]["layer"]
    assert_close(stats["mean"], tlayer.running_mean.numpy(), f"{where}: running_mean")
    assert_close(stats["var"], tlayer.running_var.numpy(), f"{where}: running_var")
    assert not np.allclose(np.asarray(stats["var"]), np.asarray(old["var"])), f"{where}: running_var not updated"


def check_dropout(key: str, example: str, input_specs: Sequence[str]):
    """Eval: identity. Train: flax drops like torch (same kept values, channel-wise masks for
    Dropout1d/2d/3d, AlphaDropout's affine transform), compared in distribution, not bits."""
    code, make = render_layer(key, example)
    tlayer = eval(example, {"nn": torch.nn})
    x = draw_inputs(input_specs, 0)[0]
    model = FlaxWrap(make, "dropout")
    variables = model.init({"params": jax.random.PRNGKey(0)}, jnp.asarray(x))
    load_torch_state(TorchWrap(tlayer), variables)
    _, tout = torch_torch_forward(tlayer, [x], train=False)
    assert_close(jax.jit(model.apply)(variables, x), tout.detach().numpy(), f"{key} eval")
    p = tlayer.p
    y = np.asarray(jax.jit(partial(model.apply, train=True))(variables, x, rngs={"dropout": jax.random.PRNGKey(3)}))
    _, ty = torch_torch_forward(tlayer, [x], train=True)
    ty = ty.detach().numpy()
    for out in (y, ty):
        if key == "torch.nn.AlphaDropout":
            alpha = 1.7580993408473766
            a = 1.0 / math.sqrt((alpha * alpha * p + 1) * (1 - p))
            kept = np.isclose(out, a * x + alpha * a * p, rtol=1e-5, atol=1e-5)
            dropped = np.isclose(out, -alpha * a * (1 - p), rtol=1e-5, atol=1e-5)
        else:
            kept = np.isclose(out, x / (1 - p), rtol=1e-5, atol=1e-6)
            dropped = out == 0
        assert (kept | dropped).all(), f"{key}: train output is not x kept/dropped"
        if key in ("torch.nn.Dropout1d", "torch.nn.Dropout2d", "torch.nn.Dropout3d"):
            flat = dropped.reshape(x.shape[0], x.shape[1], -1)
            assert (flat.all(-1) | ~flat.any(-1)).all(), f"{key}: mask is not channel-wise"
        assert 0.0 < dropped.mean() < 1.0


DROPOUT = {k for k, e in LAYERS.items() if e.call == "dropout"}
CASES = [(k, e.example, [e.inputs[n] for n in e.inputs]) for k, e in LAYERS.items()
         if not e.unsupported and k not in DROPOUT] + EXTRA


@pytest.mark.parametrize("key,example,inputs", CASES, ids=[f"{c[1]}@{c[2][0]}" for c in CASES])
def test_layer_matches_torch(key, example, inputs):
    check_case(key, example, inputs)


@pytest.mark.parametrize("key", sorted(DROPOUT))
def test_dropout_layers(key):
    e = LAYERS[key]
    check_dropout(key, e.example, [e.inputs["input"]])


def test_every_entry_has_an_example_and_table_fields():
    for key, e in LAYERS.items():
        assert key.startswith("torch.nn."), key
        if e.unsupported:
            continue
        assert e.example and e.inputs, f"{key}: needs example and input"
        assert e.call in ("plain", "dropout", "batchnorm", "train"), key
        torch_cls = getattr(torch.nn, key.rsplit(".", 1)[1])
        module = eval(e.example, {"nn": torch.nn})
        assert type(module) is torch_cls, key
        own = {n for n, _ in module.named_parameters()} | {n for n, _ in module.named_buffers()} - {"num_batches_tracked"}
        assert own <= set(e.params), f"{key}: parameters without layout: {own - set(e.params)}"
        for spec in e.params.values():
            parse_param_spec(spec)


def test_emitted_names_are_imports_or_helpers():
    helpers = prelude_index.helpers()
    imports = {"jax", "jnp", "nn", "partial", "np", "math"}
    for key, e in LAYERS.items():
        unknown = {n for n in e.emits if n not in helpers and n not in imports}
        assert not unknown, f"{key} emits unknown names {unknown}"


def test_unsupported_arguments_are_reported():
    cases = [("torch.nn.Embedding", "nn.Embedding(10, 3, max_norm=1.0)", "max_norm"),
             ("torch.nn.MaxPool2d", "nn.MaxPool2d(2, return_indices=True)", "return_indices"),
             ("torch.nn.BatchNorm2d", "nn.BatchNorm2d(3, track_running_stats=False)", "track_running_stats"),
             ("torch.nn.InstanceNorm2d", "nn.InstanceNorm2d(3, track_running_stats=True)", "track_running_stats"),
             ("torch.nn.Embedding", "nn.Embedding(10, 3, scale_grad_by_freq=True)", "scale_grad_by_freq")]
    for key, example, arg in cases:
        call = cst.parse_expression(example)
        rendered = render_call(LAYERS[key], call.args, call=call)
        assert rendered.expr is None and rendered.code == "JP103" and arg in rendered.message, example
    call = cst.parse_expression("nn.RReLU()")
    assert render_call(LAYERS["torch.nn.RReLU"], call.args, call=call).code == "JP102"


def test_rendered_forms():
    """The output a user reads: torch defaults spelled out where flax's differ."""
    expect = {
        "nn.Linear(4, 3)": "nn.Dense(features=3, kernel_init=torch_kaiming_uniform(4), bias_init=torch_bias_uniform(4))",
        "nn.Conv2d(3, 16, 3, padding=1)": "ConvNCHW(features=16, kernel_size=3, padding=1)",
        "nn.BatchNorm2d(8)": "TorchBatchNorm(axis=1, momentum=0.9, epsilon=1e-05)",
        "nn.GELU()": "partial(nn.gelu, approximate=False)",
        "nn.ReLU(inplace=True)": "nn.relu",
        "nn.LeakyReLU(0.2)": "partial(nn.leaky_relu, negative_slope=0.2)",
        "nn.Dropout(0.1)": "nn.Dropout(rate=0.1)",
        "nn.MaxPool2d(2)": "partial(max_pool_nchw, kernel_size=2, spatial_dims=2)",
        "nn.Embedding(10, 4)": "nn.Embed(num_embeddings=10, features=4, embedding_init=torch_normal_init())",
        "nn.Flatten()": "partial(flatten_dims, start_dim=1)",
        "nn.Embedding(10, 4, padding_idx=0)": "EmbedWithPadding(num_embeddings=10, features=4, padding_idx=0, embedding_init=torch_normal_init(padding_idx=0))",
        "nn.Softmax()": "partial(apply_on_implicit_dim, nn.softmax)",
        "nn.Softmax(-1)": "partial(nn.softmax, axis=-1)",
        "nn.Softplus()": "nn.softplus",
        "nn.Softplus(beta=2)": "partial(softplus_beta, beta=2)",
        "nn.ELU()": "nn.elu",
    }
    for example, code in expect.items():
        key = "torch.nn." + example[3:example.index("(")]
        assert render_layer(key, example)[0] == code


def test_conv_transpose_output_size_argument():
    """torch's ``deconv(x, output_size=...)`` picks the output padding; so does the helper."""
    _, make = render_layer("torch.nn.ConvTranspose2d", "nn.ConvTranspose2d(3, 2, 3, stride=2, padding=1)")
    torch.manual_seed(0)
    tlayer = torch.nn.ConvTranspose2d(3, 2, 3, stride=2, padding=1)
    x = draw_inputs(["float32[1, 3, 4, 5]"], 0)[0]
    expected = tlayer(torch.tensor(x), output_size=[1, 2, 8, 10]).detach().numpy()
    model = FlaxWrap(make)
    model_call = lambda v, x: model.apply(v, x, method=lambda m, x: m.layer(x, output_size=(8, 10)))
    variables = load_torch_state(TorchWrap(tlayer), model.init(jax.random.PRNGKey(0), jnp.asarray(x)))
    assert_close(jax.jit(model_call)(variables, jnp.asarray(x)), expected, "output_size")


# ---------------------------------------------------------------- initialisation


INIT_KEYS = [k for k, e in LAYERS.items() if e.params and not e.unsupported
             and list(eval(e.example, {"nn": torch.nn}).state_dict())]


@pytest.mark.parametrize("key", INIT_KEYS)
def test_default_init_matches_torch_distribution(key):
    """Fresh flax variables follow torch's default initialisation: constants exactly, random
    leaves by a two-sample Kolmogorov-Smirnov test over many initialisations."""
    e = LAYERS[key]
    _, make = render_layer(key, e.example)
    xs = [jnp.asarray(x) for x in draw_inputs([e.inputs[n] for n in e.inputs], 0)]
    model = FlaxWrap(make, e.call)
    init = jax.jit(jax.vmap(lambda k: model.init({"params": k}, *xs)))
    flax_vars = init(jax.random.split(jax.random.PRNGKey(0), 100))
    samples: dict[str, list[np.ndarray]] = {}
    for i in range(100):
        torch.manual_seed(i)
        module = eval(e.example, {"nn": torch.nn})
        for name, t in list(module.named_parameters()) + list(module.named_buffers()):
            if name != "num_batches_tracked":
                samples.setdefault(name, []).append(t.detach().numpy().ravel())
    assert samples
    for name, values in samples.items():
        spec = parse_param_spec(e.params[name])
        torch_values = np.concatenate(values)
        flax_values = np.asarray(flax_vars[spec.collection]["layer"][spec.name]).ravel()
        assert flax_values.size == torch_values.size, name
        if np.all(torch_values == torch_values[0]):
            assert np.all(flax_values == torch_values[0]), f"{key}.{name}: expected constant {torch_values[0]}"
            continue
        stat = scipy.stats.ks_2samp(torch_values[:4000], flax_values[:4000])
        assert stat.pvalue > 1e-4, f"{key}.{name}: distribution differs from torch (KS p={stat.pvalue:.2g})"
        assert np.abs(flax_values).max() <= np.abs(torch_values).max() * 1.02 + 1e-6, f"{key}.{name}: out of range"


def test_initialisers_ranges():
    ns = _helpers_namespace({"torch_kaiming_uniform", "torch_bias_uniform", "torch_normal_init"})
    key = jax.random.PRNGKey(0)
    k = np.asarray(ns["torch_kaiming_uniform"]()(key, (3, 3, 4, 500)))
    bound = 1 / math.sqrt(36)
    assert np.abs(k).max() <= bound and np.abs(k).max() > 0.99 * bound
    assert abs(k.std() - bound / math.sqrt(3)) < 0.01 * bound
    d = np.asarray(ns["torch_kaiming_uniform"](7)(key, (9, 1000)))
    assert np.abs(d).max() <= 1 / math.sqrt(7) and np.abs(d).max() > 0.99 / math.sqrt(7)
    b = np.asarray(ns["torch_bias_uniform"](16)(key, (5000,)))
    assert np.abs(b).max() <= 0.25 and np.abs(b).max() > 0.249
    emb = np.asarray(ns["torch_normal_init"](padding_idx=-1)(key, (400, 50)))
    assert np.all(emb[-1] == 0) and abs(emb[:-1].std() - 1) < 0.02 and abs(emb[:-1].mean()) < 0.02
