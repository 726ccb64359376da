"""The training rule on small scripts: what it restructures and what it refuses (marked)."""
from __future__ import annotations

import textwrap

from transpiler.api import convert_source

HEAD = """\
import torch
import torch.nn as nn
import torch.nn.functional as F
model = nn.Linear(4, 2)
"""


def _convert(body: str):
    result = convert_source(HEAD + textwrap.dedent(body), path="s.py")
    return result.output.decode(), {d.code for d in result.diagnostics}, result


def test_module_level_loop_becomes_train_step():
    out, codes, _ = _convert("""\
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        crit = nn.CrossEntropyLoss(label_smoothing=0.1)
        for x, y in loader:
            opt.zero_grad(set_to_none=True)
            out = model(x)
            loss = crit(out, y)
            loss.backward()
            opt.step()
            print(loss.item(), out.shape)
        """)
    assert "JP601" in codes and "JP602" not in codes
    assert "@jax.jit\ndef train_step(train_state, x, y):" in out
    assert 'train_state.apply_fn({"params": params}, x, train=True, rngs={"dropout": dropout_rng})' in out
    assert "jax.value_and_grad(loss_fn, has_aux=True)" in out
    assert "train_state, loss, out = train_step(train_state, x, y)" in out
    assert "x, y = to_jax(x), to_jax(y)" in out
    assert "opt = optax.sgd(learning_rate=0.1, momentum=0.9)\ntrain_state = None" in out
    assert "crit = partial(torch_cross_entropy, label_smoothing=0.1)" in out
    assert ".backward()" not in out and "zero_grad" not in out
    compile(out, "s.py", "exec")


def test_two_backward_calls_are_left_marked():
    out, codes, _ = _convert("""\
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        for x, y in loader:
            a = model(x).sum()
            b = model(y).sum()
            a.backward(retain_graph=True)
            b.backward()
            opt.step()
        """)
    assert "JP602" in codes and "JP601" not in codes
    assert "# jaxport: JP602 training loop not converted: 2 backward() calls in one loop" in out
    assert "b.backward()" in out


def test_forward_in_nested_block_is_refused():
    out, codes, _ = _convert("""\
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        for x, y in loader:
            if x is not None:
                out = model(x)
            loss = F.mse_loss(out, y)
            loss.backward()
            opt.step()
        """)
    assert "JP602" in codes and "train_step" not in out


def test_parameter_groups_and_metric_scheduler_are_reported():
    out, codes, result = _convert("""\
        opt = torch.optim.SGD([{"params": model.weight}, {"params": model.bias, "lr": 0.0}], lr=0.1)
        sched = torch.optim.lr_scheduler.StepLR(opt, 2)
        sched.step(0.5)
        """)
    assert "JP604" in codes
    assert "JP606" in codes


def test_function_threading_and_scheduler():
    out, codes, _ = _convert("""\
        def fit(model, loader, optimizer):
            model.train()
            for i, (x, y) in enumerate(loader):
                optimizer.zero_grad()
                loss = F.mse_loss(model(x), y)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
                optimizer.step()
            return loss.item()

        def evaluate(model, x):
            model.eval()
            return model(x)

        def main():
            optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
            scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=0.9)
            last = fit(model, loader, optimizer)
            scheduler.step()
            print(evaluate(model, x0))
            torch.save(model.state_dict(), "m.pt")
        """)
    assert {"JP601", "JP605", "JP607", "JP603"} <= codes
    assert "def fit(model, loader, optimizer, train_state=None):" in out
    assert "return train_state, loss.item()" in out
    assert "train_state, last = fit(model, loader, optimizer, train_state=train_state)" in out
    assert "def evaluate(model, x, train_state=None):" in out
    assert "return eval_step(train_state, x)" in out
    assert "optimizer = optax.inject_hyperparams(optax.adam)(learning_rate=1e-3)" in out
    assert "optimizer = scheduler.optimizer" in out
    assert "train_state = scheduler.step(train_state)" in out
    assert "grads, _ = torch_clip_grad_norm(grads, 0.5)" in out
    assert 'save_checkpoint(model_variables(train_state), "m.pt")' in out
    compile(out, "s.py", "exec")
