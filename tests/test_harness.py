"""The equivalence harness against hand-written flax counterparts (right and deliberately
wrong), with a small local weight transfer so the harness is tested on its own."""
from __future__ import annotations

from pathlib import Path

import flax.linen as fnn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn as tnn

from transpiler.validate.harness import (ComparisonResult, compare_arrays, compare_files,
                                         compare_module, load_module_from_path, summarize)
from transpiler.validate.spec import parse_module_spec

CORPUS = Path(__file__).resolve().parent.parent / "corpus" / "models"


# --- a tiny transfer for the modules of this file ---------------------------------------------

def hand_transfer(torch_module, variables):
    """torch state_dict -> flax variables for Linear/Conv2d/LayerNorm/BatchNorm/Parameter."""
    out = jax.tree_util.tree_map(lambda x: x, variables)
    for name, t in torch_module.state_dict().items():
        *path, leaf = name.split(".")
        a = t.detach().numpy()
        if leaf == "num_batches_tracked":
            continue
        if leaf in ("running_mean", "running_var"):
            node = out["batch_stats"]
            for p in path:
                node = node[p]
            node["mean" if leaf == "running_mean" else "var"] = jnp.asarray(a)
            continue
        node = out["params"]
        for p in path:
            node = node[p]
        if leaf == "weight" and "kernel" in node:
            a = a.T if a.ndim == 2 else a.transpose(2, 3, 1, 0)
            node["kernel"] = jnp.asarray(a)
        elif leaf == "weight" and "scale" in node:
            node["scale"] = jnp.asarray(a)
        else:
            assert leaf in node, (name, list(node))
            assert node[leaf].shape == a.shape, name
            node[leaf] = jnp.asarray(a)
    return out


# --- corpus model 1: MLP (corpus/models/mlp.py) -------------------------------------------------

class FlaxMLP(fnn.Module):
    in_features: int = 16
    hidden: int = 32
    out_features: int = 4

    def setup(self):
        self.fc1 = fnn.Dense(self.hidden)
        self.fc2 = fnn.Dense(self.hidden)
        self.fc3 = fnn.Dense(self.out_features)

    def __call__(self, x, train: bool = False):
        x = jax.nn.relu(self.fc1(x))
        x = jnp.tanh(self.fc2(x))
        return self.fc3(x)


class FlaxMLPWrongActivation(FlaxMLP):
    def __call__(self, x, train: bool = False):
        x = jax.nn.relu(self.fc1(x))
        x = jax.nn.sigmoid(self.fc2(x))
        return self.fc3(x)


# --- corpus model 2: MNIST Net (corpus/models/mnist_cnn.py) -------------------------------------

class ConvNCHW(fnn.Conv):
    def __call__(self, x):
        return jnp.transpose(super().__call__(jnp.transpose(x, (0, 2, 3, 1))), (0, 3, 1, 2))


class FlaxNet(fnn.Module):
    num_classes: int = 10

    def setup(self):
        self.conv1 = ConvNCHW(8, (3, 3), padding=((0, 0), (0, 0)))
        self.conv2 = ConvNCHW(16, (3, 3), padding=((0, 0), (0, 0)))
        self.dropout1 = fnn.Dropout(0.25)
        self.dropout2 = fnn.Dropout(0.5)
        self.fc1 = fnn.Dense(32)
        self.fc2 = fnn.Dense(self.num_classes)

    def __call__(self, x, train: bool = False):
        x = jax.nn.relu(self.conv1(x))
        x = jax.nn.relu(self.conv2(x))
        x = jnp.transpose(fnn.max_pool(jnp.transpose(x, (0, 2, 3, 1)), (2, 2), (2, 2)), (0, 3, 1, 2))
        x = self.dropout1(x, deterministic=not train)
        x = x.reshape(x.shape[0], -1)
        x = jax.nn.relu(self.fc1(x))
        x = self.dropout2(x, deterministic=not train)
        return jax.nn.log_softmax(self.fc2(x), axis=1)


