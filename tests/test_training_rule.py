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


def test_parameter_groups_lr_writes_and_accumulation():
    out, codes, _ = _convert("""\
        decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
        rest = [p for n, p in model.named_parameters() if p.dim() < 2 and not n.startswith("skip")]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
                                lr=1e-3)
        for it in range(10):
            for g in opt.param_groups:
                g["lr"] = 1e-3 * (it + 1) / 10
            for micro in range(4):
                x, y = batch()
                loss = F.mse_loss(model(x), y) / 4
                loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
            opt.step()
            opt.zero_grad()
        """)
    assert {"JP601", "JP608", "JP609", "JP610"} <= codes and "JP602" not in codes and "JP604" not in codes
    assert "decay = lambda n, p: p.ndim >= 2" in out
    assert "rest = lambda n, p: p.ndim < 2 and not n.startswith(\"skip\")" in out
    assert ('opt = optax.multi_transform({"decay": optax.inject_hyperparams(optax.adamw)(learning_rate=1e-3, '
            'weight_decay=0.1), "rest": optax.inject_hyperparams(optax.adamw)(learning_rate=1e-3, '
            'weight_decay=0.0), "frozen": optax.set_to_zero()}, param_group_labels({"decay": decay, "rest": rest}))'
            ) in out
    assert "train_state, opt = set_optimizer_lr(train_state, opt, 1e-3 * (it + 1) / 10)" in out
    assert ("create_train_state(model, optax.MultiSteps(optax.chain(torch_clip_by_norm(0.5), opt), "
            "every_k_schedule=4, use_grad_mean=False).gradient_transformation()") in out
    assert "grads, _ = torch_clip_grad_norm(grads" not in out and ".step()" not in out
    compile(out, "s.py", "exec")


def test_param_groups_other_uses_are_marked():
    out, codes, _ = _convert("""\
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        for g in opt.param_groups:
            g["lr"] *= 0.5
        """)
    assert "JP611" in codes and "# jaxport: JP611" in out


def test_plateau_and_sequential_schedulers():
    out, codes, _ = _convert("""\
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5)
        for x, y in loader:
            loss = F.mse_loss(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        plateau.step(loss.item())
        """)
    assert "JP101" not in codes and "JP606" not in codes
    assert "plateau = TorchReduceLROnPlateau(opt, factor=0.5)\nopt = plateau.optimizer" in out
    assert "train_state = plateau.step(train_state, loss.item())" in out
    assert "opt = optax.inject_hyperparams(optax.sgd)(learning_rate=0.1)" in out


def test_two_models_two_optimizers():
    out, codes, _ = _convert("""\
        critic = nn.Linear(2, 1)
        opt_g = torch.optim.Adam(model.parameters(), lr=1e-3)
        opt_c = torch.optim.Adam(critic.parameters(), lr=1e-3)
        for x in loader:
            fake = model(x)
            c_loss = critic(fake.detach()).mean() - critic(x[:, :2]).mean()
            opt_c.zero_grad()
            c_loss.backward()
            opt_c.step()
            g_loss = -critic(fake).mean()
            opt_g.zero_grad()
            g_loss.backward()
            opt_g.step()
        """)
    assert "JP601" in codes and "JP602" not in codes
    assert "def train_step(critic_state, model_state, x):" in out
    assert "def train_step_2(model_state, critic_state, x):" in out
    assert 'critic_state.apply_fn({"params": critic_state.params}, fake, train=True' in out
    assert "critic_state, c_loss = train_step(critic_state, model_state, x)" in out
    assert "model_state, g_loss = train_step_2(model_state, critic_state, x)" in out
    compile(out, "s.py", "exec")


