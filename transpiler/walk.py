"""Fast walks over libcst trees: :func:`walk` (read-only, the ``CSTVisitor`` protocol) and
:func:`transform` (the ``CSTTransformer`` protocol), used by every pass instead of
``node.visit``.

libcst's own traversal rebuilds and revalidates every node it passes, even for a read-only
visitor, and visits every whitespace and punctuation node. These walks read the children in
libcst's order, skip punctuation and whitespace unless the visitor has a hook for them, and
rebuild a node only when one of its children changed (through libcst's own rebuild, so
removal and flattening behave exactly as in libcst). They are several times faster and
recurse one Python frame per tree level instead of about four.

This module imports nothing from jaxport, so any module may use it.
"""
from __future__ import annotations

import dataclasses
import re
import weakref

import libcst as cst
from libcst import CSTNode, CSTValidationError, FlattenSentinel, RemovalSentinel

class _FieldRecorder(cst.CSTVisitor):
    """Learns the order in which libcst visits a node type's fields (its source order)."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def on_visit(self, node) -> bool:
        return False

    def on_leave(self, original) -> None:
        return None

    def on_visit_attribute(self, node, attribute: str) -> None:
        if attribute not in self.names:
            self.names.append(attribute)

    def on_leave_attribute(self, node, attribute: str) -> None:
        return None


_FIELDS: dict[type, tuple[str, ...]] = {}


def child_fields(node: CSTNode) -> tuple[str, ...]:
    """The names of ``node``'s child fields in the order libcst visits them."""
    cls = type(node)
    names = _FIELDS.get(cls)
    if names is None:
        recorder = _FieldRecorder()
        node._visit_and_replace_children(recorder)
        names = _FIELDS[cls] = tuple(recorder.names)
    return names


def _token_types() -> frozenset[type]:
    """Whitespace, comments and punctuation: node types whose subtrees hold only their like."""
    found: set[type] = set()
    pending = [CSTNode]
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        if cls.__module__ in ("libcst._nodes.whitespace", "libcst._nodes.op"):
            found.add(cls)
    found |= {cst.LeftParen, cst.RightParen, cst.LeftSquareBracket, cst.RightSquareBracket,
              cst.LeftCurlyBrace, cst.RightCurlyBrace, cst.Asynchronous}
    return frozenset(found)


TOKEN_TYPES = _token_types()
_TOKEN_NAMES = frozenset(t.__name__ for t in TOKEN_TYPES)
_TYPING_WORDS = {"Sequence", "Optional", "Union", "MaybeSentinel", "None", "Literal", "typing"}
_NODE_FIELDS: dict[type, tuple[str, ...]] = {}


def _token_only(annotation: str | None) -> bool:
    words = set(re.findall(r"[A-Za-z_]\w*", annotation or "")) - _TYPING_WORDS
    return bool(words) and words <= _TOKEN_NAMES


def node_fields(node: CSTNode) -> tuple[str, ...]:
    """:func:`child_fields` without the fields declared to hold only whitespace and
    punctuation: all a walk needs when it skips every token type."""
    cls = type(node)
    names = _NODE_FIELDS.get(cls)
    if names is None:
        declared = {f.name: str(f.type) for f in dataclasses.fields(cls)}
        names = _NODE_FIELDS[cls] = tuple(n for n in child_fields(node) if not _token_only(declared.get(n)))
    return names


_ALL_TOKENS: dict[frozenset, bool] = {}


def fields_table(skip: frozenset):
    """(fields by type, function computing them) for a walk that skips ``skip``: the fields
    without tokens when ``skip`` holds every token type, else all of them."""
    every = _ALL_TOKENS.get(skip)
    if every is None:
        every = _ALL_TOKENS[skip] = TOKEN_TYPES <= skip
    return (_NODE_FIELDS, node_fields) if every else (_FIELDS, child_fields)


def _expression_types() -> frozenset[type]:
    found: set[type] = set()
    pending = [cst.BaseExpression]
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        found.add(cls)
    return frozenset(found)


# Expressions hold no statements: a visitor that looks for statements only (imports,
# assignments, returns) sets ``walk_expressions = False`` and :func:`walk` neither shows it
# an expression nor enters one.
EXPRESSION_TYPES = _expression_types()
_WITHOUT_EXPRESSIONS: dict[frozenset, frozenset] = {}


def without_expressions(skip: frozenset) -> frozenset:
    """``skip`` and every expression type."""
    found = _WITHOUT_EXPRESSIONS.get(skip)
    if found is None:
        found = _WITHOUT_EXPRESSIONS[skip] = skip | EXPRESSION_TYPES
    return found
_NODE_TYPE: dict[type, bool] = {}


def _is_node_type(t: type) -> bool:
    known = _NODE_TYPE.get(t)
    if known is None:
        known = _NODE_TYPE[t] = isinstance(t, type) and issubclass(t, CSTNode)
    return known


