"""``jaxport convert --layout nhwc`` (issue #8): which corpus classes run channels-last, which
keep NCHW and why (JP202), and torch-vs-JAX numerics of the channels-last conversions
(outputs and input gradients, jitted), with torch inputs transposed to NHWC and the
``jaxport_layout`` contract read from the converted classes."""
from __future__ import annotations

import importlib.util
import inspect
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from transpiler.api import Options, convert_source

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "corpus" / "models"
NHWC = Options(layout="nhwc")


def convert(path: Path, options=NHWC):
    return convert_source(path.read_text(), str(path), options)


def code_of(result) -> str:
    return result.output.decode()


def classes_with_layout(code: str) -> dict[str, str]:
    """class name → its jaxport_layout line (the channels-last classes of a conversion)."""
    out, current = {}, None
    for line in code.splitlines():
        m = re.match(r"class (\w+)\(", line)
        if m:
            current = m.group(1)
        if "jaxport_layout: ClassVar[dict]" in line and current:
            out[current] = line.strip()
    return out


# ----------------------------------------------------------------------------- which classes
EXPECTED = {
    "mnist_cnn.py": ({"Net"}, {}),
    "resnet.py": ({"BasicBlock", "Bottleneck", "ResNet", "BottleneckNet"}, {}),
    "unet.py": ({"DoubleConv", "Down", "Up", "UNet", "SegHead"}, {}),
    "vgg_bn.py": ({"VGG"}, {}),
    "conv_autoencoder.py": ({"ConvAutoencoder", "DilatedUpsampler"}, {}),
    # output.view(-1, 1) of a (N, 1, 1, 1) map: a reshape the analysis does not follow
    "dcgan.py": ({"Generator"}, {"Discriminator": 56}),
    "mobilenet.py": ({"ConvBNReLU", "InvertedResidual", "TinyMobileNet"}, {}),
    "se_block.py": ({"SELayer", "SEBasicBlock"}, {}),
    # patch embedding: x.flatten(2).transpose(1, 2) becomes x.flatten(1, 2) on (N, H, W, C)
    "vit.py": ({"PatchEmbed", "VisionTransformer"}, {}),
    "mixer.py": ({"MLPMixer", "ConvGNBlock"}, {}),
    # a gamma parameter of shape (1, C, 1, 1) multiplies an image
    "custom_init.py": (set(), {"ScaledConvNet": 33}),
    "view_cat_permute.py": (set(), {"TwoStreamNet": 18, "Shuffle": 40}),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_corpus_classes_channels_last_or_kept(name):
    result = convert(MODELS / name)
    assert result.status in ("converted", "partial"), result
    code = code_of(result)
    compile(code, name, "exec")
    nhwc, kept = EXPECTED[name]
    assert set(classes_with_layout(code)) == nhwc
    jp202 = {d.message.split(" ", 1)[0]: d for d in result.diagnostics if d.code == "JP202"}
    assert {k: d.line for k, d in jp202.items()} == kept
    for d in jp202.values():
        assert d.severity == "info" and "keeps NCHW under --layout nhwc" in d.message


def test_discriminator_names_the_construct():
    result = convert(MODELS / "dcgan.py")
    (d,) = [d for d in result.diagnostics if d.code == "JP202"]
    assert "output.view(-1, 1)" in d.message
    code = code_of(result)
    # the class that keeps NCHW converts exactly as under --layout nchw
    nchw = code_of(convert(MODELS / "dcgan.py", Options(layout="nchw")))
    start = nchw.index("class Discriminator")
    assert nchw[start:] in code


@pytest.mark.parametrize("name", ["mnist_cnn.py", "resnet.py"])
def test_forward_has_no_transposes(name):
    code = code_of(convert(MODELS / name))
    calls = "\n".join(re.findall(r"def __call__\(self.*?(?=\n\S|\n    def |\Z)", code, flags=re.S))
    assert calls
    for needle in ("transpose", "moveaxis", "NCHW", "nchw", "torch_max_pool2d", "torch_adaptive"):
        assert needle not in calls, needle
    setups = "\n".join(re.findall(r"def setup\(self.*?(?=\n    def |\n\S|\Z)", code, flags=re.S))
    assert "ConvNCHW" not in setups and "axis=1" not in setups


def test_mnist_layout_metadata():
    code = code_of(convert(MODELS / "mnist_cnn.py"))
    line = classes_with_layout(code)["Net"]
    assert line == ('jaxport_layout: ClassVar[dict] = {"inputs": ("x",), "returns": False, '
                    '"flatten_rows": {"fc1": "conv2"}}')
    assert "from typing import ClassVar" in code


def test_nchw_output_unchanged_by_default():
    """--layout nchw (the default) never reaches the layout pass."""
    for name in ("mnist_cnn.py", "unet.py"):
        default = code_of(convert(MODELS / name, Options()))
        assert code_of(convert(MODELS / name, Options(layout="nchw"))) == default
        assert "jaxport_layout" not in default and "NHWC" not in default


def test_kept_class_diagnostics_unknown_op(tmp_path):
    src = (
        "import torch\nimport torch.nn as nn\n\n\n"
        "class Odd(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.conv = nn.Conv2d(3, 4, 3)\n\n"
        "    def forward(self, x):\n"
        "        y = self.conv(x)\n"
        "        return y.transpose(2, 3)\n\n\n"
        "class Head(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.body = Odd()\n"
        "        self.bn = nn.BatchNorm2d(4)\n\n"
        "    def forward(self, x):\n"
        "        return self.bn(self.body(x))\n")
    result = convert_source(src, "odd.py", NHWC)
    code = code_of(result)
    assert "jaxport_layout" not in code and "ConvNHWC" not in code
    found = {d.message.split(" ", 1)[0]: (d.line, d.message) for d in result.diagnostics if d.code == "JP202"}
    assert found["Odd"][0] == 12 and "y.transpose(2, 3)" in found["Odd"][1]
    assert found["Head"][0] == 22 and "Odd keeps NCHW" in found["Head"][1]


def test_conservative_cases():
    result = convert(ROOT / "tests" / "fixtures" / "nhwc_cases.py")
    code = code_of(result)
    assert set(classes_with_layout(code)) == {"Shared"}
    assert classes_with_layout(code)["Shared"].endswith('"flatten_rows": {}}')
    assert code.count("jnp.transpose(") == 2
    found = {d.message.split(" ", 1)[0]: d for d in result.diagnostics if d.code == "JP202"}
    assert "y.mean(0)" in found["Reduce"].message     # (C, H, W) and (H, W, C) differ
    assert "exchanges images with Child" in found["Base"].message
    assert "image layers" in found["Child"].message


def test_dims_sizes_pad_and_flatten_rewrites():
    src = (
        "import torch\nimport torch.nn as nn\nimport torch.nn.functional as F\n\n\n"
        "class M(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.conv = nn.Conv2d(3, 4, 3, padding=1)\n"
        "        self.fc = nn.Linear(8 * 4 * 4, 5)\n\n"
        "    def forward(self, x):\n"
        "        b, c, h, w = x.size()\n"
        "        y = self.conv(x)\n"
        "        y = torch.cat([y, y * 2], dim=1)\n"
        "        y = F.pad(y, [1, 1, 2, 0])\n"
        "        y = y[:, :, 2:, 1:-1]\n"
        "        s = y.mean((2, 3), keepdim=True)\n"
        "        y = F.softmax(y * s, dim=1) + y.size(1) + h\n"
        "        return self.fc(y.view(b, -1)), y.shape[-2:]\n")
    result = convert_source(src, "m.py", NHWC)
    code = code_of(result)
    assert "b, h, w, c = x.shape" in code
    assert "jnp.concatenate([y, y * 2], axis=3)" in code
    assert "torch_pad(y, [0, 0, 1, 1, 2, 0])" in code
    assert "y[:, 2:, 1:-1, :]" in code
    assert "jnp.mean(y, axis=(1, 2), keepdims=True)" in code
    assert "axis=3" in code and "y.shape[3]" in code
    assert "y.shape[1:3]" in code
    # a flatten whose channel count comes from a concatenation: transposed back first
    assert "jnp.transpose(y, (0, 3, 1, 2))" in code
    assert classes_with_layout(code)["M"].endswith('"flatten_rows": {}}')


def test_script_callers_feed_nhwc():
    path = ROOT / "corpus" / "training" / "mnist_steplr.py"
    result = convert(path)
    code = code_of(result)
    assert "jaxport_layout" in code
    assert "jnp.transpose(data, (0, 2, 3, 1))" in code
    assert not [d for d in result.diagnostics if d.code == "JP202"]


# ----------------------------------------------------------------------------- numerics
CASES = [
    ("mnist_cnn.py", "Net", {"num_classes": 10}, [(2, 1, 14, 14)]),
    ("resnet.py", "ResNet", {"num_blocks": (1, 1), "num_classes": 10, "width": 8}, [(2, 3, 8, 8)]),
    ("resnet.py", "BottleneckNet", {"layers": (1, 2), "num_classes": 5}, [(2, 3, 8, 8)]),
    ("unet.py", "UNet", {"n_channels": 3, "n_classes": 2, "base": 4, "bilinear": True}, [(2, 3, 8, 8)]),
    ("unet.py", "UNet", {"n_channels": 3, "n_classes": 2, "base": 4, "bilinear": False}, [(1, 3, 8, 8)]),
    ("unet.py", "SegHead", {"in_ch": 3, "num_classes": 3}, [(2, 3, 12, 12)]),
    ("vgg_bn.py", "VGG", {"vgg_name": "tiny", "num_classes": 10, "in_channels": 3}, [(2, 3, 8, 8)]),
    ("conv_autoencoder.py", "ConvAutoencoder", {"in_channels": 1, "hidden": 4, "latent": 8}, [(2, 1, 12, 12)]),
    ("conv_autoencoder.py", "DilatedUpsampler", {"channels": 4}, [(2, 4, 3, 5)]),
    ("dcgan.py", "Generator", {"nz": 8, "ngf": 8, "nc": 3}, [(2, 8, 1, 1)]),
    ("mobilenet.py", "TinyMobileNet", {"num_classes": 4, "width": 8}, [(2, 3, 8, 8)]),
    ("se_block.py", "SEBasicBlock", {"inplanes": 8, "planes": 8, "reduction": 4}, [(2, 8, 7, 5)]),
    ("vit.py", "VisionTransformer", {"img_size": 16, "patch_size": 4, "in_chans": 3, "num_classes": 5,
                                     "embed_dim": 16, "depth": 2, "num_heads": 2}, [(2, 3, 16, 16)]),
    ("mixer.py", "MLPMixer", {"image_size": 8, "patch_size": 2, "in_channels": 3, "dim": 8, "depth": 2,
                              "num_classes": 4}, [(2, 3, 8, 8)]),
    ("mixer.py", "ConvGNBlock", {"channels": 8, "groups": 4}, [(2, 8, 5, 5)]),
    # two flattens into one Dense, one of them also returned: both transposed back first
    ("fixtures/nhwc_cases.py", "Shared", {}, [(2, 3, 6, 6)]),
]

_converted: dict[str, dict] = {}


def _path(name: str) -> Path:
    return ROOT / "tests" / name if name.startswith("fixtures/") else MODELS / name


def _load_torch(name: str):
    spec = importlib.util.spec_from_file_location(f"_nhwc_torch_{Path(name).stem}", _path(name))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _load_flax(name: str) -> dict:
    if name not in _converted:
        import types
        code = code_of(convert(_path(name)))
        module = types.ModuleType(f"_nhwc_flax_{Path(name).stem}")
        sys.modules[module.__name__] = module      # dataclasses look ClassVar up there
        exec(compile(code, name, "exec"), module.__dict__)
        _converted[name] = module.__dict__
    return _converted[name]


def _transfer(torch_model, variables, flax_cls):
    """Torch weights into the flax variables; flatten_rows kernels permuted (C, S) → (S, C)."""
    from transpiler.validate.weights import load_torch_state
    if "flax_class" in inspect.signature(load_torch_state).parameters:
        return load_torch_state(torch_model, variables, flax_cls)
    out = load_torch_state(torch_model, variables)
    layout = getattr(flax_cls, "jaxport_layout", {})
    params = out["params"]
    for dense, source in layout.get("flatten_rows", {}).items():
        node = params
        for part in source.split("/"):
            node = node[part]
        c = node["kernel"].shape[-1]
        target = params
        *head, last = dense.split("/")
        for part in head:
            target = target[part]
        k = np.asarray(target[last]["kernel"])
        rows, cols = k.shape
        target[last]["kernel"] = k.reshape(c, rows // c, cols).transpose(1, 0, 2).reshape(rows, cols)
    return out


def _nhwc(a):
    return np.transpose(a, (0, 2, 3, 1))


def _nchw(a):
    return np.transpose(a, (0, 3, 1, 2))


@pytest.mark.parametrize("name, cls_name, init, shapes", CASES,
                         ids=[f"{c[1]}-{i}" for i, c in enumerate(CASES)])
def test_numerics_against_torch(name, cls_name, init, shapes):
    import jax
    import jax.numpy as jnp
    import torch

    torch.manual_seed(0)
    torch_model = getattr(_load_torch(name), cls_name)(**init).eval()
    flax_cls = _load_flax(name)[cls_name]
    layout = flax_cls.jaxport_layout
    flax_model = flax_cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in init.items()})
    rng = np.random.default_rng(1)
    xs = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    params = list(inspect.signature(flax_cls.__call__).parameters)[1:]
    jx = [jnp.asarray(_nhwc(x) if p in layout["inputs"] else x) for p, x in zip(params, xs)]
    shapes_only = jax.eval_shape(flax_model.init, {"params": jax.random.PRNGKey(0)}, *jx)
    variables = _transfer(torch_model, shapes_only, flax_cls)

    t_in = [torch.tensor(x, requires_grad=True) for x in xs]
    t_out = torch_model(*t_in)
    t_outs = list(t_out) if isinstance(t_out, tuple) else [t_out]
    weights = [rng.standard_normal(tuple(o.shape)).astype(np.float32) for o in t_outs]
    loss = sum((o * torch.tensor(w)).sum() for o, w in zip(t_outs, weights))
    loss.backward()

    def back(o):
        return jnp.transpose(o, (0, 3, 1, 2)) if layout["returns"] and o.ndim == 4 else o

    def forward(v, *inputs):
        out = flax_model.apply(v, *inputs)
        return tuple(out) if isinstance(out, tuple) else (out,)

    def scalar(inputs, v):
        outs = forward(v, *inputs)
        return sum(jnp.sum(back(o) * w) for o, w in zip(outs, weights)), outs

    # outputs and input gradients from one compiled function (compiling dominates the time)
    grads, j_outs = jax.jit(jax.grad(scalar, has_aux=True))(jx, variables)
    for t, j in zip(t_outs, j_outs):
        j = np.asarray(back(j))
        assert j.shape == tuple(t.shape)
        np.testing.assert_allclose(j, t.detach().numpy(), atol=2e-4, rtol=1e-4)
    for p, t, g in zip(params, t_in, grads):
        g = np.asarray(g)
        if p in layout["inputs"]:
            g = _nchw(g)
        np.testing.assert_allclose(g, t.grad.numpy(), atol=2e-4, rtol=1e-4)


