"""``jaxport validate --train-steps K``: replay K optimizer steps of a training script in torch
and in JAX from identical weights on identical batches, and compare after every step.

What is replayed comes from the training manifest (``transpiler.manifest``: the sidecar
``<stem>.jaxport.json`` beside the converted file, or the same analysis run here when there is
none). For each training loop of the original:

* both files are loaded *definitions only* (imports, functions, classes, constants: a flat
  script's module-level loop does not run);
* each side runs its setup statements (model, losses, optimizer, scheduler and what they read)
  with ``args`` holding the argparse defaults and data loaders replaced by a stub whose
  ``len()`` is the manifest's steps per epoch;
* the torch model is put in training mode with its dropout layers off; its initial weights
  are copied into the flax ``TrainState`` made by the converted ``create_train_state``
  (``transpiler.validate.weights.load_torch_state``), and the optimizer state is rebuilt from
  them; flax dropout layers are intercepted (identity) while ``train_step`` is traced;
* batches are generated, the same for both sides: model inputs from the manifest entry's
  ``spec``, else the spec table of the model class, else the model's first layer (as in
  module validation); targets from the loss they feed and the prediction's shape (class
  indices in ``range(C)`` for CrossEntropy/NLL, values in [0, 1) for BCE, normal values
  otherwise);
* each step runs the loop's own statements (torch: forward, loss, ``backward``, clipping,
  ``step``, a per-batch scheduler; JAX: the converted ``train_step`` call), and a per-epoch
  scheduler steps after every ``EPOCH_STEPS`` steps on both sides (1: every step is an epoch,
  so K steps see K learning rates);
* after every step the loss and every parameter are compared (torch's parameters go through
  the same weight transfer into the flax layout): checks ``train_step[k]:loss`` and
  ``train_step[k]:params`` (the worst leaf named in the message), kind ``train_step``.

Tolerance after step k, per array: ``|a - r| <= k * atol * max(1, max|r|) + k * rtol * |r|``
(the rule of module validation, growing with the steps: rounding compounds), rtol = atol =
``TRAIN_TOL`` = 1e-5 (float32) unless ``--rtol``/``--atol`` are given. Measured on the corpus:
errors of at most ~1e-6 after 3 steps.
"""
from __future__ import annotations

import argparse
import ast
import copy
import json
import re
import sys
import tempfile
import time
import traceback
import types
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..manifest import is_definition

TRAIN_TOL = 1e-5
EPOCH_STEPS = 1
BATCH = 4          # the batch dimension of generated batches
SEQ = 8            # other symbolic dims (T): the top of their range, at most this


class ReplayError(Exception):
    """The loop cannot be replayed; the message says why (and what to add)."""


# ============================================================================ loading

_count = [0]


def load_definitions(path: str | Path, tag: str) -> types.ModuleType:
    """Import the definitions of a script (imports, functions, classes, constant assignments)
    as a fresh module registered in ``sys.modules``; nothing else of it runs."""
    path = Path(path)
    tree = ast.parse(path.read_bytes(), filename=str(path))
    body = [s for s in tree.body if is_definition(s)]
    _count[0] += 1
    name = f"_jaxport_train_{tag}_{_count[0]}"
    module = types.ModuleType(name)
    module.__file__ = str(path)
    sys.modules[name] = module
    exec(compile(ast.Module(body=body, type_ignores=[]), str(path), "exec"), module.__dict__)
    return module


class _Dataset:
    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n


class LoaderStub:
    """Stands for a DataLoader in replayed setup code: ``len()`` is the steps per epoch."""

    def __init__(self, steps: int, batch_size: int):
        self.steps, self.batch_size = steps, batch_size
        self.dataset = _Dataset(steps * batch_size)

    def __len__(self):
        return self.steps

    def __iter__(self):
        raise ReplayError("the replayed setup iterates a data loader: the replay generates its own batches")


def _exec(code: str, ns: dict, where: str) -> None:
    try:
        exec(compile(code, f"<{where}>", "exec"), ns)
    except ReplayError:
        raise
    except Exception as exc:  # noqa: BLE001 - user code
        raise ReplayError(f"{where}: `{code}` failed: {type(exc).__name__}: {exc}".splitlines()[0][:600]) from exc