_OWN_HOOKS: "weakref.WeakKeyDictionary[type, frozenset[str]]" = weakref.WeakKeyDictionary()


def _own_hooks(cls: type) -> frozenset[str]:
    """``visit_X``/``leave_X`` methods a visitor class defines itself (or inherits from a
    class that is not libcst's: libcst's visitor bases define a no-op hook for every type)."""
    found = _OWN_HOOKS.get(cls)
    if found is None:
        names: set[str] = set()
        for klass in cls.__mro__:
            if klass is object or klass.__module__.startswith("libcst"):
                continue
            names.update(n for n in vars(klass) if n.startswith(("visit_", "leave_")))
        found = _OWN_HOOKS[cls] = frozenset(names)
    return found


_SKIPPED: dict[frozenset, frozenset] = {}


def skipped_types(*hook_owners) -> frozenset[type]:
    """The token types none of ``hook_owners`` (visitors, rules) has a ``visit_``/``leave_``
    hook for (cached per tuple of owner classes: passes walk small subtrees many times)."""
    classes = tuple(type(owner) for owner in hook_owners)
    found = _SKIPPED_BY_CLASSES.get(classes)
    if found is not None:
        return found
    hooked: set[str] = set()
    for cls in classes:
        hooked |= _own_hooks(cls)
    key = frozenset(n.split("_", 1)[1] for n in hooked)
    found = _SKIPPED.get(key)
    if found is None:
        found = _SKIPPED[key] = frozenset(t for t in TOKEN_TYPES if t.__name__ not in key)
    if not any("<locals>" in cls.__qualname__ for cls in classes):
        # a class made inside a function is made anew on every call: keeping it here would
        # keep it, its methods' closures and the syntax trees they hold, for ever
        _SKIPPED_BY_CLASSES[classes] = found
    return found


_SKIPPED_BY_CLASSES: dict[tuple[type, ...], frozenset] = {}


def walk(node: CSTNode, visitor: cst.CSTVisitor) -> None:
    """``node.visit(visitor)`` for a read-only visitor, without libcst's rebuild of every node.

    Hooks run in the same order as with ``node.visit``. A visitor that overrides ``on_visit``
    or ``on_leave`` gets them for every node, punctuation and whitespace included, unless its
    class sets ``walk_tokens = False``. A visitor whose class sets ``walk_expressions = False``
    is shown no expression below ``node`` (nor anything inside one)."""
    vcls = type(visitor)
    generic_visit = vcls.on_visit is not cst.CSTVisitor.on_visit
    generic_leave = vcls.on_leave is not cst.CSTVisitor.on_leave
    if (generic_visit or generic_leave) and getattr(visitor, "walk_tokens", True):
        skip: frozenset = frozenset()
    else:
        skip = skipped_types(visitor)
    if getattr(visitor, "walk_expressions", True) is False:
        skip = without_expressions(skip)
    hooks: dict[type, tuple] = {}
    own = _own_hooks(vcls)
    on_visit, on_leave = visitor.on_visit, visitor.on_leave
    fields_of, fields_fn = fields_table(skip)
    node_type = _NODE_TYPE

    def rec(node) -> None:
        t = type(node)
        h = hooks.get(t)
        if h is None:
            visit, leave = "visit_" + t.__name__, "leave_" + t.__name__
            h = hooks[t] = (getattr(visitor, visit) if visit in own else None,
                            getattr(visitor, leave) if leave in own else None)
        if generic_visit:
            descend = on_visit(node)
        else:
            fn = h[0]
            descend = fn is None or fn(node) is not False
        if descend:
            names = fields_of.get(t) or fields_fn(node)
            for name in names:
                value = getattr(node, name)
                vt = type(value)
                if vt is tuple or vt is list:
                    for item in value:
                        if type(item) not in skip:
                            rec(item)
                elif vt not in skip and ((k := node_type.get(vt)) or (k is None and _is_node_type(vt))):
                    rec(value)
        if generic_leave:
            on_leave(node)
        elif h[1] is not None:
            h[1](node)

    rec(node)


class _Replay(cst.CSTTransformer):
    """Rebuilds one node through libcst with children already transformed."""

    def __init__(self, results: dict[int, object]) -> None:
        super().__init__()
        self.results = results

    def on_visit(self, node) -> bool:
        return False

    def on_leave(self, original, updated):
        return self.results.get(id(original), updated)

    def on_visit_attribute(self, node, attribute: str) -> None:
        return None

    def on_leave_attribute(self, node, attribute: str) -> None:
        return None


