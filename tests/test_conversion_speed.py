"""Shortcuts the conversion takes for speed give what the long way gives: the compile check
of a converted file made of parts, and worker start-up."""
from __future__ import annotations

import pytest

from transpiler import api
from transpiler.api import _compile_error, _compile_parts_error, convert_source

HELPER = "\n\ndef helper(x):\n    return x + 1\n"
BAD_HELPER = "\n\ndef helper(x):\n    return x +\n"


def _whole(skeleton: str, *helpers: str) -> str:
    line = "__placeholder__\n"
    assert skeleton.count(line) == 1
    return skeleton.replace(line, "".join(helpers))


@pytest.mark.parametrize("skeleton", [
    "import jax\n__placeholder__\nprint(helper(1))\n",
    # parts that compile alone but not together: the whole text is checked
    "from __future__ import barry_as_FLUFL\n__placeholder__\n",
    "import jax\n__placeholder__\nglobal helper\n",
    # a part that fails: the message and line are those of the whole text
    "import jax\n__placeholder__\nreturn 1\n",
    "import jax\n__placeholder__\ndef f(:\n    pass\n",
])
@pytest.mark.parametrize("helper", [HELPER, BAD_HELPER])
def test_parts_check_equals_compiling_the_whole_text(skeleton, helper, monkeypatch):
    monkeypatch.setattr(api, "_COMPILED", set())
    helpers = (helper.replace("helper", "h1"), helper)
    whole = _whole(skeleton, *helpers)
    assert _compile_parts_error((skeleton, *helpers), whole, "f.py") == _compile_error(whole, "f.py")


def test_converted_file_with_helpers_is_checked_by_parts(monkeypatch):
    checked = []
    real = api._compile_parts_error
    monkeypatch.setattr(api, "_compile_parts_error", lambda *a: checked.append(a[0]) or real(*a))
    src = "import torch\nimport torch.nn.functional as F\n\ndef f(x):\n    return F.pad(x, (1, 1), mode='reflect')\n"
    result = convert_source(src, "m.py")
    assert result.status == "converted"
    (parts,) = checked
    assert len(parts) > 1 and parts[0].count("__jaxport_prelude_helpers_go_here__") == 1
    assert "".join(parts[1:]) in result.output.decode()


def test_forked_workers_convert_like_one_process(tmp_path):
    from transpiler.tree import _fork_is_safe, convert_tree
    from benchmarks.conversion import make_repo
    make_repo(tmp_path / "repo", n_files=6)
    one = convert_tree([str(tmp_path / "repo")], str(tmp_path / "o1"), jobs=1)
    two = convert_tree([str(tmp_path / "repo")], str(tmp_path / "o2"), jobs=2)
    assert [r.path for r in one.records] == [r.path for r in two.records]
    assert [r.diagnostics for r in one.records] == [r.diagnostics for r in two.records]
    for record in one.records:
        assert (tmp_path / "o1" / record.path).read_bytes() == (tmp_path / "o2" / record.path).read_bytes()
    assert isinstance(_fork_is_safe(), bool)
