"""DistributedDataParallel scripts → data-parallel JAX (``--parallel pmap`` or ``sharding``).

Three steps, all inactive unless the file uses torch.distributed, DDP/DataParallel,
DistributedSampler, SyncBatchNorm or torch.multiprocessing:

* ``prepare`` (before the rules, on the torch source): DDP wrappers are unwrapped where they
  only rebind a name (``model = DDP(model)``), ``ddp.module`` becomes ``ddp``, and ``no_sync()``
  blocks are opened (the if/else around them reduced to the branch without), so that the
  training rule sees an ordinary (or gradient-accumulating) training loop;
* ``DistributedRule`` (one of the table-driven rules): statement-level forms of the API calls
  the tables convert (in-place collectives assign their result, ``destroy_process_group`` is
  removed), torchrun's environment variables, a DataLoader over a DistributedSampler loading a
  batch for every local device, SyncBatchNorm's axis name;
* ``finish`` (after the rules, on the converted module): the jitted ``train_step`` functions
  the training rule emitted become data-parallel (pmap: replicated state, sharded batches,
  ``jax.lax.pmean``; sharding: a global batch over a one-axis mesh, replicated state) and
  their call sites and the host code around them follow.

The mapping knowledge is data in ``mappings/functions_distributed.toml`` and
``layers_distributed.toml``; helpers are in ``transpiler/prelude/parallel.py``.
"""
from __future__ import annotations

import libcst as cst

from ..names import dotted, qualify
from ..walk import skipped_types, transform, walk
from .base import Rule
from .training import STATE

PREFIXES = ("torch.distributed", "torch.nn.parallel", "torch.nn.DataParallel", "torch.multiprocessing",
            "torch.utils.data.distributed", "torch.nn.SyncBatchNorm")
WRAPPERS = {"torch.nn.parallel.DistributedDataParallel", "torch.nn.DataParallel",
            "torch.nn.parallel.DataParallel", "torch.nn.parallel.distributed.DistributedDataParallel"}
# every spelling that reaches PREFIXES names one of these words in the file (its imports or
# the dotted name itself); a file without any of them, and without a star import that may
# bring such an alias from elsewhere, need not be walked
TEXT_HINTS = ("distributed", "parallel", "Parallel", "multiprocessing", "SyncBatchNorm")
CONVERT_SYNC_BN = "torch.nn.SyncBatchNorm.convert_sync_batchnorm"
BATCHNORMS = ("TorchBatchNorm", "nn.BatchNorm")      # converted BatchNorm layers (prelude, flax)
SAMPLER = "torch.utils.data.distributed.DistributedSampler"
LOADERS = {"torch.utils.data.DataLoader", "torch.utils.data.dataloader.DataLoader"}
IN_PLACE = {"torch.distributed.all_reduce": 0, "torch.distributed.reduce": 0, "torch.distributed.broadcast": 0,
            "torch.distributed.all_gather": 0, "torch.distributed.all_gather_into_tensor": 0,
            "torch.distributed.all_gather_object": 0}
COLLECTIVES = set(IN_PLACE) | {"torch.distributed.barrier"}
RANK_CALLS = {"torch.distributed.get_rank", "torch.distributed.get_world_size",
              "torch.distributed.get_node_local_rank"}
ENV = {"RANK": "jax.process_index()", "WORLD_SIZE": "jax.process_count()", "LOCAL_RANK": "0",
       "LOCAL_WORLD_SIZE": "jax.local_device_count()", "GROUP_RANK": "jax.process_index()",
       "NODE_RANK": "jax.process_index()"}
PMAP_AXIS = "batch"     # prelude/parallel.py: PMAP_AXIS


class DistState:
    def __init__(self, mode: str) -> None:
        self.mode = mode                      # "pmap" | "sharding"
        self.wrappers: dict[str, str] = {}    # name bound to DDP(model) → model
        self.samplers: set[str] = set()       # names bound to DistributedSampler(...)
        self.sync_bn = False                  # convert_sync_batchnorm seen
        self.anchor: cst.CSTNode | None = None  # where to report the data-parallel step


def state(ctx) -> DistState | None:
    return getattr(ctx, "distributed", None)


def _code(node: cst.CSTNode) -> str:
    return cst.Module([]).code_for_node(node)