def test_model_stepped_between_its_forward_and_use_is_refused():
    out, codes, _ = _convert("""\
        critic = nn.Linear(2, 1)
        opt_g = torch.optim.Adam(model.parameters(), lr=1e-3)
        opt_c = torch.optim.Adam(critic.parameters(), lr=1e-3)
        for x in loader:
            fake = model(x)
            score = critic(fake)
            c_loss = score.mean()
            c_loss.backward()
            opt_c.step()
            g_loss = -score.mean()
            g_loss.backward()
            opt_g.step()
        """)
    assert "JP602" in codes and "train_step" not in out
    assert "critic is stepped between its forward pass and the backward() that uses it" in out


def test_random_ops_take_keys_split_from_the_seed():
    out, codes, _ = _convert("""\
        def noise(n):
            return torch.randn(n, 4) + torch.rand(n, 4)
        torch.manual_seed(3)
        perm = torch.randperm(10)
        """)
    assert "JP612" in codes and "JP403" not in codes
    assert "def noise(n):\n    global rng_key\n    rng_key, sample_key_1, sample_key_2 = jax.random.split(rng_key, 3)" in out
    assert "rng_key, sample_key = jax.random.split(rng_key)\nperm = jax.random.permutation(sample_key, 10)" in out
    unseeded, codes, _ = _convert("perm = torch.randperm(10)\n")
    assert "JP403" in codes and "JP612" not in codes


def test_amp_is_removed_with_a_warning_and_checkpoints_restore():
    out, codes, _ = _convert("""\
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        scaler = torch.cuda.amp.GradScaler()
        for x, y in loader:
            opt.zero_grad()
            with torch.autocast(device_type="cuda", dtype=torch.float16):
                loss = F.mse_loss(model(x), y)
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            scaler.step(opt)
            scaler.update()
        ckpt = torch.load("m.pt")
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["opt"])
        """)
    assert {"JP601", "JP613", "JP614"} <= codes and "JP602" not in codes and "JP101" not in codes
    assert "# jaxport: JP613 autocast removed" in out and "scaler = None" in out
    assert "autocast" not in out.split("# jaxport: JP613 autocast removed")[1].split("\n", 1)[1]
    assert not [line for line in out.splitlines() if "scaler." in line and "# jaxport" not in line]
    assert "grads, _ = torch_clip_grad_norm(grads, 1.0)" in out
    assert 'train_state = load_model_state(train_state, ckpt["model"])' in out
    assert 'train_state = load_optimizer_state(train_state, ckpt["opt"])' in out
    compile(out, "s.py", "exec")


def test_no_grad_rollout_is_host_code_and_step_sampling_uses_the_state_key():
    out, codes, _ = _convert("""\
        from torch.distributions import Categorical
        torch.manual_seed(0)
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        for x in loader:
            with torch.no_grad():
                a = Categorical(logits=model(x)).sample()
            r = reward(a)
            dist = Categorical(logits=model(x))
            loss = -(dist.log_prob(a) * r).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        """)
    assert "JP601" in codes and "JP602" not in codes and "JP403" not in codes
    host = out[out.index("for x in loader:"):]
    assert host.index("train_state = create_train_state(model, opt") < host.index("eval_step(train_state, x)")
    assert "def train_step(train_state, x, a, r):" in out
    assert "dropout_rng, sample_rng, rng = jax.random.split(train_state.rng, 3)" in out
    assert "rng_key=sample_rng)" in out
    compile(out, "s.py", "exec")


def test_forward_pass_may_rebind_its_input():
    out, codes, _ = _convert("""\
        rnn = nn.GRU(4, 8, batch_first=True)
        opt = torch.optim.Adam(rnn.parameters(), lr=1e-2)
        h = torch.zeros(1, 2, 8)
        for x, y in loader:
            h = h.detach()
            out, h = rnn(x, h)
            loss = F.mse_loss(out, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        """)
    assert "JP601" in codes and "JP602" not in codes
    assert "    def loss_fn(params, h=h):" in out
    assert "train_state, loss, h = train_step(train_state, h, x, y)" in out