def _eval(code: str, ns: dict, where: str):
    try:
        return eval(compile(code, f"<{where}>", "eval"), ns)
    except Exception as exc:  # noqa: BLE001
        raise ReplayError(f"{where}: `{code}` failed: {type(exc).__name__}: {exc}".splitlines()[0][:600]) from exc


def _prepare(ns: dict, side: dict, arguments: dict, entry: dict, where: str) -> None:
    steps = entry.get("steps_per_epoch") or 4
    for name, kind in (side.get("stubs") or {}).items():
        ns[name] = argparse.Namespace(**arguments) if kind == "args" else LoaderStub(steps, entry.get("batch_size") or BATCH)
    if "args" not in ns:
        ns["args"] = argparse.Namespace(**arguments)
    for stmt in side.get("setup", []):
        _exec(stmt, ns, f"{where} setup")


# ============================================================================ batches

CLASS_LOSSES = ("CrossEntropyLoss", "NLLLoss", "cross_entropy", "nll_loss", "MultiMarginLoss", "multi_margin_loss")
UNIT_LOSSES = ("BCELoss", "BCEWithLogitsLoss", "binary_cross_entropy", "binary_cross_entropy_with_logits",
               "MultiLabelSoftMarginLoss", "multilabel_soft_margin_loss", "KLDivLoss", "kl_div")


def _target_array(kind: str, pred, rng: np.random.Generator) -> np.ndarray:
    shape = tuple(pred.shape)
    leaf = kind.rsplit(".", 1)[-1]
    if leaf in CLASS_LOSSES:
        if len(shape) == 0:
            raise ReplayError(f"{kind}: scalar prediction")
        classes = shape[1] if len(shape) > 1 else shape[0]
        tshape = (shape[0],) + shape[2:] if len(shape) > 1 else ()
        return rng.integers(0, classes, size=tshape).astype(np.int64)
    if leaf in UNIT_LOSSES:
        return rng.uniform(0.0, 1.0, size=shape).astype(np.float32)
    return rng.standard_normal(shape).astype(np.float32)


def _input_specs(entry: dict, model, spec_table) -> tuple[list[str], dict]:
    """(array spec texts of the model inputs in batch order, dims)."""
    from .infer import _candidates, _runs, first_layer
    from .spec import parse_module_spec
    inputs = [b for b in entry["batch"] if b["role"] == "input"]
    if inputs and all(b.get("spec") for b in inputs):
        return [b["spec"] for b in inputs], dict(entry.get("dims") or {})
    if spec_table is not None and spec_table.inputs and len(spec_table.inputs) == len(inputs):
        return [getattr(a, "text", None) or str(a) for a in spec_table.inputs], dict(spec_table.dims)
    if len(inputs) != 1:
        raise ReplayError(f"cannot infer {len(inputs)} model inputs: give each input of the batch a \"spec\" "
                          "in the manifest (e.g. \"float32[B, 16]\")")
    name, layer = first_layer(model)
    if layer is None:
        raise ReplayError("cannot infer the model input (no Linear/Conv/Embedding/RNN/LayerNorm layer): give the "
                          "batch input a \"spec\" in the manifest or inputs in the spec table of the model class")
    probe = copy.deepcopy(model).eval()
    tried = []
    for texts, dims in _candidates(layer):
        spec = parse_module_spec("probe", {"inputs": texts, "dims": dims}, "<inferred>")
        err = _runs(probe, spec)
        if err is None:
            return texts, dims
        tried.append(err)
    raise ReplayError(f"cannot infer the model input from {name}: {'; '.join(tried[:2])}")


def _fixed_dims(dims: dict) -> dict:
    out = {}
    for k, v in dims.items():
        if isinstance(v, (list, tuple)):
            lo, hi = int(v[0]), int(v[-1])
            out[k] = max(lo, min(hi, BATCH if k == "B" else SEQ))
        else:
            out[k] = int(v)
    return out


