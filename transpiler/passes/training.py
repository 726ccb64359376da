"""Training scripts: the zero_grad / forward / loss / backward / step loop → a jitted
``train_step`` on a flax TrainState; evaluation → ``eval_step``; state threaded by name.

Optimizers, schedulers and loss modules are converted by the op tables
(``functions_optim.toml``, ``functions_losses.toml``); this rule restructures what is around
them. It runs after the ops, mutation and runtime rules, so ``updated`` nodes hold converted
expressions while ``original`` nodes still show the torch patterns.

The model is tracked by name: ``X`` in ``optimizer = optim.SGD(X.parameters(), ...)``. In a
converted script the parameters, optimizer state, BatchNorm statistics and dropout key live in
one value, ``state`` (``TrainState`` from ``prelude/training.py``), created from the first batch
of the training loop. Where the torch code passes ``model`` / ``optimizer`` objects to
functions, the converted functions take and return ``state`` (JP605).

A training loop is a ``for`` loop whose body holds, as direct statements, one
``<loss>.backward()`` and one ``<optimizer>.step()`` (``zero_grad`` anywhere in the body,
optionally gradient clipping between them). The *step segment* is every plain assignment
before ``backward()`` that calls the model or reads a value computed from it; it becomes the
body of ``loss_fn`` inside ``train_step``. Other statements before ``backward()`` that read the
segment's values (``total += loss.item()``) run after the call. Anything else is left as it
was with JP602.

Variants: backward() in an inner ``for _ in range(k)`` loop with step() after it (gradient
accumulation → ``optax.MultiSteps``, JP609); one backward()/step() pair per model in one loop
(a GAN → one train step per optimizer, a TrainState per model named ``<model>_state``);
``with torch.no_grad():`` blocks in the loop are host code (a rollout); ``autocast`` blocks are
inlined and the GradScaler calls unwrapped (JP613). Parameter groups become
``optax.multi_transform`` (JP608), writes to ``param_groups[...]["lr"]`` ``set_optimizer_lr``
(JP610), random ops in script code take keys split from the ``torch.manual_seed`` key (JP612).
"""
from __future__ import annotations

import builtins
from dataclasses import dataclass, field

import libcst as cst

from ..names import dotted, qualify
from ..walk import walk
from .base import Rule

OPTIMIZER_PREFIX = "torch.optim."
SCHEDULER_PREFIX = "torch.optim.lr_scheduler."
# schedulers the training rule converts itself (they are not op-table entries: their step()
# takes a metric, or their arguments are other schedulers)
HOST_SCHEDULERS = {"torch.optim.lr_scheduler.ReduceLROnPlateau": "TorchReduceLROnPlateau",
                   "torch.optim.lr_scheduler.SequentialLR": "TorchSequentialLR"}
AUTOCAST = {"torch.autocast", "torch.amp.autocast", "torch.cuda.amp.autocast", "torch.cpu.amp.autocast"}
SCALERS = {"torch.amp.GradScaler", "torch.cuda.amp.GradScaler", "torch.GradScaler", "torch.cpu.amp.GradScaler"}
CLIP_CALLS = {"torch.nn.utils.clip_grad_norm_": "norm", "torch.nn.utils.clip_grad_value_": "value"}
BATCHNORM_PREFIXES = ("torch.nn.BatchNorm", "torch.nn.SyncBatchNorm", "torch.nn.LazyBatchNorm")
RNG_KEY = "rng_key"      # the key random ops in script code use (ops rule, JP403)
STATE = "train_state"   # the threaded TrainState; "state" is too common in RL scripts
_BUILTINS = set(dir(builtins))


def inject_learning_rate(expr: cst.BaseExpression) -> cst.BaseExpression | None:
    """Wrap the call of a converted optimizer that takes ``learning_rate=`` in
    ``optax.inject_hyperparams`` (``optax.sgd(learning_rate=0.1)`` →
    ``optax.inject_hyperparams(optax.sgd)(learning_rate=0.1)``), so a scheduler can set it."""
    found = []

    class _Wrap(cst.CSTTransformer):
        def leave_Call(self, original: cst.Call, updated: cst.Call) -> cst.BaseExpression:
            if found or not any(a.keyword is not None and a.keyword.value == "learning_rate" for a in updated.args):
                return updated
            found.append(True)
            inject = cst.Call(func=cst.parse_expression("optax.inject_hyperparams"), args=[cst.Arg(updated.func)])
            return updated.with_changes(func=inject)

    out = expr.visit(_Wrap())
    return out if found else None


def _code(node: cst.CSTNode) -> str:
    return cst.Module([]).code_for_node(node)


def _names_read(node: cst.CSTNode) -> set[str]:
    """Names a node reads (not attribute names, not keyword names)."""
    names: set[str] = set()

    class _V(cst.CSTVisitor):
        def visit_Attribute(self, n: cst.Attribute) -> bool:
            walk(n.value, self)
            return False

        def visit_Arg(self, n: cst.Arg) -> bool:
            walk(n.value, self)
            return False

        def visit_AssignTarget(self, n: cst.AssignTarget) -> bool:
            if not isinstance(n.target, (cst.Name, cst.Tuple, cst.List)):
                walk(n.target, self)
            return False

        def visit_Lambda(self, n: cst.Lambda) -> bool:
            return False

        def visit_Name(self, n: cst.Name) -> None:
            names.add(n.value)

    walk(node, _V())
    return names


def _bound(target: cst.BaseExpression) -> list[str]:
    if isinstance(target, cst.Name):
        return [target.value]
    if isinstance(target, (cst.Tuple, cst.List)):
        out: list[str] = []
        for el in target.elements:
            out += _bound(el.value)
        return out
    if isinstance(target, cst.StarredElement):
        return _bound(target.value)
    return []


def _assigned(stmt: cst.CSTNode) -> list[str]:
    out: list[str] = []

    class _V(cst.CSTVisitor):
        def visit_AssignTarget(self, n: cst.AssignTarget) -> None:
            out.extend(_bound(n.target))

        def visit_AugAssign(self, n: cst.AugAssign) -> None:
            out.extend(_bound(n.target))

        def visit_AnnAssign(self, n: cst.AnnAssign) -> None:
            out.extend(_bound(n.target))

        def visit_For(self, n: cst.For) -> None:
            out.extend(_bound(n.target))

        def visit_FunctionDef(self, n: cst.FunctionDef) -> bool:
            out.append(n.name.value)
            return False

        def visit_ClassDef(self, n: cst.ClassDef) -> bool:
            out.append(n.name.value)
            return False

        def visit_Import(self, n: cst.Import) -> bool:
            for a in n.names:
                out.append(dotted(a.asname.name) if a.asname else (dotted(a.name) or "").split(".")[0])
            return False

        def visit_ImportFrom(self, n: cst.ImportFrom) -> bool:
            if not isinstance(n.names, cst.ImportStar):
                for a in n.names:
                    out.append(dotted(a.asname.name) if a.asname else dotted(a.name))
            return False

        def visit_Param(self, n: cst.Param) -> None:
            out.append(n.name.value)

        def visit_Lambda(self, n: cst.Lambda) -> bool:
            return False

    walk(stmt, _V())
    return out


def _method_stmt(stmt: cst.CSTNode, method: str) -> tuple[cst.BaseExpression, cst.Call] | None:
    """``<receiver>.<method>(...)`` as a whole statement → (receiver, call)."""
    if not (isinstance(stmt, cst.SimpleStatementLine) and len(stmt.body) == 1 and isinstance(stmt.body[0], cst.Expr)):
        return None
    call = stmt.body[0].value
    if isinstance(call, cst.Call) and isinstance(call.func, cst.Attribute) and call.func.attr.value == method:
        return call.func.value, call
    return None


def _calls_name(node: cst.CSTNode, names: set[str]) -> bool:
    hit = []

    class _V(cst.CSTVisitor):
        def visit_Call(self, n: cst.Call) -> None:
            if isinstance(n.func, cst.Name) and n.func.value in names:
                hit.append(n)

    walk(node, _V())
    return bool(hit)


@dataclass
class LoopPlan:
    step_name: str
    model: str
    optimizer: str
    segment: list[cst.SimpleStatementLine]            # original statements, in order
    deferred: list[cst.SimpleStatementLine]
    removed: list[cst.SimpleStatementLine]             # zero_grad, backward, step, clipping
    clips: list[tuple[cst.SimpleStatementLine, str]]   # (statement, "norm" | "value")
    loss: cst.BaseExpression                           # the backward() receiver (original)
    inputs: list[str] = field(default_factory=list)
    local: set[str] = field(default_factory=set)
    static: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    boundary: list[str] = field(default_factory=list)  # loop target names turned into arrays
    init_args: list[cst.Arg] = field(default_factory=list)
    accumulate: cst.BaseExpression | None = None       # micro-batches per step (gradient accumulation)
    loop_bound: set[str] = field(default_factory=set)  # names the training loop(s) bind
    flat: dict[str, str] = field(default_factory=dict)  # static parameter → the attribute read it replaces
    early: cst.SimpleStatementLine | None = None       # a no_grad model call before the step: create the state there


@dataclass
class FunctionInfo:
    node: cst.FunctionDef
    needs: bool = False       # reads the state
    returns: bool = False     # changes the state
    creates: bool = False     # builds the optimizer (state is local)


