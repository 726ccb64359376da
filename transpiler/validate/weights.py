"""Copy a torch module's parameters and buffers into the variables of its converted flax module.

The flax tree follows the conversion's naming conventions (see DESIGN.md):

* a child attribute ``fc1`` → ``fc1``; the children of an ``nn.Sequential`` → ``layers_{i}``;
  the items of an ``nn.ModuleList`` / ``nn.ModuleDict`` attribute ``blocks`` → ``blocks_{i}`` /
  ``blocks_{key}`` at the parent's level;
* a torch layer in the layers tables (``torch.nn.<Class>``) → its ``params`` layouts
  (``weight = "kernel:T"``), or its ``params_converter``;
* any other module: its own ``nn.Parameter`` ``pos`` → ``params/.../pos`` (same layout), its
  persistent buffers → ``buffers/.../<name>`` when the flax tree has that leaf (otherwise the
  buffer is a constant of the converted code and is skipped); children by attribute name.

Every leaf is shape-checked, every flax leaf must be filled and every torch tensor consumed
(``num_batches_tracked`` excepted); otherwise ``WeightTransferError`` lists the paths.

Channels-last conversions (``--layout nhwc``): given the converted class (``flax_class``), a
class that declares ``jaxport_layout["flatten_rows"]`` (the root, or the converted class of
the same name as a torch submodule, found in the converted file) has the rows of those Dense
kernels permuted from torch's (C, H, W) flatten order to (H, W, C)
(``channels_last.rows_to_flax``; paths relative to the declaring class).
"""
from __future__ import annotations

import copy
import importlib
import sys
from collections.abc import Mapping
from typing import Any

import numpy as np

from .channels_last import (LayoutContractError, channel_count, class_in_namespace, class_layout,
                            rows_to_flax)
from .layouts import LayoutError, apply_layout, parse_param_spec

Key = tuple[str, ...]          # (collection, *path)

IGNORED_BUFFERS = {"num_batches_tracked"}


