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


def test_parameter_count_printed_in_init_is_commented_out_with_jp303():
    # nanoGPT / minGPT print the parameter count from __init__; flax has no parameters in setup
    src = ("import torch.nn as nn\n\n\n"
           "class Net(nn.Module):\n"
           "    def __init__(self):\n"
           "        super().__init__()\n"
           "        self.body = nn.ModuleDict(dict(fc=nn.Linear(4, 4)))\n"
           "        n = sum(p.numel() for p in self.body.parameters())\n"
           "        print('%d parameters' % n)\n"
           "        print(self.size_in_k())\n"
           "        print('built')\n\n"
           "    def size_in_k(self):\n"
           "        return sum(p.numel() for p in self.parameters()) / 1e3\n\n"
           "    def forward(self, x):\n"
           "        return self.body.fc(x)\n")
    r = convert_source(src, "net.py")
    assert [(c, l) for c, l in diags(r) if c == "JP303"] == [("JP303", 8), ("JP303", 9), ("JP303", 10)]
    out = r.output.decode()
    assert "print('built')" in out and "# print('%d parameters' % n)" in out
    assert "return self.body['fc'](x)" in out
