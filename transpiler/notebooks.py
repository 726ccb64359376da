"""Jupyter notebooks (``.ipynb``, nbformat 4): convert the code cells, keep everything else.

The code cells are joined into **one** Python text, in notebook order, each preceded by a
marker statement ``"jaxport:cell N"`` (N: the cell's 1-based position among all cells,
markdown cells included, as a reader counts them from the top). The text goes through the
converter as a single file, so an ``import torch.nn as nn`` in cell 1 resolves ``nn.Linear``
in cell 5, and the imports and helpers the converted code needs are added once, to the first
code cell. Converting each cell on its own would get this wrong: a cell without imports would
not know that ``nn`` is ``torch.nn``. The converted text is split back at the markers (which
no pass rewrites: they are plain string statements); anything the converter put above the
first marker goes to the first code cell.

* Markdown and raw cells, cell metadata and notebook metadata are left exactly as they were.
* Outputs and execution counts are **kept**: they are what the PyTorch code produced, useful
  to compare against when the converted notebook is run again. jaxport never deletes content.
* IPython syntax (``%magic``, ``!shell``, ``x = !cmd``, ``obj?``) is hidden from the parser
  behind a placeholder statement and restored as it was; a cell magic (``%%bash`` ...) makes
  its whole cell opaque: it is not converted.
* The notebook is written back as JSON with the input's indentation (nbformat's 1 when it
  cannot tell), non-ASCII characters as they are, and a trailing newline; a notebook where no
  cell changed is copied byte for byte.
* Positions: a diagnostic's ``line`` and ``col`` are those of the joined text (the text the
  HTML report and ``--diff`` show, markers included), and its message starts with
  ``cell N, line L:`` — the position inside the cell as Jupyter shows it.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass

from . import diagnostics as diag
from .api import FileResult, Options, convert_source

SUFFIX = ".ipynb"
_MARKER = '"jaxport:cell {}"'
_MARKER_RE = re.compile(r'^"jaxport:cell (\d+)"$')
# IPython magics, shell escapes, help queries, and `from __future__` imports (legal at the top
# of any cell, but not in the middle of the joined text): hidden while converting
_MAGIC_RE = re.compile(r"^(\s*)(?:[%!].*|[\w.]+\s*=\s*[%!].*|[\w.]+\?{1,2}|from\s+__future__\s+import\b.*)$")
_PLACEHOLDER = '{}"jaxport:magic {}"'
_PLACEHOLDER_RE = re.compile(r'^(\s*)"jaxport:magic (\d+)"$')


@dataclass
class NotebookResult:
    result: FileResult
    original_text: str | None = None    # the joined code cells, markers included
    output_text: str | None = None


@dataclass
class _Cell:
    index: int          # 1-based position among all cells
    marker_line: int    # line of its marker in the joined text
    lines: int          # lines of code after the marker
    source: str


def is_notebook(path: str) -> bool:
    return path.endswith(SUFFIX)


def _source(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else str(src)


def _hide_magics(text: str, magics: list[str]) -> str:
    out = []
    for line in text.split("\n"):
        m = _MAGIC_RE.match(line)
        if m and not line.lstrip().startswith("#"):
            out.append(_PLACEHOLDER.format(m.group(1), len(magics)))
            magics.append(line)
        else:
            out.append(line)
    return "\n".join(out)


def _restore_magics(text: str, magics: list[str]) -> str:
    def restore(line: str) -> str:
        m = _PLACEHOLDER_RE.match(line)
        if m and int(m.group(2)) < len(magics):
            return magics[int(m.group(2))]
        return line
    return "\n".join(restore(line) for line in text.split("\n"))


def _indent(data: bytes) -> int:
    """The indentation of the input's JSON (1, nbformat's, when it cannot tell)."""
    m = re.match(rb"\{\r?\n( +)\"", data)
    return len(m.group(1)) if m and len(m.group(1)) <= 8 else 1


def join_cells(nb: dict) -> tuple[str, list[_Cell], list[str]]:
    """The code cells as one Python text, the cells' places in it, and the hidden magics."""
    parts: list[str] = []
    cells: list[_Cell] = []
    magics: list[str] = []
    line = 0
    for index, cell in enumerate(nb["cells"], 1):
        if not isinstance(cell, dict) or cell.get("cell_type") != "code":
            continue
        source = _source(cell)
        if source.lstrip().startswith("%%"):
            continue    # a cell magic: not Python
        body = _hide_magics(source, magics)
        body = body if body.endswith("\n") or not body else body + "\n"
        n = body.count("\n")
        parts.append(_MARKER.format(index) + "\n" + body)
        cells.append(_Cell(index, line + 1, n, source))
        line += 1 + n
    return "".join(parts), cells, magics


