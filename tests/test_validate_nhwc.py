"""Validation of channels-last conversions (``jaxport convert --layout nhwc``).

A converted class that declares ``jaxport_layout`` (docs/contract: transpiler/validate/
channels_last.py) takes its images (N, H, W, C); the validator keeps torch's (N, C, H, W) at
its boundary (inputs transposed, 4-D results and input gradients compared in torch's layout)
and permutes the Dense kernels that read flattened channels-last maps (``flatten_rows``).

The flax files here are written by hand as the converter writes channels-last code (flax
``nn.Conv`` with explicit padding, ``nn.max_pool``, a reshape before the Dense), against torch
originals; seeded mistakes in the declaration must fail.
"""
from __future__ import annotations

import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest
import torch

from transpiler.validate.channels_last import (LayoutContractError, class_layout, rows_to_flax,
                                               rows_to_torch, to_flax_inputs, to_torch_outputs)
from transpiler.validate.harness import compare_files, load_module_from_path

jax.config.update("jax_enable_x64", False)

TORCH_SRC = '''
import torch
import torch.nn as nn
import torch.nn.functional as F


class Net(nn.Module):
    """LeNet-like: conv, pool, conv, flatten, two Linear layers."""
    def __init__(self, num_classes=5):
        super().__init__()
        self.conv1 = nn.Conv2d(2, 3, 3, padding=1)
        self.conv2 = nn.Conv2d(3, 6, 3)
        self.fc1 = nn.Linear(6 * 3 * 3, 10)
        self.fc2 = nn.Linear(10, num_classes)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.relu(self.conv2(x))
        x = torch.flatten(x, 1)
        return F.log_softmax(self.fc2(F.relu(self.fc1(x))), dim=1)


class Block(nn.Module):
    """An image and a Dense head on the flattened image."""
    def __init__(self, c=5):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)
        self.bn = nn.BatchNorm2d(c)
        self.fc = nn.Linear(c * 4 * 4, 3)

    def forward(self, x):
        y = F.relu(self.bn(self.conv(x)))
        return y, self.fc(torch.flatten(y, 1))


class Two(nn.Module):
    """Images in (one a keyword) and out; the flatten_rows are declared by Block."""
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 5, 1)
        self.blocks = nn.ModuleList([Block(5), Block(5)])

    def forward(self, x, gate=None):
        h = self.stem(x)
        if gate is not None:
            h = h * torch.sigmoid(gate)
        total = 0
        for block in self.blocks:
            h, v = block(h)
            total = total + v
        return {"image": h, "vector": total}
'''

FLAX_SRC = '''
from typing import ClassVar

import jax
import jax.numpy as jnp
import flax.linen as nn


class Net(nn.Module):
    # jaxport --layout nhwc: images are channels-last (N, H, W, C)
    jaxport_layout: ClassVar[dict] = {"inputs": ("x",), "returns": False,
                                      "flatten_rows": {"fc1": "conv2"}}
    num_classes: int = 5

    def setup(self):
        self.conv1 = nn.Conv(3, (3, 3), padding=((1, 1), (1, 1)))
        self.conv2 = nn.Conv(6, (3, 3), padding=((0, 0), (0, 0)))
        self.fc1 = nn.Dense(10)
        self.fc2 = nn.Dense(self.num_classes)

    def __call__(self, x, train: bool = False):
        x = nn.max_pool(jax.nn.relu(self.conv1(x)), (2, 2), (2, 2))
        x = jax.nn.relu(self.conv2(x))
        x = x.reshape(x.shape[0], -1)
        return jax.nn.log_softmax(self.fc2(jax.nn.relu(self.fc1(x))), axis=1)


class Block(nn.Module):
    jaxport_layout: ClassVar[dict] = {"inputs": ("x",), "returns": True,
                                      "flatten_rows": {"fc": "bn"}}
    c: int = 5

    def setup(self):
        self.conv = nn.Conv(self.c, (3, 3), padding=((1, 1), (1, 1)))
        self.bn = nn.BatchNorm(momentum=0.9, epsilon=1e-5)
        self.fc = nn.Dense(3)

    def __call__(self, x, train: bool = False):
        y = jax.nn.relu(self.bn(self.conv(x), use_running_average=not train))
        return y, self.fc(y.reshape(y.shape[0], -1))


class Two(nn.Module):
    jaxport_layout: ClassVar[dict] = {"inputs": ("x", "gate"), "returns": True, "flatten_rows": {}}

    def setup(self):
        self.stem = nn.Conv(5, (1, 1), padding=((0, 0), (0, 0)))
        self.blocks = [Block(5), Block(5)]

    def __call__(self, x, gate=None, train: bool = False):
        h = self.stem(x)
        if gate is not None:
            h = h * jax.nn.sigmoid(gate)
        total = 0
        for block in self.blocks:
            h, v = block(h, train=train)
            total = total + v
        return {"image": h, "vector": total}
'''