class TrainingRule(Rule):
    def __init__(self, ctx) -> None:
        super().__init__(ctx)
        self.models: set[str] = set()
        self.optimizers: dict[str, str] = {}      # optimizer var → model var
        self.schedulers: dict[str, str] = {}      # scheduler var → optimizer var
        self.losses: set[str] = set()
        self.batchnorm = False
        self.seed = "0"
        self.plans: dict[int, LoopPlan] = {}      # id(original For) → plan
        self.failed: dict[int, str] = {}
        self.eval_loops: set[int] = set()
        self.functions: dict[str, FunctionInfo] = {}
        self.converted: dict[int, cst.SimpleStatementLine] = {}   # id(original stmt) → updated
        self.segment_ids: dict[int, LoopPlan] = {}
        self.step_sources: list[str] = []         # train_step functions, in order
        self.function_stack: list[str] = []
        self.class_depth = 0
        self.mode: dict[str, str] = {}            # function → "train" | "eval" (by model.train()/eval())
        self.segment_depth = 0
        self.selectors: dict[str, str] = {}       # name bound to [p for n, p in M.named_parameters() if ...] → M
        self.lists: dict[str, cst.List] = {}      # name bound to a list literal (parameter groups)
        self.groups: dict[str, list] = {}         # optimizer var → [(label, params expr, dict)] of its groups
        self.lr_written: set[str] = set()         # optimizers whose param_groups' "lr" the script writes
        self.outer_removed: set[int] = set()      # statements of an accumulation loop's outer loop to drop
        self.seed_scopes: set[str | None] = set()  # functions (None: module) that call torch.manual_seed
        self.multi_plans: dict[int, list] = {}   # id(loop) → plans of its backward/step pairs (GAN)
        self.scalers: set[str] = set()            # GradScaler variables (mixed precision, JP613)
        self.plateau: set[str] = set()            # ReduceLROnPlateau schedulers (step(metric))
        self.sample_stream = False                # a module samples (torch.randn_like in forward)
        self.global_key: set[str] = set()         # functions that split the module-level rng_key
        self.track_ids: set[int] = set()          # statements whose converted form leave_For looks for

    # ------------------------------------------------------------------ pre-scan
    @property
    def multi(self) -> bool:
        """Several models, each with its own optimizer (a GAN): one TrainState per model."""
        return len(set(self.optimizers.values())) > 1

    def _state(self, model: str | None) -> str:
        if not self.multi or model is None:
            return STATE
        return model.replace(".", "_") + "_state"

    def _opt_state(self, optimizer: str | None) -> str:
        return self._state(self.optimizers.get(optimizer)) if optimizer else STATE

    def _scope_node(self):
        fn = self._function()
        if fn is not None and fn in self.functions:
            return self.functions[fn].node
        return self.module_node

    def visit_Module(self, node: cst.Module) -> None:
        self.module_node = node
        for stmt in node.body:
            self._scan(stmt, None)
        if not self.optimizers:
            return
        for info in self.functions.values():
            self._mark_function(info)
        changed = True
        while changed:
            changed = False
            for name, info in self.functions.items():
                if info.creates:
                    continue
                for callee in self._called_functions(info.node):
                    other = self.functions.get(callee)
                    if other is None or other is info:
                        continue
                    if other.needs and not info.needs:
                        info.needs = changed = True
                    if other.returns and not info.returns:
                        info.returns = changed = True

    def _scan(self, stmt: cst.CSTNode, function: str | None) -> None:
        rule = self

        class _V(cst.CSTVisitor):
            def __init__(self) -> None:
                self.fn = function

            def visit_ClassDef(self, n: cst.ClassDef) -> bool:
                for sub in cst.ensure_type(n, cst.ClassDef).body.body:
                    walk(sub, _BN())
                return False

            def visit_FunctionDef(self, n: cst.FunctionDef) -> bool:
                if self.fn is None:
                    rule.functions[n.name.value] = FunctionInfo(n)
                    saved, self.fn = self.fn, n.name.value
                    walk(n.body, self)
                    self.fn = saved
                    return False
                return True

            def visit_For(self, n: cst.For) -> None:
                opt = _param_groups_owner(n.iter)
                if opt is not None and _lr_write(n) is not None:
                    rule.lr_written.add(opt)

            def visit_Assign(self, n: cst.Assign) -> None:
                if len(n.targets) == 1 and isinstance(n.targets[0].target, cst.Name):
                    if _selector(n.value) is not None:
                        rule.selectors[n.targets[0].target.value] = _selector(n.value)[0]
                    elif isinstance(n.value, cst.List):
                        rule.lists[n.targets[0].target.value] = n.value
                if len(n.targets) != 1 or not isinstance(n.targets[0].target, cst.Name) or not isinstance(n.value, cst.Call):
                    return
                name = n.targets[0].target.value
                q = qualify(n.value.func, rule.ctx.aliases) or ""
                if q in SCALERS:
                    rule.scalers.add(name)
                if q.startswith(SCHEDULER_PREFIX):
                    if n.value.args and isinstance(n.value.args[0].value, cst.Name):
                        rule.schedulers[name] = n.value.args[0].value.value
                        if q == "torch.optim.lr_scheduler.ReduceLROnPlateau":
                            rule.plateau.add(name)
                elif q.startswith(OPTIMIZER_PREFIX) and q in rule.ctx.tables.functions:
                    model = None
                    if n.value.args:
                        first = n.value.args[0].value
                        if isinstance(first, cst.Call) and isinstance(first.func, cst.Attribute) \
                                and first.func.attr.value == "parameters" and not first.args:
                            model = dotted(first.func.value)
                    if model is None and n.value.args and not n.value.args[0].keyword:
                        groups = rule._parameter_groups(n.value.args[0].value)
                        if groups is not None:
                            model = groups[0]
                            rule.groups[name] = groups[1]
                    if model is not None:
                        rule.optimizers[name] = model
                        rule.models.add(model)
                        if self.fn is not None:
                            rule.functions[self.fn].creates = True
                elif q in rule.ctx.tables.functions and rule.ctx.tables.functions[q].key.endswith("Loss"):
                    rule.losses.add(name)

            def visit_Call(self, n: cst.Call) -> None:
                q = qualify(n.func, rule.ctx.aliases) or ""
                if q.startswith(BATCHNORM_PREFIXES):
                    rule.batchnorm = True
                if q in ("torch.manual_seed", "torch.random.manual_seed") and n.args:
                    rule.seed_scopes.add(self.fn)
                    if isinstance(n.args[0].value, cst.Integer):
                        rule.seed = n.args[0].value.value

        class _BN(cst.CSTVisitor):
            def visit_Call(self, n: cst.Call) -> None:
                q = qualify(n.func, rule.ctx.aliases) or ""
                if q.startswith(BATCHNORM_PREFIXES):
                    rule.batchnorm = True
                entry = rule.ctx.tables.functions.get(q)
                if entry is not None and "dropout" not in q and any("rng_key" in t for t in entry.templates or ()):
                    rule.sample_stream = True    # the module draws from flax's "sample" rng stream

        walk(stmt, _V())

    def _parameter_groups(self, value: cst.BaseExpression):
        """``[{"params": decay, "weight_decay": 0.1}, {"params": no_decay, ...}]`` (or a name
        bound to such a list) → (model, [(label, params expression, the group's dict)]) when
        every group's parameters are a selector over one model (a comprehension over
        ``M.named_parameters()`` / ``M.parameters()``, or ``M.sub.parameters()``)."""
        if isinstance(value, cst.Name) and value.value in self.lists:
            value = self.lists[value.value]
        if not isinstance(value, cst.List) or not value.elements:
            return None
        models, groups = set(), []
        for i, el in enumerate(value.elements):
            d = el.value
            if not isinstance(d, cst.Dict):
                return None
            params = None
            for item in d.elements:
                if not isinstance(item, cst.DictElement) or not isinstance(item.key, cst.SimpleString):
                    return None
                if item.key.evaluated_value == "params":
                    params = item.value
            if params is None:
                return None
            if isinstance(params, cst.Name) and params.value in self.selectors:
                models.add(self.selectors[params.value])
                label = params.value
            elif _submodule_parameters(params) is not None:
                models.add(_submodule_parameters(params)[0])
                label = f"group_{i}"
            else:
                return None
            groups.append((label, params, d))
        if len(models) != 1 or len({g[0] for g in groups}) != len(groups):
            return None
        return models.pop(), groups

    def _called_functions(self, fn: cst.FunctionDef) -> set[str]:
        out: set[str] = set()

        class _V(cst.CSTVisitor):
            def visit_Call(self, n: cst.Call) -> None:
                if isinstance(n.func, cst.Name):
                    out.add(n.func.value)

        walk(fn.body, _V())
        return out

    # ------------------------------------------------------------------ scopes
    def visit_FunctionDef(self, node: cst.FunctionDef) -> None:
        self.function_stack.append(node.name.value)

    def _mark_function(self, info: FunctionInfo) -> None:
        body = info.node.body
        if info.creates:
            return
        text = _code(body)
        if _calls_name(body, self.models) or any(f"{m}.state_dict(" in text for m in self.models):
            info.needs = True
        if any(f"{s}.step(" in text for s in self.schedulers) or (
                ".backward(" in text and any(f"{o}.step(" in text for o in self.optimizers)):
            info.needs = info.returns = True

    def visit_ClassDef(self, node: cst.ClassDef) -> None:
        self.class_depth += 1

    def leave_ClassDef(self, original, updated):
        self.class_depth -= 1
        return updated

    def _function(self) -> str | None:
        return self.function_stack[0] if self.function_stack and self.class_depth == 0 else None

    def visit_For(self, node: cst.For) -> None:
        if not self.optimizers or self.class_depth or id(node) in self.plans:
            return
        backward = [s for s in self._stmts(node) if _method_stmt(s, "backward")]
        steps = [s for s in self._stmts(node) if self._stepped(s)]
        if not backward and steps:
            inner = [s for s in self._stmts(node) if isinstance(s, cst.For)
                     and any(_method_stmt(t, "backward") for t in self._stmts(s))]
            if len(inner) == 1:
                # gradient accumulation: backward() on every micro-batch of an inner loop, one step() after it
                try:
                    plan = self._plan(inner[0], [t for t in self._stmts(inner[0]) if _method_stmt(t, "backward")],
                                      steps, outer=node)
                except _Unsupported as exc:
                    self.failed[id(node)] = str(exc)
                    return
                self.plans[id(inner[0])] = plan
                for s in plan.segment + plan.deferred + plan.removed:
                    self.segment_ids[id(s)] = plan
                return
        if not backward and not steps:
            if _calls_name(node.body, self.models):
                self.eval_loops.add(id(node))
            return
        if self.multi and (len(backward) > 1 or len(steps) > 1):
            try:
                plans = self._plan_pairs(node, backward, steps)
            except _Unsupported as exc:
                self.failed[id(node)] = str(exc)
                return
            self.multi_plans[id(node)] = plans
            for plan in plans:
                for s in plan.segment + plan.removed:
                    self.segment_ids[id(s)] = plan
            return
        try:
            plan = self._plan(node, backward, steps)
        except _Unsupported as exc:
            self.failed[id(node)] = str(exc)
            return
        self.plans[id(node)] = plan
        for s in plan.segment + plan.deferred + plan.removed:
            self.segment_ids[id(s)] = plan

    # ------------------------------------------------------------------ loop analysis
    def _plan(self, loop: cst.For, backward, steps, outer: cst.For | None = None) -> LoopPlan:
        body = list(self._stmts(loop))
        if len(backward) != 1:
            raise _Unsupported(f"{len(backward)} backward() calls in one loop")
        if len(steps) != 1:
            raise _Unsupported(f"{len(steps)} optimizer step() calls in one loop")
        b_stmt, s_stmt = backward[0], steps[0]
        loss_expr, b_call = _method_stmt(b_stmt, "backward")
        loss_expr = self._unscaled(loss_expr)
        if b_call.args:
            raise _Unsupported("backward() with arguments (retain_graph, gradient)")
        optimizer = self._stepped(s_stmt)
        model = self.optimizers[optimizer]
        b_index = body.index(b_stmt)
        accumulate = None
        if outer is None:
            s_index = body.index(s_stmt)
            if s_index < b_index:
                raise _Unsupported("step() before backward()")
            between = body[b_index + 1:s_index]
        else:
            obody = list(self._stmts(outer))
            l_index, s_index = obody.index(loop), obody.index(s_stmt)
            if s_index < l_index:
                raise _Unsupported("step() before the gradient-accumulation loop")
            if not (isinstance(loop.iter, cst.Call) and dotted(loop.iter.func) == "range"
                    and len(loop.iter.args) == 1 and loop.iter.args[0].keyword is None) or loop.orelse is not None:
                raise _Unsupported("gradient accumulation over a loop that is not `for _ in range(k)`")
            if any(s is not b_stmt and (_method_stmt(s, "step") or isinstance(s, cst.For)) for s in body):
                raise _Unsupported("the gradient-accumulation loop holds other loops or step() calls")
            accumulate = loop.iter.args[0].value
            between = obody[l_index + 1:s_index]
            if any(body.index(s) > b_index for s in body if _calls_name(s, {model})):
                raise _Unsupported("the model is called after backward() in the accumulation loop")
        removed = [b_stmt, s_stmt]
        clips = []
        for stmt in between:
            if _method_stmt(stmt, "unscale_") and dotted(_method_stmt(stmt, "unscale_")[0]) in self.scalers:
                removed.append(stmt)
                continue
            kind = self._clip_kind(stmt)
            if kind is None and not (_method_stmt(stmt, "zero_grad") and dotted(_method_stmt(stmt, "zero_grad")[0])
                                     in (optimizer, model)):
                raise _Unsupported("statements between backward() and step() other than gradient clipping")
            if kind is not None:
                clips.append((stmt, kind))
                removed.append(stmt)
        for stmt in body + (list(self._stmts(outer)) if outer is not None else []):
            z = _method_stmt(stmt, "zero_grad")
            if z is not None and dotted(z[0]) in (optimizer, model):
                removed.append(stmt)
        if outer is not None:
            self.outer_removed |= {id(s) for s in removed if s not in body}
        # the step segment
        tainted: set[str] = set()
        segment, deferred = [], []
        early = None    # the first statement that runs the model on the host before the step
        for stmt in body[:b_index]:
            if stmt in removed:
                continue
            if isinstance(stmt, cst.With) and self._no_grad(stmt) and isinstance(stmt.body, cst.IndentedBlock):
                # a no_grad block (a rollout, a target network's forward): host code, not
                # differentiated; its model calls are eval_step on the current state
                if segment and set(_assigned(stmt)) & (reads_of(segment) | tainted):
                    raise _Unsupported("a statement inside the forward pass rebinds one of its names")
                if _calls_name(stmt, {model}) and early is None and stmt.body.body:
                    early = stmt.body.body[0]
                    if not isinstance(early, cst.SimpleStatementLine):
                        raise _Unsupported("a no_grad block that calls the model starts with a compound statement")
                continue
            reads = _names_read(stmt)
            uses_model = _calls_name(stmt, {model})
            if not (uses_model or reads & tainted):
                if segment and set(_assigned(stmt)) & (reads_of(segment) | tainted):
                    raise _Unsupported("a statement inside the forward pass rebinds one of its names")
                continue
            if not isinstance(stmt, cst.SimpleStatementLine):
                raise _Unsupported("the forward pass or loss is computed inside a nested block")
            small = stmt.body[0] if len(stmt.body) == 1 else None
            if isinstance(small, cst.Assign) and all(_bound(t.target) and len(_bound(t.target)) ==
                                                     _target_size(t.target) for t in small.targets) \
                    and ".item()" not in _code(small.value):
                segment.append(stmt)
                tainted |= set(_assigned(stmt))
            elif not uses_model and isinstance(small, (cst.AugAssign, cst.Expr, cst.Assign)):
                deferred.append(stmt)
            else:
                raise _Unsupported("the model is called in a statement that is not a plain assignment")
        if not segment:
            raise _Unsupported("no forward pass found before backward()")
        loss_names = _names_read(loss_expr)
        if not loss_names & tainted:
            raise _Unsupported("the loss does not depend on the model's output")
        model_calls = _model_calls(segment, model)
        if len(model_calls) != 1:
            raise _Unsupported(f"{len(model_calls)} model calls in the forward pass")
        if self.batchnorm and not _is_assigned_call(segment, model):
            raise _Unsupported("with BatchNorm the model call must be a statement of its own (out = model(x))")
        call = model_calls[0]
        if any(a.keyword is not None or a.star for a in call.args):
            raise _Unsupported("model called with keyword or starred arguments")
        before: set[str] = set()     # names the forward pass computes before the model call
        for stmt in segment:
            if _model_calls([stmt], model):
                break
            before |= set(_assigned(stmt))
        if any(_names_read(a.value) & before for a in call.args):
            raise _Unsupported("the model's inputs are computed inside the forward pass")
        plan = LoopPlan(step_name="", model=model, optimizer=optimizer, segment=segment, deferred=deferred,
                        removed=removed, clips=clips, loss=loss_expr)
        plan.init_args = list(call.args)
        reads = reads_of(segment)
        # outputs: segment names read after the segment
        later = set()
        for stmt in body + (list(self._stmts(outer)) if outer is not None else []):
            if stmt in segment or stmt in removed or stmt is loop:
                continue
            later |= _names_read(stmt)
        fn = self._function()
        if fn is not None and fn in self.functions:
            later |= _names_read(self.functions[fn].node.body) - reads_of(segment)
        loss_name = dotted(loss_expr) if isinstance(loss_expr, cst.Name) else None
        outputs = [n for n in _ordered_assigned(segment) if n in later and n != loss_name]
        plan.outputs = [loss_name or "loss_value", *outputs]
        plan.boundary = _loop_batch_names(loop)
        plan.local = self._local_names(outer or loop)
        plan.accumulate = accumulate
        plan.early = early
        if early is not None:
            self.track_ids.add(id(early))
        plan.loop_bound = set(_assigned(outer or loop))
        return plan

    def _stmts(self, loop) -> list:
        """A loop's statements, with the bodies of ``autocast`` blocks inlined (they run in
        float32 after conversion, JP613)."""
        out = []
        for stmt in loop.body.body:
            if isinstance(stmt, cst.With) and self._autocast(stmt) and isinstance(stmt.body, cst.IndentedBlock):
                out += list(stmt.body.body)
            else:
                out.append(stmt)
        return out

    def _autocast(self, node: cst.With) -> bool:
        return all(qualify(i.item.func if isinstance(i.item, cst.Call) else i.item, self.ctx.aliases) in AUTOCAST
                   for i in node.items)

    def _no_grad(self, node: cst.With) -> bool:
        return all(qualify(i.item.func if isinstance(i.item, cst.Call) else i.item, self.ctx.aliases)
                   in ("torch.no_grad", "torch.inference_mode", "torch.autograd.no_grad") for i in node.items)

    def _stepped(self, stmt) -> str | None:
        """The optimizer a statement steps: ``opt.step()`` or ``scaler.step(opt)``."""
        m = _method_stmt(stmt, "step")
        if m is None:
            return None
        if dotted(m[0]) in self.optimizers and not m[1].args:
            return dotted(m[0])
        if dotted(m[0]) in self.scalers and len(m[1].args) == 1 and dotted(m[1].args[0].value) in self.optimizers:
            return dotted(m[1].args[0].value)
        return None

    def _unscaled(self, expr):
        """``scaler.scale(loss)`` → ``loss``."""
        if isinstance(expr, cst.Call) and isinstance(expr.func, cst.Attribute) and expr.func.attr.value == "scale" \
                and dotted(expr.func.value) in self.scalers and len(expr.args) == 1:
            return expr.args[0].value
        return expr

    def _clip_kind(self, stmt) -> str | None:
        if not isinstance(stmt, cst.SimpleStatementLine) or len(stmt.body) != 1:
            return None
        small = stmt.body[0]
        value = small.value if isinstance(small, (cst.Expr, cst.Assign)) else None
        if not isinstance(value, cst.Call):
            return None
        return CLIP_CALLS.get(qualify(value.func, self.ctx.aliases) or "")

    def _local_names(self, loop: cst.For) -> set[str]:
        fn = self._function()
        if fn is not None and fn in self.functions:
            return set(_assigned(self.functions[fn].node.params)) | set(_assigned(self.functions[fn].node.body))
        # module-level loop: names bound by the loop itself
        return set(_assigned(loop))

    # ------------------------------------------------------------------ statements
    def leave_SimpleStatementLine(self, original: cst.SimpleStatementLine, updated: cst.SimpleStatementLine):
        result = self._leave_simple(original, updated)
        if id(original) in self.track_ids:
            first = result.nodes[0] if isinstance(result, cst.FlattenSentinel) and result.nodes else result
            if isinstance(first, cst.SimpleStatementLine):
                self.converted[id(original)] = first
        return result

    def _leave_simple(self, original: cst.SimpleStatementLine, updated: cst.SimpleStatementLine):
        if id(original) in self.segment_ids:
            self.segment_depth -= 1
            if _count_name(updated, RNG_KEY) > _count_name(original, RNG_KEY):
                self._swap_pending("JP403", "JP612", "random op in the training step: its key is split from "
                                   "the training state's key at every step")
            self.converted[id(original)] = updated
            if id(original) in self.outer_removed:
                return cst.RemoveFromParent()
            return updated
        if not self.class_depth:
            updated = self._thread_key(original, updated)
            if isinstance(updated, cst.FlattenSentinel):
                return updated
        if self.class_depth or len(original.body) != 1:
            return updated
        stmt = original.body[0]
        if isinstance(stmt, cst.Assign) and isinstance(stmt.value, cst.Call):
            q = qualify(stmt.value.func, self.ctx.aliases) or ""
            if q.startswith(OPTIMIZER_PREFIX) and not q.startswith(SCHEDULER_PREFIX) \
                    and not (len(stmt.targets) == 1 and dotted(stmt.targets[0].target) in self.groups):
                self._check_groups(original)
        if isinstance(stmt, cst.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0].target, cst.Name) \
                and stmt.targets[0].target.value in self.selectors and self._selector_used(stmt.targets[0].target.value):
            lam = _selector_lambda(updated.body[0].value) if isinstance(updated.body[0], cst.Assign) else None
            if lam is not None:
                return updated.with_changes(body=[updated.body[0].with_changes(value=cst.parse_expression(lam))])
        found = _method_stmt(original, "step")
        if found is not None and dotted(found[0]) in self.plateau and len(found[1].args) == 1 \
                and found[1].args[0].keyword is None:
            call = _method_stmt(updated, "step")
            if call is not None:
                metric = _code(call[1].args[0].value)
                st = self._opt_state(self.schedulers.get(dotted(found[0])))
                return cst.parse_statement(f"{st} = {dotted(found[0])}.step({st}, {metric})\n").with_changes(
                    leading_lines=updated.leading_lines)
        if found is not None and dotted(found[0]) in self.schedulers and found[1].args:
            self.ctx.report(original, "JP606", f"{dotted(found[0])}.step(...) with a metric is not converted")
            return updated
        if not self.optimizers:
            return updated
        # model.train() / model.eval() / optimizer.zero_grad()
        for method in ("train", "eval", "zero_grad"):
            found = _method_stmt(original, method)
            if found is not None and dotted(found[0]) in (self.models | set(self.optimizers)):
                fn = self._function()
                if method in ("train", "eval") and fn is not None:
                    self.mode[fn] = method
                self.ctx.report(original, "JP603", f"{dotted(found[0])}.{method}() removed: "
                                "train_step/eval_step pass the train flag; gradients are not accumulated")
                return cst.RemoveFromParent()
        found = _method_stmt(original, "step")
        if found is not None and dotted(found[0]) in self.schedulers:
            st = self._opt_state(self.schedulers.get(dotted(found[0])))
            return cst.parse_statement(f"{st} = {dotted(found[0])}.step({st})\n").with_changes(
                leading_lines=updated.leading_lines)
        if isinstance(stmt, cst.Assign) and len(stmt.targets) == 1 and isinstance(stmt.value, cst.Call) \
                and qualify(stmt.value.func, self.ctx.aliases) in SCALERS:
            self._swap_pending("JP101", "JP613", "GradScaler removed: the converted step computes in float32, "
                               "where loss scaling is not needed; scaler.scale(loss).backward() / scaler.step(opt) "
                               "are the plain backward() / step()")
            return updated.with_changes(body=[updated.body[0].with_changes(value=cst.Name("None"))])
        for method in ("update", "unscale_"):
            found = _method_stmt(original, method)
            if found is not None and dotted(found[0]) in self.scalers:
                return cst.RemoveFromParent()
        found = _method_stmt(original, "load_state_dict")
        if found is not None and dotted(found[0]) in (self.models | set(self.optimizers)) \
                and len(found[1].args) == 1 and found[1].args[0].keyword is None \
                and isinstance(updated.body[0], cst.Expr) and isinstance(updated.body[0].value, cst.Call):
            owner = dotted(found[0])
            value = _code(updated.body[0].value.args[0].value)
            helper = "load_model_state" if owner in self.models else "load_optimizer_state"
            st = self._state(owner) if owner in self.models else self._opt_state(owner)
            self.ctx.emits.add(helper)
            self.ctx.report(original, "JP614", f"{owner}.load_state_dict(...) → {st} = {helper}({st}, ...): the "
                            "saved arrays restored into the training state (which must exist by then)")
            return cst.parse_statement(f"{st} = {helper}({st}, {value})\n").with_changes(
                leading_lines=updated.leading_lines)
        found = _method_stmt(original, "load_state_dict")
        if found is not None and dotted(found[0]) in (self.models | set(self.optimizers)):
            self.ctx.report(original, "JP606", f"{dotted(found[0])}.load_state_dict(...) not converted: "
                            "restore into the TrainState, e.g. state = state.replace(params=...)")
            return updated
        if isinstance(stmt, cst.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0].target, cst.Name):
            name = stmt.targets[0].target.value
            if name in self.optimizers and isinstance(updated.body[0], cst.Assign):
                value = updated.body[0].value
                if name in self.groups:
                    value = self._multi_transform(original, name, stmt.value) or value
                elif name in self.schedulers.values() or name in self.lr_written:
                    wrapped = inject_learning_rate(value)
                    if wrapped is not None:
                        value = wrapped
                new = updated.with_changes(body=[updated.body[0].with_changes(value=value)])
                return cst.FlattenSentinel([new, cst.parse_statement(f"{self._opt_state(name)} = None\n")])
            q = qualify(stmt.value.func, self.ctx.aliases) if isinstance(stmt.value, cst.Call) else None
            if name in self.schedulers and q in HOST_SCHEDULERS and isinstance(updated.body[0], cst.Assign) \
                    and isinstance(updated.body[0].value, cst.Call):
                helper = HOST_SCHEDULERS[q]
                self._swap_pending("JP101", "JP607", f"{q.rsplit('.', 1)[1]} → {helper} (prelude, host-side)")
                self.ctx.emits.add(helper)
                updated = updated.with_changes(body=[updated.body[0].with_changes(
                    value=updated.body[0].value.with_changes(func=cst.Name(helper)))])
            if name in self.schedulers and isinstance(updated.body[0], cst.Assign) \
                    and _code(updated.body[0].value).split("(")[0] in ("TorchLRScheduler", *HOST_SCHEDULERS.values()):
                self.ctx.report(original, "JP607", f"{name} drives {self.schedulers[name]} through "
                                "optax.inject_hyperparams; step() → state = scheduler.step(state)")
                opt = self.schedulers[name]
                return cst.FlattenSentinel([updated, cst.parse_statement(f"{opt} = {name}.optimizer\n")])
        return self._thread_calls(original, updated)

    def _swap_pending(self, code: str, new_code: str, message: str) -> None:
        """Replace the ``code`` diagnostics reported on the statement being left (another
        rule's warning that this rule has resolved) by ``new_code``."""
        from .. import diagnostics as diag
        pending = self.ctx.statement_stack[-1] if self.ctx.statement_stack else []
        for d in [d for d in pending if d.code == code]:
            pending.remove(d)
            for i, other in enumerate(self.ctx.diagnostics):
                if other is d:
                    self.ctx.diagnostics[i] = diag.make(new_code, message, d.line, d.col)
                    if self.ctx.diagnostics[i].severity in ("warning", "error"):
                        pending.append(self.ctx.diagnostics[i])   # keeps its marker comment

    def _thread_key(self, original, updated):
        """A random op in script code uses the free name ``rng_key`` (JP403). Where
        ``torch.manual_seed`` made ``rng_key`` a key in scope, split it before the statement:
        ``rng_key, sample_key = jax.random.split(rng_key)``, and sample with the new key."""
        count = _count_name(updated, RNG_KEY) - _count_name(original, RNG_KEY)
        if count <= 0 or any(isinstance(s, cst.Assign) and any(RNG_KEY in _bound(t.target) for t in s.targets)
                             for s in updated.body):
            return updated
        fn = self._function()
        if fn not in self.seed_scopes:
            if None not in self.seed_scopes or fn is None:
                return updated      # no seed in scope: JP403 stays
            self.global_key.add(fn)
        keys = ["sample_key"] if count == 1 else [f"sample_key_{i + 1}" for i in range(count)]
        new = updated.visit(_RenameKeys(list(keys)))
        split = cst.parse_statement(f"{RNG_KEY}, {', '.join(keys)} = jax.random.split({RNG_KEY}"
                                    + (f", {count + 1})\n" if count > 1 else ")\n"))
        self._swap_pending("JP403", "JP612", "random op: its key is split from rng_key (torch.manual_seed) just before")
        self.ctx.emits.add("jax")
        return cst.FlattenSentinel([split.with_changes(leading_lines=updated.leading_lines),
                                    new.with_changes(leading_lines=[])])

    def _selector_used(self, name: str) -> bool:
        return any(label == name for groups in self.groups.values() for label, _, _ in groups)

    def _multi_transform(self, original, name: str, call: cst.Call) -> cst.BaseExpression | None:
        """An optimizer over parameter groups → ``optax.multi_transform`` with one optax
        optimizer per group (the call's hyperparameters with the group's own on top) and
        labels chosen by the groups' selectors."""
        from ..render import render_call
        entry = self.ctx.tables.functions.get(qualify(call.func, self.ctx.aliases) or "")
        if entry is None:
            return None
        inject = name in self.schedulers.values() or name in self.lr_written
        transforms, selectors = [], []
        base = [a for a in call.args[1:]]
        for label, params, group in self.groups[name]:
            overrides = {}
            for item in group.elements:
                key = item.key.evaluated_value
                if key != "params":
                    overrides[key] = item.value
            args = [cst.Arg(cst.Name("params"), comma=_COMMA)]
            for a in base:
                if a.keyword is not None and a.keyword.value in overrides:
                    continue
                args.append(a.with_changes(comma=_COMMA))
            for key, value in overrides.items():
                args.append(cst.Arg(value, keyword=cst.Name(key), comma=_COMMA,
                                    equal=cst.AssignEqual(whitespace_before=cst.SimpleWhitespace(""),
                                                          whitespace_after=cst.SimpleWhitespace(""))))
            args[-1] = args[-1].with_changes(comma=cst.MaybeSentinel.DEFAULT)
            result = render_call(entry, args)
            if result.expr is None:
                self.ctx.report(original, "JP604", f"parameter group {label!r} not converted: {result.message}")
                return None
            if result.code:
                self.ctx.report(original, result.code, result.message)
            self.ctx.emits |= result.emits
            expr = result.expr
            if inject:
                expr = inject_learning_rate(expr) or expr
            transforms.append(f'"{label}": {_code(expr)}')
            if isinstance(params, cst.Name):
                selectors.append(f'"{label}": {label}')
            else:
                selectors.append(f'"{label}": {_selector_lambda(params)}')
        self.ctx.emits |= {"param_group_labels", "optax"}
        self.ctx.report(original, "JP608", f"{len(transforms)} parameter groups → optax.multi_transform, each "
                        "parameter labelled by its group's selector (parameters in no group are frozen, as in torch)")
        text = (f"optax.multi_transform({{{', '.join(transforms)}, \"frozen\": optax.set_to_zero()}}, "
                f"param_group_labels({{{', '.join(selectors)}}}))")
        return cst.parse_expression(text)

    def _check_groups(self, original) -> None:
        stmt = original.body[0]
        if isinstance(stmt, cst.Assign) and isinstance(stmt.value, cst.Call) and stmt.value.args:
            first = stmt.value.args[0].value
            ok = isinstance(first, cst.Call) and isinstance(first.func, cst.Attribute) \
                and first.func.attr.value == "parameters"
            if not ok:
                self.ctx.report(original, "JP604", "optimizer parameter groups / parameter lists are not "
                                "converted: every parameter gets the same hyperparameters")

    def _thread_calls(self, original, updated):
        """``train(...)`` of a state-changing function → ``state = train(..., state=state)``."""
        if not self.optimizers or self.multi:
            return updated
        stmt = original.body[0]
        call = None
        if isinstance(stmt, cst.Expr) and isinstance(stmt.value, cst.Call):
            call = stmt.value
        elif isinstance(stmt, cst.Assign) and isinstance(stmt.value, cst.Call) and len(stmt.targets) == 1:
            call = stmt.value
        if call is None or not isinstance(call.func, cst.Name):
            return updated
        info = self.functions.get(call.func.value)
        if info is None or not info.returns or info.creates:
            return updated
        new = updated.body[0]
        if isinstance(new, cst.Expr):
            return updated.with_changes(body=[cst.Assign(targets=[cst.AssignTarget(cst.Name(STATE))], value=new.value)])
        if isinstance(new, cst.Assign):
            target = new.targets[0].target
            elements = [cst.Element(cst.Name(STATE)), cst.Element(target)]
            return updated.with_changes(body=[new.with_changes(
                targets=[cst.AssignTarget(cst.Tuple(elements, lpar=[], rpar=[]))])])
        return updated

    # ------------------------------------------------------------------ expressions
    def leave_Call(self, original: cst.Call, updated: cst.Call) -> cst.BaseExpression:
        if not self.optimizers or self.class_depth:
            return updated
        func = original.func
        if isinstance(func, cst.Attribute) and func.attr.value == "state_dict" and not original.args:
            owner = dotted(func.value)
            if owner in self.models:
                self.ctx.emits.add("model_variables")
                return cst.parse_expression(f"model_variables({self._state(owner)})")
            if owner in self.optimizers:
                return cst.parse_expression(f"{self._opt_state(owner)}.opt_state")
        if isinstance(func, cst.Name) and func.value in self.functions and self.functions[func.value].needs \
                and not self.functions[func.value].creates and not self.multi:
            if not any(a.keyword is not None and a.keyword.value == STATE for a in updated.args):
                return _add_kwarg(updated, STATE, cst.Name(STATE))
        if isinstance(func, cst.Name) and func.value in self.models and not self.segment_depth:
            fn = self._function()
            if fn is not None and self.mode.get(fn) == "train":
                self.ctx.report(original, "JP606", f"{func.value}(...) in training mode outside the training step "
                                "is evaluated in eval mode (dropout off, BatchNorm running statistics)")
            if any(a.keyword is not None or a.star for a in updated.args):
                self.ctx.report(original, "JP606", f"{func.value}(...) with keyword arguments is not converted")
                return updated
            self.ctx.emits.add("eval_step")
            return cst.Call(func=cst.Name("eval_step"),
                            args=[cst.Arg(cst.Name(self._state(func.value)), comma=_COMMA), *updated.args])
        return updated

    # ------------------------------------------------------------------ loops
    def leave_With(self, original: cst.With, updated: cst.With):
        if not self._autocast(original):
            return updated
        self._swap_pending("JP101", "JP613", "autocast removed: this block computes in float32 (mixed precision "
                           "is a dtype policy in flax: dtype=jnp.bfloat16 on the layers, float32 params)")
        body = updated.body
        if not isinstance(body, cst.IndentedBlock):
            return cst.FlattenSentinel([cst.SimpleStatementLine(body=list(body.body))])
        stmts = list(body.body)
        if stmts:
            stmts[0] = stmts[0].with_changes(leading_lines=[*updated.leading_lines, *stmts[0].leading_lines])
        return cst.FlattenSentinel(stmts)

    def leave_For(self, original: cst.For, updated: cst.For):
        owner = _param_groups_owner(original.iter)
        if owner is not None and owner in self.optimizers:
            value = _lr_write(original)
            if value is None:
                self.ctx.report(original, "JP611", f"loop over {owner}.param_groups not converted: only "
                                'writing one value to every group\'s "lr" is (set_optimizer_lr)')
                return updated
            new_value = updated.body.body[0].body[0].value
            self.ctx.emits.add("set_optimizer_lr")
            self.ctx.report(original, "JP610", f'{owner}.param_groups "lr" writes → the learning rate in the '
                            "optimizer state (optax.inject_hyperparams), set on the host between steps")
            st = self._opt_state(owner)
            return cst.parse_statement(f"{st}, {owner} = set_optimizer_lr({st}, {owner}, {_code(new_value)})\n"
                                       ).with_changes(leading_lines=updated.leading_lines)
        if id(original) in self.eval_loops:
            names = _loop_batch_names(original)
            if names:
                self.ctx.emits.add("to_jax")
                stmt = cst.parse_statement(f"{', '.join(names)} = {', '.join(f'to_jax({n})' for n in names)}\n")
                return updated.with_changes(body=updated.body.with_changes(body=[stmt, *updated.body.body]))
            return updated
        if id(original) in self.failed:
            self.ctx.report(original, "JP602", f"training loop not converted: {self.failed[id(original)]}")
            return updated
        if id(original) in self.multi_plans:
            return self._leave_multi(original, updated, self.multi_plans[id(original)])
        plan = self.plans.get(id(original))
        if plan is None:
            return updated
        name = self._step_name()
        plan.step_name = name
        self._inputs(plan)
        source = self._train_step_source(plan)
        self.step_sources.append(source)
        drop = {id(self.converted[id(s)].body[0]) for s in plan.removed + plan.segment + plan.deferred
                if id(s) in self.converted}
        first = self.converted.get(id(plan.segment[0]))
        body: list[cst.BaseStatement] = []
        if plan.boundary:
            names = ", ".join(plan.boundary)
            values = ", ".join(f"to_jax({n})" for n in plan.boundary)
            body.append(cst.parse_statement(f"{names} = {values}\n"))
            self.ctx.emits.add("to_jax")
        init_args = ", ".join(_code(a.value) for a in _converted_args(plan, self.converted))
        tx = plan.optimizer
        if plan.accumulate is not None:
            tx = self._accumulating(original, plan)
        call_args = ", ".join([STATE, *(plan.flat.get(n, n) for n in plan.inputs)])
        outputs = ", ".join([STATE, *plan.outputs])
        call_block = [
            cst.parse_statement(f"if {STATE} is None:\n    {STATE} = create_train_state({plan.model}, {tx}, "
                                f"jax.random.PRNGKey({self.seed}), {init_args})\n"),
            cst.parse_statement(f"{outputs} = {name}({call_args})\n"),
        ]
        self.ctx.emits |= {"create_train_state", "jax"}
        deferred = [self.converted[id(s)] for s in plan.deferred if id(s) in self.converted]
        placed = False
        early = self.converted.get(id(plan.early)) if plan.early is not None else None
        for stmt in updated.body.body:
            inner = stmt.body[0] if isinstance(stmt, cst.SimpleStatementLine) and stmt.body else None
            if early is not None and inner is early.body[0]:
                body.append(call_block.pop(0).with_changes(leading_lines=stmt.leading_lines))
                stmt = stmt.with_changes(leading_lines=[])
                early = None
            if inner is not None and id(inner) in drop:
                if first is not None and inner is first.body[0] and not placed:
                    call_block[0] = call_block[0].with_changes(leading_lines=stmt.leading_lines)
                    body += call_block + deferred
                    placed = True
                continue
            body.append(stmt)
        if not placed:
            body += call_block + deferred
        self.ctx.report(original, "JP601", f"training loop → jitted {name}(state, ...) with "
                        "jax.value_and_grad and optax")
        return updated.with_changes(body=updated.body.with_changes(body=body))

    def _plan_pairs(self, loop: cst.For, backward, steps) -> list[LoopPlan]:
        """A loop with one backward()/step() pair per model (a GAN: the discriminator's step,
        then the generator's): one train step per pair. Each step's segment is the slice of
        the statements before its backward() that its loss depends on and that call a model;
        models other than the stepped one are applied with their own state (constant there).
        Exact when no model called in a segment is stepped between that call and the
        backward() (the torch forward pass saw the same parameters)."""
        if len(backward) != len(steps):
            raise _Unsupported(f"{len(backward)} backward() calls and {len(steps)} step() calls")
        body = list(self._stmts(loop))
        removed_all = set()
        pairs = []
        for b_stmt, s_stmt in zip(backward, steps):
            loss_expr, b_call = _method_stmt(b_stmt, "backward")
            loss_expr = self._unscaled(loss_expr)
            if b_call.args:
                raise _Unsupported("backward() with arguments (retain_graph, gradient)")
            optimizer = self._stepped(s_stmt)
            b_index, s_index = body.index(b_stmt), body.index(s_stmt)
            if s_index < b_index:
                raise _Unsupported("step() before backward()")
            if any(not (_method_stmt(x, "zero_grad") and dotted(_method_stmt(x, "zero_grad")[0]) in self.optimizers)
                   for x in body[b_index + 1:s_index]):
                raise _Unsupported("statements between backward() and step() other than zero_grad()")
            pairs.append((b_stmt, s_stmt, loss_expr, optimizer))
            removed_all |= {id(b_stmt), id(s_stmt)}
        if len({p[3] for p in pairs}) != len(pairs):
            raise _Unsupported("one optimizer stepped twice in a loop")
        if self.batchnorm:
            raise _Unsupported("several models with BatchNorm in one loop")
        zero = [x for x in body if _method_stmt(x, "zero_grad") and dotted(_method_stmt(x, "zero_grad")[0])
                in (set(self.optimizers) | self.models)]
        removed_all |= {id(x) for x in zero}
        step_at = {self.optimizers[p[3]]: body.index(p[1]) for p in pairs}
        plans, claimed = [], set()
        fn = self._function()
        if fn is not None and fn in self.functions and not self.functions[fn].creates:
            raise _Unsupported("several models trained in a function that does not build their optimizers")
        for b_stmt, s_stmt, loss_expr, optimizer in pairs:
            model = self.optimizers[optimizer]
            b_index = body.index(b_stmt)
            candidates = [x for x in body[:b_index] if id(x) not in removed_all]
            tainted: set[str] = set()
            marked = []
            for x in candidates:
                if _calls_name(x, self.models) or _names_read(x) & tainted:
                    marked.append(x)
                    tainted |= set(_assigned(x))
            needed = set(_names_read(loss_expr))
            segment = []
            for x in reversed(candidates):
                if x in marked and set(_assigned(x)) & needed:
                    segment.insert(0, x)
                    needed |= _names_read(x)
            if not segment or not _model_calls(segment, model):
                raise _Unsupported(f"no forward pass of {model} before its backward()")
            for x in segment:
                small = x.body[0] if isinstance(x, cst.SimpleStatementLine) and len(x.body) == 1 else None
                if not (isinstance(small, cst.Assign) and all(_bound(t.target) for t in small.targets)) \
                        or ".item()" in _code(small.value):
                    raise _Unsupported("the forward pass of a step is not made of plain assignments")
                for m in self.models:
                    if _calls_name(x, {m}) and m in step_at and body.index(x) < step_at[m] < b_index:
                        raise _Unsupported(f"{m} is stepped between its forward pass and the backward() that uses it")
                for call in _model_calls([x], model) + [c for m in self.models for c in _model_calls([x], m)]:
                    if any(a.keyword is not None or a.star for a in call.args):
                        raise _Unsupported("model called with keyword or starred arguments")
            removed = [b_stmt, s_stmt] + [z for z in zero if z not in claimed]
            claimed |= set(removed)
            plan = LoopPlan(step_name="", model=model, optimizer=optimizer, segment=segment, deferred=[],
                            removed=removed, clips=[], loss=loss_expr)
            plan.local = self._local_names(loop)
            plan.loop_bound = set(_assigned(loop))
            plan.boundary = _loop_batch_names(loop)
            plans.append(plan)
        in_segments = {id(x) for p in plans for x in p.segment}
        host = [x for x in body if id(x) not in in_segments and id(x) not in removed_all]
        for plan in plans:
            assigned = set(_ordered_assigned(plan.segment))
            b_index = body.index(plan.removed[0])
            later = set()
            for x in host:
                reads = _names_read(x) & assigned
                if reads and body.index(x) < b_index:
                    raise _Unsupported(f"{', '.join(sorted(reads))} computed in a training step is read before it")
                later |= reads
            loss_name = dotted(plan.loss) if isinstance(plan.loss, cst.Name) else None
            plan.outputs = [loss_name or "loss_value",
                            *[n for n in _ordered_assigned(plan.segment) if n in later and n != loss_name]]
        # where each model's state is created: its first call whose arguments the host computes
        self.multi_init = getattr(self, "multi_init", {})
        for m in sorted({p.model for p in plans}):
            found = None
            for x in body:
                if id(x) in in_segments:
                    for call in _model_calls([x], m):
                        seg_assigned = {n for p in plans for y in p.segment for n in _assigned(y)}
                        if not any(_names_read(a.value) & seg_assigned for a in call.args):
                            found = (x, call)
                            break
                if found:
                    break
            if found is None:
                raise _Unsupported(f"no call of {m} on host values to initialise it from")
            self.multi_init[m] = found
        return plans

    def _leave_multi(self, original: cst.For, updated: cst.For, plans: list[LoopPlan]):
        names = []
        for plan in plans:
            plan.step_name = self._step_name()
            names.append(plan.step_name)
            self._inputs(plan)
            others = [self._state(m) for m in sorted(self.models)
                      if m != plan.model and _model_calls(plan.segment, m)]
            plan.inputs = others + plan.inputs
            self.step_sources.append(self._train_step_source(plan))
        drop = {id(self.converted[id(s)].body[0]) for p in plans for s in p.removed + p.segment
                if id(s) in self.converted}
        creates = {}   # id(converted first statement) → [create blocks]
        order = sorted(self.multi_init, key=lambda m: sorted(self.models).index(m))
        for i, m in enumerate(order):
            stmt, call = self.multi_init[m]
            conv = self.converted.get(id(stmt))
            conv_calls = _model_calls([conv], m) if conv is not None else []
            args = ", ".join(_code(a.value) for a in (conv_calls[0].args if conv_calls else call.args))
            opt = [o for o, mm in self.optimizers.items() if mm == m][0]
            key = f"jax.random.PRNGKey({self.seed})" if i == 0 else f"jax.random.fold_in(jax.random.PRNGKey({self.seed}), {i})"
            st = self._state(m)
            creates.setdefault(id(conv.body[0]) if conv is not None else None, []).append(cst.parse_statement(
                f"if {st} is None:\n    {st} = create_train_state({m}, {opt}, {key}, {args})\n"))
        calls = {}
        for plan in plans:
            st = self._state(plan.model)
            call_args = ", ".join([st, *(plan.flat.get(n, n) for n in plan.inputs)])
            b_conv = self.converted.get(id(plan.removed[0]))
            calls[id(b_conv.body[0]) if b_conv is not None else None] = cst.parse_statement(
                f"{', '.join([st, *plan.outputs])} = {plan.step_name}({call_args})\n")
        self.ctx.emits |= {"create_train_state", "jax"}
        body: list[cst.BaseStatement] = []
        if plans[0].boundary:
            body.append(cst.parse_statement(f"{', '.join(plans[0].boundary)} = "
                                            f"{', '.join(f'to_jax({n})' for n in plans[0].boundary)}\n"))
            self.ctx.emits.add("to_jax")
        for stmt in updated.body.body:
            inner = stmt.body[0] if isinstance(stmt, cst.SimpleStatementLine) and stmt.body else None
            if inner is not None and id(inner) in drop:
                body += creates.get(id(inner), [])
                if id(inner) in calls:
                    body.append(calls[id(inner)])
                continue
            body.append(stmt)
        self.ctx.report(original, "JP601", f"training loop → jitted {', '.join(names)}: one train step per "
                        "model and optimizer, each model with its own TrainState")
        return updated.with_changes(body=updated.body.with_changes(body=body))

    def _accumulating(self, original, plan: LoopPlan) -> str:
        """``optax.MultiSteps`` summing the gradients of ``k`` micro-batches (torch's
        ``backward()`` adds into ``.grad``; the script already divides the loss by k) and
        applying the optimizer, after the clipping the script does on the sum, every k calls."""
        tx = plan.optimizer
        clips = []
        for stmt, kind in plan.clips:
            call = stmt.body[0].value
            rest = ", ".join(_code(a) for a in call.args[1:]).rstrip(", ")
            clips.append(f"torch_clip_by_norm({rest})" if kind == "norm" else f"torch_clip_by_value({rest})")
            self.ctx.emits.add("torch_clip_by_norm" if kind == "norm" else "torch_clip_by_value")
        if clips:
            tx = f"optax.chain({', '.join(clips)}, {tx})"
        k = _code(plan.accumulate)
        self.ctx.report(original, "JP609", f"gradient accumulation over {k} micro-batches → optax.MultiSteps "
                        "(gradients summed as torch's backward() does, the optimizer"
                        + (" and clipping" if clips else "") + " applied every k-th train_step call)")
        return f"optax.MultiSteps({tx}, every_k_schedule={k}, use_grad_mean=False).gradient_transformation()"

    def _inputs(self, plan: LoopPlan) -> None:
        """train_step's arguments: names the converted segment reads that the enclosing
        function (or, at module level, the loop) binds; loss modules are static."""
        reads: list[str] = []
        assigned: set[str] = set()
        for s in plan.segment:
            stmt = self.converted.get(id(s), s)
            for n in sorted(_names_read(stmt)):
                if n not in assigned and n not in reads and n != plan.model and n not in self.models:
                    reads.append(n)
            assigned |= set(_assigned(stmt))
        states = {self._state(m) for m in self.models}
        inputs = [n for n in reads if n in plan.local and n not in _BUILTINS and n != STATE and n not in states]
        static = [n for n in inputs if n in self.losses]
        traced = []
        segment = [self.converted.get(id(s), s) for s in plan.segment]
        scope = self._scope_node()
        for n in inputs:
            if n in static:
                continue
            if n in plan.loop_bound or n in plan.boundary:
                traced.append(n)
                continue
            attrs = _attribute_reads(segment, n)
            if attrs:
                # a configuration object (args.accum): its attributes are passed as static values
                for a in attrs:
                    plan.flat[f"{n}_{a}"] = f"{n}.{a}"
                    static.append(f"{n}_{a}")
            elif scope is not None and _scalar_bound(scope, n):
                static.append(n)    # a Python number fixed before the loop (shapes need it static)
            else:
                traced.append(n)
        plan.static = static
        plan.inputs = traced + static

    def _step_name(self) -> str:
        used = getattr(self, "_used", [])
        name = "train_step" if not used else f"train_step_{len(used) + 1}"
        used.append(name)
        self._used = used
        return name

    def _train_step_source(self, plan: LoopPlan) -> str:
        STATE = self._state(plan.model)   # noqa: N806 (the plan's state; train_state with one model)
        segment = [self.converted[id(s)] for s in plan.segment]
        variables = '{"params": params, "batch_stats": ' + STATE + '.batch_stats}' if self.batchnorm else '{"params": params}'
        extra = ', mutable=["batch_stats"]' if self.batchnorm else ""
        lines = []
        others = {m: self._state(m) for m in self.models if m != plan.model} if self.multi else {}
        replacer = _ModelCall(plan.model, variables, extra, self.batchnorm, self.sample_stream, others, STATE)
        sampling = self.sample_stream or any(_count_name(stmt, RNG_KEY) for stmt in segment)
        for stmt in segment:
            new = stmt.visit(replacer)
            if _count_name(new, RNG_KEY):
                new = new.visit(_RenameKeys(["sample_rng"] * _count_name(new, RNG_KEY)))
            if plan.flat:
                new = new.visit(_Flatten({v: k for k, v in plan.flat.items()}))
            text = _code(new.with_changes(leading_lines=[])).rstrip("\n")
            lines += ["        " + line for line in text.splitlines()]
        loss_value = _code(self._converted_loss(plan))
        aux = list(plan.outputs[1:])
        if self.batchnorm:
            aux = ["updates", *aux]
        aux_tuple = "(" + ", ".join(aux) + ("," if len(aux) == 1 else "") + ")"
        static = tuple(plan.static)
        decorator = f"@partial(jax.jit, static_argnames={static!r})" if static else "@jax.jit"
        if static:
            self.ctx.emits.add("partial")
        params = ", ".join([STATE, *plan.inputs])
        # inputs the forward pass rebinds (out, hidden = model(x, hidden)) are loss_fn's own
        # locals from the start: bound by default arguments
        rebound = [n for n in plan.inputs if n in set(_ordered_assigned(segment))]
        loss_params = ", ".join(["params", *(f"{n}={n}" for n in rebound)])
        out = [decorator, f"def {plan.step_name}({params}):",
               (f'    dropout_rng, sample_rng, rng = jax.random.split({STATE}.rng, 3)' if sampling
                else f'    dropout_rng, rng = jax.random.split({STATE}.rng)'), "", f"    def loss_fn({loss_params}):", *lines]
        if aux:
            out.append(f"        return {loss_value}, {aux_tuple}")
            out.append(f"    ({plan.outputs[0]}, {aux_tuple}), grads = jax.value_and_grad(loss_fn, has_aux=True)({STATE}.params)")
        else:
            out.append(f"        return {loss_value}")
            out.append(f"    {plan.outputs[0]}, grads = jax.value_and_grad(loss_fn)({STATE}.params)")
        for stmt, kind in ([] if plan.accumulate is not None else plan.clips):
            call = self.converted[id(stmt)].body[0]
            value = call.value if isinstance(call, (cst.Expr, cst.Assign)) else None
            if isinstance(value, cst.Call) and value.args:
                args = [value.args[0].with_changes(value=cst.Name("grads")), *value.args[1:]]
                text = _code(value.with_changes(args=args))
                self.ctx.emits.add("torch_clip_grad_norm" if kind == "norm" else "torch_clip_grad_value")
                out.append(f"    grads, _ = {text}" if kind == "norm" else f"    grads = {text}")
        updates = ', batch_stats=updates["batch_stats"]' if self.batchnorm else ""
        out.append(f"    {STATE} = {STATE}.apply_gradients(grads=grads, rng=rng{updates})")
        out.append("    return " + ", ".join([STATE, *plan.outputs]))
        return "\n".join(out) + "\n"

    def _converted_loss(self, plan: LoopPlan) -> cst.BaseExpression:
        b = [s for s in plan.removed if _method_stmt(s, "backward")][0]
        conv = self.converted.get(id(b))
        if conv is not None:
            found = _method_stmt(conv, "backward")
            if found is not None:
                return self._unscaled(found[0])
        return plan.loss

    # ------------------------------------------------------------------ functions and module
    def leave_FunctionDef(self, original: cst.FunctionDef, updated: cst.FunctionDef):
        name = self.function_stack.pop() if self.function_stack else None
        if self.function_stack or self.class_depth or name is None:
            return updated
        if name in self.global_key:
            decl = cst.parse_statement(f"global {RNG_KEY}\n")
            body = list(updated.body.body)
            at = 1 if body and _is_docstring(body[0]) else 0
            updated = updated.with_changes(body=updated.body.with_changes(body=[*body[:at], decl, *body[at:]]))
        info = self.functions.get(name)
        if info is None or info.creates or not info.needs or self.multi:
            return updated
        params = updated.params
        state_param = cst.Param(cst.Name(STATE), default=cst.Name("None"),
                                equal=cst.AssignEqual(whitespace_before=cst.SimpleWhitespace(""),
                                                      whitespace_after=cst.SimpleWhitespace("")))
        if params.star_arg not in (cst.MaybeSentinel.DEFAULT, None) or params.kwonly_params or params.star_kwarg:
            params = params.with_changes(kwonly_params=[*params.kwonly_params, state_param])
        else:
            plist = list(params.params)
            if plist:
                plist[-1] = plist[-1].with_changes(comma=_COMMA)
            params = params.with_changes(params=[*plist, state_param])
        self.ctx.report(original, "JP605", f"{name}() takes the training state"
                        + (" and returns it" if info.returns else ""))
        updated = updated.with_changes(params=params)
        if info.returns:
            body = list(updated.body.body)
            body = [s.visit(_Returns()) for s in body]
            if not body or not _ends_with_return(body[-1]):
                body.append(cst.parse_statement(f"return {STATE}\n"))
            updated = updated.with_changes(body=updated.body.with_changes(body=body))
        return updated

    def visit_SimpleStatementLine(self, node) -> None:
        if id(node) in self.segment_ids:
            self.segment_depth += 1

    def leave_Module(self, original: cst.Module, updated: cst.Module):
        """train_step functions go after the last top-level class (the models), or after the
        imports: before any code that can call them."""
        sources = self.step_sources
        if not sources:
            return updated
        body = list(updated.body)
        at = 0
        for i, stmt in enumerate(body):
            if isinstance(stmt, cst.ClassDef) or (isinstance(stmt, cst.SimpleStatementLine) and all(
                    isinstance(s, (cst.Import, cst.ImportFrom)) for s in stmt.body)):
                at = i + 1
        new = [cst.parse_statement(src).with_changes(leading_lines=[cst.EmptyLine(), cst.EmptyLine()])
               for src in sources]
        if at < len(body):
            body[at] = body[at].with_changes(leading_lines=[cst.EmptyLine(), cst.EmptyLine(),
                                                            *[l for l in body[at].leading_lines if l.comment]])
        body[at:at] = new
        return updated.with_changes(body=body)


