"""Shared machinery of the fuzz and robustness tests: corpus files, mutations, the contract
every conversion must honour, and the counters the fuzz tests print.

The contract of :func:`transpiler.api.convert_bytes` on *any* input:

* it returns (never raises) a result whose status is one of the four statuses;
* a ``failed`` result carries at least one error diagnostic and the original bytes unchanged;
* ``copied`` (nothing to convert) means the output is the input, valid Python or not;
* any other result's output decodes and compiles;
* every diagnostic has a registered code with its registered severity and a position inside
  the input (line 1 .. number of lines + 1, col >= 0);
* converting the output again obeys the same contract.

Internal errors (JP003: a pass raised; JP004: the output did not compile) keep the contract
(the file is reported failed and kept) but are jaxport bugs: the fuzz tests count them as
crashes and fail on them.
"""
from __future__ import annotations

import functools
import os
import re
import sys
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "corpus"
CORPUS_FILES = sorted(p for sub in ("models", "training") for p in (CORPUS / sub).glob("*.py"))

TORCH_PREFIX = "import torch\nimport torch.nn as nn\nimport torch.nn.functional as F\n"
INTERNAL_CODES = ("JP003", "JP004")

# Examples per fuzz test: small and fixed in CI; JAXPORT_FUZZ_EXAMPLES=N for a long run.
CI_EXAMPLES = {"hypothesmith": 40, "embedded": 40, "mutated": 120, "bytes": 60}
SLOW_EXAMPLES = 1000


def fuzz_examples(kind: str, slow: bool = False) -> int:
    env = os.environ.get("JAXPORT_FUZZ_EXAMPLES")
    if env:
        return max(1, int(env))
    return SLOW_EXAMPLES if slow else CI_EXAMPLES[kind]


# --------------------------------------------------------------------------- counters

@dataclass
class FuzzStats:
    """What one fuzz test tried and found (printed, and recorded as junit properties)."""

    name: str
    tried: int = 0
    statuses: Counter = field(default_factory=Counter)
    reconverted: int = 0
    crashes: list[str] = field(default_factory=list)   # unhandled exceptions, JP003, JP004

    def line(self) -> str:
        st = ", ".join(f"{k} {v}" for k, v in sorted(self.statuses.items()))
        return (f"fuzz[{self.name}]: programs tried {self.tried} ({st}); reconverted "
                f"{self.reconverted}; crashes {len(self.crashes)}")


_lock = threading.Lock()


def report_stats(stats: FuzzStats, capsys=None, record_property=None) -> None:
    """Print the counts past pytest's capture and append them to $JAXPORT_FUZZ_LOG."""
    text = stats.line()
    if record_property is not None:
        record_property(f"fuzz_{stats.name}_tried", stats.tried)
        record_property(f"fuzz_{stats.name}_crashes", len(stats.crashes))
    if capsys is not None:
        with capsys.disabled():
            sys.stderr.write("\n" + text + "\n")
    else:
        print(text)
    log = os.environ.get("JAXPORT_FUZZ_LOG")
    if log:
        with _lock, open(log, "a", encoding="utf-8") as fh:
            fh.write(text + "\n")


# --------------------------------------------------------------------------- the contract

def _registry() -> dict:
    from transpiler import diagnostics
    return diagnostics.registry()


class ContractViolation(AssertionError):
    pass


def check_result(data: bytes, result, what: str = "input") -> None:
    """Assert the contract on one result of ``convert_bytes(data)``."""
    from transpiler.api import STATUSES, decode
    reg = _registry()
    if result.status not in STATUSES:
        raise ContractViolation(f"{what}: unknown status {result.status!r}")
    text, _, err = decode(data)
    n_lines = len(re.split(r"\r\n|\r|\n", text)) if text is not None else data.count(b"\n") + 1
    for d in result.diagnostics:
        entry = reg.get(d.code)
        if entry is None:
            raise ContractViolation(f"{what}: unregistered code {d.code}")
        if entry["severity"] != d.severity:
            raise ContractViolation(f"{what}: {d.code} has severity {d.severity}, registered {entry['severity']}")
        if not (1 <= d.line <= n_lines + 1) or d.col < 0:
            raise ContractViolation(f"{what}: {d.code} at {d.line}:{d.col} is outside the file ({n_lines} lines)")
    if result.status == "failed":
        if result.output != data:
            raise ContractViolation(f"{what}: failed, but the original bytes were not kept")
        if not result.has_errors:
            raise ContractViolation(f"{what}: failed without an error diagnostic")
        return
    if result.status == "copied":
        # Nothing to convert (no torch): the bytes pass through as they are, valid or not.
        if result.output != data:
            raise ContractViolation(f"{what}: 'copied' but the output differs from the input")
        return
    out_text, _, err = decode(result.output)
    if err is not None:
        raise ContractViolation(f"{what}: output does not decode: {err.message}")
    try:
        compile(out_text, "<converted>", "exec")
    except (SyntaxError, ValueError) as exc:
        raise ContractViolation(f"{what}: status {result.status} but the output does not compile: {exc}")