def test_read_only_statements_between_backward_and_step_run_after_the_step():
    out, codes, _ = _convert("""\
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        total = 0.0
        for i, (x, y) in enumerate(loader):
            opt.zero_grad()
            loss = F.mse_loss(model(x), y)
            loss.backward()
            total += loss.item()
            if i % 10 == 0:
                print(i, loss.item())
            opt.step()
        """)
    assert "JP601" in codes and "JP602" not in codes
    step_call = out.index("train_state, loss = train_step(train_state, x, y)")
    assert step_call < out.index("    total += loss.item()") < out.index("        print(i, loss.item())")
    assert ".backward()" not in out and "opt.step()" not in out


def test_statement_seeing_gradients_between_backward_and_step_is_refused():
    out, codes, result = _convert("""\
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        for x, y in loader:
            opt.zero_grad()
            loss = F.mse_loss(model(x), y)
            loss.backward()
            norm = sum(p.grad.norm() for p in model.parameters())
            opt.step()
        """)
    assert "JP602" in codes and "JP601" not in codes
    assert "a statement between backward() and step() uses model" in out
    d = [d for d in result.diagnostics if d.code == "JP602"][0]
    assert (d.line, d.col) == (6, 0)   # the loop


def _jp602(result):
    return [(d.line, d.col, d.message) for d in result.diagnostics if d.code == "JP602"]


def test_backward_on_stored_outputs_outside_a_loop_is_marked():
    # pytorch/examples reinforce.py: log-probabilities saved while acting, the loss built later
    out, codes, result = _convert("""\
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        model.saved_log_probs = []

        def select_action(state):
            probs = F.softmax(model(state), dim=-1)
            action = probs.argmax()
            model.saved_log_probs.append(torch.log(probs[action]))
            return action.item()

        def finish_episode(returns):
            policy_loss = []
            for log_prob, R in zip(model.saved_log_probs, returns):
                policy_loss.append(-log_prob * R)
            optimizer.zero_grad()
            loss = torch.stack(policy_loss).sum()
            loss.backward()
            optimizer.step()
        """)
    found = _jp602(result)
    assert [(line, col) for line, col, _ in found] == [(20, 4), (21, 4)]
    assert found[0][2].startswith("loss.backward() not converted: the loss is built from tensors computed outside "
                                  "this function (model.saved_log_probs): in JAX the forward pass must run inside")
    assert found[1][2].startswith("optimizer.step() not converted: the loss is built from tensors")
    assert "    # jaxport: JP602 loss.backward() not converted" in out


def test_optimizer_held_by_the_module_is_marked():
    # minimalRL: the model builds its own optimizer and trains itself in train_net()
    out, codes, result = _convert("""\
        class Policy(nn.Module):
            def __init__(self):
                super().__init__()
                self.fc = nn.Linear(4, 2)
                self.optimizer = torch.optim.Adam(self.parameters(), lr=2e-4)

            def forward(self, x):
                return self.fc(x)

            def train_net(self, s, a):
                loss = F.cross_entropy(self.forward(s), a)
                self.optimizer.zero_grad()
                loss.mean().backward()
                self.optimizer.step()
        """)
    found = _jp602(result)
    assert [(line, col) for line, col, _ in found] == [(17, 8), (18, 8)]
    assert found[0][2] == ("loss.mean().backward() not converted: the optimizer is an attribute of the module "
                           "(self.optimizer): keep the optimizer and its state outside the flax module, and write "
                           "the update as a jitted function of the parameters (jax.value_and_grad + optax)")
    assert found[1][2].startswith("self.optimizer.step() not converted: the optimizer is an attribute")