class FlaxNetWrongFlatten(FlaxNet):
    """Flattens in NHWC order: a classic layout bug."""

    def __call__(self, x, train: bool = False):
        x = jax.nn.relu(self.conv1(x))
        x = jax.nn.relu(self.conv2(x))
        x = fnn.max_pool(jnp.transpose(x, (0, 2, 3, 1)), (2, 2), (2, 2))
        x = x.reshape(x.shape[0], -1)
        x = jax.nn.relu(self.fc1(x))
        return jax.nn.log_softmax(self.fc2(x), axis=1)


@pytest.fixture(scope="module")
def corpus_torch():
    return {"mlp": load_module_from_path(CORPUS / "mlp.py", "mlp"),
            "mnist": load_module_from_path(CORPUS / "mnist_cnn.py", "mnist_cnn")}


def _spec(path, table):
    from transpiler.validate.spec import parse_spec_file
    return parse_spec_file(CORPUS / path)[table]


def test_mlp_hand_written_counterpart_passes(corpus_torch):
    r = compare_module(corpus_torch["mlp"].MLP, FlaxMLP, _spec("mlp.toml", "MLP"), seed=0,
                       transfer=hand_transfer, examples=2)
    assert r.status == "pass", str(r)
    names = [c.name for c in r.checks]
    assert "forward:out" in names and "grad:input#0" in names
    assert {"grad:params/fc1/kernel", "grad:params/fc3/bias"} <= set(names)
    assert r.examples == 2 and r.max_abs_err < 1e-5


def test_mnist_hand_written_counterpart_passes(corpus_torch):
    r = compare_module(corpus_torch["mnist"].Net, FlaxNet, _spec("mnist_cnn.toml", "Net"),
                       seed=1, transfer=hand_transfer)
    assert r.status == "pass", str(r)
    assert any(c.name == "grad:params/conv1/kernel" for c in r.checks)


def test_wrong_activation_fails(corpus_torch):
    r = compare_module(corpus_torch["mlp"].MLP, FlaxMLPWrongActivation, _spec("mlp.toml", "MLP"),
                       transfer=hand_transfer)
    assert r.status == "fail"
    assert any(c.name == "forward:out" and c.status == "fail" for c in r.checks)
    assert r.max_abs_err > 1e-3 and "forward:out" in r.message


def test_wrong_flatten_order_fails(corpus_torch):
    r = compare_module(corpus_torch["mnist"].Net, FlaxNetWrongFlatten, _spec("mnist_cnn.toml", "Net"),
                       transfer=hand_transfer)
    assert r.status == "fail", str(r)


# --- deliberate numerics bugs: gelu flavour, LayerNorm eps ---------------------------------------

class TorchGelu(tnn.Module):
    def __init__(self, d=8):
        super().__init__()
        self.fc = tnn.Linear(d, d)
        self.act = tnn.GELU()

    def forward(self, x):
        return self.act(self.fc(x))


def _flax_gelu(approximate):
    class FlaxGelu(fnn.Module):
        d: int = 8

        def setup(self):
            self.fc = fnn.Dense(self.d)

        def __call__(self, x, train: bool = False):
            return jax.nn.gelu(self.fc(x), approximate=approximate)
    return FlaxGelu


GELU_SPEC = {"init": {"d": 8}, "inputs": ["float32[4, 8]"]}


def test_erf_gelu_passes_and_tanh_gelu_fails():
    good = compare_module(TorchGelu, _flax_gelu(False), GELU_SPEC, transfer=hand_transfer)
    assert good.status == "pass", str(good)
    bad = compare_module(TorchGelu, _flax_gelu(True), GELU_SPEC, transfer=hand_transfer)
    assert bad.status == "fail"
    assert bad.failures and bad.failures[0].name == "forward:out"
    assert "elements outside" in bad.failures[0].message


class TorchLN(tnn.Module):
    def __init__(self, d=6):
        super().__init__()
        self.norm = tnn.LayerNorm(d)

    def forward(self, x):
        return self.norm(x)


def _flax_ln(eps):
    class FlaxLN(fnn.Module):
        d: int = 6

        def setup(self):
            self.norm = fnn.LayerNorm(epsilon=eps)

        def __call__(self, x, train: bool = False):
            return self.norm(x)
    return FlaxLN


