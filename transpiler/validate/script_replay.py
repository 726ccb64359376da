"""Replay training by running the two scripts themselves (``validate --train-steps K``, the
fallback of the loop replay in ``train_steps.py``).

The loop replay rebuilds one loop from the manifest and feeds it generated batches; it cannot
follow loops whose batches come from a function, whose forward carries a hidden state, whose
backward runs in an inner accumulation loop, or that step two optimizers. This replay runs the
original and the converted script, each from its start with its own argument defaults, in a
scratch working directory, and watches them:

* torch: the first ``parameters()`` call of each module (normally building its optimizer)
  copies the module: its initial weights; every ``backward()`` records its loss (the unscaled
  loss under a ``GradScaler``); every optimizer step (a global step hook) copies the modules
  whose parameters the optimizer holds. The run stops after K steps of every optimizer;
* JAX: ``TrainState.create`` receives the initial weights of the torch module of the same class
  (the n-th instance of a class gets the n-th torch instance's weights: the optimizer state is
  built from them); every jitted call that returns a TrainState is a step call, its first
  scalar result the loss; a step call updates the parameters unless the optimizer is an
  ``optax.MultiSteps`` still accumulating. The run stops when every model has been updated as
  often as in torch;
* the k-th update of each model is compared with its k-th torch step: the losses recorded since
  the model's previous update (one by one when the counts agree, else their sums), then every
  parameter and BatchNorm statistic after the step, torch's converted through the weight
  transfer.

Both runs have dropout off (torch's functional dropouts are the identity, flax ``Dropout``
layers intercepted) and their random draws made equal: ``torch.randn``/``jax.random.normal``
and the other samplers return the same deterministic numbers on both sides (normal noise a
fixed pattern, uniform draws its rescaling, permutations the identity, categorical draws the
most likely class). That is an approximation of the scripts' sampling, named in the report
when a sampler was called; the loss and parameters it checks are the deterministic rest.
"""
from __future__ import annotations

import contextlib
import copy
import io
import os
import runpy
import sys
import tempfile
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


NOISE_GRADIENT = 1e-7     # a gradient element this small relative to the model's largest is rounding noise


class StopReplay(BaseException):
    """Raised from a hook once the run has made the steps asked for (not an Exception: the
    script's own ``except Exception`` must not swallow it)."""


class ScriptError(Exception):
    """The script could not be run to its K-th step; the message says why."""


# ============================================================================ equal noise

def _pattern(n: int) -> np.ndarray:
    return np.sin(np.arange(n, dtype=np.float64) * 0.7).astype(np.float32)


def normal_noise(shape) -> np.ndarray:
    """The stand-in for standard normal draws of ``shape``: the same on both sides."""
    shape = tuple(int(s) for s in shape)
    return _pattern(int(np.prod(shape))).reshape(shape)


def uniform_noise(shape) -> np.ndarray:
    """The stand-in for uniform draws in [0, 1)."""
    return ((normal_noise(shape) + 1.0) * 0.4999).astype(np.float32)


def integer_noise(shape, low: int, high: int) -> np.ndarray:
    shape = tuple(int(s) for s in shape)
    n = int(np.prod(shape))
    return (low + (np.arange(n) * 7) % max(1, high - low)).reshape(shape).astype(np.int64)


