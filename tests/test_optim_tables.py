"""Every entry of mappings/functions_optim.toml and mappings/functions_losses.toml is checked
against real torch, rendered through ``transpiler.render`` (the converter's path):

* optimizers: 20 steps of torch and of the rendered optax transformation from the same
  parameters on the same small MLP regression; parameters agree to 1e-5 relative (the
  entry's ``tolerance`` for approximate entries). Extra argument combinations are listed in
  ``EXTRA_OPTIMIZER_CASES``. The optimizer wrapped in ``optax.inject_hyperparams`` by the
  training rule (what a scheduler needs) must train identically.
* schedulers: the learning rate after each of 30 ``step()`` calls against torch's
  ``get_last_lr()``, read back from the optimizer state of a TrainState;
* loss modules: the constructed module called on the example inputs;
* checkpoints: save/load round trip.
"""
from __future__ import annotations

import os
import re
import tomllib
import warnings

import jax
import jax.numpy as jnp
import libcst as cst
import numpy as np
import optax
import pytest
import torch

import transpiler.rewriters  # noqa: F401
from transpiler.mapping import _entry
from transpiler.passes.training import inject_learning_rate
from transpiler.prelude import ops as prelude_ops
from transpiler.prelude import training as prelude_training
from transpiler.render import code_of, render_call

jax.config.update("jax_enable_x64", False)

MAPPINGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "mappings")


def _load(name):
    with open(os.path.join(MAPPINGS, name), "rb") as fh:
        raw = tomllib.load(fh)
    return {key: _entry("functions", key, value) for key, value in raw.items()}


OPTIM = _load("functions_optim.toml")
LOSSES = _load("functions_losses.toml")
OPTIMIZERS = {k: e for k, e in OPTIM.items() if k.startswith("torch.optim.") and ".lr_scheduler." not in k}
SCHEDULERS = {k: e for k, e in OPTIM.items() if ".lr_scheduler." in k}

EXTRA_OPTIMIZER_CASES = {
    "torch.optim.SGD": [
        "optim.SGD(model.parameters(), lr=0.1)",
        "optim.SGD(model.parameters(), lr=0.05, momentum=0.9)",
        "optim.SGD(model.parameters(), lr=0.05, momentum=0.9, dampening=0.3, weight_decay=1e-2)",
        "optim.SGD(model.parameters(), lr=0.05, momentum=0.8, dampening=0.1, nesterov=False)",
        "optim.SGD(model.parameters())",
    ],
    "torch.optim.Adam": ["optim.Adam(model.parameters())",
                         "optim.Adam(model.parameters(), lr=3e-3, betas=(0.8, 0.95), eps=1e-6)"],
    "torch.optim.AdamW": ["optim.AdamW(model.parameters(), lr=5e-3, betas=(0.9, 0.95), weight_decay=0.1)"],
    "torch.optim.RMSprop": ["optim.RMSprop(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=1e-3)",
                            "optim.RMSprop(model.parameters(), lr=1e-3, alpha=0.9, centered=True)"],
    "torch.optim.Adagrad": ["optim.Adagrad(model.parameters(), lr=0.05, weight_decay=1e-3, initial_accumulator_value=0.0, eps=1e-10)",
                            "optim.Adagrad(model.parameters(), lr=0.05, initial_accumulator_value=0.1)"],
    "torch.optim.RAdam": ["optim.RAdam(model.parameters(), lr=1e-2, weight_decay=1e-2)"],
}

EXTRA_SCHEDULER_CASES = {
    "torch.optim.lr_scheduler.OneCycleLR": [
        "OneCycleLR(opt, max_lr=0.1, epochs=3, steps_per_epoch=4, anneal_strategy='linear', three_phase=True, cycle_momentum=False)"],
    "torch.optim.lr_scheduler.StepLR": ["StepLR(opt, 2)"],
    "torch.optim.lr_scheduler.CosineAnnealingLR": ["CosineAnnealingLR(opt, 5)"],
    "torch.optim.lr_scheduler.LinearLR": ["LinearLR(opt)"],
}