def test_train_step_function_and_while_loop_are_marked():
    out, codes, result = _convert("""\
        opt = torch.optim.SGD(model.parameters(), lr=0.1)

        def update(x, y):
            opt.zero_grad()
            loss = F.mse_loss(model(x), y)
            loss.backward()
            opt.step()
            return loss.item()

        def fit(x, y):
            step = 0
            while step < 10:
                opt.zero_grad()
                loss = F.mse_loss(model(x), y)
                loss.backward()
                opt.step()
                step += 1
        """)
    # update() is a single-step function (converted, see test_single_step_function_*); the while loop is not
    found = _jp602(result)
    assert [(line, col) for line, col, _ in found] == [(19, 8), (20, 8)]
    assert found[0][2].startswith("loss.backward() not converted: the training loop is a while loop")
    assert [(d.line, d.col) for d in result.diagnostics if d.code == "JP601"] == [(7, 0)]


def test_one_loss_stepping_two_models_is_one_joint_train_step():
    # actor-critic: one summed loss, one backward(), each model's optimizer stepped
    out, codes, result = _convert("""\
        def main():
            actor = nn.Linear(4, 3)
            critic = nn.Linear(4, 1)
            actor_opt = torch.optim.Adam(actor.parameters(), lr=1e-2)
            critic_opt = torch.optim.SGD(critic.parameters(), lr=1e-2)
            for x, r in loader:
                values = critic(x).squeeze(-1)
                advantage = r - values.detach()
                logp = F.log_softmax(actor(x), dim=-1)[:, 0]
                loss = -(logp * advantage).mean() + 0.5 * F.mse_loss(values, r)
                actor_opt.zero_grad()
                critic_opt.zero_grad()
                loss.backward()
                total = loss.item()
                actor_opt.step()
                critic_opt.step()
        """)
    assert "JP601" in codes and "JP602" not in codes
    assert "@jax.jit\ndef train_step(actor_state, critic_state, x, r):" in out
    assert "    def loss_fn(actor_params, critic_params):" in out
    assert ('critic_state.apply_fn({"params": critic_params}, x, train=True, rngs={"dropout": critic_dropout_rng})'
            in out)
    assert ("loss, (actor_grads, critic_grads) = jax.value_and_grad(loss_fn, argnums=(0, 1))(actor_state.params, "
            "critic_state.params)") in out
    assert "actor_state = actor_state.apply_gradients(grads=actor_grads, rng=actor_rng)" in out
    assert "critic_state = critic_state.apply_gradients(grads=critic_grads, rng=critic_rng)" in out
    assert "actor_state, critic_state, loss = train_step(actor_state, critic_state, x, r)\n" in out
    assert out.index("train_step(actor_state, critic_state, x, r)\n") < out.index("total = loss.item()")
    assert ".backward()" not in out and "_opt.step()" not in out
    compile(out, "s.py", "exec")


def test_joint_step_missing_a_models_forward_is_refused():
    out, codes, result = _convert("""\
        def main():
            actor = nn.Linear(4, 3)
            critic = nn.Linear(4, 1)
            actor_opt = torch.optim.Adam(actor.parameters(), lr=1e-2)
            critic_opt = torch.optim.Adam(critic.parameters(), lr=1e-2)
            for x in loader:
                loss = actor(x).sum()
                loss.backward()
                actor_opt.step()
                critic_opt.step()
        """)
    assert "JP601" not in codes
    assert "# jaxport: JP602 training loop not converted: no forward pass of critic before backward()" in out


def test_sampling_function_called_from_a_seeded_function_takes_a_key():
    out, codes, result = _convert("""\
        from torch.distributions import Categorical

        def draw(logits):
            return Categorical(logits=logits).sample()

        def main():
            torch.manual_seed(0)
            a = draw(torch.zeros(3))
            b = draw(torch.ones(3))
        """)
    assert "JP403" not in codes and "JP612" in codes
    assert "def draw(logits, rng_key=None):" in out
    assert "    rng_key, sample_key = jax.random.split(rng_key)\n    a = draw(jnp.zeros(3), rng_key=sample_key)" in out
    assert "    rng_key, sample_key = jax.random.split(rng_key)\n    b = draw(jnp.ones(3), rng_key=sample_key)" in out
    ns = {}
    exec(compile(out, "s.py", "exec"), ns)
    ns["main"]()


