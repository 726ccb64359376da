"""Per-file state shared by the passes: options, tables, aliases, diagnostics, what the
output needs (imports, prelude helpers) and the call-site counts for the report."""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import libcst as cst
from libcst._nodes.internal import CodegenState
from libcst.metadata import CodeRange

from . import diagnostics as diag
from .diagnostics import Diagnostic
from .mapping import Tables

if TYPE_CHECKING:
    from .api import Options

# diagnostics that also leave a `# jaxport: CODE message` marker in the output
MARKED_SEVERITIES = ("warning", "error")
MARKED_CODES = ("JP201",)


@dataclass
class FileContext:
    path: str
    options: "Options"
    tables: Tables
    aliases: dict[str, str]
    positions: dict = field(default_factory=dict)       # original node → CodeRange (optional)
    module: cst.Module | None = None                     # the original tree: positions come from it
    source: str | None = None                            # the original text (cheap pre-filters)
    helpers_added: tuple[str, ...] = ()                  # prelude helpers put into the output
    other_imports: set[str] = field(default_factory=set)  # non-torch imported names (math, np)
    local_classes: set[str] = field(default_factory=set)  # nn.Module classes imported from this tree
    diagnostics: list[Diagnostic] = field(default_factory=list)
    emits: set[str] = field(default_factory=set)         # global names the output uses
    torch_call_sites: int = 0
    converted_call_sites: int = 0
    # markers waiting for the statement that contains the reported node
    statement_stack: list[list[Diagnostic]] = field(default_factory=list)
    keep_torch_import: bool = False
    # scope, maintained by the modules pass
    current_class: object | None = None       # modules.ClassInfo of the enclosing nn.Module
    current_function: str | None = None
    init_plan: object | None = None            # initialization.InitPlan, set by the modules pass
    # diagnostics whose position is found at the end: (index in diagnostics, node)
    _unplaced: list = field(default_factory=list)
    # --layout nhwc (passes/layout.py): calls rendered with their entry's ``to_nhwc`` form
    channels_last: set[int] = field(default_factory=set)
    # rebuilt node → the original node it stands for (diagnostics point at the original)
    node_aliases: dict = field(default_factory=dict)

    def alias_rebuilt(self, moved: dict) -> None:
        """Diagnostics reported at a rebuilt node (a key of ``moved``) are placed at the
        original node it stands for. Keeps the rebuilt nodes alive (their ids are keys)."""
        for new, old in moved.items():
            self.node_aliases[id(new)] = (new, self.node_aliases.get(id(old), (None, old))[1])

    def in_constructor(self) -> bool:
        """Inside ``__init__`` of a converted module or a helper it calls (→ ``setup``)."""
        info = self.current_class
        return info is not None and (self.current_function == "__init__"
                                     or self.current_function in getattr(info, "setup_helpers", ()))

    def in_module_code(self) -> bool:
        """Inside a method of a converted nn.Module other than its constructor."""
        return self.current_class is not None and self.current_function not in (None, "__init__")

    def is_submodule_ref(self, name: str) -> bool:
        """``self.fc1`` (or ``self.fc1.x``) where fc1 is a submodule of the current class."""
        parts = name.split(".")
        info = self.current_class
        if info is None or len(parts) < 2 or parts[0] != "self":
            return False
        kind = getattr(info, "submodules", {}).get(parts[1])
        return kind is not None and kind.kind not in ("param", "value")

    def position(self, node: cst.CSTNode) -> tuple[int, int]:
        """(line, col) where ``node`` starts in the original file; (1, 0) for a node that is
        not part of it (one a rule built)."""
        rng: CodeRange | None = self._known(node)
        if rng is not None:
            return (rng.start.line, rng.start.column)
        if self.module is None:
            return (self._fallback_line(), 0)
        return node_starts(self.module, [node]).get(id(node), (self._fallback_line(), 0))

    def _fallback_line(self) -> int:
        return 1

    def _known(self, node: cst.CSTNode) -> CodeRange | None:
        """A position already at hand: from a computed ``positions`` mapping (a pass that
        rebuilds nodes may map the new ones to the originals' ranges), never computed here."""
        positions = self.positions
        if isinstance(positions, LazyPositions):
            return positions.get_if_loaded(node)
        return positions.get(node) if positions else None

    def report(self, node: cst.CSTNode | None, code: str, message: str, marker: bool | None = None) -> Diagnostic:
        """Record a diagnostic at ``node``. Its line and column are filled in by
        :meth:`place_diagnostics` once the file is done (one cheap pass for all of them)."""
        d = diag.make(code, message, 1, 0)
        if node is not None and self.node_aliases and id(node) in self.node_aliases:
            node = self.node_aliases[id(node)][1]
        if node is not None:
            rng = self._known(node)
            if rng is not None:
                d = replace(d, line=rng.start.line, col=rng.start.column)
            else:
                self._unplaced.append((len(self.diagnostics), node))
        self.diagnostics.append(d)
        wants_marker = marker if marker is not None else (
            d.severity in MARKED_SEVERITIES or d.code in MARKED_CODES)
        if wants_marker and self.statement_stack:
            self.statement_stack[-1].append(d)
        return d

    def place_diagnostics(self) -> None:
        """Give every diagnostic reported at a node that node's start in the original file."""
        if not self._unplaced:
            return
        found = node_starts(self.module, [n for _, n in self._unplaced]) if self.module is not None else {}
        fallback = (self._fallback_line(), 0)
        for index, node in self._unplaced:
            line, col = found.get(id(node), fallback)
            self.diagnostics[index] = replace(self.diagnostics[index], line=line, col=col)
        self._unplaced = []

    def call_site(self, converted: bool) -> None:
        self.torch_call_sites += 1
        if converted:
            self.converted_call_sites += 1