NAMESPACE = {"optax": optax, "jnp": jnp, "jax": jax, "partial": __import__("functools").partial,
             **{k: v for k, v in vars(prelude_ops).items() if not k.startswith("__")},
             **{k: v for k, v in vars(prelude_training).items() if not k.startswith("__")}}


def _render(entry, example):
    call = cst.parse_expression(example)
    assert isinstance(call, cst.Call)
    rendered = render_call(entry, call.args, call=call)
    assert rendered.expr is not None, f"{example}: {rendered.code} {rendered.message}"
    assert rendered.approximate == (not entry.exact)
    assert rendered.emits - set(NAMESPACE) - {"optax"} == set(), rendered.emits
    return code_of(rendered.expr)


# ------------------------------------------------------------------ optimizers

def _problem(seed=0):
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    x = rng.standard_normal((16, 4)).astype(np.float32)
    y = rng.standard_normal((16, 3)).astype(np.float32)
    return model, x, y


def _jax_loss(params, x, y):
    h = jnp.tanh(x @ params["0.weight"].T + params["0.bias"])
    out = h @ params["2.weight"].T + params["2.bias"]
    return jnp.mean((out - y) ** 2)


def _torch_run(example, steps):
    model, x, y = _problem()
    params0 = {k: v.detach().numpy().copy() for k, v in model.named_parameters()}
    opt = eval(example, {"optim": torch.optim, "model": model})
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    for _ in range(steps):
        opt.zero_grad()
        loss = torch.mean((model(xt) - yt) ** 2)
        loss.backward()
        opt.step()
    return params0, {k: v.detach().numpy() for k, v in model.named_parameters()}, x, y


def _optax_run(tx, params0, x, y, steps):
    params = {k: jnp.asarray(v) for k, v in params0.items()}
    state = tx.init(params)

    @jax.jit
    def step(params, state):
        grads = jax.grad(_jax_loss)(params, x, y)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    for _ in range(steps):
        params, state = step(params, state)
    return {k: np.asarray(v) for k, v in params.items()}


def _optimizer_cases():
    for key, entry in OPTIMIZERS.items():
        for example in [entry.example, *EXTRA_OPTIMIZER_CASES.get(key, [])]:
            yield pytest.param(key, example, id=example)


@pytest.mark.parametrize("key,example", list(_optimizer_cases()))
def test_optimizer_matches_torch(key, example):
    entry = OPTIMIZERS[key]
    code = _render(entry, example)
    steps = 20
    params0, expected, x, y = _torch_run(example, steps)
    got = _optax_run(eval(code, NAMESPACE), params0, x, y, steps)
    tol = entry.extra.get("tolerance", 1e-5)
    if "skip_example" in entry.extra:  # approximate by design (see the entry's note)
        assert not entry.exact
        assert all(np.all(np.isfinite(got[k])) for k in got)
        assert _jax_loss(got, x, y) < _jax_loss(params0, x, y)
        return
    moved = max(np.max(np.abs(expected[k] - params0[k])) for k in expected)
    assert moved > 1e-3, "the example must actually train"
    for k in expected:  # relative to the parameter's scale
        scale = np.max(np.abs(expected[k]))
        np.testing.assert_allclose(got[k], expected[k], rtol=tol, atol=tol * scale, err_msg=f"{code}: {k}")
    # the same optimizer wrapped for a scheduler (inject_hyperparams) trains identically
    wrapped = inject_learning_rate(cst.parse_expression(code))
    assert wrapped is not None, code
    wrapped_code = code_of(wrapped)
    assert "optax.inject_hyperparams(" in wrapped_code
    tx = eval(wrapped_code, NAMESPACE)
    assert float(prelude_training.get_learning_rate(tx.init({}))) == pytest.approx(
        float(re.search(r"learning_rate=([-\d.e]+)", code).group(1)))
    again = _optax_run(tx, params0, x, y, steps)
    for k in expected:
        np.testing.assert_allclose(again[k], got[k], rtol=max(tol, 1e-5), atol=max(tol, 1e-5) * np.max(np.abs(got[k])))


