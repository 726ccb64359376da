"""Shapes of real-world PyTorch code (seen in public repositories) that once crashed or
mis-converted jaxport: each case is a small original snippet with the same structure."""
from __future__ import annotations

from transpiler.api import convert_source


def diags(result):
    return [(d.code, d.line) for d in result.diagnostics]


def test_backward_at_module_level_is_reported_not_a_crash():
    # a script whose backward() / step() sit at the top level (no loop, no function):
    # the leftover check walks the module body, a sequence of statements
    src = ("import torch\n"
           "model = torch.nn.Linear(2, 1)\n"
           "opt = torch.optim.SGD(model.parameters(), lr=0.1)\n"
           "x = torch.ones(4, 2)\n"
           "loss = model(x).sum()\n"
           "loss.backward()\n"
           "opt.step()\n")
    r = convert_source(src, "script.py")
    assert r.status == "partial"
    assert "JP003" not in [c for c, _ in diags(r)]
    assert ("JP602", 6) in diags(r) and ("JP602", 7) in diags(r)
    compile(r.output.decode(), "script.py", "exec")