# ----------------------------------------------------------------------------- positions
#
# libcst's PositionProvider records a range for every node of the file (about 1.6x a parse
# and print); diagnostics need the start of a few. ``node_starts`` prints the original tree
# once with a state that tracks line and column only where a wanted node starts, and stops as
# soon as all are found. It gives exactly PositionProvider's ``start`` (syntactic: after
# leading whitespace and parentheses, hoisted from a child where libcst hoists it).

_NEWLINE = re.compile(r"\r\n?|\n")


class LazyPositions(Mapping):
    """``ctx.positions`` for passes that want PositionProvider's ranges of the original
    nodes: computed for the whole file on first use only (most files never use it)."""

    def __init__(self, module: cst.Module) -> None:
        self._module = module
        self._data: dict | None = None

    def _load(self) -> dict:
        if self._data is None:
            from libcst.metadata import MetadataWrapper, PositionProvider
            self._data = dict(MetadataWrapper(self._module, unsafe_skip_copy=True).resolve(PositionProvider))
        return self._data

    def get_if_loaded(self, node):
        return self._data.get(node) if self._data is not None else None

    def __getitem__(self, node):
        return self._load()[node]

    def __contains__(self, node) -> bool:
        return node in self._load()

    def __iter__(self):
        return iter(self._load())

    def __len__(self) -> int:
        return len(self._load())


class _AllFound(Exception):
    pass


class _NoRecord:
    __slots__ = ()

    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


_NO_RECORD = _NoRecord()


class _Record:
    __slots__ = ("state", "key", "start_node")

    def __init__(self, state, key, start_node):
        self.state, self.key, self.start_node = state, key, start_node

    def __enter__(self):
        state = self.state
        if self.start_node is None:
            state.syntactic[self.key] = state.here()
        else:
            state.wanted.add(id(self.start_node))     # hoisted: its start is ours
        return None

    def __exit__(self, *exc):
        if self.start_node is not None:
            state = self.state
            start = state.found.get(id(self.start_node))
            if start is not None:
                state.syntactic[self.key] = start
        return False


class _StartFinder(CodegenState):
    def __init__(self, module: cst.Module, wanted: set[int]) -> None:
        super().__init__(default_indent=module.default_indent, default_newline=module.default_newline)
        self.wanted = set(wanted)
        self.targets = set(wanted)
        self.found: dict[int, tuple[int, int]] = {}
        self.inclusive: dict[int, tuple[int, int]] = {}
        self.syntactic: dict[int, tuple[int, int]] = {}
        self._done = 0
        self._line = 1
        self._col = 0

    def here(self) -> tuple[int, int]:
        tokens = self.tokens
        line, col = self._line, self._col
        for i in range(self._done, len(tokens)):
            tok = tokens[i]
            if "\n" in tok or "\r" in tok:
                parts = _NEWLINE.split(tok)
                line += len(parts) - 1
                col = len(parts[-1])
            else:
                col += len(tok)
        self._done, self._line, self._col = len(tokens), line, col
        return (line, col)

    def before_codegen(self, node) -> None:
        if id(node) in self.wanted:
            self.inclusive[id(node)] = self.here()

    def after_codegen(self, node) -> None:
        key = id(node)
        if key in self.wanted and key not in self.found:
            start = self.syntactic.get(key) or self.inclusive.get(key)
            if start is not None:
                self.found[key] = start
                if key in self.targets:
                    self.targets.discard(key)
                    if not self.targets:
                        raise _AllFound

    def record_syntactic_position(self, node, *, start_node=None, end_node=None):
        if id(node) in self.wanted:
            return _Record(self, id(node), start_node)
        return _NO_RECORD


def node_starts(module: cst.Module, nodes) -> dict[int, tuple[int, int]]:
    """``{id(node): (line, col)}`` for the given nodes of ``module`` (nodes not in it are
    left out): libcst PositionProvider's start positions, found in one partial print."""
    wanted = {id(n) for n in nodes}
    if not wanted:
        return {}
    state = _StartFinder(module, wanted)
    try:
        module._codegen(state)
    except _AllFound:
        pass
    return {k: v for k, v in state.found.items() if k in wanted}