def _q(node, ctx) -> str:
    return qualify(node, ctx.aliases) or ""


class _Uses(cst.CSTVisitor):
    def __init__(self, ctx) -> None:
        self.ctx = ctx
        self.found = False
        self.wrappers: dict[str, str] = {}
        self.samplers: set[str] = set()

    def visit_Attribute(self, node: cst.Attribute) -> bool:
        if _q(node, self.ctx).startswith(PREFIXES):
            self.found = True
            return False
        return True

    def visit_Name(self, node: cst.Name) -> None:
        if node.value in self.ctx.aliases and _q(node, self.ctx).startswith(PREFIXES):
            self.found = True

    def visit_Assign(self, node: cst.Assign) -> None:
        if len(node.targets) != 1 or not isinstance(node.value, cst.Call):
            return
        target = dotted(node.targets[0].target)
        q = _q(node.value.func, self.ctx)
        if target and q in WRAPPERS and node.value.args:
            # model = DDP(Net()): the name is the model itself once converted
            self.wrappers[target] = dotted(node.value.args[0].value) or target
        if target and q == SAMPLER:
            self.samplers.add(target)


# ---------------------------------------------------------------------------------- prepare
def _is_no_sync(expr: cst.BaseExpression) -> bool:
    return isinstance(expr, cst.Call) and isinstance(expr.func, cst.Attribute) and expr.func.attr.value == "no_sync"


def _mentions_no_sync(expr: cst.CSTNode) -> bool:
    found = []

    class _V(cst.CSTVisitor):
        def visit_Call(self, n: cst.Call) -> None:
            if _is_no_sync(n):
                found.append(n)

    walk(expr, _V())
    return bool(found)


