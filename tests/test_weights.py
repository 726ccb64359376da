"""Weight transfer (transpiler.validate.weights): a torch module tree with Sequential,
ModuleList, ModuleDict, direct Parameters, buffers and a converter-backed layer (LSTM),
against a hand-written flax counterpart that follows the conversion's naming conventions."""
from __future__ import annotations

import math
from functools import partial
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn as tnn

from transpiler import prelude_index
from transpiler.mapping import load_tables
from transpiler.validate.layouts import LayoutError, apply_layout, parse_param_spec
from transpiler.validate.weights import (WeightTransferError, load_torch_state,
                                         state_dict_to_variables)

jax.config.update("jax_enable_x64", False)


def _prelude(*names: str) -> dict[str, Any]:
    ns: dict[str, Any] = {"jax": jax, "jnp": jnp, "nn": nn, "partial": partial, "np": np,
                          "math": math, "Any": Any, "Sequence": Sequence}
    imports = load_tables().imports
    for helper in prelude_index.closure(set(names)):
        for name in sorted(helper.imports - set(ns)):
            exec(imports.get(name, f"import {name}"), ns)
        exec(compile(helper.source, f"<prelude {helper.name}>", "exec"), ns)
    return ns


P = _prelude("ConvNCHW", "LayerNormLastAxes", "Sequential", "TorchLSTM", "torch_normal_init")


# --- torch ------------------------------------------------------------------------------------

class TBlock(tnn.Module):
    def __init__(self):
        super().__init__()
        self.conv = tnn.Conv2d(3, 4, 3, padding=1)
        self.bn = tnn.BatchNorm2d(4)
        self.scale = tnn.Parameter(torch.randn(4))
        self.register_buffer("count", torch.tensor(3.0))                   # mutable state
        self.register_buffer("const", torch.ones(4), persistent=False)     # a constant

    def forward(self, x):
        return self.bn(self.conv(x)) * self.scale[None, :, None, None] + self.count + self.const[None, :, None, None]


class TNet(tnn.Module):
    def __init__(self, hidden=5):
        super().__init__()
        self.features = tnn.Sequential(TBlock(), tnn.ReLU(), tnn.Conv2d(4, 4, 1))
        self.blocks = tnn.ModuleList([tnn.Linear(4, hidden), tnn.Linear(hidden, hidden)])
        self.heads = tnn.ModuleDict({"cls": tnn.Linear(hidden, 2), "reg": tnn.Linear(hidden, 1)})
        self.pos = tnn.Parameter(torch.randn(1, 4))
        self.emb = tnn.Embedding(6, 4)
        self.ln = tnn.LayerNorm(hidden)
        self.rnn = tnn.LSTM(hidden, 3)

    def forward(self, x, idx):
        h = self.features(x).mean((2, 3)) + self.pos + self.emb(idx)
        for block in self.blocks:
            h = torch.tanh(block(h))
        h = self.ln(h)
        seq, _ = self.rnn(h[:, None, :].expand(-1, 2, -1))
        return self.heads["cls"](h), self.heads["reg"](h), seq


# --- flax counterpart, named as the converter names things -------------------------------------

class FBlock(nn.Module):
    def setup(self):
        self.conv = P["ConvNCHW"](features=4, kernel_size=3, padding=1)
        self.bn = nn.BatchNorm(axis=1, momentum=0.9, epsilon=1e-5, use_fast_variance=False)
        self.scale = self.param("scale", nn.initializers.normal(), (4,))
        self.count = self.variable("buffers", "count", lambda: jnp.zeros(()))
        self.const = jnp.ones(4)

    def __call__(self, x, train: bool = False):
        y = self.bn(self.conv(x), use_running_average=not train)
        return y * self.scale[None, :, None, None] + self.count.value + self.const[None, :, None, None]


class FNet(nn.Module):
    hidden: int = 5

    def setup(self):
        self.features = P["Sequential"]([FBlock(), nn.relu, P["ConvNCHW"](features=4, kernel_size=1)])
        self.blocks = [nn.Dense(self.hidden), nn.Dense(self.hidden)]
        self.heads = {"cls": nn.Dense(2), "reg": nn.Dense(1)}
        self.pos = self.param("pos", nn.initializers.normal(), (1, 4))
        self.emb = nn.Embed(6, 4, embedding_init=P["torch_normal_init"]())
        self.ln = P["LayerNormLastAxes"](normalized_shape=self.hidden)
        self.rnn = P["TorchLSTM"](input_size=self.hidden, hidden_size=3)

    def __call__(self, x, idx, train: bool = False):
        h = self.features(x, train=train).mean((2, 3)) + self.pos + self.emb(idx)
        for block in self.blocks:
            h = jnp.tanh(block(h))
        h = self.ln(h)
        seq, _ = self.rnn(jnp.broadcast_to(h[:, None, :], (h.shape[0], 2, h.shape[1])), train=train)
        return self.heads["cls"](h), self.heads["reg"](h), seq