SPEC = {
    "Net": {"init": {"num_classes": 5}, "inputs": ["float32[B, 2, 10, 10]"], "dims": {"B": [1, 3]}},
    "Block": {"inputs": ["float32[B, 5, 4, 4]"], "dims": {"B": [2, 3]}},
    "Two": {"inputs": ["float32[B, 3, 4, 4]"], "kwargs": {"gate": "float32[B, 1, 4, 4]"},
            "dims": {"B": [2, 3]}},
}


def _files(tmp_path: Path, flax_src: str = FLAX_SRC) -> tuple[Path, Path]:
    original, converted = tmp_path / "orig.py", tmp_path / "conv.py"
    original.write_text(textwrap.dedent(TORCH_SRC))
    converted.write_text(textwrap.dedent(flax_src))
    return original, converted


def _validate(tmp_path, flax_src=FLAX_SRC, modules=None):
    original, converted = _files(tmp_path, flax_src)
    return {r.name: r for r in compare_files(original, converted, SPEC, modules=modules, examples=2)}


def test_channels_last_models_pass(tmp_path):
    results = _validate(tmp_path)
    for name, r in results.items():
        assert r.status == "pass", str(r)
    names = {c.name for c in results["Two"].checks}
    # the image output and both input gradients are compared in torch's layout
    assert "forward:out['image']" in names and "grad:input#0" in names and "grad:input#1" in names
    assert any(n.startswith("grad:params/blocks_1/fc/kernel") for n in names)
    assert any(n.startswith("train_forward") for n in names)    # BatchNorm: the training pass too


@pytest.mark.parametrize("wrong, needle", [
    # the Dense rows left in torch's order: the forward output differs
    ('"flatten_rows": {"fc1": "conv2"}', '"flatten_rows": {}'),
    # C taken from the wrong layer (conv1 has 3 channels, the map 6)
    ('"flatten_rows": {"fc1": "conv2"}', '"flatten_rows": {"fc1": "conv1"}'),
])
def test_wrong_flatten_rows_fails(tmp_path, wrong, needle):
    results = _validate(tmp_path, FLAX_SRC.replace(wrong, needle, 1), modules=["Net"])
    r = results["Net"]
    assert r.status == "fail", str(r)
    assert any(c.name.startswith("forward") and c.status == "fail" for c in r.checks)


def test_wrong_returns_fails(tmp_path):
    """``returns`` False on a module that returns channels-last images: the image is compared
    as it is and its shape differs from torch's."""
    src = FLAX_SRC.replace('"inputs": ("x", "gate"), "returns": True', '"inputs": ("x", "gate"), "returns": False')
    r = _validate(tmp_path, src, modules=["Two"])["Two"]
    assert r.status == "fail"
    bad = [c for c in r.checks if c.status == "fail"]
    assert bad and "shape mismatch" in bad[0].message, str(r)


def test_missing_input_name_fails(tmp_path):
    """``gate`` not declared: the flax module gets it channels-first (its broadcast fails or
    gives the wrong numbers); never a pass."""
    src = FLAX_SRC.replace('"inputs": ("x", "gate")', '"inputs": ("x",)')
    r = _validate(tmp_path, src, modules=["Two"])["Two"]
    assert r.status in ("fail", "error"), str(r)