class Batches:
    """Identical batches for both sides: ``batch(k)`` → {name: numpy array}."""

    def __init__(self, entry: dict, texts: list[str], dims: dict, seed: int):
        from .spec import parse_array_spec
        self.entry, self.seed = entry, seed
        self.inputs = [b["name"] for b in entry["batch"] if b["role"] == "input"]
        self.specs = [parse_array_spec(t) for t in texts]
        self.dims = _fixed_dims(dims)
        self.targets: dict[str, tuple[str, tuple, Any]] = {}   # name → (loss kind, pred shape, dtype)

    def inputs_for(self, k: int) -> dict:
        from .spec import draw_array
        rng = np.random.default_rng([self.seed, k, 1])
        return {n: draw_array(s, rng, self.dims) for n, s in zip(self.inputs, self.specs)}

    def batch(self, k: int) -> dict:
        out = self.inputs_for(k)
        rng = np.random.default_rng([self.seed, k, 2])
        for name, (kind, shape) in self.targets.items():
            out[name] = _target_array(kind, np.zeros(shape), rng)
        for b in self.entry["batch"]:
            if b["role"] == "unused" and b["name"] not in out:
                raise ReplayError(f"the batch element {b['name']!r} is neither a model input nor a loss target")
        return out


def _probe_targets(entry: dict, tside: dict, tns: dict, batches: Batches) -> None:
    """Run the step's assignments without gradients up to each target's use and record the
    shape of the prediction it is compared with."""
    import torch
    pending = {b["name"]: b for b in entry["batch"] if b["role"] == "target"}
    for b in entry["batch"]:
        if b["role"] == "target" and b.get("spec"):
            raise ReplayError("a \"spec\" on a target is not supported: targets follow the loss")
    ns = dict(tns)
    ns.update({n: torch.from_numpy(a) for n, a in batches.inputs_for(0).items()})
    model = tside["model"]
    ns[model] = copy.deepcopy(tns[model])
    for p, c in (entry.get("aliases") or {}).items():
        ns[p] = ns[c]
    with torch.no_grad():
        for stmt in tside["step"]:
            tree = ast.parse(stmt)
            reads = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
            for name in sorted(reads & set(pending)):
                b = pending[name]
                try:
                    pred = eval(compile(b["prediction"], "<prediction>", "eval"), ns)
                except NameError:     # not computed yet: the target only passes through here
                    ns[name] = torch.zeros(1)
                    continue
                except Exception as exc:  # noqa: BLE001
                    raise ReplayError(f"torch prediction {b['prediction']!r} of {name}: {type(exc).__name__}: {exc}") from exc
                if not hasattr(pred, "shape"):
                    raise ReplayError(f"the prediction {b['prediction']!r} compared with {name} is not a tensor")
                del pending[name]
                batches.targets[name] = (b["loss"], tuple(pred.shape))
                ns[name] = torch.from_numpy(_target_array(b["loss"], pred, np.random.default_rng(0)))
            if isinstance(tree.body[0], (ast.Assign, ast.AugAssign, ast.AnnAssign)):
                _exec(stmt, ns, "torch forward (probe)")
    if pending:
        raise ReplayError(f"targets {sorted(pending)} are not used by the step")


# ============================================================================ the replay

def _no_dropout_torch(model) -> None:
    from torch.nn.modules.dropout import _DropoutNd
    model.train()
    for m in model.modules():
        if isinstance(m, _DropoutNd) or type(m).__name__.endswith("Dropout"):
            m.eval()


def _params_tree(state) -> dict:
    v = {"params": state.params}
    if getattr(state, "batch_stats", None):
        v["batch_stats"] = state.batch_stats
    return v


def _to_jax(a: np.ndarray):
    from .harness import _to_jax as conv
    return conv(a)


