"""Whole-tree conversion (transpiler.tree) in process: planning, safety, copying, symlinks,
I/O failures, parallel determinism. The conversion itself is replaced by a small stand-in
(monkeypatched ``transpiler.pipeline``) so these tests do not depend on the passes."""
from __future__ import annotations

import io
import json
import os
import stat
import sys
import types
from dataclasses import dataclass
from pathlib import Path

import pytest

from transpiler import config as cfg
from transpiler import tree
from transpiler.api import Options
from transpiler.tree import TreeError, convert_tree, plan_tree

TINY = "import torch\n\n\ndef f(x):\n    return torch.relu(x)\n"


@dataclass
class _Outcome:
    code: str
    diagnostics: list
    torch_call_sites: int
    converted_call_sites: int


SEEN_OPTIONS: dict[str, Options] = {}     # path → the options the stand-in was given


@pytest.fixture(autouse=True)
def stub_pipeline(monkeypatch):
    """``torch.relu(`` → ``jnp.relu(``; ``torch.special.zeta(`` left with a JP101 warning;
    nothing else. Only for this module's tests."""
    from transpiler import diagnostics as diag

    def run_pipeline(module, path, options, origin=None, text=None):
        SEEN_OPTIONS[path] = options
        code = module.code
        n = code.count("torch.relu(")
        problems = [diag.make("JP101", "torch.special.zeta has no mapping", i, line.find("torch.special"))
                    for i, line in enumerate(code.splitlines(), 1) if "torch.special.zeta(" in line]
        return _Outcome(code.replace("torch.relu(", "jnp.relu("), problems, n + len(problems), n)

    stub = types.ModuleType("transpiler.pipeline")
    stub.run_pipeline = run_pipeline
    stub.mentions_torch = lambda text: "torch" in text
    monkeypatch.setitem(sys.modules, "transpiler.pipeline", stub)


def write(root: Path, files: dict[str, bytes | str]) -> None:
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data.encode() if isinstance(data, str) else data)


def snapshot(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file() and not p.is_symlink()}


@pytest.fixture
def src(tmp_path) -> Path:
    root = tmp_path / "src"
    write(root, {
        "a.py": TINY,
        "plain.py": "x = 1\n",
        "pkg/__init__.py": "",
        "pkg/deep/m.py": TINY,
        "pkg/table.csv": "a,b\n",
        "pkg/__pycache__/m.cpython-311.pyc": b"\x00",
        "stale.pyc": b"\x00",
        ".git/HEAD": "ref: refs/heads/main\n",
        "env/pyvenv.cfg": "home = /usr\n",
        "env/lib/site.py": TINY,
        "thing.egg-info/PKG-INFO": "Name: thing\n",
    })
    return root


def test_mirrors_and_skips(src, tmp_path):
    before = snapshot(src)
    out = tmp_path / "out"
    run = convert_tree([str(src)], str(out), Options(), jobs=1)
    assert snapshot(src) == before
    assert [r.path for r in run.records] == ["a.py", "pkg/__init__.py", "pkg/deep/m.py",
                                             "pkg/table.csv", "plain.py"]
    assert {r.path: r.status for r in run.records} == {
        "a.py": "converted", "pkg/__init__.py": "copied", "pkg/deep/m.py": "converted",
        "pkg/table.csv": "copied", "plain.py": "copied"}
    got = snapshot(out)
    assert set(got) == {r.path for r in run.records}
    assert got["a.py"] == TINY.replace("torch.relu(", "jnp.relu(").encode()
    assert got["plain.py"] == b"x = 1\n" and got["pkg/table.csv"] == b"a,b\n"
    assert run.exit_code() == 0
    assert run.summary() == {"files": 5, "converted": 2, "partial": 0, "failed": 0,
                             "torch_call_sites": 2, "converted_call_sites": 2}
    assert not [p for p in os.listdir(out) if p.endswith(".jaxport-tmp")]


def test_output_bytes_not_kept_in_memory(src, tmp_path):
    run = convert_tree([str(src)], str(tmp_path / "out"), Options(), jobs=1)
    assert all(r.result.output == b"" for r in run.records)
    assert all(r.original_text is None for r in run.records)
    run = convert_tree([str(src)], str(tmp_path / "out"), Options(), jobs=1, keep_text=True)
    rec = {r.path: r for r in run.records}["a.py"]
    assert rec.original_text == TINY and "jnp.relu(" in rec.output_text


