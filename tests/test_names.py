"""Alias resolution (transpiler/names.py)."""
import libcst as cst
import pytest

from transpiler.names import collect_aliases, qualify

SOURCE = """
import os
import torch
import torch.nn as nn
from torch import optim
from torch.nn import functional as F
from torch.optim import Adam as A
from torch.autograd import Variable
import numpy as np
def f():
    import torch.distributed as dist
"""


@pytest.mark.parametrize("expr, qualified", [
    ("torch.cat", "torch.cat"),
    ("nn.Linear", "torch.nn.Linear"),
    ("F.relu", "torch.nn.functional.relu"),
    ("nn.functional.relu", "torch.nn.functional.relu"),
    ("optim.SGD", "torch.optim.SGD"),
    ("A", "torch.optim.Adam"),
    ("Variable", "torch.autograd.Variable"),
    ("dist.all_reduce", "torch.distributed.all_reduce"),
    ("np.zeros", None),
    ("os.path.join", None),
    ("x.view", None),
])
def test_qualify(expr, qualified):
    aliases = collect_aliases(cst.parse_module(SOURCE))
    assert qualify(cst.parse_expression(expr), aliases) == qualified
