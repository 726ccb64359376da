"""The training manifest: what ``convert`` mapped in a training script, as a sidecar file.

For every converted ``.py`` file whose original holds a training loop, ``convert`` writes
``<stem>.jaxport.json`` beside the output (``train.py`` → ``train.jaxport.json``). It says
what was mapped and gives ``jaxport validate --train-steps K`` what it needs to replay the
loop in torch and in JAX:

* ``model``: the name, class and constructor call (``model = Net(args.dropout)``);
* ``optimizer``: the torch expression, class, hyperparameters (source text and, where it can
  be read, the value; ``args.lr`` resolves through the ``argparse`` default) and the converted
  optax expression;
* ``losses``: each loss object or functional loss the step calls, torch and converted;
* ``scheduler``: class, expressions, and whether it steps per ``batch`` or per ``epoch``;
* ``batch``: the loop's batch names with their role (``input`` of the model or ``target`` of a
  loss, with the loss and the prediction it is compared with); an entry may be given a
  ``"spec"`` (``"float32[B, 16]"``), which validation then uses;
* ``batch_size`` and ``steps_per_epoch`` where the DataLoader and the data make them
  readable, ``arguments`` (argparse defaults);
* ``replay``: per side, the setup statements (model, losses, optimizer, scheduler and what they
  read), the statements of one step, the scheduler's step, the state and loss names.

The analysis is syntactic (the stdlib ``ast``), over the original and the converted module:
assignments to the same names in the same function, a call of the loop's function mapped back
to its caller's names. It never imports torch, jax or user code. ``build_manifest`` returns
``None`` for a file without a training loop.
"""
from __future__ import annotations

import ast
import json
import math
import re
from bisect import bisect_left
from functools import lru_cache
from collections import deque
from dataclasses import dataclass, field
from typing import Any

VERSION = 1
SUFFIX = ".jaxport.json"

LOSS_FUNCTIONS = {
    "cross_entropy", "nll_loss", "mse_loss", "l1_loss", "binary_cross_entropy",
    "binary_cross_entropy_with_logits", "smooth_l1_loss", "huber_loss", "kl_div",
    "cosine_embedding_loss", "triplet_margin_loss", "ctc_loss", "margin_ranking_loss",
    "soft_margin_loss", "multilabel_soft_margin_loss", "multilabel_margin_loss",
    "poisson_nll_loss", "gaussian_nll_loss", "hinge_embedding_loss", "multi_margin_loss",
}
MODEL_METHODS = {"to", "cuda", "cpu", "float", "double", "half", "train", "eval", "bfloat16"}
DATA_CALLS = ("DataLoader", "Dataset", "ArrayDataset", "Subset", "random_split", "Sampler")


def sidecar_name(py_name: str) -> str:
    """``train.py`` → ``train.jaxport.json``."""
    stem = py_name[:-3] if py_name.endswith(".py") else py_name
    return stem + SUFFIX


def might_train(text: str) -> bool:
    """Cheap pre-check before parsing: a training loop needs ``.backward(`` and ``.step(``."""
    return ".backward(" in text and ".step(" in text


# --------------------------------------------------------------------------- small helpers

def _src(text: str, node: ast.AST) -> str:
    seg = ast.get_source_segment(text, node)
    return seg if seg is not None else ast.unparse(node)