class _Prepare(cst.CSTTransformer):
    def __init__(self, ctx, st: DistState) -> None:
        super().__init__()
        self.ctx, self.st = ctx, st
        self.sync_names: set[str] = set()   # names bound to `W.no_sync() if c else nullcontext()`
        self.moved: dict[cst.CSTNode, cst.CSTNode] = {}   # rebuilt node → original node
        self.changed: list[bool] = []

    # Subtrees without a change are given back as the original objects (libcst rebuilds every
    # node), so that diagnostics reported at them find the user's positions; only the
    # ancestors of a change are new, and ``moved`` says which original each one stands for.
    # libcst's on_visit/on_leave, with each node type's hooks looked up once per process
    _VISITS: dict[type, object] = {}
    _LEAVES: dict[type, object] = {}

    def on_visit(self, node) -> bool:
        self.changed.append(False)
        t = type(node)
        try:
            hook = self._VISITS[t]
        except KeyError:
            hook = self._VISITS[t] = getattr(_Prepare, f"visit_{t.__name__}", None)
        return hook is None or hook(self, node) is not False

    def on_leave(self, original, updated):
        inner = self.changed.pop()
        t = type(original)
        try:
            hook = self._LEAVES[t]
        except KeyError:
            hook = self._LEAVES[t] = getattr(_Prepare, f"leave_{t.__name__}", None)
        result = updated if hook is None else hook(self, original, updated)
        if not inner and result is updated:
            return original
        if self.changed:
            self.changed[-1] = True
        if isinstance(result, cst.CSTNode):
            self.moved[result] = original
        return result

    def _report(self, node, code: str, message: str) -> None:
        self.ctx.report(node, code, message, marker=False)

    def leave_Attribute(self, original: cst.Attribute, updated: cst.Attribute):
        if original.attr.value == "module" and dotted(original.value) in self.st.wrappers:
            self._report(original, "JP702", f"{dotted(original.value)}.module → {dotted(original.value)} "
                         "(no wrapper in JAX)")
            return updated.value
        return updated

    def _blocks_of(self, node: cst.BaseCompoundStatement) -> list:
        return list(node.body.body) if isinstance(node.body, cst.IndentedBlock) else [
            cst.SimpleStatementLine(body=list(node.body.body))]

    def leave_With(self, original: cst.With, updated: cst.With):
        items = original.items
        if len(items) != 1:
            return updated
        item = items[0].item
        if not (_is_no_sync(item) or (isinstance(item, cst.Name) and item.value in self.sync_names)
                or (isinstance(item, cst.IfExp) and _mentions_no_sync(item))):
            return updated
        self._report(original, "JP707", "no_sync() removed: the step averages gradients on every call; "
                     "accumulation is optax.MultiSteps")
        stmts = self._blocks_of(updated)
        stmts[0] = stmts[0].with_changes(leading_lines=[*updated.leading_lines, *stmts[0].leading_lines])
        return cst.FlattenSentinel(stmts)

    def visit_If(self, node: cst.If) -> None:
        return None

    def leave_If(self, original: cst.If, updated: cst.If):
        """``if c: with m.no_sync(): A  else: B`` (or the branches swapped) → B."""
        if not isinstance(original.orelse, cst.Else):
            return updated
        branches = [original.body, original.orelse.body]
        kinds = []
        for b in branches:
            body = b.body if isinstance(b, cst.IndentedBlock) else []
            kinds.append(len(body) == 1 and isinstance(body[0], cst.With) and len(body[0].items) == 1
                         and _is_no_sync(body[0].items[0].item))
        if kinds.count(True) != 1:
            return updated
        keep = updated.orelse.body if kinds[0] else updated.body
        stmts = list(keep.body)
        if not stmts:
            return updated
        self._report(original, "JP707", "no_sync() branch dropped: both branches run the same forward/backward; "
                     "the accumulation is optax.MultiSteps")
        stmts[0] = stmts[0].with_changes(leading_lines=[*updated.leading_lines, *stmts[0].leading_lines])
        return cst.FlattenSentinel(stmts)

    def visit_Assign(self, node: cst.Assign) -> None:
        if len(node.targets) == 1 and isinstance(node.targets[0].target, cst.Name) and _mentions_no_sync(node.value):
            self.sync_names.add(node.targets[0].target.value)

    def leave_SimpleStatementLine(self, original: cst.SimpleStatementLine, updated: cst.SimpleStatementLine):
        if len(original.body) != 1 or not isinstance(original.body[0], cst.Assign):
            return updated
        stmt = original.body[0]
        if len(stmt.targets) != 1:
            return updated
        target = stmt.targets[0].target
        if isinstance(target, cst.Name) and _mentions_no_sync(stmt.value) and not _is_no_sync(stmt.value):
            return cst.RemoveFromParent()      # ctx = model.no_sync() if ... else nullcontext()
        if not isinstance(stmt.value, cst.Call) or not stmt.value.args:
            return updated
        q = _q(stmt.value.func, self.ctx)
        inner = dotted(stmt.value.args[0].value)
        if q in WRAPPERS:
            self.st.anchor = self.st.anchor or original
            self.ctx.call_site(True)
            if inner is not None and inner == dotted(target):
                self._report(original, "JP702", f"{q.rsplit('.', 1)[-1]}({inner}) removed: the data-parallel "
                             "train_step synchronises gradients")
                return cst.RemoveFromParent()
            self._report(original, "JP702", f"{q.rsplit('.', 1)[-1]}(...) → the model itself: the data-parallel "
                         "train_step synchronises gradients")
        if q == CONVERT_SYNC_BN:
            self.st.sync_bn = True
            if inner is not None and inner == dotted(target):
                self.ctx.call_site(True)
                self._report(original, "JP708", "convert_sync_batchnorm removed: "
                             + ("every BatchNorm of the models gets axis_name=\"batch\"" if self.st.mode == "pmap"
                                else "BatchNorm over the mesh already uses global statistics"))
                return cst.RemoveFromParent()
        return updated


def prepare(module: cst.Module, ctx) -> cst.Module:
    """Activate the distributed conversion for files that use DDP & co. and normalise their
    torch source (see the module docstring)."""
    text = getattr(ctx, "source", None)
    if text is not None and "import *" not in text and not any(w in text for w in TEXT_HINTS):
        return module
    uses = _Uses(ctx)
    walk(module, uses)
    if not uses.found:
        return module
    mode = getattr(ctx.options, "parallel", "pmap") or "pmap"
    st = DistState("sharding" if mode == "sharding" else "pmap")
    st.wrappers, st.samplers = uses.wrappers, uses.samplers
    ctx.distributed = st
    transformer = _Prepare(ctx, st)
    out = transform(module, transformer, skipped_types(transformer))
    if transformer.moved:
        # diagnostics the rules report at rebuilt nodes (a loop whose no_sync() block was
        # opened) must point at the user's lines: give the rebuilt nodes the originals' places
        alias = getattr(ctx, "alias_nodes", None)
        if callable(alias):
            alias(transformer.moved)
        elif not hasattr(ctx.positions, "get_if_loaded"):
            positions = dict(ctx.positions)
            positions.update({new: ctx.positions[old] for new, old in transformer.moved.items()
                              if old in ctx.positions})
            ctx.positions = positions
    return out


