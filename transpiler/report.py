"""Render a conversion run: the terminal summary, and JSON / Markdown / HTML report files.

Every renderer is a pure function of a :class:`transpiler.tree.RunResult` and returns text;
nothing here depends on timing or on the number of workers, so the same run always renders
the same bytes. The HTML page is self-contained (inline CSS and JS, no network assets).
"""
from __future__ import annotations

import os
from collections import Counter
from typing import TYPE_CHECKING, Iterable

from .diagnostics import Diagnostic

if TYPE_CHECKING:
    from .tree import FileRecord, RunResult

FORMATS = {".json": "json", ".md": "md", ".markdown": "md", ".html": "html", ".htm": "html"}
SEVERITY_ORDER = ("error", "warning", "info")


# --------------------------------------------------------------------------- shared helpers

def report_format(path: str) -> str | None:
    return FORMATS.get(os.path.splitext(path)[1].lower())


def rate(converted: int, total: int) -> str:
    if total == 0:
        return "-"
    return f"{converted}/{total} ({100 * converted // total}%)"


def severity_counts(diagnostics: Iterable[Diagnostic]) -> Counter:
    return Counter(d.severity for d in diagnostics)


def code_counts(run: "RunResult") -> list[tuple[str, int]]:
    """(code, count) pairs, most frequent first, ties by code."""
    counts = Counter(d.code for r in run.records for d in r.result.diagnostics)
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))


def _titles() -> dict[str, str]:
    try:
        from .diagnostics import registry
        return {code: entry.get("title", "") for code, entry in registry().items()}
    except Exception:   # the report must render even if the tables cannot load
        return {}


def needs_attention(run: "RunResult", limit: int | None = 10) -> list["FileRecord"]:
    """Files a human should look at first: errors, then the most warnings, then by path."""
    def key(r: "FileRecord"):
        sev = severity_counts(r.result.diagnostics)
        return (-sev["error"], -sev["warning"], r.path)
    flagged = [r for r in run.records
               if any(d.severity in ("error", "warning") for d in r.result.diagnostics)]
    flagged.sort(key=key)
    return flagged if limit is None else flagged[:limit]


def _first_problem(r: "FileRecord") -> Diagnostic | None:
    for sev in ("error", "warning"):
        for d in r.diagnostics:
            if d.severity == sev:
                return d
    return None


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _problem_summary(r: "FileRecord") -> str:
    sev = severity_counts(r.result.diagnostics)
    parts = [_plural(sev[s], s) for s in ("error", "warning") if sev[s]]
    return ", ".join(parts)


# --------------------------------------------------------------------------- text

def render_text(run: "RunResult", elapsed: float | None = None) -> str:
    """The summary printed at the end of ``jaxport convert``."""
    c = run.counts()
    s = run.summary()
    took = f" in {elapsed:.1f}s" if elapsed is not None else ""
    verb = "Checked" if run.check else "Processed"
    lines = [f"{verb} {_plural(s['files'], 'file')}{took}: {c['converted']} converted, "
             f"{c['partial']} partial, {c['copied']} copied, {c['failed']} failed"]
    lines.append(f"Torch call sites converted: {rate(s['converted_call_sites'], s['torch_call_sites'])}")
    codes = code_counts(run)
    if codes:
        lines.append("Most frequent codes: " + ", ".join(f"{code} ({n})" for code, n in codes[:5]))
    attention = needs_attention(run, limit=None)
    if attention:
        lines.append("Needs attention first:")
        for r in attention[:10]:
            first = _first_problem(r)
            detail = f" - {first.code} {first.message}" if first else ""
            lines.append(f"  {r.path} ({r.status}, {_problem_summary(r)}){detail}")
        if len(attention) > 10:
            lines.append(f"  ... and {len(attention) - 10} more (see the report)")
    if run.check:
        n = len(run.changed)
        lines.append(f"{_plural(n, 'file')} would change" if n else "Nothing would change")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- json

def to_json(run: "RunResult") -> dict:
    return {"files": [r.to_json() for r in run.records], "summary": run.summary()}


