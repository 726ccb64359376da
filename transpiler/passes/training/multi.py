"""Several models with their own optimizers in one loop (a GAN): one train step and TrainState
per model."""
from __future__ import annotations

import libcst as cst

from ...names import dotted
from ...walk import transform
from .common import LoopPlan, RNG_KEY, Unsupported
from .rng import RenameKeys
from .syntax import (assigned_names, bound_names, calls_name, calls_of, code_of, count_name, loop_batch_names,
                     method_stmt, names_read, ordered_assigned)


class JointModelCall(cst.CSTTransformer):
    """``actor(x)`` → ``actor_state.apply_fn({"params": actor_params}, x, ...)`` for each model
    differentiated in a joint step; other models with their own (constant) parameters."""

    def __init__(self, rule, stepped: list[str], sample: bool) -> None:
        self.rule, self.stepped, self.sample = rule, stepped, sample

    def leave_Call(self, original: cst.Call, updated: cst.Call) -> cst.BaseExpression:
        if not isinstance(original.func, cst.Name) or original.func.value not in self.rule.models:
            return updated
        m = original.func.value
        st = self.rule._state(m)
        key = (self.stepped[0] if m not in self.stepped else m).replace(".", "_")
        params = f"{key}_params" if m in self.stepped else f"{st}.params"
        rngs = f'{{"dropout": {key}_dropout_rng' + (f', "sample": {key}_sample_rng}}' if self.sample else "}")
        args = ", ".join(code_of(a.value) for a in updated.args)
        return cst.parse_expression(f'{st}.apply_fn({{"params": {params}}}, {args}, train=True, rngs={rngs})')


