"""Training-step speed of converted corpus models against hand-written flax and PyTorch.

    python -m benchmarks.train_step [--quick] [--json FILE] [--only NAME ...]

For each corpus model (MLP, LeNet, ResNet, TinyGPT with per-head projections, NanoGPT with a
fused q/k/v projection, UNet, LSTM) the corpus file is converted
with jaxport into a temporary module; its training step (forward in train mode, loss,
backward, optax Adam update; one ``jax.jit`` with the state buffers donated) is timed against
the same step over the idiomatic flax model of ``benchmarks/reference_models.py`` on the
same batch, and against PyTorch eager (``zero_grad``, forward, loss, ``backward``, Adam
``step``) on the original corpus model. ``torch.compile`` is tried in a child process with a
time budget (not in ``--quick``); it is reported as skipped when it fails or runs out of time.

Timing: after warm-up (compilation), the variants are timed in rounds, each round running
every variant once in an order that rotates from round to round (the machine is shared, so
interleaving keeps slow spells from favouring one variant); a sample is the mean over enough
consecutive steps to last ~40 ms (~10 ms with ``--quick``); a variant's time is the median of
its samples. Times are process CPU time (all threads; XLA and torch run single-threaded by
default), so waiting for a core on a loaded machine does not count; the reference row's note
gives the wall-clock ratio too. Ratios are taken between medians of the same run.

``measure(quick)`` returns rows ``{"target", "goal", "measured", "met", "note"}``: per model
one row "converted / reference" with the goal ≤ 1.10 (``met`` a bool), and one row
"converted / torch eager" reported without a goal (``met`` None; ``note`` also gives the
torch.compile figure when it ran).

Image models (LeNet, ResNet, UNet) are also converted with ``--layout nhwc`` and fed
channels-last batches (as the reference is): the row "converted --layout nhwc / flax
reference" carries the goal, and the default (NCHW) conversion's row "converted / flax
reference" is reported without one (``goal`` "report"). When the nhwc conversion kept the
model channels-first (its class has no ``jaxport_layout``), the nhwc row is not measured
(``measured`` None, ``met`` None, "skipped: the converter kept NCHW") and the NCHW row keeps
the goal. The torch eager row compares torch with the conversion that carries the goal.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "corpus" / "models"
GOAL = 1.10


# ------------------------------------------------------------------ model table


@dataclass
class Case:
    name: str
    corpus: str                 # corpus/models/<corpus>.py
    cls: str                    # class in that file
    init: dict                  # constructor kwargs, same for torch and the converted model
    ref: Callable[[], Any]      # builds the reference flax module
    make_batch: Callable[[Any], tuple]   # numpy RandomState -> (x, y), torch layout
    loss: str                   # how the output and y become a loss (see _jax_loss)
    nchw: bool = False          # the reference takes channels-last images
    quick_init: dict = field(default_factory=dict)
    quick_batch: Callable[[Any], tuple] | None = None


def _cases() -> list[Case]:
    import numpy as np
    from benchmarks import reference_models as R

    def floats(*shape):
        return lambda rs: rs.standard_normal(shape).astype(np.float32)

    def ints(high, *shape):
        return lambda rs: rs.randint(0, high, size=shape).astype(np.int64)

    def batch(x, y):
        return lambda rs: (x(rs), y(rs))

    return [
        Case("MLP", "mlp", "MLP", dict(in_features=64, hidden=256, out_features=10),
             lambda: R.MLP(hidden=256, out_features=10),
             batch(floats(128, 64), ints(10, 128)), "ce",
             quick_init=dict(in_features=16, hidden=32, out_features=4),
             quick_batch=batch(floats(8, 16), ints(4, 8))),
        Case("LeNet", "mnist_cnn", "Net", dict(num_classes=10), lambda: R.LeNet(num_classes=10),
             batch(floats(64, 1, 14, 14), ints(10, 64)), "nll", nchw=True),
        Case("ResNet", "resnet", "ResNet", dict(num_blocks=[2, 2], num_classes=10, width=16),
             lambda: R.ResNet(num_blocks=(2, 2), num_classes=10, width=16),
             batch(floats(16, 3, 16, 16), ints(10, 16)), "ce", nchw=True),
        Case("TinyGPT", "tiny_gpt", "TinyGPT",
             dict(vocab_size=65, block_size=64, n_embd=64, n_head=4, n_layer=2),
             lambda: R.TinyGPT(vocab_size=65, block_size=64, n_embd=64, n_head=4, n_layer=2),
             batch(ints(65, 16, 64), ints(65, 16, 64)), "ce_seq"),
        Case("NanoGPT", "nano_gpt", "GPT",
             dict(vocab_size=65, block_size=64, n_embd=64, n_head=4, n_layer=2),
             lambda: R.GPT(vocab_size=65, block_size=64, n_embd=64, n_head=4, n_layer=2),
             batch(ints(65, 16, 64), ints(65, 16, 64)), "ce_seq"),
        Case("UNet", "unet", "UNet", dict(n_channels=3, n_classes=2, base=8, bilinear=True),
             lambda: R.UNet(n_classes=2, base=8),
             batch(floats(4, 3, 32, 32), ints(2, 4, 32, 32)), "ce_pixel", nchw=True),
        Case("LSTM", "char_rnn", "CharLSTM",
             dict(vocab_size=40, embed_dim=32, hidden_size=128, num_layers=2, dropout=0.1),
             lambda: R.CharLSTM(vocab_size=40, embed_dim=32, hidden_size=128, num_layers=2, dropout=0.1),
             batch(ints(40, 16, 32), ints(40, 16, 32)), "ce_seq"),
    ]


# ------------------------------------------------------------------ loading models


def _import_path(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def convert_corpus(stem: str, tmp: Path, layout: str = "nchw"):
    """The corpus file converted by jaxport (``layout``: the ``--layout`` option), imported
    as a module."""
    from transpiler.api import Options, convert_source
    src = CORPUS / f"{stem}.py"
    result = convert_source(src.read_text(encoding="utf-8"), str(src), Options(layout=layout))
    if result.status not in ("converted", "partial"):
        first = result.diagnostics[0].message if result.diagnostics else "no diagnostics"
        raise RuntimeError(f"jaxport could not convert {src.name} ({result.status}): {first}")
    tag = "" if layout == "nchw" else f"_{layout}"
    out = tmp / f"bench_{stem}{tag}_jax.py"
    out.write_bytes(result.output)
    return _import_path(out, f"bench_{stem}{tag}_jax")


def channels_last(cls) -> dict | None:
    """The ``jaxport_layout`` declaration of a converted class (None: channels-first)."""
    layout = getattr(cls, "jaxport_layout", None)
    return layout if isinstance(layout, dict) else None


def torch_corpus(stem: str):
    return _import_path(CORPUS / f"{stem}.py", f"bench_{stem}_torch")


# ------------------------------------------------------------------ JAX train steps


def _first(out):
    return out[0] if isinstance(out, tuple) else out


def _jax_loss(kind: str, out, y, channels_last: bool):
    import jax
    import jax.numpy as jnp
    import optax
    out = _first(out)
    if kind == "nll":           # the model returns log-probabilities
        return -jnp.mean(jnp.take_along_axis(out, y[:, None], axis=1))
    if kind == "ce_pixel" and not channels_last:
        out = jnp.moveaxis(out, 1, -1)   # classes on axis 1 (torch layout)
    del jax
    return optax.softmax_cross_entropy_with_integer_labels(out, y).mean()


def make_jax_step(model, kind: str, channels_last: bool, x, y, seed: int = 0):
    """(jitted step, initial state): one jit over forward + loss + backward + Adam update,
    the state donated."""
    import jax
    import optax
    from transpiler.prelude.training import TrainState

    rng = jax.random.PRNGKey(seed)
    params_rng, dropout_rng, rng = jax.random.split(rng, 3)
    variables = model.init({"params": params_rng, "dropout": dropout_rng}, x)
    state = TrainState.create(apply_fn=model.apply, params=variables["params"], tx=optax.adam(1e-3),
                              batch_stats=variables.get("batch_stats", {}), rng=rng)
    has_bn = bool(state.batch_stats)

    def step(state, x, y):
        rng, drop = jax.random.split(state.rng)

        def loss_fn(params):
            variables = {"params": params}
            if has_bn:
                variables["batch_stats"] = state.batch_stats
                out, updates = state.apply_fn(variables, x, train=True, rngs={"dropout": drop},
                                              mutable=["batch_stats"])
                stats = updates["batch_stats"]
            else:
                out = state.apply_fn(variables, x, train=True, rngs={"dropout": drop})
                stats = state.batch_stats
            return _jax_loss(kind, out, y, channels_last), stats

        (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        return state.apply_gradients(grads=grads, batch_stats=stats, rng=rng), loss

    return jax.jit(step, donate_argnums=0), state


class JaxRunner:
    def __init__(self, step, state, x, y):
        self.step, self.state, self.x, self.y = step, state, x, y
        self.loss = None

    def __call__(self, n: int) -> None:
        import jax
        state, loss = self.state, None
        for _ in range(n):
            state, loss = self.step(state, self.x, self.y)
        jax.block_until_ready((state, loss))
        self.state, self.loss = state, loss


def param_count(tree) -> int:
    import jax
    return sum(int(a.size) for a in jax.tree_util.tree_leaves(tree))


# ------------------------------------------------------------------ torch


def _torch_loss(kind: str, out, y):
    import torch.nn.functional as F
    out = _first(out)
    if kind == "nll":
        return F.nll_loss(out, y)
    if kind == "ce_seq":
        return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))
    return F.cross_entropy(out, y)


class TorchRunner:
    def __init__(self, model, kind, x, y, compiled: bool = False):
        import torch
        self.model = model.train()
        self.fwd = torch.compile(model) if compiled else model
        self.opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        self.kind, self.x, self.y = kind, x, y

    def __call__(self, n: int) -> None:
        for _ in range(n):
            self.opt.zero_grad(set_to_none=True)
            loss = _torch_loss(self.kind, self.fwd(self.x), self.y)
            loss.backward()
            self.opt.step()


# ------------------------------------------------------------------ timing


def calibrate(run: Callable[[int], None], sample_s: float) -> int:
    """Steps per sample so that one sample lasts about ``sample_s`` (run is warm)."""
    n = 1
    while True:
        t = time.perf_counter()
        run(n)
        dt = time.perf_counter() - t
        if dt >= sample_s / 4 or n >= 1 << 14:
            return max(1, min(1 << 14, round(n * sample_s / max(dt, 1e-9))))
        n *= 4


def time_interleaved(runners: dict[str, Callable[[int], None]], rounds: int,
                     sample_s: float) -> dict[str, dict[str, list[float]]]:
    """Seconds per step, one sample per variant per round, the order rotating each round:
    ``{"cpu": {variant: [...]}, "wall": {variant: [...]}}``. "cpu" is the process's CPU time
    (all its threads), which time spent waiting for a core on a loaded machine does not
    inflate; "wall" is elapsed time."""
    steps = {k: calibrate(r, sample_s) for k, r in runners.items()}
    names = list(runners)
    samples: dict[str, dict[str, list[float]]] = {"cpu": {k: [] for k in names},
                                                  "wall": {k: [] for k in names}}
    for i in range(rounds):
        order = names[i % len(names):] + names[:i % len(names)]
        for k in order:
            c, t = time.process_time(), time.perf_counter()
            runners[k](steps[k])
            samples["wall"][k].append((time.perf_counter() - t) / steps[k])
            samples["cpu"][k].append((time.process_time() - c) / steps[k])
    return samples


# ------------------------------------------------------------------ torch.compile (child)


_COMPILE_CHILD = r"""
import json, sys, time
sys.path.insert(0, {root!r})
from benchmarks import train_step as B
case = next(c for c in B._cases() if c.name == {name!r})
import os, numpy as np, torch
if int(os.environ.get("JAXPORT_BENCH_THREADS", "0")) > 0:
    torch.set_num_threads(int(os.environ["JAXPORT_BENCH_THREADS"]))
