"""The HTML report in a real browser: headless Chromium loads the page written by
``jaxport convert --report``, runs its script, and we read back the DOM it ends up with
(``--dump-dom``) and a screenshot. Skipped where no chromium is installed
(Debian: ``apt-get install chromium``)."""
from __future__ import annotations

import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from test_cli import REPO, env_for, jaxport

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")
                 if shutil.which(n)), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")

SPECIAL = "import torch\n\n\ndef g(x):\n    y = torch.special.zeta(x, 2)\n    return torch.relu(y)\n"


def chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp_path / "chromium-profile"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--no-first-run", "--disable-extensions", f"--user-data-dir={profile}", *args]
    proc = subprocess.run(cmd, capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    return proc


class Elements(HTMLParser):
    """Every element's tag, attributes and the text inside it (nested text included)."""

    VOID = {"meta", "input", "col", "br", "img", "link"}

    def __init__(self):
        super().__init__()
        self.elements: list[dict] = []
        self.open: list[dict] = []

    def handle_starttag(self, tag, attrs):
        el = {"tag": tag, "attrs": dict(attrs), "text": "", "index": len(self.elements)}
        self.elements.append(el)
        if tag not in self.VOID:
            self.open.append(el)

    def handle_endtag(self, tag):
        while self.open:
            if self.open.pop()["tag"] == tag:
                break

    def handle_data(self, data):
        for el in self.open:
            el["text"] += data


def classes(el) -> set[str]:
    return set((el["attrs"].get("class") or "").split())


@pytest.fixture(scope="module")
def page(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("browser")
    src = tmp / "src"
    shutil.copytree(REPO, src)
    (src / "pkg" / "special.py").write_text(SPECIAL)
    report = tmp / "report" / "run.html"
    proc = jaxport("convert", src, "-o", tmp / "out", "--report", report, env=env_for(stub=True))
    assert proc.returncode == 1, proc.stderr        # broken.py, blob.py
    return report


def dom(page: Path, tmp_path: Path, fragment: str = "") -> list[dict]:
    proc = chromium(tmp_path, "--dump-dom", page.as_uri() + fragment)
    parser = Elements()
    parser.feed(proc.stdout.decode("utf-8"))
    return parser.elements


def test_reviewer_sees_files_code_side_by_side_and_diagnostics(page, tmp_path):
    els = dom(page, tmp_path)
    text = " ".join(e["text"] for e in els if e["tag"] == "body")
    assert "jaxport conversion report" in text
    # the file list: every file with its status and conversion rate
    index = next(e for e in els if "index" in classes(e))
    rows = [e for e in els if e["tag"] == "tr" and e["index"] > index["index"] and "data-status" in e["attrs"]]
    listed = {els[r["index"] + 1]["text"].strip(): r for r in rows}     # first cell: the path
    for path in ("pkg/model.py", "pkg/special.py", "pkg/broken.py", "pkg/blob.py", "README.md",
                 "notebooks/explore.ipynb", "data/pixel.bin"):
        assert path in listed, path
    assert listed["pkg/special.py"]["attrs"]["data-status"] == "partial"
    assert "1/2 (50%)" in listed["pkg/special.py"]["text"]
    # side-by-side code: original left, converted right, in the same row
    section = next(e for e in els if e["tag"] == "details" and "pkg/special.py" in e["text"])
    assert "open" in section["attrs"]                         # files needing review start open
    inside = [e for e in els if section["index"] < e["index"] and e["text"] and e["text"] in section["text"]]
    sbs_rows = [e for e in inside if e["tag"] == "tr"]
    relu = next(r for r in sbs_rows if "torch.relu(y)" in r["text"])
    assert "jax.nn.relu(y)" in relu["text"] and "chg" in classes(relu)
    # the diagnostic sits right under original line 5, visible
    k = next(i for i, r in enumerate(sbs_rows) if "torch.special.zeta(x, 2)" in r["text"]
             and "diag" not in classes(r))
    assert els[sbs_rows[k]["index"] + 1]["text"] == "5"            # original line number
    diag = sbs_rows[k + 1]
    assert {"diag", "sev-warning"} <= classes(diag) and "hidden" not in classes(diag)
    assert diag["attrs"]["data-code"] == "JP101" and "at 5:8" in diag["text"]
    # the notebook is shown as its code cells
    nb = next(e for e in els if e["tag"] == "details" and "notebooks/explore.ipynb" in e["text"])
    assert '"jaxport:cell 2"' in nb["text"] and "jax.nn.relu(torch.ones(2))" in nb["text"]


def test_filters_present_and_initially_show_everything(page, tmp_path):
    els = dom(page, tmp_path)
    boxes = [e for e in els if e["tag"] == "input" and "data-filter" in e["attrs"]]
    by_filter: dict[str, set] = {}
    for b in boxes:
        by_filter.setdefault(b["attrs"]["data-filter"], set()).add(b["attrs"]["value"])
        assert "checked" in b["attrs"]
    assert by_filter["severity"] == {"error", "warning"}
    assert {"JP001", "JP002", "JP101"} <= by_filter["code"]
    assert {"converted", "partial", "copied", "failed"} <= by_filter["status"]
    flagged = next(e for e in els if e["attrs"].get("id") == "only-flagged")
    assert "checked" not in flagged["attrs"]
    diags = [e for e in els if "diag" in classes(e)]
    assert diags and not [d for d in diags if "hidden" in classes(d)]
    assert not [e for e in els if "data-file" in e["attrs"] and "hidden" in classes(e)]


def test_filters_run_in_the_browser(page, tmp_path):
    """The page's script applies a filter given in the link: errors only."""
    els = dom(page, tmp_path, "#severity=error")
    diags = [e for e in els if "diag" in classes(e)]
    shown = {d["attrs"]["data-code"] for d in diags if "hidden" not in classes(d)}
    hidden = {d["attrs"]["data-code"] for d in diags if "hidden" in classes(d)}
    assert shown == {"JP001", "JP002"} and hidden == {"JP101"}
    els = dom(page, tmp_path, "#status=failed")
    sections = {e["attrs"]["data-status"]: e for e in els if e["tag"] == "details"}
    assert "hidden" not in classes(sections["failed"]) and "hidden" in classes(sections["partial"])


def test_screenshot_renders(page, tmp_path):
    shot = tmp_path / "shot.png"
    chromium(tmp_path, f"--screenshot={shot}", "--window-size=1000,700", "--hide-scrollbars",
             page.as_uri())
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000    # a real, non-blank image
