"""``jaxport weights``: a trained torch checkpoint → flax variables (flax msgpack by default;
an orbax checkpoint directory with ``--format orbax`` when orbax-checkpoint is installed).

``FILE.py:CLASS`` names the ORIGINAL PyTorch file and class: torch needs it to give the
state_dict its structure. The flax side is the converted class of the same name: by default
``FILE.py`` is converted in memory by jaxport itself; ``converted=`` (``--converted``) names
a converted file instead (e.g. one edited by hand after conversion).

The flax variables are shaped with ``jax.eval_shape`` (nothing is computed) on one input
from the validation spec of CLASS (``FILE.toml`` beside ``FILE.py`` or ``spec=``), or from
the inputs inferred from the first layer, then filled by
``transpiler.validate.weights.state_dict_to_variables``.

The checkpoint is read with ``torch.load(weights_only=True)``: tensors and plain containers
only, never arbitrary pickled objects. ``unsafe_load=True`` lifts that (only for files you
trust: unpickling can run any code).
"""
from __future__ import annotations

import ast
from collections.abc import Mapping
from pathlib import Path
from typing import Any

STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model", "net", "module", "network")


class CheckpointError(Exception):
    """The checkpoint could not be converted; the message says why and what to do."""


def parse_init(items: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """``["hidden=64", "name=tiny"]`` → ``{"hidden": 64, "name": "tiny"}`` (Python literals,
    else strings)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip().isidentifier():
            raise ValueError(f"--init {item!r}: expected NAME=VALUE")
        try:
            out[key.strip()] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key.strip()] = value
    return out


def _is_state_dict(obj) -> bool:
    import torch
    return isinstance(obj, Mapping) and bool(obj) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def extract_state_dict(obj) -> tuple[dict, str]:
    """The state_dict in a loaded checkpoint, and where it was found."""
    import torch.nn as tnn
    if isinstance(obj, tnn.Module):
        return obj.state_dict(), "the pickled module"
    if _is_state_dict(obj):
        return dict(obj), "the checkpoint itself"
    if isinstance(obj, Mapping):
        for key in STATE_DICT_KEYS:
            if key in obj:
                value = obj[key]
                if isinstance(value, tnn.Module):
                    return value.state_dict(), f"key {key!r} (a pickled module)"
                if _is_state_dict(value):
                    return dict(value), f"key {key!r}"
        keys = ", ".join(repr(k) for k in list(obj)[:10])
        raise CheckpointError(f"no state_dict in the checkpoint: it is a dict with keys {keys}; "
                              f"expected a state_dict or one under {', '.join(STATE_DICT_KEYS)}")
    raise CheckpointError(f"no state_dict in the checkpoint: it holds a {type(obj).__name__}")


def load_checkpoint(path: str | Path, unsafe_load: bool = False, search_path: str | Path | None = None):
    """``torch.load`` on CPU; ``search_path`` (the original's folder) is importable while
    unpickling with ``unsafe_load`` (pickled modules refer to their classes by module name)."""
    import pickle
    import re
    import sys

    import torch
    added = False
    if unsafe_load and search_path is not None and str(search_path) not in sys.path:
        sys.path.insert(0, str(search_path))
        added = True
    try:
        return torch.load(str(path), map_location="cpu", weights_only=not unsafe_load)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        m = re.search(r"Unsupported global: GLOBAL (\S+)", text)
        why = f"it contains {m.group(1)}" if m else (text.strip().splitlines() or [type(exc).__name__])[0]
        raise CheckpointError(f"{path}: refused to unpickle more than tensors and plain containers "
                              f"(torch.load(weights_only=True)): {why}. If you trust this file, "
                              "pass --unsafe-load.") from None
    except Exception as exc:  # noqa: BLE001 - corrupt or foreign files
        raise CheckpointError(f"{path}: cannot read the checkpoint: {type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
    finally:
        if added:
            sys.path.remove(str(search_path))


def _converted_module(original: Path, converted: Path | None):
    from .harness import load_module_from_path
    if converted is not None:
        return load_module_from_path(converted)
    import tempfile

    from ..api import convert_source
    result = convert_source(original.read_text(encoding="utf-8"), str(original))
    if result.status == "failed":
        raise CheckpointError(f"converting {original} failed: " +
                              "; ".join(d.message for d in result.diagnostics[:3]))
    with tempfile.TemporaryDirectory(prefix="jaxport-weights-") as tmp:
        path = Path(tmp) / f"{original.stem}_jax.py"
        path.write_bytes(result.output)
        return load_module_from_path(path)


FORMATS = ("msgpack", "orbax")
ORBAX_HINT = ("--format orbax needs the orbax-checkpoint package: pip install orbax-checkpoint "
              "(or pip install 'jaxport[orbax]'), or use the default --format msgpack")


def orbax_checkpoint():
    """The ``orbax.checkpoint`` module, or ``CheckpointError`` saying how to install it."""
    try:
        import orbax.checkpoint as ocp
    except ImportError as exc:
        raise CheckpointError(f"{ORBAX_HINT} ({exc})") from None
    return ocp


def check_output(out: str | Path, fmt: str) -> None:
    """Fail before any work when ``out`` cannot be written in ``fmt``."""
    out = Path(out)
    if fmt not in FORMATS:
        raise CheckpointError(f"unknown format {fmt!r} (known: {', '.join(FORMATS)})")
    if fmt == "msgpack" and out.is_dir():
        raise CheckpointError(f"{out} is a directory: --format msgpack writes one file")
    if fmt == "orbax":
        orbax_checkpoint()
        if out.exists():
            raise CheckpointError(f"{out} exists: --format orbax writes a new checkpoint directory "
                                  "(remove it or choose another path)")


def write_variables(variables, out: str | Path, fmt: str) -> None:
    """flax msgpack (``flax.serialization.to_bytes``) or an orbax checkpoint directory
    (``orbax.checkpoint.StandardCheckpointer``)."""
    if fmt == "orbax":
        import jax
        import jax.numpy as jnp
        ocp = orbax_checkpoint()
        tree = jax.tree_util.tree_map(jnp.asarray, variables)
        ckptr = ocp.StandardCheckpointer()
        ckptr.save(Path(out).resolve(), tree)
        ckptr.wait_until_finished()
        return
    from flax import serialization
    Path(out).write_bytes(serialization.to_bytes(variables))


def convert_checkpoint(checkpoint: str | Path, original: str | Path, cls_name: str,
                       out: str | Path, *, init: dict | None = None, converted: str | Path | None = None,
                       spec: str | Path | None = None, unsafe_load: bool = False,
                       fmt: str = "msgpack") -> dict:
    """Write the flax variables of ``cls_name`` filled from ``checkpoint`` to ``out`` (a flax
    msgpack file, or with ``fmt="orbax"`` an orbax checkpoint directory); returns a summary
    (tensor count, collections, where the state_dict was found)."""
    check_output(out, fmt)
    import jax
    import numpy as np
    import torch

    from .channels_last import to_flax_inputs
    from .harness import _fill, _split_arrays, _to_jax, _tuplify, _unfreeze, load_module_from_path
    from .infer import NotInferable, infer_spec, init_hint, required_init_args
    from .spec import SpecError, draw_inputs, parse_spec_file, smallest_dims
    from .weights import WeightTransferError, state_dict_to_variables

    original = Path(original)
    state = load_checkpoint(checkpoint, unsafe_load, original.resolve().parent)
    state_dict, where = extract_state_dict(state)

    tmod = load_module_from_path(original)
    tcls = getattr(tmod, cls_name, None)
    if not isinstance(tcls, type) or not issubclass(tcls, torch.nn.Module):
        raise CheckpointError(f"{original} has no nn.Module class {cls_name}")
    fmod = _converted_module(original, Path(converted) if converted else None)
    fcls = getattr(fmod, cls_name, None)
    if fcls is None:
        raise CheckpointError(f"the converted module has no class {cls_name}")

    spec_path = Path(spec) if spec else original.with_suffix(".toml")
    table = None
    if spec_path.is_file():
        try:
            tables = parse_spec_file(spec_path)
        except SpecError as exc:
            raise CheckpointError(str(exc)) from None
        table = tables.get(cls_name) or next((t for t in tables.values() if t.cls == cls_name), None)
    kwargs = dict(table.init) if table is not None else {}
    kwargs.update(init or {})
    missing = [n for n in required_init_args(tcls) if n not in kwargs]
    if missing:
        raise CheckpointError(init_hint(cls_name, missing).replace(
            "give them in the spec", "give them with --init NAME=VALUE or in the spec"))
    if table is not None:
        table.init = kwargs
    if table is None or (not table.inputs and not table.kwargs):
        try:
            from .spec import parse_module_spec
            base = table or parse_module_spec(cls_name, {"init": kwargs})
            table = infer_spec(tcls, cls_name, base)
        except NotInferable as exc:
            raise CheckpointError(f"{exc}\n(the flax variables are shaped by one forward pass; "
                                  f"give the inputs in {spec_path.name} or --spec)") from None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        torch_module = tcls(**_tuplify(kwargs))
    flax_module = fcls(**_tuplify(kwargs))
    rng = np.random.default_rng(0)
    dims = smallest_dims(table)
    if table.method and table.init_inputs is not None:
        from .spec import draw_value
        sk, arrs = _split_arrays(tuple(draw_value(x, rng, dims) for x in table.init_inputs))
        args, kw = _fill(sk, [_to_jax(a) for a in arrs]), {}
        method = None
    else:
        sk, arrs = _split_arrays(draw_inputs(table, rng, dims))
        args, kw = _fill(sk, [_to_jax(a) for a in arrs])
        method = table.method
    # channels-last conversions (--layout nhwc) take their images (N, H, W, C)
    args, kw = to_flax_inputs(fcls, method, tuple(args), kw)
    names = ["params", "dropout", *table.rngs]
    rngs = dict(zip(names, jax.random.split(jax.random.PRNGKey(0), len(names))))
    shapes = _unfreeze(jax.eval_shape(lambda r: flax_module.init(r, *args, **kw, method=method), rngs))
    try:
        variables = state_dict_to_variables(state_dict, torch_module, shapes, fcls)
    except WeightTransferError as exc:
        raise CheckpointError(str(exc)) from None
    write_variables(variables, out, fmt)
    leaves = jax.tree_util.tree_leaves(variables)
    return {"tensors": len(state_dict), "found": where, "collections": sorted(variables),
            "leaves": len(leaves), "elements": int(sum(np.size(x) for x in leaves))}