def _split_lines(text: str) -> list[str]:
    """Lines with their ends, split at \\r\\n, \\r and \\n only (as the ast module does, unlike
    ``str.splitlines``, which also splits at form feeds and other separators)."""
    return re.findall(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+$", text)


def _dotted(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else None
    return None


_BLOCKS = (ast.stmt, ast.excepthandler, ast.match_case)


def _walk_statements(tree: ast.AST) -> list[ast.AST]:
    """The statements of ``tree`` at any depth, in ``ast.walk``'s (breadth-first) order; the
    expressions around them, which hold no statements, are not entered."""
    out = [tree]
    for node in out:    # (the list grows while it is read)
        for name in node._fields:
            value = getattr(node, name, None)
            if type(value) is list:
                out += [v for v in value if isinstance(v, _BLOCKS)]
    return out


def _walk_lines(tree: ast.AST, lines: list[int]):
    """``ast.walk(tree)`` (same order) without the subtrees that lie wholly outside the
    sorted line numbers ``lines``."""
    todo = deque([tree])
    last = len(lines)
    while todo:
        node = todo.popleft()
        yield node
        for child in ast.iter_child_nodes(node):
            lo = getattr(child, "lineno", None)
            if lo is not None:
                hi = getattr(child, "end_lineno", None) or lo
                i = bisect_left(lines, lo)
                if i == last or lines[i] > hi:
                    continue
            todo.append(child)


def _aliases(tree: ast.Module) -> dict[str, str]:
    out: dict[str, str] = {}
    for node in _walk_statements(tree):   # imports are statements
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.asname:
                    out[a.asname] = a.name
                else:
                    out[a.name.split(".")[0]] = a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for a in node.names:
                out[a.asname or a.name] = f"{node.module}.{a.name}"
    return out


def _qualify(node: ast.AST, aliases: dict[str, str]) -> str | None:
    name = _dotted(node)
    if name is None:
        return None
    head, _, rest = name.partition(".")
    if head in aliases:
        return aliases[head] + ("." + rest if rest else "")
    return name


def _nodes(node: ast.AST) -> list[ast.AST]:
    """``list(ast.walk(node))`` (the same breadth-first order), built without generators."""
    out = [node]
    for n in out:       # (the list grows while it is read)
        for name in n._fields:
            value = getattr(n, name, None)
            if isinstance(value, ast.AST):
                out.append(value)
            elif isinstance(value, list):
                out += [item for item in value if isinstance(item, ast.AST)]
    return out


def _names_read(node: ast.AST) -> set[str]:
    """Free names a node reads (names bound by its lambdas and comprehensions excluded)."""
    bound = set()
    read = set()
    for n in _nodes(node):
        if isinstance(n, ast.Name):
            if isinstance(n.ctx, ast.Load):
                read.add(n.id)
        elif isinstance(n, ast.Lambda):
            a = n.args
            bound |= {x.arg for x in a.posonlyargs + a.args + a.kwonlyargs}
            bound |= {x.arg for x in (a.vararg, a.kwarg) if x is not None}
        elif isinstance(n, ast.comprehension):
            bound |= set(_target_names(n.target))
    return read - bound


def _target_names(target: ast.AST) -> list[str]:
    if isinstance(target, ast.Name):
        return [target.id]
    if isinstance(target, (ast.Tuple, ast.List)):
        out = []
        for e in target.elts:
            out += _target_names(e.value if isinstance(e, ast.Starred) else e)
        return out
    return []


def _assigned(stmt: ast.stmt) -> list[str]:
    if isinstance(stmt, ast.Assign):
        return [n for t in stmt.targets for n in _target_names(t)]
    if isinstance(stmt, (ast.AugAssign, ast.AnnAssign)):
        return _target_names(stmt.target)
    return []


def _value(stmt: ast.stmt) -> ast.AST | None:
    return stmt.value if isinstance(stmt, (ast.Assign, ast.AugAssign, ast.AnnAssign)) else None


def _expr_call(stmt: ast.stmt) -> ast.Call | None:
    if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call):
        return stmt.value
    return None


def _method_call(stmt: ast.stmt, method: str) -> str | None:
    """``X.method(...)`` as a statement (or ``t = X.method(...)``): the dotted ``X``."""
    call = _expr_call(stmt)
    if call is None and isinstance(stmt, ast.Assign) and isinstance(stmt.value, ast.Call):
        call = stmt.value
    if call is not None and isinstance(call.func, ast.Attribute) and call.func.attr == method:
        return _dotted(call.func.value)
    return None


def _scaled_backward(stmt: ast.stmt) -> str | None:
    """``scaler.scale(loss).backward()`` (a GradScaler): the dotted ``loss``."""
    call = _expr_call(stmt)
    if (call is not None and isinstance(call.func, ast.Attribute) and call.func.attr == "backward"
            and isinstance(call.func.value, ast.Call) and isinstance(call.func.value.func, ast.Attribute)
            and call.func.value.func.attr == "scale" and len(call.func.value.args) == 1):
        return _dotted(call.func.value.args[0])
    return None


def _scaler_step(stmt: ast.stmt) -> str | None:
    """``scaler.step(optimizer)`` (a GradScaler): the dotted ``optimizer``."""
    call = _expr_call(stmt)
    if (call is not None and isinstance(call.func, ast.Attribute) and call.func.attr == "step"
            and len(call.args) == 1 and not call.keywords):
        return _dotted(call.args[0])
    return None


def _calls_method_on(node: ast.AST, obj: str, method: str) -> bool:
    for n in ast.walk(node):
        if (isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == method
                and _dotted(n.func.value) == obj):
            return True
    return False


def _literal(node: ast.AST, arguments: dict[str, Any]) -> Any:
    """The value of a literal, of ``args.NAME`` (argparse default), or of a simple arithmetic
    expression of those; raises ValueError otherwise."""
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "args":
        if node.attr in arguments:
            return arguments[node.attr]
        raise ValueError(node.attr)
    if isinstance(node, ast.BinOp):
        a, b = _literal(node.left, arguments), _literal(node.right, arguments)
        ops = {ast.Add: lambda: a + b, ast.Sub: lambda: a - b, ast.Mult: lambda: a * b,
               ast.Div: lambda: a / b, ast.FloorDiv: lambda: a // b, ast.Pow: lambda: a ** b}
        if type(node.op) in ops:
            return ops[type(node.op)]()
        raise ValueError("op")
    if isinstance(node, (ast.Tuple, ast.List)):
        return [_literal(e, arguments) for e in node.elts]
    return ast.literal_eval(node)


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value, allow_nan=False)
        return value
    except (TypeError, ValueError):
        return repr(value)


# --------------------------------------------------------------------------- scopes

@dataclass
class Scope:
    name: str                       # "<module>", "main", "Trainer.fit"
    node: ast.AST
    body: list[ast.stmt]
    params: list[str] = field(default_factory=list)
    # name → the statements assigning it (not for loops), in _statements order: built on first use
    assigning: dict[str, list[ast.stmt]] | None = field(default=None, repr=False, compare=False)


def _scopes(tree: ast.Module) -> dict[str, Scope]:
    out = {"<module>": Scope("<module>", tree, tree.body)}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            out[node.name] = Scope(node.name, node, node.body, [a.arg for a in node.args.posonlyargs + node.args.args + node.args.kwonlyargs])
        elif isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    q = f"{node.name}.{item.name}"
                    out[q] = Scope(q, item, item.body, [a.arg for a in item.args.posonlyargs + item.args.args + item.args.kwonlyargs])
    return out


def _statements(body: list[ast.stmt]) -> list[ast.stmt]:
    """Every statement of a body, nested blocks included, nested defs/classes excluded."""
    out: list[ast.stmt] = []
    _add_statements(body, out)
    return out


def _add_statements(body: list[ast.stmt], out: list[ast.stmt]) -> None:
    for stmt in body:
        out.append(stmt)
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue
        for attr in ("body", "orelse", "finalbody"):
            inner = getattr(stmt, attr, None)
            if isinstance(inner, list):
                _add_statements(inner, out)
        for h in getattr(stmt, "handlers", []) or []:
            _add_statements(h.body, out)


def _walk_scope(body: list[ast.stmt]):
    """Every node of a body, nested defs/classes/lambdas excluded."""
    todo = [n for n in body if not isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
    while todo:
        node = todo.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
                todo.append(child)


def _find_loops(scope: Scope) -> list[tuple[ast.For, str, str]]:
    """Training loops of a scope: (for node, loss name, optimizer name)."""
    found = []
    for stmt in _statements(scope.body):
        if not isinstance(stmt, ast.For):
            continue
        losses = [n for s in stmt.body if (n := _method_call(s, "backward"))]
        inner = [s for s in _statements(stmt.body) if not any(s is d for d in stmt.body)]
        # backward() only in an inner loop and step() only here: accumulation over micro-batches
        # (an inner loop that steps too is the training loop itself, found on its own)
        nested = [] if losses or any(_method_call(s, "step") for s in inner) else \
            [n for s in inner if (n := _method_call(s, "backward"))]
        opts = [n for s in stmt.body if (n := _method_call(s, "step"))
                and not any(_method_call(z, "zero_grad") == n for z in [])]
        zeroed = {n for s in _statements(stmt.body) if (n := _method_call(s, "zero_grad"))}
        opts = [o for o in opts if o in zeroed] or opts
        scaled = [n for s in stmt.body if (n := _scaled_backward(s))]
        scaler_opts = [n for s in stmt.body if (n := _scaler_step(s))]
        if losses and opts:
            found.append((stmt, losses[0], opts[0]))
        elif scaled and scaler_opts:
            found.append((stmt, scaled[0], scaler_opts[0]))
        elif nested and opts:
            found.append((stmt, nested[0], opts[0]))
    return found


INNER_BACKWARD = ("backward() runs in an inner loop (gradient accumulation over micro-batches): the loop "
                  "replay handles one backward()/step() pair per iteration")


GRAD_SCALER = ("the loop steps through a GradScaler (scaler.scale(loss).backward(), scaler.step(optimizer)): "
               "the loop replay handles loss.backward() and optimizer.step()")


STEP_FUNCTION = ("one optimizer step per call of this function (backward() and step() in its own body, "
                 "called from a loop elsewhere): the loop replay rebuilds a loop's body")


def _step_function(scope: Scope) -> tuple[str, str] | None:
    """(loss, optimizer) of a function or method whose own body, outside any loop, calls
    ``<loss>.backward()`` and ``<optimizer>.step()``: one training step per call."""
    if scope.name == "<module>":
        return None
    losses = [n for s in scope.body if (n := _method_call(s, "backward"))]
    zeroed = {n for s in scope.body if (n := _method_call(s, "zero_grad"))}
    opts = [n for s in scope.body if (n := _method_call(s, "step"))]
    opts = [o for o in opts if o in zeroed] or opts
    return (losses[0], opts[0]) if losses and opts else None


def _loop_problem(loop: ast.For) -> str | None:
    """Why the loop replay cannot rebuild this loop (the script replay runs it instead)."""
    if any(_scaled_backward(s) for s in loop.body):
        return GRAD_SCALER
    if not any(_method_call(s, "backward") for s in loop.body):
        return INNER_BACKWARD
    return None


def _arguments(tree: ast.Module, text: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if text is None:
        nodes = ast.walk(tree)
    else:   # only the lines that say add_argument can hold such a call
        if "add_argument" not in text:
            return out
        nodes = _walk_lines(tree, [i for i, line in enumerate(_split_lines(text), 1) if "add_argument" in line])
    for node in nodes:
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr == "add_argument" and node.args):
            continue
        flags = [a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
        kw = {k.arg: k.value for k in node.keywords if k.arg}
        if "dest" in kw and isinstance(kw["dest"], ast.Constant):
            dest = kw["dest"].value
        else:
            longs = [f for f in flags if f.startswith("--")]
            dest = (longs[0] if longs else flags[0] if flags else "").lstrip("-").replace("-", "_")
        if not dest:
            continue
        action = kw.get("action")
        action = action.value if isinstance(action, ast.Constant) else None
        default: Any = None
        if "default" in kw:
            try:
                default = ast.literal_eval(kw["default"])
            except ValueError:
                default = None
        elif action == "store_true":
            default = False
        elif action == "store_false":
            default = True
        out[dest] = _jsonable(default)
    return out


# --------------------------------------------------------------------------- the analysis

def is_definition(stmt: ast.stmt) -> bool:
    """A module-level statement that only defines: imports, functions, classes, assignments
    without calls (``PAD, BOS = 0, 1``), docstrings. The replay loads scripts with only these."""
    if isinstance(stmt, (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return True
    if isinstance(stmt, (ast.Assign, ast.AnnAssign)) and stmt.value is not None:
        return not any(isinstance(n, (ast.Call, ast.Await, ast.Yield)) for n in ast.walk(stmt.value))
    if isinstance(stmt, ast.Try):
        inner = stmt.body + [s for h in stmt.handlers for s in h.body] + stmt.orelse
        return all(isinstance(s, (ast.Import, ast.ImportFrom, ast.Pass, ast.Assign)) for s in inner)
    return isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant)


@lru_cache(maxsize=None)
def _helper_definitions(name: str) -> frozenset[str]:
    """The names a prelude helper's source defines at its top level (as a script's
    definitions-only load would bind them): parsed once per process."""
    from .prelude_index import helpers
    helper = helpers().get(name)
    if helper is None:
        return frozenset()
    return frozenset(_definition_names(ast.parse(helper.source)))


def _definition_names(tree: ast.Module) -> set[str]:
    """Names the definitions-only load of a module binds (see :func:`is_definition`)."""
    names = set()
    for stmt in tree.body:
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(stmt.name)
        elif isinstance(stmt, (ast.Import, ast.ImportFrom)):
            for a in stmt.names:
                names.add((a.asname or a.name).split(".")[0])
        elif isinstance(stmt, (ast.Assign, ast.AnnAssign)) and is_definition(stmt):
            targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
            for t in targets:
                for n in ast.walk(t):
                    if isinstance(n, ast.Name):
                        names.add(n.id)
    return names


class _Side:
    """One module (original or converted) with its scopes and assignments by name."""

    def __init__(self, text: str, helpers_span: tuple[int, int] | None = None,
                 helpers: tuple[str, ...] = ()):
        """``helpers_span``, ``helpers``: where the prelude helpers are in a converted ``text``
        and their names (``api.FileResult``): their lines are parsed as blank lines, and what
        they define is read from each helper's source, parsed once per process."""
        self.text = text
        self._lines: list[bytes] | None = None
        self.callers: dict[int, tuple] = {}     # id(scope) → (scope, _caller_binding's answer)
        helper_names: set[str] = set()
        if helpers_span is not None and helpers:
            start, end = helpers_span
            region = text[start:end]
            breaks = region.count("\n") + region.count("\r") - region.count("\r\n")
            text = text[:start] + "\n" * breaks + text[end:]
            for name in helpers:
                helper_names |= _helper_definitions(name)
        self.tree = ast.parse(text)
        self.aliases = _aliases(self.tree)
        self.scopes = _scopes(self.tree)
        self.module_names = _definition_names(self.tree) | helper_names

    def src(self, node: ast.AST) -> str:
        """The source text of ``node`` (what ``ast.get_source_segment`` returns, without
        splitting the whole file into lines on every call)."""
        if self._lines is None:
            self._lines = [line.encode("utf-8") for line in _split_lines(self.text)]
        end_lineno, end_col = getattr(node, "end_lineno", None), getattr(node, "end_col_offset", None)
        if end_lineno is None or end_col is None or not hasattr(node, "lineno"):
            return ast.unparse(node)
        first, last, lines = node.lineno - 1, end_lineno - 1, self._lines
        try:
            if first == last:
                return lines[first][node.col_offset:end_col].decode("utf-8")
            return (lines[first][node.col_offset:] + b"".join(lines[first + 1:last])
                    + lines[last][:end_col]).decode("utf-8")
        except (IndexError, UnicodeDecodeError):
            return _src(self.text, node)

    def may_mention(self, scope: Scope, word: str) -> bool:
        """False only when the lines of a function ``scope`` cannot hold the identifier
        ``word`` (ASCII source without it: no other spelling of it exists)."""
        node = scope.node
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) or node.end_lineno is None:
            return True
        lines = getattr(self, "_text_lines", None)
        if lines is None:
            lines = self._text_lines = _split_lines(self.text) if self.text.isascii() else []
        if not lines:
            return True
        return word in "".join(lines[node.lineno - 1:node.end_lineno])

    def assignments(self, scope: Scope, name: str, before: int | None = None) -> list[ast.stmt]:
        """The statements of ``scope`` (nested blocks included) that assign ``name``, in order;
        only those on lines before ``before`` when it is given."""
        if scope.assigning is None:     # one pass over the scope answers every name
            scope.assigning = {}
            for stmt in _statements(scope.body):
                if not isinstance(stmt, ast.For):
                    for n in dict.fromkeys(_assigned(stmt)):
                        scope.assigning.setdefault(n, []).append(stmt)
        found = scope.assigning.get(name, [])
        if before is None:
            return list(found)
        return [stmt for stmt in found if stmt.lineno < before]

    def first_call_assignment(self, scope: Scope, name: str) -> ast.stmt | None:
        for stmt in self.assignments(scope, name):
            if isinstance(_value(stmt), ast.Call):
                return stmt
        return None


def _strip_model_methods(node: ast.AST) -> ast.AST:
    while (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
           and node.func.attr in MODEL_METHODS and isinstance(node.func.value, ast.Call)):
        node = node.func.value
    return node


def _model_of_optimizer(call: ast.Call) -> str | None:
    for n in ast.walk(call):
        if (isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
                and n.func.attr in ("parameters", "named_parameters")):
            return _dotted(n.func.value)
    return None


def _caller_binding(side: _Side, loop_scope: Scope) -> tuple[Scope | None, dict[str, str]]:
    """The scope that calls ``loop_scope`` and ``{parameter: caller's name}`` for the call
    (looked for once per scope)."""
    known = side.callers.get(id(loop_scope))
    if known is None or known[0] is not loop_scope:
        known = side.callers[id(loop_scope)] = (loop_scope, _find_caller(side, loop_scope))
    caller, binding = known[1]
    return caller, dict(binding)


def _find_caller(side: _Side, loop_scope: Scope) -> tuple[Scope | None, dict[str, str]]:
    fname = loop_scope.name.split(".")[-1]
    for scope in side.scopes.values():
        if scope is loop_scope or not side.may_mention(scope, fname):
            continue
        for node in _walk_scope(scope.body):
            if isinstance(node, ast.Call) and _dotted(node.func) in (fname, f"self.{fname}"):
                params = [p for p in loop_scope.params if p != "self"]
                binding: dict[str, str] = {}
                for p, a in zip(params, node.args):
                    if isinstance(a, ast.Name):
                        binding[p] = a.id
                for k in node.keywords:
                    if k.arg and isinstance(k.value, ast.Name):
                        binding[k.arg] = k.value.id
                return scope, binding
    return None, {}


def _dependency_slice(body: list[ast.stmt], end: int, wanted: set[str]) -> list[ast.stmt]:
    """Direct statements of ``body`` before index ``end`` that (transitively) assign ``wanted``."""
    need = set(wanted)
    picked = []
    for stmt in reversed(body[:end]):
        names = set(_assigned(stmt))
        if names & need and not isinstance(stmt, (ast.For, ast.While, ast.If, ast.With)):
            picked.append(stmt)
            v = _value(stmt)
            if v is not None:
                need |= _names_read(v)
            if isinstance(stmt, ast.AugAssign):
                need |= names
    return list(reversed(picked))


def _setup_closure(side: _Side, scope: Scope, stmts: list[ast.stmt], known: set[str]) -> tuple[list[ast.stmt], list[str], dict[str, str]]:
    """``stmts`` plus the earlier statements of ``scope`` they read from, in source order.
    Returns (statements, unresolved names, stubs): a name assigned from a DataLoader/dataset
    is not computed but stubbed (``{"loader": "loader"}``), ``args`` from ``parse_args()``
    is ``{"args": "args"}``."""
    chosen: dict[int, ast.stmt] = {id(s): s for s in stmts}
    stubs: dict[str, str] = {}
    missing: list[str] = []
    todo = list(stmts)
    defined_by_chosen: set[str] = set()
    builtin = set(dir(__builtins__)) | (set(__builtins__) if isinstance(__builtins__, dict) else set())
    while todo:
        stmt = todo.pop()
        v = _value(stmt) if not isinstance(stmt, ast.Expr) else stmt.value
        reads = _names_read(v) if v is not None else set()
        if isinstance(stmt, ast.AugAssign):
            reads |= set(_assigned(stmt))
        for name in sorted(reads):
            if name in known or name in side.module_names or name in stubs or name in builtin:
                continue
            prior = [s for s in side.assignments(scope, name, before=stmt.lineno)]
            if not prior:
                if name in scope.params:
                    missing.append(name)
                elif name not in defined_by_chosen:
                    missing.append(name)
                continue
            src = prior[-1]
            val = _value(src)
            if isinstance(val, ast.Call) and isinstance(val.func, ast.Attribute) and val.func.attr == "parse_args":
                stubs[name] = "args"
                continue
            if val is not None and any((_dotted(n.func) or "").split(".")[-1].endswith(DATA_CALLS)
                                       for n in ast.walk(val) if isinstance(n, ast.Call)):
                stubs[name] = "loader"
                continue
            if id(src) not in chosen:
                chosen[id(src)] = src
                defined_by_chosen |= set(_assigned(src))
                todo.append(src)
    ordered = sorted(chosen.values(), key=lambda s: (s.lineno, s.col_offset))
    return ordered, sorted(set(missing)), stubs


def _leading_dim(side: _Side, scope: Scope, node: ast.AST, arguments: dict, depth: int = 0) -> int | None:
    """Best effort: the number of samples of a dataset expression (first int of the first
    shape tuple / ``size=`` found, following names to their assignment)."""
    if depth > 5:
        return None
    for n in ast.walk(node):
        if isinstance(n, ast.Call):
            for k in n.keywords:
                if k.arg in ("size", "shape"):
                    try:
                        v = _literal(k.value, arguments)
                    except (ValueError, TypeError, SyntaxError):
                        continue
                    v = v[0] if isinstance(v, list) and v else v
                    if isinstance(v, int):
                        return v
            for a in n.args[:1]:
                if isinstance(a, ast.Tuple) and a.elts:
                    try:
                        v = _literal(a.elts[0], arguments)
                    except (ValueError, TypeError, SyntaxError):
                        continue
                    if isinstance(v, int):
                        return v
    for n in ast.walk(node):
        if isinstance(n, ast.Subscript):
            return None   # a slice of the data: its length is not the data's
    for name in sorted(_names_read(node)):
        for stmt in side.assignments(scope, name)[-1:]:
            v = _value(stmt)
            if v is not None:
                got = _leading_dim(side, scope, v, arguments, depth + 1)
                if got is not None:
                    return got
    return None


def _loader_info(side: _Side, scope: Scope, loader: str, arguments: dict) -> dict:
    info: dict[str, Any] = {"loader": loader, "batch_size": None, "samples": None, "steps_per_epoch": None}
    stmt = side.first_call_assignment(scope, loader)
    if stmt is None:
        return info
    call = _value(stmt)
    if not (isinstance(call, ast.Call) and (_dotted(call.func) or "").endswith("DataLoader")):
        return info
    kw = {k.arg: k.value for k in call.keywords if k.arg}
    bs = kw.get("batch_size", call.args[1] if len(call.args) > 1 else None)
    try:
        info["batch_size"] = int(_literal(bs, arguments)) if bs is not None else 1
    except (ValueError, TypeError, SyntaxError):
        pass
    drop_last = False
    if "drop_last" in kw:
        try:
            drop_last = bool(_literal(kw["drop_last"], arguments))
        except (ValueError, TypeError, SyntaxError):
            pass
    if call.args:
        n = _leading_dim(side, scope, call.args[0], arguments)
        info["samples"] = n
        if n is not None and info["batch_size"]:
            b = info["batch_size"]
            info["steps_per_epoch"] = n // b if drop_last else math.ceil(n / b)
    return info


def _loop_batch(loop: ast.For) -> tuple[list[str], str | None, ast.AST, str]:
    """(batch names, index name, iterable node, pattern source) of a training loop."""
    target, it = loop.target, loop.iter
    index = None
    if (isinstance(it, ast.Call) and _dotted(it.func) == "enumerate" and it.args
            and isinstance(target, ast.Tuple) and len(target.elts) == 2):
        if isinstance(target.elts[0], ast.Name):
            index = target.elts[0].id
        target, it = target.elts[1], it.args[0]
    return _target_names(target), index, it, ast.unparse(target)


def _loss_kind(side: _Side, callee: ast.AST, loss_objects: dict[str, dict]) -> tuple[str | None, str | None]:
    """(kind, object name) of a call's callee when it is a loss: ``torch.nn.CrossEntropyLoss``
    for a loss object, ``torch.nn.functional.nll_loss`` for a functional loss."""
    name = _dotted(callee)
    if name is None:
        return None, None
    if name in loss_objects:
        return loss_objects[name]["class"], name
    q = _qualify(callee, side.aliases) or ""
    if q.startswith("torch.nn.functional.") and q.rsplit(".", 1)[-1] in LOSS_FUNCTIONS:
        return q, None
    if q.startswith("torch.") and q.rsplit(".", 1)[-1] in LOSS_FUNCTIONS:
        return q, None
    return None, None


def _is_loss_class(q: str | None) -> bool:
    return bool(q) and q.startswith("torch.nn.") and q.endswith("Loss")


def _hyperparameters(side: _Side, call: ast.Call, arguments: dict, skip_first: bool = True) -> dict:
    out = {}
    for k in call.keywords:
        if not k.arg:
            continue
        entry: dict[str, Any] = {"source": side.src(k.value)}
        try:
            entry["value"] = _jsonable(_literal(k.value, arguments))
        except (ValueError, TypeError, SyntaxError, ZeroDivisionError):
            pass
        out[k.arg] = entry
    for i, a in enumerate(call.args[1 if skip_first else 0:], start=1 if skip_first else 0):
        entry = {"source": side.src(a)}
        try:
            entry["value"] = _jsonable(_literal(a, arguments))
        except (ValueError, TypeError, SyntaxError, ZeroDivisionError):
            pass
        out[f"#{i}"] = entry
    return out


def _converted_value(conv: _Side, scope: Scope | None, name: str, skip_attr: str | None = None) -> str | None:
    if scope is None:
        return None
    for stmt in conv.assignments(scope, name):
        v = _value(stmt)
        if v is None:
            continue
        if skip_attr and isinstance(v, ast.Attribute) and v.attr == skip_attr:
            continue
        if isinstance(v, ast.Constant) and v.value is None:
            continue
        return conv.src(v)
    return None


def _analyse_loop(orig: _Side, conv: _Side | None, scope: Scope, loop: ast.For, loss: str, opt: str,
                  arguments: dict) -> dict:
    problems: list[str] = []
    # --- where the optimizer, model, losses and scheduler are built
    setup, binding = scope, {}
    if orig.first_call_assignment(scope, opt) is None:
        caller, binding = _caller_binding(orig, scope)
        if caller is not None:
            setup = caller
    up = lambda n: binding.get(n, n)    # noqa: E731 - loop name → setup name
    opt_stmt = orig.first_call_assignment(setup, up(opt))
    entry: dict[str, Any] = {"function": scope.name, "line": loop.lineno, "setup_function": setup.name,
                             "aliases": {k: v for k, v in binding.items() if k != v}}
    model_name = None
    if opt_stmt is not None:
        call = _value(opt_stmt)
        entry["optimizer"] = {"name": up(opt), "class": _qualify(call.func, orig.aliases),
                              "torch": orig.src(call),
                              "hyperparameters": _hyperparameters(orig, call, arguments),
                              "line": opt_stmt.lineno}
        model_name = _model_of_optimizer(call)
    else:
        entry["optimizer"] = {"name": up(opt), "class": None, "torch": None, "hyperparameters": {}}
        problems.append(f"the optimizer {up(opt)!r} is not built in {setup.name}")
    # the model's name inside the loop
    loop_model = next((p for p, c in binding.items() if c == model_name), model_name)
    model_stmt = orig.first_call_assignment(setup, model_name) if model_name else None
    if model_stmt is not None:
        ctor = _strip_model_methods(_value(model_stmt))
        entry["model"] = {"name": model_name, "class": _dotted(ctor.func) if isinstance(ctor, ast.Call) else None,
                          "call": orig.src(ctor), "line": model_stmt.lineno}
    else:
        entry["model"] = {"name": model_name, "class": None, "call": None}
        problems.append("the model (X in X.parameters() of the optimizer) is not built where the optimizer is")

    # --- scheduler
    sched = None
    for stmt in _statements(setup.body):
        v = _value(stmt)
        if isinstance(v, ast.Call) and (_qualify(v.func, orig.aliases) or "").startswith("torch.optim.lr_scheduler.") \
                and v.args and _dotted(v.args[0]) == up(opt) and _assigned(stmt):
            sched = (_assigned(stmt)[0], stmt, v)
            break
    body = loop.body
    if sched is not None:
        sname, sstmt, scall = sched
        loop_sname = next((p for p, c in binding.items() if c == sname), sname)
        in_loop = any(_method_call(s, "step") == loop_sname for s in body)
        entry["scheduler"] = {"name": sname, "class": _qualify(scall.func, orig.aliases), "torch": orig.src(scall),
                              "hyperparameters": _hyperparameters(orig, scall, arguments),
                              "step": "batch" if in_loop else "epoch", "line": sstmt.lineno}
        step_stmt = None
        for where in ([scope, setup] if not in_loop else []):
            for s in _statements(where.body):
                if _method_call(s, "step") == (loop_sname if where is scope else sname) and s not in body:
                    step_stmt = (where, s)
                    break
            if step_stmt:
                break
        if not in_loop and step_stmt is not None:
            if _expr_call(step_stmt[1]) is not None and step_stmt[1].value.args:
                entry["scheduler"]["step_args"] = orig.src(step_stmt[1])
    else:
        loop_sname = None
        entry["scheduler"] = None

    # --- the step: dependency slice of the loss, zero_grad/backward/clip/step
    bw = next(i for i, s in enumerate(body) if _method_call(s, "backward") == loss)
    slice_ = _dependency_slice(body, bw, {loss})
    keep = []
    for i, s in enumerate(body):
        call = _expr_call(s)
        q = _qualify(call.func, orig.aliases) if call is not None else None
        if s in slice_ or _method_call(s, "zero_grad") == opt or (i == bw) or _method_call(s, "step") == opt \
                or (q or "").startswith("torch.nn.utils.clip_grad") \
                or (loop_sname and _method_call(s, "step") == loop_sname):
            keep.append(s)
    # loss objects used by the step
    loss_objects: dict[str, dict] = {}
    for s in slice_:
        for n in ast.walk(s):
            if isinstance(n, ast.Call) and isinstance(n.func, ast.Name):
                caller_name = up(n.func.id)
                st = orig.first_call_assignment(setup, caller_name) or orig.first_call_assignment(orig.scopes["<module>"], caller_name)
                if st is None:
                    continue
                v = _value(st)
                q = _qualify(v.func, orig.aliases)
                if _is_loss_class(q):
                    loss_objects[n.func.id] = {"name": caller_name, "class": q, "torch": orig.src(v),
                                               "hyperparameters": _hyperparameters(orig, v, arguments, skip_first=False),
                                               "line": st.lineno}
    # --- batch roles
    names, index, it, pattern = _loop_batch(loop)
    derived: dict[str, set[str]] = {n: {n} for n in names}   # name in the step → batch names it comes from
    for s in slice_:
        if isinstance(s, ast.Assign) and len(s.targets) == 1 and isinstance(s.targets[0], ast.Tuple) \
                and isinstance(s.value, ast.Tuple) and len(s.targets[0].elts) == len(s.value.elts):
            pairs = list(zip(s.targets[0].elts, s.value.elts))
        else:
            pairs = [(t, s.value) for t in (s.targets if isinstance(s, ast.Assign) else [getattr(s, "target", None)]) if t is not None]
        for t, v in pairs:
            src = set()
            for r in _names_read(v):
                src |= derived.get(r, set())
            for n in _target_names(t):
                derived[n] = src | (derived.get(n, set()) if isinstance(s, ast.AugAssign) else set())
    from_model: set[str] = set()
    for s in slice_:
        v = _value(s)
        if v is None:
            continue
        if (_names_read(v) & from_model) or any(isinstance(n, ast.Call) and loop_model and _dotted(n.func) == loop_model
                                                for n in ast.walk(v)):
            from_model |= set(_assigned(s))
    inputs: set[str] = set()
    losses: list[dict] = []
    roles: dict[str, dict] = {}
    for s in slice_:
        for n in ast.walk(s):
            if not isinstance(n, ast.Call):
                continue
            if loop_model and _dotted(n.func) == loop_model:
                for a in list(n.args) + [k.value for k in n.keywords]:
                    for r in _names_read(a):
                        inputs |= derived.get(r, set())
                continue
            kind, obj = _loss_kind(orig, n.func, loss_objects)
            if kind is None:
                continue
            record = {"class" if obj else "function": kind, "torch": orig.src(n) if obj is None else loss_objects[obj]["torch"],
                      "call": orig.src(n)}
            if obj is not None:
                record.update({"name": loss_objects[obj]["name"],
                               "hyperparameters": loss_objects[obj]["hyperparameters"]})
            else:
                record["hyperparameters"] = {k.arg: {"source": orig.src(k.value)} for k in n.keywords if k.arg}
            losses.append(record)
            args = n.args[:2]
            for pos, a in enumerate(args):
                if _names_read(a) & from_model or any(isinstance(c, ast.Call) and _dotted(c.func) == loop_model
                                                      for c in ast.walk(a)):
                    continue
                from_batch = set()
                for r in _names_read(a):
                    from_batch |= derived.get(r, set())
                other = args[1 - pos] if len(args) == 2 else None
                for b in from_batch:
                    if b not in roles and other is not None:
                        roles[b] = {"loss": kind, "prediction": orig.src(other), "position": pos}
    batch = []
    for n in names:
        if n in inputs:
            batch.append({"name": n, "role": "input"})
        elif n in roles:
            batch.append({"name": n, "role": "target", **roles[n]})
        else:
            batch.append({"name": n, "role": "unused"})
    entry["losses"] = losses
    entry["batch"] = batch
    entry["batch_pattern"] = pattern
    entry["batch_index"] = index
    it_name = _dotted(it)
    entry.update(_loader_info(orig, setup, up(it_name), arguments) if it_name else
                 {"loader": None, "batch_size": None, "samples": None, "steps_per_epoch": None})
    entry["loss_name"] = loss

    # --- replay: torch
    setup_targets = [s for s in [model_stmt, opt_stmt] if s is not None]
    for lo in loss_objects.values():
        st = orig.first_call_assignment(setup, lo["name"])
        if st is not None and st not in setup_targets:
            setup_targets.append(st)
    if sched is not None:
        setup_targets.append(sched[1])
    known = set(names) | ({index} if index else set())
    # names the step reads from outside the loop: through the loop function's parameters from
    # its caller (``device``), or assigned in the loop function before the loop
    step_assigned = {n for s in keep for n in _assigned(s)}
    step_reads = {n for s in keep for n in _names_read(s)} - step_assigned - known
    extra, local = [], []
    for n in sorted(step_reads):
        if setup is not scope and n in scope.params:
            extra.append(up(n))
        elif setup is not scope and orig.assignments(scope, n, before=loop.lineno):
            local.append(n)
        elif setup is scope:
            extra.append(n)
    probe = ast.Expr(value=ast.Tuple(elts=[ast.Name(id=n, ctx=ast.Load()) for n in extra], ctx=ast.Load()))
    probe.lineno, probe.col_offset = (loop.lineno if setup is scope else 10 ** 9), 0
    tsetup, tmissing, tstubs = _setup_closure(orig, setup, setup_targets + ([probe] if extra else []), known)
    tsetup = [s for s in tsetup if s is not probe]
    if local:
        lprobe = ast.Expr(value=ast.Tuple(elts=[ast.Name(id=n, ctx=ast.Load()) for n in local], ctx=ast.Load()))
        lprobe.lineno, lprobe.col_offset = loop.lineno, 0
        lsetup, lmissing, lstubs = _setup_closure(orig, scope, [lprobe], known | set(scope.params))
        loop_setup = [orig.src(s) for s in lsetup if s is not lprobe]
        tstubs.update(lstubs)
    else:
        loop_setup = []
    replay: dict[str, Any] = {"torch": {
        "setup": [orig.src(s) for s in tsetup], "stubs": tstubs, "unresolved": tmissing,
        "loop_setup": loop_setup, "step": [orig.src(s) for s in keep],
        "scheduler_step": (f"{sched[0]}.step()" if sched is not None and entry["scheduler"]["step"] == "epoch" else None),
        "model": model_name, "loss": loss}}
    if sched is not None and entry["scheduler"].get("step_args"):
        replay["torch"]["scheduler_step"] = entry["scheduler"]["step_args"]
    # --- converted side
    if conv is not None:
        _analyse_converted(conv, entry, replay, setup.name, scope.name, names, index, loss, sched, model_name,
                           loss_objects, problems)
    entry["replay"] = replay
    entry["problems"] = problems
    return entry


def _analyse_converted(conv: _Side, entry: dict, replay: dict, setup_name: str, loop_name: str, names: list[str],
                       index: str | None, loss: str, sched, model_name: str | None, loss_objects: dict,
                       problems: list[str]) -> None:
    csetup = conv.scopes.get(setup_name)
    cloop_scope = conv.scopes.get(loop_name)
    if csetup is None or cloop_scope is None:
        problems.append(f"the converted file has no function {setup_name if csetup is None else loop_name}")
        return
    if model_name:
        entry["model"]["converted"] = _converted_value(conv, csetup, model_name)
    entry["optimizer"]["converted"] = _converted_value(conv, csetup, entry["optimizer"]["name"], skip_attr="optimizer")
    for lo in entry["losses"]:
        if lo.get("name"):
            lo["converted"] = _converted_value(conv, csetup, lo["name"])
    if sched is not None:
        entry["scheduler"]["converted"] = _converted_value(conv, csetup, sched[0])
    # the converted loop: a for loop of the same function that calls train_step*
    cloop, step_stmt = None, None
    for s in _statements(cloop_scope.body):
        if isinstance(s, ast.For):
            for b in s.body:
                v = _value(b)
                if isinstance(v, ast.Call) and (_dotted(v.func) or "").startswith("train_step"):
                    cloop, step_stmt = s, b
                    break
        if cloop is not None:
            break
    if cloop is None:
        problems.append(f"no train_step call in a loop of the converted {loop_name}")
        return
    # functional losses are converted inside train_step: record its loss assignment
    step_fn = _dotted(_value(step_stmt).func)
    fdef = next((n for n in conv.tree.body if isinstance(n, ast.FunctionDef) and n.name == step_fn), None)
    if fdef is not None:
        found = [st for st in _nodes(fdef) if isinstance(st, (ast.Assign, ast.AugAssign)) and loss in _assigned(st)]
        found = [st for st in found if "value_and_grad" not in conv.src(st.value)] or found
        for lo in entry["losses"]:
            if "function" in lo and found:
                lo["converted"] = conv.src(found[0].value)
    state_targets = _assigned(step_stmt)
    state = state_targets[0] if state_targets else "train_state"
    jloss = loss if loss in state_targets else (state_targets[1] if len(state_targets) > 1 else None)
    create = None
    for s in _statements(cloop.body):
        v = _value(s)
        if isinstance(v, ast.Call) and (_dotted(v.func) or "").endswith("create_train_state"):
            create = conv.src(v)
            break
    idx = cloop.body.index(step_stmt)
    wanted = _names_read(step_stmt) & set(names)
    step = _dependency_slice(cloop.body, idx, wanted) + [step_stmt]
    cb = _loop_batch(cloop)
    csched = None
    if sched is not None:
        # where the converted code steps the scheduler: a statement calling <name>.step(<state>)
        loop_alias = _sched_alias(conv, cloop_scope, csetup, sched[0])
        in_loop = [s for s in cloop.body[idx + 1:] if _calls_method_on(s, loop_alias, "step")]
        if in_loop:
            step += in_loop
        else:
            for where in (cloop_scope, csetup):
                alias = loop_alias if where is cloop_scope else sched[0]
                hits = [s for s in _statements(where.body) if not isinstance(s, (ast.For, ast.If, ast.While, ast.With))
                        and _calls_method_on(s, alias, "step")]
                if hits:
                    csched = conv.src(hits[0])
                    break
    setup_targets = []
    for n in [model_name, entry["optimizer"]["name"], *[lo["name"] for lo in loss_objects.values()],
              *( [sched[0]] if sched is not None else [])]:
        if n:
            setup_targets += [s for s in conv.assignments(csetup, n) if not isinstance(s, ast.For)]
    # an if/else building them in both branches: the first branch only (like the torch side)
    other_branch = set()
    for st in _statements(csetup.body):
        if isinstance(st, ast.If) and st.orelse:
            first = {n for x in _statements(st.body) for n in _assigned(x)}
            other_branch |= {id(x) for x in _statements(st.orelse) if set(_assigned(x)) & first}
    setup_targets = sorted({id(s): s for s in setup_targets if id(s) not in other_branch}.values(),
                           key=lambda s: s.lineno)
    known = set(names) | ({index} if index else set()) | {state}
    jsetup, jmissing, jstubs = _setup_closure(conv, csetup, setup_targets, known)
    _, cbinding = _caller_binding(conv, cloop_scope) if csetup is not cloop_scope else (None, {})
    replay["jax"] = {"setup": [conv.src(s) for s in jsetup], "stubs": jstubs, "unresolved": jmissing,
                     "step": [conv.src(s) for s in step], "create_train_state": create,
                     "scheduler_step": csched, "state": state, "loss": jloss,
                     "aliases": {k: v for k, v in cbinding.items() if k != v},
                     "batch": cb[0]}
    if jloss is None:
        problems.append("the converted train_step call does not return the loss by name")


def _sched_alias(conv: _Side, loop_scope: Scope, setup: Scope, name: str) -> str:
    if loop_scope is setup:
        return name
    _, binding = _caller_binding(conv, loop_scope)
    return next((p for p, c in binding.items() if c == name), name)


def build_manifest(original: str, converted: str | None, path: str = "<string>",
                   helpers_span: tuple[int, int] | None = None, helpers: tuple[str, ...] = ()) -> dict | None:
    """The manifest of a training script (``None`` when it has no training loop or does not
    parse). ``converted`` may be ``None`` (torch side only)."""
    if not might_train(original):
        return None
    try:
        orig = _Side(original)
    except (SyntaxError, ValueError, RecursionError):
        return None
    found = [(scope, *loop) for scope in orig.scopes.values() for loop in _find_loops(scope)]
    steps = [(scope, *step) for scope in orig.scopes.values() if (step := _step_function(scope)) is not None]
    if not found and not steps:
        return None
    conv = None
    if converted is not None:
        try:
            conv = _Side(converted, helpers_span, helpers)
        except (SyntaxError, ValueError, RecursionError):
            conv = None
    arguments = _arguments(orig.tree, orig.text)
    loops = [{"function": scope.name, "line": scope.node.lineno, "loss": loss, "optimizer": opt,
              "problems": [STEP_FUNCTION]} for scope, loss, opt in steps]
    for scope, loop, loss, opt in found:
        problem = _loop_problem(loop)
        if problem:
            loops.append({"function": scope.name, "line": loop.lineno, "loss": loss, "optimizer": opt,
                          "problems": [problem]})
            continue
        try:
            loops.append(_analyse_loop(orig, conv, scope, loop, loss, opt, arguments))
        except (StopIteration, AttributeError, TypeError, KeyError, IndexError, RecursionError) as exc:
            loops.append({"function": scope.name, "line": loop.lineno,
                          "problems": [f"analysis failed: {type(exc).__name__}: {exc}"]})
    if not loops:
        return None
    loops.sort(key=lambda e: e["line"])
    return {"jaxport_manifest": VERSION, "source": path, "arguments": arguments, "training": loops}


def dumps(manifest: dict) -> bytes:
    return (json.dumps(manifest, indent=2, sort_keys=False) + "\n").encode("utf-8")
