"""The ops, runtime and imports rules on whole files (transpiler/passes/ops.py, runtime.py,
imports.py): what is converted, what is kept, what is marked, and where."""
import textwrap

from transpiler.api import convert_source


def convert(src: str):
    result = convert_source(textwrap.dedent(src), "m.py")
    assert result.status != "failed", (result.diagnostics, result.traceback)
    return result.output.decode(), {(d.code, d.line) for d in result.diagnostics}


def test_unmapped_torch_names_are_spelled_in_full_marked_and_keep_import_torch():
    out, codes = convert("""
        import torch.special as S
        y = S.zeta(1.0, 2.0)
    """)
    assert "y = torch.special.zeta(1.0, 2.0)" in out
    assert "# jaxport: JP101 torch.special.zeta has no mapping" in out
    assert out.lstrip().startswith("import torch\n")
    assert ("JP101", 3) in codes


def test_aliases_resolve_to_the_same_entry():
    out, _ = convert("""
        import torch
        import torch.nn.functional as F
        from torch.nn import functional as G
        from torch.nn.functional import relu
        a = F.relu(x)
        b = G.relu(x)
        c = relu(x)
        d = torch.nn.functional.relu(x)
    """)
    assert "torch" not in out
    converted = [line.split(" = ", 1)[1] for line in out.splitlines() if " = " in line]
    assert len(set(converted)) == 1 and "relu" in converted[0]


def test_modules_and_strings_are_not_tensors():
    out, _ = convert("""
        import math
        import torch
        parts = "a,b".split(",")
        r = math.sqrt(2.0)
        y = torch.zeros(3)
    """)
    assert 'parts = "a,b".split(",")' in out
    assert "r = math.sqrt(2.0)" in out
    assert "jnp.zeros" in out


def test_layer_classes_used_as_values_become_flax_classes():
    out, _ = convert("""
        import torch
        import torch.nn as nn
        def is_dense(m: torch.nn.Module):
            return isinstance(m, (nn.Linear, nn.Embedding))
    """)
    assert "def is_dense(m: nn.Module):" in out
    assert "isinstance(m, (nn.Dense, nn.Embed))" in out


def test_random_ops_inside_modules_draw_from_flax_rng_streams():
    out, codes = convert("""
        import torch
        import torch.nn as nn
        class Noisy(nn.Module):
            def forward(self, x):
                return x + torch.randn_like(x)
        torch.manual_seed(3)
        z = torch.randn(2)
    """)
    assert 'self.make_rng("sample")' in out
    assert "rng_key = jax.random.PRNGKey(3)" in out
    assert ("JP404", 7) in codes and ("JP612", 8) in codes   # a key split from the seed


def test_data_loading_stays_on_torch():
    out, codes = convert("""
        from torch.utils.data import DataLoader
        loader = DataLoader(data, batch_size=4)
    """)
    assert "loader = torch.utils.data.DataLoader(data, batch_size=4)" in out
    assert out.lstrip().startswith("import torch\n")
    assert ("JP105", 3) in codes


def test_cuda_switches_are_removed_and_reported():
    out, codes = convert("""
        import torch
        torch.backends.cudnn.benchmark = True
        torch.cuda.manual_seed_all(0)
        x = 1
    """)
    assert out.strip() == "x = 1"
    assert ("JP401", 3) in codes and ("JP401", 4) in codes


def test_inplace_method_statements_become_assignments():
    out, codes = convert("""
        import torch
        import torch.nn as nn
        class M(nn.Module):
            def forward(self, x, y):
                x.add_(y)
                x.mul_(2)
                return x
    """)
    assert "x = x + y" in out.replace("jnp.add(x, y)", "x + y")
    assert ("JP501", 6) in codes and ("JP501", 7) in codes


def test_converting_converted_output_changes_nothing():
    src = textwrap.dedent("""
        import torch
        import torch.nn as nn
        class M(nn.Module):
            def __init__(self, d=4):
                super().__init__()
                self.fc = nn.Linear(d, d)
            def forward(self, x):
                return torch.relu(self.fc(x))
    """)
    once = convert_source(src, "m.py").output.decode()
    twice = convert_source(once, "m.py")
    assert twice.status == "copied" and twice.output.decode() == once


