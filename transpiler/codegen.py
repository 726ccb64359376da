"""Printing libcst trees without libcst's per-node context managers.

libcst's ``CodegenState.record_syntactic_position`` is a generator-based context manager that
does nothing; every expression and statement enters it while printing. A state whose method
returns one shared no-op object prints the same text about 30% faster. ``code_of(node)`` is
``cst.Module([]).code_for_node(node)``; ``module_code(module)`` is ``module.code``.

This module imports nothing from jaxport, so any module may use it.
"""
from __future__ import annotations

import libcst as cst
from libcst._nodes.internal import CodegenState


class _NoRecord:
    __slots__ = ()

    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


_NO_RECORD = _NoRecord()


class _State(CodegenState):
    def record_syntactic_position(self, node, *, start_node=None, end_node=None):
        return _NO_RECORD


_EMPTY = cst.Module([])


def code_for_node(module: cst.Module, node: cst.CSTNode) -> str:
    """``module.code_for_node(node)``."""
    state = _State(default_indent=module.default_indent, default_newline=module.default_newline)
    node._codegen(state)
    return "".join(state.tokens)


def code_of(node: cst.CSTNode) -> str:
    """``cst.Module([]).code_for_node(node)``."""
    return code_for_node(_EMPTY, node)


def module_code(module: cst.Module) -> str:
    """``module.code``."""
    return code_for_node(module, module)
