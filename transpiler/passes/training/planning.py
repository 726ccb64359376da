"""Training-loop discovery: which loops train, their step segment, inputs and outputs (LoopPlan)."""
from __future__ import annotations

import libcst as cst

from ...names import dotted, qualify
from .common import AUTOCAST, CLIP_CALLS, LoopPlan, STATE, Unsupported
from .syntax import (assigned_names, attribute_names, bound_names, calls_name, calls_of, children, code_of, count_name,
                     is_assigned_call, model_calls,
                     loop_batch_names, method_stmt, named_calls, names_read, ordered_assigned, reads_of, target_size)


class PlanningMixin:
    """Finds the training loops (visit_For) and plans their train step."""

    def visit_For(self, node: cst.For) -> None:
        if self._in_trainer():
            if not any(method_stmt(s, "backward") for s in self._stmts(node)) and not any(
                    self._stepped(s) for s in self._stmts(node)):
                if calls_name(node.body, {self.trainer.model}):
                    self.eval_loops.add(id(node))
                return
            if id(node) not in self.plans and id(node) not in self.failed:
                self._record(node, node, lambda: self._plan(node, [s for s in self._stmts(node)
                                                                   if method_stmt(s, "backward")],
                                                            [s for s in self._stmts(node) if self._stepped(s)]))
            return
        if not self.optimizers or self.class_depth or id(node) in self.plans:
            return
        stmts = self._stmts(node)
        backward = [s for s in stmts if method_stmt(s, "backward")]
        steps = [s for s in stmts if self._stepped(s)]
        if not backward and steps:
            inner = [s for s in stmts if isinstance(s, cst.For)
                     and any(method_stmt(t, "backward") for t in self._stmts(s))]
            if len(inner) == 1:
                # gradient accumulation: backward() on every micro-batch of an inner loop, one step() after it
                inner_backward = [t for t in self._stmts(inner[0]) if method_stmt(t, "backward")]
                self._record(node, inner[0], lambda: self._plan(inner[0], inner_backward, steps, outer=node))
                return
        if not backward and not steps:
            if calls_name(node.body, self.models):
                self.eval_loops.add(id(node))
            return
        if self.multi and len(backward) == 1 and len(steps) > 1:
            self._record(node, node, lambda: self._plan_joint(node, backward[0], steps))
            return
        if self.multi and (len(backward) > 1 or len(steps) > 1):
            self._record(node, node, lambda: self._plan_pairs(node, backward, steps))
            return
        self._record(node, node, lambda: self._plan(node, backward, steps))

    def _record(self, loop: cst.For, planned: cst.For, make) -> None:
        """Stores the plan ``make()`` returns for ``planned`` (``loop`` or its gradient-accumulation
        loop), or a list of plans (one per model), or the reason ``loop`` is not converted."""
        try:
            found = make()
        except Unsupported as exc:
            self.failed[id(loop)] = str(exc)
            self._covered(loop)
            return
        if isinstance(found, list):
            self.multi_plans[id(planned)] = found
        else:
            self.plans[id(planned)] = found
        for plan in found if isinstance(found, list) else [found]:
            for s in plan.segment + plan.deferred + plan.removed:
                self.segment_ids[id(s)] = plan

    def _plan_function(self, node: cst.FunctionDef) -> None:
        """A function (or a trainer's method) whose own body holds one backward() and one
        optimizer step(), not in a loop: a single-step function called from a loop elsewhere.
        Its body is planned like a loop body; the state is threaded through the function (a
        ``train_state`` parameter, returned first) or kept on the trainer instance."""
        if len(self.def_stack) != 1 or (self.class_depth and not self._in_trainer()) \
                or id(node) in self.plans or id(node) in self.function_failed:
            return
        if not self.class_depth and not self.optimizers:
            return
        stmts = self._stmts(node)
        backward = [s for s in stmts if method_stmt(s, "backward")]
        steps = [s for s in stmts if self._stepped(s)]
        if not backward and not steps:
            return
        try:
            if not self.class_depth and self.multi:
                raise Unsupported("several models with their own optimizers (their training states are not "
                                  "passed to functions)")
            if not self.class_depth:
                info = self.functions.get(node.name.value)
                if info is not None and not info.creates:
                    why = self._call_sites(node.name.value)
                    if why:
                        raise Unsupported(why)
            plan = self._plan(node, backward, steps)
        except Unsupported as exc:
            self.function_failed[id(node)] = str(exc)
            return
        plan.function = True
        self.plans[id(node)] = plan
        for s in plan.segment + plan.deferred + plan.removed:
            self.segment_ids[id(s)] = plan

    def _call_sites(self, name: str) -> str | None:
        """Why the calls of a single-step function cannot take and return the state (None when
        every use of its name is a call that is a statement or an assignment's value)."""
        uses = count_name(self.module_node, name) - 1     # (the def's own name)
        calls = 0
        for node in _walk(self.module_node):
            if isinstance(node, cst.SimpleStatementLine) and len(node.body) == 1:
                small = node.body[0]
                value = small.value if isinstance(small, cst.Expr) else \
                    small.value if isinstance(small, cst.Assign) and len(small.targets) == 1 else None
                if isinstance(value, cst.Call) and isinstance(value.func, cst.Name) and value.func.value == name:
                    calls += 1
        if uses != calls:
            return (f"{name} is used other than as a call that is a statement or an assignment's value "
                    "(its calls must take and return the training state)")
        return None

    def _plan(self, loop: cst.For, backward, steps, outer: cst.For | None = None) -> LoopPlan:
        body = list(self._stmts(loop))
        if len(backward) != 1:
            raise Unsupported(f"{len(backward)} backward() calls in one loop")
        if len(steps) != 1:
            raise Unsupported(f"{len(steps)} optimizer step() calls in one loop")
        b_stmt, s_stmt = backward[0], steps[0]
        loss_expr, b_call = method_stmt(b_stmt, "backward")
        loss_expr = self._unscaled(loss_expr)
        if b_call.args:
            raise Unsupported("backward() with arguments (retain_graph, gradient)")
        optimizer = self._stepped(s_stmt)
        model = self._pairs()[optimizer]
        b_index = body.index(b_stmt)
        accumulate = None
        if outer is None:
            s_index = body.index(s_stmt)
            if s_index < b_index:
                raise Unsupported("step() before backward()")
            between = body[b_index + 1:s_index]
        else:
            obody = list(self._stmts(outer))
            l_index, s_index = obody.index(loop), obody.index(s_stmt)
            if s_index < l_index:
                raise Unsupported("step() before the gradient-accumulation loop")
            if not (isinstance(loop.iter, cst.Call) and dotted(loop.iter.func) == "range"
                    and len(loop.iter.args) == 1 and loop.iter.args[0].keyword is None) or loop.orelse is not None:
                raise Unsupported("gradient accumulation over a loop that is not `for _ in range(k)`")
            if any(s is not b_stmt and (method_stmt(s, "step") or isinstance(s, cst.For)) for s in body):
                raise Unsupported("the gradient-accumulation loop holds other loops or step() calls")
            accumulate = loop.iter.args[0].value
            between = obody[l_index + 1:s_index]
            if any(body.index(s) > b_index for s in body if calls_name(s, {model})):
                raise Unsupported("the model is called after backward() in the accumulation loop")
        removed = [b_stmt, s_stmt]
        clips = []
        for stmt in between:
            if method_stmt(stmt, "unscale_") and dotted(method_stmt(stmt, "unscale_")[0]) in self.scalers:
                removed.append(stmt)
                continue
            kind = self._clip_kind(stmt)
            if kind is None and not (method_stmt(stmt, "zero_grad") and dotted(method_stmt(stmt, "zero_grad")[0])
                                     in (optimizer, model)):
                reason = self._not_read_only(stmt)
                if reason:
                    raise Unsupported(f"a statement between backward() and step() {reason}")
                continue     # reads the step's results (loss.item(), printing): runs after train_step
            if kind is not None:
                clips.append((stmt, kind))
                removed.append(stmt)
        for stmt in body + (list(self._stmts(outer)) if outer is not None else []):
            z = method_stmt(stmt, "zero_grad")
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
                if segment and set(assigned_names(stmt)) & (reads_of(segment) | tainted):
                    raise Unsupported("a statement inside the forward pass rebinds one of its names")
                if calls_name(stmt, {model}) and early is None and stmt.body.body:
                    early = stmt.body.body[0]
                    if not isinstance(early, cst.SimpleStatementLine):
                        raise Unsupported("a no_grad block that calls the model starts with a compound statement")
                continue
            reads = names_read(stmt)
            uses_model = calls_name(stmt, {model})
            if not (uses_model or reads & tainted):
                if segment and set(assigned_names(stmt)) & (reads_of(segment) | tainted):
                    raise Unsupported("a statement inside the forward pass rebinds one of its names")
                continue
            if not isinstance(stmt, cst.SimpleStatementLine):
                raise Unsupported("the forward pass or loss is computed inside a nested block")
            small = stmt.body[0] if len(stmt.body) == 1 else None
            if isinstance(small, cst.Assign) and all(bound_names(t.target) and len(bound_names(t.target)) ==
                                                     target_size(t.target) for t in small.targets) \
                    and ".item()" not in code_of(small.value):
                segment.append(stmt)
                tainted |= set(assigned_names(stmt))
            elif not uses_model and isinstance(small, (cst.AugAssign, cst.Expr, cst.Assign)):
                deferred.append(stmt)
            else:
                raise Unsupported("the model is called in a statement that is not a plain assignment")
        if not segment:
            raise Unsupported("no forward pass found before backward()")
        loss_names = names_read(loss_expr)
        if not loss_names & tainted:
            raise Unsupported("the loss does not depend on the model's output")
        model_calls = calls_of(segment, model)
        if len(model_calls) != 1:
            raise Unsupported(f"{len(model_calls)} model calls in the forward pass")
        if self.batchnorm and not is_assigned_call(segment, model):
            raise Unsupported("with BatchNorm the model call must be a statement of its own (out = model(x))")
        call = model_calls[0]
        if any(a.keyword is not None or a.star for a in call.args):
            raise Unsupported("model called with keyword or starred arguments")
        before: set[str] = set()     # names the forward pass computes before the model call
        for stmt in segment:
            if calls_of([stmt], model):
                break
            before |= set(assigned_names(stmt))
        if any(names_read(a.value) & before for a in call.args):
            raise Unsupported("the model's inputs are computed inside the forward pass")
        if any(self._samples(a.value) for a in call.args):
            raise Unsupported("a random op in the model's arguments (the first batch initialises the model)")
        # host statements left between the forward pass and backward() would run after train_step:
        # those binding a name that a later statement of the forward pass, or the loss, reads (and
        # the statements these read from) move before the call
        start = body.index(segment[0])
        needed = names_read(loss_expr)
        hoisted = []
        for i in range(b_index - 1, start, -1):
            stmt = body[i]
            if stmt in segment:
                needed |= names_read(stmt)
                continue
            if stmt in removed:
                continue
            bound = set(assigned_names(stmt)) & needed
            if not bound:
                continue
            if stmt in deferred or not isinstance(stmt, cst.SimpleStatementLine):
                raise Unsupported(f"{', '.join(sorted(bound))} is computed after the forward pass starts and read "
                                  "by the loss")
            hoisted.insert(0, stmt)
            needed |= names_read(stmt)
        plan = LoopPlan(step_name="", model=model, optimizer=optimizer, segment=segment, deferred=deferred,
                        removed=removed, clips=clips, loss=loss_expr)
        if self._in_trainer():
            plan.trainer, plan.state = self.trainer.name, "self." + STATE
            clip_args = [a.value for stmt, _ in clips for a in stmt.body[0].value.args[1:]]
            plan.self_attrs = self._self_reads(segment + clip_args, model, optimizer)
        plan.init_args = list(call.args)
        if hoisted and early is not None:
            raise Unsupported(f"{', '.join(sorted(assigned_names(hoisted[0])))} is computed after the forward pass "
                              "starts (and the model runs on the host before it)")
        plan.hoisted = hoisted
        self.track_ids |= {id(h) for h in hoisted}
        reads = reads_of(segment)
        # outputs: segment names read after the segment
        later = set()
        for stmt in body + (list(self._stmts(outer)) if outer is not None else []):
            if stmt in segment or stmt in removed or stmt is loop:
                continue
            later |= names_read(stmt)
        fn = self._function()
        if fn is not None and fn in self.functions:
            later |= self._once("reads", self.functions[fn].node.body, names_read) - reads_of(segment)
        loss_name = dotted(loss_expr) if isinstance(loss_expr, cst.Name) else None
        outputs = [n for n in ordered_assigned(segment) if n in later and n != loss_name]
        plan.outputs = [loss_name or "loss_value", *outputs]
        function = isinstance(loop, cst.FunctionDef)
        plan.boundary = [] if function else loop_batch_names(loop)
        plan.local = self._local_names(outer or loop)
        plan.accumulate = accumulate
        plan.early = early
        if early is not None:
            self.track_ids.add(id(early))
        plan.loop_bound = set(assigned_names(loop.body if function else (outer or loop)))
        plan.scope = self._scope_node()
        return plan

    def _samples(self, node) -> bool:
        """Whether ``node`` calls a random op (one whose converted form takes a key)."""
        for c in _walk(node):
            if isinstance(c, cst.Call):
                entry = self.ctx.tables.functions.get(qualify(c.func, self.ctx.aliases) or "")
                if entry is not None and any("rng_key" in t for t in entry.templates or ()):
                    return True
        return False

    def _self_reads(self, segment, model: str, optimizer: str) -> list[str]:
        """The ``self.X`` values a trainer's step segment reads besides calling the model (a
        loss module, a coefficient): static arguments of train_step."""
        out: list[str] = []
        model_funcs = {id(c.func) for s in segment for c in model_calls(s, {model})}

        def visit(n, parent_attr: bool):
            if isinstance(n, cst.Attribute) and isinstance(n.value, cst.Name) and n.value.value == "self":
                if id(n) in model_funcs:
                    return
                text = dotted(n)
                if text in (model, optimizer) or n.attr.value in self.trainer.methods:
                    raise Unsupported(f"the forward pass uses {text} other than by calling the model")
                if parent_attr:
                    raise Unsupported(f"the forward pass reads an attribute of {text}")
                if n.attr.value not in out:
                    out.append(n.attr.value)
                return
            if isinstance(n, cst.Name) and n.value == "self":
                raise Unsupported("the forward pass uses self other than through its attributes")
            if isinstance(n, cst.Attribute):
                visit(n.value, True)
                return
            if isinstance(n, cst.Call):
                visit(n.func, False)
                for a in n.args:
                    visit(a.value, False)
                return
            for child in children(n):
                visit(child, False)
        for stmt in segment:
            visit(stmt, False)
        return out

    def _not_read_only(self, stmt) -> str | None:
        """Why a statement between backward() and step() cannot run after the converted train
        step (None when it only reads the step's results: ``total += loss.item()``, printing,
        logging). In torch it sees the gradients and the parameters before the update: it must
        not touch a model, an optimizer, a scheduler, a GradScaler or ``.grad``, nor call a
        function that uses the model."""
        held = self.models | set(self.optimizers) | set(self.schedulers) | self.scalers
        reads = names_read(stmt)
        if self._in_trainer():
            mine = {self.trainer.model, self.trainer.optimizer}
            used = sorted({d for a in _walk(stmt) if isinstance(a, cst.Attribute)
                           and (d := dotted(a)) is not None and any(d == m or d.startswith(m + ".") for m in mine)})
            if used:
                return f"uses {', '.join(used)} (it sees the parameters or gradients before the update)"
        if reads & held:
            return f"uses {', '.join(sorted(reads & held))} (it sees the parameters or gradients before the update)"
        if "grad" in attribute_names(stmt):
            return "reads .grad (the gradients exist only inside train_step)"
        users = {f for f, info in self.functions.items() if info.needs}
        called = {c.func.value for c in named_calls(stmt)} & users
        if called:
            return f"calls {', '.join(sorted(called))}(), which uses the model"
        return None

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
        m = method_stmt(stmt, "step")
        if m is None:
            return None
        pairs = self._pairs()
        if dotted(m[0]) in pairs and not m[1].args:
            return dotted(m[0])
        if dotted(m[0]) in self.scalers and len(m[1].args) == 1 and dotted(m[1].args[0].value) in pairs:
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
        if self._in_trainer():
            return self._function_locals(self.def_stack[0])
        fn = self._function()
        if fn is not None and fn in self.functions:
            return self._function_locals(self.functions[fn].node)
        # module-level loop: names bound by the loop itself
        return set(assigned_names(loop))

    def _function_locals(self, fn: cst.FunctionDef) -> set[str]:
        """The names a function's parameters and body bind."""
        return set(self._once("locals", fn, lambda f: set(assigned_names(f.params)) | set(assigned_names(f.body))))


def _walk(node: cst.CSTNode):
    """Every node of ``node`` (depth first)."""
    stack = [node]
    while stack:
        n = stack.pop()
        yield n
        stack.extend(reversed(children(n)))
