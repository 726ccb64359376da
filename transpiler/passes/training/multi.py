"""Several models with their own optimizers in one loop (a GAN): one train step and TrainState
per model."""
from __future__ import annotations

import libcst as cst

from ...names import dotted
from .common import LoopPlan, Unsupported
from .syntax import (assigned_names, bound_names, calls_name, calls_of, code_of, loop_batch_names, method_stmt,
                     names_read, ordered_assigned)


class MultiModelMixin:
    """Plans and rewrites loops that train several models (one train step per backward/step pair)."""

    def _plan_pairs(self, loop: cst.For, backward, steps) -> list[LoopPlan]:
        """A loop with one backward()/step() pair per model (a GAN: the discriminator's step,
        then the generator's): one train step per pair. Each step's segment is the slice of
        the statements before its backward() that its loss depends on and that call a model;
        models other than the stepped one are applied with their own state (constant there).
        Exact when no model called in a segment is stepped between that call and the
        backward() (the torch forward pass saw the same parameters)."""
        if len(backward) != len(steps):
            raise Unsupported(f"{len(backward)} backward() calls and {len(steps)} step() calls")
        body = list(self._stmts(loop))
        removed_all = set()
        pairs = []
        for b_stmt, s_stmt in zip(backward, steps):
            loss_expr, b_call = method_stmt(b_stmt, "backward")
            loss_expr = self._unscaled(loss_expr)
            if b_call.args:
                raise Unsupported("backward() with arguments (retain_graph, gradient)")
            optimizer = self._stepped(s_stmt)
            b_index, s_index = body.index(b_stmt), body.index(s_stmt)
            if s_index < b_index:
                raise Unsupported("step() before backward()")
            if any(not (method_stmt(x, "zero_grad") and dotted(method_stmt(x, "zero_grad")[0]) in self.optimizers)
                   for x in body[b_index + 1:s_index]):
                raise Unsupported("statements between backward() and step() other than zero_grad()")
            pairs.append((b_stmt, s_stmt, loss_expr, optimizer))
            removed_all |= {id(b_stmt), id(s_stmt)}
        if len({p[3] for p in pairs}) != len(pairs):
            raise Unsupported("one optimizer stepped twice in a loop")
        if self.batchnorm:
            raise Unsupported("several models with BatchNorm in one loop")
        zero = [x for x in body if method_stmt(x, "zero_grad") and dotted(method_stmt(x, "zero_grad")[0])
                in (set(self.optimizers) | self.models)]
        removed_all |= {id(x) for x in zero}
        step_at = {self.optimizers[p[3]]: body.index(p[1]) for p in pairs}
        plans, claimed = [], set()
        fn = self._function()
        if fn is not None and fn in self.functions and not self.functions[fn].creates:
            raise Unsupported("several models trained in a function that does not build their optimizers")
        for b_stmt, s_stmt, loss_expr, optimizer in pairs:
            model = self.optimizers[optimizer]
            b_index = body.index(b_stmt)
            candidates = [x for x in body[:b_index] if id(x) not in removed_all]
            tainted: set[str] = set()
            marked = []
            for x in candidates:
                if calls_name(x, self.models) or names_read(x) & tainted:
                    marked.append(x)
                    tainted |= set(assigned_names(x))
            needed = set(names_read(loss_expr))
            segment = []
            for x in reversed(candidates):
                if x in marked and set(assigned_names(x)) & needed:
                    segment.insert(0, x)
                    needed |= names_read(x)
            if not segment or not calls_of(segment, model):
                raise Unsupported(f"no forward pass of {model} before its backward()")
            for x in segment:
                small = x.body[0] if isinstance(x, cst.SimpleStatementLine) and len(x.body) == 1 else None
                if not (isinstance(small, cst.Assign) and all(bound_names(t.target) for t in small.targets)) \
                        or ".item()" in code_of(small.value):
                    raise Unsupported("the forward pass of a step is not made of plain assignments")
                for m in self.models:
                    if calls_name(x, {m}) and m in step_at and body.index(x) < step_at[m] < b_index:
                        raise Unsupported(f"{m} is stepped between its forward pass and the backward() that uses it")
                for call in calls_of([x], model) + [c for m in self.models for c in calls_of([x], m)]:
                    if any(a.keyword is not None or a.star for a in call.args):
                        raise Unsupported("model called with keyword or starred arguments")
            removed = [b_stmt, s_stmt] + [z for z in zero if z not in claimed]
            claimed |= set(removed)
            plan = LoopPlan(step_name="", model=model, optimizer=optimizer, segment=segment, deferred=[],
                            removed=removed, clips=[], loss=loss_expr)
            plan.local = self._local_names(loop)
            plan.loop_bound = set(assigned_names(loop))
            plan.boundary = loop_batch_names(loop)
            plans.append(plan)
        in_segments = {id(x) for p in plans for x in p.segment}
        host = [x for x in body if id(x) not in in_segments and id(x) not in removed_all]
        for plan in plans:
            assigned = set(ordered_assigned(plan.segment))
            b_index = body.index(plan.removed[0])
            later = set()
            for x in host:
                reads = names_read(x) & assigned
                if reads and body.index(x) < b_index:
                    raise Unsupported(f"{', '.join(sorted(reads))} computed in a training step is read before it")
                later |= reads
            loss_name = dotted(plan.loss) if isinstance(plan.loss, cst.Name) else None
            plan.outputs = [loss_name or "loss_value",
                            *[n for n in ordered_assigned(plan.segment) if n in later and n != loss_name]]
        # where each model's state is created: its first call whose arguments the host computes
        self.multi_init = getattr(self, "multi_init", {})
        for m in sorted({p.model for p in plans}):
            found = None
            for x in body:
                if id(x) in in_segments:
                    for call in calls_of([x], m):
                        seg_assigned = {n for p in plans for y in p.segment for n in assigned_names(y)}
                        if not any(names_read(a.value) & seg_assigned for a in call.args):
                            found = (x, call)
                            break
                if found:
                    break
            if found is None:
                raise Unsupported(f"no call of {m} on host values to initialise it from")
            self.multi_init[m] = found
        return plans

    def _leave_multi(self, original: cst.For, updated: cst.For, plans: list[LoopPlan]):
        names = []
        for plan in plans:
            plan.step_name = self._step_name()
            names.append(plan.step_name)
            self._inputs(plan)
            others = [self._state(m) for m in sorted(self.models)
                      if m != plan.model and calls_of(plan.segment, m)]
            plan.inputs = others + plan.inputs
            self.step_sources.append(self._train_step_source(plan))
        drop = {id(self.converted[id(s)].body[0]) for p in plans for s in p.removed + p.segment
                if id(s) in self.converted}
        creates = {}   # id(converted first statement) → [create blocks]
        order = sorted(self.multi_init, key=lambda m: sorted(self.models).index(m))
        for i, m in enumerate(order):
            stmt, call = self.multi_init[m]
            conv = self.converted.get(id(stmt))
            conv_calls = calls_of([conv], m) if conv is not None else []
            args = ", ".join(code_of(a.value) for a in (conv_calls[0].args if conv_calls else call.args))
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
