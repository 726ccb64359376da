"""Conversion passes. Table-driven rules share one traversal (``base.Composite``); passes
that work on the whole file (imports and helpers) run after it."""
