"""Final pass: replace torch imports with the imports the converted code needs, and copy in
the prelude helpers it uses.

Runs after the rules, on the whole module. torch imports are removed unless ``torch`` is
still referenced (unconverted code was rewritten to fully qualified ``torch.*`` names, so a
plain ``import torch`` then suffices).
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import libcst as cst

from ..context import FileContext
from ..names import ROOTS, dotted, imports_only_at_top_level
from .. import prelude_index
from ..cache import cached_text
from ..codegen import code_for_node, module_code

from ..walk import (_NODE_FIELDS, _NODE_TYPE, TOKEN_TYPES, _is_node_type, node_fields, skipped_types,
                    transform, walk, without_expressions)
from .base import HELPERS_BANNER


def _is_torch_module(name: str | None) -> bool:
    return bool(name) and name.split(".", 1)[0] in ROOTS


def _strip_torch_imports(stmt, keep_plain_torch: bool):
    """A simple statement line or suite (``if x: import torch``) without its torch imports;
    None when nothing else is left."""
    small = []
    for s in stmt.body:
        if isinstance(s, cst.Import):
            names = [a for a in s.names if not _is_torch_module(dotted(a.name))
                     or (keep_plain_torch and dotted(a.name) == "torch" and a.asname is None)]
            if not names:
                continue
            if len(names) != len(s.names):
                names[-1] = names[-1].with_changes(comma=cst.MaybeSentinel.DEFAULT)
                s = s.with_changes(names=names)
        elif isinstance(s, cst.ImportFrom) and not s.relative and _is_torch_module(dotted(s.module) if s.module else None):
            continue
        small.append(s)
    if not small:
        return None
    if small[-1] is not stmt.body[-1]:      # ``x = 1; import torch``: no semicolon left dangling
        small[-1] = small[-1].with_changes(semicolon=cst.MaybeSentinel.DEFAULT)
    return stmt.with_changes(body=small)


def _comment_lines(stmt: cst.SimpleStatementLine) -> list[cst.EmptyLine]:
    """The comments a removed import line carries: those on the lines above it (blank lines
    between them kept) and the one at the end of its own line, each as a line of its own."""
    lines = list(stmt.leading_lines)
    while lines and lines[0].comment is None:
        lines.pop(0)           # blank lines before the first comment go with the import
    trailing = stmt.trailing_whitespace.comment
    if trailing is not None:
        lines.append(cst.EmptyLine(indent=True, comment=trailing))
    return lines


class _TorchImportRemover(cst.CSTTransformer):
    """Removes torch imports at any depth (also inside functions and try blocks); walks
    statements only. A plain ``import torch`` stays where it is while code still uses torch.
    Comments on or above a removed import line are kept, as lines of their own, above the
    next statement of its block (or at the end of the block)."""

    def __init__(self, keep_plain_torch: bool, top_level_only: bool = False) -> None:
        super().__init__()
        self.keep_plain_torch = keep_plain_torch
        self.top_level_only = top_level_only      # the file imports nothing below its top level
        self.comments: dict[int, list[cst.EmptyLine]] = {}   # id(block) -> removed comments

    def on_visit(self, node: cst.CSTNode) -> bool:
        if isinstance(node, cst.BaseExpression):
            return False
        if self.top_level_only and isinstance(node, cst.BaseCompoundStatement):
            return False
        return super().on_visit(node)

    def leave_SimpleStatementLine(self, original, updated):
        if not any(isinstance(s, (cst.Import, cst.ImportFrom)) for s in updated.body):
            return updated
        stripped = _strip_torch_imports(updated, self.keep_plain_torch)
        if stripped is None:
            comments = _comment_lines(updated)
            if not comments:
                return cst.RemoveFromParent()
            # keep the comments: a marker statement the enclosing block resolves
            return cst.SimpleStatementLine(body=[cst.Expr(cst.Name(_COMMENT_MARK))],
                                           leading_lines=comments)
        return stripped

    def leave_SimpleStatementSuite(self, original, updated):
        if not any(isinstance(s, (cst.Import, cst.ImportFrom)) for s in updated.body):
            return updated
        stripped = _strip_torch_imports(updated, self.keep_plain_torch)
        return stripped if stripped is not None else updated.with_changes(body=[cst.Pass()])

    def _resolve(self, body) -> tuple[list, list[cst.EmptyLine]]:
        out, carried = [], []
        for stmt in body:
            if _is_comment_mark(stmt):
                carried += list(stmt.leading_lines)
                continue
            if carried:
                stmt = stmt.with_changes(leading_lines=[*carried, *stmt.leading_lines])
                carried = []
            out.append(stmt)
        return out, carried

    def leave_IndentedBlock(self, original, updated):
        body, carried = self._resolve(updated.body)
        if not body:
            return updated.with_changes(body=[cst.SimpleStatementLine([cst.Pass()], leading_lines=carried)])
        if carried or len(body) != len(updated.body):
            return updated.with_changes(body=body, footer=[*carried, *updated.footer])
        return updated

    def leave_Module(self, original, updated):
        body, carried = self._resolve(updated.body)
        if carried or len(body) != len(updated.body):
            return updated.with_changes(body=body, footer=[*carried, *updated.footer])
        return updated


_COMMENT_MARK = "__jaxport_removed_import__"


def _is_comment_mark(stmt) -> bool:
    return (isinstance(stmt, cst.SimpleStatementLine) and len(stmt.body) == 1
            and isinstance(stmt.body[0], cst.Expr) and isinstance(stmt.body[0].value, cst.Name)
            and stmt.body[0].value.value == _COMMENT_MARK)


class _References(cst.CSTVisitor):
    """The names a module reads (``names``: every Name but attribute names and what imports
    bind) and those it binds at module level or by an import at any depth (``bound``)."""

    def __init__(self) -> None:
        self.names: set[str] = set()
        self.bound: set[str] = set()
        self.depth = 0
        self.attrs: set[int] = set()     # ids of attribute names (``b`` of ``a.b``): not reads

    def visit_Import(self, node: cst.Import) -> bool:
        for a in node.names:
            self.bound.add(dotted(a.asname.name) if a.asname else (dotted(a.name) or "").split(".")[0])
        return False

    def visit_ImportFrom(self, node: cst.ImportFrom) -> bool:
        if not isinstance(node.names, cst.ImportStar):
            for a in node.names:
                self.bound.add(dotted(a.asname.name) if a.asname else dotted(a.name))
        return False

    def visit_Attribute(self, node: cst.Attribute) -> None:
        self.attrs.add(id(node.attr))

    def visit_Name(self, node: cst.Name) -> None:
        if id(node) in self.attrs:
            self.attrs.discard(id(node))     # the attribute's own name, visited right after
        else:
            self.names.add(node.value)

    def visit_ClassDef(self, node: cst.ClassDef) -> None:
        if self.depth == 0:
            self.bound.add(node.name.value)
        self.depth += 1

    def visit_FunctionDef(self, node: cst.FunctionDef) -> None:
        if self.depth == 0:
            self.bound.add(node.name.value)
        self.depth += 1

    def leave_FunctionDef(self, node: cst.FunctionDef) -> None:
        self.depth -= 1

    def leave_ClassDef(self, node: cst.ClassDef) -> None:
        self.depth -= 1

    def visit_AssignTarget(self, node: cst.AssignTarget) -> None:
        if self.depth == 0 and isinstance(node.target, cst.Name):
            self.bound.add(node.target.value)   # module-level constants (helpers such as TORCH_PAD_MODES)


def _references(module: cst.Module) -> _References:
    """``walk(module, _References())``'s result (two sets: the order of the walk does not
    matter), found by a plain recursion over the fields that can hold nodes."""
    refs = _References()
    names, bound = refs.names, refs.bound
    fields_of, fields_fn = _NODE_FIELDS, node_fields
    node_type, is_node_type = _NODE_TYPE, _is_node_type
    name_t, attribute_t, import_t, import_from_t = cst.Name, cst.Attribute, cst.Import, cst.ImportFrom
    class_t, function_t, target_t = cst.ClassDef, cst.FunctionDef, cst.AssignTarget

    def rec(node, top: bool) -> None:
        t = type(node)
        if t is name_t:
            names.add(node.value)
            return
        if t is attribute_t:             # the attribute's own name is not a read
            rec(node.value, top)
            return
        if t is import_t or t is import_from_t:
            (refs.visit_Import if t is import_t else refs.visit_ImportFrom)(node)
            return
        if t is class_t or t is function_t:
            if top:
                bound.add(node.name.value)
            top = False
        elif t is target_t and top and type(node.target) is name_t:
            bound.add(node.target.value)
        for field in fields_of.get(t) or fields_fn(node):
            value = getattr(node, field)
            vt = type(value)
            if vt is tuple or vt is list:
                for item in value:
                    if type(item) not in TOKEN_TYPES:
                        rec(item, top)
            elif vt not in TOKEN_TYPES and ((k := node_type.get(vt)) or (k is None and is_node_type(vt))):
                rec(value, top)

    rec(module, True)
    return refs


class _Bindings(_References):
    """``_References.bound`` alone: statements are walked, expressions (which bind nothing
    the references count) are not."""
    walk_tokens = False
    walk_expressions = False

    def on_visit(self, node: cst.CSTNode) -> bool:
        if isinstance(node, cst.BaseExpression):
            return False
        return super().on_visit(node)


@lru_cache(maxsize=None)
def _parsed_helper(name: str, newline: str = "\n") -> tuple[cst.BaseStatement, ...]:
    """A helper's statements with the file's line endings, parsed once per process."""
    source = prelude_index.helpers()[name].source + "\n"
    return tuple(cst.parse_module(source.replace("\n", newline)).body)


def _import_block_end(body) -> int:
    """Index after the leading docstring/imports block of a module body."""
    index = 0
    for i, stmt in enumerate(body):
        if isinstance(stmt, cst.SimpleStatementLine) and all(
                isinstance(s, (cst.Import, cst.ImportFrom)) for s in stmt.body):
            index = i + 1
            continue
        if i == 0 and isinstance(stmt, cst.SimpleStatementLine) and isinstance(stmt.body[0], cst.Expr) \
                and isinstance(stmt.body[0].value, (cst.SimpleString, cst.ConcatenatedString)):
            index = 1
            continue
        break
    return index


def finalize(module: cst.Module, ctx: FileContext) -> cst.Module:
    """The converted module with the imports it needs and the prelude helpers it uses."""
    module, body, at, helpers = _finalize(module, ctx)
    if helpers:
        body[at:at] = _helper_statements(helpers, module.default_newline)
    return module.with_changes(body=body)


_PLACEHOLDER = HELPERS_PLACEHOLDER = "__jaxport_prelude_helpers_go_here__"


def finalize_code(module: cst.Module, ctx: FileContext) -> str:
    """``finalize(module, ctx).code``, with the helpers' text printed once per process: the
    helpers are most of a converted file, and printing a tree is the costly part."""
    return finalize_code_parts(module, ctx)[0]


def finalize_code_parts(module: cst.Module, ctx: FileContext) -> tuple[str, tuple[str, ...] | None]:
    """(:func:`finalize_code`'s text, its parts): the text with one placeholder statement
    where the helpers go, then each helper's text. The text is the first part with the
    placeholder's line replaced by the others, all top-level statements, so Python compiles
    it if it compiles each part (see ``api._compile_parts_error``); the helpers' parts are
    the same in every file. None when the text was not put together that way."""
    module, body, at, helpers = _finalize(module, ctx)
    ctx.helpers_added = tuple(h.name for h in helpers)
    if not helpers:
        return module_code(module.with_changes(body=body)), None
    placeholder = cst.SimpleStatementLine(body=[cst.Expr(cst.Name(_PLACEHOLDER))])
    body[at:at] = [placeholder]
    code = module_code(module.with_changes(body=body))
    newline, indent = module.default_newline, module.default_indent
    texts = [_helper_text(h.name, newline, indent, i == 0) for i, h in enumerate(helpers)]
    text = "".join(texts)
    line = _PLACEHOLDER + newline
    if code.count(_PLACEHOLDER) == 1 and code.count(line) == 1:
        return code.replace(line, text), (code, *texts)
    if code.count(_PLACEHOLDER) == 1 and code.endswith(_PLACEHOLDER):   # no trailing newline
        return code[: -len(_PLACEHOLDER)] + text[: -len(newline)], None
    body[at:at + 1] = _helper_statements(helpers, newline)           # the name is in the file
    return module_code(module.with_changes(body=body)), None


def _helper_statements(helpers, newline: str) -> list[cst.BaseStatement]:
    stmts = [_with_helper_spacing(stmt, i == 0)
             for i, stmt in enumerate(stmt for h in helpers for stmt in _parsed_helper(h.name, newline))]
    return stmts


def _with_helper_spacing(stmt: cst.BaseStatement, first: bool) -> cst.BaseStatement:
    if first:
        return stmt.with_changes(leading_lines=[
            cst.EmptyLine(), cst.EmptyLine(), cst.EmptyLine(comment=cst.Comment(HELPERS_BANNER))])
    return stmt.with_changes(leading_lines=[cst.EmptyLine(), cst.EmptyLine()])


def _helper_text_sources() -> list:
    here = Path(__file__).resolve().parent
    return [*prelude_index._sources(), here / "imports.py", here / "base.py"]


@lru_cache(maxsize=None)
def _helper_text(name: str, newline: str, indent: str, first: bool) -> str:
    """One helper's statements as printed in a module with these line endings and indent
    (``first``: the helper opens the helpers block, under its banner). Kept in the disk cache
    (:mod:`transpiler.cache`): a process needs the text of the helpers its files use, and
    parsing and printing them would cost about as much as converting a file."""
    return cached_text("helper-text", _helper_text_sources, f"{name}|{newline!r}|{indent!r}|{first}",
                       lambda: _print_helper(name, newline, indent, first))


def _print_helper(name: str, newline: str, indent: str, first: bool) -> str:
    printer = cst.Module(body=[], default_indent=indent, default_newline=newline)
    return "".join(code_for_node(printer, _with_helper_spacing(stmt, first and i == 0))
                   for i, stmt in enumerate(_parsed_helper(name, newline)))


@lru_cache(maxsize=None)
def _parsed_import(statement: str) -> cst.BaseStatement:
    return cst.parse_statement(statement)


def _finalize(module: cst.Module, ctx: FileContext):
    """(module without torch imports, its new body, index where the helpers go, helpers):
    the needed imports added after the leading docstring and imports."""
    before = _references(module)
    torch_used = "torch" in before.names
    module = transform(module, _TorchImportRemover(keep_plain_torch=torch_used,
                                                   top_level_only=imports_only_at_top_level(ctx.source)),
                       without_expressions(skipped_types()))     # it enters no expression
    # The remover changes import statements only, which hold no names the references count:
    # what the module reads is unchanged, what it binds is found again from its statements.
    refs = _Bindings()
    walk(module, refs)
    refs.names = before.names
    # helpers the final code reads (a rule may have emitted one for code a later rule removed,
    # such as Float32Context() for an autocast block the training rule inlines)
    helpers = [h for h in prelude_index.closure({n for n in refs.names if n not in refs.bound})
               if h.name not in refs.bound]          # already in the file (a converted file again)
    helper_names = {h.name for h in helpers}
    needed: list[str] = []
    wanted = (ctx.emits | refs.names) - refs.bound - helper_names
    for h in helpers:
        wanted |= set(h.imports)
    if "torch" in refs.names and "torch" not in refs.bound:
        needed.append("import torch")
    for name, statement in ctx.tables.imports.items():
        if name in wanted and name not in refs.bound and statement not in needed:
            needed.append(statement)
    for h in helpers:
        for name in sorted(h.imports):
            if name in ctx.tables.imports or name in refs.bound:
                continue
            statement = prelude_index.import_statement(name)
            if statement and statement not in needed:
                needed.append(statement)
    body = list(module.body)
    at = _import_block_end(body)
    new_stmts: list[cst.BaseStatement] = [_parsed_import(s) for s in needed]
    if at < len(body) and (new_stmts or helpers) and (helpers or at == 0):
        body[at] = body[at].with_changes(leading_lines=[cst.EmptyLine(), cst.EmptyLine(), *body[at].leading_lines]) \
            if helpers else body[at]
    body[at:at] = new_stmts
    return module, body, at + len(new_stmts), helpers
