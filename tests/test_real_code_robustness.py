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


def test_numpy_table_built_in_a_module_helper_stays_numpy():
    # attention-is-all-you-need: a sinusoid table filled in place with NumPy in a helper method
    src = ("import numpy as np\nimport torch\nimport torch.nn as nn\n\n\n"
           "class PosEnc(nn.Module):\n"
           "    def __init__(self, d, n=10):\n"
           "        super().__init__()\n"
           "        self.register_buffer('table', self._table(n, d))\n\n"
           "    def _table(self, n, d):\n"
           "        t = np.array([[p / np.power(100, 2 * (j // 2) / d) for j in range(d)] for p in range(n)])\n"
           "        t[:, 0::2] = np.sin(t[:, 0::2])\n"
           "        t[:, 1::2] = np.cos(t[:, 1::2])\n"
           "        return torch.FloatTensor(t).unsqueeze(0)\n\n"
           "    def forward(self, x):\n"
           "        return x + self.table[:, :x.size(1)]\n")
    r = convert_source(src, "pos.py")
    out = r.output.decode()
    assert "t[:, 0::2] = np.sin(t[:, 0::2])" in out and ".at[" not in out
    import numpy as np
    import jax
    import torch
    ns: dict = {}
    exec(compile(out, "pos_conv.py", "exec"), ns)
    tns: dict = {}
    exec(compile(src, "pos.py", "exec"), tns)
    x = np.random.default_rng(0).standard_normal((2, 7, 6)).astype(np.float32)
    model = ns["PosEnc"](6)
    got = model.apply(model.init(jax.random.PRNGKey(0), x), x)
    want = tns["PosEnc"](6)(torch.tensor(x)).numpy()
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6, atol=1e-6)


def test_weight_sharing_into_a_child_layer_is_reported_not_left_to_crash():
    src = ("import torch.nn as nn\n\n\n"
           "class Dec(nn.Module):\n"
           "    def __init__(self):\n"
           "        super().__init__()\n"
           "        self.emb = nn.Embedding(10, 4)\n\n"
           "    def forward(self, x):\n"
           "        return self.emb(x)\n\n\n"
           "class Seq(nn.Module):\n"
           "    def __init__(self, share=True):\n"
           "        super().__init__()\n"
           "        self.dec = Dec()\n"
           "        self.prj = nn.Linear(4, 10, bias=False)\n"
           "        if share:\n"
           "            self.prj.weight = self.dec.emb.weight\n\n"
           "    def forward(self, x):\n"
           "        return self.prj(self.dec(x))\n")
    r = convert_source(src, "seq.py")
    assert ("JP304", 19) in diags(r)
    assert "# self.prj.weight = self.dec.emb.weight" in r.output.decode()


def _validate(src: str, tmp_path, cls: str, spec: dict):
    """Convert ``src``, import both versions, compare ``cls`` with the validation harness."""
    from transpiler.validate.harness import compare_module, load_module_from_path
    orig, conv = tmp_path / "orig_case.py", tmp_path / "conv_case.py"
    orig.write_text(src)
    conv.write_bytes(convert_source(src, "case.py").output)
    t = load_module_from_path(orig, f"orig_{tmp_path.name}")
    j = load_module_from_path(conv, f"conv_{tmp_path.name}")
    return compare_module(getattr(t, cls), getattr(j, cls), spec)


def test_field_updated_by_a_layer_builder_becomes_its_own_attribute(tmp_path):
    # pytorch-cifar ResNeXt: _make_layer doubles self.bottleneck_width after each stage
    src = ("import torch.nn as nn\nimport torch.nn.functional as F\n\n\n"
           "class Stage(nn.Module):\n"
           "    def __init__(self, width, blocks, growth=2):\n"
           "        super().__init__()\n"
           "        self.width = width\n"
           "        self.in_ch = 3\n"
           "        self.a = self._make(blocks)\n"
           "        self.b = self._make(blocks)\n"
           "        self.fc = nn.Linear(self.in_ch + self.width - width * 4, 2)\n\n"
           "    def _make(self, blocks):\n"
           "        layers = []\n"
           "        for _ in range(blocks):\n"
           "            layers.append(nn.Conv2d(self.in_ch, self.width, 3, padding=1))\n"
           "            self.in_ch = self.width\n"
           "        self.width *= 2\n"
           "        return nn.Sequential(*layers)\n\n"
           "    def forward(self, x):\n"
           "        x = F.relu(self.a(x))\n"
           "        x = F.relu(self.b(x))\n"
           "        return self.fc(x.mean((2, 3)))\n")
    r = _validate(src, tmp_path, "Stage", {"init": {"width": 3, "blocks": 2}, "inputs": ["float32[2, 3, 5, 5]"]})
    assert r.status == "pass", r.message


