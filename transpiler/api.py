"""Library entry points: convert one source text or one file's bytes.

``convert_source`` never raises on bad input: syntax errors, undecodable bytes and internal
errors inside a pass become diagnostics, and the result then carries the original text so
nothing is lost. Tree-level conversion (directories, copying, reports) builds on these.
"""
from __future__ import annotations

import io
import re
import sys
import threading
import tokenize
import warnings
from dataclasses import dataclass, field

import libcst as cst

from . import diagnostics as diag
from .diagnostics import Diagnostic

STATUSES = ("converted", "partial", "copied", "failed")


@dataclass(frozen=True)
class Options:
    parallel: str = "pmap"      # pmap | sharding
    layout: str = "nchw"        # nchw | nhwc


@dataclass
class FileResult:
    path: str
    status: str                         # converted | partial | copied | failed
    output: bytes                       # what to write to the output tree
    diagnostics: list[Diagnostic] = field(default_factory=list)
    torch_call_sites: int = 0
    converted_call_sites: int = 0
    changed: bool = False
    traceback: str | None = None        # for -v on internal errors
    # where the prelude helpers' text is in the converted text (character offsets), when the
    # conversion put it together from parts, and their names: the training manifest need
    # not parse them
    helpers_span: tuple[int, int] | None = None
    helpers: tuple[str, ...] = ()

    @property
    def has_errors(self) -> bool:
        return any(d.severity == "error" for d in self.diagnostics)

    def to_json(self) -> dict:
        return {"path": self.path, "status": self.status,
                "diagnostics": [d.to_json() for d in sorted(self.diagnostics)]}


def decode(data: bytes) -> tuple[str | None, str, Diagnostic | None]:
    """Decode Python source bytes honouring BOM and PEP 263 cookies; returns (text, encoding, error)."""
    if b"\x00" in data:
        return None, "", diag.make("JP002", "file contains NUL bytes: not a text file")
    try:
        encoding, _ = tokenize.detect_encoding(io.BytesIO(data).readline)
    except SyntaxError as exc:
        return None, "", diag.make("JP002", f"bad encoding declaration: {exc}")
    try:
        text = data.decode(encoding)
    except (UnicodeDecodeError, LookupError) as exc:
        line = data[: getattr(exc, "start", 0)].count(b"\n") + 1
        return None, encoding, diag.make("JP002", f"cannot decode as {encoding}: {exc.reason if hasattr(exc, 'reason') else exc}", line)
    if text.startswith("\ufeff"):
        text = text[1:]
    return text, encoding, None


def encode(text: str, encoding: str, original: bytes) -> bytes:
    bom = b"\xef\xbb\xbf" if original.startswith(b"\xef\xbb\xbf") else b""
    return bom + text.encode(encoding if encoding != "utf-8-sig" else "utf-8")


