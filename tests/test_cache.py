"""The disk cache of start-up data (transpiler/cache.py): a hit gives what a fresh build
gives, any change to a source file misses, and a broken or unwritable cache is never an
error."""
from __future__ import annotations

import pickle

import pytest

from transpiler import cache, mapping, prelude_index
from transpiler.mapping import MappingError, _entry


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXPORT_CACHE_DIR", str(tmp_path / "c"))
    monkeypatch.delenv("JAXPORT_NO_CACHE", raising=False)
    return tmp_path / "c"


def _sources(tmp_path, text="a"):
    src = tmp_path / "src.txt"
    src.write_text(text)
    return lambda: [src]


def test_hit_returns_what_the_first_process_built(tmp_path, cache_dir):
    calls = []

    def build():
        calls.append(1)
        return {"value": len(calls)}

    sources = _sources(tmp_path)
    assert cache.cached("t", sources, build) == {"value": 1}
    assert cache.cached("t", sources, build) == {"value": 1}     # read back, not rebuilt
    assert calls == [1]
    assert len(list(cache_dir.glob("t-*.pickle"))) == 1


def test_a_changed_source_misses(tmp_path, cache_dir):
    assert cache.cached("t", _sources(tmp_path, "a"), lambda: "first") == "first"
    assert cache.cached("t", _sources(tmp_path, "b"), lambda: "second") == "second"
    assert cache.cached("t", _sources(tmp_path, "a"), lambda: "third") == "first"


def test_corrupt_entry_is_rebuilt_and_rewritten(tmp_path, cache_dir):
    sources = _sources(tmp_path)
    cache.cached("t", sources, lambda: "good")
    (entry,) = cache_dir.glob("t-*.pickle")
    entry.write_bytes(b"not a pickle")
    assert cache.cached("t", sources, lambda: "rebuilt") == "rebuilt"
    assert pickle.loads(entry.read_bytes()) == "rebuilt"


def test_disabled_or_unwritable_cache_builds_in_memory(tmp_path, monkeypatch, cache_dir):
    sources = _sources(tmp_path)
    monkeypatch.setenv("JAXPORT_NO_CACHE", "1")
    assert cache.cached("t", sources, lambda: 1) == 1
    assert not cache_dir.exists()
    monkeypatch.delenv("JAXPORT_NO_CACHE")
    cache_dir.write_text("a file where the folder should be")
    assert cache.cached("t", sources, lambda: 2) == 2
    assert cache.cached_text("g", sources, "k", lambda: "x") == "x"


def test_texts_are_cached_one_file_each(tmp_path, cache_dir):
    sources = _sources(tmp_path)
    assert cache.cached_text("g", sources, "one", lambda: "1\n") == "1\n"
    assert cache.cached_text("g", sources, "two", lambda: "2\r\n") == "2\r\n"
    assert cache.cached_text("g", sources, "one", lambda: "changed") == "1\n"
    assert len(list(cache_dir.glob("g-*/*.txt"))) == 2


def test_cached_tables_and_prelude_index_equal_a_fresh_build(cache_dir):
    fresh_tables = mapping._load_tables()
    fresh_index = prelude_index._index()
    for _ in range(2):          # the first call writes the cache, the second reads it
        tables = cache.cached("tables", mapping._sources, mapping._load_tables)
        index = cache.cached("prelude", prelude_index._sources, prelude_index._index)
        assert tables == fresh_tables
        assert index == fresh_index
    assert {p.name.split("-")[0] for p in cache_dir.glob("*.pickle")} == {"tables", "prelude"}


def test_returns_value_marks_tensor_methods_with_non_tensor_results():
    methods = mapping.load_tables().tensor_methods
    for name in ("item", "size", "tolist", "numpy", "dim", "numel"):
        assert methods[name].returns == "value"
    for name in ("view", "sum", "transpose"):
        assert methods[name].returns == "tensor"
    with pytest.raises(MappingError, match="returns"):
        _entry("tensor_methods", "x", {"sig": "self", "to": "self", "returns": "number"})
    with pytest.raises(MappingError, match="returns"):
        _entry("functions", "torch.x", {"sig": "input", "to": "input", "returns": "value"})
