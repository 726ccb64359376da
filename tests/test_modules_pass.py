"""The nn.Module → flax.linen.Module rewrite (transpiler/passes/modules.py), checked on
source text and by running the converted code."""
import textwrap

import pytest

from transpiler.api import convert_source


def convert(src: str):
    result = convert_source(textwrap.dedent(src), "m.py")
    assert result.status in ("converted", "partial"), (result.diagnostics, result.traceback)
    return result.output.decode(), result


def codes(result):
    return [(d.code, d.line) for d in result.diagnostics]


def test_constructor_arguments_become_fields_and_init_becomes_setup():
    out, _ = convert("""
        import torch.nn as nn
        class Block(nn.Module):
            def __init__(self, dim, scale=2.0, name_hint="b", use_gate=True, sizes=[1, 2]):
                super(Block, self).__init__()
                self.dim = dim
                self.inner = dim * scale
            def forward(self, x):
                return x * self.inner
    """)
    assert "class Block(nn.Module):" in out
    assert "    dim: Any\n" in out
    assert "    scale: float = 2.0\n" in out
    assert '    name_hint: str = "b"\n' in out
    assert "    use_gate: bool = True\n" in out
    assert "    sizes: Any = (1, 2)\n" in out          # dataclass fields cannot default to a list
    assert "def setup(self):" in out
    assert "super" not in out
    assert "self.dim = dim" not in out                 # restating a field is dropped
    assert "self.inner = self.dim * self.scale" in out
    assert "def __call__(self, x, train: bool = False):" in out
    assert "import flax.linen as nn" in out and "import torch" not in out


def test_field_defaults_are_converted_like_any_other_expression():
    out, result = convert("""
        import torch
        import torch.nn as nn
        class Block(nn.Module):
            def __init__(self, dim, dtype=torch.float32, *, index_dtype=torch.long):
                super().__init__()
                self.dim = dim
            def forward(self, x):
                return x.astype(self.dtype)
    """)
    assert "    dtype: Any = jnp.float32\n" in out and "    index_dtype: Any = jnp.int32\n" in out
    assert "torch" not in out.split("class Block")[1]
    assert "JP101" not in [c for c, _ in codes(result)]


def test_parameters_rebound_in_init_are_read_once_from_the_field():
    out, _ = convert("""
        import torch.nn as nn
        class Net(nn.Module):
            def __init__(self, width, depth):
                super().__init__()
                layers = []
                for _ in range(depth):
                    layers.append(width)
                    width = width * 2
                self.widths = layers
    """)
    assert "        width = self.width\n" in out
    assert "for _ in range(self.depth):" in out


def test_train_flag_reaches_custom_submodules_loops_and_helpers():
    out, _ = convert("""
        import torch.nn as nn
        class Inner(nn.Module):
            def forward(self, x):
                return x * 2 if self.training else x
        class Outer(nn.Module):
            def __init__(self, n):
                super().__init__()
                self.first = Inner()
                self.blocks = nn.ModuleList([Inner() for _ in range(n)])
                self.pairs = nn.ModuleList([])
                for _ in range(n):
                    self.pairs.append(nn.ModuleList([Inner(), Inner()]))
            def encode(self, x):
                return self.first(x)
            def forward(self, x):
                x = self.encode(x)
                for b in self.blocks:
                    x = b(x)
                for a, c in self.pairs:
                    x = a(x) + c(x)
                return self.blocks[0](x)
    """)
    assert "return x * 2 if train else x" in out
    assert "def encode(self, x, train: bool = False):" in out
    assert "return self.first(x, train=train)" in out
    assert "x = self.encode(x, train=train)" in out
    assert "x = b(x, train=train)" in out
    assert "x = a(x, train=train) + c(x, train=train)" in out
    assert "return self.blocks[0](x, train=train)" in out
    # ModuleList built by append: a local list assigned once (flax freezes lists set in setup)
    assert "_pairs = []" in out and "_pairs.append([Inner(), Inner()])" in out
    assert "self.pairs = _pairs" in out