def render_json(run: "RunResult") -> str:
    import json
    return json.dumps(to_json(run), indent=2, ensure_ascii=False) + "\n"


# --------------------------------------------------------------------------- markdown

_MD_SPECIAL = set("\\`*_[]<>|#")


def md_escape(text: str) -> str:
    return "".join("\\" + ch if ch in _MD_SPECIAL else ch for ch in text).replace("\n", " ")


def md_code(text: str) -> str:
    """An inline code span holding ``text`` whatever backticks it contains."""
    text = text.replace("\n", " ").replace("|", "\\|")
    fence = "`"
    while fence in text:
        fence += "`"
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def render_markdown(run: "RunResult") -> str:
    c = run.counts()
    s = run.summary()
    titles = _titles()
    out = ["# jaxport conversion report", ""]
    out += ["| files | converted | partial | copied | failed | torch call sites converted |",
            "|---:|---:|---:|---:|---:|---:|",
            f"| {s['files']} | {c['converted']} | {c['partial']} | {c['copied']} | {c['failed']} "
            f"| {rate(s['converted_call_sites'], s['torch_call_sites'])} |", ""]
    attention = needs_attention(run, limit=None)
    if attention:
        out += ["## Needs attention first", ""]
        for r in attention:
            first = _first_problem(r)
            detail = f": {first.code} {md_escape(first.message)}" if first else ""
            out.append(f"1. {md_code(r.path)} ({r.status}, {_problem_summary(r)}){detail}")
        out.append("")
    codes = code_counts(run)
    if codes:
        severity = {d.code: d.severity for r in run.records for d in r.result.diagnostics}
        out += ["## Diagnostics by code", "", "| code | severity | count | meaning |",
                "|---|---|---:|---|"]
        for code, n in codes:
            out.append(f"| {code} | {severity[code]} | {n} | {md_escape(titles.get(code, ''))} |")
        out += ["", "Run `jaxport explain CODE` for an explanation and an example.", ""]
    out += ["## Files", "", "| file | status | torch call sites converted | errors | warnings | info |",
            "|---|---|---:|---:|---:|---:|"]
    for r in run.records:
        sev = severity_counts(r.result.diagnostics)
        out.append(f"| {md_code(r.path)} | {r.status} | "
                   f"{rate(r.result.converted_call_sites, r.result.torch_call_sites)} | "
                   f"{sev['error']} | {sev['warning']} | {sev['info']} |")
    out.append("")
    with_diags = [r for r in run.records if r.result.diagnostics]
    if with_diags:
        out += ["## Diagnostics", ""]
        for r in with_diags:
            out += [f"### {md_code(r.path)} ({r.status})", ""]
            for d in r.diagnostics:
                out.append(f"- {d.line}:{d.col} **{d.code}** ({d.severity}) {md_escape(d.message)}")
            out.append("")
    if run.notes:
        out += ["## Skipped", ""] + [f"- {md_escape(n)}" for n in run.notes] + [""]
    return "\n".join(out)


# --------------------------------------------------------------------------- html

def _e(text: object) -> str:
    import html
    return html.escape(str(text), quote=True)


