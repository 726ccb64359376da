"""Fuzzing the converter: whatever the input, ``convert_bytes`` returns a result that honours
the contract in tests/fuzz_support.py (no exception; output compiles or the file is reported
failed with its bytes kept; converting the output again does the same), and no pass crashes.

Inputs: hypothesmith programs (behind torch imports, with torch names spliced in, or run
inside an ``nn.Module.forward``), corpus files with tokens deleted or duplicated, lines
moved, indentation broken, truncated, and byte-level damage (bad UTF-8, NUL, coding cookies,
line endings, BOM).

Profiles: the CI profile is small and deterministic (``derandomize``); ``-m slow`` runs the
long profile (1000 examples per test, random seed), and ``JAXPORT_FUZZ_EXAMPLES=N`` sets the
number of examples of every profile. Each test prints ``fuzz[name]: programs tried N ...;
crashes K`` past pytest's capture (and appends it to ``$JAXPORT_FUZZ_LOG`` when set).
"""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fuzz_support as fs

hypothesmith = pytest.importorskip("hypothesmith")

# hypothesmith compiles what it generates; CPython's warnings about those programs are noise.
pytestmark = pytest.mark.filterwarnings("ignore::SyntaxWarning")

PROFILES = ["ci", pytest.param("long", marks=pytest.mark.slow)]


def run_fuzz(name: str, strategy, to_bytes, profile: str, capsys, record_property) -> fs.FuzzStats:
    """Run ``convert_checked(to_bytes(example))`` on examples of ``strategy``."""
    long = profile == "long"
    stats = fs.FuzzStats(name)
    kind = name.split("-")[0]

    @settings(max_examples=fs.fuzz_examples(kind, slow=long), derandomize=not long, database=None,
              deadline=None, suppress_health_check=list(HealthCheck), print_blob=True)
    @given(strategy)
    def one(example):
        data = to_bytes(example)
        if data is None:
            return
        fs.convert_checked(data, stats)

    try:
        one()
    finally:
        fs.report_stats(stats, capsys, record_property)
    assert not stats.crashes, stats.crashes
    return stats


programs = hypothesmith.from_grammar()


@pytest.mark.parametrize("profile", PROFILES)
def test_hypothesmith_programs_behind_torch_imports(profile, capsys, record_property):
    stats = run_fuzz("hypothesmith-prefixed", programs,
                     lambda src: (fs.TORCH_PREFIX + src).encode("utf-8", "surrogatepass"),
                     profile, capsys, record_property)
    assert stats.tried >= min(10, fs.fuzz_examples("hypothesmith"))


@pytest.mark.parametrize("profile", PROFILES)
def test_hypothesmith_programs_with_torch_names_spliced_in(profile, capsys, record_property):
    strategy = st.tuples(programs, st.lists(st.integers(0, 10**6), min_size=1, max_size=4))

    def to_bytes(example):
        src, picks = example
        return (fs.TORCH_PREFIX + fs.splice_torch_names(src, picks)).encode("utf-8", "surrogatepass")

    stats = run_fuzz("hypothesmith-spliced", strategy, to_bytes, profile, capsys, record_property)
    assert stats.tried >= min(10, fs.fuzz_examples("hypothesmith"))


@pytest.mark.parametrize("profile", PROFILES)
def test_hypothesmith_programs_inside_module_forward(profile, capsys, record_property):
    stats = run_fuzz("embedded", programs,
                     lambda src: fs.embed_in_module(src).encode("utf-8", "surrogatepass"),
                     profile, capsys, record_property)
    # The module around the program is converted whenever the program fits in a method body.
    assert stats.statuses["converted"] + stats.statuses["partial"] > 0 or stats.tried < 10


mutations = st.lists(st.tuples(st.sampled_from(fs.TEXT_MUTATIONS), st.integers(0, 10**6),
                               st.integers(0, 10**6)), min_size=1, max_size=3)