class Sampling:
    """Counts the stand-in draws, so the report says when sampling was replaced."""

    def __init__(self):
        self.calls: dict[str, int] = {}

    def hit(self, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1


def _size(size: tuple) -> tuple:
    """torch's ``*size`` arguments: ``randn(2, 3)`` or ``randn((2, 3))`` / ``randn(torch.Size(...))``."""
    return tuple(size[0]) if len(size) == 1 and hasattr(size[0], "__len__") else tuple(size)


@contextlib.contextmanager
def _patched(pairs):
    """Set ``(owner, name, value)`` attributes for the duration of the block."""
    saved = [(o, n, o.__dict__.get(n, _MISSING) if isinstance(o, type) else getattr(o, n, _MISSING)) for o, n, _ in pairs]
    try:
        for o, n, v in pairs:
            setattr(o, n, v)
        yield
    finally:
        for o, n, v in reversed(saved):
            if v is _MISSING:
                delattr(o, n)
            else:
                setattr(o, n, v)


_MISSING = object()


def _torch_patches(sampling: Sampling):
    import torch
    import torch.nn.functional as F

    def tensor(a, dtype=None):
        t = torch.from_numpy(np.ascontiguousarray(a))
        return t.to(dtype) if dtype is not None else t

    def randn(*size, dtype=None, **kw):
        sampling.hit("torch.randn")
        return tensor(normal_noise(_size(size)), dtype)

    def randn_like(x, dtype=None, **kw):
        sampling.hit("torch.randn_like")
        return tensor(normal_noise(x.shape), dtype or x.dtype)

    def rand(*size, dtype=None, **kw):
        sampling.hit("torch.rand")
        return tensor(uniform_noise(_size(size)), dtype)

    def rand_like(x, dtype=None, **kw):
        sampling.hit("torch.rand_like")
        return tensor(uniform_noise(x.shape), dtype or x.dtype)

    def randint(*args, dtype=None, size=None, low=None, high=None, **kw):
        sampling.hit("torch.randint")
        ints = [int(a) for a in args if not isinstance(a, (tuple, list, torch.Size))]
        size = size if size is not None else next(a for a in args if isinstance(a, (tuple, list, torch.Size)))
        if high is None:
            low, high = (0, ints[0]) if len(ints) == 1 else (ints[0], ints[1]) if ints else (low or 0, None)
        return tensor(integer_noise(size, int(low or 0), int(high)), dtype)

    def randperm(n, **kw):
        sampling.hit("torch.randperm")
        return torch.arange(n)

    def categorical_sample(self, sample_shape=torch.Size()):
        sampling.hit("Categorical.sample")
        return self.logits.argmax(-1)

    def bernoulli(p, *args, **kw):
        sampling.hit("torch.bernoulli")
        return (p > 0.5).to(p.dtype)

    def normal_sample(self, sample_shape=torch.Size()):
        sampling.hit("Normal.sample")
        shape = self._extended_shape(sample_shape)
        return (self.loc + self.scale * tensor(normal_noise(shape))).detach()

    def normal_rsample(self, sample_shape=torch.Size()):
        sampling.hit("Normal.rsample")
        shape = self._extended_shape(sample_shape)
        return self.loc + self.scale * tensor(normal_noise(shape))

    def identity(input, *args, **kw):
        return input

    pairs = [(torch, "randn", randn), (torch, "randn_like", randn_like), (torch, "rand", rand),
             (torch, "rand_like", rand_like), (torch, "randint", randint), (torch, "randperm", randperm),
             (torch, "bernoulli", bernoulli),
             (torch.distributions.Categorical, "sample", categorical_sample),
             (torch.distributions.Normal, "sample", normal_sample),
             (torch.distributions.Normal, "rsample", normal_rsample)]
    pairs += [(F, n, identity) for n in ("dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout",
                                         "feature_alpha_dropout")]
    return pairs


def _flax_initialising() -> bool:
    """Whether the draw comes from flax creating a variable (``Module.init``, a ``param`` or
    ``variable`` initialiser, which flax also traces inside ``apply`` to check shapes): those
    draws make initial weights, which the replay replaces by torch's anyway."""
    frame = sys._getframe(2)
    for _ in range(60):
        if frame is None:
            return False
        code = frame.f_code
        if code.co_name in ("param", "variable", "init", "lazy_init", "init_with_output") and \
                f"{os.sep}flax{os.sep}" in code.co_filename:
            return True
        frame = frame.f_back
    return False


def _jax_patches(sampling: Sampling):
    import jax
    import jax.numpy as jnp

    def standin(name, fake):
        real = getattr(jax.random, name)

        def draw(*args, **kwargs):
            if _flax_initialising():
                return real(*args, **kwargs)
            sampling.hit(f"jax.random.{name}")
            return fake(*args, **kwargs)
        return (jax.random, name, draw)


    def normal(key, shape=(), dtype=jnp.float32, *a, **kw):
        return jnp.asarray(normal_noise(shape), dtype=dtype)

    def uniform(key, shape=(), dtype=jnp.float32, minval=0.0, maxval=1.0, **kw):
        return jnp.asarray(minval + (maxval - minval) * uniform_noise(shape), dtype=dtype)

    def randint(key, shape, minval, maxval, dtype=jnp.int32, **kw):
        return jnp.asarray(integer_noise(shape, int(minval), int(maxval)), dtype=dtype)

    def permutation(key, x, *a, **kw):
        return jnp.arange(x) if isinstance(x, (int, np.integer)) else x

    def categorical(key, logits, axis=-1, shape=None, **kw):
        return jnp.argmax(logits, axis)

    def bernoulli(key, p=0.5, shape=None, **kw):
        p = jnp.asarray(p)
        return jnp.broadcast_to(p > 0.5, shape if shape is not None else p.shape)

    return [standin("normal", normal), standin("uniform", uniform), standin("randint", randint),
            standin("permutation", permutation), standin("categorical", categorical),
            standin("bernoulli", bernoulli)]


@contextlib.contextmanager
def equal_draws(sampling: Sampling | None = None):
    """torch's and JAX's samplers (and torch's functional dropouts, the identity) replaced by
    the same deterministic stand-ins, for the duration of the block."""
    sampling = sampling or Sampling()
    with _patched(_torch_patches(sampling) + _jax_patches(sampling)):
        yield sampling


# ============================================================================ running a script

def run_script(path: str | Path, workdir: str, label: str) -> str:
    """Run ``path`` as ``__main__`` with no arguments in ``workdir`` until it ends or a hook
    raises StopReplay; returns its standard output. Raises ScriptError."""
    out = io.StringIO()
    path = Path(path).resolve()
    saved_argv, saved_cwd = sys.argv, os.getcwd()
    sys.argv = [str(path)]
    os.chdir(workdir)
    try:
        with contextlib.redirect_stdout(out), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            runpy.run_path(str(path), run_name="__main__")
    except StopReplay:
        pass
    except SystemExit as exc:
        if exc.code not in (0, None):
            raise ScriptError(f"the {label} script exited with status {exc.code} before its steps were made"
                              f" (it runs with its argument defaults){_tail(out)}") from None
    except Exception as exc:  # noqa: BLE001 - user code
        tb = traceback.format_exc(limit=-3)
        raise ScriptError(f"the {label} script failed: {type(exc).__name__}: {exc}{_tail(out)}\n{tb}") from None
    finally:
        sys.argv = saved_argv
        os.chdir(saved_cwd)
    return out.getvalue()


def _tail(out: io.StringIO) -> str:
    lines = out.getvalue().strip().splitlines()[-3:]
    return ("; its last output: " + " | ".join(lines)) if lines else ""


# ============================================================================ the torch run

@dataclass
class TorchStep:
    model: str                 # class name + ordinal: "Generator#0"
    snapshot: Any              # a copy of the module after the step
    losses: list[float]
    gradients: Any             # a copy of the module holding the gradients of the step


@dataclass
class TorchTrace:
    initial: dict[str, Any] = field(default_factory=dict)       # model key → module copy
    steps: dict[str, list[TorchStep]] = field(default_factory=dict)
    output: str = ""


def _key(cls_name: str, seen: dict[str, list[int]], ident: int) -> str:
    ids = seen.setdefault(cls_name, [])
    if ident not in ids:
        ids.append(ident)
    return f"{cls_name}#{ids.index(ident)}"


def _gradients(module):
    """A copy of ``module`` whose parameters hold their gradients (zero where there is none)."""
    import torch
    out = copy.deepcopy(module)
    with torch.no_grad():
        for (_, p), (_, q) in zip(module.named_parameters(), out.named_parameters()):
            q.copy_(p.grad if p.grad is not None else torch.zeros_like(p))
    return out


def trace_torch(original: str | Path, steps: int, seed: int, workdir: str, sampling: Sampling) -> TorchTrace:
    import torch

    trace = TorchTrace()
    live: dict[str, Any] = {}
    seen: dict[str, list[int]] = {}
    pending: list[float] = []
    scaled: dict[int, float] = {}
    counts: dict[int, int] = {}
    parameters = torch.nn.Module.parameters
    backward = torch.Tensor.backward
    scale = torch.amp.GradScaler.scale

    def recording_parameters(self, recurse=True):
        key = _key(type(self).__name__, seen, id(self))
        if key not in live:
            live[key] = self
            trace.initial[key] = copy.deepcopy(self)
        return parameters(self, recurse)

    def recording_backward(self, *args, **kwargs):
        value = scaled.pop(id(self), None)
        pending.append(float(self.detach().float().sum()) if value is None else value)
        return backward(self, *args, **kwargs)

    def recording_scale(self, outputs):
        result = scale(self, outputs)
        if isinstance(outputs, torch.Tensor) and outputs.numel() == 1:
            scaled[id(result)] = float(outputs.detach().float())
        return result

    def owners(optimizer) -> list[str]:
        held = {id(p) for g in optimizer.param_groups for p in g["params"]}
        cands = [k for k, m in live.items() if held & {id(p) for p in parameters(m)}]
        return [k for k in cands
                if not any(o != k and any(sub is live[k] for sub in live[o].modules()) for o in cands)]

    def after_step(optimizer, args, kwargs):
        losses = list(pending)
        pending.clear()
        for key in owners(optimizer):
            trace.steps.setdefault(key, []).append(TorchStep(key, copy.deepcopy(live[key]), losses,
                                                             _gradients(live[key])))
            losses = []
        counts[id(optimizer)] = counts.get(id(optimizer), 0) + 1
        total = sum(counts.values())
        if (counts[id(optimizer)] >= steps and all(c >= steps for c in counts.values())) or total >= 4 * steps * len(counts) + 8:
            raise StopReplay

    torch.manual_seed(seed)
    from torch.optim.optimizer import register_optimizer_step_post_hook
    handle = register_optimizer_step_post_hook(after_step)
    patches = _torch_patches(sampling) + [
        (torch.nn.Module, "parameters", recording_parameters), (torch.Tensor, "backward", recording_backward),
        (torch.amp.GradScaler, "scale", recording_scale)]
    try:
        with _patched(patches):
            trace.output = run_script(original, workdir, "torch")
    finally:
        handle.remove()
    if not trace.steps:
        raise ScriptError("the torch script made no optimizer step (with its argument defaults)")
    return trace


# ============================================================================ the JAX run

@dataclass
class JaxUpdate:
    model: str
    variables: dict            # {"params": ..., "batch_stats": ...} as numpy
    losses: list[float]


@dataclass
class JaxTrace:
    updates: dict[str, list[JaxUpdate]] = field(default_factory=dict)
    loaded: list[str] = field(default_factory=list)
    output: str = ""
    classes: dict[str, type] = field(default_factory=dict)   # model key -> converted flax class


def _multi_steps_count(opt_state) -> int | None:
    """``gradient_step`` of an ``optax.MultiSteps`` state inside ``opt_state``, else None."""
    import optax
    stack = [opt_state]
    while stack:
        x = stack.pop()
        if isinstance(x, optax.MultiStepsState):
            return int(np.asarray(x.gradient_step))
        if isinstance(x, dict):
            stack.extend(x.values())
        elif isinstance(x, (tuple, list)):
            stack.extend(x)
    return None


def _states_and_loss(result, state_type) -> tuple[list, float | None]:
    states, scalars = [], []
    stack = [result]
    while stack:
        x = stack.pop(0)
        if isinstance(x, state_type):
            states.append(x)
        elif isinstance(x, dict):
            if "loss" in x:
                stack.insert(0, x["loss"])
            stack.extend(v for k, v in x.items() if k != "loss")
        elif isinstance(x, (tuple, list)):
            stack.extend(x)
        elif hasattr(x, "shape") and getattr(x, "ndim", None) == 0 and np.asarray(x).dtype.kind == "f":
            scalars.append(float(np.asarray(x)))
    return states, (scalars[0] if scalars else None)


def _variables(state) -> dict:
    import jax
    out = {"params": jax.tree_util.tree_map(np.array, state.params)}
    if getattr(state, "batch_stats", None):
        out["batch_stats"] = jax.tree_util.tree_map(np.array, state.batch_stats)
    return out


def trace_jax(converted: str | Path, torch_trace: TorchTrace, workdir: str, sampling: Sampling,
              seed: int = 0) -> JaxTrace:
    import flax.linen as fnn
    import jax
    from flax.training import train_state as flax_train_state

    from .harness import _no_flax_dropout
    from .weights import load_torch_state

    trace = JaxTrace()
    wanted = {k: len(v) for k, v in torch_trace.steps.items()}
    seen: dict[str, list[int]] = {}
    last_count: dict[str, int | None] = {}
    pending: dict[str, list[float]] = {}
    real_jit = jax.jit
    create = flax_train_state.TrainState.__dict__["create"]

    def model_key(state) -> str | None:
        module = getattr(state.apply_fn, "__self__", None)
        return None if module is None else _key(type(module).__name__, seen, id(module))

    def loading_create(cls, *, apply_fn, params, tx, **kwargs):
        module = getattr(apply_fn, "__self__", None)
        if module is not None:
            key = _key(type(module).__name__, seen, id(module))
            initial = torch_trace.initial.get(key)
            trace.classes[key] = type(module)     # channels-last classes: flatten_rows
            if initial is not None:
                variables = {"params": params}
                if kwargs.get("batch_stats"):
                    variables["batch_stats"] = kwargs["batch_stats"]
                try:
                    loaded = load_torch_state(initial, variables, type(module))
                except Exception as exc:  # noqa: BLE001
                    raise ScriptError(f"weight transfer into {key}: {type(exc).__name__}: {exc}") from None
                params = loaded["params"]
                if "batch_stats" in loaded:
                    kwargs["batch_stats"] = loaded["batch_stats"]
                trace.loaded.append(key)
        state = create.__func__(cls, apply_fn=apply_fn, params=params, tx=tx, **kwargs)
        key = model_key(state)
        if key is not None:
            last_count[key] = _multi_steps_count(state.opt_state)
        return state

    def observe(result):
        states, loss = _states_and_loss(result, flax_train_state.TrainState)
        for state in states:
            key = model_key(state)
            if key is None:
                continue
            if loss is not None:
                pending.setdefault(key, []).append(loss)
            count = _multi_steps_count(state.opt_state)
            updated = count is None or count != last_count.get(key, 0)
            last_count[key] = count
            if updated:
                trace.updates.setdefault(key, []).append(JaxUpdate(key, _variables(state), pending.pop(key, [])))
            loss = None      # one loss per call, to the first state it returns
        if wanted and all(len(trace.updates.get(k, [])) >= n for k, n in wanted.items()):
            raise StopReplay

    class Observed:
        def __init__(self, jitted):
            self._jitted = jitted

        def __call__(self, *args, **kwargs):
            result = self._jitted(*args, **kwargs)
            observe(result)
            return result

        def __getattr__(self, name):
            return getattr(self._jitted, name)

    def observing_jit(fun=None, *args, **kwargs):
        if fun is None:
            return lambda f: observing_jit(f, *args, **kwargs)
        return Observed(real_jit(fun, *args, **kwargs))

    import torch
    torch.manual_seed(seed)
    # a converted script may still load its data with torch (DataLoader shuffling): the same
    # stand-ins as in the torch run
    patches = _torch_patches(sampling) + _jax_patches(sampling) + [(jax, "jit", observing_jit),
                                        (flax_train_state.TrainState, "create", classmethod(loading_create))]
    with _patched(patches), fnn.intercept_methods(_no_flax_dropout):
        trace.output = run_script(converted, workdir, "converted")
    return trace


# ============================================================================ comparison

def compare(torch_trace: TorchTrace, jax_trace: JaxTrace, rtol: float, atol: float, result: dict) -> None:
    """Fill ``result`` (a module entry of the validation report) with one loss and one
    parameter check per model and step."""
    from .harness import _tree_paths, compare_arrays
    from .train_steps import compare_state
    from .weights import load_torch_state

    several = len(torch_trace.steps) > 1
    skipped: dict[str, int] = {}
    worst_abs = worst_rel = 0.0
    first_fail = None
    for key in sorted(torch_trace.steps):
        tsteps, jsteps = torch_trace.steps[key], jax_trace.updates.get(key, [])
        label = f"{key.split('#')[0]}:" if several else ""
        if len(jsteps) < len(tsteps):
            check = {"name": f"train_step[{len(jsteps) + 1}]:{label}params", "status": "fail",
                     "max_abs_err": None, "max_rel_err": None, "kind": "train_step", "step": len(jsteps) + 1,
                     "message": f"torch made {len(tsteps)} step(s) of {key}, the converted script "
                                f"{len(jsteps)} update(s) before it ended"}
            result["checks"].append(check)
            first_fail = first_fail or check["message"]
        noisy: dict[str, Any] = {}      # elements whose gradient was rounding noise at some step
        excluded: dict[str, Any] = {}   # those of them that differ: not compared
        for k, (t, j) in enumerate(zip(tsteps, jsteps), start=1):
            rt, at = rtol * k, atol * k
            checks = []
            if t.losses and j.losses:
                tl, jl = (t.losses, j.losses) if len(t.losses) == len(j.losses) else ([sum(t.losses)], [sum(j.losses)])
                lc = compare_arrays(f"train_step[{k}]:{label}loss", np.float32(jl), np.float32(tl), "float32", rt, at)
                checks.append({"name": lc.name, "status": lc.status, "max_abs_err": lc.max_abs_err,
                               "max_rel_err": lc.max_rel_err, "kind": "train_step", "step": k,
                               "message": lc.message or f"torch {', '.join(f'{v:.8g}' for v in tl)}, "
                                                        f"jax {', '.join(f'{v:.8g}' for v in jl)}"})
            fcls = jax_trace.classes.get(key)
            ref = _tree_paths(load_torch_state(t.snapshot, j.variables, fcls))
            got = _tree_paths(j.variables)
            grads = _tree_paths(load_torch_state(t.gradients, j.variables, fcls)["params"], "params")
            floor = NOISE_GRADIENT * max((float(np.abs(g).max()) for g in grads.values() if np.size(g)), default=0.0)
            for path, g in grads.items():
                noisy[path] = noisy.get(path, False) | (np.abs(np.asarray(g)) <= floor)

            def judged(path, g, r):
                """Elements whose gradient was rounding noise are not compared (set to torch's
                value); those of them that differ beyond the tolerance are counted."""
                if path in noisy and np.any(noisy[path]):
                    outside = np.abs(g.astype(np.float64) - r) > at * max(1.0, float(np.abs(r).max())) + rt * np.abs(r)
                    excluded[path] = excluded.get(path, False) | (noisy[path] & outside)
                    g = np.where(noisy[path], r, g)
                return g

            params = compare_state(f"train_step[{k}]:{label}params", got, ref, rt, at, k, judged)
            p_abs, p_rel = params["max_abs_err"], params["max_rel_err"]
            checks.append(params)
            result["checks"] += checks
            result["train_steps"].append({"step": k, "model": key, "torch_losses": t.losses, "jax_losses": j.losses,
                                          "torch_loss": sum(t.losses) if t.losses else None,
                                          "jax_loss": sum(j.losses) if j.losses else None,
                                          "param_max_abs_err": p_abs, "param_max_rel_err": p_rel})
            for c in checks:
                worst_abs = max(worst_abs, c["max_abs_err"] or 0.0)
                worst_rel = max(worst_rel, c["max_rel_err"] or 0.0)
            failed = [c for c in checks if c["status"] != "pass"]
            if failed and first_fail is None:
                first_fail = f"{key} step {k} fails: " + "; ".join(f"{c['name']}: {c['message']}" for c in failed)
            result["examples"] = max(result["examples"], k)
        for path, mask in excluded.items():
            if np.any(mask):
                skipped[f"{key}:{path}"] = int(np.sum(mask))
    if skipped:
        result["noise_gradient_elements"] = skipped
        result.setdefault("notes", []).append(
            f"not compared: {sum(skipped.values())} parameter element(s) whose torch gradient was at the float32 "
            f"rounding floor (<= {NOISE_GRADIENT:g} x the model's largest) at some step, a true zero that "
            "normalising optimizers (Adam, RMSprop) turn into full-size steps of either sign: "
            + ", ".join(f"{p} ({n})" for p, n in sorted(skipped.items())[:4]) + ("…" if len(skipped) > 4 else ""))
    result["max_abs_err"], result["max_rel_err"] = worst_abs, worst_rel
    result["status"] = "fail" if first_fail else "pass"
    if first_fail:
        result["message"] = first_fail


def replay_scripts(original, converted, *, steps: int, seed: int, rtol: float, atol: float, name: str) -> dict:
    """Run both scripts and compare their first ``steps`` steps; a module entry of the report."""
    import time
    started = time.monotonic()
    result = {"name": name, "status": "error", "checks": [], "examples": 0, "max_abs_err": None,
              "max_rel_err": None, "message": "", "counterexample": None, "train_steps": [], "replay": "script"}
    sampling = Sampling()
    try:
        with tempfile.TemporaryDirectory(prefix="jaxport-script-torch-") as tdir:
            ttrace = trace_torch(original, steps, seed, tdir, sampling)
        torch_sampled = dict(sampling.calls)
        with tempfile.TemporaryDirectory(prefix="jaxport-script-jax-") as jdir:
            jtrace = trace_jax(converted, ttrace, jdir, sampling, seed)
        missing = sorted(set(ttrace.steps) - set(jtrace.loaded))
        compare(ttrace, jtrace, rtol, atol, result)
        notes = [f"replayed by running both scripts with their argument defaults and their own data "
                 f"({', '.join(f'{k}: {len(v)} step(s)' for k, v in sorted(ttrace.steps.items()))}); dropout off"]
        if sampling.calls:
            notes.append("approximation: random draws replaced by the same deterministic stand-ins on both sides "
                         f"({', '.join(sorted(set(torch_sampled) | set(sampling.calls)))})")
        if missing:
            notes.append(f"no TrainState was created for {missing}: the converted script's initial weights were not "
                         "replaced by torch's")
            if result["status"] == "pass":
                result["status"] = "error"
        notes += result.pop("notes", [])
        result["message"] = "; ".join(([result["message"]] if result["message"] else []) + notes)
    except ScriptError as exc:
        result["status"], result["message"] = "error", str(exc)
    result["name"] = name
    result["seconds"] = round(time.monotonic() - started, 3)
    return result