# ---------------------------------------------------------------------------------- the rule
def _env_key(node: cst.BaseExpression, ctx) -> str | None:
    """``os.environ["RANK"]``, ``os.environ.get("RANK", d)``, ``os.getenv("RANK", d)`` → "RANK"."""
    key = None
    if isinstance(node, cst.Subscript) and dotted(node.value) == "os.environ" and len(node.slice) == 1:
        el = node.slice[0].slice
        key = el.value if isinstance(el, cst.Index) else None
    elif isinstance(node, cst.Call) and dotted(node.func) in ("os.environ.get", "os.getenv") and node.args:
        key = node.args[0].value
    if isinstance(key, cst.SimpleString) and isinstance(key.evaluated_value, str) and key.evaluated_value in ENV:
        return key.evaluated_value
    return None


def _kwarg(call: cst.Call, name: str) -> cst.Arg | None:
    for a in call.args:
        if a.keyword is not None and a.keyword.value == name:
            return a
    return None


_EQ = cst.AssignEqual(whitespace_before=cst.SimpleWhitespace(""), whitespace_after=cst.SimpleWhitespace(""))
_COMMA = cst.Comma(whitespace_after=cst.SimpleWhitespace(" "))


def _append_kwarg(call: cst.Call, name: str, value: str) -> cst.Call:
    args = list(call.args)
    if args:
        args[-1] = args[-1].with_changes(comma=_COMMA)
    return call.with_changes(args=[*args, cst.Arg(cst.parse_expression(value), keyword=cst.Name(name), equal=_EQ)])