def transform_children(node: CSTNode, rec, fields: tuple[str, ...], skip: frozenset):
    """``node`` with each child (in ``fields``, types in ``skip`` left alone) replaced by
    ``rec(child)``: ``node`` itself when no child changed, else rebuilt (:func:`rebuilt`)."""
    changed = None
    changed_fields = None
    node_type = _NODE_TYPE
    for name in fields:
        value = getattr(node, name)
        vt = type(value)
        if vt is tuple or vt is list:
            for item in value:
                if type(item) not in skip:
                    result = rec(item)
                    if result is not item:
                        if changed is None:
                            changed, changed_fields = {}, []
                        changed[id(item)] = result
                        if not changed_fields or changed_fields[-1] is not name:
                            changed_fields.append(name)
        elif vt not in skip and ((k := node_type.get(vt)) or (k is None and _is_node_type(vt))):
            result = rec(value)
            if result is not value:
                if changed is None:
                    changed, changed_fields = {}, []
                changed[id(value)] = result
                changed_fields.append(name)
    return rebuilt(node, changed, changed_fields) if changed else node


def rebuilt(node: CSTNode, changed: dict[int, object], changed_fields: list[str]) -> CSTNode:
    """``node`` with its children replaced as ``changed`` says (``id(old child)`` → result).
    Children replaced by nodes: a copy with those fields changed (libcst's constructor and
    validation, as its own rebuild). A child removed or flattened into several: libcst's own
    rebuild, which knows what each field makes of those sentinels."""
    if any(type(result) in _SENTINEL_TYPES for result in changed.values()):
        return node._visit_and_replace_children(_Replay(changed))
    updates = {}
    for name in changed_fields:
        value = getattr(node, name)
        if type(value) is tuple or type(value) is list:
            updates[name] = tuple(changed.get(id(item), item) for item in value)
        else:
            updates[name] = changed[id(value)]
    return copy_with(node, updates)


_SENTINEL_TYPES = (RemovalSentinel, FlattenSentinel)
_DATACLASS_FIELDS: dict[type, tuple[str, ...]] = {}


def copy_with(node: CSTNode, updates: dict[str, object]) -> CSTNode:
    """``node.with_changes(**updates)`` without its keyword-argument machinery: what a
    frozen dataclass's constructor does (set every field, then ``__post_init__``, where
    libcst validates the node)."""
    cls = type(node)
    names = _DATACLASS_FIELDS.get(cls)
    if names is None:
        names = _DATACLASS_FIELDS[cls] = tuple(f.name for f in dataclasses.fields(cls))
    copy = object.__new__(cls)
    set_field = object.__setattr__
    for name in names:
        set_field(copy, name, updates[name] if name in updates else getattr(node, name))
    copy.__post_init__()
    return copy


def transform(node: CSTNode, transformer: cst.CSTTransformer, skip: frozenset | None = None):
    """``node.visit(transformer)``: the same ``on_visit``/``on_leave`` calls in the same order
    (except on the token types in ``skip``; by default those the transformer has no hooks
    for), and the same result. A node none of whose children changed is passed to
    ``on_leave`` as itself (libcst passes an equal copy). A transformer whose class has a
    ``fused_transform(node, skip)`` method (the rules' composite) does the walk itself."""
    fused = getattr(type(transformer), "fused_transform", None)
    if fused is not None:
        return fused(transformer, node, skip)
    tcls = type(transformer)
    generic = tcls.on_visit is not cst.CSTTransformer.on_visit or tcls.on_leave is not cst.CSTTransformer.on_leave
    if skip is None:
        skip = frozenset() if generic else skipped_types(transformer)
    if generic:
        on_visit, on_leave = transformer.on_visit, transformer.on_leave
    else:
        # libcst's on_visit/on_leave (call visit_<Type>/leave_<Type> if defined), with each
        # type's hooks looked up once; libcst's own no-op hooks are not called
        own = _own_hooks(tcls)
        hooks: dict[type, tuple] = {}

        def hooks_of(t: type) -> tuple:
            visit, leave = "visit_" + t.__name__, "leave_" + t.__name__
            h = hooks[t] = (getattr(transformer, visit) if visit in own else None,
                            getattr(transformer, leave) if leave in own else None)
            return h

        def on_visit(node) -> bool:
            fn = (hooks.get(type(node)) or hooks_of(type(node)))[0]
            return fn is None or fn(node) is not False

        def on_leave(original, updated):
            fn = hooks[type(original)][1]
            return updated if fn is None else fn(original, updated)
    fields_of, fields_fn = fields_table(skip)

    def rec(node):
        updated = node
        if on_visit(node):
            updated = transform_children(node, rec, fields_of.get(type(node)) or fields_fn(node), skip)
        result = on_leave(node, updated)
        if not isinstance(result, (CSTNode, RemovalSentinel, FlattenSentinel)):
            raise CSTValidationError("Expected a node of type CSTNode or a RemovalSentinel, "
                                     f"but got a return value of {type(result).__name__}")
        return result

    return rec(node)