def _inputs():
    rng = np.random.default_rng(0)
    return rng.standard_normal((2, 3, 5, 4)).astype(np.float32), rng.integers(0, 6, size=(2,))


def _init(model):
    x, idx = _inputs()
    return jax.eval_shape(partial(model.init, jax.random.PRNGKey(0)), jnp.asarray(x), jnp.asarray(idx, jnp.int32))


def test_tree_transfer_matches_torch_forward():
    torch.manual_seed(0)
    tnet = TNet().eval()
    with torch.no_grad():  # non-trivial running statistics
        tnet.features[0].bn.running_mean.uniform_(-1, 1)
        tnet.features[0].bn.running_var.uniform_(0.5, 2)
    variables = load_torch_state(tnet, _init(FNet()))

    assert set(variables) == {"params", "batch_stats", "buffers"}
    p = variables["params"]
    assert set(p["features"]) == {"layers_0", "layers_2"}          # ReLU keeps its index
    assert {"blocks_0", "blocks_1", "heads_cls", "heads_reg", "pos", "emb", "ln", "rnn"} <= set(p)
    np.testing.assert_array_equal(p["features"]["layers_0"]["conv"]["kernel"],
                                  tnet.features[0].conv.weight.detach().permute(2, 3, 1, 0).numpy())
    np.testing.assert_array_equal(p["blocks_1"]["kernel"], tnet.blocks[1].weight.detach().numpy().T)
    np.testing.assert_array_equal(p["pos"], tnet.pos.detach().numpy())
    np.testing.assert_array_equal(variables["batch_stats"]["features"]["layers_0"]["bn"]["var"],
                                  tnet.features[0].bn.running_var.numpy())
    assert float(variables["buffers"]["features"]["layers_0"]["count"]) == 3.0
    assert "const" not in variables["buffers"]["features"]["layers_0"]

    x, idx = _inputs()
    with torch.no_grad():
        expected = tnet(torch.tensor(x), torch.tensor(idx))
    got = jax.jit(FNet().apply)(variables, jnp.asarray(x), jnp.asarray(idx, jnp.int32))
    for a, b in zip(got, expected):
        np.testing.assert_allclose(np.asarray(a), b.numpy(), rtol=1e-5, atol=1e-5)


def test_transfer_does_not_alias_torch_memory():
    tnet = TNet()
    variables = load_torch_state(tnet, _init(FNet()))
    before = np.asarray(variables["batch_stats"]["features"]["layers_0"]["bn"]["mean"]).copy()
    with torch.no_grad():
        tnet.features[0].bn.running_mean.add_(1.0)
    np.testing.assert_array_equal(variables["batch_stats"]["features"]["layers_0"]["bn"]["mean"], before)


def test_state_dict_checkpoint_with_ddp_prefix():
    torch.manual_seed(1)
    source = TNet()
    checkpoint = {f"module.{k}": v.clone() for k, v in source.state_dict().items()}
    variables = state_dict_to_variables(checkpoint, TNet(), _init(FNet()))
    np.testing.assert_array_equal(variables["params"]["heads_reg"]["kernel"],
                                  source.heads["reg"].weight.detach().numpy().T)
    bad = dict(checkpoint)
    bad.pop("module.pos")
    with pytest.raises(WeightTransferError, match="pos"):
        state_dict_to_variables(bad, TNet(), _init(FNet()))


def test_shape_mismatch_is_reported_with_paths():
    with pytest.raises(WeightTransferError) as info:
        load_torch_state(TNet(hidden=5), _init(FNet(hidden=6)))
    message = str(info.value)
    assert "params/blocks_0/kernel" in message and "(4, 5)" in message and "(4, 6)" in message
    assert "blocks.0.weight" in message


class FNetMissing(FNet):
    def setup(self):
        super().setup()
        self.extra = self.param("extra", nn.initializers.zeros_init(), (2,))