class DistributedRule(Rule):
    """Statement-level and context-dependent parts of the distributed conversion."""

    def __init__(self, ctx) -> None:
        super().__init__(ctx)
        self.env_lines: set[int] = set()

    @property
    def st(self) -> DistState | None:
        return state(self.ctx)

    def leave_SimpleStatementLine(self, original: cst.SimpleStatementLine, updated: cst.SimpleStatementLine):
        st = self.st
        if st is None or len(original.body) != 1 or not isinstance(original.body[0], cst.Expr):
            return updated
        call = original.body[0].value
        if not isinstance(call, cst.Call):
            return updated
        q = _q(call.func, self.ctx)
        if q == "torch.distributed.destroy_process_group":
            self.ctx.report(original, "JP701", "destroy_process_group() removed: nothing to tear down")
            return cst.RemoveFromParent()
        if q == "torch.distributed.init_process_group":
            self.ctx.report(original, "JP701", "init_process_group → initialize_distributed(): a no-op on one host, "
                            "jax.distributed.initialize() on several")
            return updated
        if q not in COLLECTIVES:
            return updated
        new = updated.body[0].value if isinstance(updated.body[0], cst.Expr) else None
        if not isinstance(new, cst.Call) or dotted(new.func) == dotted(call.func):
            return updated      # not converted by the table (reported there)
        name = q.rsplit(".", 1)[-1]
        if q == "torch.distributed.barrier":
            self.ctx.report(original, "JP706", "barrier() → sync_processes() (waits for the other hosts)")
            return updated
        async_op = _kwarg(call, "async_op")
        if async_op is not None and not (isinstance(async_op.value, cst.Name) and async_op.value.value == "False"):
            self.ctx.report(original, "JP710", f"{name}(..., async_op=...) not converted: JAX dispatch is already "
                            "asynchronous; drop async_op and the wait()")
            return updated
        positional = [a for a in call.args if a.keyword is None]
        dest = positional[0].value if positional else None
        if dest is None or not isinstance(dest, (cst.Name, cst.Attribute, cst.Subscript)):
            self.ctx.report(original, "JP710", f"{name}(...) on an expression: assign the result of the converted "
                            "call where the torch code expected the tensor to change in place")
            return updated
        conv_dest = dest.deep_clone()   # a name, attribute or subscript: nothing the tables convert
        if q in ("torch.distributed.all_gather", "torch.distributed.all_gather_object"):
            target = cst.Subscript(value=conv_dest, slice=[cst.SubscriptElement(cst.Slice(lower=None, upper=None))])
        else:
            target = conv_dest
        self.ctx.report(original, "JP706", f"{name}(...) → {_code(new.func)}(...), assigned back "
                        "(torch works in place; one host: the value is unchanged)")
        return updated.with_changes(body=[cst.Assign(targets=[cst.AssignTarget(target)], value=new)])

    def leave_Subscript(self, original: cst.Subscript, updated: cst.Subscript):
        return self._env(original, updated)

    def _env(self, original, updated):
        if self.st is None:
            return updated
        key = _env_key(original, self.ctx)
        if key is None:
            return updated
        line = self.ctx.position(original)[0]
        if line not in self.env_lines:
            self.env_lines.add(line)
            self.ctx.report(original, "JP705", f"torchrun's {key} → {ENV[key]} (one JAX process per host)")
        if "jax" in ENV[key]:
            self.ctx.emits.add("jax")
        return cst.parse_expression(ENV[key])

    def leave_Call(self, original: cst.Call, updated: cst.Call) -> cst.BaseExpression:
        st = self.st
        if st is None:
            return updated
        if _env_key(original, self.ctx) is not None:
            return self._env(original, updated)
        if dotted(original.func) == "int" and len(original.args) == 1 and _env_key(original.args[0].value, self.ctx):
            return updated.args[0].value
        q = _q(original.func, self.ctx)
        if q in RANK_CALLS:
            line = self.ctx.position(original)[0]
            if line not in self.env_lines:
                self.env_lines.add(line)
                self.ctx.report(original, "JP705", f"{q.rsplit('.', 1)[-1]}() → {_code(updated)} (one JAX process per host)")
        elif q == "torch.multiprocessing.spawn":
            self.ctx.report(original, "JP709", "mp.spawn → run_as_single_process: the function runs once, as rank 0, "
                            "and uses every local device")
        elif q == SAMPLER:
            ignored = [n for n in ("num_replicas", "rank") if _kwarg(original, n) is not None] + \
                      (["num_replicas", "rank"][:len([a for a in original.args if a.keyword is None]) - 1])
            self.ctx.report(original, "JP704", "DistributedSampler → ShardedSampler over JAX processes"
                            + (f" ({', '.join(sorted(set(ignored)))} not used)" if ignored else ""))
        elif q == "torch.nn.SyncBatchNorm" and dotted(updated.func) in BATCHNORMS:
            layer = dotted(updated.func)
            if st.mode == "pmap" and _kwarg(updated, "axis_name") is None:
                self.ctx.report(original, "JP708", f'SyncBatchNorm → {layer}(axis_name="batch"): statistics '
                                "over every device")
                return _append_kwarg(updated, "axis_name", f'"{PMAP_AXIS}"')
            self.ctx.report(original, "JP708", f"SyncBatchNorm → {layer}: over the mesh its statistics are global")
        elif q in LOADERS:
            return self._loader(original, updated)
        return updated

    def _loader(self, original: cst.Call, updated: cst.Call) -> cst.Call:
        sampler = _kwarg(original, "sampler")
        if sampler is None:
            return updated
        value = sampler.value
        if not (isinstance(value, cst.Call) and _q(value.func, self.ctx) == SAMPLER) \
                and dotted(value) not in self.st.samplers:
            return updated
        args = list(updated.args)
        index = None
        for i, a in enumerate(args):
            if a.keyword is not None and a.keyword.value == "batch_size":
                index = i
        if index is None and len([a for a in original.args if a.keyword is None]) >= 2:
            index = 1
        if index is not None:
            old = args[index].value
            text = _code(old)
            if not isinstance(old, (cst.Name, cst.Attribute, cst.Integer, cst.Call, cst.Subscript)):
                text = f"({text})"
            args[index] = args[index].with_changes(value=cst.parse_expression(f"{text} * jax.local_device_count()"))
            updated = updated.with_changes(args=args)
        else:
            updated = _append_kwarg(updated, "batch_size", "jax.local_device_count()")
        if _kwarg(original, "drop_last") is None:
            updated = _append_kwarg(updated, "drop_last", "True")
        self.ctx.emits.add("jax")
        self.ctx.report(original, "JP704", "the loader's batch is per device: it loads batch_size * "
                        "jax.local_device_count() examples per step (drop_last=True: divisible by the devices)")
        return updated