x, y = case.make_batch(np.random.RandomState(0))
torch.manual_seed(0)
model = getattr(B.torch_corpus(case.corpus), case.cls)(**case.init)
t0 = time.perf_counter()
eager = B.TorchRunner(model, case.loss, torch.from_numpy(x), torch.from_numpy(y))
comp = B.TorchRunner(model, case.loss, torch.from_numpy(x), torch.from_numpy(y), compiled=True)
comp(3)
compile_s = time.perf_counter() - t0
eager(2)
s = B.time_interleaved({{"eager": eager, "compiled": comp}}, {rounds}, {sample_s})
print("RESULT " + json.dumps({{"compile_s": compile_s,
      "eager": float(np.median(s["cpu"]["eager"])), "compiled": float(np.median(s["cpu"]["compiled"]))}}))
"""


def torch_compile_time(case: Case, budget_s: float, rounds: int, sample_s: float) -> dict:
    """{"eager", "compiled", "compile_s"} seconds measured in a child process, or {"skipped": why}."""
    code = _COMPILE_CHILD.format(root=str(ROOT), name=case.name, rounds=rounds, sample_s=sample_s)
    try:
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              timeout=budget_s, cwd=str(ROOT))
    except subprocess.TimeoutExpired:
        return {"skipped": f"torch.compile did not finish within {budget_s:.0f} s"}
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return {"skipped": f"torch.compile failed: {last[:160]}"}


# ------------------------------------------------------------------ measuring


def measure_case(case: Case, tmp: Path, quick: bool, compile_budget_s: float | None) -> list[dict]:
    import numpy as np
    import jax.numpy as jnp
    import torch

    init = case.quick_init or case.init if quick else case.init
    make_batch = case.quick_batch or case.make_batch if quick else case.make_batch
    x, y = make_batch(np.random.RandomState(0))
    xj, yj = jnp.asarray(x), jnp.asarray(y)
    x_ref = jnp.asarray(np.moveaxis(x, 1, -1)) if case.nchw else xj
    y_ref = yj
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in init.items()}

    converted = getattr(convert_corpus(case.corpus, tmp), case.cls)(**kwargs)
    nhwc_cls = getattr(convert_corpus(case.corpus, tmp, "nhwc"), case.cls) if case.nchw else None
    nhwc_layout = channels_last(nhwc_cls)
    reference = case.ref() if not quick or not case.quick_init else _quick_reference(case)
    t0 = time.perf_counter()
    conv_step, conv_state = make_jax_step(converted, case.loss, False, xj, yj)
    ref_step, ref_state = make_jax_step(reference, case.loss, True, x_ref, y_ref)
    conv_params, ref_params = param_count(conv_state.params), param_count(ref_state.params)
    conv = JaxRunner(conv_step, conv_state, xj, yj)
    ref = JaxRunner(ref_step, ref_state, x_ref, y_ref)
    conv(2)
    ref(2)
    runners = {"converted": conv, "reference": ref}
    if nhwc_layout is not None:   # channels-last images in; 4-D outputs channels-last with "returns"
        nhwc_step, nhwc_state = make_jax_step(nhwc_cls(**kwargs), case.loss,
                                              bool(nhwc_layout.get("returns")), x_ref, y_ref)
        nhwc_params = param_count(nhwc_state.params)
        runners["nhwc"] = JaxRunner(nhwc_step, nhwc_state, x_ref, y_ref)
        runners["nhwc"](2)
    compile_s = time.perf_counter() - t0

    torch.manual_seed(0)
    tmodel = getattr(torch_corpus(case.corpus), case.cls)(**init)
    eager = TorchRunner(tmodel, case.loss, torch.from_numpy(x), torch.from_numpy(y))
    eager(2)

    rounds, sample_s = (5, 0.01) if quick else (21, 0.04)
    both = time_interleaved({**runners, "torch": eager}, rounds, sample_s)
    s = both["cpu"]
    med = {k: statistics.median(v) for k, v in s.items()}
    wall = {k: statistics.median(v) for k, v in both["wall"].items()}
    spread = {k: (min(v) / med[k], max(v) / med[k]) for k, v in s.items()}

    def ratio_row(key: str, target: str, params: int, goal: bool) -> dict:
        ratio = med[key] / med["reference"]
        note = (f"CPU time converted {med[key] * 1e3:.3f} ms, reference "
                f"{med['reference'] * 1e3:.3f} ms per step (median of {rounds}; converted samples "
                f"{spread[key][0]:.2f}-{spread[key][1]:.2f}x of median); wall-clock "
                f"ratio {wall[key] / wall['reference']:.3f}; params {params} vs "
                f"{ref_params}; jit+warm-up {compile_s:.1f} s")
        return {"target": target, "goal": f"<= {GOAL:.2f}" if goal else "report",
                "measured": round(ratio, 3), "met": (ratio <= GOAL) if goal else None, "note": note}

    rows = []
    if case.nchw:
        nhwc_target = f"train step {case.name}: converted --layout nhwc / flax reference"
        if "nhwc" in runners:
            rows.append(ratio_row("nhwc", nhwc_target, nhwc_params, True))
        else:
            rows.append({"target": nhwc_target, "goal": f"<= {GOAL:.2f}", "measured": None, "met": None,
                         "note": "skipped: the converter kept NCHW (the --layout nhwc conversion of "
                                 f"{case.cls} has no jaxport_layout)"})
    main = "nhwc" if "nhwc" in runners else "converted"
    rows.append(ratio_row("converted", f"train step {case.name}: converted / flax reference",
                          conv_params, main == "converted"))
    if main == "nhwc":
        rows[-1]["note"] = "the default (NCHW) conversion; " + rows[-1]["note"]
    torch_note = (f"torch eager {med['torch'] * 1e3:.3f} ms per step "
                  f"(torch eager / converted {med['torch'] / med[main]:.2f}"
                  + (", the --layout nhwc conversion)" if main == "nhwc" else ")"))
    if compile_budget_s:
        tc = torch_compile_time(case, compile_budget_s, rounds, sample_s)
        if "skipped" in tc:
            torch_note += f"; {tc['skipped']}"
        else:
            # the child's own eager time scales its compiled time to this run's eager median
            compiled = tc["compiled"] * med["torch"] / tc["eager"]
            torch_note += (f"; torch.compile {compiled * 1e3:.3f} ms per step (converted / compiled "
                           f"{med[main] / compiled:.2f}; compiled in {tc['compile_s']:.0f} s)")
    elif not quick:
        torch_note += "; torch.compile not tried"
    else:
        torch_note += "; torch.compile skipped in --quick"
    rows.append({"target": f"train step {case.name}: converted / torch eager", "goal": "report",
                 "measured": round(med[main] / med["torch"], 3), "met": None,
                 "note": torch_note})
    return rows


def _quick_reference(case: Case):
    from benchmarks import reference_models as R
    if case.name == "MLP":
        return R.MLP(hidden=case.quick_init["hidden"], out_features=case.quick_init["out_features"])
    return case.ref()


def _measure_here(quick: bool, only: list[str] | None, compile_budget_s: float | None,
                  on_rows: Callable[[list[dict]], None] | None = None) -> list[dict]:
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    cases = _cases()
    if only:
        cases = [c for c in cases if c.name.lower() in {o.lower() for o in only}]
    elif quick:
        cases = [c for c in cases if c.name == "MLP"]
    if compile_budget_s is None and not quick:
        compile_budget_s = 240.0
    rows = []
    with tempfile.TemporaryDirectory(prefix="jaxport-train-step-") as tmp:
        for case in cases:
            try:
                new = measure_case(case, Path(tmp), quick, compile_budget_s if not quick else None)
            except Exception as exc:  # one broken model must not hide the others
                new = [{"target": f"train step {case.name}: converted / flax reference",
                        "goal": f"<= {GOAL:.2f}", "measured": None, "met": False,
                        "note": f"failed: {type(exc).__name__}: {exc}"[:300]}]
            rows += new
            if on_rows:
                on_rows(new)
    return rows


def thread_env(threads: int) -> dict:
    """Environment for a child that runs XLA and torch on ``threads`` threads (0: defaults)."""
    env = dict(os.environ)
    if threads > 0:
        flags = env.get("XLA_FLAGS", "")
        flags += " --xla_cpu_multi_thread_eigen=false" if threads == 1 else ""
        flags += f" intra_op_parallelism_threads={threads}"
        env["XLA_FLAGS"] = flags.strip()
        env["OMP_NUM_THREADS"] = str(threads)
        env["JAXPORT_BENCH_THREADS"] = str(threads)
    return env


def measure(quick: bool = False, only: list[str] | None = None,
            compile_budget_s: float | None = None, threads: int = 1, echo: bool = False) -> list[dict]:
    """Rows for the benchmark table (see the module docstring). ``quick``: MLP only, at the
    corpus sizes, few short samples, no torch.compile. Runs in a child process, so that XLA
    and torch get ``threads`` threads each (default 1: steadier ratios on a shared machine;
    0 keeps the libraries' defaults) whatever the caller has imported; ``echo`` lets the
    child print each model's rows as they come."""
    with tempfile.TemporaryDirectory(prefix="jaxport-train-step-") as tmp:
        out = Path(tmp) / "rows.json"
        cmd = [sys.executable, "-m", "benchmarks.train_step", "--child", "--json", str(out)]
        cmd += ["--quick"] if quick else []
        cmd += ["--only", *only] if only else []
        cmd += ["--compile-budget", str(compile_budget_s)] if compile_budget_s is not None else []
        proc = subprocess.run(cmd, cwd=str(ROOT), env=thread_env(threads), text=True,
                              stdout=None if echo else subprocess.DEVNULL, stderr=subprocess.PIPE)
        if proc.returncode != 0 or not out.exists():
            tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            return [{"target": "train step benchmark", "goal": f"<= {GOAL:.2f}", "measured": None,
                     "met": False, "note": f"benchmark child failed ({proc.returncode}): {tail[:200]}"}]
        return json.loads(out.read_text(encoding="utf-8"))


def format_table(rows: list[dict]) -> str:
    lines = [f"{'target':50s} {'goal':8s} {'measured':>9s} {'met':5s} note"]
    for r in rows:
        m = "-" if r["measured"] is None else f"{r['measured']:.3f}"
        met = {True: "yes", False: "NO", None: "-"}[r["met"]]
        lines.append(f"{r['target']:50s} {r['goal']:8s} {m:>9s} {met:5s} {r['note']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="MLP only, short samples, no torch.compile")
    p.add_argument("--json", dest="json_path")
    p.add_argument("--only", nargs="*", default=None, help="model names (MLP LeNet ResNet TinyGPT NanoGPT UNet LSTM)")
    p.add_argument("--compile-budget", type=float, default=None,
                   help="seconds for each torch.compile child (0: do not try; default 240)")
    p.add_argument("--threads", type=int, default=1,
                   help="threads for XLA and torch (default 1; 0: the libraries' defaults)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        threads = int(os.environ.get("JAXPORT_BENCH_THREADS", "0"))
        if threads > 0:
            import torch
            torch.set_num_threads(threads)
        rows = _measure_here(args.quick, args.only, args.compile_budget,
                             on_rows=lambda new: print(format_table(new), flush=True))
    else:
        rows = measure(args.quick, args.only, args.compile_budget, args.threads, echo=True)
        print("\n" + format_table(rows))
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