class WeightTransferError(ValueError):
    """The torch module and the flax variables do not correspond."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        lines = "\n  ".join(self.problems)
        super().__init__(f"weight transfer failed ({len(self.problems)} problem(s)):\n  {lines}")


def _flatten(tree: Mapping, prefix: Key = ()) -> dict[Key, Any]:
    out: dict[Key, Any] = {}
    for key, value in tree.items():
        here = prefix + (str(key),)
        if isinstance(value, Mapping):
            out.update(_flatten(value, here))
        else:
            out[here] = value
    return out


def _subtree(tree: Mapping, path: Key) -> Mapping | None:
    for key in path:
        if not isinstance(tree, Mapping) or key not in tree:
            return None
        tree = tree[key]
    return tree if isinstance(tree, Mapping) else None


def _to_numpy(tensor) -> np.ndarray:
    import torch

    tensor = tensor.detach().cpu()
    if tensor.dtype == torch.bfloat16:
        tensor = tensor.float()
    return tensor.numpy().copy()  # never alias torch memory (in-place updates)


def _show(key: Key) -> str:
    return "/".join(key)


def layer_entry(module):
    """The layers-table entry of a torch.nn layer (``None`` for containers and custom modules)."""
    cls = type(module)
    if not cls.__module__.startswith("torch.nn"):
        return None
    from ..mapping import load_tables

    return load_tables().layers.get(f"torch.nn.{cls.__name__}")


def _converter(name: str):
    module_name, _, function = name.rpartition(":")
    package = __package__ or "transpiler.validate"
    if module_name:
        module = importlib.import_module(f"{package}.layouts_{module_name}")
    else:
        module = importlib.import_module(f"{package}.layouts")
    try:
        return getattr(module, function)
    except AttributeError:
        raise WeightTransferError([f"params_converter {name!r}: no function {function!r}"]) from None


def flax_children(module):
    """(flax name, torch name, child) of a torch module's children, containers expanded as the
    converter names them (``layers_{i}``, ``{attr}_{i}``, ``{attr}_{key}``)."""
    import torch.nn as tnn

    def expand(name, torch_name, child):
        if isinstance(child, (tnn.ModuleList, tnn.ModuleDict)):
            for key, grandchild in child.named_children():
                yield from expand(f"{name}_{key}", f"{torch_name}.{key}", grandchild)
        else:
            yield name, torch_name, child

    sequential = isinstance(module, tnn.Sequential)
    for name, child in module.named_children():
        yield from expand(f"layers_{name}" if sequential else name, name, child)


class _Transfer:
    def __init__(self, flax_variables: Mapping, flax_class=None):
        self.flax_class = flax_class
        module = sys.modules.get(getattr(flax_class, "__module__", None) or "")
        self.namespace = vars(module) if module is not None else None
        self.leaves = _flatten(flax_variables)
        self.prefixes = {key[1:i] for key in self.leaves for i in range(2, len(key) + 1)}
        self.variables = flax_variables
        self.filled: dict[Key, np.ndarray] = {}
        self.problems: list[str] = []
        self.consumed: set[int] = set()                 # ids of torch tensors put somewhere
        self.unplaced: list[tuple[int, str]] = []       # (tensor id, problem): maybe tied weights

    def name(self, path: Key, name: str) -> str:
        """``name``, or ``name_`` where the converter renamed an attribute that clashes with a
        dataclass field of the converted module."""
        if path + (name,) not in self.prefixes and path + (f"{name}_",) in self.prefixes:
            return f"{name}_"
        return name

    def put(self, key: Key, array: np.ndarray, source: str, tensor=None) -> None:
        leaf = self.leaves.get(key)
        if leaf is None:
            problem = f"torch {source} {tuple(array.shape)}: the flax variables have no leaf {_show(key)}"
            if tensor is not None:
                self.unplaced.append((id(tensor), problem))
            else:
                self.problems.append(problem)
            return
        if tuple(array.shape) != tuple(leaf.shape):
            self.problems.append(f"torch {source}: shape {tuple(array.shape)} does not match flax "
                                 f"{_show(key)} {tuple(leaf.shape)}")
            return
        if key in self.filled:
            self.problems.append(f"torch {source}: flax leaf {_show(key)} is filled twice")
            return
        self.filled[key] = array
        if tensor is not None:
            self.consumed.add(id(tensor))

    def visit(self, module, path: Key, prefix: str, flax_class=None) -> None:
        self._visit(module, path, prefix)
        if flax_class is not None:
            self.flatten_rows(flax_class, path)

    def _visit(self, module, path: Key, prefix: str) -> None:
        entry = layer_entry(module)
        if entry is not None and entry.params_converter:
            self.convert(module, entry, path, prefix)
            return
        buffers = dict(module.named_buffers(recurse=False))
        persistent = {n for n in buffers if n not in getattr(module, "_non_persistent_buffers_set", ())}
        tensors = [(n, p, "parameter") for n, p in module.named_parameters(recurse=False)]
        tensors += [(n, buffers[n], "buffer") for n in buffers if n in persistent and buffers[n] is not None]
        for name, tensor, kind in tensors:
            source = f"{kind} {prefix}{name}"
            if name in IGNORED_BUFFERS:
                continue
            if entry is not None:
                spec_text = entry.params.get(name)
                if spec_text is None:
                    self.problems.append(f"torch {source}: {entry.key} has no layout for {name!r} "
                                         "in the layers table")
                    continue
                try:
                    spec = parse_param_spec(spec_text)
                    key = (spec.collection,) + path + (spec.name,)
                    target = self.leaves.get(key)
                    array = apply_layout(spec.layout, _to_numpy(tensor),
                                         tuple(target.shape) if target is not None else ())
                except LayoutError as exc:
                    self.problems.append(f"torch {source}: {exc}")
                    continue
                self.put(key, array, source, tensor)
            elif kind == "parameter":
                self.put(("params",) + path + (self.name(path, name),), _to_numpy(tensor), source, tensor)
            else:
                key = ("buffers",) + path + (self.name(path, name),)
                if key in self.leaves:
                    self.put(key, _to_numpy(tensor), source, tensor)
        for name, torch_name, child in flax_children(module):
            self.visit(child, path + (self.name(path, name),), f"{prefix}{torch_name}.",
                       class_in_namespace(self.namespace, child))

    def flatten_rows(self, flax_class, path: Key) -> None:
        """Permute the kernels named in ``flax_class.jaxport_layout["flatten_rows"]`` (its
        module sits at ``path``; its children are filled already)."""
        try:
            layout = class_layout(flax_class)
        except LayoutContractError as exc:
            self.problems.append(str(exc))
            return
        if layout is None:
            return
        for dense, layer in layout.flatten_rows.items():
            where = f"{layout.cls_name}.jaxport_layout['flatten_rows'][{dense!r}]"
            key = ("params",) + path + tuple(dense.split("/")) + ("kernel",)
            if key not in self.leaves:
                self.problems.append(f"{where}: the flax variables have no leaf {_show(key)}")
                continue
            channels = channel_count(self.leaves, path + tuple(layer.split("/")))
            if channels is None:
                self.problems.append(f"{where}: no kernel, bias or scale at {_show(('params',) + path + tuple(layer.split('/')))} "
                                     f"gives the channel count")
                continue
            if key not in self.filled:
                continue                     # its own problem is reported already
            try:
                self.filled[key] = rows_to_flax(self.filled[key], channels)
            except ValueError as exc:
                self.problems.append(f"{where}: {exc}")

    def convert(self, module, entry, path: Key, prefix: str) -> None:
        subtrees = {}
        for collection, tree in self.variables.items():
            sub = _subtree(tree, path)
            if sub is not None:
                subtrees[collection] = sub
        try:
            result = _converter(entry.params_converter)(module, subtrees)
        except WeightTransferError:
            raise
        except (ValueError, KeyError) as exc:
            self.problems.append(f"torch {entry.key} {prefix.rstrip('.') or '<root>'}: {exc}")
            return
        for collection, tree in result.items():
            for sub, array in _flatten(tree).items():
                self.put((collection,) + path + sub, np.asarray(array),
                         f"{entry.key} {prefix}{'/'.join(sub)}")

    def result(self) -> dict:
        import jax.numpy as jnp

        # a tensor shared by two modules (weight tying) needs only one flax leaf
        self.problems += [p for tid, p in self.unplaced if tid not in self.consumed]
        missing = [k for k in self.leaves if k not in self.filled]
        for key in missing:
            self.problems.append(f"flax leaf {_show(key)} {tuple(self.leaves[key].shape)} "
                                 "has no torch counterpart")
        if self.problems:
            raise WeightTransferError(self.problems)

        def build(tree: Mapping, prefix: Key) -> dict:
            out = {}
            for key, value in tree.items():
                here = prefix + (str(key),)
                if isinstance(value, Mapping):
                    out[key] = build(value, here)
                else:
                    out[key] = jnp.asarray(self.filled[here], dtype=value.dtype)
            return out

        return build(self.variables, ())


def load_torch_state(torch_module, flax_variables: Mapping, flax_class=None) -> dict:
    """A copy of ``flax_variables`` (from ``model.init`` or ``jax.eval_shape``; only shapes and
    dtypes are read) filled with ``torch_module``'s parameters and buffers. ``flax_class`` (the
    converted class, or an instance of it) is needed for channels-last conversions: its
    ``jaxport_layout`` and those of the classes of its converted file say which Dense kernels
    read flattened channels-last maps."""
    flax_class = _as_class(flax_class)
    transfer = _Transfer(flax_variables, flax_class)
    transfer.visit(torch_module, (), "", flax_class)
    return transfer.result()


def _as_class(flax_class):
    if flax_class is None or isinstance(flax_class, type):
        return flax_class
    return type(flax_class)


def state_dict_to_variables(state_dict: Mapping, torch_module, flax_variables: Mapping,
                            flax_class=None) -> dict:
    """Like ``load_torch_state`` for a checkpoint's ``state_dict`` (a ``module.`` prefix left
    by DataParallel/DDP is removed). ``torch_module`` gives the structure; it is not modified."""
    own = set(torch_module.state_dict())
    if state_dict and all(k.startswith("module.") for k in state_dict) and not any(k.startswith("module.") for k in own):
        state_dict = {k[len("module."):]: v for k, v in state_dict.items()}
    module = copy.deepcopy(torch_module)
    try:
        module.load_state_dict(dict(state_dict), strict=True)
    except RuntimeError as exc:
        raise WeightTransferError([f"checkpoint does not fit {type(torch_module).__name__}: {exc}"]) from None
    return load_torch_state(module, flax_variables, flax_class)
