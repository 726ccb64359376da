"""Prelude helpers of converted training scripts against torch: ReduceLROnPlateau and
SequentialLR learning rates step by step, parameter-group labels, set_optimizer_lr."""
from __future__ import annotations

import warnings

import jax.numpy as jnp
import optax
import pytest
import torch

from transpiler.prelude import training as pt


def _torch_opt():
    p = torch.nn.Parameter(torch.zeros(2))
    return torch.optim.SGD([p], lr=0.1, momentum=0.9)


def _state(tx):
    return pt.TrainState.create(apply_fn=None, params={"w": jnp.zeros(2)}, tx=tx)


def _lr(state):
    return float(pt.get_learning_rate(state.opt_state))


@pytest.mark.parametrize("kwargs", [dict(factor=0.5, patience=1),
                                    dict(mode="max", factor=0.3, patience=0, cooldown=2, threshold_mode="abs",
                                         threshold=0.05, min_lr=0.004)])
def test_reduce_lr_on_plateau_follows_torch(kwargs):
    opt = _torch_opt()
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, **kwargs)
    j = pt.TorchReduceLROnPlateau(optax.inject_hyperparams(optax.sgd)(learning_rate=0.1, momentum=0.9), **kwargs)
    state = _state(j.optimizer)
    metrics = [1.0, 0.9, 0.95, 0.97, 0.96, 0.5, 0.51, 0.52, 0.53, 0.54, 0.6, 0.49, 0.49, 0.49]
    changes = 0
    for m in metrics:
        before = opt.param_groups[0]["lr"]
        sched.step(m)
        state = j.step(state, jnp.asarray(m))
        changes += opt.param_groups[0]["lr"] != before
        assert _lr(state) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-6)
        assert j.get_last_lr()[0] == pytest.approx(sched.get_last_lr()[0], rel=1e-12)
    assert changes >= 2


def test_sequential_lr_follows_torch():
    opt = _torch_opt()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        w = torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.1, total_iters=3)
        c = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=6, eta_min=0.01)
        s = torch.optim.lr_scheduler.SequentialLR(opt, schedulers=[w, c], milestones=[3])
    tx = optax.inject_hyperparams(optax.sgd)(learning_rate=0.1, momentum=0.9)
    jw = pt.TorchLRScheduler(tx, pt.torch_linear_lr(start_factor=0.1, total_iters=3))
    tx = jw.optimizer
    jc = pt.TorchLRScheduler(tx, pt.torch_cosine_annealing_lr(6, eta_min=0.01))
    tx = jc.optimizer
    js = pt.TorchSequentialLR(tx, schedulers=[jw, jc], milestones=[3])
    state = _state(js.optimizer)
    assert _lr(state) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-6)
    for _ in range(10):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            opt.step()
            s.step()
        state = js.step(state)
        assert _lr(state) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-5)


def test_torch_param_name_and_group_labels():
    params = {"blocks_0": {"ln1": {"scale": jnp.ones(3), "bias": jnp.zeros(3)}, "qkv": {"kernel": jnp.ones((3, 9))}},
              "features": {"layers_2": {"kernel": jnp.ones((3, 3, 1, 2))}}, "pos_emb": jnp.zeros((1, 4, 3))}
    labels = pt.param_group_labels({"decay": lambda n, p: p.ndim >= 2 and "pos_emb" not in n,
                                    "no_decay": lambda n, p: n.endswith("bias")})(params)
    assert labels == {"blocks_0": {"ln1": {"scale": "frozen", "bias": "no_decay"}, "qkv": {"kernel": "decay"}},
                      "features": {"layers_2": {"kernel": "decay"}}, "pos_emb": "frozen"}
    names = []
    pt.param_group_labels({"all": lambda n, p: names.append(n) or True})(params)
    assert sorted(names) == ["blocks.0.ln1.bias", "blocks.0.ln1.weight", "blocks.0.qkv.weight",
                             "features.2.weight", "pos_emb"]


def test_set_optimizer_lr_before_and_after_the_state_exists():
    tx = optax.multi_transform({"a": optax.inject_hyperparams(optax.adam)(learning_rate=1.0),
                                "b": optax.inject_hyperparams(optax.sgd)(learning_rate=1.0)},
                               {"w": "a", "v": "b"})
    state, tx = pt.set_optimizer_lr(None, tx, 0.25)
    assert state is None
    state = pt.TrainState.create(apply_fn=None, params={"w": jnp.zeros(2), "v": jnp.zeros(2)}, tx=tx)
    lrs = [float(s.hyperparams["learning_rate"]) for s in
           (state.opt_state.inner_states["a"].inner_state, state.opt_state.inner_states["b"].inner_state)]
    assert lrs == [0.25, 0.25]
    state, _ = pt.set_optimizer_lr(state, tx, 0.5)
    assert float(state.opt_state.inner_states["b"].inner_state.hyperparams["learning_rate"]) == 0.5


def test_a_bare_layer_model_trains_and_evaluates_like_torch_linear():
    """A script whose model is a bare ``nn.Linear`` becomes a flax ``nn.Dense``, whose
    ``__call__`` has no ``train`` flag: the state's apply_fn takes the flag and drops it."""
    import jax
    import flax.linen as nn
    import numpy as np

    torch.manual_seed(0)
    linear = torch.nn.Linear(4, 2)
    dense = nn.Dense(2)
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    state = pt.create_train_state(dense, optax.sgd(0.1), jax.random.PRNGKey(0), jnp.asarray(x))
    state = state.replace(params={"kernel": jnp.asarray(linear.weight.detach().numpy().T),
                                  "bias": jnp.asarray(linear.bias.detach().numpy())})
    expected = linear(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(np.asarray(pt.eval_step(state, jnp.asarray(x))), expected, atol=1e-6)
    trained = state.apply_fn({"params": state.params}, jnp.asarray(x), train=True,
                             rngs={"dropout": jax.random.PRNGKey(1)})
    np.testing.assert_allclose(np.asarray(trained), expected, atol=1e-6)
