"""train_step emission: the jitted step function's source and the loop rewritten around its call."""
from __future__ import annotations

import libcst as cst

from ...names import dotted
from ...walk import transform
from .common import BUILTINS, LoopPlan, RNG_KEY, STATE
from .common import STATE as STATE_NAME
from .optimizers import lr_write, param_groups_owner
from .rng import RenameKeys
from .syntax import (assigned_names, attribute_reads, calls_of, code_of, count_name, loop_batch_names, method_stmt,
                     names_read, ordered_assigned, scalar_bound)


def converted_args(plan: LoopPlan, converted) -> list[cst.Arg]:
    for s in plan.segment:
        conv = converted.get(id(s))
        if conv is None:
            continue
        calls = calls_of([conv], plan.model)
        if calls:
            return list(calls[0].args)
    return plan.init_args


class ModelCall(cst.CSTTransformer):
    """``model(x)`` → ``state.apply_fn(variables, x, train=True, rngs=...)`` inside loss_fn."""

    def __init__(self, model: str, variables: str, extra: str, batchnorm: bool, sample: bool = False,
                 others: dict[str, str] | None = None, state: str = STATE) -> None:
        self.model, self.variables, self.extra, self.batchnorm = model, variables, extra, batchnorm
        self.rngs = '{"dropout": dropout_rng, "sample": sample_rng}' if sample else '{"dropout": dropout_rng}'
        self.others, self.state = others or {}, state

    def leave_Call(self, original: cst.Call, updated: cst.Call) -> cst.BaseExpression:
        callee = dotted(original.func)
        if callee is None:
            return updated
        args = ", ".join(code_of(a.value) for a in updated.args)
        other = self.others.get(callee)
        if other is not None:   # another model: applied with its own (here constant) parameters
            return cst.parse_expression(f'{other}.apply_fn({{"params": {other}.params}}, {args}, train=True, '
                                        f'rngs={self.rngs})')
        if callee != self.model:
            return updated
        return cst.parse_expression(f'{self.state}.apply_fn({self.variables}, {args}, train=True, '
                                    f'rngs={self.rngs}{self.extra})')

    def leave_Assign(self, original: cst.Assign, updated: cst.Assign) -> cst.Assign:
        if self.batchnorm and isinstance(original.value, cst.Call) and dotted(original.value.func) == self.model \
                and len(updated.targets) == 1:
            target = updated.targets[0].target
            return updated.with_changes(targets=[cst.AssignTarget(cst.Tuple(
                [cst.Element(target), cst.Element(cst.Name("updates"))], lpar=[], rpar=[]))])
        return updated


class Flatten(cst.CSTTransformer):
    """``args.accum`` → ``args_accum`` (a static parameter of train_step)."""

    def __init__(self, names: dict[str, str]) -> None:
        self.names = names

    def leave_Attribute(self, original: cst.Attribute, updated: cst.Attribute) -> cst.BaseExpression:
        key = dotted(original) if isinstance(original.value, cst.Name) else None
        if key in self.names:
            return cst.Name(self.names[key])
        return updated