@pytest.mark.parametrize("profile", PROFILES)
def test_mutated_corpus_files(profile, capsys, record_property):
    strategy = st.tuples(st.integers(0, len(fs.CORPUS_FILES) - 1), mutations)

    def to_bytes(example):
        index, muts = example
        text = fs.corpus_text(index)
        for kind, a, b in muts:
            text = fs.mutate(text, kind, a, b)
        return text.encode("utf-8")

    stats = run_fuzz("mutated-corpus", strategy, to_bytes, profile, capsys, record_property)
    # Both outcomes are exercised: damage the parser rejects, and damage it accepts.
    if stats.tried >= 50:
        assert stats.statuses["failed"] > 0 and stats.statuses["converted"] + stats.statuses["partial"] > 0


SMALL_MODEL = fs.TORCH_PREFIX + (
    "# café: a comment that is not ASCII\n\n\nclass Net(nn.Module):\n"
    "    def __init__(self):\n        super().__init__()\n        self.fc = nn.Linear(4, 2)\n\n"
    "    def forward(self, x):\n        return F.relu(self.fc(x))\n")


@pytest.mark.parametrize("profile", PROFILES)
def test_byte_damaged_files(profile, capsys, record_property):
    base = st.one_of(st.just(SMALL_MODEL), programs.map(lambda s: fs.TORCH_PREFIX + s))
    damage = st.lists(st.tuples(st.sampled_from(fs.BYTE_MUTATIONS), st.integers(0, 10**6),
                                st.integers(0, 10**6)), min_size=1, max_size=3)

    def to_bytes(example):
        src, muts = example
        data = src.encode("utf-8", "surrogatepass")
        for kind, a, b in muts:
            data = fs.mutate_bytes(data, kind, a, b)
        return data

    run_fuzz("bytes", st.tuples(base, damage), to_bytes, profile, capsys, record_property)


def test_mutations_do_what_they_say():
    text = "def f(x):\n    return x + 1\n"
    assert fs.mutate(text, "delete_token", 1, 0) == "def (x):\n    return x + 1\n"
    assert fs.mutate(text, "duplicate_token", 1, 0) == "def ff(x):\n    return x + 1\n"
    assert fs.mutate(text, "swap_lines", 0, 1) == "    return x + 1\ndef f(x):\n"
    assert fs.mutate(text, "dedent", 1, 0) == "def f(x):\nreturn x + 1\n"
    assert fs.mutate(text, "tabify", 1, 0) == "def f(x):\n\treturn x + 1\n"
    assert fs.mutate(text, "truncate", 5, 0) == "def f"
    assert fs.mutate_bytes(b"a\nb\n", "crlf", 0, 0) == b"a\r\nb\r\n"
    assert fs.splice_torch_names("a = b", [1]) == "nn = b"
    assert "class Fuzzed(nn.Module)" in fs.embed_in_module("y = 1\n")
    assert fs.compiles(fs.embed_in_module("y = 1\n"))


def test_contract_checker_catches_violations():
    """The checker is what the fuzz tests rely on: it must reject broken results."""
    from transpiler.api import FileResult, convert_bytes
    from transpiler import diagnostics as diag
    data = b"import torch\nx = torch.zeros(3)\n"
    good = convert_bytes(data, "t.py")
    fs.check_result(data, good)
    bad = [
        FileResult("t.py", "converted", b"def f(:\n"),                                   # does not compile
        FileResult("t.py", "failed", b"", [diag.make("JP001", "x")]),                    # original lost
        FileResult("t.py", "failed", data, []),                                          # no error
        FileResult("t.py", "copied", b"x = 1\n"),                                        # copied but changed
        FileResult("t.py", "converted", good.output, [diag.make("JP101", "x", line=40)]),  # off the file
        FileResult("t.py", "weird", data),
    ]
    for result in bad:
        with pytest.raises(fs.ContractViolation):
            fs.check_result(data, result)