def _compile_error(text: str, path: str) -> tuple[int, int, str] | None:
    """(line, col, message) of why CPython refuses to compile ``text``; None if it compiles.
    Compiler warnings about the user's code (SyntaxWarning) are not ours to print."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            compile(text, path, "exec")
        except SyntaxError as exc:
            return max(1, exc.lineno or 1), max(0, (exc.offset or 1) - 1), f"{exc.msg}"
        except (RecursionError, MemoryError):
            return 1, 0, "code nested too deeply for Python to compile"
        except ValueError as exc:
            return 1, 0, str(exc)
    return None


_COMPILED: set[str] = set()     # helper texts (the same in every file) known to compile
# What could make a module fail to compile although each of its top-level parts compiles
# alone: a future import that may change the grammar, a module-level global statement.
_ACROSS_PARTS = re.compile(r"barry_as_FLUFL|^[ \t]*global\b", re.MULTILINE)


def _compile_parts_error(parts: tuple[str, ...], text: str, path: str) -> tuple[int, int, str] | None:
    """``_compile_error(text, path)`` for a converted text made of ``parts``: the text with
    a placeholder statement where the helpers go, then the helpers' texts, top-level
    statements spliced in at that statement's line (see ``passes/imports.py``). If each
    part compiles, so does the whole; compiling the helpers once per process instead of in
    every file saves most of the check. Any failure is reported from the whole text."""
    skeleton, *helpers = parts
    if _ACROSS_PARTS.search(skeleton) or _compile_error(skeleton, path) is not None:
        return _compile_error(text, path)
    for helper in helpers:
        if helper not in _COMPILED:
            if _compile_error(helper, path) is not None:
                return _compile_error(text, path)
            _COMPILED.add(helper)
    return None


# CPython refuses brackets nested 200 deep ("too many nested parentheses"), and a conversion
# could drop some of them (redundant parentheses around a converted call): a text that may
# nest half that deep is compiled before anything else. libcst's native parser would
# overflow its stack some way beyond a thousand.
DEEP_NESTING = 100
_NOT_A_BRACKET = re.compile(r"[^()\[\]{}]+")


def _may_nest_deeply(text: str) -> bool:
    """Whether ``text``'s brackets may nest ``DEEP_NESTING`` deep (brackets in strings and
    comments count too: an estimate, erring on the side of compiling first)."""
    if text.count("(") + text.count("[") + text.count("{") < DEEP_NESTING:
        return False
    depth = deepest = 0
    for c in _NOT_A_BRACKET.sub("", text):
        if c in "([{":
            depth += 1
            if depth > deepest:
                deepest = depth
        elif depth > 0:
            depth -= 1
    return deepest >= DEEP_NESTING


def _syntax_failure(path: str, data: bytes, problem: tuple[int, int, str]) -> FileResult:
    line, col, message = problem
    return FileResult(path, "failed", data, [diag.make("JP001", f"syntax error: {message}", line, col)])


def _helpers_span(parts: tuple[str, ...] | None) -> tuple[int, int] | None:
    """(start, end) of the helpers' text in a converted text put together from ``parts``
    (the skeleton's placeholder line replaced by the helpers' texts: ``passes/imports.py``)."""
    if not parts or len(parts) < 2:
        return None
    from .passes.imports import HELPERS_PLACEHOLDER
    start = parts[0].find(HELPERS_PLACEHOLDER)
    if start < 0:
        return None
    return start, start + sum(len(p) for p in parts[1:])


def _internal_error(path: str, data: bytes, exc: BaseException) -> FileResult:
    import traceback
    return FileResult(path, "failed", data,
                      [diag.make("JP003", f"internal error: {type(exc).__name__}: {exc}")],
                      traceback="".join(traceback.format_exception(exc)))


DEEP_STACK_BYTES = 512 * 1024 * 1024   # address space only: pages are touched as used
DEEP_RECURSION_LIMIT = 200_000
_deep_lock = threading.Lock()


def run_deep(fn, *args):
    """``fn(*args)`` on a thread with a large C stack and a raised recursion limit (restored
    afterwards), for inputs nested deeper than the defaults allow. One at a time."""
    box: dict = {}

    def target() -> None:
        try:
            box["value"] = fn(*args)
        except BaseException as exc:  # re-raised in the caller's thread
            box["error"] = exc

    with _deep_lock:
        previous_size = threading.stack_size()
        threading.stack_size(DEEP_STACK_BYTES)
        try:
            worker = threading.Thread(target=target, name="jaxport-deep", daemon=True)
        finally:
            threading.stack_size(previous_size)
        previous_limit = sys.getrecursionlimit()
        sys.setrecursionlimit(max(previous_limit, DEEP_RECURSION_LIMIT))
        try:
            worker.start()
            worker.join()
        finally:
            sys.setrecursionlimit(previous_limit)
    if "error" in box:
        raise box["error"]
    return box["value"]


def _deep_if_needed(fn, *args):
    """``fn(*args)``; on RecursionError once more on a deep-stack thread (:func:`run_deep`).
    Deep but legal code (a 1000-term sum, 150 nested calls) exceeds the default limits of
    libcst's recursive tree walks; ordinary files never pay for the thread."""
    try:
        return fn(*args)
    except RecursionError:
        pass
    return run_deep(fn, *args)