def _loop_batch_names(loop: cst.For) -> list[str]:
    """The names a loop over a data loader binds to a batch (not the index of enumerate,
    nothing for a loop over range)."""
    target = loop.target
    if isinstance(loop.iter, cst.Call) and dotted(loop.iter.func) == "range":
        return []
    if isinstance(loop.iter, cst.Call) and dotted(loop.iter.func) == "enumerate" \
            and isinstance(target, cst.Tuple) and len(target.elements) == 2:
        target = target.elements[1].value
    return _bound(target)


class _Unsupported(Exception):
    pass


_COMMA = cst.Comma(whitespace_after=cst.SimpleWhitespace(" "))


def reads_of(stmts) -> set[str]:
    out: set[str] = set()
    for s in stmts:
        out |= _names_read(s)
    return out


def _target_size(target) -> int:
    return len(_bound(target))


def _ordered_assigned(stmts) -> list[str]:
    out: list[str] = []
    for s in stmts:
        for n in _assigned(s):
            if n not in out:
                out.append(n)
    return out


def _model_calls(stmts, model: str) -> list[cst.Call]:
    calls: list[cst.Call] = []

    class _V(cst.CSTVisitor):
        def visit_Call(self, n: cst.Call) -> None:
            if isinstance(n.func, cst.Name) and n.func.value == model:
                calls.append(n)

    for s in stmts:
        walk(s, _V())
    return calls


