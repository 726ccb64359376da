"""The pre-scan (visit_Module): models, optimizers, schedulers, loss modules, seeds and the
functions that touch the training state."""
from __future__ import annotations

import libcst as cst

from ...names import dotted, qualify
from ...walk import walk
from .common import BATCHNORM_PREFIXES, FunctionInfo, OPTIMIZER_PREFIX, SCALERS, SCHEDULER_PREFIX
from .optimizers import lr_write, param_groups_owner, parameter_selector
from .syntax import calls_name, code_of


class ScanMixin:
    """The pre-scan in visit_Module, before any node is converted."""

    def visit_Module(self, node: cst.Module) -> None:
        self.module_node = node
        self._scan_trainers(node)
        scan = _Scan(self)
        walk(node, scan)
        if self.optimizers or (scan.sampling and None not in self.seed_scopes):
            scan.walk_classes()     # (what class bodies call matters only then)
        self._keyed_functions(scan)
        if not self.optimizers:
            return      # (BatchNorm and sampling in the models matter to train steps only)
        for call in scan.class_calls:
            self._module_call(call)
        for info in self.functions.values():
            self._mark_function(info)
        changed = True
        while changed:
            changed = False
            for name, info in self.functions.items():
                if info.creates:
                    continue
                for callee in info.called:
                    other = self.functions.get(callee)
                    if other is None or other is info:
                        continue
                    if other.needs and not info.needs:
                        info.needs = changed = True
                    if other.returns and not info.returns:
                        info.returns = changed = True

    def _keyed_functions(self, scan: "_Scan") -> None:
        """Functions with random ops (or calls of such functions) that every caller calls from
        a scope seeded with ``torch.manual_seed`` (a key in scope) or from another such
        function: they take a new ``rng_key`` parameter, split by the caller before the call
        (with a module-level seed, functions split the global key instead)."""
        if None in self.seed_scopes:
            return
        sampling = set(scan.sampling)
        changed = True
        while changed:
            changed = False
            for caller_fn in list(self.functions):
                if caller_fn not in sampling and any(c in sampling for c in scan.calls.get(caller_fn, ())):
                    sampling.add(caller_fn)
                    changed = True
        keyed = {f for f in sampling if f not in self.seed_scopes and f in self.functions and scan.callers.get(f)}
        changed = True
        while changed:
            changed = False
            for f in list(keyed):
                if not scan.callers[f] <= (self.seed_scopes | keyed) - {None}:
                    keyed.discard(f)
                    changed = True
        self.keyed = keyed

    def _calls_model(self, info: FunctionInfo) -> bool:
        """Whether a function calls one of the models (``calls_name(body, self.models)``)."""
        if any("." in m for m in self.models):
            return calls_name(info.node.body, self.models)
        return not info.called.isdisjoint(self.models)

    def _body_text(self, info: FunctionInfo) -> str:
        if info.text is None:
            info.text = code_of(info.node.body)
        return info.text

    def _mark_function(self, info: FunctionInfo) -> None:
        if info.creates:
            return
        text = self._body_text(info)
        if self._calls_model(info) or any(f"{m}.state_dict(" in text for m in self.models):
            info.needs = True
        if any(f"{s}.step(" in text for s in self.schedulers) or (
                ".backward(" in text and any(f"{o}.step(" in text for o in self.optimizers)):
            info.needs = info.returns = True

    def _module_call(self, n: cst.Call) -> None:
        """A call in a class body: BatchNorm layers, sampling ops."""
        q = qualify(n.func, self.ctx.aliases) or ""
        if q.startswith(BATCHNORM_PREFIXES):
            self.batchnorm = True
        entry = self.ctx.tables.functions.get(q)
        if entry is not None and "dropout" not in q and any("rng_key" in t for t in entry.templates or ()):
            self.sample_stream = True    # the module draws from flax's "sample" rng stream


class _ClassCalls(cst.CSTVisitor):
    """The calls in a class body: all of them (looked at when there is an optimizer), and
    the calls of plain names, recorded as made by the class (and by the function the class
    is in)."""

    def __init__(self, scan: "_Scan", label: str, function: FunctionInfo | None) -> None:
        self.scan, self.label, self.function = scan, label, function

    def visit_Call(self, n: cst.Call) -> None:
        self.scan.class_calls.append(n)
        if type(n.func) is cst.Name:
            self.scan.callers.setdefault(n.func.value, set()).add(self.label)
            if self.function is not None:
                self.function.called.add(n.func.value)


