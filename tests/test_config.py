"""[tool.jaxport] configuration (transpiler.config): globs, validation, error messages."""
from __future__ import annotations

import pytest

from transpiler.config import ConfigError, Settings, ignore, load, matches, parse
from transpiler.diagnostics import Diagnostic


@pytest.mark.parametrize("path, pattern, expected", [
    ("pkg/old/m.py", "pkg/old", True),            # a directory excludes what is below it
    ("pkg/old/m.py", "pkg/old/", True),
    ("pkg/older.py", "pkg/old", False),
    ("a/b/legacy/x.py", "legacy", True),          # no '/': any component
    ("a/legacy.py", "legacy", False),
    ("nb/explore.ipynb", "*.ipynb", True),
    ("tests/unit/test_a.py", "tests/**", True),
    ("src/tests/test_a.py", "tests/**", False),   # with '/': from the root
    ("x/gen_pb2.py", "**/*_pb2.py", True),
    ("gen_pb2.py", "**/*_pb2.py", True),          # leading **/ also matches at the root
    ("pkg/m.py", "./pkg", True),
    ("pkg/m.py", "", False),
    ("Pkg/m.py", "pkg", False),                   # case-sensitive
])
def test_matches(path, pattern, expected):
    assert matches(path, pattern) is expected


def test_parse_and_lookups():
    s = parse({"parallel": "sharding", "layout": "nhwc", "exclude": ["third_party"],
               "per-file-ignores": {"tests/**": ["JP101"], "*.ipynb": ["JP4", "JP2"]}}, "pp.toml")
    assert (s.parallel, s.layout, s.exclude) == ("sharding", "nhwc", ("third_party",))
    assert s.excluded("third_party/x/y.py") and not s.excluded("pkg/y.py")
    assert s.ignored_codes("tests/a.py") == ("JP101",)
    assert s.ignored_codes("tests/nb.ipynb") == ("JP101", "JP4", "JP2")
    assert s.ignored_codes("pkg/a.py") == ()
    diags = [Diagnostic(1, 0, c, "warning", "m") for c in ("JP101", "JP102", "JP401", "JP201")]
    assert [d.code for d in ignore(diags, ("JP101", "JP4"))] == ["JP102", "JP201"]


def test_flags_override_file():
    found = parse({"parallel": "sharding", "layout": "nhwc", "exclude": ["a"]}, "pp.toml")
    merged = Settings(parallel="pmap", exclude=("b",)).over(found)
    assert (merged.parallel, merged.layout, merged.exclude) == ("pmap", "nhwc", ("b",))
    assert Settings().over(found) == found


@pytest.mark.parametrize("table, key, needle", [
    ({"paralel": "pmap"}, "'paralel'", "unknown key"),
    ({"parallel": "tpu"}, "parallel", "must be one of pmap, sharding"),
    ({"layout": 3}, "layout", "must be one of nchw, nhwc"),
    ({"exclude": "pkg"}, "exclude", "list of strings"),
    ({"exclude": ["a", 1]}, "exclude", "list of strings"),
    ({"per-file-ignores": ["JP101"]}, "per-file-ignores", "table"),
    ({"per-file-ignores": {"t/**": "JP101"}}, "per-file-ignores.'t/**'", "list of strings"),
    ({"per-file-ignores": {"t/**": ["E501"]}}, "per-file-ignores.'t/**'", "not a diagnostic code"),
])
def test_malformed_tables_name_file_and_key(table, key, needle):
    with pytest.raises(ConfigError) as info:
        parse(table, "/repo/pyproject.toml")
    message = str(info.value)
    assert message.startswith("/repo/pyproject.toml: [tool.jaxport]")
    assert key in message and needle in message


def test_load(tmp_path):
    assert load(str(tmp_path)) == Settings()
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    assert load(str(tmp_path)) == Settings(source=str(tmp_path / "pyproject.toml"))
    (tmp_path / "pyproject.toml").write_text("[tool.jaxport]\nlayout = 'nhwc'\n")
    assert load(str(tmp_path)).layout == "nhwc"
    (tmp_path / "pyproject.toml").write_text("[tool.jaxport\nlayout = 'nhwc'\n")
    with pytest.raises(ConfigError, match=r"pyproject.toml: invalid TOML"):
        load(str(tmp_path))
    (tmp_path / "pyproject.toml").write_text("[tool]\njaxport = 3\n")
    with pytest.raises(ConfigError, match=r"expected a table"):
        load(str(tmp_path))
