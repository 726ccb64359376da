"""Weight-layout converters for the recurrent layers (``params_converter = "recurrent:NAME"``).

Each converter takes the torch layer and ``flax_subtrees`` — ``{collection: subtree}`` of the
converted layer's variables (from ``init`` or ``jax.eval_shape``; only shapes and dtypes
are read) — and returns the same structure filled with numpy arrays taken from the torch
layer. Every leaf is shape-checked, every flax leaf must have a torch source and every torch
parameter must land somewhere; anything else raises ``ValueError`` naming the leaf.

Layout (see ``transpiler/prelude/recurrent.py``): ``l{k}[_reverse]/ih/kernel`` is
``weight_ih_l{k}[_reverse]`` transposed (gates stay concatenated in torch's order: LSTM
i, f, g, o; GRU r, z, n), ``.../ih/bias`` is ``bias_ih_l{k}``, likewise ``hh``; an LSTM
with ``proj_size`` has ``.../hr/kernel`` = ``weight_hr_l{k}`` transposed. Cells have the
same leaves without the ``l{k}`` level.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Callable

import numpy as np

Source = Callable[[str, tuple[str, ...]], tuple[str, Callable[[np.ndarray], np.ndarray]]]


def _identity(a: np.ndarray) -> np.ndarray:
    return a


def _transpose(a: np.ndarray) -> np.ndarray:
    return a.T


def torch_arrays(torch_module) -> dict[str, np.ndarray]:
    """The torch layer's parameters and buffers as numpy arrays, by state_dict name."""
    return {name: value.detach().cpu().numpy() for name, value in torch_module.state_dict().items()}


def convert_leaves(what: str, flax_subtrees: Mapping, arrays: dict[str, np.ndarray], source: Source) -> dict:
    """Fill every leaf of ``flax_subtrees`` from ``arrays`` as ``source`` says.

    ``source(collection, path)`` returns ``(torch_name, transform)`` for a flax leaf, or
    raises ``KeyError`` when the leaf has no torch counterpart.
    """
    used: set[str] = set()

    def visit(collection: str, tree: Mapping, path: tuple[str, ...]) -> dict:
        out = {}
        for key, value in tree.items():
            here = path + (str(key),)
            if isinstance(value, Mapping):
                out[key] = visit(collection, value, here)
                continue
            where = "/".join((collection,) + here)
            try:
                name, transform = source(collection, here)
            except KeyError:
                raise ValueError(f"{what}: flax leaf {where} has no torch counterpart") from None
            if name not in arrays:
                raise ValueError(f"{what}: flax leaf {where} needs torch parameter {name!r}, "
                                 f"which the torch layer does not have")
            array = np.asarray(transform(arrays[name]))
            expected = tuple(value.shape)
            if array.shape != expected:
                raise ValueError(f"{what}: torch {name!r} gives shape {array.shape} for flax leaf "
                                 f"{where}, which has shape {expected}")
            out[key] = np.ascontiguousarray(array.astype(np.dtype(value.dtype)))
            used.add(name)
        return out

    result = {collection: visit(collection, tree, ()) for collection, tree in flax_subtrees.items()}
    unused = sorted(set(arrays) - used)
    if unused:
        raise ValueError(f"{what}: torch parameter(s) {', '.join(unused)} have no place in the "
                         f"flax variables (mismatched bias/proj_size/num_layers/bidirectional?)")
    return result


_CELL_LEAF = {("ih", "kernel"): ("weight_ih", _transpose), ("ih", "bias"): ("bias_ih", _identity),
              ("hh", "kernel"): ("weight_hh", _transpose), ("hh", "bias"): ("bias_hh", _identity),
              ("hr", "kernel"): ("weight_hr", _transpose)}

_LAYER = re.compile(r"l(\d+)(_reverse)?")


def recurrent_source(prefix: str = "") -> Source:
    """Map ``params/l{k}[_reverse]/{ih,hh,hr}/{kernel,bias}`` to torch's ``{weight,bias}_{..}_l{k}``."""

    def source(collection: str, path: tuple[str, ...]):
        if collection != "params" or len(path) != 3 or not _LAYER.fullmatch(path[0]):
            raise KeyError(path)
        name, transform = _CELL_LEAF[path[1:]]
        return f"{prefix}{name}_{path[0]}", transform

    return source


def cell_source(prefix: str = "") -> Source:
    def source(collection: str, path: tuple[str, ...]):
        if collection != "params" or len(path) != 2:
            raise KeyError(path)
        name, transform = _CELL_LEAF[path]
        return prefix + name, transform

    return source


def _check_type(torch_module, class_name: str, mode: str | None = None) -> None:
    import torch

    cls = getattr(torch.nn, class_name)
    if not isinstance(torch_module, cls):
        raise ValueError(f"expected a torch.nn.{class_name}, got {type(torch_module).__name__}")
    if mode is not None and not getattr(torch_module, "mode", "").startswith(mode):
        raise ValueError(f"expected a torch.nn.{class_name} in {mode} mode, got {torch_module.mode}")


def _stack(torch_module, flax_subtrees, class_name: str, mode: str) -> dict:
    _check_type(torch_module, class_name, mode)
    return convert_leaves(class_name, flax_subtrees, torch_arrays(torch_module), recurrent_source())


def _cell(torch_module, flax_subtrees, class_name: str) -> dict:
    _check_type(torch_module, class_name)
    return convert_leaves(class_name, flax_subtrees, torch_arrays(torch_module), cell_source())


def lstm(torch_module, flax_subtrees):
    """torch.nn.LSTM → TorchLSTM (any num_layers, bidirectional, bias, proj_size)."""
    return _stack(torch_module, flax_subtrees, "LSTM", "LSTM")


def gru(torch_module, flax_subtrees):
    """torch.nn.GRU → TorchGRU."""
    return _stack(torch_module, flax_subtrees, "GRU", "GRU")


def rnn(torch_module, flax_subtrees):
    """torch.nn.RNN (tanh or relu) → TorchRNN."""
    return _stack(torch_module, flax_subtrees, "RNN", "RNN")


def lstm_cell(torch_module, flax_subtrees):
    """torch.nn.LSTMCell → TorchLSTMCell."""
    return _cell(torch_module, flax_subtrees, "LSTMCell")


def gru_cell(torch_module, flax_subtrees):
    """torch.nn.GRUCell → TorchGRUCell."""
    return _cell(torch_module, flax_subtrees, "GRUCell")


def rnn_cell(torch_module, flax_subtrees):
    """torch.nn.RNNCell → TorchRNNCell."""
    return _cell(torch_module, flax_subtrees, "RNNCell")