def test_file_mode_preserved(tmp_path):
    src = tmp_path / "src"
    write(src, {"run.py": "#!/usr/bin/env python\n" + TINY, "tool.sh": "echo hi\n"})
    for name in ("run.py", "tool.sh"):
        os.chmod(src / name, 0o755)
    convert_tree([str(src)], str(tmp_path / "out"), Options(), jobs=1)
    for name in ("run.py", "tool.sh"):
        assert stat.S_IMODE(os.stat(tmp_path / "out" / name).st_mode) == 0o755


@pytest.mark.parametrize("out_rel", ["src", "src/out", "src/pkg/out", "src/./pkg/../out"])
def test_refuses_output_at_or_inside_input(src, tmp_path, out_rel):
    with pytest.raises(TreeError, match="inside the input|input file itself|inside the input directory"):
        plan_tree([str(src)], str(tmp_path / out_rel), Options())


def test_refuses_input_inside_output(src, tmp_path):
    with pytest.raises(TreeError, match="inside the output"):
        plan_tree([str(src / "pkg")], str(src), Options())


def test_refuses_output_reached_through_symlink(src, tmp_path):
    (tmp_path / "alias").symlink_to(src / "pkg", target_is_directory=True)
    with pytest.raises(TreeError):
        plan_tree([str(src)], str(tmp_path / "alias" / "out"), Options())


def test_other_usage_errors(src, tmp_path):
    with pytest.raises(TreeError, match="missing option"):
        plan_tree([str(src)], None, Options())
    with pytest.raises(TreeError, match="does not exist"):
        plan_tree([str(tmp_path / "nope")], str(tmp_path / "out"), Options())
    with pytest.raises(TreeError, match="only PATH"):
        plan_tree([str(src), "-"], str(tmp_path / "out"), Options())
    (tmp_path / "file").write_text("x")
    with pytest.raises(TreeError, match="not a directory"):
        plan_tree([str(src)], str(tmp_path / "file"), Options())
    other = tmp_path / "other" / "src"
    other.mkdir(parents=True)
    with pytest.raises(TreeError, match="collide"):
        plan_tree([str(src), str(other)], str(tmp_path / "out"), Options())


def test_check_mode_writes_nothing(src, tmp_path):
    out = tmp_path / "out"
    run = convert_tree([str(src)], str(out), Options(), jobs=1, check=True)
    assert not out.exists()
    assert run.exit_code() == 1 and [r.path for r in run.changed] == ["a.py", "pkg/deep/m.py"]
    run = convert_tree([str(src / "pkg" / "table.csv")], None, Options(), jobs=1, check=True)
    assert run.exit_code() == 0


def test_symlinks_are_not_followed(tmp_path):
    outside = tmp_path / "outside"
    write(outside, {"secret.py": TINY})
    src = tmp_path / "src"
    write(src, {"pkg/m.py": TINY})
    (src / "loop").symlink_to(src, target_is_directory=True)           # a loop
    (src / "pkg" / "self").symlink_to("..", target_is_directory=True)  # another loop
    (src / "ext").symlink_to(outside, target_is_directory=True)        # leaves the tree
    (src / "ext.py").symlink_to(outside / "secret.py")
    (src / "alias.py").symlink_to("pkg/m.py")                         # stays inside
    (src / "dangling.py").symlink_to("nowhere.py")
    out = tmp_path / "out"
    run = convert_tree([str(src)], str(out), Options(), jobs=1)
    assert [r.path for r in run.records] == ["pkg/m.py"]
    assert not (out / "ext").exists() and not (out / "ext.py").exists()
    assert os.path.islink(out / "alias.py") and os.readlink(out / "alias.py") == os.path.join("pkg", "m.py")
    assert (out / "alias.py").read_bytes() == (out / "pkg" / "m.py").read_bytes()
    assert os.path.islink(out / "loop")
    notes = "\n".join(run.notes)
    assert "ext: skipped: symlink to outside" in notes and "dangling.py: skipped: dangling" in notes


