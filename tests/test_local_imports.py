"""Files that take torch's names or their model's parts from another module of the same
tree: ``from .parts import *`` (Pytorch-UNet's unet_model.py gets ``nn`` only that way) and
``from .parts import Block`` of an nn.Module whose converted form takes the ``train`` flag."""
from __future__ import annotations

import importlib
import sys

import pytest

from transpiler.api import convert_bytes
from transpiler.tree import convert_tree

PARTS = '''import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))
'''

STAR_MODEL = '''from .parts import *


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = Block(3, 4)
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        return self.head(self.block(x))
'''

NAMED_MODEL = '''import torch.nn as nn
from .parts import Block


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = Block(3, 4)
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        return self.head(self.block(x))
'''


def _package(root, name, model):
    pkg = root / name
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "parts.py").write_text(PARTS)
    (pkg / "model.py").write_text(model)
    return pkg


def _import(root, dotted):
    sys.path.insert(0, str(root))
    try:
        importlib.invalidate_caches()
        return importlib.import_module(dotted)
    finally:
        sys.path.remove(str(root))
        for key in [k for k in sys.modules if k.split(".")[0] == dotted.split(".")[0]]:
            del sys.modules[key]


@pytest.mark.parametrize("model", [STAR_MODEL, NAMED_MODEL], ids=["star", "named"])
def test_model_from_local_parts_converts_and_trains_like_torch(tmp_path, model):
    from transpiler.validate.harness import compare_module

    name = "starpkg" if model is STAR_MODEL else "namedpkg"
    src = _package(tmp_path / "src", name, model) if (tmp_path / "src").mkdir() is None else None
    out = tmp_path / "out"
    convert_tree([str(src)], str(out))
    converted = (out / "model.py").read_text()
    assert "def setup(self)" in converted and "import flax.linen as nn" in converted
    assert "self.block(x, train=train)" in converted     # Block's BatchNorm follows training
    (out / "__init__.py").write_text("")
    torch_net = _import(tmp_path / "src", f"{name}.model").Net
    jax_dir = tmp_path / "jax"
    jax_dir.mkdir()
    (out).rename(jax_dir / name)
    flax_net = _import(jax_dir, f"{name}.model").Net
    result = compare_module(torch_net, flax_net, {"inputs": ["float32[2, 3, 6, 6]"]}, examples=3)
    assert result.status == "pass", result.message
    assert any("train" in str(check) for check in result.checks)


def test_star_import_without_a_file_on_disk_leaves_the_file_as_it_was():
    data = STAR_MODEL.encode()
    result = convert_bytes(data, "model.py")
    assert result.status == "copied" and result.output == data


def test_star_import_of_a_module_whose_all_leaves_out_nn(tmp_path):
    pkg = tmp_path / "src" / "p"
    pkg.mkdir(parents=True)
    (pkg / "parts.py").write_text(PARTS + '\n__all__ = ["Block"]\n')
    (pkg / "model.py").write_text(STAR_MODEL)
    data = (pkg / "model.py").read_bytes()
    result = convert_bytes(data, "model.py", origin=str(pkg / "model.py"))
    assert result.status == "copied" and result.output == data