class TNetExtra(TNet):
    def __init__(self):
        super().__init__()
        self.unused = tnn.Parameter(torch.zeros(3))


def test_unfilled_flax_leaf_and_unconsumed_torch_tensor():
    with pytest.raises(WeightTransferError, match=r"flax leaf params/extra \(2,\) has no torch counterpart"):
        load_torch_state(TNet(), _init(FNetMissing()))
    with pytest.raises(WeightTransferError, match=r"torch parameter unused .*no leaf params/unused"):
        load_torch_state(TNetExtra(), _init(FNet()))


def test_converter_errors_become_weight_transfer_errors():
    class T(tnn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = tnn.LSTM(4, 3)

    class F(nn.Module):
        @nn.compact
        def __call__(self, x):
            return P["TorchLSTM"](input_size=4, hidden_size=2, name="rnn")(x)

    shapes = jax.eval_shape(partial(F().init, jax.random.PRNGKey(0)), jnp.zeros((2, 1, 4)))
    with pytest.raises(WeightTransferError, match="torch.nn.LSTM rnn"):
        load_torch_state(T(), shapes)


def test_sequential_root_and_nested_containers():
    torch_model = tnn.Sequential(tnn.Linear(2, 3), tnn.Sequential(tnn.Tanh(), tnn.Linear(3, 1)))

    class F(nn.Module):
        def setup(self):
            self.layers = [nn.Dense(3), nn.Sequential([jnp.tanh, nn.Dense(1)])]

    shapes = jax.eval_shape(partial(F().init, jax.random.PRNGKey(0), method=lambda m: [m.layers[1](m.layers[0](jnp.zeros((1, 2))))]))
    variables = load_torch_state(torch_model, shapes)
    np.testing.assert_array_equal(variables["params"]["layers_1"]["layers_1"]["bias"],
                                  torch_model[1][1].bias.detach().numpy())


def test_layout_specs():
    assert parse_param_spec("kernel:T") == parse_param_spec("params/kernel:T")
    spec = parse_param_spec("batch_stats/var")
    assert (spec.collection, spec.name, spec.layout) == ("batch_stats", "var", None)
    a = np.arange(24).reshape(2, 3, 4)
    assert apply_layout("perm(2, 0, 1)", a, (4, 2, 3)).shape == (4, 2, 3)
    assert apply_layout("T", a, (4, 3, 2)).shape == (4, 3, 2)
    assert apply_layout("reshape", np.ones(1), ()).shape == ()
    with pytest.raises(LayoutError):
        parse_param_spec("kernel:transpose")
    with pytest.raises(LayoutError):
        apply_layout("perm(1, 0)", a, ())


def test_tied_weights_need_one_flax_leaf():
    class T(tnn.Module):
        def __init__(self):
            super().__init__()
            self.emb = tnn.Embedding(5, 3)
            self.head = tnn.Linear(3, 5, bias=False)
            self.head.weight = self.emb.weight

    class F(nn.Module):
        @nn.compact
        def __call__(self, idx):
            emb = nn.Embed(5, 3, name="emb")
            return emb.attend(emb(idx))

    shapes = jax.eval_shape(partial(F().init, jax.random.PRNGKey(0)), jnp.zeros((2,), jnp.int32))
    variables = load_torch_state(T(), shapes)
    assert set(variables["params"]) == {"emb"}

    class Untied(T):
        def __init__(self):
            super().__init__()
            self.head.weight = tnn.Parameter(torch.zeros(5, 3))

    with pytest.raises(WeightTransferError, match="head.weight"):
        load_torch_state(Untied(), shapes)


def test_attribute_renamed_for_a_field_clash():
    """The converter names an attribute ``layers_`` when ``layers`` is also a constructor field."""
    class T(tnn.Module):
        def __init__(self, layers=2):
            super().__init__()
            self.layers = tnn.Sequential(*[tnn.Linear(2, 2) for _ in range(layers)])

    class F(nn.Module):
        layers: int = 2

        def setup(self):
            self.layers_ = nn.Sequential([nn.Dense(2) for _ in range(self.layers)])

        def __call__(self, x):
            return self.layers_(x)

    shapes = jax.eval_shape(partial(F().init, jax.random.PRNGKey(0)), jnp.zeros((1, 2)))
    variables = load_torch_state(T(), shapes)
    assert set(variables["params"]["layers_"]) == {"layers_0", "layers_1"}