def replay_entry(tmod, fmod, entry: dict, manifest: dict, *, steps: int, seed: int, rtol: float | None,
                 atol: float | None, spec_table=None) -> dict:
    """Replay one training loop; returns a module entry of the validation report."""
    name = entry_name(entry)
    started = time.monotonic()
    result = {"name": name, "status": "error", "checks": [], "examples": 0, "max_abs_err": None,
              "max_rel_err": None, "message": "", "counterexample": None, "train_steps": []}
    try:
        _replay(tmod, fmod, entry, manifest, steps, seed, rtol, atol, spec_table, result)
    except ReplayError as exc:
        result["status"] = "skip" if getattr(exc, "skip", False) else "error"
        result["message"] = (result["message"] + " | " if result["message"] else "") + str(exc)
    except Exception as exc:  # noqa: BLE001 - code under test
        result["status"] = "error"
        result["message"] = f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=-4)}"
    result["seconds"] = round(time.monotonic() - started, 3)
    return result


def entry_name(entry: dict) -> str:
    model = (entry.get("model") or {}).get("class") or "?"
    return f"train:{model}@{entry.get('function')}:{entry.get('line')}"


def _skip(message: str) -> ReplayError:
    exc = ReplayError(message)
    exc.skip = True
    return exc


def _replay(tmod, fmod, entry, manifest, steps, seed, rtol, atol, spec_table, result) -> None:
    import torch
    import flax.linen as fnn

    from .harness import _no_flax_dropout, _tree_paths, compare_arrays
    from .weights import load_torch_state

    if entry.get("problems"):
        raise _skip("not replayable: " + "; ".join(entry["problems"]))
    replay = entry.get("replay") or {}
    tside, jside = replay.get("torch"), replay.get("jax")
    if not tside or not jside:
        raise _skip("the manifest has no replay for this loop")
    if tside.get("unresolved") or jside.get("unresolved"):
        raise _skip(f"names not found in the setup: {sorted(set(tside.get('unresolved', [])) | set(jside.get('unresolved', [])))}")
    arguments = manifest.get("arguments") or {}
    rtol = TRAIN_TOL if rtol is None else rtol
    atol = TRAIN_TOL if atol is None else atol
    notes = []

    # --- torch setup
    tns = tmod.__dict__
    torch.manual_seed(seed)
    _prepare(tns, tside, arguments, entry, "torch")
    for p, c in (entry.get("aliases") or {}).items():
        tns[p] = tns[c]
    for stmt in tside.get("loop_setup", []):
        _exec(stmt, tns, "torch loop setup")
    model = tns.get(tside["model"])
    if not isinstance(model, torch.nn.Module):
        raise ReplayError(f"{tside['model']!r} is not a torch module after the setup")
    _no_dropout_torch(model)
    initial = copy.deepcopy(model)

    # --- batches
    texts, dims = _input_specs(entry, model, spec_table)
    batches = Batches(entry, texts, dims, seed)
    _probe_targets(entry, tside, tns, batches)
    shown = batches.batch(0)
    notes.append(f"batch: {', '.join(f'{n}={s.text or s}' for n, s in zip(batches.inputs, batches.specs))}"
                 f" with {batches.dims}; targets " + ", ".join(f"{n}={shown[n].dtype}{list(shown[n].shape)}"
                                                               for n in batches.targets))

    # --- JAX setup
    jns = fmod.__dict__
    _prepare(jns, jside, arguments, entry, "jax")
    for p, c in (jside.get("aliases") or {}).items():
        jns[p] = jns[c]
    fcls = _flax_model_class(jns, jside, entry)
    model_images = _channels_last_inputs(fcls, batches)
    images = [] if model_images and _transposes_itself(fmod, jside) else model_images
    if images:
        notes.append(f"{fcls.__name__} is channels-last: the converted loop gets "
                     f"{', '.join(images)} as (N, H, W, C)")
    if not jside.get("create_train_state"):
        raise ReplayError("the converted loop has no create_train_state call")
    first = batches.batch(0)
    # create_train_state shapes the model on the first batch: in the model's layout (a loop that
    # transposes the batches itself calls it after that), else as the loader gives it
    if model_images and BOUNDARY.search(jside["create_train_state"]):
        attempts = [[]]              # it transposes the batch it is given
    else:
        attempts = [model_images, []] if model_images else [[]]
    failure = None
    for attempt, layout_of_first in enumerate(attempts):
        for n, a in first.items():
            jns[n] = _to_jax(_batch_for_jax(n, a, layout_of_first))
        try:
            state = _eval(jside["create_train_state"], jns, "jax create_train_state")
            template = _params_tree(state)
            bound = getattr(getattr(state, "apply_fn", None), "__self__", None)
            if bound is not None and isinstance(bound, fnn.Module):
                fcls = type(bound)
            try:
                loaded = load_torch_state(initial, template, fcls)
            except Exception as exc:  # noqa: BLE001
                raise ReplayError(f"weight transfer: {exc}") from exc
            break
        except ReplayError as exc:
            failure = failure or exc
            if attempt + 1 == len(attempts):
                raise failure from None
    state = state.replace(params=loaded["params"], opt_state=state.tx.init(loaded["params"]),
                          **({"batch_stats": loaded["batch_stats"]} if "batch_stats" in loaded else {}))
    sched_t, sched_j = tside.get("scheduler_step"), jside.get("scheduler_step")
    if sched_t and not sched_t.rstrip().endswith(".step()"):
        notes.append(f"the scheduler is not stepped: `{sched_t}` takes a value computed outside the step")
        sched_t = sched_j = None
    if bool(sched_t) != bool(sched_j):
        raise ReplayError(f"the scheduler steps per epoch on one side only (torch {sched_t!r}, jax {sched_j!r})")

    worst_abs = worst_rel = 0.0
    first_fail = None
    index = entry.get("batch_index")
    for k in range(1, steps + 1):
        batch = batches.batch(k - 1)
        # torch
        for n, a in batch.items():
            tns[n] = torch.from_numpy(a.copy())
        if index:
            tns[index] = k - 1
        for stmt in tside["step"]:
            _exec(stmt, tns, f"torch step {k}")
        t_loss = float(tns[tside["loss"]].detach())
        # jax
        for n, a in batch.items():
            jns[n] = _to_jax(_batch_for_jax(n, a, images))
        if index:
            jns[index] = k - 1
        jns[jside["state"]] = state
        with fnn.intercept_methods(_no_flax_dropout):
            for stmt in jside["step"]:
                _exec(stmt, jns, f"jax step {k}")
        state = jns[jside["state"]]
        j_loss = float(np.asarray(jns[jside["loss"]]))
        if sched_t and k % EPOCH_STEPS == 0:
            _exec(sched_t, tns, f"torch scheduler step after step {k}")
            _exec(sched_j, jns, f"jax scheduler step after step {k}")
            state = jns[jside["state"]]
        # compare
        rt, at = rtol * k, atol * k    # errors compound over steps: the tolerance grows with k
        lc = compare_arrays(f"train_step[{k}]:loss", np.float32(j_loss), np.float32(t_loss), "float32", rt, at)
        ref = _tree_paths(load_torch_state(model, _params_tree(state), fcls)["params"], "params")
        got = _tree_paths(state.params, "params")
        params = compare_state(f"train_step[{k}]:params", got, ref, rt, at, k)
        checks = [
            {"name": lc.name, "status": lc.status, "max_abs_err": lc.max_abs_err, "max_rel_err": lc.max_rel_err,
             "message": lc.message or f"torch {t_loss:.8g}, jax {j_loss:.8g}", "kind": "train_step", "step": k},
            params,
        ]
        result["checks"] += checks
        result["train_steps"].append({"step": k, "torch_loss": t_loss, "jax_loss": j_loss,
                                      "loss_abs_err": lc.max_abs_err, "loss_rel_err": lc.max_rel_err,
                                      "param_max_abs_err": params["max_abs_err"],
                                      "param_max_rel_err": params["max_rel_err"]})
        worst_abs = max(worst_abs, lc.max_abs_err, params["max_abs_err"])
        worst_rel = max(worst_rel, lc.max_rel_err, params["max_rel_err"])
        if first_fail is None and any(c["status"] != "pass" for c in checks):
            what = [c for c in checks if c["status"] != "pass"]
            first_fail = f"step {k} fails: " + "; ".join(f"{c['name']}: {c['message']}" for c in what)
        result["examples"] = k
    result["max_abs_err"], result["max_rel_err"] = worst_abs, worst_rel
    if sched_t:
        notes.append(f"the per-epoch scheduler steps after every {EPOCH_STEPS} step(s)")
    result["status"] = "fail" if first_fail else "pass"
    result["message"] = "; ".join(([first_fail] if first_fail else []) + notes)


