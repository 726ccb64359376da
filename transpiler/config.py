"""``[tool.jaxport]`` in the converted repository's ``pyproject.toml``.

The file is looked up at the root of each input directory (never above it, never for a
single-file input or standard input). Recognised keys::

    [tool.jaxport]
    parallel = "sharding"                  # pmap | sharding
    layout = "nchw"                        # nchw | nhwc
    exclude = ["third_party/**", "*_pb2.py"]   # not converted: copied as they are
    [tool.jaxport.per-file-ignores]
    "tests/**" = ["JP101"]                 # codes (or prefixes such as "JP4") not reported

Command-line flags override the file. Anything malformed (invalid TOML, an unknown key, a
value of the wrong type or outside its choices) raises :class:`ConfigError`, a usage error,
whose message names the file and the key.

Glob patterns match paths relative to the input root, with ``/`` separators. A pattern
without ``/`` matches any single path component (``*.ipynb``, ``legacy``), so it excludes a
file of that name or a whole directory anywhere in the tree. A pattern with ``/`` is matched
from the root against the path of a file or of any directory above it (``pkg/old`` excludes
everything under ``pkg/old``); ``*`` and ``**`` both match across ``/`` there, and a leading
``**/`` also matches at the root.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace
from fnmatch import fnmatchcase

PYPROJECT = "pyproject.toml"
CHOICES = {"parallel": ("pmap", "sharding"), "layout": ("nchw", "nhwc")}
KEYS = ("parallel", "layout", "exclude", "per-file-ignores")
_CODE = re.compile(r"JP\d{1,3}")


class ConfigError(ValueError):
    """A malformed ``[tool.jaxport]`` table (a usage error: exit code 2)."""


@dataclass(frozen=True)
class Settings:
    """What the configuration (or the command line) says; ``None``: not said."""

    parallel: str | None = None
    layout: str | None = None
    exclude: tuple[str, ...] | None = None
    per_file_ignores: tuple[tuple[str, tuple[str, ...]], ...] | None = None
    source: str | None = None       # the pyproject.toml it came from

    def over(self, base: "Settings") -> "Settings":
        """These settings where given, ``base``'s elsewhere (flags over the file)."""
        return replace(base, **{k: getattr(self, k) for k in
                                ("parallel", "layout", "exclude", "per_file_ignores")
                                if getattr(self, k) is not None})

    def excluded(self, path: str) -> bool:
        return any(matches(path, pattern) for pattern in self.exclude or ())

    def ignored_codes(self, path: str) -> tuple[str, ...]:
        codes: list[str] = []
        for pattern, listed in self.per_file_ignores or ():
            if matches(path, pattern):
                codes += listed
        return tuple(codes)


def matches(path: str, pattern: str) -> bool:
    """Whether report path ``path`` (or a directory above it) matches ``pattern``."""
    pattern = pattern.strip().rstrip("/")
    if pattern.startswith("./"):
        pattern = pattern[2:]
    if not pattern:
        return False
    parts = path.split("/")
    if "/" not in pattern:
        return any(fnmatchcase(part, pattern) for part in parts)
    pattern = pattern.lstrip("/")
    candidates = [pattern]
    if pattern.startswith("**/"):
        candidates.append(pattern[3:])
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    return any(fnmatchcase(prefix, p) for prefix in prefixes for p in candidates)


def ignore(diagnostics: list, codes: tuple[str, ...]) -> list:
    """Diagnostics whose code is not one of ``codes`` (or does not start with one of them)."""
    if not codes:
        return diagnostics
    return [d for d in diagnostics if not d.code.startswith(codes)]


def _strings(value, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where}: expected a list of strings, got {value!r}")
    return tuple(value)


def parse(table: dict, source: str) -> Settings:
    """Validate a ``[tool.jaxport]`` table; ``source`` names the file in error messages."""
    where = f"{source}: [tool.jaxport]"
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: expected a table, got {type(table).__name__}")
    unknown = sorted(set(table) - set(KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(KEYS)})")
    found: dict = {"source": source}
    for key, choices in CHOICES.items():
        if key in table:
            value = table[key]
            if value not in choices:
                raise ConfigError(f"{where} {key}: must be one of {', '.join(choices)}, got {value!r}")
            found[key] = value
    if "exclude" in table:
        found["exclude"] = _strings(table["exclude"], f"{where} exclude")
    if "per-file-ignores" in table:
        ignores = table["per-file-ignores"]
        if not isinstance(ignores, dict):
            raise ConfigError(f"{where} per-file-ignores: expected a table of glob = [codes], "
                              f"got {ignores!r}")
        pairs = []
        for pattern, codes in ignores.items():
            key = f"{where} per-file-ignores.{pattern!r}"
            codes = _strings(codes, key)
            bad = [c for c in codes if not _CODE.fullmatch(c)]
            if bad:
                raise ConfigError(f"{key}: {bad[0]!r} is not a diagnostic code such as JP101 "
                                  "(or a prefix such as JP1)")
            pairs.append((pattern, codes))
        found["per_file_ignores"] = tuple(pairs)
    return Settings(**found)


def load(root: str) -> Settings:
    """The settings of ``root/pyproject.toml`` (empty settings if it or the table is absent)."""
    path = os.path.join(root, PYPROJECT)
    if not os.path.isfile(path):
        return Settings()
    import tomllib
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read it: {getattr(exc, 'strerror', None) or exc}") from None
    tool = data.get("tool", {})
    if not isinstance(tool, dict) or "jaxport" not in tool:
        return Settings(source=path)
    return parse(tool["jaxport"], path)