# ---------------------------------------------------------------------------------- finish
def _decorator_static(fn: cst.FunctionDef) -> list[str] | None:
    """The static argument names of ``@jax.jit`` / ``@partial(jax.jit, static_argnames=...)``;
    None if the function is not jitted that way."""
    if len(fn.decorators) != 1:
        return None
    dec = fn.decorators[0].decorator
    if dotted(dec) == "jax.jit":
        return []
    if isinstance(dec, cst.Call) and dotted(dec.func) == "partial" and dec.args and dotted(dec.args[0].value) == "jax.jit":
        names: list[str] = []
        for a in dec.args[1:]:
            if a.keyword is None or a.keyword.value != "static_argnames":
                return None
            v = a.value
            elems = v.elements if isinstance(v, (cst.Tuple, cst.List)) else [cst.Element(v)]
            for el in elems:
                if not isinstance(el.value, cst.SimpleString):
                    return None
                names.append(el.value.evaluated_value)
        return names
    return None


class _StepInfo:
    def __init__(self, name: str, params: list[str], static: list[str]) -> None:
        self.name, self.params, self.static = name, params, static


def _pmap_step(fn: cst.FunctionDef, info: _StepInfo) -> cst.FunctionDef:
    static_idx = tuple(info.params.index(n) for n in info.static)
    dec = f'partial(jax.pmap, axis_name="{PMAP_AXIS}"' + (
        f", static_broadcasted_argnums={static_idx!r})" if static_idx else ")")
    body = list(fn.body.body)
    out: list[cst.BaseStatement] = []
    loss_name = None
    for stmt in body:
        if isinstance(stmt, cst.SimpleStatementLine) and isinstance(stmt.body[0], cst.Return) \
                and isinstance(stmt.body[0].value, cst.Tuple) and len(stmt.body[0].value.elements) > 1:
            first = stmt.body[0].value.elements[1].value
            loss_name = first.value if isinstance(first, cst.Name) else None
    for stmt in body:
        code = _code(stmt) if isinstance(stmt, cst.SimpleStatementLine) else ""
        if isinstance(stmt, cst.SimpleStatementLine) and "apply_gradients(" in code:
            stmt = stmt.visit(_PmeanBatchStats())
        out.append(stmt)
        if isinstance(stmt, cst.SimpleStatementLine) and "jax.random.split(" in code and "dropout_rng" in code:
            out.append(cst.parse_statement(
                f'dropout_rng = jax.random.fold_in(dropout_rng, jax.lax.axis_index("{PMAP_AXIS}"))\n'))
        if isinstance(stmt, cst.SimpleStatementLine) and "jax.value_and_grad(" in code:
            out.append(cst.parse_statement(f'grads = jax.lax.pmean(grads, axis_name="{PMAP_AXIS}")\n'))
            if loss_name:
                out.append(cst.parse_statement(f'{loss_name} = jax.lax.pmean({loss_name}, axis_name="{PMAP_AXIS}")\n'))
    return fn.with_changes(decorators=[cst.Decorator(cst.parse_expression(dec))],
                           body=fn.body.with_changes(body=out))


class _PmeanBatchStats(cst.CSTTransformer):
    def leave_Arg(self, original: cst.Arg, updated: cst.Arg) -> cst.Arg:
        if updated.keyword is not None and updated.keyword.value == "batch_stats":
            return updated.with_changes(value=cst.parse_expression(
                f'jax.lax.pmean({_code(updated.value)}, axis_name="{PMAP_AXIS}")'))
        return updated


class _AxisName(cst.CSTTransformer):
    """convert_sync_batchnorm under pmap: every BatchNorm of the models gets the axis name."""

    def leave_Call(self, original: cst.Call, updated: cst.Call):
        if dotted(updated.func) in BATCHNORMS and _kwarg(updated, "axis_name") is None:
            return _append_kwarg(updated, "axis_name", f'"{PMAP_AXIS}"')
        return updated


