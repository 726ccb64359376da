"""Report renderers (transpiler.report) on hand-built runs: JSON contract, Markdown, the
self-contained HTML page, and the terminal summary."""
from __future__ import annotations

import json
import os
import re
import stat
from html.parser import HTMLParser

import pytest

from transpiler import report
from transpiler.api import FileResult
from transpiler.diagnostics import Diagnostic
from transpiler.tree import FileRecord, RunResult

ORIGINAL = "import torch\n\n\ndef f(x):\n    y = torch.special.zeta(x, 2)\n    return torch.relu(y)\n"
CONVERTED = ("import jax\nimport torch\n\n\ndef f(x):\n"
             "    y = torch.special.zeta(x, 2)  # jaxport: JP101 torch.special.zeta has no mapping\n"
             "    return jax.nn.relu(y)\n")


def rec(path, status, diags=(), sites=(0, 0), texts=(None, None), python=True, changed=False):
    result = FileResult(path, status, b"", list(diags), sites[0], sites[1], changed=changed)
    return FileRecord(path, path, result, python, texts[0], texts[1])


def d(code, severity, line, col, message):
    return Diagnostic(line=line, col=col, code=code, severity=severity, message=message)


@pytest.fixture
def run() -> RunResult:
    return RunResult(records=[
        rec("a/model.py", "partial",
            [d("JP101", "warning", 5, 8, "torch.special.zeta has no mapping | <b>bold</b>"),
             d("JP401", "info", 1, 0, "device placement removed")],
            sites=(2, 1), texts=(ORIGINAL, CONVERTED), changed=True),
        rec("a/util.py", "copied"),
        rec("b/broken.py", "failed", [d("JP001", "error", 3, 0, "syntax error: `def f(:`")],
            sites=(0, 0), texts=(ORIGINAL, ORIGINAL)),
        rec("b/blob.py", "failed", [d("JP002", "error", 1, 0, "file contains NUL bytes")]),
        rec("data/x.csv", "copied", python=False),
        rec("c/clean.py", "converted", [], sites=(3, 3), texts=("import torch\n", "import jax\n"),
            changed=True),
    ], notes=["ext: skipped: symlink to outside the input tree (not followed)"])


def test_json_contract(run):
    data = json.loads(report.render_json(run))
    assert data["summary"] == {"files": 6, "converted": 1, "partial": 1, "failed": 2,
                               "torch_call_sites": 5, "converted_call_sites": 4}
    assert [f["path"] for f in data["files"]] == [r.path for r in run.records]
    first = data["files"][0]
    assert first == {"path": "a/model.py", "status": "partial", "diagnostics": [
        {"code": "JP401", "severity": "info", "line": 1, "col": 0, "message": "device placement removed"},
        {"code": "JP101", "severity": "warning", "line": 5, "col": 8,
         "message": "torch.special.zeta has no mapping | <b>bold</b>"}]}
    assert list(first["diagnostics"][0]) == ["code", "severity", "line", "col", "message"]


def test_markdown(run):
    md = report.render_markdown(run)
    assert md.splitlines()[0] == "# jaxport conversion report"
    assert "| 6 | 1 | 1 | 2 | 2 | 4/5 (80%) |" in md
    # messages are escaped: a '|' cannot break a table, HTML is not interpreted
    assert "no mapping \\| \\<b\\>bold\\</b\\>" in md
    assert "| `a/model.py` | partial | 1/2 (50%) | 0 | 1 | 1 |" in md
    assert "| `a/util.py` | copied | - | 0 | 0 | 0 |" in md
    # needs attention: errors first (by path), then warnings
    attention = md.split("## Needs attention first")[1].split("##")[0]
    order = re.findall(r"^1\. `([^`]+)`", attention, flags=re.M)
    assert order == ["b/blob.py", "b/broken.py", "a/model.py"]
    assert "| JP001 | error | 1 | syntax error |" in md
    assert "- 5:8 **JP101** (warning)" in md
    assert "## Skipped" in md


def test_md_code_handles_backticks():
    assert report.md_code("a`b") == "``a`b``"
    assert report.md_code("`x") == "`` `x ``"
    assert report.md_code("p|q") == "`p\\|q`"