def test_submodule_flatten_rows_are_needed(tmp_path):
    """Block's own declaration is what permutes blocks_0/fc and blocks_1/fc inside Two."""
    src = FLAX_SRC.replace('"flatten_rows": {"fc": "bn"}', '"flatten_rows": {}')
    r = _validate(tmp_path, src, modules=["Two"])["Two"]
    assert r.status == "fail", str(r)
    assert any(c.name == "forward:out['vector']" and c.status == "fail" for c in r.checks)


def test_bad_declarations_are_errors(tmp_path):
    r = _validate(tmp_path, FLAX_SRC.replace('"flatten_rows": {"fc1": "conv2"}', '"flatten_rows": {"fc1": "nothere"}'),
                  modules=["Net"])["Net"]
    assert r.status == "error" and "no kernel, bias or scale at params/nothere" in r.message
    r = _validate(tmp_path, FLAX_SRC.replace('"inputs": ("x",), "returns": False', '"inputs": ("y",), "returns": False'),
                  modules=["Net"])["Net"]
    assert r.status == "error" and "names ['y'], which Net.__call__ does not take" in r.message
    r = _validate(tmp_path, FLAX_SRC.replace('"flatten_rows": {"fc1": "conv2"}', '"flatten_rows": {"fc1": "fc2"}'),
                  modules=["Net"])["Net"]
    assert r.status == "error" and "54 kernel rows are not a multiple of the channel count 5" in r.message
    with pytest.raises(LayoutContractError):
        class_layout(type("C", (), {"jaxport_layout": {"inputs": "x"}}))


def test_rows_permutation_round_trip():
    c, h, w, out = 3, 2, 4, 5
    torch_weight = np.arange(out * c * h * w, dtype=np.float32).reshape(out, c * h * w)
    kernel = rows_to_flax(torch_weight.T, c)
    # row r of the flax kernel reads element (h, w, c) of the channels-last map
    chw = torch_weight.T.reshape(c, h, w, out)
    assert np.array_equal(kernel, chw.transpose(1, 2, 0, 3).reshape(h * w * c, out))
    assert np.array_equal(rows_to_torch(kernel, c), torch_weight.T)
    with pytest.raises(ValueError):
        rows_to_flax(torch_weight.T, 7)


def test_boundary_helpers(tmp_path):
    _, converted = _files(tmp_path)
    fmod = load_module_from_path(converted)
    x, g = np.zeros((2, 3, 4, 5)), np.zeros((2, 1, 4, 5))
    a, k = to_flax_inputs(fmod.Two, None, (x,), {"gate": g})
    assert a[0].shape == (2, 4, 5, 3) and k["gate"].shape == (2, 4, 5, 1)
    a, k = to_flax_inputs(fmod.Two, None, (x, g), {})           # the keyword given by position
    assert a[1].shape == (2, 4, 5, 1)
    out = to_torch_outputs(fmod.Two, {"image": np.zeros((2, 4, 5, 3)), "vector": np.zeros((2, 3))})
    assert out["image"].shape == (2, 3, 4, 5) and out["vector"].shape == (2, 3)
    assert to_torch_outputs(fmod.Net, np.zeros((2, 4, 5, 3))).shape == (2, 4, 5, 3)   # returns False


