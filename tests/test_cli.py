"""The command line, end to end: ``python cli.py ...`` in a subprocess, exit codes checked.

Conversion quality is not tested here. Tests that need a file to change use the real passes
when they can convert a trivial file, and otherwise a test-only stand-in pipeline
(tests/fixtures/stub_pipeline, put on PYTHONPATH); tests that need exact conversion
behaviour (a warning, a crash inside a pass) always use the stand-in.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
REPO = FIXTURES / "repo"
STUB = FIXTURES / "stub_pipeline"

TINY = "import torch\n\n\ndef f(x):\n    return torch.relu(x)\n"
NO_TORCH = "def f(x):\n    return x + 1\n"

STATUSES = {"converted", "partial", "copied", "failed"}
SEVERITIES = {"info", "warning", "error"}


@functools.lru_cache(maxsize=1)
def real_pipeline_works() -> bool:
    """Whether the real passes turn a trivial torch file into different, compilable code."""
    code = ("from transpiler.api import convert_source\n"
            f"r = convert_source({TINY!r})\n"
            "assert r.status in ('converted', 'partial') and r.changed, r\n"
            "compile(r.output, 'x', 'exec')\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, timeout=120)
    return proc.returncode == 0


def env_for(stub: bool) -> dict:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    if stub:
        env["PYTHONPATH"] = str(STUB)
    env["NO_COLOR"] = "1"
    return env


@pytest.fixture
def converting_env() -> dict:
    """Environment in which a torch file really changes (real passes, else the stand-in)."""
    return env_for(stub=not real_pipeline_works())


@pytest.fixture
def stub_env() -> dict:
    return env_for(stub=True)


def jaxport(*args, env=None, input=None, cwd=ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "cli.py"), *map(str, args)], cwd=cwd,
                          env=env or env_for(stub=False), input=input, capture_output=True,
                          timeout=300)


def tree_hashes(root: Path) -> dict[str, str]:
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.is_symlink():
            out[p.relative_to(root).as_posix()] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.fixture
def repo(tmp_path) -> Path:
    """A copy of the fixture repo, plus directories that must be skipped."""
    dst = tmp_path / "src"
    shutil.copytree(REPO, dst)
    for skipped in (".git", "pkg/__pycache__", ".venv"):
        (dst / skipped).mkdir(parents=True, exist_ok=True)
    (dst / ".git" / "config").write_text("[core]\n")
    (dst / "pkg" / "__pycache__" / "model.cpython-311.pyc").write_bytes(b"\x00\x01torch")
    (dst / ".venv" / "pyvenv.cfg").write_text("home = /usr/bin\n")
    (dst / ".venv" / "lib.py").write_text("import torch\n")
    return dst


def check_report_contract(data: dict) -> None:
    assert set(data) == {"files", "summary"}
    assert set(data["summary"]) == {"files", "converted", "partial", "failed",
                                    "torch_call_sites", "converted_call_sites"}
    assert all(isinstance(v, int) for v in data["summary"].values())
    assert data["summary"]["files"] == len(data["files"])
    for status in ("converted", "partial", "failed"):
        assert data["summary"][status] == sum(f["status"] == status for f in data["files"])
    assert data["summary"]["converted_call_sites"] <= data["summary"]["torch_call_sites"]
    paths = [f["path"] for f in data["files"]]
    assert paths == sorted(paths)
    for f in data["files"]:
        assert set(f) == {"path", "status", "diagnostics"}
        assert f["status"] in STATUSES
        assert not f["path"].startswith("/") and "\\" not in f["path"]
        for d in f["diagnostics"]:
            assert set(d) == {"code", "severity", "line", "col", "message"}
            assert d["severity"] in SEVERITIES
            assert d["code"].startswith("JP") and isinstance(d["line"], int) and isinstance(d["col"], int)


# --------------------------------------------------------------------------- convert

def test_convert_mirrors_tree_and_never_touches_input(repo, tmp_path, converting_env):
    before = tree_hashes(repo)
    before_nb = (repo / "notebooks/explore.ipynb").read_text()
    out = tmp_path / "out"
    proc = jaxport("convert", repo, "-o", out, "--report", tmp_path / "r.json", env=converting_env)
    assert proc.returncode == 1, proc.stderr          # broken.py and blob.py have errors
    assert b"Traceback" not in proc.stderr
    assert tree_hashes(repo) == before

    expected = {p for p in before if not p.startswith((".git/", ".venv/")) and "__pycache__" not in p}
    produced = tree_hashes(out)
    assert set(produced) == expected
    for same in ("README.md", "data/config.json", "data/pixel.bin", "pkg/__init__.py",
                 "pkg/utils.py", "scripts/make_data.py", "pkg/blob.py", "pkg/broken.py"):
        assert produced[same] == before[same], same
    assert produced["pkg/model.py"] != before["pkg/model.py"]
    compile((out / "pkg/model.py").read_bytes(), "model.py", "exec")

    latin = (out / "pkg/legacy_latin1.py").read_bytes()
    assert latin.startswith(b"# -*- coding: latin-1 -*-\n")
    compile(latin, "legacy_latin1.py", "exec")      # honours the cookie
    assert "René Café" in latin.decode("latin-1")

    report = json.loads((tmp_path / "r.json").read_text())
    check_report_contract(report)
    by_path = {f["path"]: f for f in report["files"]}
    assert set(by_path) == expected
    assert by_path["pkg/broken.py"]["status"] == "failed"
    assert [d["code"] for d in by_path["pkg/broken.py"]["diagnostics"]] == ["JP001"]
    assert [d["code"] for d in by_path["pkg/blob.py"]["diagnostics"]] == ["JP002"]
    assert by_path["pkg/utils.py"]["status"] == "copied"
    assert by_path["data/pixel.bin"]["status"] == "copied"
    assert by_path["pkg/model.py"]["status"] in ("converted", "partial")
    assert by_path["notebooks/explore.ipynb"]["status"] in ("converted", "partial")
    nb = json.loads((out / "notebooks/explore.ipynb").read_text())
    assert "jax.nn.relu(" in "".join(nb["cells"][2]["source"])
    assert nb["cells"][0] == json.loads(before_nb)["cells"][0]


def test_ruff_style_diagnostics_and_summary(repo, tmp_path, stub_env):
    proc = jaxport("convert", repo, "-o", tmp_path / "out", env=stub_env)
    assert proc.returncode == 1
    err = proc.stderr.decode()
    broken = os.path.join(str(repo), "pkg", "broken.py")
    assert any(line.startswith(f"{broken}:") and " JP001 syntax error" in line
               for line in err.splitlines()), err
    lines = [l for l in err.splitlines() if ": JP002 " in l]
    assert len(lines) == 1 and lines[0].startswith(os.path.join(str(repo), "pkg", "blob.py") + ":1:0: JP002")
    assert "4 converted, 0 partial, 8 copied, 2 failed" in err
    assert "Torch call sites converted: 3/3 (100%)" in err
    assert "Needs attention first:" in err
    assert proc.stdout == b""


def test_exit_zero_on_clean_tree_and_quiet(tmp_path, converting_env):
    src = tmp_path / "src"
    (src / "pkg").mkdir(parents=True)
    (src / "pkg" / "m.py").write_text(TINY)
    (src / "notes.txt").write_text("hello\n")
    proc = jaxport("convert", src, "-o", tmp_path / "out", env=converting_env)
    assert proc.returncode == 0, proc.stderr
    assert b"converted" in proc.stderr
    proc = jaxport("convert", src, "-o", tmp_path / "out2", "-q", env=converting_env)
    assert proc.returncode == 0 and proc.stderr == b"" and proc.stdout == b""
    assert (tmp_path / "out2" / "notes.txt").read_text() == "hello\n"


@pytest.mark.parametrize("args", [
    ["convert", "{src}", "-o", "{src}/out"],          # OUT inside SRC
    ["convert", "{src}", "-o", "{src}"],              # OUT is SRC
    ["convert", "{src}/pkg", "-o", "{src}"],          # SRC inside OUT
    ["convert", "{src}", "-o", "{tmp}/o", "--layout", "nwhc"],
    ["convert", "{src}", "-o", "{tmp}/o", "--parallel", "tpu"],
    ["convert", "{src}", "-o", "{tmp}/o", "-j", "0"],
    ["convert", "{src}", "-o", "{tmp}/o", "--report", "{tmp}/r.txt"],
    ["convert", "{src}", "-o", "{tmp}/o", "--report", "{src}/report.md"],
    ["convert", "{src}", "-o", "{tmp}/o", "--bogus"],
    ["convert", "{src}", "-o", "{tmp}/o", "-q", "-v"],
    ["convert", "{tmp}/does-not-exist", "-o", "{tmp}/o"],
    ["convert", "{src}"],                              # no -o and no --check
    ["convert"],
    ["frobnicate"],
])
def test_usage_errors_exit_2(tmp_path, args):
    src = tmp_path / "src"
    (src / "pkg").mkdir(parents=True)
    (src / "pkg" / "a.py").write_text(NO_TORCH)
    before = tree_hashes(src)
    argv = [a.format(src=src, tmp=tmp_path) for a in args]
    proc = jaxport(*argv)
    assert proc.returncode == 2, (argv, proc.stderr)
    assert b"Traceback" not in proc.stderr and proc.stderr.strip()
    assert tree_hashes(src) == before
    assert not (tmp_path / "o").exists() and not (src / "out").exists()


def test_out_inside_src_message_is_clear(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.py").write_text(TINY)
    proc = jaxport("convert", src, "-o", src / "converted")
    assert proc.returncode == 2
    assert b"inside the input directory" in proc.stderr
    assert not (src / "converted").exists()


def test_check_exit_codes_and_writes_nothing(tmp_path, converting_env):
    clean = tmp_path / "clean"
    clean.mkdir()
    (clean / "a.py").write_text(NO_TORCH)
    (clean / "data.csv").write_text("a,b\n1,2\n")
    proc = jaxport("convert", clean, "--check", env=converting_env)
    assert proc.returncode == 0, proc.stderr
    assert b"Nothing would change" in proc.stderr

    dirty = tmp_path / "dirty"
    dirty.mkdir()
    (dirty / "m.py").write_text(TINY)
    out = tmp_path / "out"
    proc = jaxport("convert", dirty, "-o", out, "--check", env=converting_env)
    assert proc.returncode == 1, proc.stderr
    assert b"1 file would change" in proc.stderr
    assert not out.exists()
    assert (dirty / "m.py").read_text() == TINY


def test_diff_prints_unified_diff_of_changed_files_only(repo, tmp_path, converting_env):
    proc = jaxport("convert", repo, "-o", tmp_path / "out", "--diff", env=converting_env)
    assert proc.returncode == 1
    out = proc.stdout.decode()
    assert "--- a/pkg/model.py\n+++ b/pkg/model.py\n@@ " in out
    assert "\x1b[" not in out                       # not a terminal: no colour
    assert "a/pkg/utils.py" not in out and "a/pkg/broken.py" not in out
    removed = [l for l in out.splitlines() if l.startswith("-") and not l.startswith("---")]
    assert removed                                    # something of the original went away
    # the diff applied to the original gives the written output
    headers = [l for l in out.splitlines() if l.startswith("+++ b/")]
    assert headers == sorted(headers)


def test_check_with_diff_prints_but_writes_nothing(tmp_path, stub_env):
    src = tmp_path / "src"
    src.mkdir()
    (src / "m.py").write_text(TINY)
    proc = jaxport("convert", src, "--check", "--diff", env=stub_env)
    assert proc.returncode == 1
    assert proc.stdout.decode().splitlines()[:2] == ["--- a/m.py", "+++ b/m.py"]
    assert "-    return torch.relu(x)" in proc.stdout.decode()
    assert "+    return jax.nn.relu(x)" in proc.stdout.decode()


def test_parallel_runs_identical_to_serial(repo, tmp_path, stub_env):
    results = []
    for jobs in (1, 2):
        out = tmp_path / f"out{jobs}"
        reports = [tmp_path / f"r{jobs}.{ext}" for ext in ("json", "md", "html")]
        args = ["convert", repo, "-o", out, "-j", jobs, "--diff"]
        for r in reports:
            args += ["--report", r]
        proc = jaxport(*args, env=stub_env)
        assert proc.returncode == 1
        diags = [l for l in proc.stderr.decode().splitlines() if ": JP" in l]
        results.append((tree_hashes(out), [r.read_bytes() for r in reports], proc.stdout, diags))
    assert results[0] == results[1]


def test_verbose_shows_traceback_default_does_not(tmp_path, stub_env):
    src = tmp_path / "src"
    src.mkdir()
    (src / "crash.py").write_text("import torch\nSTUB_CRASH = 1\n")
    (src / "warn.py").write_text("import torch\ny = torch.special.zeta(x, q)\n")
    proc = jaxport("convert", src, "-o", tmp_path / "out", env=stub_env)
    assert proc.returncode == 1
    err = proc.stderr.decode()
    assert "crash.py:1:0: JP003 internal error: RuntimeError: stub pass crashed on purpose" in err
    assert "warn.py:2:4: JP101 torch.special.zeta has no mapping" in err
    assert "Traceback" not in err
    assert "0 converted, 1 partial, 0 copied, 1 failed" in err
    proc = jaxport("convert", src, "-o", tmp_path / "out", "-v", env=stub_env)
    assert proc.returncode == 1
    assert "Traceback (most recent call last)" in proc.stderr.decode()
    proc = jaxport("convert", src, "-o", tmp_path / "out", "-q", env=stub_env)
    err = proc.stderr.decode()
    assert "JP003" in err and "JP101" not in err and "Processed" not in err


def test_worker_dying_fails_only_its_file(tmp_path, stub_env):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(5):
        (src / f"ok{i}.py").write_text(TINY)
    (src / "killer.py").write_text("import torch\nSTUB_EXIT = 1\n")
    proc = jaxport("convert", src, "-o", tmp_path / "out", "-j", 2, "--report", tmp_path / "r.json",
                   env=stub_env)
    assert proc.returncode == 1, proc.stderr
    assert b"Traceback" not in proc.stderr
    files = {f["path"]: f for f in json.loads((tmp_path / "r.json").read_text())["files"]}
    assert files["killer.py"]["status"] == "failed"
    assert [d["code"] for d in files["killer.py"]["diagnostics"]] == ["JP003"]
    assert "died" in files["killer.py"]["diagnostics"][0]["message"]
    assert all(files[f"ok{i}.py"]["status"] == "converted" for i in range(5))
    assert (tmp_path / "out" / "killer.py").read_bytes() == (src / "killer.py").read_bytes()


def test_stdin_mode(tmp_path, converting_env):
    proc = jaxport("convert", "-", input=TINY.encode(), env=converting_env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout != TINY.encode() and proc.stdout
    compile(proc.stdout, "<stdin>", "exec")
    proc = jaxport("convert", "-", input=NO_TORCH.encode(), env=converting_env)
    assert proc.returncode == 0 and proc.stdout == NO_TORCH.encode()
    proc = jaxport("convert", "-", input=b"import torch\ndef f(:\n", env=converting_env)
    assert proc.returncode == 1
    assert proc.stdout == b"import torch\ndef f(:\n"
    assert b"<stdin>:" in proc.stderr and b"JP001" in proc.stderr
    proc = jaxport("convert", "-", "--check", input=TINY.encode(), env=converting_env)
    assert proc.returncode == 1 and proc.stdout == b""
    proc = jaxport("convert", "-", "-o", tmp_path / "o", input=TINY.encode())
    assert proc.returncode == 2


def test_single_file_input(tmp_path, converting_env):
    src = tmp_path / "model.py"
    src.write_text(TINY)
    proc = jaxport("convert", src, "-o", tmp_path / "out", env=converting_env)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out" / "model.py").read_bytes() != TINY.encode()
    proc = jaxport("convert", src, "-o", tmp_path / "model_jax.py", env=converting_env)
    assert proc.returncode == 0
    assert (tmp_path / "model_jax.py").read_bytes() == (tmp_path / "out" / "model.py").read_bytes()
    assert src.read_text() == TINY
    proc = jaxport("convert", src, "-o", src, env=converting_env)
    assert proc.returncode == 2 and src.read_text() == TINY


def test_several_inputs_go_under_their_names(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        d.mkdir()
        (d / "x.txt").write_text(d.name)
    proc = jaxport("convert", a, b, "-o", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out" / "a" / "x.txt").read_text() == "a"
    assert (tmp_path / "out" / "b" / "x.txt").read_text() == "b"


def test_report_formats(repo, tmp_path, stub_env):
    reports = {ext: tmp_path / "reports" / f"run.{ext}" for ext in ("json", "md", "html")}
    args = ["convert", repo, "-o", tmp_path / "out"]
    for path in reports.values():
        args += ["--report", path]
    proc = jaxport(*args, env=stub_env)
    assert proc.returncode == 1
    check_report_contract(json.loads(reports["json"].read_text()))
    md = reports["md"].read_text()
    assert md.startswith("# jaxport conversion report")
    assert "| JP001 | error | 1 |" in md
    page = reports["html"].read_text()
    assert page.startswith("<!DOCTYPE html>")
    assert "http://" not in page and "https://" not in page and "<link" not in page
    assert "pkg/model.py" in page and "jax.nn.relu" in page


def test_notebook_diff_shows_code_cells(repo, tmp_path, stub_env):
    proc = jaxport("convert", repo / "notebooks", "--check", "--diff", env=stub_env)
    assert proc.returncode == 1
    out = proc.stdout.decode()
    assert out.startswith("--- a/explore.ipynb\n+++ b/explore.ipynb\n@@ -1,4 +1,6 @@\n")
    assert ('\n "jaxport:cell 3"\n-y = torch.relu(torch.ones(2))\n+y = jax.nn.relu(torch.ones(2))\n'
            in out)                    # the code cells, not the notebook's JSON


def test_in_place(repo, tmp_path, stub_env):
    before = tree_hashes(repo)
    proc = jaxport("convert", repo, "--in-place", "-q", env=stub_env)
    assert proc.returncode == 1, proc.stderr        # broken.py and blob.py: errors, left alone
    after = tree_hashes(repo)
    changed = {"pkg/model.py", "notebooks/explore.ipynb", "pkg/legacy_latin1.py"}
    assert {p for p in before if before[p] != after[p]} == changed
    assert set(after) - set(before) == {p + ".torch.bak" for p in changed}
    for p in changed:
        assert after[p + ".torch.bak"] == before[p]
    assert "jax.nn.relu(" in (repo / "pkg/model.py").read_text()
    # a second run changes nothing (the first originals stay in the backups)
    proc = jaxport("convert", repo, "--in-place", "--report", tmp_path / "r.json", env=stub_env)
    assert tree_hashes(repo) == after
    assert b"Processed 14 files" in proc.stderr


@pytest.mark.parametrize("args", [["--in-place", "-o", "{tmp}/o"], ["--in-place", "--check"],
                                  ["-o", "{src}/sub"]])
def test_in_place_usage(tmp_path, args):
    src = tmp_path / "src"
    src.mkdir()
    (src / "m.py").write_text(TINY)
    proc = jaxport("convert", src, *[a.format(src=src, tmp=tmp_path) for a in args])
    assert proc.returncode == 2 and b"Traceback" not in proc.stderr
    assert os.listdir(src) == ["m.py"] and (src / "m.py").read_text() == TINY


def test_config_from_pyproject(repo, tmp_path, stub_env):
    (repo / "pkg" / "special.py").write_text("import torch\ny = torch.special.zeta(x, 2)\n")
    (repo / "pyproject.toml").write_text(
        '[tool.jaxport]\nparallel = "sharding"\nexclude = ["nested", "*.ipynb"]\n'
        '[tool.jaxport.per-file-ignores]\n"pkg/special.py" = ["JP101"]\n')
    out = tmp_path / "out"
    proc = jaxport("convert", repo, "-o", out, "--report", tmp_path / "r.json", "-v", env=stub_env)
    assert proc.returncode == 1
    assert f"config: {repo / 'pyproject.toml'}" in proc.stderr.decode()
    files = {f["path"]: f for f in json.loads((tmp_path / "r.json").read_text())["files"]}
    assert files["pkg/nested/deep/layers.py"]["status"] == "copied"
    assert files["notebooks/explore.ipynb"]["status"] == "copied"
    assert (out / "notebooks/explore.ipynb").read_bytes() == (repo / "notebooks/explore.ipynb").read_bytes()
    assert files["pkg/special.py"] == {"path": "pkg/special.py", "status": "converted", "diagnostics": []}
    assert "JP101" not in proc.stderr.decode()
    # a flag overrides the file's list
    proc = jaxport("convert", repo, "-o", tmp_path / "o2", "--exclude", "pkg", "--check",
                   "--report", tmp_path / "r2.json", env=stub_env)
    files = {f["path"]: f["status"] for f in json.loads((tmp_path / "r2.json").read_text())["files"]}
    assert files["pkg/model.py"] == "copied" and files["notebooks/explore.ipynb"] == "converted"


def test_malformed_config_exit_2(repo, tmp_path):
    (repo / "pyproject.toml").write_text('[tool.jaxport]\nlayout = "NHWC"\n')
    proc = jaxport("convert", repo, "-o", tmp_path / "out")
    assert proc.returncode == 2 and not (tmp_path / "out").exists()
    err = proc.stderr.decode()
    assert f"{repo / 'pyproject.toml'}: [tool.jaxport] layout: must be one of nchw, nhwc" in err
    assert "Traceback" not in err


def test_idempotent_end_to_end(repo, tmp_path, stub_env):
    # (two runs giving the same bytes: test_parallel_runs_identical_to_serial)
    first, second = tmp_path / "first", tmp_path / "second"
    assert jaxport("convert", repo, "-o", first, env=stub_env).returncode == 1
    proc = jaxport("convert", first, "-o", second, "--diff", env=stub_env)
    assert proc.stdout == b""                       # converting converted output changes nothing
    assert tree_hashes(second) == tree_hashes(first)


# --------------------------------------------------------------------------- other commands

def test_explain_known_and_unknown():
    proc = jaxport("explain", "JP101")
    assert proc.returncode == 0
    out = proc.stdout.decode()
    assert out.startswith("JP101 (warning): torch API not in the mapping tables")
    assert "Before:" in out and "After:" in out
    assert jaxport("explain", "jp001").returncode == 0
    proc = jaxport("explain", "JP999")
    assert proc.returncode == 2 and b"unknown code" in proc.stderr and proc.stdout == b""


def test_validate_and_weights_reject_bad_usage(tmp_path):
    a, b = tmp_path / "a.py", tmp_path / "b.py"
    a.write_text("x = 1\n")
    b.write_text("x = 1\n")
    assert b"--train-steps" in jaxport("validate", "--help").stdout
    assert jaxport("validate", a, b, "--examples", "lots").returncode == 2
    assert jaxport("validate", a, tmp_path / "missing.py").returncode == 2
    assert jaxport("weights", tmp_path / "missing.pt", "--module", f"{b}:Net",
                   "-o", tmp_path / "p.msgpack").returncode == 2


def test_help_and_version():
    proc = jaxport("--help")
    assert proc.returncode == 0
    for command in (b"convert", b"validate", b"weights", b"explain"):
        assert command in proc.stdout
    assert jaxport("--version").returncode == 0
    help_text = jaxport("convert", "--help").stdout
    for option in (b"--diff", b"--check", b"--report", b"--jobs", b"--parallel", b"--layout"):
        assert option in help_text


# --------------------------------------------------------------------------- packaging

def test_non_editable_install_runs_outside_the_repo(tmp_path):
    """``pip install .`` ships every package and the mapping tables; the console script works."""
    pytest.importorskip("setuptools")      # the build backend, used without build isolation
    src = tmp_path / "src"
    src.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    for package in ("transpiler", "mappings"):
        shutil.copytree(ROOT / package, src / package, ignore=ignore)
    target = tmp_path / "site"
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation",
                           "--no-index", "--quiet", "--target", str(target), str(src)],
                          capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    script = target / "bin" / "jaxport"
    assert script.exists()
    assert "transpiler.cli" in script.read_text()
    for name in ("diagnostics.toml", "functions.toml", "layers.toml"):
        assert (target / "mappings" / name).exists()
    for package in ("passes", "validate", "prelude"):
        assert (target / "transpiler" / package / "__init__.py").exists()
    env = env_for(stub=False)
    env["PYTHONPATH"] = str(target)
    away = tmp_path / "elsewhere"
    away.mkdir()
    proc = subprocess.run([str(script), "explain", "JP101"], cwd=away, env=env,
                          capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(b"JP101 (warning)")
    proc = subprocess.run([sys.executable, "-c", "import transpiler; print(transpiler.__file__)"],
                          cwd=away, env=env, capture_output=True, timeout=60)
    assert proc.stdout.decode().startswith(str(target))