def test_layernorm_eps_mismatch_fails():
    spec = {"init": {"d": 6}, "inputs": ["float32[B, 6] range(-0.01, 0.01)"], "dims": {"B": [2, 3]}}
    assert compare_module(TorchLN, _flax_ln(1e-5), spec, transfer=hand_transfer).status == "pass"
    r = compare_module(TorchLN, _flax_ln(1e-6), spec, transfer=hand_transfer)
    assert r.status == "fail"
    assert r.max_rel_err > 1e-3


# --- gradients ------------------------------------------------------------------------------------

class TorchEmbed(tnn.Module):
    def __init__(self):
        super().__init__()
        self.emb = tnn.Embedding(11, 4)

    def forward(self, idx, scale):
        return self.emb(idx) * scale


class FlaxEmbed(fnn.Module):
    def setup(self):
        self.emb = fnn.Embed(11, 4)

    def __call__(self, idx, scale, train: bool = False):
        return self.emb(idx) * scale


def embed_transfer(torch_module, variables):
    return {"params": {"emb": {"embedding": jnp.asarray(torch_module.emb.weight.detach().numpy())}}}


def test_integer_inputs_get_no_gradient_and_tuple_kwargs():
    spec = {"inputs": ["int64[B, 3] range(0, 11)", "float32[B, 3, 1]"], "dims": {"B": [2, 2]}}
    r = compare_module(TorchEmbed, FlaxEmbed, spec, transfer=embed_transfer)
    assert r.status == "pass", str(r)
    names = {c.name for c in r.checks}
    assert "grad:input#1" in names and "grad:input#0" not in names
    assert "grad:params/emb/embedding" in names


class FlaxMLPStopGrad(FlaxMLP):
    """Same forward values, but no gradient flows into fc1: only the gradient check sees it."""

    def __call__(self, x, train: bool = False):
        x = jax.lax.stop_gradient(jax.nn.relu(self.fc1(x)))
        x = jnp.tanh(self.fc2(x))
        return self.fc3(x)


def test_gradient_only_bug_is_caught(corpus_torch):
    r = compare_module(corpus_torch["mlp"].MLP, FlaxMLPStopGrad, _spec("mlp.toml", "MLP"),
                       transfer=hand_transfer)
    assert r.status == "fail"
    failed = {c.name for c in r.failures}
    assert "grad:params/fc1/kernel" in failed and "grad:input#0" in failed
    assert not any(n.startswith("forward") for n in failed)
    r2 = compare_module(corpus_torch["mlp"].MLP, FlaxMLPStopGrad, _spec("mlp.toml", "MLP"),
                        transfer=hand_transfer, check_grads=False)
    assert r2.status == "pass"


class TorchTwoBias(tnn.Module):
    """Two bias parameters that a transfer merges into one (like LSTM's bias_ih + bias_hh)."""

    def __init__(self):
        super().__init__()
        self.weight = tnn.Parameter(torch.randn(3, 5))
        self.b_in = tnn.Parameter(torch.randn(3))
        self.b_out = tnn.Parameter(torch.randn(3))

    def forward(self, x):
        return torch.tanh(x @ self.weight.t() + self.b_in + self.b_out)


def _flax_one_bias(scale):
    class FlaxOneBias(fnn.Module):
        @fnn.compact
        def __call__(self, x, train: bool = False):
            return jnp.tanh(fnn.Dense(3, name="dense")(x) * scale)
    return FlaxOneBias


def merge_bias_transfer(torch_module, variables):
    return {"params": {"dense": {
        "kernel": jnp.asarray(torch_module.weight.detach().numpy().T),
        "bias": jnp.asarray((torch_module.b_in + torch_module.b_out).detach().numpy())}}}


def test_merged_parameters_use_directional_gradients():
    spec = {"inputs": ["float32[4, 5]"]}
    r = compare_module(TorchTwoBias, _flax_one_bias(1.0), spec, transfer=merge_bias_transfer)
    assert r.status == "pass", str(r)
    assert any("direction" in c.name for c in r.checks)
    assert "directional" in r.message
    # forcing a per-leaf comparison shows why it is wrong for a merging transfer: 2x bias grads
    forced = compare_module(TorchTwoBias, _flax_one_bias(1.0), {**spec, "grad_params": "leaves"},
                            transfer=merge_bias_transfer)
    assert forced.status == "fail"
    assert {c.name for c in forced.failures} == {"grad:params/dense/bias"}