@pytest.mark.slow     # about 35 s (mnist_steplr) and 70 s (resnet_bn) on 2 busy cores
@pytest.mark.parametrize("script", ["mnist_steplr.py", "resnet_bn.py"])
def test_training_script_replay(script, tmp_path):
    """The converted script (channels-last model, NHWC batches) replays 2 optimizer steps as
    torch's (validate --train-steps --replay script)."""
    import subprocess
    out = tmp_path / script
    src = ROOT / "corpus" / "training" / script
    subprocess.run([sys.executable, str(ROOT / "cli.py"), "convert", str(src), "-o", str(out), "--layout", "nhwc",
                    "--quiet"], check=True, capture_output=True, cwd=ROOT)
    assert "jaxport_layout" in out.read_text()
    run = subprocess.run([sys.executable, str(ROOT / "cli.py"), "validate", str(src), str(out), "--train-steps", "2",
                          "--replay", "script"], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "PASS  train:" in run.stdout


# ----------------------------------------------------------------------------- to_nhwc templates
def _nhwc_table_cases():
    import tomllib
    from transpiler.mapping import load_tables
    import test_layers_table as lt
    tables = load_tables()
    cases = []
    for key, entry in sorted({**tables.layers, **tables.functions}.items()):
        if not entry.nhwc_templates:
            continue
        examples = [(entry.example, [entry.inputs.get("input") or entry.inputs.get("x")])]
        examples += [(ex, specs) for k, ex, specs in lt.EXTRA if k == key]
        for example, specs in examples:
            if specs and specs[0] and parse_rank(specs[0]) == 4:
                cases.append((key, example, specs[0]))
    return cases


def parse_rank(spec: str) -> int:
    return spec.split("[", 1)[1].split("]", 1)[0].count(",") + 1


NHWC_TABLE = _nhwc_table_cases()


def test_every_to_nhwc_entry_has_a_case():
    from transpiler.mapping import load_tables
    tables = load_tables()
    keys = {k for k, e in {**tables.layers, **tables.functions}.items() if e.nhwc_templates}
    assert keys == {c[0] for c in NHWC_TABLE}
    assert {"torch.nn.Conv2d", "torch.nn.BatchNorm2d", "torch.nn.functional.max_pool2d"} <= keys


@pytest.mark.parametrize("key, example, spec", NHWC_TABLE, ids=[f"{c[0].rsplit('.', 1)[-1]}-{i}" for i, c in enumerate(NHWC_TABLE)])
def test_to_nhwc_templates_against_torch(key, example, spec):
    """The channels-last rendering of each entry, fed NHWC, equals torch fed NCHW (outputs and
    input gradients; BatchNorm also in training mode)."""
    import jax
    import jax.numpy as jnp
    import libcst as cst
    import torch
    import test_layers_table as lt
    from transpiler.mapping import load_tables
    from transpiler.render import code_of, render_call
    from transpiler.validate.weights import load_torch_state

    tables = load_tables()
    entry = tables.lookup_qualified(key).channels_last()
    call = cst.parse_expression(example)
    rendered = render_call(entry, call.args, call=call)
    assert rendered.expr is not None, rendered.message
    code = code_of(rendered.expr)
    assert "nchw" not in code.lower() and "torch_" not in code.split("(")[0]
    ns = lt._helpers_namespace(rendered.emits)
    x = lt.draw_inputs([spec], 0)[0]
    torch.manual_seed(0)
    if entry.table == "layers":
        tlayer = eval(example, {"nn": torch.nn})
        make = lambda: eval(code, ns)   # noqa: E731
        model = lt.FlaxWrap(make, entry.call)
        shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.asarray(_nhwc(x))))
        variables = load_torch_state(lt.TorchWrap(tlayer), shapes)
        torch_fn = tlayer
        apply = lambda v, a, train: model.apply(v, a, train=train, mutable=["batch_stats"] if train else False)  # noqa: E731
    else:
        F = torch.nn.functional
        fn = eval(f"lambda x: {code}", ns)      # the examples name their input x
        variables = {}
        torch_fn = eval(f"lambda x: {example}", {"F": F})
        apply = lambda v, a, train: fn(a)   # noqa: E731
    modes = [False, True] if entry.call == "batchnorm" else [False]
    for train in modes:
        if hasattr(torch_fn, "train"):
            torch_fn.train(train)
        tx = torch.tensor(x, requires_grad=True)
        tout = torch_fn(tx * 1)
        g = np.random.default_rng(1).standard_normal(tuple(tout.shape)).astype(np.float32)
        (tout * torch.tensor(g)).sum().backward()

        def scalar(a):
            out = apply(variables, a, train)
            out = out[0] if isinstance(out, tuple) else out
            return jnp.sum(jnp.transpose(out, (0, 3, 1, 2)) * g), out

        grad, out = jax.jit(jax.grad(scalar, has_aux=True))(jnp.asarray(_nhwc(x)))
        where = f"{example} -> {code} (train={train})"
        lt.assert_close(_nchw(np.asarray(out)), tout.detach().numpy(), f"{where}: output")
        lt.assert_close(_nchw(np.asarray(grad)), tx.grad.numpy(), f"{where}: grad input")


