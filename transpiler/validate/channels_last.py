"""The validator's side of ``jaxport convert --layout nhwc`` (channels-last image models).

A converted class that takes images channels-last declares it with a class variable (the
contract of the converter and the validator)::

    jaxport_layout: ClassVar[dict] = {"inputs": ("x",), "returns": False,
                                      "flatten_rows": {"fc1": "conv2"}}

* ``inputs``: the ``__call__`` parameters that take 4-D images (N, H, W, C) where torch takes
  (N, C, H, W);
* ``returns``: every 4-D array the module returns is (N, H, W, C);
* ``flatten_rows``: flax path of a Dense that reads a flattened channels-last map → flax path
  of the layer that fixes its channel count C (paths relative to the declaring class). Its
  kernel rows are in (H, W, C) order where torch's weight columns are in (C, H, W) order.

No attribute: the class is channels-first, as torch. The validator keeps torch's layout at
its boundary: ``to_flax_inputs`` transposes the image arguments before the flax module is
called, ``to_torch_outputs`` transposes 4-D results back; done inside the compared (jitted,
differentiated) program, input gradients come out in torch's layout too. The weight transfer
(``weights._Transfer``) permutes the ``flatten_rows`` kernels with ``rows_to_flax``;
``rows_to_torch`` is its inverse.
"""
from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

ATTRIBUTE = "jaxport_layout"
TO_NHWC = (0, 2, 3, 1)
TO_NCHW = (0, 3, 1, 2)


class LayoutContractError(ValueError):
    """A ``jaxport_layout`` attribute that does not follow the contract."""


@dataclass(frozen=True)
class ClassLayout:
    cls_name: str
    inputs: tuple[str, ...] = ()
    returns: bool = False
    flatten_rows: dict = field(default_factory=dict)


def class_layout(cls) -> ClassLayout | None:
    """The channels-last declaration of a converted flax class (None: channels-first)."""
    if cls is None:
        return None
    raw = getattr(cls, ATTRIBUTE, None)
    if raw is None:
        return None
    name = getattr(cls, "__name__", str(cls))
    if not isinstance(raw, Mapping):
        raise LayoutContractError(f"{name}.{ATTRIBUTE} is a {type(raw).__name__}, not a dict")
    unknown = set(raw) - {"inputs", "returns", "flatten_rows"}
    if unknown:
        raise LayoutContractError(f"{name}.{ATTRIBUTE}: unknown key(s) {sorted(unknown)}")
    inputs = raw.get("inputs", ())
    if isinstance(inputs, str) or not all(isinstance(n, str) for n in inputs):
        raise LayoutContractError(f"{name}.{ATTRIBUTE}['inputs'] must be a tuple of parameter names, "
                                  f"not {inputs!r}")
    returns = raw.get("returns", False)
    if not isinstance(returns, bool):
        raise LayoutContractError(f"{name}.{ATTRIBUTE}['returns'] must be True or False, not {returns!r}")
    rows = raw.get("flatten_rows", {}) or {}
    if not isinstance(rows, Mapping) or not all(isinstance(k, str) and isinstance(v, str) and k and v
                                                for k, v in rows.items()):
        raise LayoutContractError(f"{name}.{ATTRIBUTE}['flatten_rows'] must map flax paths to flax paths, "
                                  f"not {rows!r}")
    return ClassLayout(name, tuple(inputs), returns, dict(rows))


# --- the module boundary ----------------------------------------------------------------------

def _parameter_names(cls, method: str | None) -> list[str] | None:
    fn = getattr(cls, method or "__call__", None)
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return None
    if params and params[0].name == "self":
        params = params[1:]
    return [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]


def image_positions(cls, method: str | None = None) -> tuple[tuple[int, ...], frozenset[str]]:
    """(positions, keyword names) of the channels-last image parameters of ``cls.method``
    (``__call__`` by default); empty for a channels-first class."""
    layout = class_layout(cls)
    if layout is None or not layout.inputs:
        return (), frozenset()
    names = _parameter_names(cls, method) or []
    missing = [n for n in layout.inputs if n not in names and method in (None, "__call__")]
    if missing:
        raise LayoutContractError(f"{layout.cls_name}.{ATTRIBUTE}['inputs'] names {missing}, which "
                                  f"{layout.cls_name}.__call__ does not take (it takes {names})")
    return tuple(i for i, n in enumerate(names) if n in layout.inputs), frozenset(layout.inputs)