def test_directional_gradients_catch_a_bug():
    class Torch(tnn.Module):
        def __init__(self):
            super().__init__()
            self.weight = tnn.Parameter(torch.randn(3, 5))
            self.b_in = tnn.Parameter(torch.randn(3))
            self.b_out = tnn.Parameter(torch.randn(3))

        def forward(self, x):
            return (x @ self.weight.t() + self.b_in + self.b_out) ** 2

    class Flax(fnn.Module):
        @fnn.compact
        def __call__(self, x, train: bool = False):
            y = fnn.Dense(3, name="dense")(x)
            return y ** 2

    class FlaxBad(fnn.Module):
        @fnn.compact
        def __call__(self, x, train: bool = False):
            y = fnn.Dense(3, name="dense")(x)
            return jax.lax.stop_gradient(y) * y  # same value, half the gradient

    spec = {"inputs": ["float32[4, 5]"]}
    assert compare_module(Torch, Flax, spec, transfer=merge_bias_transfer).status == "pass"
    bad = compare_module(Torch, FlaxBad, spec, transfer=merge_bias_transfer)
    assert bad.status == "fail"
    assert any("direction" in c.name for c in bad.failures)


# --- BatchNorm: eval with perturbed stats, train-mode forward --------------------------------------

class TorchBN(tnn.Module):
    def __init__(self, c=3):
        super().__init__()
        self.fc = tnn.Linear(c, c)
        self.bn = tnn.BatchNorm1d(c)

    def forward(self, x):
        return self.bn(self.fc(x))


def _flax_bn(swap_stats=False):
    class FlaxBN(fnn.Module):
        c: int = 3

        def setup(self):
            self.fc = fnn.Dense(self.c)
            self.bn = fnn.BatchNorm(momentum=0.9, epsilon=1e-5)

        def __call__(self, x, train: bool = False):
            y = self.fc(x)
            out = self.bn(y, use_running_average=not train)
            if swap_stats and not train:
                s = self.bn.variables["batch_stats"]
                return (y - s["var"]) / jnp.sqrt(s["mean"] + 1e-5) * self.bn.variables["params"]["scale"] \
                    + self.bn.variables["params"]["bias"]
            return out
    return FlaxBN


def test_batchnorm_eval_and_train_forward():
    spec = {"init": {"c": 3}, "inputs": ["float32[B, 3]"], "dims": {"B": [4, 6]}, "train_forward": True}
    r = compare_module(TorchBN, _flax_bn(), spec, transfer=hand_transfer)
    assert r.status == "pass", str(r)
    assert any(c.name.startswith("train_forward") for c in r.checks)


def test_perturbed_running_stats_expose_swapped_mean_and_var():
    spec = {"init": {"c": 3}, "inputs": ["float32[B, 3]"], "dims": {"B": [4, 6]}}
    r = compare_module(TorchBN, _flax_bn(swap_stats=True), spec, transfer=hand_transfer)
    assert r.status == "fail"
    r2 = compare_module(TorchBN, _flax_bn(), {**spec, "perturb": False}, transfer=hand_transfer)
    assert r2.status == "pass"


def test_compiled_ahead_and_the_train_pass_leaves_the_torch_module_as_it_was():
    """The hypothesis engine's speed-ups do not change what is checked: the programs of the
    other dims are compiled ahead in a background thread (each signature once), and the
    training-mode pass, run in place, restores the torch module's buffers."""
    from transpiler.validate.harness import _Run
    from transpiler.validate.spec import draw_inputs
    from transpiler.validate.strategies import dim_combos
    spec = parse_module_spec("BN", {"init": {"c": 3}, "inputs": ["float32[B, 3]"],
                                    "dims": {"B": [2, 9]}, "train_forward": True})
    combos = dim_combos(spec)
    assert [c["B"] for c in combos] == [2, 8, 9]
    run = _Run(TorchBN, _flax_bn(), spec, 0, "BN", None, hand_transfer, None, None, True)
    run.precompile_dims = combos
    rng = np.random.default_rng(0)
    state = None
    for dims in combos + combos[::-1]:
        args, kwargs = draw_inputs(spec, rng, dims)
        checks = run.run_example(dims, args, kwargs, rng)
        assert checks and all(c.status == "pass" for c in checks), [str(c) for c in checks]
        assert any(c.name.startswith("train_stats") for c in checks)
        if state is None:
            state = {k: v.clone() for k, v in run.torch_module.state_dict().items()}
    for k, v in run.torch_module.state_dict().items():
        assert torch.equal(v, state[k]), k          # running stats and num_batches_tracked
    assert not run.torch_module.training
    run.close()
    assert sorted(sig[0] for sig in run._claims) == ["grad"] * 3 + ["train"] * 3
    assert all(event.is_set() for event in run._claims.values())


