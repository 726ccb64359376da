"""Diagnostic records and the registry of stable codes (data in mappings/diagnostics.toml)."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import lru_cache

SEVERITIES = ("info", "warning", "error")


@dataclass(frozen=True, order=True)
class Diagnostic:
    line: int
    col: int
    code: str
    severity: str
    message: str

    def to_json(self) -> dict:
        return asdict(self)

    def format(self, path: str) -> str:
        """ruff-style: ``path:line:col: CODE message``."""
        return f"{path}:{self.line}:{self.col}: {self.code} {self.message}"


@lru_cache(maxsize=1)
def registry() -> dict[str, dict]:
    """The code registry; loaded on its own so a broken op table cannot hide diagnostics."""
    from .mapping import _read
    return _read("diagnostics")


def severity_of(code: str) -> str:
    return registry()[code]["severity"]


def make(code: str, message: str, line: int = 1, col: int = 0) -> Diagnostic:
    """A diagnostic with its registered severity. Unknown codes are a bug: fail loudly."""
    entry = registry().get(code)
    if entry is None:
        raise KeyError(f"unregistered diagnostic code {code}")
    return Diagnostic(line=line, col=col, code=code, severity=entry["severity"], message=message)


def explain(code: str) -> str | None:
    entry = registry().get(code.upper())
    if entry is None:
        return None
    return (f"{code.upper()} ({entry['severity']}): {entry['title']}\n\n{entry['explanation']}\n\n"
            f"Before:\n    {entry['before'].replace(chr(10), chr(10) + '    ')}\n"
            f"After:\n    {entry['after'].replace(chr(10), chr(10) + '    ')}\n")