def convert_source(source: str, path: str = "<string>", options: Options | None = None) -> FileResult:
    """Convert Python source text. The result's ``output`` is UTF-8 bytes."""
    data = source.encode("utf-8")
    return _convert_text(source, "utf-8", data, path, options or Options())


def convert_bytes(data: bytes, path: str, options: Options | None = None,
                  origin: str | None = None) -> FileResult:
    """Convert one file's bytes (decoding per PEP 263); bad input yields a failed result.
    ``origin``, the file on disk, lets ``from .parts import *`` find the module it names."""
    text, encoding, error = decode(data)
    if error is not None:
        return FileResult(path, "failed", data, [error])
    return _convert_text(text, encoding, data, path, options or Options(), origin)


def _convert_text(text: str, encoding: str, data: bytes, path: str, options: Options,
                  origin: str | None = None) -> FileResult:
    from .pipeline import mentions_torch, run_pipeline

    if not mentions_torch(text):
        return FileResult(path, "copied", data)
    # CPython has the last word on the input: it rejects what libcst accepts but cannot compile
    # ('return' outside a function, inconsistent tabs) and has the clearer messages (Python 2
    # print statements). It is asked first where the nesting could be deep enough to overflow
    # libcst's native parser (which would kill the process), else only when something went
    # wrong: libcst refused the text, a pass failed, or the output does not compile (the
    # output keeps what the input had, so a broken input shows there).
    checked = False

    def refused() -> FileResult | None:
        """The syntax error CPython finds in the input, unless it was checked already."""
        problem = None if checked else _compile_error(text, path)
        return None if problem is None else _syntax_failure(path, data, problem)

    if _may_nest_deeply(text):
        failure = refused()
        if failure is not None:
            return failure
        checked = True
    try:
        module = _deep_if_needed(cst.parse_module, text)
    except cst.ParserSyntaxError as exc:
        failure = refused()
        if failure is not None:
            return failure
        return FileResult(path, "failed", data,
                          [diag.make("JP001", f"syntax error: {exc.message}", exc.raw_line, exc.raw_column)])
    except RecursionError:
        return FileResult(path, "failed", data, [diag.make("JP001", "nesting too deep to parse")])
    try:
        outcome = _deep_if_needed(run_pipeline, module, path, options, origin, text)
    except RecursionError:
        failure = refused()
        if failure is not None:
            return failure
        return FileResult(path, "failed", data, [diag.make(
            "JP001", "code nested too deeply to convert (Python compiles it, but jaxport's "
            "syntax-tree walk cannot follow it)")])
    except Exception as exc:  # a bug in a pass: report it per file, never crash the run
        failure = refused()
        if failure is not None:
            return failure
        return _internal_error(path, data, exc)
    if not getattr(outcome, "touched", True):
        failure = refused()
        if failure is not None:
            return failure
        return FileResult(path, "copied", data)
    new_text = outcome.code
    parts = getattr(outcome, "compile_parts", None)
    problem = _compile_error(new_text, path) if parts is None else _compile_parts_error(parts, new_text, path)
    if problem is not None:
        failure = refused()
        if failure is not None:
            return failure
        return FileResult(path, "failed", data, outcome.diagnostics + [diag.make(
            "JP004", f"converted code does not compile: {problem[2]} (output line {problem[0]})")])
    problems = [d for d in outcome.diagnostics if d.severity in ("warning", "error")]
    status = "partial" if problems else "converted"
    output = encode(new_text, encoding, data)
    return FileResult(path, status, output, outcome.diagnostics,
                      outcome.torch_call_sites, outcome.converted_call_sites,
                      changed=output != data, helpers_span=_helpers_span(parts),
                      helpers=getattr(outcome, "helpers", ()))
