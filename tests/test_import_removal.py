"""Torch imports leave the converted file wherever they are: at the top level (the cheap path:
only top-level statements are looked at when the file imports nothing deeper) and inside
functions, try blocks and one-line compound statements (the full walk)."""
from __future__ import annotations

from transpiler.api import convert_source


def _converted(src: str) -> str:
    result = convert_source(src, "m.py")
    assert result.status in ("converted", "partial"), result.diagnostics
    return result.output.decode()


def test_top_level_imports_go_and_their_comments_stay():
    out = _converted("# torch first\nimport torch  # the framework\nimport torch.nn.functional as F\n\n"
                     "def f(x):\n    return F.relu(torch.tanh(x))\n")
    assert "import torch" not in out and "torch.nn" not in out
    assert "# torch first" in out and "# the framework" in out
    assert "jax.nn.relu(jnp.tanh(x))" in out


def test_imports_inside_functions_and_try_blocks_go():
    out = _converted("import torch\n\ndef f(x):\n    import torch.nn.functional as F\n    return F.relu(x)\n\n"
                     "try:\n    import torch.distributed as dist\nexcept ImportError:\n    dist = None\n"
                     "y = torch.zeros(2)\n")
    assert "import torch" not in out, out
    assert "jax.nn.relu(x)" in out and "jnp.zeros(2)" in out


def test_an_import_after_a_colon_or_a_semicolon_goes():
    out = _converted("import torch\nif True: import torch.nn.functional as F\n"
                     "x = 1; import torch.nn as nn\ny = F.relu(torch.ones(2))\nz = nn.ReLU()\n")
    assert "import torch" not in out, out
    assert "\nif True: pass\n" in out and "\nx = 1\n" in out       # nothing left dangling