class _CallSites(cst.CSTTransformer):
    """Call sites of the data-parallel steps, the state's creation, and (pmap) host reads of
    the replicated state."""

    def __init__(self, steps: dict[str, _StepInfo], mode: str, functions: set[str]) -> None:
        super().__init__()
        self.steps, self.mode, self.functions = steps, mode, functions
        self.exempt: set[int] = set()
        self.wrapped = 0
        self.class_depth = 0
        self.emits: set[str] = set()
        self.arrays: set[str] = set()     # names assigned from to_jax(...)
        self.loops: list[set[str]] = []   # names bound by the enclosing for loops (batches)

    def visit_For(self, node: cst.For) -> None:
        bound = set(_target_names(node.target))
        if isinstance(node.target, cst.Tuple):
            for el in node.target.elements:        # for i, (x, y) in enumerate(loader)
                bound |= set(_target_names(el.value))

        class _A(cst.CSTVisitor):
            def visit_AssignTarget(self, n: cst.AssignTarget) -> None:
                bound.update(_target_names(n.target))

        walk(node.body, _A())
        self.loops.append(bound)

    def leave_For(self, original, updated):
        self.loops.pop()
        return updated

    def _is_batch(self, expr: cst.BaseExpression) -> bool:
        """A name the enclosing loops bind (a batch); other arguments are broadcast."""
        return isinstance(expr, cst.Name) and any(expr.value in bound for bound in self.loops)

    def visit_Assign(self, node: cst.Assign) -> None:
        values = node.value.elements if isinstance(node.value, cst.Tuple) else [cst.Element(node.value)]
        targets = [n for t in node.targets for n in _target_names(t.target)]
        if values and all(isinstance(v.value, cst.Call) and dotted(v.value.func) == "to_jax" for v in values):
            self.arrays |= set(targets)

    # scopes that are not host code
    def visit_ClassDef(self, node) -> bool:
        return False

    def visit_FunctionDef(self, node: cst.FunctionDef) -> bool:
        return node.name.value not in self.steps

    def visit_Param(self, node) -> bool:
        return False

    def visit_Attribute(self, node: cst.Attribute) -> None:
        self.exempt.add(id(node.attr))

    def visit_Arg(self, node: cst.Arg) -> None:
        if node.keyword is not None:
            self.exempt.add(id(node.keyword))

    def visit_AssignTarget(self, node: cst.AssignTarget) -> None:
        self._exempt_names(node.target)

    def _exempt_names(self, node) -> None:
        if isinstance(node, cst.Name):
            self.exempt.add(id(node))
        elif isinstance(node, (cst.Tuple, cst.List)):
            for el in node.elements:
                self._exempt_names(el.value)

    def visit_Call(self, node: cst.Call) -> None:
        name = dotted(node.func)
        if name in self.steps or name in self.functions or name in ("create_train_state",):
            for a in node.args:
                self._exempt_names(a.value)
        for a in node.args:
            if a.keyword is not None and a.keyword.value == STATE:
                self._exempt_names(a.value)

    def visit_Comparison(self, node: cst.Comparison) -> None:
        if len(node.comparisons) == 1 and isinstance(node.comparisons[0].operator, (cst.Is, cst.IsNot)):
            self._exempt_names(node.left)

    def visit_Return(self, node: cst.Return) -> None:
        if node.value is not None:
            self._exempt_names(node.value)

    def leave_Name(self, original: cst.Name, updated: cst.Name):
        if self.mode != "pmap" or original.value != STATE or id(original) in self.exempt:
            return updated
        self.wrapped += 1
        self.emits.add("unreplicate")
        return cst.parse_expression(f"unreplicate({STATE})")

    def leave_Call(self, original: cst.Call, updated: cst.Call):
        name = dotted(original.func)
        if name == "create_train_state":
            helper = "replicate" if self.mode == "pmap" else "replicate_on_mesh"
            self.emits.add(helper)
            args = list(updated.args)
            for i in range(3, len(args)):      # a first batch that never went through to_jax
                if isinstance(args[i].value, cst.Name) and args[i].value.value not in self.arrays:
                    args[i] = args[i].with_changes(value=cst.Call(func=cst.Name("to_jax"), args=[cst.Arg(args[i].value)]))
                    self.emits.add("to_jax")
            return cst.Call(func=cst.Name(helper), args=[cst.Arg(updated.with_changes(args=args))])
        info = self.steps.get(name or "")
        if info is None:
            return updated
        shard = "shard_batch" if self.mode == "pmap" else "shard_to_mesh"
        gather = "unshard_outputs" if self.mode == "pmap" else "local_outputs"
        args = []
        for i, a in enumerate(updated.args):
            param = a.keyword.value if a.keyword is not None else (info.params[i] if i < len(info.params) else None)
            if i == 0 or param in info.static or param == STATE or a.star:
                args.append(a)
            elif self._is_batch(original.args[i].value if i < len(original.args) else a.value):
                args.append(a.with_changes(value=cst.Call(func=cst.Name(shard), args=[cst.Arg(a.value)])))
            elif self.mode == "pmap":      # a value every device gets (pmap maps a leading axis)
                self.emits.add("replicate")
                args.append(a.with_changes(value=cst.Call(func=cst.Name("replicate"), args=[cst.Arg(a.value)])))
            else:
                args.append(a)
        self.emits |= {shard, gather}
        return cst.Call(func=cst.Name(gather), args=[cst.Arg(updated.with_changes(args=args))])

    def leave_SimpleStatementLine(self, original, updated):
        """pmap: a statement that read the state unreplicated and assigns it gets it replicated again."""
        if self.mode != "pmap" or self.wrapped == 0:
            return updated
        self.wrapped = 0
        assigns = [s for s in updated.body if isinstance(s, cst.Assign)]
        if len(updated.body) != 1 or not assigns:
            return updated
        stmt = assigns[0]
        targets = [n for t in stmt.targets for n in _target_names(t.target)]
        if STATE not in targets:
            return updated
        self.emits.add("replicate")
        if len(stmt.targets) == 1 and isinstance(stmt.targets[0].target, cst.Name):
            return updated.with_changes(body=[stmt.with_changes(
                value=cst.Call(func=cst.Name("replicate"), args=[cst.Arg(stmt.value)]))])
        return cst.FlattenSentinel([updated, cst.parse_statement(f"{STATE} = replicate({STATE})\n")])

    def leave_IndentedBlock(self, original, updated):
        self.wrapped = 0
        return updated