def test_numpy_transfer_is_the_default_transfer():
    """The comparisons' numpy path gives exactly what weights.load_torch_state gives."""
    from transpiler.validate.harness import _numpy_default_transfer, _tree_paths
    from transpiler.validate.weights import load_torch_state
    tmod = load_module_from_path(CORPUS / "resnet.py", "resnet")
    fmod = load_module_from_path(CORPUS.parent / "expected" / "models" / "resnet.py", "resnet_jax")
    torch.manual_seed(0)
    tm = tmod.BasicBlock(4, 8, stride=2)
    for m in tm.modules():
        if isinstance(m, tnn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
    fm = fmod.BasicBlock(4, 8, stride=2)
    shapes = jax.eval_shape(lambda: fm.init(jax.random.PRNGKey(0), jnp.zeros((1, 4, 8, 8))))
    fast = _numpy_default_transfer(tm, shapes)
    slow = {k: np.asarray(v) for k, v in _tree_paths(load_torch_state(tm, shapes)).items()}
    assert set(fast) == set(slow) and any(k.startswith("batch_stats/") for k in fast)
    for k in slow:
        assert fast[k].dtype == slow[k].dtype and np.array_equal(fast[k], slow[k]), k


# --- statuses ---------------------------------------------------------------------------------------

class FlaxBroken(FlaxMLP):
    def __call__(self, x, train: bool = False):
        return self.fc3(x)  # wrong input size for fc3's transferred kernel


def test_errors_are_reported_not_raised(corpus_torch):
    r = compare_module(corpus_torch["mlp"].MLP, FlaxBroken, _spec("mlp.toml", "MLP"),
                       transfer=hand_transfer)
    assert r.status == "error"
    assert r.message.split(":")[0] in ("transferring weights", "flax forward (jit)")


def test_output_structure_mismatch_fails():
    class T(tnn.Module):
        def forward(self, x):
            return x * 2, x + 1

    class F(fnn.Module):
        def __call__(self, x, train: bool = False):
            return (x * 2,)

    r = compare_module(T, F, {"inputs": ["float32[2]"]}, transfer=lambda m, v: v)
    assert r.status == "fail" and "structure" in r.message


def test_dict_outputs_integer_leaves_and_skip():
    class T(tnn.Module):
        def forward(self, x):
            v, i = torch.topk(x, 2, dim=-1)
            return {"values": v, "indices": i}

    class F(fnn.Module):
        def __call__(self, x, train: bool = False):
            v, i = jax.lax.top_k(x, 2)
            return {"values": v, "indices": i}

    class FWrong(fnn.Module):
        def __call__(self, x, train: bool = False):
            v, i = jax.lax.top_k(x, 2)
            return {"values": v, "indices": i[..., ::-1]}

    spec = {"inputs": ["float32[3, 5]"]}
    r = compare_module(T, F, spec, transfer=lambda m, v: v)
    assert r.status == "pass", str(r)
    assert {"forward:out['indices']", "forward:out['values']"} <= {c.name for c in r.checks}
    bad = compare_module(T, FWrong, spec, transfer=lambda m, v: v)
    assert bad.status == "fail" and "integer elements differ" in bad.message
    assert compare_module(T, F, {**spec, "skip": "not today"}).status == "skip"
    assert summarize([r, bad])["summary"] == {"pass": 1, "fail": 1, "error": 0, "skip": 0}


def test_bad_spec_is_an_error_result():
    r = compare_module(TorchLN, _flax_ln(1e-5), {"inputs": ["float32[N, 6]"]}, transfer=hand_transfer)
    assert r.status == "error" and "N" in r.message


def test_compare_arrays_tolerance_scales_with_magnitude():
    ref = np.array([1000.0, 0.0], np.float32)
    assert compare_arrays("x", ref + np.array([5e-3, 5e-3]), ref, "float32").status == "pass"
    assert compare_arrays("x", ref + np.array([0, 2e-2]), ref, "float32").status == "fail"
    assert compare_arrays("x", np.array([np.nan]), np.array([np.nan]), "float32").status == "pass"
    assert compare_arrays("x", np.array([1.0]), np.array([np.nan]), "float32").status == "fail"
    assert compare_arrays("x", np.zeros((2, 3)), np.zeros((3, 2)), "float32").status == "fail"


def test_load_module_from_path_is_isolated(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("import itertools\nCOUNT = itertools.count()\nX = next(COUNT)\n")
    a = load_module_from_path(f, "m")
    b = load_module_from_path(f, "m")
    assert a is not b and a.__name__ != b.__name__
    a.X = 5
    assert b.X == 0


def test_compare_files_with_hand_written_conversion(tmp_path):
    converted = tmp_path / "mlp_jax.py"
    converted.write_text(
        "import jax, jax.numpy as jnp\nimport flax.linen as nn\n\n"
        "class MLP(nn.Module):\n"
        "    in_features: int = 16\n    hidden: int = 32\n    out_features: int = 4\n\n"
        "    def setup(self):\n"
        "        self.fc1 = nn.Dense(self.hidden)\n        self.fc2 = nn.Dense(self.hidden)\n"
        "        self.fc3 = nn.Dense(self.out_features)\n\n"
        "    def __call__(self, x, train: bool = False):\n"
        "        return self.fc3(jnp.tanh(self.fc2(jax.nn.relu(self.fc1(x)))))\n")
    results = compare_files(CORPUS / "mlp.py", converted, transfer=hand_transfer)
    assert [(r.name, r.status) for r in results] == [("MLP", "pass")], [str(r) for r in results]
    assert isinstance(results[0], ComparisonResult)
    missing = compare_files(CORPUS / "mlp.py", converted, {"Nope": {}}, transfer=hand_transfer)
    assert missing[0].status == "error" and "not found" in missing[0].message


# --- method + init_inputs: validate the deterministic part of a sampling model -----------------

class TorchSampler(tnn.Module):
    def __init__(self, d=4):
        super().__init__()
        self.enc = tnn.Linear(d, 2 * d)
        self.dec = tnn.Linear(d, d)

    def encode(self, x):
        mu, logvar = self.enc(x).chunk(2, dim=-1)
        return mu, logvar

    def forward(self, x):
        mu, logvar = self.encode(x)
        return self.dec(mu + torch.randn_like(mu) * torch.exp(0.5 * logvar))


def _flax_sampler(swap):
    class FlaxSampler(fnn.Module):
        d: int = 4

        def setup(self):
            self.enc = fnn.Dense(2 * self.d)
            self.dec = fnn.Dense(self.d)

        def encode(self, x):
            mu, logvar = jnp.split(self.enc(x), 2, axis=-1)
            return (logvar, mu) if swap else (mu, logvar)

        def __call__(self, x, train: bool = False):
            mu, logvar = self.encode(x)
            eps = jax.random.normal(self.make_rng("noise"), mu.shape)
            return self.dec(mu + eps * jnp.exp(0.5 * logvar))
    return FlaxSampler


def test_method_with_init_inputs():
    spec = {"init": {"d": 4}, "method": "encode", "inputs": ["float32[B, 4]"],
            "init_inputs": ["float32[B, 4]"], "rngs": ["noise"], "dims": {"B": [2, 3]}}
    r = compare_module(TorchSampler, _flax_sampler(False), spec, transfer=hand_transfer)
    assert r.status == "pass", str(r)
    # the decoder's parameters exist (init ran __call__) but get no gradient from encode
    assert "grad:params/dec/kernel" in {c.name for c in r.checks}
    bad = compare_module(TorchSampler, _flax_sampler(True), spec, transfer=hand_transfer)
    assert bad.status == "fail"
    assert {c.name for c in bad.failures} >= {"forward:out[0]", "forward:out[1]"}