class MultiModelMixin:
    """Plans and rewrites loops that train several models (one train step per backward/step pair)."""

    def _check_several_models(self) -> None:
        """What every loop training several models needs (raises Unsupported)."""
        if self.batchnorm:
            raise Unsupported("several models with BatchNorm in one loop")
        fn = self._function()
        if fn is not None and fn in self.functions and not self.functions[fn].creates:
            raise Unsupported("several models trained in a function that does not build their optimizers")

    def _zero_grads(self, body) -> list:
        """The ``X.zero_grad()`` statements of ``body`` on an optimizer or a model."""
        return [x for x in body if method_stmt(x, "zero_grad") and dotted(method_stmt(x, "zero_grad")[0])
                in (set(self.optimizers) | self.models)]

    def _check_forward_statement(self, x) -> None:
        """A statement of a forward pass moved into a train step: one plain assignment, no
        ``.item()``, models called with plain positional arguments (raises Unsupported)."""
        small = x.body[0] if isinstance(x, cst.SimpleStatementLine) and len(x.body) == 1 else None
        if not (isinstance(small, cst.Assign) and all(bound_names(t.target) for t in small.targets)) \
                or ".item()" in code_of(small.value):
            raise Unsupported("the forward pass is not made of plain assignments")
        for call in [c for m in self.models for c in calls_of([x], m)]:
            if any(a.keyword is not None or a.star for a in call.args):
                raise Unsupported("model called with keyword or starred arguments")

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
        self._check_several_models()
        zero = self._zero_grads(body)
        removed_all |= {id(x) for x in zero}
        step_at = {self.optimizers[p[3]]: body.index(p[1]) for p in pairs}
        plans, claimed = [], set()
        for b_stmt, s_stmt, loss_expr, optimizer in pairs:
            model = self.optimizers[optimizer]
            b_index = body.index(b_stmt)
            candidates = [x for x in body[:b_index] if id(x) not in removed_all]
            segment = self._loss_slice(candidates, loss_expr)
            if not segment or not calls_of(segment, model):
                raise Unsupported(f"no forward pass of {model} before its backward()")
            for x in segment:
                self._check_forward_statement(x)
                for m in self.models:
                    if calls_name(x, {m}) and m in step_at and body.index(x) < step_at[m] < b_index:
                        raise Unsupported(f"{m} is stepped between its forward pass and the backward() that uses it")
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
        self._find_inits(body, plans, sorted({p.model for p in plans}))
        return plans

    def _loss_slice(self, candidates: list, loss_expr) -> list:
        """The statements among ``candidates`` that the loss depends on and that call a model
        or read a value computed from one (a step's forward pass), in order."""
        tainted: set[str] = set()
        marked = []
        for x in candidates:
            if calls_name(x, self.models) or names_read(x) & tainted:
                marked.append(x)
                tainted |= set(assigned_names(x))
        needed = set(names_read(loss_expr))
        segment: list = []
        for x in reversed(candidates):
            if x in marked and set(assigned_names(x)) & needed:
                segment.insert(0, x)
                needed |= names_read(x)
        return segment

    def _find_inits(self, body, plans: list[LoopPlan], models) -> None:
        """Where each model's state is created: before its first call whose arguments the host
        computes, in a step's forward pass or in a ``no_grad`` block before it (a rollout)."""
        self.multi_init = getattr(self, "multi_init", {})
        in_segments = {id(x) for p in plans for x in p.segment}
        seg_assigned = {n for p in plans for y in p.segment for n in assigned_names(y)}
        for m in models:
            found = None
            for x in body:
                if id(x) in in_segments:
                    candidates = [x]
                elif isinstance(x, cst.With) and self._no_grad(x) and isinstance(x.body, cst.IndentedBlock):
                    candidates = [y for y in x.body.body if isinstance(y, cst.SimpleStatementLine)]
                else:
                    continue
                for y in candidates:
                    for call in calls_of([y], m):
                        if not any(names_read(a.value) & seg_assigned for a in call.args):
                            found = (y, call)
                            break
                    if found:
                        break
                if found:
                    if id(found[0]) not in in_segments:
                        self.track_ids.add(id(found[0]))    # host code: leave_SimpleStatementLine records it
                    break
            if found is None:
                raise Unsupported(f"no call of {m} on host values to initialise it from")
            self.multi_init[m] = found

    def _plan_joint(self, loop: cst.For, b_stmt, steps) -> LoopPlan:
        """One loss, one backward(), one step() per model (an actor-critic whose loss sums the
        policy and value terms): one train step differentiating the loss with respect to every
        stepped model's parameters, each optimizer applied to its own model's state."""
        body = list(self._stmts(loop))
        loss_expr, b_call = method_stmt(b_stmt, "backward")
        loss_expr = self._unscaled(loss_expr)
        if b_call.args:
            raise Unsupported("backward() with arguments (retain_graph, gradient)")
        optimizers = [self._stepped(s) for s in steps]
        models = [self.optimizers[o] for o in optimizers]
        if len(set(optimizers)) != len(optimizers) or len(set(models)) != len(models):
            raise Unsupported("one optimizer or model stepped twice on one backward()")
        self._check_several_models()
        b_index = body.index(b_stmt)
        last = max(body.index(s) for s in steps)
        if min(body.index(s) for s in steps) < b_index:
            raise Unsupported("step() before backward()")
        zero = self._zero_grads(body)
        for x in body[b_index + 1:last]:
            if x in steps or x in zero:
                continue
            if self._clip_kind(x) is not None:
                raise Unsupported("gradient clipping with several optimizers stepped on one backward()")
            reason = self._not_read_only(x)
            if reason:
                raise Unsupported(f"a statement between backward() and step() {reason}")
        removed = [b_stmt, *steps, *zero]
        candidates = [x for x in body[:b_index] if x not in removed
                      and not (isinstance(x, cst.With) and self._no_grad(x))]
        segment = self._loss_slice(candidates, loss_expr)
        for m in models:
            if not calls_of(segment, m):
                raise Unsupported(f"no forward pass of {m} before backward(): the loss does not depend on it")
        for x in segment:
            self._check_forward_statement(x)
        assigned = set(ordered_assigned(segment))
        later = set()
        for x in body:
            if x in segment or x in removed:
                continue
            reads = names_read(x) & assigned
            if reads and body.index(x) < b_index:
                raise Unsupported(f"{', '.join(sorted(reads))} computed in the training step is read before it")
            later |= reads
        plan = LoopPlan(step_name="", model=models[0], optimizer=optimizers[0], segment=segment, deferred=[],
                        removed=removed, clips=[], loss=loss_expr)
        plan.joint = list(zip(models, optimizers))
        loss_name = dotted(loss_expr) if isinstance(loss_expr, cst.Name) else None
        plan.outputs = [loss_name or "loss_value", *[n for n in ordered_assigned(segment) if n in later
                                                     and n != loss_name]]
        plan.local = self._local_names(loop)
        plan.loop_bound = set(assigned_names(loop))
        plan.boundary = loop_batch_names(loop)
        self._find_inits(body, [plan], sorted(self.models & set(models)))
        return [plan]

    def _leave_multi(self, original: cst.For, updated: cst.For, plans: list[LoopPlan]):
        names = []
        for plan in plans:
            plan.step_name = self._step_name()
            names.append(plan.step_name)
            self._inputs(plan)
            stepped = [m for m, _ in plan.joint] or [plan.model]
            others = [self._state(m) for m in sorted(self.models)
                      if m not in stepped and calls_of(plan.segment, m)]
            plan.inputs = [self._state(m) for m in stepped[1:]] + others + plan.inputs
            self.step_sources.append(self._joint_step_source(plan) if plan.joint else self._train_step_source(plan))
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
            states = [st, *(self._state(m) for m, _ in plan.joint[1:])]
            calls[id(b_conv.body[0]) if b_conv is not None else None] = cst.parse_statement(
                f"{', '.join([*states, *plan.outputs])} = {plan.step_name}({call_args})\n")
        self.ctx.emits |= {"create_train_state", "jax"}
        body: list[cst.BaseStatement] = []
        if plans[0].boundary:
            body.append(cst.parse_statement(f"{', '.join(plans[0].boundary)} = "
                                            f"{', '.join(f'to_jax({n})' for n in plans[0].boundary)}\n"))
            self.ctx.emits.add("to_jax")
        for stmt in updated.body.body:
            inner = stmt.body[0] if isinstance(stmt, cst.SimpleStatementLine) and stmt.body else None
            if inner is not None and id(inner) in creates:
                blocks = creates.pop(id(inner))
                if id(inner) not in drop:     # before a host statement (a rollout): it keeps its comments
                    blocks[0] = blocks[0].with_changes(leading_lines=stmt.leading_lines)
                    stmt = stmt.with_changes(leading_lines=[])
                body += blocks
            if inner is not None and id(inner) in drop:
                if id(inner) in calls:
                    body.append(calls[id(inner)])
                continue
            body.append(stmt)
        if len(plans) == 1 and plans[0].joint:
            self.ctx.report(original, "JP601", f"training loop → jitted {names[0]}: one loss differentiated with "
                            f"respect to the parameters of {', '.join(m for m, _ in plans[0].joint)} (one "
                            "jax.value_and_grad), each optimizer applied to its own model's TrainState")
            return updated.with_changes(body=updated.body.with_changes(body=body))
        self.ctx.report(original, "JP601", f"training loop → jitted {', '.join(names)}: one train step per "
                        "model and optimizer, each model with its own TrainState")
        return updated.with_changes(body=updated.body.with_changes(body=body))

    def _joint_step_source(self, plan: LoopPlan) -> str:
        """train_step of a joint plan: ``jax.value_and_grad`` over every stepped model's
        parameters (``argnums``), then each model's optimizer on its own gradients."""
        stepped = [m for m, _ in plan.joint]
        keys = [m.replace(".", "_") for m in stepped]
        states = [self._state(m) for m in stepped]
        segment = [self.converted[id(s)] for s in plan.segment]
        sampling = self.sample_stream or any(count_name(stmt, RNG_KEY) for stmt in segment)
        replacer = JointModelCall(self, stepped, sampling)
        lines = []
        for stmt in segment:
            new = transform(stmt, replacer)
            if count_name(new, RNG_KEY):
                new = transform(new, RenameKeys([f"{keys[0]}_sample_rng"] * count_name(new, RNG_KEY)))
            text = code_of(new.with_changes(leading_lines=[])).rstrip("\n")
            lines += ["        " + line for line in text.splitlines()]
        loss_value = code_of(self._converted_loss(plan))
        aux = list(plan.outputs[1:])
        aux_tuple = "(" + ", ".join(aux) + ("," if len(aux) == 1 else "") + ")"
        static = tuple(plan.static)
        decorator = f"@partial(jax.jit, static_argnames={static!r})" if static else "@jax.jit"
        if static:
            self.ctx.emits.add("partial")
        out = [decorator, f"def {plan.step_name}({', '.join([states[0], *plan.inputs])}):"]
        for k, st in zip(keys, states):
            out.append(f"    {k}_dropout_rng, {k}_sample_rng, {k}_rng = jax.random.split({st}.rng, 3)" if sampling
                       else f"    {k}_dropout_rng, {k}_rng = jax.random.split({st}.rng)")
        out += ["", f"    def loss_fn({', '.join(f'{k}_params' for k in keys)}):", *lines]
        argnums = "(" + ", ".join(str(i) for i in range(len(keys))) + ")"
        grads = ", ".join(f"{k}_grads" for k in keys)
        params = ", ".join(f"{st}.params" for st in states)
        if aux:
            out.append(f"        return {loss_value}, {aux_tuple}")
            out.append(f"    ({plan.outputs[0]}, {aux_tuple}), ({grads}) = jax.value_and_grad(loss_fn, argnums={argnums}, "
                       f"has_aux=True)({params})")
        else:
            out.append(f"        return {loss_value}")
            out.append(f"    {plan.outputs[0]}, ({grads}) = jax.value_and_grad(loss_fn, argnums={argnums})({params})")
        for k, st in zip(keys, states):
            out.append(f"    {st} = {st}.apply_gradients(grads={k}_grads, rng={k}_rng)")
        out.append("    return " + ", ".join([*states, *plan.outputs]))
        return "\n".join(out) + "\n"