def test_helper_returning_an_instance_of_a_class_field_passes_the_training_flag(tmp_path):
    # pytorch-cifar PNASNet: self.layer2 = self._downsample(...) returns self.cell_type(...)
    src = ("import torch.nn as nn\nimport torch.nn.functional as F\n\n\n"
           "class Cell(nn.Module):\n"
           "    def __init__(self, cin, cout, stride=1):\n"
           "        super().__init__()\n"
           "        self.conv = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)\n"
           "        self.bn = nn.BatchNorm2d(cout)\n\n"
           "    def forward(self, x):\n"
           "        return F.relu(self.bn(self.conv(x)))\n\n\n"
           "class Net(nn.Module):\n"
           "    def __init__(self, cell_type=Cell, planes=4):\n"
           "        super().__init__()\n"
           "        self.cell_type = cell_type\n"
           "        self.in_planes = 3\n"
           "        self.down = self._downsample(planes)\n"
           "        self.head = nn.Linear(planes, 2)\n\n"
           "    def _downsample(self, planes):\n"
           "        layer = self.cell_type(self.in_planes, planes, stride=2)\n"
           "        self.in_planes = planes\n"
           "        return layer\n\n"
           "    def forward(self, x):\n"
           "        return self.head(self.down(x).mean((2, 3)))\n")
    assert "call_layer(self.down, x, train)" in convert_source(src, "net.py").output.decode()
    r = _validate(src, tmp_path, "Net", {"inputs": ["float32[3, 3, 6, 6]"], "train_forward": True})
    assert r.status == "pass", r.message


def test_optimizer_built_in_init_from_parameters_is_not_a_parameter_count():
    # minimalRL: the module owns its optimizer; that line stays for the training rule
    src = ("import torch.nn as nn\nimport torch.optim as optim\n\n\n"
           "class Policy(nn.Module):\n"
           "    def __init__(self):\n"
           "        super().__init__()\n"
           "        self.fc = nn.Linear(4, 2)\n"
           "        self.optimizer = optim.Adam(self.parameters(), lr=0.01)\n\n"
           "    def forward(self, x):\n"
           "        return self.fc(x)\n")
    r = convert_source(src, "policy.py")
    assert "JP303" not in [c for c, _ in diags(r)]
    assert "self.optimizer = optax.adam(learning_rate=0.01)" in r.output.decode()


def test_deprecated_init_spellings_fold_like_the_underscore_forms():
    src = ("import torch.nn as nn\nfrom torch.nn import init\n\n\n"
           "class Net(nn.Module):\n"
           "    def __init__(self):\n"
           "        super().__init__()\n"
           "        self.conv = nn.Conv2d(3, 4, 3)\n"
           "        self.fc = nn.Linear(4, 2)\n"
           "        init.kaiming_normal(self.conv.weight, mode='fan_out')\n"
           "        init.constant(self.conv.bias, 0)\n"
           "        init.normal(self.fc.weight, std=1e-3)\n\n"
           "    def forward(self, x):\n"
           "        return self.fc(self.conv(x).mean((2, 3)))\n")
    r = convert_source(src, "net.py")
    assert not [c for c, _ in diags(r) if c in ("JP101", "JP305")], diags(r)
    out = r.output.decode()
    assert """kernel_init=nn.initializers.variance_scaling(torch_gain('leaky_relu', 0) ** 2, 'fan_out', "normal")""" in out
    assert "bias_init=nn.initializers.constant(0)" in out and "kernel_init=nn.initializers.normal(stddev=1e-3)" in out