def _is_assigned_call(stmts, model: str) -> bool:
    for s in stmts:
        small = s.body[0]
        if isinstance(small, cst.Assign) and isinstance(small.value, cst.Call) \
                and isinstance(small.value.func, cst.Name) and small.value.func.value == model:
            return True
    return False


def _converted_args(plan: LoopPlan, converted) -> list[cst.Arg]:
    for s in plan.segment:
        conv = converted.get(id(s))
        if conv is None:
            continue
        calls = _model_calls([conv], plan.model)
        if calls:
            return list(calls[0].args)
    return plan.init_args


def _add_kwarg(call: cst.Call, name: str, value: cst.BaseExpression) -> cst.Call:
    args = list(call.args)
    if args:
        args[-1] = args[-1].with_changes(comma=_COMMA)
    return call.with_changes(args=[*args, cst.Arg(value, keyword=cst.Name(name), equal=cst.AssignEqual(
        whitespace_before=cst.SimpleWhitespace(""), whitespace_after=cst.SimpleWhitespace("")))])


class _ModelCall(cst.CSTTransformer):
    """``model(x)`` → ``state.apply_fn(variables, x, train=True, rngs=...)`` inside loss_fn."""

    def __init__(self, model: str, variables: str, extra: str, batchnorm: bool, sample: bool = False,
                 others: dict[str, str] | None = None, state: str = STATE) -> None:
        self.model, self.variables, self.extra, self.batchnorm = model, variables, extra, batchnorm
        self.rngs = '{"dropout": dropout_rng, "sample": sample_rng}' if sample else '{"dropout": dropout_rng}'
        self.others, self.state = others or {}, state

    def leave_Call(self, original: cst.Call, updated: cst.Call) -> cst.BaseExpression:
        if not isinstance(original.func, cst.Name):
            return updated
        args = ", ".join(_code(a.value) for a in updated.args)
        other = self.others.get(original.func.value)
        if other is not None:   # another model: applied with its own (here constant) parameters
            return cst.parse_expression(f'{other}.apply_fn({{"params": {other}.params}}, {args}, train=True, '
                                        f'rngs={self.rngs})')
        if original.func.value != self.model:
            return updated
        return cst.parse_expression(f'{self.state}.apply_fn({self.variables}, {args}, train=True, '
                                    f'rngs={self.rngs}{self.extra})')

    def leave_Assign(self, original: cst.Assign, updated: cst.Assign) -> cst.Assign:
        if self.batchnorm and isinstance(original.value, cst.Call) and isinstance(original.value.func, cst.Name) \
                and original.value.func.value == self.model and len(updated.targets) == 1:
            target = updated.targets[0].target
            return updated.with_changes(targets=[cst.AssignTarget(cst.Tuple(
                [cst.Element(target), cst.Element(cst.Name("updates"))], lpar=[], rpar=[]))])
        return updated