class _Tags(HTMLParser):
    VOID = {"meta", "input", "col", "br", "img", "link"}

    def __init__(self):
        super().__init__()
        self.stack, self.errors, self.external = [], [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        for key in ("src", "href"):
            if key in attrs and not (attrs[key] or "").startswith("#"):
                self.external.append(attrs[key])
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append((tag, list(self.stack[-3:])))
        else:
            self.stack.pop()


def test_html_is_self_contained_and_well_formed(run):
    page = report.render_html(run)
    parser = _Tags()
    parser.feed(page)
    assert parser.errors == [] and parser.stack == []
    assert parser.external == []                         # no network assets, only #anchors
    assert "<style>" in page and "<script>" in page
    assert "<b>bold</b>" not in page and "&lt;b&gt;bold&lt;/b&gt;" in page
    assert report.render_html(run) == page               # deterministic


def test_html_side_by_side_and_diagnostics_at_their_line(run):
    page = report.render_html(run)
    section = page.split('id="file-0"')[1].split("</details>")[0]
    assert "a/model.py" in page.split('id="file-0"')[1][:300]
    rows = re.findall(r"<tr[^>]*>.*?</tr>", section)
    zeta_row = next(i for i, r in enumerate(rows) if "torch.special.zeta(x, 2)</td>" in r)
    assert 'data-code="JP101"' in rows[zeta_row + 1]      # right under original line 5
    assert '<td class="ln">5</td>' in rows[zeta_row]
    relu = next(r for r in rows if "torch.relu(y)" in r)
    assert 'class="chg"' in relu and "jax.nn.relu(y)" in relu
    assert 'data-code="JP401"' in section                 # line 1 diagnostic present
    assert "call sites 1/2 (50%)" in section


def test_html_filters_and_index(run):
    page = report.render_html(run)
    filters = page.split('<div class="filters">')[1].split("</div>")[0]
    for code in ("JP001", "JP002", "JP101", "JP401"):
        assert f'data-filter="code" value="{code}"' in filters
    for sev in ("error", "warning", "info"):
        assert f'data-filter="severity" value="{sev}"' in filters
    assert 'id="only-flagged"' in filters
    # every file is in the index; files without a source view have no anchor
    index = page.split('<table class="index">')[1]
    for r in run.records:
        assert r.path in index
    assert '<a href="#file-' in index
    assert "data/x.csv</td>" in index                      # listed, no link
    assert "No source view" in page                        # the binary file


def test_align_covers_both_sides_in_order():
    old = ["a", "b", "c", "d", "e"]
    new = ["a", "B", "c", "x", "y", "e", "f"]
    rows = report._align(old, new)
    assert [i for i, _, _ in rows if i is not None] == list(range(len(old)))
    assert [j for _, j, _ in rows if j is not None] == list(range(len(new)))
    kinds = {(i, j): k for i, j, k in rows}
    assert kinds[(0, 0)] == "eq" and kinds[(1, 1)] == "chg" and kinds[(6 - 2, 5)] == "eq"


def test_text_summary(run):
    text = report.render_text(run)
    lines = text.splitlines()
    assert lines[0] == "Processed 6 files: 1 converted, 1 partial, 2 copied, 2 failed"
    assert lines[1] == "Torch call sites converted: 4/5 (80%)"
    assert lines[2].startswith("Most frequent codes: JP001 (1), JP002 (1), JP101 (1)")
    assert lines[3] == "Needs attention first:"
    assert lines[4].startswith("  b/blob.py (failed, 1 error) - JP002")
    assert lines[6].startswith("  a/model.py (partial, 1 warning) - JP101")
    run.check = True
    assert report.render_text(run).splitlines()[-1] == "2 files would change"


def test_write_report(run, tmp_path):
    for ext in ("json", "md", "html"):
        path = tmp_path / "deep" / f"r.{ext}"
        report.write_report(run, str(path))
        assert path.read_text() == report.render(run, report.report_format(str(path)))
        assert stat.S_IMODE(os.stat(path).st_mode) & 0o044     # readable by others, like any file
    with pytest.raises(ValueError):
        report.write_report(run, str(tmp_path / "r.txt"))
    assert sorted(os.listdir(tmp_path / "deep")) == ["r.html", "r.json", "r.md"]


def test_empty_run_renders():
    empty = RunResult()
    assert json.loads(report.render_json(empty))["summary"]["files"] == 0
    assert "No file needed converting" in report.render_html(empty)
    assert report.render_markdown(empty).startswith("# jaxport")
    assert "Processed 0 files" in report.render_text(empty)
