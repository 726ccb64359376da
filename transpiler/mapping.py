"""Load the declarative mapping tables in ``mappings/*.toml`` into typed, validated entries.

Tables are data (see ``mappings/README.md`` for the format). Loading fails fast: a malformed
entry raises ``MappingError`` naming the table and the key, so a bad table never reaches a
user's conversion. Loading is cached, in the process and on disk (:mod:`transpiler.cache`,
keyed by the tables' and the loader's bytes); importing this module does not import torch or
jax.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from .template import Signature, TemplateError, emitted_roots, template_names

RETURNS = ("tensor", "value")
TABLES = ("functions", "tensor_methods", "tensor_attributes", "layers", "initializers")


class MappingError(ValueError):
    pass


@dataclass(frozen=True)
class Entry:
    """One torch API and how to emit it."""

    key: str                      # fully qualified torch name, or method/attribute name
    table: str
    sig: Signature | None         # None: a value (``torch.float32``) rather than a call
    templates: tuple[str, ...] = ()
    always: frozenset[str] = frozenset()
    ignore: frozenset[str] = frozenset()
    exact: bool = True
    note: str = ""
    rewriter: str | None = None
    unsupported: str | None = None
    keep: str | None = None        # deliberately left on torch (data loading), with the reason
    value: str | None = None       # what the name becomes when used as a value, not called
    receiver: str = "tensor"       # tensor methods: "tensor" or "any" (safe on any object)
    returns: str = "tensor"        # tensor methods: "tensor", or "value" (a number, shape, list, flag)
    call: str = "plain"           # layers: how a call site passes the train flag
    params: dict[str, str] = field(default_factory=dict)   # layers: torch → flax layout
    params_converter: str | None = None
    example: str | None = None
    inputs: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    nhwc_templates: tuple[str, ...] = ()   # ``to_nhwc``: the channels-last form (--layout nhwc)
    channels: str | None = None           # what it does to a 2-D image's axes (IMAGE_ROLES, ELEMENTWISE)

    def channels_last(self) -> "Entry":
        """This entry rendering its ``to_nhwc`` templates (itself when it has none)."""
        if not self.nhwc_templates:
            return self
        from dataclasses import replace
        return replace(self, templates=self.nhwc_templates)

    @property
    def emits(self) -> set[str]:
        names: set[str] = set()
        sig = self.sig or Signature(())
        for t in (*self.templates, *self.nhwc_templates):
            names |= emitted_roots(t, sig)
        return names


# ``channels``: how an op treats the axes of a 2-D image, read by the --layout nhwc pass.
# define: sets C (has a kernel); keep: C and spatial size unchanged; spatial: C unchanged,
# spatial size changes (pooling); pool: adaptive pooling (1x1 output when output_size is 1);
# resize: C unchanged, resampled. An entry with one of these has a ``to_nhwc`` form.
IMAGE_ROLES = ("define", "keep", "spatial", "pool", "resize")
ELEMENTWISE = "elementwise"    # acts on each element (or is identity-like): layout-neutral

_KNOWN_KEYS = {"sig", "to", "always", "keep", "value", "ignore", "exact", "note", "rewriter", "unsupported",
               "receiver", "returns", "call", "params", "params_converter", "example", "inputs", "input",
               "expect", "init", "tolerance", "skip_example", "train", "nhwc", "to_nhwc", "channels"}


def _entry(table: str, key: str, raw: dict[str, Any]) -> Entry:
    where = f"mappings/{table}.toml [{key!r}]"
    unknown = set(raw) - _KNOWN_KEYS
    if unknown:
        raise MappingError(f"{where}: unknown field(s) {sorted(unknown)}")
    try:
        sig = Signature.parse(raw["sig"]) if "sig" in raw else None
    except TemplateError as exc:
        raise MappingError(f"{where}: {exc}") from None
    to = raw.get("to", ())
    templates = (to,) if isinstance(to, str) else tuple(to)
    has_action = bool(templates) or "rewriter" in raw or "unsupported" in raw or "keep" in raw
    if not has_action:
        raise MappingError(f"{where}: needs one of 'to', 'rewriter', 'unsupported', 'keep'")
    exact = bool(raw.get("exact", True))
    if not exact and not raw.get("note"):
        raise MappingError(f"{where}: an approximate entry (exact = false) needs a 'note'")
    if table in ("tensor_methods",) and sig is not None and (not sig.params or sig.params[0].name != "self"):
        raise MappingError(f"{where}: a method signature starts with 'self'")
    returns = raw.get("returns", "tensor")
    if returns not in RETURNS or (returns != "tensor" and table != "tensor_methods"):
        raise MappingError(f"{where}: 'returns' is one of {list(RETURNS)}, on tensor methods only")
    params = {p.name for p in sig.params} if sig else set()
    to_nhwc = raw.get("to_nhwc", ())
    nhwc_templates = (to_nhwc,) if isinstance(to_nhwc, str) else tuple(to_nhwc)
    if nhwc_templates and (table not in ("layers", "functions") or sig is None or not templates
                           or not all(isinstance(t, str) for t in nhwc_templates)):
        raise MappingError(f"{where}: 'to_nhwc' (a template or a list of them) goes with 'sig' and "
                           "'to' on layers and functions only")
    channels = raw.get("channels")
    if channels is not None and channels not in (*IMAGE_ROLES, ELEMENTWISE):
        raise MappingError(f"{where}: 'channels' is one of {[*IMAGE_ROLES, ELEMENTWISE]}")
    if bool(nhwc_templates) != (channels in IMAGE_ROLES):
        raise MappingError(f"{where}: an entry with 'to_nhwc' says how it treats the image's axes "
                           f"('channels' one of {list(IMAGE_ROLES)}), and only such an entry")
    for t in (*templates, *nhwc_templates):
        try:
            template_names(t)
        except TemplateError as exc:
            raise MappingError(f"{where}: {exc}") from None
    always = frozenset(raw.get("always", ()))
    ignore = frozenset(raw.get("ignore", ()))
    for name in ignore:
        if name not in params:
            raise MappingError(f"{where}: ignore names unknown parameter {name!r}")
    inputs = raw.get("inputs", {})
    if "input" in raw:
        inputs = {"input": raw["input"], **inputs}
    extra = {k: raw[k] for k in ("expect", "init", "tolerance", "skip_example", "train", "nhwc") if k in raw}
    return Entry(
        key=key, table=table, sig=sig, templates=templates, always=always, ignore=ignore,
        exact=exact, note=raw.get("note", ""), rewriter=raw.get("rewriter"),
        unsupported=raw.get("unsupported"), keep=raw.get("keep"), value=raw.get("value"),
        receiver=raw.get("receiver", "tensor"), returns=returns,
        call=raw.get("call", "plain"), params=dict(raw.get("params", {})),
        params_converter=raw.get("params_converter"), example=raw.get("example"),
        inputs=inputs, extra=extra, nhwc_templates=nhwc_templates, channels=channels,
    )


@dataclass(frozen=True)
class Tables:
    functions: dict[str, Entry]
    tensor_methods: dict[str, Entry]
    tensor_attributes: dict[str, Entry]
    layers: dict[str, Entry]
    initializers: dict[str, Entry]
    imports: dict[str, str]
    diagnostics: dict[str, dict[str, Any]]
    third_party: dict[str, dict[str, Any]] = field(default_factory=dict)   # redirected imports

    def lookup_qualified(self, name: str) -> Entry | None:
        return self.layers.get(name) or self.functions.get(name)


def _read(name: str) -> dict[str, Any]:
    """Read ``{name}.toml`` and every ``{name}_*.toml`` (split tables), rejecting duplicate keys."""
    import tomllib
    from importlib import resources
    root = resources.files("mappings")
    files = sorted(f.name for f in root.iterdir()
                   if f.name == f"{name}.toml" or (f.name.startswith(f"{name}_") and f.name.endswith(".toml")))
    merged: dict[str, Any] = {}
    for file in files:
        text = root.joinpath(file).read_text(encoding="utf-8")
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise MappingError(f"mappings/{file}: {exc}") from None
        for key in data:
            if key in merged:
                raise MappingError(f"mappings/{file}: duplicate entry {key!r}")
        merged.update(data)
    return merged


def _sources() -> list:
    """The files the tables are built from: every table and the code that reads them."""
    from .cache import package_files
    here = Path(__file__).resolve().parent
    tables = [f for f in package_files("mappings") if f.name.endswith(".toml")]
    return [*tables, here / "mapping.py", here / "template.py"]


@lru_cache(maxsize=1)
def load_tables() -> Tables:
    from .cache import cached
    return cached("tables", _sources, _load_tables)


def _load_tables() -> Tables:
    loaded: dict[str, dict[str, Entry]] = {}
    for table in TABLES:
        raw = _read(table)
        loaded[table] = {key: _entry(table, key, value) for key, value in raw.items()}
    imports = _read("imports")
    diagnostics = _read("diagnostics")
    return Tables(imports={k: v for k, v in imports.items()}, diagnostics=diagnostics,
                  third_party=_read("third_party"), **loaded)