_CSS = """
:root { --err:#b3261e; --warn:#8a5a00; --info:#2457a6; --del:#fdecec; --ins:#e8f6ea;
        --chg:#fff8e1; --line:#8a8f98; --border:#d9dce1; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 1.5rem 3rem;
       color: #1d2127; }
h1 { font-size: 1.4rem; margin: 1.2rem 0 .6rem; }
h2 { font-size: 1.1rem; margin: 1.4rem 0 .5rem; }
table { border-collapse: collapse; }
.summary td, .summary th, .index td, .index th { border: 1px solid var(--border);
       padding: .25rem .6rem; text-align: left; }
.num { text-align: right !important; font-variant-numeric: tabular-nums; }
.filters { position: sticky; top: 0; background: #fff; padding: .5rem 0;
           border-bottom: 1px solid var(--border); z-index: 2; }
.filters fieldset { display: inline-block; border: 1px solid var(--border); margin: 0 .5rem .3rem 0;
           padding: .2rem .6rem; }
.filters label { margin-right: .7rem; white-space: nowrap; }
.status-converted { color: #1b6e2d; } .status-partial { color: var(--warn); }
.status-failed { color: var(--err); } .status-copied { color: var(--line); }
details.file { border: 1px solid var(--border); border-radius: 4px; margin: .6rem 0; }
details.file > summary { cursor: pointer; padding: .4rem .6rem; background: #f5f6f8; }
.file .meta { color: var(--line); margin-left: .6rem; }
.sbs { width: 100%; table-layout: fixed; font: 12.5px/1.4 ui-monospace, SFMono-Regular, Menlo,
       Consolas, monospace; }
.sbs col.ln { width: 3.5em; } .sbs col.code { width: calc(50% - 3.5em); }
.sbs td { padding: 0 .4rem; vertical-align: top; white-space: pre-wrap; word-break: break-all; }
.sbs td.ln { color: var(--line); text-align: right; user-select: none;
             border-right: 1px solid var(--border); }
.sbs th { background: #f5f6f8; text-align: left; padding: .2rem .4rem; font-weight: 600; }
tr.del td.old, tr.chg td.old { background: var(--del); }
tr.ins td.new, tr.chg td.new { background: var(--ins); }
tr.diag td { white-space: normal; padding: .15rem .6rem; border-left: 4px solid; }
tr.diag.sev-error td { background: #fbe9e7; border-color: var(--err); }
tr.diag.sev-warning td { background: #fff4d6; border-color: var(--warn); }
tr.diag.sev-info td { background: #eaf1fb; border-color: var(--info); }
.code { font-weight: 600; margin-right: .4rem; }
.diags-top { margin: .4rem .6rem; padding: 0; list-style: none; }
.empty { color: var(--line); padding: .4rem .6rem; }
.hidden { display: none !important; }
"""

_JS = """
(function () {
  function checked(name) {
    var set = {};
    document.querySelectorAll('input[data-filter="' + name + '"]').forEach(function (box) {
      set[box.value] = box.checked;
    });
    return set;
  }
  function apply() {
    var codes = checked('code'), sevs = checked('severity'), statuses = checked('status');
    var onlyFlagged = document.getElementById('only-flagged').checked;
    document.querySelectorAll('.diag').forEach(function (el) {
      var show = codes[el.dataset.code] !== false && sevs[el.dataset.severity] !== false;
      el.classList.toggle('hidden', !show);
    });
    document.querySelectorAll('[data-file]').forEach(function (el) {
      var id = el.dataset.file;
      var section = document.getElementById(id);
      var visible = section ? section.querySelectorAll('.diag:not(.hidden)').length : 0;
      var show = statuses[el.dataset.status] !== false && (!onlyFlagged || visible > 0);
      el.classList.toggle('hidden', !show);
    });
  }
  // A link can carry a filter: #severity=error,warning&code=JP101&status=partial&flagged=1
  function fromHash() {
    var hash = window.location.hash.replace(/^#/, '');
    if (hash.indexOf('=') < 0) return;
    hash.split('&').forEach(function (pair) {
      var kv = pair.split('='), name = decodeURIComponent(kv[0]);
      var values = decodeURIComponent(kv[1] || '').split(',');
      if (name === 'flagged') {
        document.getElementById('only-flagged').checked = values[0] === '1';
        return;
      }
      document.querySelectorAll('input[data-filter="' + name + '"]').forEach(function (box) {
        box.checked = values.indexOf(box.value) >= 0;
      });
    });
  }
  document.querySelectorAll('.filters input').forEach(function (box) {
    box.addEventListener('change', apply);
  });
  fromHash();
  apply();
})();
"""