class _Scan(cst.CSTVisitor):
    """Records on the rule what the pre-scan finds (statement by statement, nested functions
    with the top-level function they are in)."""

    def __init__(self, rule) -> None:
        self.rule = rule
        self.fn: str | None = None
        self.classes: list[tuple[cst.ClassDef, FunctionInfo | None]] = []   # (class, the function it is in)
        self.class_calls: list[cst.Call] = []     # the calls in class bodies (BatchNorm, sampling)
        self.sampling: set[str] = set()           # top-level functions holding a random op
        self.calls: dict[str, set[str]] = {}      # function → the names it calls
        self.callers: dict[str, set] = {}         # name → the functions (None: module) calling it

    def visit_ClassDef(self, n: cst.ClassDef) -> bool:
        self.classes.append((n, self.rule.functions[self.fn] if self.fn is not None else None))
        return False

    def walk_classes(self) -> None:
        """The calls in the class bodies (a method calling a sampling function has no key to
        give it)."""
        for cls, function in self.classes:
            walk(cls.body, _ClassCalls(self, f"class {cls.name.value}", function))

    def visit_FunctionDef(self, n: cst.FunctionDef) -> bool:
        if self.fn is None:
            self.rule.functions[n.name.value] = FunctionInfo(n)
            saved, self.fn = self.fn, n.name.value
            walk(n.body, self)
            self.fn = saved
            return False
        return True

    def visit_For(self, n: cst.For) -> None:
        opt = param_groups_owner(n.iter)
        if opt is not None and lr_write(n) is not None:
            self.rule.lr_written.add(opt)

    def visit_Assign(self, n: cst.Assign) -> None:
        if len(n.targets) == 1 and isinstance(n.targets[0].target, cst.Name):
            if parameter_selector(n.value) is not None:
                self.rule.selectors[n.targets[0].target.value] = parameter_selector(n.value)[0]
            elif isinstance(n.value, cst.List):
                self.rule.lists[n.targets[0].target.value] = n.value
        if len(n.targets) != 1 or not isinstance(n.targets[0].target, cst.Name) or not isinstance(n.value, cst.Call):
            return
        name = n.targets[0].target.value
        q = qualify(n.value.func, self.rule.ctx.aliases) or ""
        if q in SCALERS:
            self.rule.scalers.add(name)
        if q.startswith(SCHEDULER_PREFIX):
            if n.value.args and isinstance(n.value.args[0].value, cst.Name):
                self.rule.schedulers[name] = n.value.args[0].value.value
                if q == "torch.optim.lr_scheduler.ReduceLROnPlateau":
                    self.rule.plateau.add(name)
        elif q.startswith(OPTIMIZER_PREFIX) and q in self.rule.ctx.tables.functions:
            model = None
            if n.value.args:
                first = n.value.args[0].value
                if isinstance(first, cst.Call) and isinstance(first.func, cst.Attribute) \
                        and first.func.attr.value == "parameters" and not first.args:
                    model = dotted(first.func.value)
            if model is None and n.value.args and not n.value.args[0].keyword:
                groups = self.rule._parameter_groups(n.value.args[0].value)
                if groups is not None:
                    model = groups[0]
                    self.rule.groups[name] = groups[1]
            if model is not None:
                self.rule.optimizers[name] = model
                self.rule.models.add(model)
                if self.fn is not None:
                    self.rule.functions[self.fn].creates = True
        elif q in self.rule.ctx.tables.functions and self.rule.ctx.tables.functions[q].key.endswith("Loss"):
            self.rule.losses.add(name)

    def visit_Call(self, n: cst.Call) -> None:
        q = qualify(n.func, self.rule.ctx.aliases) or ""
        if isinstance(n.func, cst.Name):
            self.callers.setdefault(n.func.value, set()).add(self.fn)
            if self.fn is not None:
                self.calls.setdefault(self.fn, set()).add(n.func.value)
                self.rule.functions[self.fn].called.add(n.func.value)
        entry = self.rule.ctx.tables.functions.get(q)
        if self.fn is not None and entry is not None and any("rng_key" in t for t in entry.templates or ()):
            self.sampling.add(self.fn)
        if q.startswith(BATCHNORM_PREFIXES):
            self.rule.batchnorm = True
        if q in ("torch.manual_seed", "torch.random.manual_seed") and n.args:
            self.rule.seed_scopes.add(self.fn)
            if isinstance(n.args[0].value, cst.Integer):
                self.rule.seed = n.args[0].value.value