class _Returns(cst.CSTTransformer):
    def visit_FunctionDef(self, node) -> bool:
        return False

    def visit_Lambda(self, node) -> bool:
        return False

    def leave_Return(self, original: cst.Return, updated: cst.Return) -> cst.Return:
        if updated.value is None:
            return updated.with_changes(value=cst.Name(STATE))
        value = updated.value
        if isinstance(value, cst.Tuple) and not value.lpar:
            elements = [cst.Element(cst.Name(STATE), comma=_COMMA), *value.elements]
        else:
            elements = [cst.Element(cst.Name(STATE), comma=_COMMA), cst.Element(value)]
        return updated.with_changes(value=cst.Tuple(elements, lpar=[], rpar=[]),
                                    whitespace_after_return=cst.SimpleWhitespace(" "))


def _ends_with_return(stmt) -> bool:
    return isinstance(stmt, cst.SimpleStatementLine) and isinstance(stmt.body[-1], cst.Return)




def _param_groups_owner(expr) -> str | None:
    """``opt.param_groups`` → "opt"."""
    if isinstance(expr, cst.Attribute) and expr.attr.value == "param_groups":
        return dotted(expr.value)
    return None


def _lr_write(loop: cst.For) -> cst.BaseExpression | None:
    """``for g in opt.param_groups: g["lr"] = value`` (value not reading g) → value."""
    if not isinstance(loop.target, cst.Name) or loop.orelse is not None or len(loop.body.body) != 1:
        return None
    stmt = loop.body.body[0]
    if not (isinstance(stmt, cst.SimpleStatementLine) and len(stmt.body) == 1 and isinstance(stmt.body[0], cst.Assign)):
        return None
    assign = stmt.body[0]
    if len(assign.targets) != 1:
        return None
    target = assign.targets[0].target
    if not (isinstance(target, cst.Subscript) and isinstance(target.value, cst.Name)
            and target.value.value == loop.target.value and len(target.slice) == 1
            and isinstance(target.slice[0].slice, cst.Index)
            and isinstance(target.slice[0].slice.value, cst.SimpleString)
            and target.slice[0].slice.value.evaluated_value == "lr"):
        return None
    if loop.target.value in _names_read(assign.value):
        return None
    return assign.value


