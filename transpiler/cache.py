"""A per-user disk cache of data jaxport derives from its own files at start-up: the parsed
mapping tables (``mappings/*.toml``) and the index of the prelude helpers. Building them
costs a few tenths of a second per process (TOML parsing, signature and template checks, an
``ast`` pass over the prelude); unpickling them costs a few milliseconds.

An entry's key is a hash of the bytes of every file the data is derived from, including the
code that derives it, and of the Python version, so any edit (a table, a prelude helper, the
loader) misses the cache and rebuilds. The cache lives in ``$JAXPORT_CACHE_DIR``, else
``$XDG_CACHE_HOME/jaxport``, else ``~/.cache/jaxport``; ``JAXPORT_NO_CACHE=1`` turns it off.
Failing to read or write the cache is never an error: the data is then built in memory.
"""
from __future__ import annotations

import hashlib
import os
import pickle
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterable, TypeVar

T = TypeVar("T")
FORMAT = 1      # bump when the layout of a cached value changes without a source change
STALE_AFTER_S = 7 * 24 * 3600   # other entries of a name older than this are removed on a write


def package_files(package: str) -> list:
    """The files of a package's folder, sorted by name (``Path`` objects for a package on disk;
    otherwise importlib.resources' entries, which turn the cache off)."""
    import importlib.util
    spec = importlib.util.find_spec(package)
    locations = list(spec.submodule_search_locations or ()) if spec else []
    if len(locations) == 1 and os.path.isdir(locations[0]):
        return sorted((p for p in Path(locations[0]).iterdir() if p.is_file()), key=lambda p: p.name)
    from importlib import resources
    return sorted(resources.files(package).iterdir(), key=lambda e: e.name)


def cache_dir() -> Path | None:
    if os.environ.get("JAXPORT_NO_CACHE", "") not in ("", "0"):
        return None
    explicit = os.environ.get("JAXPORT_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "jaxport"


def _libcst_version() -> Path | None:
    import libcst
    path = Path(libcst.__file__).parent / "_version.py"
    return path if path.is_file() else None


def _key(name: str, sources: Iterable[Path]) -> str:
    """A hash of the Python and libcst versions and of the bytes of ``sources``."""
    digest = hashlib.sha256(f"{name}\0{FORMAT}\0{sys.version}\0".encode())
    version = _libcst_version()
    for path in [*sources, *([version] if version else [])]:
        digest.update(path.name.encode() + b"\0")
        digest.update(path.read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()[:24]


def cached(name: str, sources: Callable[[], list], build: Callable[[], T]) -> T:
    """``build()``, or the value an earlier process built from the same ``sources()`` (files,
    in a stable order; anything that is not a local file turns the cache off)."""
    directory = cache_dir()
    if directory is None:
        return build()
    try:
        files = sources()
        if not all(isinstance(p, Path) for p in files):
            return build()
        path = directory / f"{name}-{_key(name, files)}.pickle"
    except OSError:
        return build()
    try:
        with open(path, "rb") as fh:
            return pickle.load(fh)
    except Exception:       # missing, truncated, unreadable or from an incompatible build
        pass
    value = build()
    _store(directory, path, name, value)
    return value


def _write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (other processes see the old file or the new)."""
    fd, tmp = tempfile.mkstemp(prefix=".jaxport-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _store(directory: Path, path: Path, name: str, value) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
        _write(path, pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))
        _remove_stale(directory, f"{name}-*.pickle", path)
    except Exception:
        pass


def _remove_stale(directory: Path, pattern: str, keep: Path) -> None:
    """Entries of earlier versions (other keys) not written for :data:`STALE_AFTER_S`."""
    stale = time.time() - STALE_AFTER_S
    for old in directory.glob(pattern):
        try:
            if old != keep and old.stat().st_mtime < stale:
                if old.is_dir():
                    for f in old.iterdir():
                        f.unlink()
                    old.rmdir()
                else:
                    old.unlink()
        except OSError:
            pass


_KEYS: dict[str, str | None] = {}


def cached_text(group: str, sources: Callable[[], list], name: str, build: Callable[[], str]) -> str:
    """``build()``, or the text an earlier process built for ``name`` from the same
    ``sources()``: one small file per text, written when first built (for data a process
    needs only part of, such as the printed text of the prelude helpers a file uses)."""
    directory = cache_dir()
    if directory is None:
        return build()
    if group not in _KEYS:
        try:
            files = sources()
            _KEYS[group] = _key(group, files) if all(isinstance(p, Path) for p in files) else None
        except OSError:
            _KEYS[group] = None
    key = _KEYS[group]
    if key is None:
        return build()
    path = directory / f"{group}-{key}" / f"{hashlib.sha256(name.encode()).hexdigest()[:24]}.txt"
    try:
        with open(path, "rb") as fh:
            data = fh.read()
        stored_name, _, text = data.partition(b"\0")
        if stored_name == name.encode():
            return text.decode("utf-8")
    except (OSError, UnicodeDecodeError):
        pass
    text = build()
    try:
        if not path.parent.is_dir():
            path.parent.mkdir(parents=True, exist_ok=True)
            _remove_stale(directory, f"{group}-*", path.parent)
        _write(path, name.encode() + b"\0" + text.encode("utf-8"))
    except Exception:
        pass
    return text