def internal_errors(result) -> list[str]:
    return [f"{d.code} {d.message}" for d in result.diagnostics if d.code in INTERNAL_CODES]


def convert_checked(data: bytes, stats: FuzzStats, path: str = "fuzz.py", reconvert: bool = True):
    """Convert ``data``, check the contract (and again on the output); count what happened.
    Raises AssertionError (with the input) on any contract violation or internal error."""
    import warnings
    from transpiler.api import convert_bytes
    stats.tried += 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")      # SyntaxWarnings from compiling odd programs
        try:
            result = convert_bytes(data, path)
        except Exception as exc:  # noqa: BLE001 - the contract says: never
            stats.crashes.append(f"{type(exc).__name__}: {exc}")
            raise AssertionError(f"convert_bytes raised {type(exc).__name__}: {exc}\ninput: {data!r}") from exc
        stats.statuses[result.status] += 1
        check_result(data, result)
        bugs = internal_errors(result)
        if bugs:
            stats.crashes.append(bugs[0])
            raise AssertionError(f"internal error: {bugs}\ninput: {data!r}\n{result.traceback or ''}")
        if reconvert and result.status != "failed" and result.changed:
            stats.reconverted += 1
            try:
                again = convert_bytes(result.output, path)
            except Exception as exc:  # noqa: BLE001
                stats.crashes.append(f"reconvert {type(exc).__name__}: {exc}")
                raise AssertionError(f"reconverting raised {type(exc).__name__}: {exc}\ninput: {data!r}") from exc
            check_result(result.output, again, "converted output")
            bugs = internal_errors(again)
            if bugs:
                stats.crashes.append("reconvert " + bugs[0])
                raise AssertionError(f"internal error reconverting: {bugs}\ninput: {data!r}\n{again.traceback or ''}")
    return result


# --------------------------------------------------------------------------- mutations

_TOKEN = re.compile(r"\w+|[^\w\s]")


@functools.lru_cache(maxsize=None)
def corpus_text(index: int) -> str:
    return CORPUS_FILES[index].read_text(encoding="utf-8")


def mutate(text: str, kind: str, a: int, b: int) -> str:
    """One mutation of ``text``; ``a`` and ``b`` pick positions (taken modulo the size)."""
    if kind in ("delete_token", "duplicate_token"):
        tokens = list(_TOKEN.finditer(text))
        if not tokens:
            return text
        m = tokens[a % len(tokens)]
        if kind == "delete_token":
            return text[:m.start()] + text[m.end():]
        return text[:m.end()] + m.group() + text[m.end():]
    lines = text.splitlines(keepends=True)
    if not lines:
        return text
    i, j = a % len(lines), b % len(lines)
    if kind == "swap_lines":
        lines[i], lines[j] = lines[j], lines[i]
    elif kind == "move_line":
        lines.insert(j, lines.pop(i))
    elif kind == "indent":
        lines[i] = " " * (1 + b % 4) + lines[i]
    elif kind == "dedent":
        lines[i] = lines[i].lstrip(" \t")
    elif kind == "tabify":
        lines[i] = lines[i].replace("    ", "\t", 1 + b % 3)
    elif kind == "duplicate_line":
        lines.insert(j, lines[i])
    elif kind == "delete_line":
        del lines[i]
    elif kind == "truncate":
        return text[: a % (len(text) + 1)]
    else:
        raise ValueError(kind)
    return "".join(lines)