def _align(old: list[str], new: list[str]) -> list[tuple[int | None, int | None, str]]:
    """Side-by-side rows (old line index, new line index, kind) with kind in eq/chg/del/ins."""
    rows: list[tuple[int | None, int | None, str]] = []
    import difflib
    matcher = difflib.SequenceMatcher(None, old, new, autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            rows += [(i1 + k, j1 + k, "eq") for k in range(i2 - i1)]
        elif tag == "delete":
            rows += [(i, None, "del") for i in range(i1, i2)]
        elif tag == "insert":
            rows += [(None, j, "ins") for j in range(j1, j2)]
        else:
            n, m = i2 - i1, j2 - j1
            for k in range(max(n, m)):
                rows.append((i1 + k if k < n else None, j1 + k if k < m else None,
                             "chg" if k < n and k < m else ("del" if k < n else "ins")))
    return rows


def _html_diag(d: Diagnostic, row: bool = True) -> str:
    body = (f'<span class="code">{_e(d.code)}</span>{_e(d.severity)} at {d.line}:{d.col}: '
            f'{_e(d.message)}')
    attrs = f'class="diag sev-{_e(d.severity)}" data-code="{_e(d.code)}" data-severity="{_e(d.severity)}"'
    if row:
        return f'<tr {attrs}><td colspan="4">{body}</td></tr>'
    return f'<li {attrs}>{body}</li>'


def _html_side_by_side(original: str, converted: str, diagnostics: list[Diagnostic]) -> str:
    """Original and converted code next to each other; diagnostics under their (original) line."""
    old, new = original.splitlines(), converted.splitlines()
    by_line: dict[int, list[Diagnostic]] = {}
    for d in diagnostics:
        by_line.setdefault(d.line, []).append(d)
    placed: set[int] = set()
    out = ['<table class="sbs"><colgroup><col class="ln"><col class="code"><col class="ln">'
           '<col class="code"></colgroup><tr><th colspan="2">original</th>'
           '<th colspan="2">converted</th></tr>']
    for i, j, kind in _align(old, new):
        left = (f'<td class="ln">{i + 1}</td><td class="old">{_e(old[i])}</td>' if i is not None
                else '<td class="ln"></td><td class="old"></td>')
        right = (f'<td class="ln">{j + 1}</td><td class="new">{_e(new[j])}</td>' if j is not None
                 else '<td class="ln"></td><td class="new"></td>')
        out.append(f'<tr class="{kind}">{left}{right}</tr>')
        if i is not None and (i + 1) in by_line:
            placed.add(i + 1)
            out += [_html_diag(d) for d in by_line[i + 1]]
    out.append("</table>")
    unplaced = [d for d in diagnostics if d.line not in placed]
    top = ('<ul class="diags-top">' + "".join(_html_diag(d, row=False) for d in unplaced) + "</ul>"
           if unplaced else "")
    return top + "".join(out)


def _html_file(index: int, r: "FileRecord") -> str:
    sev = severity_counts(r.result.diagnostics)
    meta = [f"call sites {rate(r.result.converted_call_sites, r.result.torch_call_sites)}"]
    meta += [_plural(sev[s], s) for s in SEVERITY_ORDER if sev[s]]
    opened = " open" if r.status in ("partial", "failed") else ""
    head = (f'<details class="file" id="file-{index}" data-file="file-{index}" '
            f'data-status="{_e(r.status)}"{opened}><summary><b>{_e(r.path)}</b> '
            f'<span class="status-{_e(r.status)}">{_e(r.status)}</span>'
            f'<span class="meta">{_e(" · ".join(meta))}</span></summary>')
    if r.original_text is not None and r.output_text is not None:
        body = _html_side_by_side(r.original_text, r.output_text, r.diagnostics)
    else:
        items = "".join(_html_diag(d, row=False) for d in r.diagnostics)
        body = (f'<ul class="diags-top">{items}</ul>' if items else "")
        body += '<p class="empty">No source view: the file could not be decoded as text.</p>'
    return head + body + "</details>"


def _html_summary(run: "RunResult") -> str:
    c, s = run.counts(), run.summary()
    cells = [("files", s["files"]), ("converted", c["converted"]), ("partial", c["partial"]),
             ("copied", c["copied"]), ("failed", c["failed"]),
             ("torch call sites converted", rate(s["converted_call_sites"], s["torch_call_sites"]))]
    return ('<table class="summary"><tr>' + "".join(f"<th>{_e(k)}</th>" for k, _ in cells)
            + "</tr><tr>" + "".join(f'<td class="num">{_e(v)}</td>' for _, v in cells)
            + "</tr></table>")


def _html_filters(run: "RunResult") -> str:
    titles = _titles()
    sev_present = {d.severity for r in run.records for d in r.result.diagnostics}
    def boxes(name: str, values: list[tuple[str, str]]) -> str:
        return "".join(
            f'<label title="{_e(titles.get(v, ""))}"><input type="checkbox" data-filter="{name}" '
            f'value="{_e(v)}" checked> {_e(label)}</label>' for v, label in values)
    codes = code_counts(run)
    statuses = sorted({r.status for r in run.records})
    parts = ['<div class="filters">',
             f'<fieldset><legend>severity</legend>'
             f'{boxes("severity", [(s, s) for s in SEVERITY_ORDER if s in sev_present])}</fieldset>',
             f'<fieldset><legend>code</legend>'
             + boxes("code", [(code, f"{code} ({n})") for code, n in codes])
             + '</fieldset>',
             f'<fieldset><legend>status</legend>{boxes("status", [(s, s) for s in statuses])}</fieldset>',
             '<label><input type="checkbox" id="only-flagged"> only files with shown diagnostics</label>',
             "</div>"]
    return "".join(parts)


def _html_index(run: "RunResult", ids: dict[str, int]) -> str:
    rows = ['<table class="index"><tr><th>file</th><th>status</th><th>call sites converted</th>'
            '<th>errors</th><th>warnings</th><th>info</th></tr>']
    for r in run.records:
        sev = severity_counts(r.result.diagnostics)
        name = (f'<a href="#file-{ids[r.path]}">{_e(r.path)}</a>' if r.path in ids else _e(r.path))
        target = f' data-file="file-{ids[r.path]}"' if r.path in ids else ' data-file=""'
        rows.append(f'<tr{target} data-status="{_e(r.status)}"><td>{name}</td>'
                    f'<td class="status-{_e(r.status)}">{_e(r.status)}</td>'
                    f'<td class="num">{rate(r.result.converted_call_sites, r.result.torch_call_sites)}</td>'
                    f'<td class="num">{sev["error"]}</td><td class="num">{sev["warning"]}</td>'
                    f'<td class="num">{sev["info"]}</td></tr>')
    rows.append("</table>")
    return "".join(rows)


def _html_shown(r: "FileRecord") -> bool:
    """Files that get a section of their own: everything the converter touched or flagged."""
    return r.python and (r.status != "copied" or r.changed) or bool(r.result.diagnostics)


def render_html(run: "RunResult") -> str:
    shown = [r for r in run.records if _html_shown(r)]
    ids = {r.path: i for i, r in enumerate(shown)}
    sections = "".join(_html_file(ids[r.path], r) for r in shown)
    notes = ("<h2>Skipped</h2><ul>" + "".join(f"<li>{_e(n)}</li>" for n in run.notes) + "</ul>"
             if run.notes else "")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            "<title>jaxport conversion report</title>"
            f"<style>{_CSS}</style></head><body>"
            "<h1>jaxport conversion report</h1>"
            f"{_html_summary(run)}{_html_filters(run)}"
            f"<h2>Converted files</h2>{sections or '<p class=empty>No file needed converting.</p>'}"
            f"<h2>All files</h2>{_html_index(run, ids)}{notes}"
            f"<script>{_JS}</script></body></html>\n")


# --------------------------------------------------------------------------- files

def _umask() -> int:
    mask = os.umask(0o22)
    os.umask(mask)
    return mask


RENDERERS = {"json": render_json, "md": render_markdown, "html": render_html}


def render(run: "RunResult", fmt: str) -> str:
    return RENDERERS[fmt](run)


def write_report(run: "RunResult", path: str) -> None:
    """Render by the file's suffix and write atomically. Raises ValueError on a bad suffix."""
    fmt = report_format(path)
    if fmt is None:
        raise ValueError(f"unknown report format {path!r}: use .json, .md or .html")
    text = render(run, fmt)
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    import tempfile
    fd, tmp = tempfile.mkstemp(prefix=".jaxport-report.", dir=parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as fh:
            fh.write(text)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
