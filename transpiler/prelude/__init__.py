"""Helpers that converted code may need (torch-compatible initialisers, channels-first
wrappers of flax layers, ...). Each module here is real, tested Python; the converter copies
the source of the helpers a file uses into that file (see ``transpiler.prelude_index``), so
converted code depends on jax/flax/optax only, never on jaxport.

Rules for helper modules: only ``import x`` / ``import x as y`` / ``from x import y`` at the
top (of jax, flax, optax, numpy, math, functools, inspect, typing), then top-level functions, classes
and constants. A helper may use other helpers by name.
"""
