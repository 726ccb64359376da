"""torch weight-initialisation code folded into flax initializers
(transpiler/passes/initialization.py), checked by initialising the converted modules."""
import textwrap

import numpy as np
import pytest

from transpiler.api import convert_source

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402

SOURCE = '''
import torch
import torch.nn as nn

class Direct(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 4)
        self.cls = nn.Parameter(torch.zeros(1, 5))
        nn.init.constant_(self.fc.weight, 0.25)
        self.fc.bias.data.fill_(-1.0)
        with torch.no_grad():
            nn.init.ones_(self.cls)
    def forward(self, x):
        return self.fc(x)

class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(4, 4)
        self.norm = nn.LayerNorm(4)
    def forward(self, x):
        return self.norm(self.proj(x))

class Looped(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = Block()
        self.head = nn.Linear(4, 2)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.constant_(m.weight, 0.5)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
    def forward(self, x):
        return self.head(self.block(x))

class Applied(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(6, 4)
        self.head = nn.Linear(4, 6)
        self.apply(self._init_weights)
    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=3.0, std=0.02)
    def forward(self, idx):
        return self.head(self.emb(idx))
'''


@pytest.fixture(scope="module")
def converted():
    result = convert_source(textwrap.dedent(SOURCE), "init.py")
    namespace: dict = {}
    exec(compile(result.output.decode(), "init_jax.py", "exec"), namespace)
    return result, namespace


def init(namespace, name, x):
    return namespace[name]().init(jax.random.PRNGKey(0), x)["params"]


def test_direct_init_calls_become_layer_and_param_initializers(converted):
    result, ns = converted
    params = init(ns, "Direct", jnp.ones((2, 3)))
    np.testing.assert_array_equal(params["fc"]["kernel"], np.full((3, 4), 0.25))
    np.testing.assert_array_equal(params["fc"]["bias"], np.full((4,), -1.0))
    np.testing.assert_array_equal(params["cls"], np.ones((1, 5)))
    assert sorted(d.line for d in result.diagnostics if d.code == "JP308" and d.line < 15) == [10, 11, 13]
    assert "JP305" not in [d.code for d in result.diagnostics]


def test_modules_loop_reaches_submodules(converted):
    _, ns = converted
    params = init(ns, "Looped", jnp.ones((2, 4)))
    for layer in (params["head"], params["block"]["proj"]):
        assert np.all(np.asarray(layer["kernel"]) == 0.5)
        assert np.all(np.asarray(layer["bias"]) == 0.0)


def test_apply_with_init_function_is_folded_and_removed(converted):
    result, ns = converted
    out = result.output.decode()
    assert "_init_weights" not in out and "self.apply" not in out
    params = init(ns, "Applied", jnp.zeros((2, 3), jnp.int32))
    emb = np.asarray(params["emb"]["embedding"])
    assert abs(emb.mean() - 3.0) < 0.01 and 0.01 < emb.std() < 0.03
    assert np.all(np.asarray(params["head"]["bias"]) == 0)
    assert np.asarray(params["head"]["kernel"]).std() < 0.03


LOCALS_SOURCE = '''
import math
import torch.nn as nn

class Helper(nn.Module):
    def __init__(self, ntoken, ninp):
        super().__init__()
        self.encoder = nn.Embedding(ntoken, ninp)
        self.decoder = nn.Linear(ninp, ntoken)
        self.init_weights()
    def init_weights(self):
        initrange = 0.1
        nn.init.uniform_(self.encoder.weight, -initrange, initrange)
        nn.init.zeros_(self.decoder.bias)
        nn.init.uniform_(self.decoder.weight, -initrange, initrange)
    def forward(self, idx):
        return self.decoder(self.encoder(idx))

class LaterLocal(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.fc = nn.Linear(d, d)
        bound = 2 / math.sqrt(d)
        nn.init.uniform_(self.fc.weight, -bound, bound)
    def forward(self, x):
        return self.fc(x)
'''


def test_initializers_reading_locals_get_their_values_inlined():
    """The initializer moves into the layer's constructor call in setup(): locals it read in a
    helper method (or later in __init__) must travel with it, constructor arguments as fields."""
    result = convert_source(textwrap.dedent(LOCALS_SOURCE), "locals.py")
    namespace: dict = {}
    exec(compile(result.output.decode(), "locals_jax.py", "exec"), namespace)
    params = namespace["Helper"](ntoken=50, ninp=8).init(jax.random.PRNGKey(0), jnp.zeros((2, 3), jnp.int32))["params"]
    for table in (params["encoder"]["embedding"], params["decoder"]["kernel"]):
        table = np.asarray(table)
        assert table.min() >= -0.1 and table.max() <= 0.1 and table.std() > 0.04
    assert np.all(np.asarray(params["decoder"]["bias"]) == 0)
    kernel = np.asarray(namespace["LaterLocal"](d=16).init(jax.random.PRNGKey(1), jnp.ones((1, 16)))["params"]["fc"]["kernel"])
    assert np.abs(kernel).max() <= 0.5 and np.abs(kernel).max() > 0.4   # U(-2/4, 2/4), not torch's 1/4


