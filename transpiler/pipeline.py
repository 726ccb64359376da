"""The ordered passes run on one parsed file.

read → parse (api) → resolve aliases → table-driven rules in one traversal (modules, ops,
mutation, runtime) → imports and helpers → print. Diagnostics are reported at nodes of the
original tree and placed at the end (one partial print of that tree finds their starts), so
every diagnostic points at the user's line and column.
"""
from __future__ import annotations

from dataclasses import dataclass

import libcst as cst

from .context import FileContext, LazyPositions
from .diagnostics import Diagnostic
from .mapping import load_tables
from .names import collect_imports, local_module_classes
from .passes.base import Composite
from .passes.imports import finalize_code_parts
from .passes.modules import ModulesRule
from .passes.ops import OpsRule
from .walk import transform


@dataclass
class Outcome:
    code: str
    diagnostics: list[Diagnostic]
    torch_call_sites: int
    converted_call_sites: int
    touched: bool = True       # False: no torch import, the file is not a conversion candidate
    compile_parts: tuple[str, ...] | None = None   # compiling these compiles ``code`` (imports.py)
    helpers: tuple[str, ...] = ()                   # the prelude helpers ``code`` holds


def mentions_torch(text: str) -> bool:
    """Cheap pre-filter: a file that never says ``torch`` (nor star-imports a module that may
    bring torch's names) is copied byte for byte."""
    return "torch" in text or "import *" in text


def rules(ctx: FileContext) -> list:
    """The table-driven rules, in the order they see each node."""
    from .passes.mutation import MutationRule
    from .passes.runtime import RuntimeRule
    from .passes.training import TrainingRule
    from .passes.distributed import DistributedRule
    from .passes.thirdparty import ThirdPartyImportsRule
    return [ModulesRule(ctx), OpsRule(ctx), MutationRule(ctx), DistributedRule(ctx), RuntimeRule(ctx),
            TrainingRule(ctx), ThirdPartyImportsRule(ctx)]


def run_pipeline(module: cst.Module, path: str, options, origin: str | None = None,
                 text: str | None = None) -> Outcome:
    try:
        from . import rewriters  # noqa: F401  (registers the named rewriters)
    except ImportError:
        pass
    tables = load_tables()
    imports = collect_imports(module, text)
    aliases = imports.aliases
    if imports.star_imports:    # ``from .parts import *`` may bring torch's names (nn, F)
        from .names import star_import_aliases
        bound = imports.other_imports | {local for *_, local in imports.from_imports}
        for local, qualified in star_import_aliases(origin, imports.star_imports).items():
            if local not in aliases and local not in bound:
                aliases[local] = qualified
    if not aliases:     # not printed: the caller copies the file's bytes as they are
        return Outcome("", [], 0, 0, touched=False)
    ctx = FileContext(path=path, options=options, tables=tables, aliases=aliases, module=module, source=text,
                      positions=LazyPositions(module),
                      other_imports=imports.other_imports,
                      local_classes=local_module_classes(origin, imports) if origin else set())
    from .passes import distributed
    source = distributed.prepare(module, ctx)          # DDP scripts: unwrap, open no_sync()
    if getattr(options, "layout", "nchw") == "nhwc":
        from .passes import layout
        source = layout.prepare(source, ctx)           # channels-last image models
    composite = Composite(ctx, rules(ctx))
    converted = transform(source, composite, composite.skipped_types())
    converted = distributed.finish(converted, ctx)             # data-parallel train steps
    code, parts = finalize_code_parts(converted, ctx)
    ctx.place_diagnostics()     # positions in the original file, found in one cheap pass
    return Outcome(code, sorted(ctx.diagnostics), ctx.torch_call_sites, ctx.converted_call_sites,
                   compile_parts=parts, helpers=ctx.helpers_added)