def test_jaxport_weights_permutes_rows(tmp_path):
    """``jaxport weights`` (checkpoint.convert_checkpoint) on a channels-last converted file:
    the written variables give torch's outputs."""
    import flax.serialization
    from transpiler.validate.checkpoint import convert_checkpoint
    original, converted = _files(tmp_path)
    (tmp_path / "orig.toml").write_text('[Net]\ninit = { num_classes = 5 }\ninputs = ["float32[B, 2, 10, 10]"]\n'
                                        'dims = { B = [1, 3] }\n')
    tmod = load_module_from_path(original)
    torch.manual_seed(3)
    tm = tmod.Net().eval()
    torch.save(tm.state_dict(), tmp_path / "net.pt")
    out = tmp_path / "net.msgpack"
    convert_checkpoint(tmp_path / "net.pt", original, "Net", out, converted=converted)
    fmod = load_module_from_path(converted)
    fm = fmod.Net()
    x = np.random.default_rng(0).standard_normal((2, 2, 10, 10)).astype(np.float32)
    template = fm.init(jax.random.PRNGKey(0), np.transpose(x, (0, 2, 3, 1)))
    variables = flax.serialization.from_bytes(template, out.read_bytes())
    got = np.asarray(fm.apply(variables, np.transpose(x, (0, 2, 3, 1))))
    with torch.no_grad():
        ref = tm(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


# --- the training-loop replay (jaxport validate --train-steps) ------------------------------------

NHWC_NET = '''
from typing import ClassVar


class Net(nn.Module):
    jaxport_layout: ClassVar[dict] = {"inputs": ("x",), "returns": False,
                                      "flatten_rows": {"fc1": "conv2"}}
    dropout: float = 0.25

    def setup(self):
        self.conv1 = nn.Conv(4, (3, 3), padding=((0, 0), (0, 0)))
        self.conv2 = nn.Conv(8, (3, 3), padding=((0, 0), (0, 0)))
        self.dropout1 = nn.Dropout(rate=self.dropout)
        self.fc1 = nn.Dense(16)
        self.fc2 = nn.Dense(10)

    def __call__(self, x, train: bool = False):
        x = jax.nn.relu(self.conv1(x))
        x = jax.nn.relu(self.conv2(x))
        x = nn.max_pool(x, (2, 2), (2, 2))
        x = self.dropout1(x, deterministic=not train)
        x = x.reshape(x.shape[0], -1)
        x = jax.nn.relu(self.fc1(x))
        x = self.fc2(x)
        return jax.nn.log_softmax(x, axis=1)
'''

CORPUS_TRAINING = Path(__file__).resolve().parent.parent / "corpus" / "training"
EXPECTED_TRAINING = CORPUS_TRAINING.parent / "expected" / "training"


def _replay_mnist(tmp_path, net_src: str) -> dict:
    import re

    from transpiler.validate.train_steps import load_definitions, manifest_for, replay_entry
    text = (EXPECTED_TRAINING / "mnist_steplr.py").read_text(encoding="utf-8")
    text, n = re.subn(r"(?ms)^class Net\(nn\.Module\):.*?(?=^@jax\.jit)", net_src.lstrip() + "\n\n", text)
    assert n == 1
    converted = tmp_path / "mnist_steplr_nhwc.py"
    converted.write_text(text, encoding="utf-8")
    original = CORPUS_TRAINING / "mnist_steplr.py"
    manifest, _ = manifest_for(original, converted)
    entry = manifest["training"][0]
    return replay_entry(load_definitions(original, "torch"), load_definitions(converted, "jax"), entry,
                        manifest, steps=2, seed=0, rtol=None, atol=None)


def test_loop_replay_feeds_channels_last_batches(tmp_path):
    r = _replay_mnist(tmp_path, NHWC_NET)
    assert r["status"] == "pass", r
    assert "Net is channels-last: the converted loop gets data as (N, H, W, C)" in r["message"]
    assert [s["step"] for s in r["train_steps"]] == [1, 2]


def test_loop_replay_wrong_flatten_rows_fails(tmp_path):
    r = _replay_mnist(tmp_path, NHWC_NET.replace('"flatten_rows": {"fc1": "conv2"}', '"flatten_rows": {}'))
    assert r["status"] == "fail" and r["message"].startswith("step 1 fails"), r


def _boundary_script(tmp_path, net_src: str = NHWC_NET) -> Path:
    """The converted mnist_steplr with a channels-last Net and a loop that turns the loader's
    (N, C, H, W) batches channels-last itself (a script boundary, as `to_nhwc` names it)."""
    import re
    text = (EXPECTED_TRAINING / "mnist_steplr.py").read_text(encoding="utf-8")
    text, n = re.subn(r"(?ms)^class Net\(nn\.Module\):.*?(?=^@jax\.jit)",
                      "def to_nhwc(x):\n    return jnp.transpose(x, (0, 2, 3, 1))\n\n\n" + net_src.lstrip() + "\n\n",
                      text)
    assert n == 1
    old = "        data, target = to_jax(data), to_jax(target)\n        if train_state is None:"
    assert text.count(old) == 1
    text = text.replace(old, "        data, target = to_nhwc(to_jax(data)), to_jax(target)\n        if train_state is None:")
    old = "        data, target = to_jax(data), to_jax(target)\n        output = eval_step"
    assert text.count(old) == 1
    text = text.replace(old, "        data, target = to_nhwc(to_jax(data)), to_jax(target)\n        output = eval_step")
    converted = tmp_path / "mnist_steplr_nhwc.py"
    converted.write_text(text, encoding="utf-8")
    return converted


def test_script_replay_of_a_script_with_its_own_boundary(tmp_path):
    """The script replay runs the script as written and starts the flax Net from torch's
    weights with the Dense rows permuted (the loop replay of such a loop: the corpus test
    below)."""
    replay = "script"
    import json
    import subprocess
    import sys
    root = Path(__file__).resolve().parent.parent
    converted = _boundary_script(tmp_path)
    report = tmp_path / "report.json"
    proc = subprocess.run([sys.executable, str(root / "cli.py"), "validate", str(CORPUS_TRAINING / "mnist_steplr.py"),
                           str(converted), "--train-steps", "2", "--replay", replay, "--json", str(report)],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    data = json.loads(report.read_text()) if report.is_file() else {}
    assert proc.returncode == 0, proc.stdout + proc.stderr
    [m] = data["modules"]
    assert m["status"] == "pass" and m["replay"] == replay, m
    assert "channels-last" not in m["message"]          # no transposition by the replay


# --- end to end: jaxport's own --layout nhwc conversions ---------------------------------------------

CORPUS_MODELS = CORPUS_TRAINING.parent / "models"


def _convert_nhwc(path: Path, tmp_path: Path) -> Path:
    from transpiler.api import Options, convert_source
    result = convert_source(path.read_text(encoding="utf-8"), str(path), Options(layout="nhwc"))
    assert result.status in ("converted", "partial"), [d.message for d in result.diagnostics]
    out = tmp_path / path.name
    out.write_bytes(result.output)
    return out


def _channels_last_classes(converted: Path) -> list[str]:
    module = load_module_from_path(converted)
    return [n for n, v in vars(module).items() if isinstance(v, type) and class_layout(v) is not None]


@pytest.mark.parametrize("stem", ["mnist_cnn", "resnet"])
def test_corpus_nhwc_conversion_validates(stem, tmp_path):
    original = CORPUS_MODELS / f"{stem}.py"
    converted = _convert_nhwc(original, tmp_path)
    if not _channels_last_classes(converted):
        pytest.skip(f"the converter kept every class of {stem}.py NCHW (no jaxport_layout)")
    results = compare_files(original, converted, examples=2)
    assert results and all(r.status == "pass" for r in results), "\n".join(str(r) for r in results)


def test_corpus_nhwc_training_script_loop_replay(tmp_path):
    """mnist_steplr converted with --layout nhwc: its own loop turns the loader's batches
    channels-last; the loop replay gives it torch's batches and the Dense rows permuted."""
    from transpiler.validate.train_steps import load_definitions, manifest_for, replay_entry
    original = CORPUS_TRAINING / "mnist_steplr.py"
    converted = _convert_nhwc(original, tmp_path)
    if "Net" not in _channels_last_classes(converted):
        pytest.skip("the converter kept Net NCHW (no jaxport_layout)")
    manifest, _ = manifest_for(original, converted)
    entry = manifest["training"][0]
    r = replay_entry(load_definitions(original, "torch"), load_definitions(converted, "jax"), entry,
                     manifest, steps=2, seed=0, rtol=None, atol=None)
    assert r["status"] == "pass", r
    assert "channels-last" not in r["message"]
