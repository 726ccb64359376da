"""Diagnostics' positions: ``context.node_starts`` (one partial print of the original tree)
gives libcst PositionProvider's start of any node of it."""
from __future__ import annotations

from pathlib import Path

import libcst as cst
import pytest
from libcst.metadata import MetadataWrapper, PositionProvider

from transpiler.context import node_starts
from transpiler.walk import walk

ROOT = Path(__file__).resolve().parent.parent

TRICKY = '''#!/usr/bin/env python
# header comment

"""Docstring."""
import torch; import torch.nn as nn
x = 1 ;  y = (2 +
     3)


# comment before a decorator
@torch.no_grad()
# comment between decorators
@staticmethod
def f(a,
      b=lambda q: q):   # trailing
    """doc"""
    if a:
        return b
    # a comment after the body, indented
# a comment after the body, not indented
class Net(nn.Module):
    def forward(self, x): return x * \\
        2

s = """multi
line"""; t = s
if x:
    pass
elif y:
    pass
else:
    pass
'''


def _all_nodes(module: cst.Module) -> list[cst.CSTNode]:
    found: list[cst.CSTNode] = []

    class _Every(cst.CSTVisitor):
        def on_visit(self, node) -> bool:
            found.append(node)
            return True

    walk(module, _Every())
    return found


def _sources():
    yield "tricky", TRICKY
    yield "tricky_crlf", TRICKY.replace("\n", "\r\n")
    for path in sorted((ROOT / "corpus" / "models").glob("*.py"))[:12]:
        yield path.name, path.read_text(encoding="utf-8")


@pytest.mark.parametrize("name,text", list(_sources()), ids=[n for n, _ in _sources()])
def test_starts_are_position_providers(name, text):
    module = cst.parse_module(text)
    nodes = _all_nodes(module)
    starts = node_starts(module, nodes)
    provider = MetadataWrapper(module, unsafe_skip_copy=True).resolve(PositionProvider)
    compared = 0
    for node in nodes:
        if node in provider:
            start = provider[node].start
            assert starts[id(node)] == (start.line, start.column), cst.Module([]).code_for_node(node)[:60]
            compared += 1
    assert compared > 50


def test_nodes_of_another_tree_are_left_out():
    module = cst.parse_module("import torch\nx = torch.ones(1)\n")
    stranger = cst.parse_expression("torch.zeros(2)")
    last = module.body[-1]
    assert node_starts(module, [stranger, last]) == {id(last): (2, 0)}
