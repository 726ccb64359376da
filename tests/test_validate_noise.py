"""Float32 rounding noise in validation: a float32 check that fails is re-judged against the
same quantity computed by a float64 copy of the torch module (``harness.noise_check``).

The model: a conv whose output feeds InstanceNorm2d. The norm subtracts the per-channel mean,
so the conv bias has no effect and its true gradient is exactly zero; in float32 both torch and
flax return rounding noise (a sum of ~500 terms of size ~50 that cancel), of different sizes.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import pytest

from transpiler.validate import harness
from transpiler.validate.harness import NOISE_NOTE, Check, compare_files, noise_check

MODELS = '''\
import torch
import torch.nn as nn
import torch.nn.functional as F


class ConvInstanceNorm(nn.Module):
    def __init__(self, c_in=3, c=8):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c, 3, padding=1)
        self.norm = nn.InstanceNorm2d(c, affine=True)
        self.head = nn.Conv2d(c, 2, 1)

    def forward(self, x):
        return self.head(F.relu(self.norm(self.conv(x))))
'''

# small inputs: a small per-channel spread, so large gradients flow into the conv output
SPEC = '''
[ConvInstanceNorm]
inputs = ["float32[B, 3, 16, 16] range(-0.05, 0.05)"]
dims = { B = [2, 2] }
'''

CALL = "        return self.head(jax.nn.relu(self.norm(self.conv(x))))\n"
# seeded bug: a gradient path around the norm (forward unchanged: h - stop_gradient(h) == 0),
# so the conv bias gets a small non-zero gradient where the true one is zero
LEAK = ("        h = self.conv(x)\n"
        "        return self.head(jax.nn.relu(self.norm(h) + 1e-3 * (h - jax.lax.stop_gradient(h))))\n")


@lru_cache(maxsize=None)
def converted() -> str:
    from transpiler.api import convert_source
    result = convert_source(MODELS, "inorm.py")
    assert result.status == "converted", result.diagnostics
    text = result.output.decode("utf-8")
    assert text.count(CALL) == 1, text
    return text


def write_case(tmp_path, text: str, spec: str = SPEC):
    (tmp_path / "inorm.py").write_text(MODELS, encoding="utf-8")
    (tmp_path / "inorm.toml").write_text(spec, encoding="utf-8")
    (tmp_path / "inorm_jax.py").write_text(text, encoding="utf-8")
    return tmp_path / "inorm.py", tmp_path / "inorm_jax.py"


def failed(result) -> list[str]:
    return [c.name for c in result.checks if c.status != "pass"]


# --- noise_check on arrays ----------------------------------------------------------------

def _fail(name="grad:params/b") -> Check:
    return Check(name, "fail", 1.0, 1.0, "2/100 elements outside ...")


def test_noise_check_accepts_noise_of_a_zero_quantity_and_keeps_the_errors():
    rng = np.random.default_rng(0)
    ref64 = rng.standard_normal(100) * 1e-9              # the true value: ~0
    ref32 = ref64 + rng.uniform(-1, 1, 100) * 3e-4       # torch's float32 noise
    got = ref64 + rng.uniform(-1, 1, 100) * 9e-4         # flax's, 3x as large
    judged = noise_check(_fail(), got, ref32, ref64)
    assert judged.status == "pass" and judged.message.startswith(NOISE_NOTE)
    assert (judged.max_abs_err, judged.max_rel_err) == (1.0, 1.0)   # the measured errors stay
    assert "max|torch - float64| = 0.000297" in judged.message


def test_noise_check_rejects_beyond_the_multiple_of_torch_noise():
    rng = np.random.default_rng(1)
    ref64 = np.zeros(100)
    ref32 = rng.uniform(-1, 1, 100) * 1e-4
    noise = np.abs(ref32).max()
    got = ref64.copy()
    got[7] = (harness.NOISE_MULTIPLE + 1) * noise         # one element a bit too far
    judged = noise_check(_fail(), got, ref32, ref64)
    assert judged.status == "fail" and "1/100 elements beyond" in judged.message
    assert "not float32 noise" in judged.message and judged.message.startswith("2/100 elements")
    got[7] = (harness.NOISE_MULTIPLE - 1) * noise
    assert noise_check(_fail(), got, ref32, ref64).status == "pass"
    # torch rounded exactly (no measured noise): only the usual tolerance, now against float64
    assert noise_check(_fail(), got, ref64, ref64).status == "fail"
    assert noise_check(_fail(), ref64 + 5e-6, ref64, ref64).status == "pass"


def test_noise_check_refuses_differences_that_are_not_rounding():
    ref64 = np.array([1.0, -2.0, 0.5])
    ref32 = ref64 + np.array([0.0, 0.01, 0.0])     # torch far from its float64 self: not rounding
    judged = noise_check(_fail(), ref64 + 0.01, ref32, ref64)
    assert judged.status == "fail" and "not rounding" in judged.message
    nan = noise_check(_fail(), np.array([np.nan, 0, 0]), ref32, ref64)
    assert nan.status == "fail" and "non-finite" in nan.message


# --- a converted model --------------------------------------------------------------------

@pytest.mark.parametrize("seed", [0, 1])
def test_instance_norm_bias_gradient_fails_in_float32_and_passes_as_noise(tmp_path, monkeypatch, seed):
    original, conv = write_case(tmp_path, converted())
    monkeypatch.setattr(harness, "FLOAT64_REFERENCE", False)
    (raw,) = compare_files(original, conv, seed=seed, examples=1)
    assert raw.status == "fail" and failed(raw) == ["grad:params/conv/bias"], raw
    monkeypatch.setattr(harness, "FLOAT64_REFERENCE", True)
    (r,) = compare_files(original, conv, seed=seed, examples=1)
    assert r.status == "pass", r
    (bias,) = [c for c in r.checks if c.name == "grad:params/conv/bias"]
    assert bias.message.startswith(NOISE_NOTE) and "float32 comparison: " in bias.message
    assert bias.max_abs_err == pytest.approx(raw.checks[[c.name for c in raw.checks].index(
        "grad:params/conv/bias")].max_abs_err)                 # the measured error is reported
    assert f"1 check(s) {NOISE_NOTE}: grad:params/conv/bias" in r.message
    # every other check passed in float32 on its own
    assert [c.name for c in r.checks if c.message] == ["grad:params/conv/bias"]


def test_hypothesis_engine_passes_and_reports_the_noise(tmp_path):
    from transpiler.validate.spec import as_module_spec, parse_spec_file
    from transpiler.validate.strategies import hypothesis_compare
    original, conv = write_case(tmp_path, converted())
    tmod = harness.load_module_from_path(original)
    fmod = harness.load_module_from_path(conv)
    spec = as_module_spec(parse_spec_file(tmp_path / "inorm.toml")["ConvInstanceNorm"], "ConvInstanceNorm")
    r = hypothesis_compare(tmod.ConvInstanceNorm, fmod.ConvInstanceNorm, spec, examples=3, seed=0)
    assert r.status == "pass", r
    assert NOISE_NOTE in r.message
    bias = next(c for c in r.checks if c.name == "grad:params/conv/bias")
    assert bias.status == "pass" and bias.message.startswith(NOISE_NOTE) and bias.max_abs_err > 1e-5


@pytest.mark.parametrize("seed", [0, 1])
def test_directional_gradients_are_rejudged_too(tmp_path, seed):
    """``grad_params = "directional"``: <grad, v> sums, re-judged with float64 gradients. With a
    tolerance of 1e-9 every sum fails in float32; all are rounding noise (the noise of a sum is
    bounded by torch's per-element errors times |v|), and the leak is still found."""
    from transpiler.validate.spec import as_module_spec, parse_spec_file
    spec_text = SPEC + 'grad_params = "directional"\n'
    original, conv = write_case(tmp_path, converted(), spec_text)
    spec = as_module_spec(parse_spec_file(tmp_path / "inorm.toml")["ConvInstanceNorm"], "ConvInstanceNorm")
    tmod = harness.load_module_from_path(original)
    fmod = harness.load_module_from_path(conv)
    r = harness.compare_module(tmod.ConvInstanceNorm, fmod.ConvInstanceNorm, spec, seed,
                               rtol=1e-9, atol=1e-9, examples=1)
    directions = [c for c in r.checks if "(direction" in c.name]
    assert len(directions) == 3 and r.status == "pass", r
    assert all(c.message.startswith(NOISE_NOTE) and "bound on torch's rounding error" in c.message
               for c in directions if c.message)
    assert any(c.message for c in directions)
    (tmp_path / "inorm_jax.py").write_text(converted().replace(CALL, LEAK), encoding="utf-8")
    (bad,) = compare_files(original, conv, seed=seed, examples=1)
    assert bad.status == "fail" and all("(direction" in n for n in failed(bad)), bad
    assert all("not float32 noise" in c.message for c in bad.checks if c.status == "fail")


def test_seeded_bias_gradient_bug_still_fails(tmp_path):
    """A real error in exactly the quantity whose true value is zero is not taken for noise."""
    original, conv = write_case(tmp_path, converted().replace(CALL, LEAK))
    for seed in (0, 1):
        (r,) = compare_files(original, conv, seed=seed, examples=1)
        assert r.status == "fail" and failed(r) == ["grad:params/conv/bias"], r
        (bias,) = [c for c in r.checks if c.status == "fail"]
        assert "float64 reference: " in bias.message and "not float32 noise" in bias.message