def _target_names(node) -> list[str]:
    if isinstance(node, cst.Name):
        return [node.value]
    if isinstance(node, (cst.Tuple, cst.List)):
        return [n for el in node.elements for n in _target_names(el.value)]
    return []


def finish(module: cst.Module, ctx) -> cst.Module:
    """Make the emitted train steps data-parallel (see the module docstring)."""
    st = state(ctx)
    if st is None:
        return module
    if st.mode == "pmap" and st.sync_bn:
        body = [s.visit(_AxisName()) if isinstance(s, cst.ClassDef) else s for s in module.body]
        module = module.with_changes(body=body)
    steps: dict[str, _StepInfo] = {}
    functions: set[str] = set()
    body = list(module.body)
    for i, stmt in enumerate(body):
        if not isinstance(stmt, cst.FunctionDef):
            continue
        functions.add(stmt.name.value)
        static = _decorator_static(stmt) if stmt.name.value.startswith("train_step") else None
        if static is None:
            continue
        params = [p.name.value for p in stmt.params.params]
        if not params or params[0] != STATE:
            continue
        info = _StepInfo(stmt.name.value, params, static)
        steps[info.name] = info
        if st.mode == "pmap":
            body[i] = _pmap_step(stmt, info)
            ctx.emits |= {"partial", "jax"}
    if not steps:
        return module
    module = module.with_changes(body=body)
    sites = _CallSites(steps, st.mode, functions - set(steps))
    module = transform(module, sites)
    ctx.emits |= sites.emits
    names = ", ".join(sorted(steps))
    if st.mode == "pmap":
        message = (f"{names}: jax.pmap over the local devices (axis \"{PMAP_AXIS}\"), gradients and loss "
                   "pmean-ed, state replicated, batches split with shard_batch")
    else:
        message = (f"{names}: jax.jit over a one-axis Mesh, batches split over \"data\" with shard_to_mesh, "
                   "state replicated (XLA inserts the collectives)")
    ctx.report(st.anchor, "JP703", message, marker=False)
    return module