def test_never_writes_through_output_symlink_into_input(src, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "pkg").symlink_to(src / "pkg", target_is_directory=True)
    before = snapshot(src)
    run = convert_tree([str(src)], str(out), Options(), jobs=1)
    assert snapshot(src) == before
    failed = {r.path: r for r in run.records if r.status == "failed"}
    assert set(failed) == {"pkg/__init__.py", "pkg/deep/m.py", "pkg/table.csv"}
    assert all(d.code == "JP005" and "input" in d.message
               for r in failed.values() for d in r.diagnostics)
    assert run.exit_code() == 1


def test_unwritable_output_is_a_file_error_and_run_goes_on(src, tmp_path):
    out = tmp_path / "out"
    (out / "a.py").mkdir(parents=True)         # a directory where a file must go
    (out / "pkg" / "table.csv").mkdir(parents=True)
    run = convert_tree([str(src)], str(out), Options(), jobs=1)
    by = {r.path: r for r in run.records}
    for path in ("a.py", "pkg/table.csv"):
        assert by[path].status == "failed"
        assert [d.code for d in by[path].diagnostics] == ["JP005"]
        assert by[path].diagnostics[0].severity == "error"
    assert (out / "pkg" / "deep" / "m.py").exists() and (out / "plain.py").exists()
    assert run.exit_code() == 1
    assert not [p for p in (out / "pkg").iterdir() if p.name.endswith(".jaxport-tmp")]