# the converter's script boundary (--layout nhwc): the converted loop turns the data loader's
# (N, C, H, W) batches channels-last itself, with a transpose (0, 2, 3, 1) or a helper of these names
BOUNDARY_HELPERS = ("to_nhwc", "nchw_to_nhwc", "batch_to_nhwc", "to_channels_last")
BOUNDARY = re.compile(r"\b(?:" + "|".join(BOUNDARY_HELPERS) + r")\(|\btranspose\(.*?\(\s*0\s*,\s*2\s*,\s*3\s*,\s*1\s*,?\s*\)")


def _flax_model_class(jns: dict, jside: dict, entry: dict):
    """The converted model class of the loop: the class of the JAX setup's model object, else
    the converted class of the torch model's class name (None when neither is found)."""
    import flax.linen as fnn
    obj = jns.get(jside.get("model") or (entry.get("model") or {}).get("name") or "")
    if isinstance(obj, fnn.Module):
        return type(obj)
    name = ((entry.get("model") or {}).get("class") or "").rsplit(".", 1)[-1]
    found = jns.get(name)
    return found if isinstance(found, type) and issubclass(found, fnn.Module) else None


def _channels_last_inputs(fcls, batches: "Batches") -> list[str]:
    """The batch inputs a channels-last model (``jaxport_layout``, --layout nhwc) takes as
    (N, H, W, C): its 4-D inputs. The torch side always gets (N, C, H, W)."""
    from .channels_last import class_layout
    layout = class_layout(fcls)
    if layout is None or not layout.inputs:
        return []
    shown = batches.inputs_for(0)
    return [n for n in batches.inputs if getattr(shown.get(n), "ndim", 0) == 4]


