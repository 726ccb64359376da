"""Per-file state shared by the passes: options, tables, aliases, diagnostics, what the
output needs (imports, prelude helpers) and the call-site counts for the report."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import libcst as cst
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
    positions: dict = field(default_factory=dict)       # original node → CodeRange
    other_imports: set[str] = field(default_factory=set)  # non-torch imported names (math, np)
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
        rng: CodeRange | None = self.positions.get(node)
        if rng is None:
            return (self._fallback_line(), 0)
        return (rng.start.line, rng.start.column)

    def _fallback_line(self) -> int:
        return 1

    def report(self, node: cst.CSTNode | None, code: str, message: str, marker: bool | None = None) -> Diagnostic:
        line, col = self.position(node) if node is not None else (1, 0)
        d = diag.make(code, message, line, col)
        self.diagnostics.append(d)
        wants_marker = marker if marker is not None else (
            d.severity in MARKED_SEVERITIES or d.code in MARKED_CODES)
        if wants_marker and self.statement_stack:
            self.statement_stack[-1].append(d)
        return d

    def call_site(self, converted: bool) -> None:
        self.torch_call_sites += 1
        if converted:
            self.converted_call_sites += 1
