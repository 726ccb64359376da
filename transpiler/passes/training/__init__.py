"""Training scripts: the zero_grad / forward / loss / backward / step loop → a jitted
``train_step`` on a flax TrainState; evaluation → ``eval_step``; state threaded by name.

Optimizers, schedulers and loss modules are converted by the op tables
(``functions_optim.toml``, ``functions_losses.toml``); this rule restructures what is around
them. It runs after the ops, mutation and runtime rules, so ``updated`` nodes hold converted
expressions while ``original`` nodes still show the torch patterns.

The model is tracked by name: ``X`` in ``optimizer = optim.SGD(X.parameters(), ...)``. In a
converted script the parameters, optimizer state, BatchNorm statistics and dropout key live in
one value, ``state`` (``TrainState`` from ``prelude/training.py``), created from the first batch
of the training loop. Where the torch code passes ``model`` / ``optimizer`` objects to
functions, the converted functions take and return ``state`` (JP605).

A training loop is a ``for`` loop whose body holds, as direct statements, one
``<loss>.backward()`` and one ``<optimizer>.step()`` (``zero_grad`` anywhere in the body,
optionally gradient clipping between them). The *step segment* is every plain assignment
before ``backward()`` that calls the model or reads a value computed from it; it becomes the
body of ``loss_fn`` inside ``train_step``. Other statements before ``backward()`` that read the
segment's values (``total += loss.item()``) run after the call, and so do statements between
``backward()`` and ``step()`` that only read the step's results (not the model, an optimizer
or ``.grad``). Anything else is left as it was with JP602.

Variants: backward() in an inner ``for _ in range(k)`` loop with step() after it (gradient
accumulation → ``optax.MultiSteps``, JP609); one backward()/step() pair per model in one loop
(a GAN → one train step per optimizer, a TrainState per model named ``<model>_state``); one
backward() and a step() per model (an actor-critic's summed loss → one train step taking every
model's state, ``jax.value_and_grad`` over their parameters, each optimizer on its own state);
``with torch.no_grad():`` blocks in the loop are host code (a rollout); ``autocast`` blocks are
inlined and the GradScaler calls unwrapped (JP613). Parameter groups become
``optax.multi_transform`` (JP608), writes to ``param_groups[...]["lr"]`` ``set_optimizer_lr``
(JP610), random ops in script code take keys split from the ``torch.manual_seed`` key (JP612); a function
that samples and is called only from seeded scopes takes an ``rng_key`` parameter, split by its
callers.

Modules (one job each):

* ``common``: constants, ``LoopPlan`` / ``FunctionInfo``, ``Unsupported``.
* ``syntax``: read-only tree questions (names read and bound, calls, statement shapes).
* ``scan``: the pre-scan of the module (``visit_Module``): models, optimizers, schedulers,
  losses, seeds, and which functions read or change the training state.
* ``planning``: training-loop discovery and the ``LoopPlan`` of one backward/step pair.
* ``multi``: several models each with its own optimizer in one loop (a GAN).
* ``step``: ``train_step`` emission and the loop rewritten around its call.
* ``statements``: statement and call rewrites outside the step (train/eval/zero_grad,
  schedulers, checkpoints, GradScaler/autocast, eval_step, state threading through functions).
* ``optimizers``: learning-rate injection, parameter groups, ``param_groups`` lr writes.
* ``rng``: keys for random ops in script code.
* ``leftovers``: JP602 with a reason on every backward() / optimizer step() left unconverted.
* ``rule``: ``TrainingRule``, the mixins put together.
"""
from __future__ import annotations

from .common import RNG_KEY, STATE
from .optimizers import inject_learning_rate
from .rule import TrainingRule

__all__ = ["RNG_KEY", "STATE", "TrainingRule", "inject_learning_rate"]