def test_optimizer_hyperparameters_spelled_out():
    code = _render(OPTIMIZERS["torch.optim.AdamW"], "optim.AdamW(model.parameters())")
    assert code == "optax.adamw(learning_rate=0.001, weight_decay=0.01)"
    code = _render(OPTIMIZERS["torch.optim.Adam"], "optim.Adam(model.parameters(), lr=1e-3, weight_decay=w)")
    assert code == "optax.chain(optax.add_decayed_weights(w), optax.adam(learning_rate=1e-3))"
    code = _render(OPTIMIZERS["torch.optim.Adam"], "optim.Adam(model.parameters(), weight_decay=w, eps=1e-6)")
    assert code == "optax.chain(optax.add_decayed_weights(w), optax.adam(learning_rate=0.001, eps=1e-6))"
    code = _render(OPTIMIZERS["torch.optim.Adagrad"], "optim.Adagrad(model.parameters())")
    assert code == "optax.adagrad(learning_rate=0.01, initial_accumulator_value=0, eps=1e-10)"
    code = _render(OPTIMIZERS["torch.optim.SGD"], "optim.SGD(model.parameters(), lr=0.1, momentum=0.9)")
    assert code == "optax.sgd(learning_rate=0.1, momentum=0.9)"
    code = _render(OPTIMIZERS["torch.optim.SGD"], "optim.SGD(model.parameters(), lr=0.1, momentum=0.9, dampening=0.5)")
    assert code == "optax.chain(torch_sgd_momentum(0.9, 0.5), optax.scale_by_learning_rate(learning_rate=0.1))"
    code = _render(OPTIMIZERS["torch.optim.SGD"], "optim.SGD(model.parameters(), lr=0.1, weight_decay=1e-4)")
    assert code == "optax.chain(optax.add_decayed_weights(1e-4), optax.sgd(learning_rate=0.1))"
    code = _render(OPTIMIZERS["torch.optim.RMSprop"], "optim.RMSprop(model.parameters())")
    assert "decay=0.99" in code and "eps_in_sqrt=False" in code


def test_unknown_optimizer_argument_is_not_dropped():
    entry = OPTIMIZERS["torch.optim.SGD"]
    call = cst.parse_expression("optim.SGD(model.parameters(), lr=0.1, maximize=True)")
    assert render_call(entry, call.args, call=call).expr is None
    entry = OPTIMIZERS["torch.optim.Adam"]
    call = cst.parse_expression("optim.Adam(model.parameters(), amsgrad=True)")
    assert render_call(entry, call.args, call=call).code == "JP103"


# ------------------------------------------------------------------ schedulers

def _scheduler_cases():
    for key, entry in SCHEDULERS.items():
        for example in [entry.example, *EXTRA_SCHEDULER_CASES.get(key, [])]:
            yield pytest.param(key, example, id=example)


@pytest.mark.parametrize("key,example", list(_scheduler_cases()))
def test_scheduler_matches_torch(key, example):
    entry = SCHEDULERS[key]
    code = _render(entry, example)
    base = 0.1
    p = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.SGD([p], lr=base, momentum=0.9)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sched = eval(example, {**vars(torch.optim.lr_scheduler), "opt": opt})
    tx = optax.inject_hyperparams(optax.sgd)(learning_rate=base, momentum=0.9)
    jsched = eval(code, {**NAMESPACE, "opt": tx})
    state = prelude_training.TrainState.create(apply_fn=None, params={"w": jnp.zeros(2)}, tx=jsched.optimizer)
    lr = lambda: float(prelude_training.get_learning_rate(state.opt_state))
    assert lr() == pytest.approx(opt.param_groups[0]["lr"], rel=1e-6, abs=1e-9)
    steps = 30 if "OneCycle" not in key else 11
    for i in range(steps):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            opt.step()
            sched.step()
        state = jsched.step(state)
        assert jsched.get_last_lr()[0] == pytest.approx(sched.get_last_lr()[0], rel=1e-5, abs=1e-9), (i, code)
        assert lr() == pytest.approx(sched.get_last_lr()[0], rel=1e-5, abs=1e-9), (i, code)