def _selector(expr):
    """``[p for n, p in M.named_parameters() if cond]`` / ``[p for p in M.parameters() if cond]``
    → (M, name variable or None, param variable, conditions)."""
    if not isinstance(expr, cst.ListComp) or not isinstance(expr.elt, cst.Name):
        return None
    comp = expr.for_in
    if comp.inner_for_in is not None or comp.asynchronous is not None:
        return None
    it = comp.iter
    if not (isinstance(it, cst.Call) and isinstance(it.func, cst.Attribute) and not it.args):
        return None
    model = dotted(it.func.value)
    if model is None:
        return None
    if it.func.attr.value == "named_parameters" and isinstance(comp.target, cst.Tuple) \
            and len(comp.target.elements) == 2 and all(isinstance(e.value, cst.Name) for e in comp.target.elements):
        name_var, param_var = (e.value.value for e in comp.target.elements)
    elif it.func.attr.value == "parameters" and isinstance(comp.target, cst.Name):
        name_var, param_var = None, comp.target.value
    else:
        return None
    if expr.elt.value != param_var:
        return None
    return model, name_var, param_var, [c.test for c in comp.ifs]


def _submodule_parameters(expr):
    """``M.sub.parameters()`` → (M, "sub."): a group holding one submodule's parameters."""
    if isinstance(expr, cst.Call) and isinstance(expr.func, cst.Attribute) and expr.func.attr.value == "parameters" \
            and not expr.args:
        path = dotted(expr.func.value)
        if path and "." in path:
            head, _, rest = path.partition(".")
            return head, rest + "."
    return None