def test_unreadable_file_is_a_file_error(src, tmp_path, monkeypatch):
    real_open = open

    def flaky_open(path, *args, **kwargs):
        if str(path).endswith("a.py"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", flaky_open)
    run = convert_tree([str(src)], str(tmp_path / "out"), Options(), jobs=1)
    rec = {r.path: r for r in run.records}["a.py"]
    assert rec.status == "failed" and rec.diagnostics[0].code == "JP005"
    assert "Permission denied" in rec.diagnostics[0].message
    assert not (tmp_path / "out" / "a.py").exists()
    assert (tmp_path / "out" / "pkg" / "deep" / "m.py").exists()


def test_internal_error_in_converter_is_contained(src, tmp_path, monkeypatch):
    def boom(data, path, options=None, origin=None):
        raise MemoryError("pretend")
    monkeypatch.setattr(tree, "convert_bytes", boom)
    run = convert_tree([str(src)], str(tmp_path / "out"), Options(), jobs=1)
    rec = {r.path: r for r in run.records}["a.py"]
    assert rec.status == "failed" and rec.diagnostics[0].code == "JP003"
    assert "MemoryError" in rec.result.traceback
    assert (tmp_path / "out" / "a.py").read_text() == TINY   # original kept


def test_stdin(tmp_path):
    run = convert_tree(["-"], None, Options(), stdin=io.BytesIO(TINY.encode()))
    assert [r.path for r in run.records] == ["<stdin>"]
    assert run.stdout == TINY.replace("torch.relu(", "jnp.relu(").encode()
    assert run.exit_code() == 0


def test_progress_callback(src, tmp_path):
    seen = []
    convert_tree([str(src)], str(tmp_path / "o1"), Options(), jobs=1,
                 on_progress=lambda done, total, rec: seen.append((done, total, rec.path)))
    assert [(d, t) for d, t, _ in seen] == [(i, 5) for i in range(1, 6)]
    assert sorted(p for _, _, p in seen) == ["a.py", "pkg/__init__.py", "pkg/deep/m.py",
                                             "pkg/table.csv", "plain.py"]
# -j 1 against -j 2 (worker processes) is tested end to end in test_cli.py.


# --------------------------------------------------------------------------- notebooks

def notebook(*sources: str) -> str:
    cells = [{"cell_type": "markdown", "metadata": {}, "source": ["# notes"]}]
    cells += [{"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [],
               "source": s.splitlines(keepends=True)} for s in sources]
    return json.dumps({"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5},
                      indent=1) + "\n"


def test_notebooks_in_a_tree(tmp_path):
    src = tmp_path / "src"
    write(src, {"nb/a.ipynb": notebook("import torch", "y = torch.relu(x)\nz = torch.special.zeta(y, 2)"),
                "nb/plain.ipynb": notebook("x = 1"),
                "nb/data.json": "{}\n"})
    run = convert_tree([str(src)], str(tmp_path / "out"), Options(), jobs=1, keep_text=True)
    by = {r.path: r for r in run.records}
    assert {p: r.status for p, r in by.items()} == {
        "nb/a.ipynb": "partial", "nb/plain.ipynb": "copied", "nb/data.json": "copied"}
    out = json.loads((tmp_path / "out" / "nb" / "a.ipynb").read_text())
    assert out["cells"][2]["source"] == ["y = jnp.relu(x)\n", "z = torch.special.zeta(y, 2)"]
    assert (tmp_path / "out" / "nb" / "plain.ipynb").read_bytes() == (src / "nb" / "plain.ipynb").read_bytes()
    a = by["nb/a.ipynb"]
    assert a.python and a.changed
    [d] = a.diagnostics
    assert (d.code, d.line, d.col) == ("JP101", 5, 4)
    assert d.message == "cell 3, line 2: torch.special.zeta has no mapping"
    assert a.original_text.splitlines()[d.line - 1].startswith("z = torch.special.zeta")
    assert a.output_text.splitlines()[2] == '"jaxport:cell 3"'


# --------------------------------------------------------------------------- --in-place

def test_in_place_rewrites_changed_files_with_backups(src, tmp_path):
    (src / "nb.ipynb").write_text(notebook("import torch\ny = torch.relu(x)"))
    (src / "link.py").symlink_to("a.py")
    before = snapshot(src)
    run = convert_tree([str(src)], None, Options(), jobs=1, in_place=True)
    assert run.exit_code() == 0
    after = snapshot(src)
    changed = {"a.py", "pkg/deep/m.py", "nb.ipynb"}
    assert {r.path for r in run.changed} == changed
    for path in changed:
        assert after[path + tree.BACKUP_SUFFIX] == before[path]
        assert after[path] != before[path]
    assert after["a.py"] == TINY.replace("torch.relu(", "jnp.relu(").encode()
    # nothing else was written: no new files but the backups, other files byte for byte
    assert set(after) == set(before) | {p + tree.BACKUP_SUFFIX for p in changed}
    assert all(after[p] == before[p] for p in before if p not in changed)
    assert os.readlink(src / "link.py") == "a.py"
    # a second run changes nothing and keeps the first originals in the backups
    again = convert_tree([str(src)], None, Options(), jobs=1, in_place=True)
    assert again.changed == [] and snapshot(src) == after
    assert not any(r.path.endswith(tree.BACKUP_SUFFIX) for r in again.records)


def test_in_place_single_file_and_usage_errors(tmp_path):
    f = tmp_path / "m.py"
    f.write_text(TINY)
    convert_tree([str(f)], None, Options(), jobs=1, in_place=True)
    assert "jnp.relu(" in f.read_text() and (tmp_path / "m.py.torch.bak").read_text() == TINY
    with pytest.raises(TreeError, match="drop -o"):
        convert_tree([str(f)], str(tmp_path / "o"), Options(), in_place=True)
    with pytest.raises(TreeError, match="--check"):
        convert_tree([str(f)], None, Options(), in_place=True, check=True)
    with pytest.raises(TreeError, match="standard input"):
        convert_tree(["-"], None, Options(), in_place=True, stdin=io.BytesIO(b""))
    with pytest.raises(TreeError, match="missing option"):      # without the flag: -o needed
        convert_tree([str(f)], None, Options())


# --------------------------------------------------------------------------- configuration

def test_config_parallel_layout_and_flags_override(tmp_path):
    src = tmp_path / "src"
    write(src, {"a.py": TINY, "pyproject.toml": '[tool.jaxport]\nparallel = "sharding"\nlayout = "nhwc"\n'})
    SEEN_OPTIONS.clear()
    run = convert_tree([str(src)], str(tmp_path / "o1"), Options(), jobs=1)
    assert SEEN_OPTIONS["a.py"] == Options(parallel="sharding", layout="nhwc")
    assert run.configs == [str(src / "pyproject.toml")]
    assert (tmp_path / "o1" / "pyproject.toml").exists()          # copied like any file
    convert_tree([str(src)], str(tmp_path / "o2"), Options(), jobs=1,
                 overrides=cfg.Settings(layout="nchw"))
    assert SEEN_OPTIONS["a.py"] == Options(parallel="sharding", layout="nchw")
    convert_tree([str(src / "a.py")], str(tmp_path / "o3"), Options(), jobs=1)
    assert SEEN_OPTIONS["a.py"] == Options()          # a file input has no input root config


def test_config_exclude_and_per_file_ignores(tmp_path):
    zeta = "import torch\ny = torch.special.zeta(x, 2)\nz = torch.relu(y)\n"
    src = tmp_path / "src"
    write(src, {"keep/m.py": TINY, "gen/m.py": TINY, "nb.ipynb": notebook("import torch", "y = torch.relu(x)"),
                "tests/t.py": zeta, "pkg/z.py": zeta,
                "pyproject.toml": '[tool.jaxport]\nexclude = ["gen", "*.ipynb"]\n'
                                  '[tool.jaxport.per-file-ignores]\n"tests/**" = ["JP1"]\n'})
    out = tmp_path / "out"
    run = convert_tree([str(src)], str(out), Options(), jobs=1)
    by = {r.path: r for r in run.records}
    assert by["gen/m.py"].status == "copied" and (out / "gen" / "m.py").read_text() == TINY
    assert by["nb.ipynb"].status == "copied"
    assert (out / "nb.ipynb").read_bytes() == (src / "nb.ipynb").read_bytes()
    assert by["keep/m.py"].status == "converted"
    assert by["tests/t.py"].status == "converted" and by["tests/t.py"].diagnostics == []
    assert by["pkg/z.py"].status == "partial" and [d.code for d in by["pkg/z.py"].diagnostics] == ["JP101"]
    assert (out / "tests" / "t.py").read_bytes() == (out / "pkg" / "z.py").read_bytes()  # output unaffected
    # --exclude on the command line replaces the file's list
    run = convert_tree([str(src)], str(tmp_path / "o2"), Options(), jobs=1,
                       overrides=cfg.Settings(exclude=("keep",)))
    by = {r.path: r.status for r in run.records}
    assert (by["keep/m.py"], by["gen/m.py"], by["nb.ipynb"]) == ("copied", "converted", "converted")


def test_config_per_input_directory(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    write(a, {"m.py": TINY, "pyproject.toml": '[tool.jaxport]\nexclude = ["m.py"]\n'})
    write(b, {"m.py": TINY})
    run = convert_tree([str(a), str(b)], str(tmp_path / "out"), Options(), jobs=1)
    by = {r.path: r.status for r in run.records}
    assert by["a/m.py"] == "copied" and by["b/m.py"] == "converted"


@pytest.mark.parametrize("text, needle", [
    ('[tool.jaxport]\nlayout = "NCHW"\n', "layout: must be one of"),
    ('[tool.jaxport]\nexclude = "gen"\n', "exclude: expected a list"),
    ('[tool.jaxport]\njobs = 3\n', "unknown key 'jobs'"),
    ('[tool.jaxport\n', "invalid TOML"),
])
def test_malformed_config_is_a_usage_error(tmp_path, text, needle):
    src = tmp_path / "src"
    write(src, {"a.py": TINY, "pyproject.toml": text})
    with pytest.raises(TreeError) as info:
        convert_tree([str(src)], str(tmp_path / "out"), Options(), jobs=1)
    assert str(info.value).startswith(str(src / "pyproject.toml") + ":") and needle in str(info.value)
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- idempotence

def test_idempotent_and_deterministic(src, tmp_path):
    write(src, {"nb.ipynb": notebook("import torch", "y = torch.relu(x)\nz = torch.special.zeta(y, 2)"),
                "w.py": "import torch\nz = torch.special.zeta(y, 2)\n"})
    first = convert_tree([str(src)], str(tmp_path / "out1"), Options(), jobs=1)
    assert first.changed
    again = convert_tree([str(src)], str(tmp_path / "out1b"), Options(), jobs=1)
    assert snapshot(tmp_path / "out1") == snapshot(tmp_path / "out1b")
    second = convert_tree([str(tmp_path / "out1")], str(tmp_path / "out2"), Options(), jobs=1)
    assert second.changed == []
    assert snapshot(tmp_path / "out2") == snapshot(tmp_path / "out1")
    assert [r.to_json() for r in again.records] == [r.to_json() for r in first.records]
