"""Zero-config validation: a spec for a module class that has none.

* Constructor: the spec's ``init`` if any, else the defaults; a class with required
  constructor arguments that the spec does not give is skipped, with a message that shows the
  ``init = {...}`` line to write.
* Inputs: from the first layer of the built torch module (registration order):

  ==========================  ===========================================================
  first layer                 inputs tried, in order (the first that torch accepts wins)
  ==========================  ===========================================================
  Linear(in_features)         ``float32[B, in]``, ``float32[B, T, in]``
  Conv1d(in_channels)         ``float32[B, C, L]`` for L in 32, 16, 64, 28, 100, 128, 8
  Conv2d(in_channels)         ``float32[B, C, S, S]`` for S in 16, 28, 32, 14, 8, 24, 64
  Conv3d(in_channels)         ``float32[B, C, S, S, S]`` for S in 8, 16
  Embedding(num_embeddings)   ``int64[B, T] range(0, n)``
  LSTM/GRU/RNN(input_size)    ``float32[B, T, in]`` (batch_first) or ``float32[T, B, in]``
  LayerNorm(shape)            ``float32[B, *shape]``, ``float32[B, T, *shape]``
  ==========================  ===========================================================

  with ``B`` in [2, 4] and ``T`` in [1, 8]. A candidate is accepted when the torch module's
  forward runs on it at the smallest and the largest dims; none accepted: skip, with a
  message saying how to write ``inputs``.
"""
from __future__ import annotations

import inspect

import numpy as np

from .spec import ModuleSpec, parse_module_spec

B_RANGE = [2, 4]
T_RANGE = [1, 8]


class NotInferable(Exception):
    """The class cannot be validated without (more of) a spec; the message says what to add."""


def required_init_args(cls) -> list[str]:
    try:
        sig = inspect.signature(cls.__init__)
    except (TypeError, ValueError):
        return []
    out = []
    for i, (name, p) in enumerate(sig.parameters.items()):
        if i == 0 and name == "self":
            continue
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if p.default is p.empty:
            out.append(name)
    return out


def init_hint(cls_name: str, names: list[str]) -> str:
    kv = ", ".join(f"{n} = ..." for n in names)
    return (f"{cls_name} needs constructor argument(s) {', '.join(names)}: give them in the spec "
            f"file (ORIGINAL.toml beside the original, or --spec) as\n  [{cls_name}]\n  init = {{ {kv} }}")


def inputs_hint(cls_name: str, why: str) -> str:
    return (f"cannot infer the inputs of {cls_name} ({why}): describe them in the spec as\n"
            f"  [{cls_name}]\n  inputs = [\"float32[B, ...]\"]\n  dims = {{ B = [1, 4] }}")


def _candidates(layer) -> list[tuple[list[str], dict]]:
    import torch.nn as tnn
    bt = {"B": B_RANGE, "T": T_RANGE}
    b = {"B": B_RANGE}
    if isinstance(layer, tnn.Linear):
        n = layer.in_features
        return [([f"float32[B, {n}]"], b), ([f"float32[B, T, {n}]"], bt)]
    if isinstance(layer, tnn.Conv1d):
        c = layer.in_channels
        return [([f"float32[B, {c}, {s}]"], b) for s in (32, 16, 64, 28, 100, 128, 8)]
    if isinstance(layer, tnn.Conv2d):
        c = layer.in_channels
        return [([f"float32[B, {c}, {s}, {s}]"], b) for s in (16, 28, 32, 14, 8, 24, 64)]
    if isinstance(layer, tnn.Conv3d):
        c = layer.in_channels
        return [([f"float32[B, {c}, {s}, {s}, {s}]"], b) for s in (8, 16)]
    if isinstance(layer, tnn.Embedding):
        return [([f"int64[B, T] range(0, {layer.num_embeddings})"], bt)]
    if isinstance(layer, (tnn.LSTM, tnn.GRU, tnn.RNN)):
        n = layer.input_size
        shape = "B, T" if layer.batch_first else "T, B"
        return [([f"float32[{shape}, {n}]"], bt)]
    if isinstance(layer, tnn.LayerNorm):
        shape = ", ".join(str(d) for d in layer.normalized_shape)
        return [([f"float32[B, {shape}]"], b), ([f"float32[B, T, {shape}]"], bt)]
    return []


def first_layer(module):
    import torch.nn as tnn
    known = (tnn.Linear, tnn.Conv1d, tnn.Conv2d, tnn.Conv3d, tnn.Embedding, tnn.LSTM, tnn.GRU,
             tnn.RNN, tnn.LayerNorm)
    for name, m in module.named_modules():
        if isinstance(m, known):
            return name, m
    return None, None


def _runs(module, spec: ModuleSpec) -> str | None:
    """None if the torch module's forward runs on the spec's smallest and largest inputs,
    else the error."""
    import torch

    from .harness import _fill, _split_arrays, _to_torch
    from .spec import draw_inputs
    for pick in (0, 1):
        dims = {d: r[pick] for d, r in spec.dims.items()}
        skeleton, arrays = _split_arrays(draw_inputs(spec, np.random.default_rng(0), dims))
        args, kwargs = _fill(skeleton, [_to_torch(a) for a in arrays])
        try:
            with torch.no_grad():
                module(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001
            return f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
    return None


def infer_spec(torch_cls, name: str, base: ModuleSpec | None = None) -> ModuleSpec:
    """A spec for ``torch_cls`` (``base`` gives ``init`` and options); raises NotInferable."""
    import torch

    from .harness import _tuplify
    init = dict(base.init) if base is not None else {}
    missing = [n for n in required_init_args(torch_cls) if n not in init]
    if missing:
        raise NotInferable(init_hint(torch_cls.__name__, missing))
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            module = torch_cls(**_tuplify(init)).eval()
    except Exception as exc:  # noqa: BLE001
        raise NotInferable(f"constructing {torch_cls.__name__}({', '.join(f'{k}={v!r}' for k, v in init.items())}) "
                           f"failed: {type(exc).__name__}: {exc}".splitlines()[0]) from None
    layer_name, layer = first_layer(module)
    if layer is None:
        raise NotInferable(inputs_hint(torch_cls.__name__, "no Linear, Conv, Embedding, RNN or LayerNorm layer"))
    tried = []
    for inputs, dims in _candidates(layer):
        table = {"inputs": inputs, "dims": dims}
        if base is not None:
            table["init"] = init
            if base.cls != name:
                table["class"] = base.cls
        spec = parse_module_spec(name, table, "<inferred>")
        if base is not None:
            for attr in ("rtol", "atol", "grad_rtol", "grad_atol", "skip_grad", "train_forward",
                         "perturb", "grad_params", "rngs", "note"):
                setattr(spec, attr, getattr(base, attr))
        err = _runs(module, spec)
        if err is None:
            spec.note = (spec.note + "; " if spec.note else "") + \
                f"inputs inferred from {layer_name}: {', '.join(inputs)}"
            return spec
        tried.append(f"{inputs[0]}: {err}")
    raise NotInferable(inputs_hint(torch_cls.__name__,
                                   f"first layer {layer_name} ({type(layer).__name__}); tried " + "; ".join(tried[:3])))