def _selector_lambda(expr) -> str | None:
    """The predicate ``lambda name, param: ...`` of a (converted) parameter selector."""
    sel = _selector(expr)
    if sel is not None:
        _, name_var, param_var, conds = sel
        test = " and ".join(f"({_code(c)})" if len(conds) > 1 else _code(c) for c in conds) or "True"
        return f"lambda {name_var or '_name'}, {param_var}: {test}"
    sub = _submodule_parameters(expr)
    if sub is not None:
        return f"lambda name, param: name.startswith({sub[1]!r})"
    if isinstance(expr, cst.Call) and isinstance(expr.func, cst.Attribute) and expr.func.attr.value == "parameters":
        return "lambda name, param: True"
    return None


class _Flatten(cst.CSTTransformer):
    """``args.accum`` → ``args_accum`` (a static parameter of train_step)."""

    def __init__(self, names: dict[str, str]) -> None:
        self.names = names

    def leave_Attribute(self, original: cst.Attribute, updated: cst.Attribute) -> cst.BaseExpression:
        key = dotted(original) if isinstance(original.value, cst.Name) else None
        if key in self.names:
            return cst.Name(self.names[key])
        return updated


def _attribute_reads(stmts, name: str) -> list[str]:
    """The attributes read on ``name`` when every read of it in ``stmts`` is ``name.attr``
    (not a call of a method); otherwise []."""
    attrs: list[str] = []
    bad = []

    class _V(cst.CSTVisitor):
        def visit_Call(self, n: cst.Call) -> None:
            if isinstance(n.func, cst.Attribute) and isinstance(n.func.value, cst.Name) and n.func.value.value == name:
                bad.append(n)

        def visit_Attribute(self, n: cst.Attribute) -> bool:
            if isinstance(n.value, cst.Name) and n.value.value == name:
                if n.attr.value not in attrs:
                    attrs.append(n.attr.value)
                return False
            return True

        def visit_Arg(self, n: cst.Arg) -> bool:
            walk(n.value, self)
            return False

        def visit_Name(self, n: cst.Name) -> None:
            if n.value == name:
                bad.append(n)

    for s in stmts:
        walk(s, _V())
    return [] if bad else attrs


