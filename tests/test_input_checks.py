"""CPython has the last word on the input: a file it refuses is reported as a syntax error
(JP001, at its line) whatever libcst and the passes make of it, and however the check is
scheduled (first for deeply nested text, else only when something went wrong)."""
from __future__ import annotations

import pytest

from transpiler import api
from transpiler.api import convert_source


@pytest.mark.parametrize("src,line", [
    ("import torch\n\nreturn torch.zeros(1)\n", 3),                   # libcst parses it
    ("# torch, in a comment only\nreturn 1\n", 2),                     # no torch import: not converted
    ("import torch\nprint 'hello'\n", 2),                              # libcst refuses it too
    ("import torch\n\ndef f(x):\n    return " + "(" * 201 + "torch.relu(x)" + ")" * 201 + "\n", 4),
    ("import torch\n\ndef f(x):\n\tif x:\n        return torch.relu(x)\n\treturn x\n", 5),   # tabs after spaces
])
def test_a_file_cpython_refuses_is_a_syntax_error(src, line):
    result = convert_source(src, "bad.py")
    assert result.status == "failed"
    assert [(d.code, d.line) for d in result.diagnostics] == [("JP001", line)], result.diagnostics


def test_a_valid_file_is_compiled_once_only_when_nothing_goes_wrong(monkeypatch):
    compiled = []
    original = api._compile_error
    monkeypatch.setattr(api, "_compile_error", lambda text, path: compiled.append(text) or original(text, path))
    src = "import torch\n\ndef f(x):\n    return torch.relu(x)\n"
    assert convert_source(src, "ok.py").status == "converted"
    assert src not in compiled          # the output's check stands for the input's


def test_deep_nesting_is_compiled_first(monkeypatch):
    order = []
    original = api._compile_error
    monkeypatch.setattr(api, "_compile_error", lambda text, path: order.append("compile") or original(text, path))
    src = "import torch\nx = " + "[" * 120 + "torch.relu" + "]" * 120 + "\n"
    convert_source(src, "deep.py")
    assert order and order[0] == "compile"
    assert api._may_nest_deeply(src) and not api._may_nest_deeply("import torch\nx = ((1))\n" * 40)