def _split(text: str, cells: list[_Cell]) -> dict[int, str] | None:
    """Converted text → {cell index: code}; None if the markers did not survive in order."""
    sections: dict[int, list[str]] = {}
    head: list[str] = []
    current: list[str] = head
    order: list[int] = []
    for line in text.split("\n"):
        m = _MARKER_RE.match(line)
        if m:
            order.append(int(m.group(1)))
            current = sections.setdefault(int(m.group(1)), [])
        else:
            current.append(line)
    if order != [c.index for c in cells]:
        return None
    out = {}
    for k, c in enumerate(cells):
        lines = sections[c.index]
        if k == 0 and any(l.strip() for l in head):
            lines = head + lines
        out[c.index] = "\n".join(lines)
    return out


def _locate(d: diag.Diagnostic, cells: list[_Cell]) -> diag.Diagnostic:
    for c in cells:
        if c.marker_line < d.line <= c.marker_line + c.lines:
            return diag.Diagnostic(d.line, d.col, d.code, d.severity,
                                   f"cell {c.index}, line {d.line - c.marker_line}: {d.message}")
    return d


def _failed(data: bytes, path: str, code: str, message: str) -> NotebookResult:
    return NotebookResult(FileResult(path, "failed", data, [diag.make(code, message)]))


def convert_notebook(data: bytes, path: str, options: Options | None = None) -> NotebookResult:
    """Convert a notebook's bytes. Never raises for a bad notebook: it becomes a diagnostic
    and the notebook is copied unchanged."""
    try:
        nb = json.loads(data.decode("utf-8-sig"))
    except (UnicodeDecodeError, ValueError) as exc:
        return _failed(data, path, "JP002", f"not a notebook: invalid JSON ({exc})")
    if not isinstance(nb, dict) or not isinstance(nb.get("cells"), list):
        if isinstance(nb, dict) and "worksheets" in nb:
            message = "nbformat 3 notebooks are not supported: upgrade it with `jupyter nbconvert --to notebook`"
        else:
            message = "not a notebook: no 'cells' list"
        return _failed(data, path, "JP002", message)

    joined, cells, magics = join_cells(nb)
    shown = _restore_magics(joined, magics)     # what a reviewer sees: the cells as written
    if not cells:
        return NotebookResult(FileResult(path, "copied", data), shown, shown)
    converted = convert_source(joined, path, options or Options())
    diagnostics = [_locate(d, cells) for d in converted.diagnostics]
    if converted.status in ("copied", "failed"):
        result = FileResult(path, converted.status, data, diagnostics,
                            traceback=converted.traceback)
        return NotebookResult(result, shown, shown)

    new_text = converted.output.decode("utf-8")
    sections = _split(new_text, cells)
    if sections is None:
        result = FileResult(path, "failed", data, diagnostics + [diag.make(
            "JP003", "internal error: the converter lost the notebook's cell markers")])
        return NotebookResult(result, shown, shown)

    changed = False
    for c in cells:
        cell = nb["cells"][c.index - 1]
        code = _restore_magics(sections[c.index], magics).rstrip("\n")
        if c.source.endswith("\n"):
            code += "\n"
        if code == c.source:
            continue
        changed = True
        cell["source"] = code.splitlines(keepends=True) if isinstance(cell.get("source"), list) else code
    output = data
    if changed:
        output = (json.dumps(nb, indent=_indent(data), ensure_ascii=False) + "\n").encode("utf-8")
    result = FileResult(path, converted.status, output, diagnostics, converted.torch_call_sites,
                        converted.converted_call_sites, changed=output != data)
    return NotebookResult(result, shown, _restore_magics(new_text, magics) if changed else shown)