def test_scheduler_needs_injected_learning_rate():
    with pytest.raises(ValueError, match="inject_hyperparams"):
        prelude_training.TorchLRScheduler(optax.sgd(0.1), prelude_training.torch_step_lr(2))


def test_scheduled_train_step_is_not_recompiled():
    tx = optax.inject_hyperparams(optax.adam)(learning_rate=1e-2)
    sched = prelude_training.TorchLRScheduler(tx, prelude_training.torch_exponential_lr(0.5))
    state = prelude_training.TrainState.create(apply_fn=None, params={"w": jnp.ones(3)}, tx=sched.optimizer)
    traces = []

    @jax.jit
    def step(state):
        traces.append(1)
        return state.apply_gradients(grads={"w": jnp.ones(3)})

    for _ in range(3):
        state = step(state)
        state = sched.step(state)
    assert len(traces) == 1
    assert float(prelude_training.get_learning_rate(state.opt_state)) == pytest.approx(1e-2 * 0.5 ** 3)


# ------------------------------------------------------------------ losses

_SPEC = re.compile(r"^(\w+)\[([^\]]*)\](?:\s*range\(([-\d.e]+),\s*([-\d.e]+)\))?$")


def _input(spec, rng):
    m = _SPEC.match(spec)
    dtype, dims, lo, hi = m.groups()
    shape = tuple(int(d) for d in dims.split(","))
    if dtype.startswith("int"):
        return rng.integers(int(lo), int(hi), size=shape).astype(dtype)
    if lo is not None:
        return rng.uniform(float(lo), float(hi), size=shape).astype(dtype)
    return rng.standard_normal(shape).astype(dtype)


@pytest.mark.parametrize("key", list(LOSSES))
def test_loss_module_matches_torch(key):
    entry = LOSSES[key]
    outer = cst.parse_expression(entry.example)
    assert isinstance(outer, cst.Call) and isinstance(outer.func, cst.Call)
    ctor = code_of(outer.func)
    code = _render(entry, ctor)
    assert code.startswith("partial(torch_")
    rng = np.random.default_rng(0)
    values = {name: _input(spec, rng) for name, spec in entry.inputs.items()}
    args = [code_of(a.value) for a in outer.args]
    expected = eval(entry.example, {"nn": torch.nn, **{k: torch.from_numpy(v) for k, v in values.items()}})
    fn = eval(code, {**NAMESPACE, **{k: jnp.asarray(v) for k, v in values.items()}})
    got = fn(*[jnp.asarray(values[a]) for a in args])
    np.testing.assert_allclose(np.asarray(got), expected.numpy(), rtol=1e-5, atol=1e-6)
    jitted = jax.jit(lambda *xs: fn(*xs))(*[jnp.asarray(values[a]) for a in args])
    np.testing.assert_allclose(np.asarray(jitted), expected.numpy(), rtol=1e-5, atol=1e-6)


def test_loss_module_defaults_bind_nothing():
    assert _render(LOSSES["torch.nn.MSELoss"], "nn.MSELoss()") == "partial(torch_mse_loss)"
    call = cst.parse_expression("nn.CrossEntropyLoss(size_average=True)")
    assert render_call(LOSSES["torch.nn.CrossEntropyLoss"], call.args, call=call).code == "JP103"


# ------------------------------------------------------------------ checkpoints

def test_checkpoint_round_trip(tmp_path):
    save = _render(OPTIM["torch.save"], "torch.save(obj, path)")
    load = _render(OPTIM["torch.load"], "torch.load(path, map_location='cpu')")
    obj = {"params": {"fc": {"kernel": jnp.arange(6.0).reshape(2, 3), "bias": jnp.ones(3)}},
           "batch_stats": {"bn": {"mean": jnp.zeros(3)}}}
    path = str(tmp_path / "ckpt.msgpack")
    eval(save, {**NAMESPACE, "obj": obj, "path": path})
    back = eval(load, {**NAMESPACE, "path": path})
    np.testing.assert_array_equal(back["params"]["fc"]["kernel"], np.arange(6.0).reshape(2, 3))
    np.testing.assert_array_equal(back["batch_stats"]["bn"]["mean"], np.zeros(3))
