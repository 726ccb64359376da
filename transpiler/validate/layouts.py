"""Parameter layouts named in ``mappings/layers*.toml`` (``params = { weight = "kernel:T" }``).

A spec is ``"[collection/]name[:layout]"``; collection defaults to ``params``. A layout is

* ``T``: reverse all axes (Linear ``weight`` (out, in) → Dense ``kernel`` (in, out));
* ``perm(2, 3, 1, 0)``: ``np.transpose`` with these axes (Conv2d OIHW → HWIO);
* a name of a function in ``LAYOUTS`` below: ``fn(array, target_shape) -> array``.

No layout means the same array. ``apply_layout`` never reshapes silently: a result whose shape
differs from the flax leaf is reported by the caller.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

import numpy as np


class LayoutError(ValueError):
    """A malformed layout spec in a mapping table."""


@dataclass(frozen=True)
class ParamSpec:
    collection: str
    name: str
    layout: str | None


_PERM = re.compile(r"^perm\(\s*(\d+(?:\s*,\s*\d+)*)\s*,?\s*\)$")


def parse_param_spec(spec: str) -> ParamSpec:
    """``"batch_stats/mean"`` → ParamSpec("batch_stats", "mean", None)."""
    target, _, layout = spec.partition(":")
    collection, _, name = target.rpartition("/")
    if not name:
        raise LayoutError(f"bad parameter spec {spec!r}")
    layout = layout.strip() or None
    if layout is not None:
        check_layout(layout)
    return ParamSpec(collection or "params", name, layout)


def check_layout(layout: str) -> None:
    if layout == "T" or _PERM.match(layout) or layout in LAYOUTS:
        return
    raise LayoutError(f"unknown layout {layout!r} (use T, perm(...) or one of {sorted(LAYOUTS)})")


def apply_layout(layout: str | None, array: np.ndarray, target_shape: tuple[int, ...]) -> np.ndarray:
    """Turn a torch array into the flax layout ``layout`` names."""
    if layout is None:
        return array
    if layout == "T":
        return np.transpose(array)
    match = _PERM.match(layout)
    if match:
        axes = tuple(int(a) for a in match.group(1).split(","))
        if len(axes) != array.ndim:
            raise LayoutError(f"layout {layout} does not fit an array of rank {array.ndim}")
        return np.transpose(array, axes)
    try:
        fn = LAYOUTS[layout]
    except KeyError:
        raise LayoutError(f"unknown layout {layout!r}") from None
    return fn(array, tuple(target_shape))


def reshape(array: np.ndarray, target_shape: tuple[int, ...]) -> np.ndarray:
    """Same elements, flax's shape (a torch (1,) slope as a flax scalar); sizes must agree."""
    if array.size != int(np.prod(target_shape)):
        return array  # left for the caller's shape check to report
    return array.reshape(target_shape)


LAYOUTS: dict[str, Callable[[np.ndarray, tuple[int, ...]], np.ndarray]] = {
    "reshape": reshape,
}