def _transpose(x, axes):
    if getattr(x, "ndim", None) != 4:
        return x
    if isinstance(x, np.ndarray):
        return np.ascontiguousarray(np.transpose(x, axes))
    import jax.numpy as jnp
    return jnp.transpose(x, axes)


def to_flax_inputs(cls, method: str | None, args, kwargs):
    """``(args, kwargs)`` in torch's layout → the arguments of the flax ``cls.method``: the
    4-D arrays of its channels-last image parameters transposed (N, C, H, W) → (N, H, W, C).
    Other arguments (and everything for a channels-first class) unchanged."""
    positions, names = image_positions(cls, method)
    if not positions and not names:
        return args, kwargs
    args = tuple(_transpose(a, TO_NHWC) if i in positions else a for i, a in enumerate(args))
    kwargs = {k: (_transpose(v, TO_NHWC) if k in names else v) for k, v in kwargs.items()}
    return args, kwargs


def to_torch_outputs(cls, out):
    """The flax module's result in torch's layout: with ``returns``, every 4-D array leaf of
    tuples / lists / dicts transposed (N, H, W, C) → (N, C, H, W)."""
    layout = class_layout(cls)
    if layout is None or not layout.returns:
        return out

    def walk(o):
        if isinstance(o, Mapping):
            return {k: walk(v) for k, v in o.items()}
        if isinstance(o, tuple) and hasattr(o, "_fields"):
            return type(o)(*(walk(x) for x in o))
        if isinstance(o, (tuple, list)):
            return type(o)(walk(x) for x in o)
        return _transpose(o, TO_NCHW)
    return walk(out)


def batch_to_flax(cls, array):
    """One 4-D image batch of a training loop, for a channels-last model ``cls``."""
    if class_layout(cls) is None or not class_layout(cls).inputs:
        return array
    return _transpose(array, TO_NHWC)


# --- flattened channels-last maps: Dense kernel rows -------------------------------------------

def rows_to_flax(kernel: np.ndarray, channels: int) -> np.ndarray:
    """A Dense kernel (C*S, out) whose rows are in torch's (C, H, W) flatten order → rows in
    the (H, W, C) order of a flattened channels-last map."""
    rows = kernel.shape[0]
    if channels <= 0 or rows % channels:
        raise ValueError(f"{rows} kernel rows are not a multiple of the channel count {channels}")
    rest = kernel.shape[1:]
    return (kernel.reshape((channels, rows // channels) + rest)
            .swapaxes(0, 1).reshape(kernel.shape))


def rows_to_torch(kernel: np.ndarray, channels: int) -> np.ndarray:
    """The inverse of ``rows_to_flax``: (H, W, C) rows → torch's (C, H, W) order."""
    rows = kernel.shape[0]
    if channels <= 0 or rows % channels:
        raise ValueError(f"{rows} kernel rows are not a multiple of the channel count {channels}")
    rest = kernel.shape[1:]
    return (kernel.reshape((rows // channels, channels) + rest)
            .swapaxes(0, 1).reshape(kernel.shape))


def channel_count(leaves: Mapping, layer: tuple[str, ...]) -> int | None:
    """C fixed by the layer at ``layer`` (a flax path below ``params``): the last axis of its
    ``kernel``, else the size of its ``bias`` or ``scale``. ``leaves`` maps
    ``(collection, *path, name)`` to arrays (or shape structs)."""
    for name in ("kernel", "bias", "scale"):
        leaf = leaves.get(("params",) + layer + (name,))
        if leaf is not None and len(getattr(leaf, "shape", ())) >= 1:
            return int(leaf.shape[-1]) if name == "kernel" else int(np.prod(leaf.shape))
    return None


def class_in_namespace(namespace: Mapping | None, torch_module):
    """The converted flax class of a torch submodule: the class of the same name in the
    converted file (jaxport keeps class names); None for torch.nn layers and unknown names."""
    if namespace is None:
        return None
    cls = type(torch_module)
    if cls.__module__.startswith("torch."):
        return None
    found = namespace.get(cls.__name__)
    return found if isinstance(found, type) else None
