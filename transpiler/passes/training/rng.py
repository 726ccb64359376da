"""Random ops in script code: keys split from the torch.manual_seed key (JP612)."""
from __future__ import annotations

import libcst as cst

from ...walk import transform
from .common import RNG_KEY
from .syntax import add_kwarg, bound_names, count_name, with_param


class RenameKeys(cst.CSTTransformer):
    def __init__(self, keys: list[str]) -> None:
        self.keys = keys

    def visit_Lambda(self, node) -> bool:
        return False

    def visit_Arg(self, node: cst.Arg) -> bool:
        return False               # leave_Arg renames the value, never the keyword

    def leave_Arg(self, original: cst.Arg, updated: cst.Arg) -> cst.Arg:
        return updated.with_changes(value=transform(original.value, self))

    def leave_Name(self, original: cst.Name, updated: cst.Name) -> cst.Name:
        if updated.value == RNG_KEY and self.keys:
            return updated.with_changes(value=self.keys.pop(0))
        return updated


def added_keys(original: cst.CSTNode, updated: cst.CSTNode) -> int:
    """How many more ``rng_key`` names the converted statement holds than the torch one (0
    when it holds none)."""
    if updated is original:
        return 0
    count = count_name(updated, RNG_KEY)
    return count - count_name(original, RNG_KEY) if count else 0


class RngMixin:
    """Splits rng_key before script statements that sample."""

    def _thread_key(self, original, updated):
        """A random op in script code uses the free name ``rng_key`` (JP403). Where
        ``torch.manual_seed`` made ``rng_key`` a key in scope, split it before the statement:
        ``rng_key, sample_key = jax.random.split(rng_key)``, and sample with the new key."""
        count = added_keys(original, updated)
        if count <= 0 or any(isinstance(s, cst.Assign) and any(RNG_KEY in bound_names(t.target) for t in s.targets)
                             for s in updated.body):
            return updated
        fn = self._function()
        if fn not in self.seed_scopes and fn not in self.keyed:
            if None not in self.seed_scopes or fn is None:
                return updated      # no seed in scope: JP403 stays
            self.global_key.add(fn)
        keys = ["sample_key"] if count == 1 else [f"sample_key_{i + 1}" for i in range(count)]
        new = transform(updated, RenameKeys(list(keys)))
        split = cst.parse_statement(f"{RNG_KEY}, {', '.join(keys)} = jax.random.split({RNG_KEY}"
                                    + (f", {count + 1})\n" if count > 1 else ")\n"))
        self._swap_pending("JP403", "JP612", "random op: its key is split from rng_key (torch.manual_seed) just before")
        self.ctx.emits.add("jax")
        return cst.FlattenSentinel([split.with_changes(leading_lines=updated.leading_lines),
                                    new.with_changes(leading_lines=[])])

    def _key_argument(self, original: cst.Call, updated: cst.Call) -> cst.Call:
        """A call of a function that takes a key (``keyed``) passes ``rng_key=rng_key``; the
        statement's split (``_thread_key``) then gives it a fresh key of its own."""
        if isinstance(original.func, cst.Name) and original.func.value in self.keyed and not self.class_depth \
                and not any(a.keyword is not None and a.keyword.value == RNG_KEY for a in updated.args):
            return add_kwarg(updated, RNG_KEY, cst.Name(RNG_KEY))
        return updated

    def _key_parameter(self, name: str, original: cst.FunctionDef, updated: cst.FunctionDef) -> cst.FunctionDef:
        """``def sample_actions(logits)`` → ``def sample_actions(logits, rng_key=None)``."""
        if name not in self.keyed:
            return updated
        params = with_param(updated.params, RNG_KEY)
        self.ctx.report(original, "JP612", f"{name}() samples: it takes a PRNG key (rng_key), split by each caller "
                        "from its torch.manual_seed key just before the call")
        return updated.with_changes(params=params)