SCRIPT_APPLY_SOURCE = '''
import torch
import torch.nn as nn

def weights_init(m):
    classname = m.__class__.__name__
    if classname.find('Conv') != -1:
        nn.init.normal_(m.weight.data, 0.0, 0.02)
    elif classname.find('BatchNorm') != -1:
        nn.init.normal_(m.weight.data, 1.0, 0.02)
        nn.init.constant_(m.bias.data, 0)

class Generator(nn.Module):
    def __init__(self):
        super().__init__()
        self.main = nn.Sequential(nn.ConvTranspose2d(4, 8, 4, 1, 0, bias=False), nn.BatchNorm2d(8),
                                  nn.ReLU(True), nn.Conv2d(8, 3, 3, 1, 1, bias=False))
    def forward(self, x):
        return self.main(x)

device = torch.device("cpu")
netG = Generator().to(device)
netG.apply(weights_init)
'''


def test_script_level_apply_of_an_init_function_folds_into_the_class():
    """DCGAN: ``netG.apply(weights_init)`` with the ``classname.find('Conv') != -1`` dispatch
    becomes the layers' initializers; the statement and the now unused function go."""
    result = convert_source(textwrap.dedent(SCRIPT_APPLY_SOURCE), "dcgan.py")
    out = result.output.decode()
    assert "weights_init" not in out and ".apply(" not in out
    assert sorted(d.line for d in result.diagnostics if d.code == "JP308") == [5, 23]
    namespace: dict = {}
    exec(compile(out, "dcgan_jax.py", "exec"), namespace)
    params = namespace["Generator"]().init(jax.random.PRNGKey(0), jnp.ones((2, 4, 1, 1)))["params"]["main"]
    for conv in ("layers_0", "layers_3"):
        kernel = np.asarray(params[conv]["kernel"])
        assert abs(kernel.mean()) < 0.01 and 0.015 < kernel.std() < 0.025
    scale = np.asarray(params["layers_1"]["scale"])
    assert abs(scale.mean() - 1.0) < 0.03 and scale.std() < 0.04
    assert np.all(np.asarray(params["layers_1"]["bias"]) == 0)


GUARDED_SOURCE = '''
import torch.nn as nn

def exists(v):
    return v is not None

class Guarded(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.norm = nn.LayerNorm(4)
        self.apply(self.init_weight)
    @staticmethod
    def init_weight(m):
        if isinstance(m, nn.Linear):
            nn.init.constant_(m.weight, 0.5)
            if isinstance(m, nn.Linear) and exists(m.bias):
                nn.init.constant_(m.bias, 0.25)
        elif isinstance(m, nn.LayerNorm):
            nn.init.constant_(m.bias, 1.5)
            nn.init.constant_(m.weight, 2.0)
    def forward(self, x):
        return self.norm(self.fc(x))
'''


def test_bias_guards_in_init_functions_take_every_usual_form():
    result = convert_source(textwrap.dedent(GUARDED_SOURCE), "guarded.py")
    assert "JP305" not in [d.code for d in result.diagnostics]
    namespace: dict = {}
    exec(compile(result.output.decode(), "guarded_jax.py", "exec"), namespace)
    params = namespace["Guarded"]().init(jax.random.PRNGKey(0), jnp.ones((1, 4)))["params"]
    np.testing.assert_array_equal(params["fc"]["kernel"], np.full((4, 4), 0.5))
    np.testing.assert_array_equal(params["fc"]["bias"], np.full((4,), 0.25))
    np.testing.assert_array_equal(params["norm"]["scale"], np.full((4,), 2.0))
    np.testing.assert_array_equal(params["norm"]["bias"], np.full((4,), 1.5))


NAMED_PARAMETERS_SOURCE = '''
import math
import torch
import torch.nn as nn

class Attention(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.qkv = nn.Linear(d, 3 * d)
        self.c_proj = nn.Linear(d, d)
    def forward(self, x):
        return self.c_proj(self.qkv(x)[..., :x.shape[-1]])

class GPT(nn.Module):
    def __init__(self, d=8, n_layer=2):
        super().__init__()
        self.attn = Attention(d)
        self.out_proj = nn.Linear(d, d)
        for pn, p in self.named_parameters():
            if pn.endswith("proj.weight"):
                torch.nn.init.constant_(p, 0.125)
    def forward(self, x):
        return self.out_proj(self.attn(x))

class ScaledGPT(nn.Module):
    def __init__(self, d=8, n_layer=2):
        super().__init__()
        self.attn = Attention(d)
        for pn, p in self.named_parameters():
            if pn.endswith("c_proj.weight"):
                torch.nn.init.normal_(p, std=0.02 / math.sqrt(2 * n_layer))
    def forward(self, x):
        return self.attn(x)
'''


def test_named_parameters_suffix_loops_fold_where_the_initializer_can_move():
    """GPT's re-initialisation of every '*proj.weight': folded into the matching layers of the
    class and of the classes it builds; refused (JP305) when the initializer reads the outer
    class's fields (n_layer), which the inner class does not have."""
    result = convert_source(textwrap.dedent(NAMED_PARAMETERS_SOURCE), "gpt.py")
    codes = {(d.code, d.line) for d in result.diagnostics}
    assert ("JP308", 19) in codes and ("JP305", 29) in codes
    namespace: dict = {}
    exec(compile(result.output.decode(), "gpt_jax.py", "exec"), namespace)
    params = namespace["GPT"]().init(jax.random.PRNGKey(0), jnp.ones((1, 8)))["params"]
    np.testing.assert_array_equal(params["attn"]["c_proj"]["kernel"], np.full((8, 8), 0.125))
    np.testing.assert_array_equal(params["out_proj"]["kernel"], np.full((8, 8), 0.125))
    assert not np.allclose(params["attn"]["qkv"]["kernel"], 0.125)
    namespace["ScaledGPT"]().init(jax.random.PRNGKey(0), jnp.ones((1, 8)))   # still runs