def test_sampling_function_with_an_unseeded_caller_keeps_jp403():
    out, codes, result = _convert("""\
        from torch.distributions import Categorical

        def draw(logits):
            return Categorical(logits=logits).sample()

        def main():
            torch.manual_seed(0)
            a = draw(torch.zeros(3))

        def other():
            return draw(torch.zeros(3))
        """)
    assert "JP403" in codes and "def draw(logits):" in out


def test_model_called_in_a_function_without_its_state_is_marked():
    # several models: their TrainStates are locals of the function building the optimizers
    out, codes, result = _convert("""\
        def rollout(actor, x):
            with torch.no_grad():
                return actor(x).argmax(-1)

        def main():
            actor = nn.Linear(4, 3)
            critic = nn.Linear(4, 1)
            actor_opt = torch.optim.Adam(actor.parameters(), lr=1e-2)
            critic_opt = torch.optim.Adam(critic.parameters(), lr=1e-2)
            for x in loader:
                a = rollout(actor, x)
                loss = actor(x).sum() + critic(x).sum()
                loss.backward()
                actor_opt.step()
                critic_opt.step()
        """)
    found = [(d.line, d.col, d.message) for d in result.diagnostics if d.code == "JP606"]
    assert [(line, col) for line, col, _ in found] == [(7, 15)]
    assert found[0][2].startswith("actor(...) in rollout(): with several models the training states are not passed")
    assert "# jaxport: JP606 actor(...) in rollout()" in out


def test_single_step_function_threads_the_state_through_its_callers():
    # the tutorial shape: train(input, target) makes one step and returns (output, loss.item())
    out, codes, result = _convert("""\
        opt = torch.optim.Adam(model.parameters(), lr=0.01)
        crit = nn.MSELoss()

        def train(input, target):
            opt.zero_grad()
            output = model(input)
            loss = crit(output, target)
            loss.backward()
            opt.step()
            return output, loss.item()

        def run(batches):
            for x, y in batches:
                output, loss = train(x, y)
                print(loss)
        """)
    assert "JP602" not in codes and "JP601" in codes
    assert "def train(input, target, train_state=None):\n    input, target = to_jax(input), to_jax(target)\n" \
           "    if train_state is None:\n        train_state = create_train_state(model, opt, " \
           "jax.random.PRNGKey(0), input)\n    train_state, loss, output = train_step(train_state, input, target)\n" \
           "    return train_state, output, loss.item()\n" in out
    assert "def run(batches, train_state=None):" in out
    assert "        train_state, output, loss = train(x, y, train_state=train_state)\n" in out
    assert "def train_step(train_state, input, target):" in out
    assert ".backward()" not in out and "zero_grad" not in out


def test_single_step_function_returning_one_value_is_unpacked_in_parentheses():
    out, codes, _ = _convert("""\
        opt = torch.optim.SGD(model.parameters(), lr=0.1)

        def step(x, y):
            out = model(x)
            loss = F.mse_loss(out, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            result = (loss.item(), out)
            return result

        for x, y in loader:
            l, o = step(x, y)
        """)
    assert "JP601" in codes and "JP602" not in codes
    assert "    return train_state, result\n" in out
    assert "    train_state, (l, o) = step(x, y, train_state=train_state)\n" in out


def test_single_step_function_called_inside_an_expression_is_marked():
    out, codes, result = _convert("""\
        opt = torch.optim.SGD(model.parameters(), lr=0.1)

        def step(x, y):
            opt.zero_grad()
            loss = F.mse_loss(model(x), y)
            loss.backward()
            opt.step()
            return loss.item()

        total = 0.0
        for x, y in loader:
            total += step(x, y)
        """)
    found = _jp602(result)
    assert [(line, col) for line, col, _ in found] == [(10, 4), (11, 4)]
    assert found[0][2] == ("loss.backward() not converted: backward() outside a for loop, in a single-step function "
                           "not converted: step is used other than as a call that is a statement or an assignment's "
                           "value (its calls must take and return the training state)")
    assert "JP601" not in codes


