"""Robustness of ``jaxport convert`` on messy trees, through the command line (subprocess,
exit codes), plus the properties every conversion keeps and the security guarantees.

* Messy inputs: every problem file becomes a diagnostic with its file (and line where there
  is one), the rest of the run goes on, exit code 1; a tree with nothing wrong exits 0.
* Byte fidelity: PEP 263 cookies, CRLF, tabs and BOMs survive; failed files are copied as-is.
* Interruptions: SIGINT/SIGTERM mid-run leave no half-written ``.py`` and a rerun completes.
* Properties: code without torch is byte-identical; comments and docstrings survive;
  converting twice equals converting once.
* Security: conversion never imports or runs user code; reports use input-relative paths.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fuzz_support as fs
from transpiler.api import convert_bytes

ROOT = Path(__file__).resolve().parent.parent


def env() -> dict:
    e = dict(os.environ)
    e.pop("PYTHONPATH", None)
    e["NO_COLOR"] = "1"
    return e


def jaxport(*args, cwd=ROOT, timeout=300, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "cli.py"), *map(str, args)], cwd=cwd, env=env(),
                          capture_output=True, timeout=timeout, **kw)


def compiles_bytes(data: bytes) -> bool:
    from transpiler.api import decode
    text, _, err = decode(data)
    return err is None and fs.compiles(text)


MODEL = ("import torch\nimport torch.nn as nn\n\n\nclass Net(nn.Module):\n    def __init__(self):\n"
         "        super().__init__()\n        self.fc = nn.Linear(4, 4)\n\n    def forward(self, x):\n"
         "        return torch.relu(self.fc(x))\n")
TINY = "import torch\n\n\ndef f(x):\n    return torch.relu(x)\n"


def by_path(report: Path) -> dict:
    data = json.loads(report.read_text())
    return {f["path"]: f for f in data["files"]}


def codes(entry: dict) -> list[tuple[str, int]]:
    return [(d["code"], d["line"]) for d in entry["diagnostics"] if d["severity"] == "error"]


# --------------------------------------------------------------------------- clean but odd

@pytest.fixture(scope="module")
def odd_tree(tmp_path_factory):
    """Files that are unusual but fine: the run must convert them and exit 0."""
    base = tmp_path_factory.mktemp("odd")
    src = base / "src"
    src.mkdir()
    (src / "crlf.py").write_bytes(MODEL.replace("\n", "\r\n").encode())
    (src / "tabs.py").write_bytes(MODEL.replace("    ", "\t").encode())
    (src / "bom.py").write_bytes(b"\xef\xbb\xbf" + TINY.encode())
    (src / "cookie.py").write_bytes(
        b"# -*- coding: latin-1 -*-\nimport torch\n# caf\xe9 cr\xe8me\n\n\ndef f(x):\n"
        b"    return torch.relu(x)  # \xe9t\xe9\n\nNAME = '\xe7a'\n")
    (src / "empty.py").write_bytes(b"")
    (src / "plain.py").write_bytes(b"def f(x):\r\n\treturn x  # no torch here\r\n")
    (src / "deep_ok.py").write_text(
        "import torch\n\n\ndef f(x):\n" + "".join("    " * (i + 1) + f"if x.sum() > {i}:\n" for i in range(40))
        + "    " * 41 + "x = " + "(" * 150 + "torch.relu(x)" + ")" * 150 + "\n    return x\n")
    os.symlink("loop_b", src / "loop_a")      # a symlink loop: a -> b -> a
    os.symlink("loop_a", src / "loop_b")
    os.symlink(".", src / "self")             # a directory link back to the tree itself
    out, report = base / "out", base / "run.json"
    proc = jaxport("convert", src, "-o", out, "--report", report, "-v", "-j", "2")
    return src, out, report, proc


def test_odd_but_valid_tree_converts_and_exits_0(odd_tree):
    src, out, report, proc = odd_tree
    err = proc.stderr.decode()
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    files = by_path(report)
    assert sorted(files) == ["bom.py", "cookie.py", "crlf.py", "deep_ok.py", "empty.py", "plain.py", "tabs.py"]
    assert all(f["status"] in ("converted", "copied") for f in files.values()), files
    for name in files:
        assert compiles_bytes((out / name).read_bytes()) or name == "empty.py"
    # the symlink loop is reported (with -v) and never followed
    assert "loop_a" in err and "loop_b" in err
    assert not (out / "loop_a").exists() and not (out / "loop_b").exists()
    assert os.readlink(out / "self") == "."


def test_crlf_preserved(odd_tree):
    _, out, _, _ = odd_tree
    data = (out / "crlf.py").read_bytes()
    assert b"jax" in data and b"import torch" not in data and b"torch.relu" not in data
    user = data[data.index(b"class Net"):]
    assert user.count(b"\n") == user.count(b"\r\n") > 5          # the user's lines end in CRLF
    head = data[:data.index(b"# --- helpers")]
    assert head.count(b"\n") == head.count(b"\r\n") > 3          # so do the new imports


def test_crlf_file_has_no_bare_lf_after_conversion():
    data = convert_bytes(MODEL.replace("\n", "\r\n").encode(), "m.py").output
    assert data.count(b"\n") == data.count(b"\r\n")


def test_tabs_preserved(odd_tree):
    _, out, _, _ = odd_tree
    text = (out / "tabs.py").read_text()
    user_lines = text[text.index("class Net"):].splitlines()
    indented = [l for l in user_lines if l[:1] in (" ", "\t")]
    assert indented and all(l.startswith("\t") for l in indented), user_lines


def test_bom_preserved(odd_tree):
    _, out, _, _ = odd_tree
    data = (out / "bom.py").read_bytes()
    assert data.startswith(b"\xef\xbb\xbf") and not data.startswith(b"\xef\xbb\xbf\xef\xbb\xbf")
    assert b"torch.relu" not in data and compiles_bytes(data)


def test_pep263_cookie_honoured_and_preserved_byte_exactly(odd_tree):
    _, out, report, _ = odd_tree
    data = (out / "cookie.py").read_bytes()
    assert by_path(report)["cookie.py"]["status"] == "converted"
    assert data.startswith(b"# -*- coding: latin-1 -*-\n")
    for line in (b"# caf\xe9 cr\xe8me\n", b"  # \xe9t\xe9\n", b"NAME = '\xe7a'\n"):
        assert line in data                     # still latin-1 bytes, not re-encoded as UTF-8
    assert b"torch.relu" not in data
    text = data.decode("latin-1")
    assert fs.compiles(text) and "café crème" in text


def test_empty_and_torchless_files_are_copied_byte_for_byte(odd_tree):
    src, out, report, _ = odd_tree
    for name in ("empty.py", "plain.py"):
        assert (out / name).read_bytes() == (src / name).read_bytes()
        assert by_path(report)[name] == {"path": name, "status": "copied", "diagnostics": []}


def test_deep_but_legal_nesting_converts(odd_tree):
    _, out, report, _ = odd_tree
    assert by_path(report)["deep_ok.py"]["status"] == "converted"
    assert b"torch.relu" not in (out / "deep_ok.py").read_bytes()


# --------------------------------------------------------------------------- broken files

@pytest.fixture(scope="module")
def broken_tree(tmp_path_factory):
    base = tmp_path_factory.mktemp("broken")
    src = base / "src"
    (src / "pkg").mkdir(parents=True)
    (src / "good.py").write_text(MODEL)
    (src / "py2.py").write_bytes(b"import torch\n\n\ndef main():\n    print 'hello'\n")
    (src / "latin1.py").write_bytes(b"import torch\n\n# caf\xe9\nx = torch.zeros(1)\n")
    (src / "binary.py").write_bytes(bytes(range(256)) * 4 + b"torch")
    (src / "pkg" / "noise.py").write_bytes(b"torch \xff\xfe\xfa garbage\n" * 3)
    (src / "return.py").write_bytes(b"import torch\n\nreturn torch.zeros(1)\n")
    (src / "parens.py").write_text("import torch\n\n\ndef f(x):\n    return " + "(" * 250 + "torch.relu(x)" + ")" * 250 + "\n")
    (src / "brackets.py").write_text("import torch\n\nX = " + "[" * 3000 + "torch.relu" + "]" * 3000 + "\n")
    (src / "ifs.py").write_text("import torch\n\n\ndef f(x):\n" + "".join(
        " " * (i + 1) + f"if x > {i}:\n" for i in range(150)) + " " * 151 + "x = torch.relu(x)\n")
    (src / "pkg" / "after.py").write_text(TINY)          # sorts after the broken ones
    originals = {p.relative_to(src).as_posix(): p.read_bytes() for p in src.rglob("*.py")}
    out, report = base / "out", base / "run.json"
    proc = jaxport("convert", src, "-o", out, "--report", report, "-j", "2")
    return src, out, report, proc, originals


BROKEN = {   # file: (code, line) of its error
    "py2.py": ("JP001", 5),
    "latin1.py": ("JP002", 3),
    "binary.py": ("JP002", 1),
    "pkg/noise.py": ("JP002", 1),
    "return.py": ("JP001", 3),
    "parens.py": ("JP001", 5),
    "brackets.py": ("JP001", 3),
    "ifs.py": ("JP001", None),
}


def test_broken_files_are_diagnosed_with_file_and_line_and_the_run_goes_on(broken_tree):
    src, out, report, proc, originals = broken_tree
    err = proc.stderr.decode()
    assert proc.returncode == 1, err
    assert "Traceback" not in err
    files = by_path(report)
    assert set(files) == set(originals)
    for name, (code, line) in BROKEN.items():
        entry = files[name]
        assert entry["status"] == "failed", (name, entry)
        got = codes(entry)
        assert [c for c, _ in got] == [code], (name, got)
        if line is not None:
            assert got[0][1] == line, (name, got)
        # each diagnostic is printed as path:line:col: CODE, with the file's own path
        shown = os.path.join(str(src), *name.split("/"))
        assert re.search(rf"^{re.escape(shown)}:{got[0][1]}:\d+: {code} ", err, re.M), (name, err)
        # the original is kept, byte for byte
        assert (out / name).read_bytes() == originals[name]
    for name in ("good.py", "pkg/after.py"):
        assert files[name]["status"] == "converted"
        assert b"import torch" not in (out / name).read_bytes()


def test_python2_message_is_cpythons(broken_tree):
    _, _, report, _, _ = broken_tree
    message = by_path(report)["py2.py"]["diagnostics"][0]["message"]
    assert "parentheses" in message and "print" in message


def _can_read_anyway(path: Path) -> bool:
    try:
        path.read_bytes()
        return True
    except OSError:
        return False


def test_unreadable_file(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.py").write_text(TINY)
    locked = src / "locked.py"
    locked.write_text(TINY)
    locked.chmod(0)
    try:
        if _can_read_anyway(locked):
            pytest.skip("running with privileges that read a chmod 000 file (root)")
        proc = jaxport("convert", src, "-o", tmp_path / "out", "--report", tmp_path / "r.json")
    finally:
        locked.chmod(0o644)
    assert proc.returncode == 1
    entry = by_path(tmp_path / "r.json")["locked.py"]
    assert entry["status"] == "failed" and [c for c, _ in codes(entry)] == ["JP005"]
    assert f"{src / 'locked.py'}:1:0: JP005" in proc.stderr.decode()
    assert (tmp_path / "out" / "a.py").exists()


def test_unwritable_output_directory(tmp_path):
    src = tmp_path / "src"
    (src / "pkg").mkdir(parents=True)
    (src / "sub").mkdir()
    (src / "a.py").write_text(TINY)
    (src / "pkg" / "m.py").write_text(TINY)
    (src / "sub" / "n.py").write_text(TINY)
    out = tmp_path / "out"
    out.mkdir()
    (out / "pkg").write_text("a file where a directory must go\n")   # fails even for root
    (out / "sub").mkdir()
    (out / "sub").chmod(0o555)
    try:
        proc = jaxport("convert", src, "-o", out, "--report", tmp_path / "r.json")
        sub_writable = os.access(out / "sub", os.W_OK)
    finally:
        (out / "sub").chmod(0o755)
    err = proc.stderr.decode()
    assert proc.returncode == 1, err
    assert "Traceback" not in err
    files = by_path(tmp_path / "r.json")
    assert files["pkg/m.py"]["status"] == "failed" and [c for c, _ in codes(files["pkg/m.py"])] == ["JP005"]
    assert f"{src / 'pkg' / 'm.py'}:1:0: JP005" in err
    if not sub_writable:
        assert files["sub/n.py"]["status"] == "failed"
        assert [c for c, _ in codes(files["sub/n.py"])] == ["JP005"]
    assert files["a.py"]["status"] == "converted" and (out / "a.py").exists()
    assert not [p for p in out.rglob("*") if p.name.endswith(".jaxport-tmp")]


@pytest.mark.parametrize("body", ["x" + " + torch.relu(x)" * 1000, "torch.relu(" * 150 + "x" + ")" * 150],
                         ids=["sum-1000", "calls-150"])
def test_deep_legal_expressions_convert(body):
    src = f"import torch\n\n\ndef f(x):\n    return {body}\n"
    assert fs.compiles(src)
    result = convert_bytes(src.encode(), "deep.py")
    assert [d.code for d in result.diagnostics if d.severity == "error"] == []
    assert result.status == "converted"


# --------------------------------------------------------------------------- size

def big_file(n_lines: int, code_heavy: bool) -> str:
    """A ~n_lines torch file with a marked torch call on its very last line."""
    parts = [MODEL, "\n\n"]
    n = MODEL.count("\n") + 2
    if not code_heavy:   # mostly a long text constant: cheap for the parser, long in lines
        filler = max(0, n_lines - n - 3000)
        parts.append('NOTES = """\n' + "".join(f"line {i} of a long text\n" for i in range(filler)) + '"""\n\n\n')
        n += filler + 4
    k = 0
    while n < n_lines - 2:
        parts.append(f"def f{k}(x):\n    return torch.tanh(x * {k})\n\n\n")
        n += 4
        k += 1
    parts.append("def last(x):\n    return torch.special.zeta(x, 2)\n")
    return "".join(parts)


@pytest.mark.parametrize("code_heavy,limit", [(False, 120), pytest.param(True, 900, marks=pytest.mark.slow)])
def test_50k_line_file(tmp_path, code_heavy, limit):
    src = tmp_path / "src"
    src.mkdir()
    text = big_file(50_000, code_heavy)
    n_lines = text.count("\n")
    assert n_lines >= 49_990
    (src / "big.py").write_text(text)
    started = time.monotonic()
    proc = jaxport("convert", src, "-o", tmp_path / "out", "--report", tmp_path / "r.json", timeout=limit + 60)
    elapsed = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    entry = by_path(tmp_path / "r.json")["big.py"]
    assert entry["status"] == "partial"
    # the one unmapped call, on the last line, is reported at that line
    assert [(d["code"], d["line"]) for d in entry["diagnostics"] if d["severity"] == "warning"] == [("JP101", n_lines)]
    out = (tmp_path / "out" / "big.py").read_text()
    assert out.count("\n") >= n_lines and fs.compiles(out)
    assert elapsed < limit, f"{n_lines} lines took {elapsed:.0f}s"


# --------------------------------------------------------------------------- interruption

def _tree_of_many_files(src: Path, n: int) -> dict[str, bytes]:
    for i in range(n):
        d = src / f"pkg{i % 7}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"m{i}.py").write_text(MODEL.replace("nn.Linear(4, 4)", f"nn.Linear(4, {i + 1})"))
    return {p.relative_to(src).as_posix(): p.read_bytes() for p in src.rglob("*.py")}


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupted_run_leaves_no_half_written_file_and_rerun_completes(tmp_path, sig):
    src, out = tmp_path / "src", tmp_path / "out"
    originals = _tree_of_many_files(src, 150)
    proc = subprocess.Popen([sys.executable, str(ROOT / "cli.py"), "convert", str(src), "-o", str(out), "-j", "2"],
                            cwd=ROOT, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if out.exists() and sum(1 for _ in out.rglob("*.py")) >= 5:
            break
        time.sleep(0.05)
    interrupted = proc.poll() is None
    if interrupted:
        os.killpg(proc.pid, sig)              # like Ctrl-C / kill on the whole job
    proc.communicate(timeout=120)
    assert interrupted, "the run finished before it could be interrupted"
    expected = {}
    for path in out.rglob("*.py"):
        rel = path.relative_to(out).as_posix()
        expected[rel] = convert_bytes(originals[rel], rel).output
        assert path.read_bytes() == expected[rel], f"{rel} is not the complete conversion"
    assert len(expected) < len(originals)      # it really stopped part way
    rerun = jaxport("convert", src, "-o", out, "-j", "2")
    assert rerun.returncode == 0, rerun.stderr.decode()
    written = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert written == set(originals), sorted(written ^ set(originals))[:5]   # no temp files left
    for rel in list(originals)[:10]:
        assert (out / rel).read_bytes() == convert_bytes(originals[rel], rel).output


# --------------------------------------------------------------------------- properties

PROPS = settings(max_examples=25, derandomize=True, database=None, deadline=None,
                 suppress_health_check=list(HealthCheck))

try:
    import hypothesmith
    _programs = hypothesmith.from_grammar()
except ImportError:      # pragma: no cover - the test extra installs it
    _programs = st.sampled_from(["x = 1\n", "def f(a, *b, **c):\n    return a\n", "class A:\n    pass\n"])

torch_mentions = st.sampled_from([
    "# uses torch? no: this is numpy\n", "NOTE = 'torch'\n", "torch_like = 3\n", "def torchify(x):\n    return x\n",
    "'''A docstring about torch.'''\n", "import torchvision_fake_module_name_that_is_not_torch as tv\n",
])


@PROPS
@given(program=_programs, mention=torch_mentions, crlf=st.booleans(), where=st.booleans())
def test_code_without_torch_imports_is_byte_identical(program, mention, crlf, where):
    text = mention + program if where else program + "\n" + mention
    data = text.replace("\n", "\r\n").encode() if crlf else text.encode()
    result = convert_bytes(data, "m.py")
    assert result.status == "copied", result
    assert result.output == data and result.diagnostics == []


COMMENT_TEXT = st.text(st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp")), min_size=1, max_size=30)
TORCH_MODEL = '''"""Module docstring."""
import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    """Class docstring."""

    def __init__(self, dim=8):
        super().__init__()
        self.fc = nn.Linear(dim, dim)
        self.drop = nn.Dropout(0.1)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x):
        """Forward docstring."""
        h = F.gelu(self.fc(x))
        h = self.drop(h)
        return self.norm(x + h)


def make(dim):
    return Block(dim)
'''


@PROPS
@given(comments=st.lists(st.tuples(st.integers(0, 10**6), COMMENT_TEXT, st.booleans()), min_size=1, max_size=5),
       docstring=COMMENT_TEXT.filter(lambda s: '"' not in s and "\\" not in s))
def test_comments_and_docstrings_survive_conversion(comments, docstring):
    lines = TORCH_MODEL.replace("Forward docstring.", docstring).splitlines(keepends=True)
    first = 5     # below the torch imports (comments on them: test_comments_around_torch_imports_survive)
    marks = []
    for k, (pos, text, trailing) in enumerate(comments):
        mark = f"C{k}: {text}"
        marks.append(mark)
        i = first + pos % (len(lines) - first)
        if trailing and lines[i].strip() and not lines[i].lstrip().startswith(("#", '"')):
            lines[i] = lines[i].rstrip("\n") + f"  # {mark}\n"
        else:
            indent = re.match(r"[ \t]*", lines[i]).group()
            lines.insert(i, f"{indent}# {mark}\n")
    source = "".join(lines)
    assert fs.compiles(source)
    result = convert_bytes(source.encode(), "m.py")
    assert result.status in ("converted", "partial"), result.diagnostics
    out = result.output.decode()
    for mark in marks:
        assert f"# {mark}" in out, (mark, out)
    for doc in ("Module docstring.", "Class docstring.", docstring):
        assert doc in out


def test_comments_around_torch_imports_survive():
    src = ('"""Doc."""\n# keep me 1\nimport torch\n# keep me 2\nimport torch.nn as nn  # keep me 3\n\n\n'
           'def f(x):\n    return torch.relu(x)\n')
    out = convert_bytes(src.encode(), "m.py").output.decode()
    for k in (1, 2, 3):
        assert f"# keep me {k}" in out
    # in their order, each on a line of its own, and the torch imports are gone
    lines = out.splitlines()
    assert [lines.index(f"# keep me {k}") for k in (1, 2, 3)] == sorted(lines.index(f"# keep me {k}") for k in (1, 2, 3))
    assert "import torch" not in out


def test_comments_on_removed_imports_inside_blocks_survive():
    """An import line alone in its block becomes ``pass`` with the comments above it; one
    at the end of a block leaves its comment at the end of that block."""
    src = ("import torch\n\n\ndef f(x):\n    try:\n        # above\n        import torch.nn.functional as F  # beside\n"
           "    except ImportError:\n        pass\n    y = torch.relu(x)\n    import torch.optim  # last\n    return y\n"
           "import torch.nn  # end of file\n")
    result = convert_bytes(src.encode(), "m.py")
    out = result.output.decode()
    assert result.status == "converted", result.diagnostics
    assert "        # above\n        # beside\n        pass\n" in out
    assert "    # last\n    return y\n" in out
    assert out.rstrip().endswith("# end of file")
    assert "import torch" not in out and fs.compiles(out)


CORPUS_IDS = [f"{p.parent.name}/{p.stem}" for p in fs.CORPUS_FILES]
NOT_IDEMPOTENT: dict[str, str] = {}   # corpus files known not to be idempotent (none)


@pytest.mark.parametrize("index", [
    pytest.param(i, id=cid, marks=[pytest.mark.xfail(strict=True, reason=NOT_IDEMPOTENT[cid])] if cid in NOT_IDEMPOTENT else [])
    for i, cid in enumerate(CORPUS_IDS)])
def test_converting_twice_equals_converting_once(index):
    first, second = fs.converted_corpus(index)
    fs.check_result(fs.CORPUS_FILES[index].read_bytes(), first)
    fs.check_result(first.output, second, "converted output")
    assert second.output == first.output


REUSED_TORCH = '''import torch
import torch.nn as nn
from torch.utils.data import DataLoader


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)

    def forward(self, x):
        return self.conv(x)


def loader(ds):
    return DataLoader(ds, batch_size=2)
'''


def test_reconverting_keeps_helpers_once():
    once = convert_bytes(REUSED_TORCH.encode(), "m.py").output.decode()
    twice = convert_bytes(once.encode(), "m.py").output.decode()
    assert twice.count("helpers added by jaxport") == once.count("helpers added by jaxport")
    assert twice.count("TORCH_PAD_MODES = ") == once.count("TORCH_PAD_MODES = ") == 1


def test_reconverting_leaves_prelude_helpers_alone():
    once = convert_bytes(REUSED_TORCH.encode(), "m.py").output.decode()
    twice = convert_bytes(once.encode(), "m.py").output.decode()
    assert "bias.astype(y.dtype).reshape(" in once
    assert "bias.astype(y.dtype).reshape(" in twice


# --------------------------------------------------------------------------- security

EVIL = '''import os
import torch
import torch.nn as nn

open(os.path.join({marker_dir!r}, "imported-" + __name__), "w").write("ran")
raise SystemExit("user code must never run during conversion")


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(2, 2)

    def forward(self, x):
        return torch.relu(self.fc(x))


if __name__ == "__main__":
    open(os.path.join({marker_dir!r}, "main-ran"), "w").write("ran")
'''


def test_conversion_never_imports_or_runs_user_code(tmp_path):
    markers = tmp_path / "markers"
    markers.mkdir()
    src = tmp_path / "src"
    src.mkdir()
    evil = EVIL.format(marker_dir=str(markers))
    (src / "evil.py").write_text(evil)
    (src / "setup.py").write_text(evil)
    (src / "conftest.py").write_text(evil)
    # modules named like what jaxport itself imports, in the directory it is run from
    for shadow in ("libcst", "click", "rich", "torch", "jax", "tomllib", "difflib"):
        (src / f"{shadow}.py").write_text(evil)
    (src / "sitecustomize.py").write_text(evil)
    proc = jaxport("convert", ".", "-o", tmp_path / "out", "--report", tmp_path / "r.json", "-j", "2", cwd=src)
    assert proc.returncode == 0, proc.stderr.decode()
    assert list(markers.iterdir()) == []
    converted = (tmp_path / "out" / "evil.py").read_text()
    assert "raise SystemExit" in converted and "nn.Dense" in converted
    # the library entry point does not run it either
    convert_bytes(evil.encode(), "evil.py")
    assert list(markers.iterdir()) == []


def test_reports_use_paths_relative_to_the_input(tmp_path):
    src = tmp_path / "deep" / "input tree"
    (src / "pkg").mkdir(parents=True)
    (src / "pkg" / "model.py").write_text(MODEL)
    (src / "broken.py").write_bytes(b"import torch\nprint 'x'\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    reports = [tmp_path / "r.json", tmp_path / "r.md", tmp_path / "r.html"]
    args = ["convert", src.resolve(), "-o", tmp_path / "out"]
    for r in reports:
        args += ["--report", r]
    proc = jaxport(*args, cwd=elsewhere)
    assert proc.returncode == 1
    assert sorted(by_path(reports[0])) == ["broken.py", "pkg/model.py"]
    for r in reports:
        text = r.read_text()
        assert str(tmp_path) not in text and "input tree" not in text, r.name
        assert "pkg/model.py" in text and "broken.py" in text