TEXT_MUTATIONS = ("delete_token", "duplicate_token", "swap_lines", "move_line", "indent", "dedent",
                  "tabify", "duplicate_line", "delete_line", "truncate")


def mutate_bytes(data: bytes, kind: str, a: int, b: int) -> bytes:
    """Byte-level damage: bad UTF-8, NUL bytes, a coding cookie, line-ending changes, a BOM."""
    pos = a % (len(data) + 1)
    if kind == "insert_invalid_utf8":
        return data[:pos] + bytes([0x80 + b % 0x40, 0xff][: 1 + b % 2]) + data[pos:]
    if kind == "insert_nul":
        return data[:pos] + b"\x00" + data[pos:]
    if kind == "latin1_cookie":
        return b"# -*- coding: latin-1 -*-\n" + data[:pos] + b"\xe9" + data[pos:]
    if kind == "bogus_cookie":
        return b"# coding: no-such-codec-%d\n" % (b % 10) + data
    if kind == "crlf":
        return data.replace(b"\n", b"\r\n")
    if kind == "cr_only":
        return data.replace(b"\n", b"\r")
    if kind == "mixed_eol":
        lines = data.split(b"\n")
        return b"".join(l + (b"\r\n" if (k + b) % 2 else b"\n") for k, l in enumerate(lines[:-1])) + lines[-1]
    if kind == "bom":
        return b"\xef\xbb\xbf" + data
    if kind == "no_final_newline":
        return data.rstrip(b"\n")
    if kind == "form_feed":
        return data[:pos] + b"\x0c" + data[pos:]
    raise ValueError(kind)


BYTE_MUTATIONS = ("insert_invalid_utf8", "insert_nul", "latin1_cookie", "bogus_cookie", "crlf",
                  "cr_only", "mixed_eol", "bom", "no_final_newline", "form_feed")


def embed_in_module(program: str) -> str:
    """A torch nn.Module whose ``forward`` runs ``program`` (indented) before its layers."""
    body = "".join("        " + l if l.strip() else l for l in program.splitlines(keepends=True))
    if body and not body.endswith("\n"):
        body += "\n"
    return (TORCH_PREFIX + "\n\nclass Fuzzed(nn.Module):\n    def __init__(self):\n"
            "        super().__init__()\n        self.fc = nn.Linear(4, 4)\n\n"
            "    def forward(self, x):\n" + body + "        return F.relu(self.fc(x))\n")


# Torch expressions spliced in place of names of a generated program.
TORCH_NAMES = ("torch", "nn", "F", "torch.relu", "torch.cat", "torch.zeros", "nn.Linear",
               "F.softmax", "torch.nn.Module", "torch.float32", "torch.no_grad",
               "torch.manual_seed", "nn.Sequential", "x.view", "torch.Tensor", "nn.init.normal_",
               "torch.device", "torch.optim.Adam", "torch.tensor")
_NAME = re.compile(r"\b[A-Za-z_]\w*\b")


def splice_torch_names(program: str, picks: list[int]) -> str:
    """Replace some identifiers of ``program`` by torch expressions (keywords stay)."""
    import keyword
    names = [m for m in _NAME.finditer(program) if not keyword.iskeyword(m.group())]
    if not names:
        return program
    out, last = [], 0
    chosen = {}
    for p in picks:
        chosen[(p // len(TORCH_NAMES)) % len(names)] = TORCH_NAMES[p % len(TORCH_NAMES)]
    for k, m in enumerate(names):
        if k in chosen:
            out.append(program[last:m.start()])
            out.append(chosen[k])
            last = m.end()
    out.append(program[last:])
    return "".join(out)


def compiles(text: str) -> bool:
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            compile(text, "<fuzz>", "exec")
            return True
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            return False


# --------------------------------------------------------------------------- cached conversions

@functools.lru_cache(maxsize=None)
def converted_corpus(index: int):
    """(first conversion, conversion of the first output) of corpus file ``index``."""
    from transpiler.api import convert_bytes
    path = CORPUS_FILES[index]
    rel = str(path.relative_to(CORPUS))
    first = convert_bytes(path.read_bytes(), rel)
    second = convert_bytes(first.output, rel)
    return first, second
