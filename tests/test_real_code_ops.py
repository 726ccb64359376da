"""Ops and tables needed by real-world PyTorch code (shapes seen in public repositories),
each checked against torch: the converted code is executed under JAX (with jit and grad
where real training would use them) and compared with the original under torch."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from transpiler.api import convert_source

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402


def convert(src: str):
    r = convert_source(src, "case.py")
    assert r.status in ("converted", "partial"), r.diagnostics
    return r


def load(src: str, name: str):
    """Convert ``src``, execute the output, return (torch function, jax function)."""
    torch_ns: dict = {}
    exec(compile(src, "orig.py", "exec"), torch_ns)
    r = convert(src)
    jax_ns: dict = {}
    exec(compile(r.output.decode(), "conv.py", "exec"), jax_ns)
    return torch_ns[name], jax_ns[name], r


def test_avg_pool2d_is_differentiable_under_jit():
    # pytorch-cifar ResNet: out = F.avg_pool2d(out, 4) before the classifier
    src = ("import torch.nn.functional as F\n\n\n"
           "def pool(x):\n"
           "    return F.avg_pool2d(x, 2, padding=1).sum() + F.avg_pool1d(x[0], 3).sum()\n")
    tf, jf, _ = load(src, "pool")
    x = np.random.default_rng(0).standard_normal((2, 3, 5, 6)).astype(np.float32)
    xt = torch.tensor(x, requires_grad=True)
    tf(xt).backward()
    got = jax.jit(jax.grad(jf))(jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(got), xt.grad.numpy(), rtol=1e-6, atol=1e-6)


def test_cat_stack_clamp_passed_as_functions():
    # lucidrains-style: map(partial(torch.cat, dim=-1), pairs), partial(torch.clamp, min=, max=)
    src = ("from functools import partial\n"
           "import torch\n\n\n"
           "def f(a, b, x):\n"
           "    k, v = map(partial(torch.cat, dim=-1), ((a, b), (b, a)))\n"
           "    s = list(map(partial(torch.stack, dim=1), [(a, b)]))[0]\n"
           "    clip = partial(torch.clamp, min=-0.5, max=0.5)\n"
           "    both = partial(torch.concat, dim=0)((a, b))\n"
           "    return k - v, s, clip(x), both, partial(torch.clip, max=0.1)(x)\n")
    tf, jf, r = load(src, "f")
    assert not [d for d in r.diagnostics if d.code == "JP103"]
    rng = np.random.default_rng(1)
    a, b, x = (rng.standard_normal(s).astype(np.float32) for s in ((2, 3), (2, 3), (4,)))
    want = tf(*map(torch.tensor, (a, b, x)))
    got = jax.jit(jf)(a, b, x)
    for g, w in zip(got, want):
        np.testing.assert_allclose(np.asarray(g), w.numpy(), rtol=1e-6)


# ------------------------------------------------- mappings/functions_special.toml examples
import tomllib  # noqa: E402
from pathlib import Path  # noqa: E402

import test_ops_tables as tables_test  # noqa: E402  (the example checker of functions.toml)

_SPECIAL_FILE = Path(__file__).resolve().parent.parent / "mappings" / "functions_special.toml"
SPECIAL = {key: tables_test._entry("functions", key, raw)
           for key, raw in tomllib.loads(_SPECIAL_FILE.read_text()).items()}


@pytest.mark.parametrize("key", sorted(SPECIAL))
def test_special_function_example_matches_torch(key, monkeypatch):
    monkeypatch.setitem(tables_test.BY_TABLE, "functions", {**tables_test.FUNCTIONS, **SPECIAL})
    tables_test.test_entry_example("functions", key)


def test_special_expm1_in_a_noise_schedule():
    # diffusion code: log_snr → sigma² via torch.special.expm1(softplus(...))
    src = ("import torch\nimport torch.nn.functional as F\n\n\n"
           "def sigma2(t):\n"
           "    return torch.special.expm1(F.softplus(t * 4.0 - 2.0)) + torch.special.expit(t)\n")
    tf, jf, r = load(src, "sigma2")
    assert not [d for d in r.diagnostics if d.severity != "info"], r.diagnostics
    t = np.linspace(0, 1, 7, dtype=np.float32)
    np.testing.assert_allclose(np.asarray(jax.jit(jf)(t)), tf(torch.tensor(t)).numpy(), rtol=1e-5)


def test_autocast_decorator_and_stored_context_run_in_float32():
    # denoising-diffusion: @autocast('cuda', enabled=False) on a schedule function;
    # nanoGPT: ctx = nullcontext() if cpu else torch.amp.autocast(device_type=..., dtype=...)
    src = ("from contextlib import nullcontext\n"
           "import torch\n"
           "from torch.amp import autocast\n\n\n"
           "@autocast('cuda', enabled=False)\n"
           "def alpha(t):\n"
           "    return torch.cos(t * 1.5) ** 2\n\n\n"
           "def run(t, device_type='cpu'):\n"
           "    ctx = nullcontext() if device_type == 'gpu' else torch.amp.autocast(device_type=device_type, dtype=torch.bfloat16, enabled=False)\n"
           "    with ctx:\n"
           "        a = alpha(t)\n"
           "    with torch.autocast('cpu', enabled=False):\n"
           "        return a + torch.cuda.is_bf16_supported() * 0.0\n")
    tf, jf, r = load(src, "run")
    codes = [(d.code, d.line) for d in r.diagnostics]
    # the decorator and the stored context become Float32Context(); a with block is inlined
    assert ("JP201", 6) in codes and ("JP201", 12) in codes and ("JP613", 15) in codes, codes
    out = r.output.decode()
    code = "\n".join(l for l in out.split("def alpha")[1].splitlines() if not l.strip().startswith("#"))
    assert "@Float32Context()" in out and "autocast(" not in code and "torch" not in code
    t = np.linspace(0, 1, 5, dtype=np.float32)
    np.testing.assert_allclose(np.asarray(jf(jnp.asarray(t))), tf(torch.tensor(t)).numpy(), rtol=1e-6)


def test_torch_compile_is_the_identity():
    # nanoGPT: model = torch.compile(model) # requires PyTorch 2.0
    src = ("import torch\n\n\n"
           "def g(x):\n"
           "    return torch.tanh(x) * 2\n\n\n"
           "def f(x):\n"
           "    h = torch.compile(g, mode='reduce-overhead', fullgraph=True)\n"
           "    return h(x)\n")
    r = convert(src)
    assert "h = g\n" in r.output.decode() and not [d for d in r.diagnostics if d.severity != "info"]
    ns: dict = {}
    exec(compile(r.output.decode(), "conv.py", "exec"), ns)
    x = np.linspace(-1, 1, 5, dtype=np.float32)
    np.testing.assert_allclose(np.asarray(ns["f"](jnp.asarray(x))), np.tanh(x) * 2, rtol=1e-6)