def _transposes_itself(fmod, jside: dict) -> bool:
    """The converted loop turns the loader's (N, C, H, W) batches channels-last itself
    (``BOUNDARY``: in its step statements, its create_train_state call, or the module-level
    functions they call, such as ``train_step``): it then gets the batches as torch's loop does."""
    texts = [*jside.get("step", []), jside.get("create_train_state") or "", *jside.get("loop_setup", [])]
    names = set()
    for text in texts:
        try:
            names |= {n.id for n in ast.walk(ast.parse(text)) if isinstance(n, ast.Name)}
        except SyntaxError:
            continue
    try:
        source = Path(fmod.__file__).read_text(encoding="utf-8")
        tree = ast.parse(source)
    except (OSError, TypeError, AttributeError, SyntaxError):
        tree = None
    if tree is not None:
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name in names:
                texts.append(ast.get_source_segment(source, node) or "")
    return any(BOUNDARY.search(t) for t in texts)


def _batch_for_jax(name: str, array: np.ndarray, images: list[str]) -> np.ndarray:
    if name in images and array.ndim == 4:
        return np.ascontiguousarray(np.transpose(array, (0, 2, 3, 1)))
    return array


def compare_state(name: str, got: dict, ref: dict, rtol: float, atol: float, step: int,
                  adjust: Callable | None = None) -> dict:
    """One ``train_step`` check of every array of ``ref`` (path → torch's value in the flax
    layout) against ``got`` (flax's), the worst or first failing array named in the message.
    ``adjust(path, got, ref)`` may return the flax array to judge instead (the script replay
    sets elements it does not compare to torch's value)."""
    from .harness import compare_arrays
    p_abs = p_rel = 0.0
    bad, worst = [], None
    for path in sorted(ref):
        g, r = np.asarray(got[path]), np.asarray(ref[path])
        if adjust is not None:
            g = adjust(path, g, r)
        c = compare_arrays(path, g, r, "float32", rtol, atol)
        if worst is None or c.max_abs_err > worst.max_abs_err:
            worst = c
        p_abs, p_rel = max(p_abs, c.max_abs_err), max(p_rel, c.max_rel_err)
        if c.status != "pass":
            bad.append(c)
    message = (f"{len(bad)}/{len(ref)} array(s) differ; {bad[0].name}: {bad[0].message}" if bad
               else f"worst {worst.name}" if worst else "")
    return {"name": name, "status": "fail" if bad else "pass", "max_abs_err": p_abs, "max_rel_err": p_rel,
            "message": message, "kind": "train_step", "step": step}


