"""Other libraries' torch integrations redirected to their JAX flavour
(transpiler/passes/thirdparty.py, mappings/third_party.toml): einops layers."""
import textwrap

import numpy as np
import pytest

from transpiler.api import convert_source

pytest.importorskip("einops")
jax = pytest.importorskip("jax")
torch = pytest.importorskip("torch")
import jax.numpy as jnp  # noqa: E402

SOURCE = '''
import torch.nn as nn
from einops.layers.torch import Rearrange, Reduce

class Patches(nn.Module):
    def __init__(self, p=2, dim=6):
        super().__init__()
        self.to_patches = nn.Sequential(
            Rearrange("b c (h p1) (w p2) -> b (h w) (p1 p2 c)", p1=p, p2=p),
            nn.Linear(p * p * 3, dim))
        self.pool = Reduce("b n d -> b d", "mean")
    def forward(self, x):
        return self.pool(self.to_patches(x))
'''


def test_einops_torch_layers_become_flax_layers_and_compute_the_same():
    result = convert_source(textwrap.dedent(SOURCE), "patches.py")
    out = result.output.decode()
    assert "from einops.layers.flax import Rearrange, Reduce" in out
    assert "sizes={'p1': self.p, 'p2': self.p}" in out
    assert ("JP106", 3) in {(d.code, d.line) for d in result.diagnostics}
    namespace: dict = {}
    exec(compile(out, "patches_jax.py", "exec"), namespace)
    torch.manual_seed(0)
    exec_ns: dict = {}
    exec(compile(textwrap.dedent(SOURCE), "patches.py", "exec"), exec_ns)
    tmod = exec_ns["Patches"]().eval()
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 4)).astype(np.float32)
    fmod = namespace["Patches"]()
    linear = tmod.to_patches[1]
    params = {"params": {"to_patches": {"layers_1": {
        "kernel": jnp.asarray(linear.weight.detach().numpy().T), "bias": jnp.asarray(linear.bias.detach().numpy())}}}}
    np.testing.assert_allclose(np.asarray(fmod.apply(params, jnp.asarray(x))),
                               tmod(torch.from_numpy(x)).detach().numpy(), rtol=1e-5, atol=1e-6)


def test_names_without_a_flax_counterpart_stay_on_torch_and_are_reported():
    result = convert_source("import torch\nfrom einops.layers.torch import Rearrange, Mystery\n", "m.py")
    assert "from einops.layers.torch import Rearrange, Mystery" in result.output.decode()
    assert [(d.code, d.line) for d in result.diagnostics if d.code == "JP101"] == [("JP101", 2)]