def test_converted_module_runs_under_flax():
    out, _ = convert("""
        import torch
        import torch.nn as nn
        class Scale(nn.Module):
            def __init__(self, n, factor=3.0):
                super().__init__()
                self.w = nn.Parameter(torch.ones(n))
                self.register_buffer("offset", torch.zeros(n))
                self.factor = factor
            def forward(self, x):
                return x * self.w * self.factor + self.offset
    """)
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp
    namespace: dict = {}
    exec(compile(out, "converted.py", "exec"), namespace)
    model = namespace["Scale"](n=3)
    variables = model.init(jax.random.PRNGKey(0), jnp.ones((2, 3)))
    assert variables["params"]["w"].shape == (3,)
    y = model.apply(variables, jnp.full((2, 3), 2.0))
    assert jnp.allclose(y, 6.0)


def test_unconvertible_statements_are_marked_and_reported_at_their_line():
    out, result = convert("""
        import torch.nn as nn
        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.fc = nn.Linear(2, 2)
                nn.init.eye_(self.fc.weight)
            def forward(self, x):
                self.last = x
                return self.fc(x)
    """)
    assert ("JP305", 7) in codes(result)
    assert ("JP302", 9) in codes(result)
    assert "# nn.init.eye_(self.fc.weight)" in out
    assert "# jaxport: JP302" in out
    assert result.status == "partial"


def test_no_grad_blocks_are_unwrapped():
    out, result = convert("""
        import torch
        def evaluate(model, x):
            with torch.no_grad():
                y = model(x)
                z = y + 1
            return z
    """)
    assert "with" not in out
    assert "    y = model(x)\n    z = y + 1\n" in out
    assert ("JP402", 4) in codes(result)


def test_index_assignment_becomes_functional_update():
    out, _ = convert("""
        import torch.nn as nn
        class Net(nn.Module):
            def forward(self, x, mask):
                x[:, 0] = 0
                x[mask] += 1
                return x
    """)
    assert "x = x.at[:, 0].set(0)" in out
    assert "x = x.at[mask].add(1)" in out


def test_dict_item_assignment_outside_modules_is_untouched():
    src = "import torch\nstate = {}\nstate['step'] = 1\n"
    out, _ = convert(src)
    assert "state['step'] = 1" in out


def test_locals_in_the_constructor_are_the_fields():
    """CvT's ``kwargs = dict(locals())``: in setup() the constructor arguments are fields."""
    out, _ = convert("""
        import torch.nn as nn
        class Staged(nn.Module):
            def __init__(self, *, s1_dim=4, s2_dim=6):
                super().__init__()
                kwargs = dict(locals())
                self.dims = [kwargs[f"{s}_dim"] for s in ("s1", "s2")]
            def forward(self, x):
                return x * sum(self.dims)
    """)
    namespace: dict = {}
    exec(compile(out, "staged_jax.py", "exec"), namespace)
    import jax.numpy as jnp
    module = namespace["Staged"](s2_dim=10)
    assert float(module.apply({}, jnp.ones(()))) == 14.0


def test_submodules_built_by_module_level_functions_get_the_train_flag():
    """MobileViT's ``self.conv1 = conv_bn(3, 8)`` (a function returning nn.Sequential with
    BatchNorm): the call passes train=, so training mode uses and updates batch statistics."""
    out, _ = convert("""
        import torch.nn as nn
        def conv_bn(inp, oup):
            return nn.Sequential(nn.Conv2d(inp, oup, 3, padding=1), nn.BatchNorm2d(oup), nn.SiLU())
        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.conv1 = conv_bn(3, 4)
            def forward(self, x):
                return self.conv1(x)
    """)
    assert "return self.conv1(x, train=train)" in out
    namespace: dict = {}
    exec(compile(out, "net_jax.py", "exec"), namespace)
    import jax
    import jax.numpy as jnp
    model = namespace["Net"]()
    variables = model.init(jax.random.PRNGKey(0), jnp.ones((2, 3, 5, 5)))
    _, updates = model.apply(variables, jnp.ones((2, 3, 5, 5)), train=True, mutable=["batch_stats"])
    assert not jnp.allclose(updates["batch_stats"]["conv1"]["layers_1"]["mean"], 0.0)