# ----------------------------------------------------------------------------- goldens
GOLDENS = ROOT / "corpus" / "expected_nhwc"
GOLDEN_CASES = ["models/mnist_cnn.py", "models/unet.py"]


@pytest.mark.parametrize("case", GOLDEN_CASES)
def test_nhwc_golden(case):
    """The --layout nhwc conversion of a few corpus models, committed for review under
    corpus/expected_nhwc/ (refresh: JAXPORT_UPDATE_GOLDENS=1 pytest tests/test_layout_nhwc.py)."""
    import difflib
    import os
    from transpiler.api import convert_bytes
    source = ROOT / "corpus" / case
    result = convert_bytes(source.read_bytes(), case, NHWC)
    golden = GOLDENS / case
    if os.environ.get("JAXPORT_UPDATE_GOLDENS") == "1":
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_bytes(result.output)
        return
    expected = golden.read_text(encoding="utf-8")
    actual = result.output.decode("utf-8")
    if actual != expected:
        diff = "".join(list(difflib.unified_diff(expected.splitlines(True), actual.splitlines(True),
                                                 str(golden), "converted"))[:80])
        pytest.fail(f"--layout nhwc conversion of {case} changed (JAXPORT_UPDATE_GOLDENS=1 to refresh):\n{diff}")


def test_analysis_failure_keeps_the_file_nchw(monkeypatch):
    from transpiler.passes import layout
    def boom(self):
        raise ValueError("boom")
    monkeypatch.setattr(layout.Layout, "run", boom)
    result = convert(MODELS / "mnist_cnn.py")
    assert code_of(result) == code_of(convert(MODELS / "mnist_cnn.py", Options(layout="nchw")))
    (d,) = [d for d in result.diagnostics if d.code == "JP202"]
    assert "analysis failed (ValueError: boom)" in d.message