class StepMixin:
    """Emits train_step functions and rewrites the training loops around their calls."""

    def leave_For(self, original: cst.For, updated: cst.For):
        owner = param_groups_owner(original.iter)
        if owner is not None and owner in self.optimizers:
            value = lr_write(original)
            if value is None:
                self.ctx.report(original, "JP611", f"loop over {owner}.param_groups not converted: only "
                                'writing one value to every group\'s "lr" is (set_optimizer_lr)')
                return updated
            new_value = updated.body.body[0].body[0].value
            self.ctx.emits.add("set_optimizer_lr")
            self.ctx.report(original, "JP610", f'{owner}.param_groups "lr" writes → the learning rate in the '
                            "optimizer state (optax.inject_hyperparams), set on the host between steps")
            st = self._opt_state(owner)
            return cst.parse_statement(f"{st}, {owner} = set_optimizer_lr({st}, {owner}, {code_of(new_value)})\n"
                                       ).with_changes(leading_lines=updated.leading_lines)
        if id(original) in self.eval_loops:
            names = loop_batch_names(original)
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
        body = self._emit_step(original, list(updated.body.body), plan)
        self.ctx.report(original, "JP601", f"training loop → jitted {plan.step_name}(state, ...) with "
                        "jax.value_and_grad and optax")
        return updated.with_changes(body=updated.body.with_changes(body=body))

    def _emit_step(self, original, stmts: list, plan: LoopPlan, boundary: list[str] | None = None) -> list:
        """The statements of a training loop's body (or of a single-step function's body)
        with the step segment replaced by the train_step call; the train_step source is queued
        for the module. ``boundary``: names converted by ``to_jax`` first (default: the loop's
        batch names)."""
        name = self._step_name()
        plan.step_name = name
        self._inputs(plan)
        source = self._train_step_source(plan)
        self.step_sources.append(source)
        drop = {id(self.converted[id(s)].body[0]) for s in plan.removed + plan.segment + plan.deferred
                if id(s) in self.converted}
        first = self.converted.get(id(plan.segment[0]))
        body: list[cst.BaseStatement] = []
        boundary = plan.boundary if boundary is None else boundary
        if boundary:
            names = ", ".join(boundary)
            values = ", ".join(f"to_jax({n})" for n in boundary)
            body.append(cst.parse_statement(f"{names} = {values}\n"))
            self.ctx.emits.add("to_jax")
        init_args = ", ".join(code_of(a.value) for a in converted_args(plan, self.converted))
        tx = plan.optimizer
        if plan.accumulate is not None:
            tx = self._accumulating(original, plan)
        state = plan.state
        call_args = ", ".join([state, *(plan.flat.get(n, n) for n in plan.inputs)])
        outputs = ", ".join([state, *plan.outputs])
        call_block = [
            cst.parse_statement(f"if {state} is None:\n    {state} = create_train_state({plan.model}, {tx}, "
                                f"jax.random.PRNGKey({self.seed}), {init_args})\n"),
            cst.parse_statement(f"{outputs} = {name}({call_args})\n"),
        ]
        self.ctx.emits |= {"create_train_state", "jax"}
        deferred = [self.converted[id(s)] for s in plan.deferred if id(s) in self.converted]
        hoist = {id(n.body[0]) for h in plan.hoisted for n in self.converted_all.get(id(h), []) if n.body}
        hoisted = [s for s in stmts if isinstance(s, cst.SimpleStatementLine) and s.body and id(s.body[0]) in hoist]
        if hoisted:
            stmts = [s for s in stmts if not any(s is h for h in hoisted)]
            hoisted = [h.with_changes(leading_lines=[l for l in h.leading_lines if l.comment]) for h in hoisted]
        placed = False
        early = self.converted.get(id(plan.early)) if plan.early is not None else None
        for stmt in stmts:
            inner = stmt.body[0] if isinstance(stmt, cst.SimpleStatementLine) and stmt.body else None
            if early is not None and inner is early.body[0]:
                body.append(call_block.pop(0).with_changes(leading_lines=stmt.leading_lines))
                stmt = stmt.with_changes(leading_lines=[])
                early = None
            if inner is not None and id(inner) in drop:
                if first is not None and inner is first.body[0] and not placed:
                    block = hoisted + call_block
                    block[0] = block[0].with_changes(leading_lines=[*stmt.leading_lines, *block[0].leading_lines])
                    body += block + deferred
                    placed = True
                continue
            body.append(stmt)
        if not placed:
            body += hoisted + call_block + deferred
        return body

    def _accumulating(self, original, plan: LoopPlan) -> str:
        """``optax.MultiSteps`` summing the gradients of ``k`` micro-batches (torch's
        ``backward()`` adds into ``.grad``; the script already divides the loss by k) and
        applying the optimizer, after the clipping the script does on the sum, every k calls."""
        tx = plan.optimizer
        clips = []
        for stmt, kind in plan.clips:
            call = stmt.body[0].value
            rest = ", ".join(code_of(a) for a in call.args[1:]).rstrip(", ")
            clips.append(f"torch_clip_by_norm({rest})" if kind == "norm" else f"torch_clip_by_value({rest})")
            self.ctx.emits.add("torch_clip_by_norm" if kind == "norm" else "torch_clip_by_value")
        if clips:
            tx = f"optax.chain({', '.join(clips)}, {tx})"
        k = code_of(plan.accumulate)
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
            for n in sorted(names_read(stmt)):
                if n not in assigned and n not in reads and n != plan.model and n not in self.models:
                    reads.append(n)
            assigned |= set(assigned_names(stmt))
        backward = [b for b in plan.removed if method_stmt(b, "backward")]
        for n in sorted(names_read(self._converted_loss(plan)) if backward else ()):   # crit(out, y).backward(): y
            if n not in assigned and n not in reads and n != plan.model and n not in self.models:
                reads.append(n)
        states = {self._state(m) for m in self.models}
        if plan.trainer is not None:   # self.X values: static arguments (self_X)
            reads = [n for n in reads if n != "self"]
            for a in plan.self_attrs:
                plan.flat[f"self_{a}"] = f"self.{a}"
        inputs = [n for n in reads if n in plan.local and (n not in BUILTINS or plan.function) and n != STATE
                  and n not in states]   # (a function's parameter may shadow a builtin: input)
        static = [n for n in inputs if n in self.losses]
        traced = []
        segment = [self.converted.get(id(s), s) for s in plan.segment]
        scope = plan.scope if plan.scope is not None else self._scope_node()
        for n in inputs:
            if n in static:
                continue
            if n in plan.loop_bound or n in plan.boundary:
                traced.append(n)
                continue
            attrs = attribute_reads(segment, n)
            if attrs:
                # a configuration object (args.accum): its attributes are passed as static values
                for a in attrs:
                    plan.flat[f"{n}_{a}"] = f"{n}.{a}"
                    static.append(f"{n}_{a}")
            elif scope is not None and scalar_bound(scope, n):
                static.append(n)    # a Python number fixed before the loop (shapes need it static)
            else:
                traced.append(n)
        if plan.trainer is not None:
            static += [k for k in plan.flat if k.startswith("self_") and k not in static]
        plan.static = static
        plan.inputs = traced + static

    def _step_name(self) -> str:
        used = getattr(self, "_used", [])
        name = "train_step" if not used else f"train_step_{len(used) + 1}"
        used.append(name)
        self._used = used
        return name

    def _train_step_source(self, plan: LoopPlan) -> str:
        STATE = self._state(plan.model) if plan.trainer is None else STATE_NAME   # noqa: N806 (the plan's state)
        segment = [self.converted[id(s)] for s in plan.segment]
        variables = '{"params": params, "batch_stats": ' + STATE + '.batch_stats}' if self.batchnorm else '{"params": params}'
        extra = ', mutable=["batch_stats"]' if self.batchnorm else ""
        lines = []
        others = {m: self._state(m) for m in self.models if m != plan.model} if self.multi and plan.trainer is None \
            else {}
        replacer = ModelCall(plan.model, variables, extra, self.batchnorm, self.sample_stream, others, STATE)
        sampling = self.sample_stream or any(count_name(stmt, RNG_KEY) for stmt in segment)
        for stmt in segment:
            new = transform(stmt, replacer)
            if count_name(new, RNG_KEY):
                new = transform(new, RenameKeys(["sample_rng"] * count_name(new, RNG_KEY)))
            if plan.flat:
                new = transform(new, Flatten({v: k for k, v in plan.flat.items()}))
            text = code_of(new.with_changes(leading_lines=[])).rstrip("\n")
            lines += ["        " + line for line in text.splitlines()]
        loss_value = code_of(self._converted_loss(plan))
        used = {n for stmt in segment for n in names_read(stmt)} | set(names_read(self._converted_loss(plan)))
        fn_name = "loss_fn" if "loss_fn" not in used else "compute_loss"   # (the script's own loss_fn)
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
        assigned = set(ordered_assigned(segment))
        rebound = [n for n in plan.inputs if n in assigned]
        loss_params = ", ".join(["params", *(f"{n}={n}" for n in rebound)])
        out = [decorator, f"def {plan.step_name}({params}):",
               (f'    dropout_rng, sample_rng, rng = jax.random.split({STATE}.rng, 3)' if sampling
                else f'    dropout_rng, rng = jax.random.split({STATE}.rng)'), "", f"    def {fn_name}({loss_params}):", *lines]
        if aux:
            out.append(f"        return {loss_value}, {aux_tuple}")
            out.append(f"    ({plan.outputs[0]}, {aux_tuple}), grads = jax.value_and_grad({fn_name}, has_aux=True)({STATE}.params)")
        else:
            out.append(f"        return {loss_value}")
            out.append(f"    {plan.outputs[0]}, grads = jax.value_and_grad({fn_name})({STATE}.params)")
        for stmt, kind in ([] if plan.accumulate is not None else plan.clips):
            call = self.converted[id(stmt)].body[0]
            value = call.value if isinstance(call, (cst.Expr, cst.Assign)) else None
            if isinstance(value, cst.Call) and value.args and plan.flat:
                value = value.with_changes(args=[value.args[0], *(transform(a, Flatten(
                    {v: k for k, v in plan.flat.items()})) for a in value.args[1:])])
            if isinstance(value, cst.Call) and value.args:
                args = [value.args[0].with_changes(value=cst.Name("grads")), *value.args[1:]]
                text = code_of(value.with_changes(args=args))
                self.ctx.emits.add("torch_clip_grad_norm" if kind == "norm" else "torch_clip_grad_value")
                out.append(f"    grads, _ = {text}" if kind == "norm" else f"    grads = {text}")
        updates = ', batch_stats=updates["batch_stats"]' if self.batchnorm else ""
        out.append(f"    {STATE} = {STATE}.apply_gradients(grads=grads, rng=rng{updates})")
        out.append("    return " + ", ".join([STATE, *plan.outputs]))
        return "\n".join(out) + "\n"

    def _converted_loss(self, plan: LoopPlan) -> cst.BaseExpression:
        b = [s for s in plan.removed if method_stmt(s, "backward")][0]
        conv = self.converted.get(id(b))
        if conv is not None:
            found = method_stmt(conv, "backward")
            if found is not None:
                return self._unscaled(found[0])
        return plan.loss

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