def test_trainer_class_keeps_the_state_on_the_instance():
    # the DDP tutorial's Trainer: a plain class holding model and optimizer; _run_batch steps once
    out, codes, result = _convert("""\
        class Trainer:
            def __init__(self, model, optimizer):
                self.model = model
                self.optimizer = optimizer

            def _run_batch(self, source, targets):
                self.optimizer.zero_grad()
                output = self.model(source)
                loss = F.cross_entropy(output, targets)
                loss.backward()
                self.optimizer.step()

            def _run_epoch(self, data):
                for source, targets in data:
                    self._run_batch(source, targets)

            def save(self, path):
                torch.save(self.model.module.state_dict(), path)

        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        Trainer(model, opt)._run_epoch(loader)
        """)
    assert "JP602" not in codes and "JP601" in codes
    assert "        self.optimizer = optimizer\n        self.train_state = None\n" in out
    assert "    def _run_batch(self, source, targets):\n        source, targets = to_jax(source), to_jax(targets)\n" \
           "        if self.train_state is None:\n            self.train_state = create_train_state(self.model, " \
           "self.optimizer, jax.random.PRNGKey(0), source)\n        self.train_state, loss = " \
           "train_step(self.train_state, source, targets)\n" in out
    assert "save_checkpoint(model_variables(self.train_state), path)" in out
    assert "self._run_batch(source, targets)\n" in out     # callers unchanged
    assert ".backward()" not in out and "zero_grad" not in out


def test_trainer_class_stepping_two_optimizers_is_marked():
    out, codes, result = _convert("""\
        class Trainer:
            def __init__(self, actor, critic):
                self.actor, self.critic = actor, critic
                self.a_opt = torch.optim.Adam(actor.parameters())
                self.c_opt = torch.optim.Adam(critic.parameters())

            def update(self, s, r):
                loss = (self.critic(s) - r).pow(2).mean()
                self.c_opt.zero_grad()
                loss.backward()
                self.c_opt.step()
                a_loss = -self.critic(self.actor(s)).mean()
                self.a_opt.zero_grad()
                a_loss.backward()
                self.a_opt.step()
        """)
    found = _jp602(result)
    assert [line for line, _, _ in found] == [14, 15, 18, 19]
    assert all("the class Trainer holds the optimizer, and the class steps 2 optimizers (a_opt, c_opt)" in m
               for _, _, m in found)
    assert "JP601" not in codes


def test_loss_read_after_the_forward_pass_moves_before_the_step_and_loss_fn_name_is_kept_apart():
    out, codes, result = _convert("""\
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        loss_fn = nn.MSELoss()
        for x, y in loader:
            out = model(x)
            opt.zero_grad()
            # the target
            t = y * 2
            print("after the forward pass")
            loss_fn(out, t).backward()
            opt.step()
        for x, y in loader:
            out = model(x)
            if y.sum() > 0:
                t = y
            else:
                t = -y
            loss_fn(out, t).backward()
            opt.step()
        """)
    found = _jp602(result)
    assert [(line, col) for line, col, _ in found] == [(15, 0)]
    assert found[0][2] == "training loop not converted: t is computed after the forward pass starts and read by the loss"
    # the first loop: t is computed before the step, which reads it; the print stays after it
    assert ("    x, y = to_jax(x), to_jax(y)\n    # the target\n    t = y * 2\n    if train_state is None:\n"
            "        train_state = create_train_state(model, opt, jax.random.PRNGKey(0), x)\n"
            "    train_state, loss_value = train_step(train_state, x, t)\n"
            '    print("after the forward pass")\n') in out
    # the step's own loss function is renamed: the script has a loss_fn
    assert "    def compute_loss(params):\n" in out and "        return loss_fn(out, t)\n" in out
    assert "    loss_value, grads = jax.value_and_grad(compute_loss)(train_state.params)\n" in out