def test_device_moves_disappear_with_their_assignment():
    out, codes = convert("""
        import torch
        def step(model, data, target, device):
            data, target = data.to(device), target.cuda()
            model = model.to(device)
            return model(data), target
    """)
    assert "data, target =" not in out and "model = model" not in out
    assert ("JP401", 4) in codes and ("JP401", 5) in codes


def test_partial_conversion_is_idempotent():
    src = textwrap.dedent("""
        import os
        import torch
        import torch.nn.functional as F
        y = F.relu(x)
        z = torch.special.zeta(x, 2)
    """)
    once = convert_source(src, "m.py").output.decode()
    assert once.index("import torch") < once.index("import jax")   # kept where it was
    assert convert_source(once, "m.py").output.decode() == once


def test_methods_of_names_bound_to_tensors_convert_outside_forward():
    """In constructors and scripts receivers are not assumed to be tensors, but names bound to
    torch results are: ``pe.unsqueeze(0).transpose(0, 1)`` swaps axes as in torch."""
    out, codes = convert('''
        import torch
        import torch.nn as nn
        class PE(nn.Module):
            def __init__(self):
                super().__init__()
                pe = torch.zeros(5, 4)
                pe = pe.unsqueeze(0).transpose(0, 1)
                self.register_buffer("pe", pe)
            def forward(self, x):
                return x + self.pe
        t = torch.ones(2, 3).transpose(0, 1)
        shape = t.size()
        n = shape.transpose(0, 1)
    ''')
    assert "pe = jnp.swapaxes(jnp.expand_dims(pe, 0), 0, 1)" in out
    assert "t = jnp.swapaxes(jnp.ones((2, 3)), 0, 1)" in out
    assert "n = shape.transpose(0, 1)" in out    # a shape is not a tensor


def test_legacy_constructors_with_one_run_time_argument_decide_at_run_time():
    """torch.FloatTensor(n) is a size when n is an int and data otherwise: only run time knows."""
    out, _ = convert('''
        import numpy as np
        import torch
        n = 3
        state = np.arange(2)
        sized = torch.Tensor(n)
        data = torch.FloatTensor(state)
        literal = torch.FloatTensor([1, 2])
    ''')
    assert "literal = jnp.asarray([1, 2], jnp.float32)" in out
    namespace: dict = {}
    exec(compile(out, "m_jax.py", "exec"), namespace)
    assert namespace["sized"].shape == (3,) and namespace["sized"].dtype == "float32"
    assert namespace["data"].tolist() == [0.0, 1.0]


def test_index_assignment_outside_forward_rewrites_tensors_and_leaves_numpy_alone():
    out, codes = convert('''
        import numpy as np
        import torch
        rng = np.random.default_rng(0)
        images = rng.standard_normal((4, 3)).astype(np.float32)
        images[:, 0] += 1.0
        t = torch.zeros(3, 3)
        t[0] = 1.0
        t[:, 1] += 2.0
        def f(a):
            a[:, 0] = 0
            return a
    ''')
    assert "images[:, 0] += 1.0" in out                      # NumPy stays mutable
    assert "t = t.at[0].set(1.0)" in out and "t = t.at[:, 1].add(2.0)" in out
    assert "a = a.at[:, 0].set(0)" in out                    # unknown, indexed like an array
    assert {line for code, line in codes if code == "JP501"} == {8, 9, 11}


def test_attention_kernel_selection_contexts_go_with_their_arguments():
    out, codes = convert('''
        import torch.nn.functional as F
        from torch.nn.attention import SDPBackend, sdpa_kernel
        def attend(q, k, v):
            with sdpa_kernel([SDPBackend.MATH, SDPBackend.EFFICIENT_ATTENTION]):
                return F.scaled_dot_product_attention(q, k, v)
    ''')
    body = out.split("def attend")[1]
    assert body == "(q, k, v):\n    return torch_sdpa(q, k, v)\n"
    assert "from torch" not in out
    assert ("JP401", 5) in codes and not [c for c, _ in codes if c == "JP101"]