_SCALAR_CALLS = {"int", "float", "len", "round", "bool", "str", "min", "max", "abs"}


def _scalar_expr(expr) -> bool:
    if isinstance(expr, (cst.Integer, cst.Float, cst.SimpleString, cst.Name)) and not (
            isinstance(expr, cst.Name) and expr.value not in ("True", "False", "None")):
        return True
    if isinstance(expr, cst.UnaryOperation):
        return _scalar_expr(expr.expression)
    if isinstance(expr, cst.Call) and isinstance(expr.func, cst.Name) and expr.func.value in _SCALAR_CALLS:
        return True
    return False


def _scalar_bound(scope, name: str) -> bool:
    """Every binding of ``name`` in ``scope`` is a Python scalar (a literal, ``int(...)``,
    ``len(...)``, a literal tuple unpacked), so it can be a static argument of train_step."""
    found = []
    ok = []

    class _V(cst.CSTVisitor):
        def visit_ClassDef(self, n) -> bool:
            return False

        def visit_FunctionDef(self, n) -> bool:
            return n is scope

        def visit_Param(self, n: cst.Param) -> None:
            if n.name.value == name:
                found.append(n)
                ok.append(False)

        def visit_For(self, n: cst.For) -> None:
            if name in _bound(n.target):
                found.append(n)
                ok.append(False)

        def visit_AugAssign(self, n: cst.AugAssign) -> None:
            if name in _bound(n.target):
                found.append(n)
                ok.append(False)

        def visit_Assign(self, n: cst.Assign) -> None:
            for t in n.targets:
                if isinstance(t.target, cst.Name) and t.target.value == name:
                    found.append(n)
                    ok.append(_scalar_expr(n.value))
                elif isinstance(t.target, cst.Tuple) and name in _bound(t.target):
                    found.append(n)
                    names = [e.value for e in t.target.elements]
                    if isinstance(n.value, cst.Tuple) and len(n.value.elements) == len(names):
                        ok.append(all(_scalar_expr(v.value) for tn, v in zip(names, n.value.elements)
                                      if isinstance(tn, cst.Name) and tn.value == name))
                    else:
                        ok.append(False)

    walk(scope, _V())
    return bool(found) and all(ok)


def _count_name(node: cst.CSTNode, name: str) -> int:
    count = [0]

    class _V(cst.CSTVisitor):
        def visit_Lambda(self, n) -> bool:
            return False

        def visit_Name(self, n: cst.Name) -> None:
            if n.value == name:
                count[0] += 1

        def visit_Attribute(self, n: cst.Attribute) -> bool:
            walk(n.value, self)
            return False

        def visit_Arg(self, n: cst.Arg) -> bool:
            walk(n.value, self)
            return False

    walk(node, _V())
    return count[0]


class _RenameKeys(cst.CSTTransformer):
    def __init__(self, keys: list[str]) -> None:
        self.keys = keys

    def visit_Lambda(self, node) -> bool:
        return False

    def visit_Arg(self, node: cst.Arg) -> bool:
        return False               # leave_Arg renames the value, never the keyword

    def leave_Arg(self, original: cst.Arg, updated: cst.Arg) -> cst.Arg:
        return updated.with_changes(value=original.value.visit(self))

    def leave_Name(self, original: cst.Name, updated: cst.Name) -> cst.Name:
        if updated.value == RNG_KEY and self.keys:
            return updated.with_changes(value=self.keys.pop(0))
        return updated


def _is_docstring(stmt) -> bool:
    return isinstance(stmt, cst.SimpleStatementLine) and isinstance(stmt.body[0], cst.Expr) \
        and isinstance(stmt.body[0].value, (cst.SimpleString, cst.ConcatenatedString))