# ============================================================================ files, child, parent

def manifest_for(original: str | Path, converted: str | Path) -> tuple[dict | None, str]:
    """The sidecar beside ``converted`` when it exists, else the analysis of both files."""
    from ..manifest import build_manifest, sidecar_name
    sidecar = Path(converted).with_name(sidecar_name(Path(converted).name))
    if sidecar.is_file():
        return json.loads(sidecar.read_text(encoding="utf-8")), str(sidecar)
    def read(p):
        from ..api import decode
        text, _, err = decode(Path(p).read_bytes())
        return text
    return build_manifest(read(original), read(converted), Path(original).name), "analysis"


def child_main(argv: list[str] | None = None) -> int:
    from .runner import _setup_device, child_parser, event_writer
    p = child_parser("python -m transpiler.validate.train_steps")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--replay", choices=REPLAY_MODES, default="auto")
    a = p.parse_args(argv)
    emit = event_writer(a.out)
    err = _setup_device(a.device)
    if err:
        emit(event="fatal", message=err, usage=True)
        return 2
    try:
        manifest, source = manifest_for(a.original, a.converted)
    except (OSError, ValueError) as exc:
        emit(event="fatal", message=f"reading the training manifest failed: {exc}", usage=False)
        return 1
    if (not manifest or not manifest.get("training")) and a.replay != "script":
        emit(event="fatal", message=f"{a.original}: no training loop found (a for loop with <loss>.backward() "
                                    "and <optimizer>.step())", usage=True)
        return 2
    specs = {}
    if a.spec:
        from .spec import SpecError, parse_spec_file
        try:
            specs = parse_spec_file(a.spec)
        except SpecError as exc:
            emit(event="fatal", message=str(exc), usage=True)
            return 2
    for path in (a.converted, a.original):
        folder = str(Path(path).resolve().parent)
        if folder not in sys.path:
            sys.path.insert(0, folder)
    entries = (manifest or {}).get("training") or []
    if a.module:
        entries = [e for e in entries if entry_name(e) in a.module or (e.get("model") or {}).get("class") in a.module]
    if a.case:
        entries = [e for e in entries if entry_name(e) in a.case]
    plan = [entry_name(e) for e in entries] if a.replay != "script" else []
    fallback: list[tuple[str, str]] = []     # (loop case, why the loop replay could not run it)
    script_case = script_case_name(a.original)
    if a.replay == "script":
        plan = [script_case]
    emit(event="plan", cases=plan)
    for e in entries if a.replay != "script" else []:
        name = entry_name(e)
        emit(event="start", name=name)
        r = _loop_result(a, e, manifest, source, specs)
        if a.replay == "auto" and r["status"] in ("skip", "error"):
            fallback.append((name, r["message"].splitlines()[0] if r["message"] else r["status"]))
            r["status"] = "skip"
            r["message"] = f"replayed by running the scripts instead ({script_case}); the loop replay: {r['message']}"
        emit(event="result", result=_jsonable_result(r))
    if a.replay == "script" or fallback:
        if a.replay == "auto":
            emit(event="plan", cases=plan + [script_case])
        from .script_replay import replay_scripts
        emit(event="start", name=script_case)
        r = replay_scripts(a.original, a.converted, steps=a.steps, seed=a.seed,
                           rtol=TRAIN_TOL if a.rtol is None else a.rtol,
                           atol=TRAIN_TOL if a.atol is None else a.atol, name=script_case)
        if fallback:
            r["message"] += "; the loop replay could not run " + "; ".join(f"{n}: {why}" for n, why in fallback)
        emit(event="result", result=_jsonable_result(r))
    return 0


