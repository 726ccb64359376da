"""Notebook conversion (transpiler.notebooks) with the real passes: code cells converted as
one text (names imported in one cell resolve in later ones), everything else kept, positions
reported as the joined text's line plus ``cell N, line L`` in the message."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from transpiler.notebooks import convert_notebook, join_cells

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "notebooks" / "train.ipynb"


def nb_bytes(cells, indent=1, **extra) -> bytes:
    nb = {"cells": cells, "metadata": {"kernelspec": {"name": "python3"}}, "nbformat": 4,
          "nbformat_minor": 5, **extra}
    return (json.dumps(nb, indent=indent, ensure_ascii=False) + "\n").encode()


def code(source, **extra) -> dict:
    return {"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [],
            "source": source, **extra}


@pytest.fixture(scope="module")
def converted():
    data = FIXTURE.read_bytes()
    return data, json.loads(data), convert_notebook(data, "train.ipynb")


def src(cell) -> str:
    return "".join(cell["source"])


def test_code_cells_converted_with_names_from_earlier_cells(converted):
    data, before, nb = converted
    assert nb.result.status == "partial" and nb.result.changed
    after = json.loads(nb.result.output)
    # `F` was imported in cell 2; cell 3 uses it: resolved across cells
    assert "jax.nn.relu(x)" in src(after["cells"][2]) and "F.relu" not in src(after["cells"][2])
    assert "torch.tensor" not in src(after["cells"][2])
    # imports the converted code needs land in the first code cell, once
    first = src(after["cells"][1])
    assert "import jax\n" in first and "torch.nn.functional" not in first
    assert sum("import jax\n" in src(c) for c in after["cells"]) == 1
    compile("\n".join(src(c) for c in after["cells"][1:3]).replace("%matplotlib inline", ""),
            "nb", "exec")


def test_everything_but_code_is_kept(converted):
    data, before, nb = converted
    after = json.loads(nb.result.output)
    assert after["metadata"] == before["metadata"]
    assert [c["cell_type"] for c in after["cells"]] == [c["cell_type"] for c in before["cells"]]
    for b, a in zip(before["cells"], after["cells"]):
        assert set(a) == set(b)
        assert {k: v for k, v in a.items() if k != "source"} == {k: v for k, v in b.items() if k != "source"}
        assert isinstance(a["source"], list)
    assert after["cells"][0] == before["cells"][0]           # markdown untouched
    assert after["cells"][3] == before["cells"][3]           # %%bash cell: not Python, untouched
    assert after["cells"][2]["outputs"] == before["cells"][2]["outputs"]   # outputs kept
    assert any("%matplotlib inline" in line for line in after["cells"][1]["source"])
    assert after["cells"][4]["source"][0] == "files = !ls\n"             # magics restored
    # written the way Jupyter writes notebooks: indent 1, trailing newline, UTF-8 as is
    text = nb.result.output.decode("utf-8")
    assert text.endswith("}\n") and text.startswith('{\n "cells": [\n  {\n   "cell_type"')
    assert "—" in text


def test_diagnostic_positions(converted):
    data, before, nb = converted
    [d] = [d for d in nb.result.diagnostics if d.code == "JP101"]
    assert d.message.startswith("cell 5, line 2: ") and "torch.special.zeta" in d.message
    joined = nb.original_text.splitlines()
    assert joined[d.line - 1][d.col:].startswith("torch.special.zeta(x, 2)")
    assert joined[d.line - 3] == '"jaxport:cell 5"'
    # the review texts are the joined cells, magics shown as written
    assert "%matplotlib inline" in nb.original_text and "jax.nn.relu" in nb.output_text


def test_notebook_without_torch_is_copied_byte_for_byte():
    data = nb_bytes([code(["x = 1\n", "print(x)"]), {"cell_type": "markdown", "metadata": {},
                                                      "source": ["torch is mentioned in prose"]}])
    nb = convert_notebook(data, "a.ipynb")
    assert nb.result.status == "copied" and nb.result.output == data and not nb.result.changed
    nb = convert_notebook(nb_bytes([]), "empty.ipynb")
    assert nb.result.status == "copied"


def test_string_sources_and_indentation_are_preserved():
    data = nb_bytes([code("import torch\ny = torch.relu(torch.ones(2))"),
                     code("z = torch.relu(y)\n")], indent=2)
    nb = convert_notebook(data, "s.ipynb")
    assert nb.result.status == "converted"
    text = nb.result.output.decode()
    assert text.startswith('{\n  "cells"')
    after = json.loads(text)
    assert isinstance(after["cells"][0]["source"], str)
    assert after["cells"][1]["source"] == "z = jax.nn.relu(y)\n"     # trailing newline kept
    assert not after["cells"][0]["source"].endswith("\n")


@pytest.mark.parametrize("data, needle", [
    (b"{not json", "invalid JSON"),
    (b'{"worksheets": [], "nbformat": 3}', "nbformat 3"),
    (b'[1, 2]', "no 'cells'"),
    (b"\xff\xfe\x00", "invalid JSON"),
])
def test_bad_notebooks_fail_and_are_kept(data, needle):
    nb = convert_notebook(data, "bad.ipynb")
    assert nb.result.status == "failed" and nb.result.output == data
    assert [d.code for d in nb.result.diagnostics] == ["JP002"]
    assert needle in nb.result.diagnostics[0].message


def test_syntax_error_points_at_its_cell():
    data = nb_bytes([code("import torch\n"), code("def f(:\n    pass\n")])
    nb = convert_notebook(data, "s.ipynb")
    assert nb.result.status == "failed" and nb.result.output == data
    [d] = nb.result.diagnostics
    assert d.code == "JP001" and d.line > 3                 # cell 2's marker is joined line 3
    assert d.message.startswith(f"cell 2, line {d.line - 3}: syntax error")


def test_join_cells_places():
    nb = {"cells": [code("a = 1\nb = 2"), {"cell_type": "markdown", "source": "x"},
                    code(["%%time\n", "x = 1"]), code("")]}
    text, cells, magics = join_cells(copy.deepcopy(nb))
    assert text == '"jaxport:cell 1"\na = 1\nb = 2\n"jaxport:cell 4"\n'
    assert [(c.index, c.marker_line, c.lines) for c in cells] == [(1, 1, 2), (4, 4, 0)]


def test_future_imports_at_the_top_of_later_cells_are_legal():
    """Each cell is compiled on its own in Jupyter: `from __future__` may start any cell."""
    data = nb_bytes([code("import torch\n"),
                     code("from __future__ import print_function\nx = torch.zeros(2)\n")])
    nb = convert_notebook(data, "f.ipynb")
    assert nb.result.status == "converted", nb.result.diagnostics
    cells = json.loads(nb.result.output)["cells"]
    assert src(cells[1]) == "from __future__ import print_function\nx = jnp.zeros(2)\n"