REPLAY_MODES = ("auto", "loop", "script")


def script_case_name(original: str) -> str:
    """``train:<script stem>@script``: the script replay covers every loop and model of the script."""
    return f"train:{Path(original).stem}@script"


def _loop_result(a, e: dict, manifest: dict, source: str, specs: dict) -> dict:
    """The loop replay of one manifest entry (a module entry of the report)."""
    name = entry_name(e)
    started = time.monotonic()
    try:
        tmod = load_definitions(a.original, "torch")
        fmod = load_definitions(a.converted, "jax")
    except BaseException as exc:  # noqa: BLE001 - user code
        return {"name": name, "status": "error", "checks": [], "examples": 0, "max_abs_err": None,
                "max_rel_err": None, "counterexample": None, "replay": "loop",
                "message": f"importing the definitions failed: {type(exc).__name__}: {exc}",
                "seconds": round(time.monotonic() - started, 3)}
    cls = (e.get("model") or {}).get("class")
    table = next((t for t in specs.values() if t.cls == cls), None)
    r = replay_entry(tmod, fmod, e, manifest, steps=a.steps, seed=a.seed, rtol=a.rtol, atol=a.atol,
                     spec_table=table)
    r["manifest"], r["replay"] = source, "loop"
    return r


def _jsonable_result(r: dict) -> dict:
    """Non-finite errors become null (JSON has no NaN)."""
    for holder in [r] + list(r.get("checks", [])):
        for key in ("max_abs_err", "max_rel_err"):
            v = holder.get(key)
            holder[key] = float(v) if v is not None and np.isfinite(v) else None
    return json.loads(json.dumps(r, default=float))


def run_train_validation(original, converted, *, spec=None, modules=(), steps: int = 3, seed: int = 0,
                         rtol: float | None = None, atol: float | None = None, device: str = "cpu",
                         replay: str = "auto",
                         timeout: float = 600.0, on_result: Callable[[dict], None] | None = None) -> list[dict]:
    """Replay in a child process (user code is imported there); a loop running longer than
    ``timeout`` seconds is killed and reported as an error. Raises ``runner.Fatal``."""
    from .runner import Fatal, _error, supervise
    try:   # syntactic: nothing of the user's code is imported in this process
        manifest, _ = manifest_for(original, converted)
    except (OSError, ValueError) as exc:
        raise Fatal(f"reading the training manifest failed: {exc}", True) from None
    if (not manifest or not manifest.get("training")) and replay != "script":
        raise Fatal(f"{original}: no training loop found (a for loop with <loss>.backward() and "
                    "<optimizer>.step() in its body)", True)
    cmd = [sys.executable, "-m", "transpiler.validate.train_steps", "--original", str(original),
           "--converted", str(converted), "--steps", str(steps), "--seed", str(seed), "--device", device,
           "--replay", replay]
    if spec:
        cmd += ["--spec", str(spec)]
    for m in modules:
        cmd += ["--module", m]
    if rtol is not None:
        cmd += ["--rtol", repr(rtol)]
    if atol is not None:
        cmd += ["--atol", repr(atol)]
    results: list[dict] = []

    def record(d):
        results.append(d)
        if on_result is not None:
            on_result(d)

    with tempfile.TemporaryDirectory(prefix="jaxport-train-") as tmp:
        run = supervise(cmd, tmp, timeout, record)
    if run.fatal is not None:
        if run.fatal.get("usage"):
            raise Fatal(run.fatal["message"], True)
        record(_error(Path(original).stem, run.fatal["message"]))
        return results
    if run.killed:
        record(_error(run.current or Path(original).stem,
                      f"timed out after {timeout:g} s (--timeout); the validation process was killed", timeout))
    elif run.current is not None or run.plan is None:
        record(_error(run.current or Path(original).stem, f"the validation process crashed (exit status "
                      f"{run.returncode})" + (f":\n{run.tail}" if run.tail else "")))
    done = {r["name"] for r in results}
    for name in run.plan or []:
        if name not in done:
            record(_error(name, "not run: the validation process ended early"))
    return results


if __name__ == "__main__":
    sys.exit(child_main())
