"""The training rule's and the manifest's faster tree questions give the answers of the plain
walks they replace (issue #8), on the corpus and on small scripts."""
from __future__ import annotations

import ast
import functools
import textwrap
from collections import deque
from pathlib import Path

import libcst as cst
import pytest

from transpiler import manifest
from transpiler.api import convert_source
from transpiler.passes.training import TrainingRule
from transpiler.passes.training.syntax import children, find_all, named_calls

CORPUS = sorted(Path(__file__).resolve().parent.parent.glob("corpus/*/*.py"))
TRAINING = [p for p in CORPUS if p.parent.name == "training"]


def _texts(paths):
    return [p.read_text(encoding="utf-8") for p in paths]


@functools.lru_cache(maxsize=1)
def _corpus_modules() -> list[cst.Module]:
    return [cst.parse_module(text) for text in _texts(CORPUS)]


# --------------------------------------------------------------------------- syntax.find_all

def _plain_search(node: cst.CSTNode, kind) -> list:
    """Every node of type ``kind`` below ``node``, by the generic child walk."""
    out = []

    def visit(n):
        if isinstance(n, kind):
            out.append(n)
        for child in children(n):
            visit(child)
    visit(node)
    return out


@pytest.mark.parametrize("kind", [cst.Assign, cst.SimpleStatementLine, cst.For, (cst.Assign, cst.SimpleStatementLine),
                                  cst.Call, cst.Attribute])
def test_find_all_finds_what_a_full_walk_finds(kind):
    for module in _corpus_modules():
        found, expected = find_all(module, kind), _plain_search(module, kind)
        assert len(found) == len(expected) and all(a is b for a, b in zip(found, expected))


# --------------------------------------------------------------------------- the pre-scan

def _scanned(source: str, monkeypatch) -> list[TrainingRule]:
    rules: list[TrainingRule] = []
    original = TrainingRule.visit_Module

    def visit_Module(self, node):
        rules.append(self)
        return original(self, node)
    monkeypatch.setattr(TrainingRule, "visit_Module", visit_Module)
    convert_source(source, path="s.py")
    return rules


def test_recorded_calls_of_each_function_are_its_named_calls(monkeypatch):
    checked = 0
    for text in _texts(TRAINING):
        for rule in _scanned(text, monkeypatch):
            for info in rule.functions.values():
                if rule.optimizers:     # (class bodies are read only then)
                    assert info.called == {c.func.value for c in named_calls(info.node.body)}
                    checked += 1
    assert checked > 20


def test_calls_from_a_class_inside_a_function_count_as_the_function_s(monkeypatch):
    source = textwrap.dedent("""\
        import torch
        import torch.nn as nn

        def helper(x):
            return x

        def main():
            class Wrapper(nn.Module):
                def forward(self, x):
                    return helper(x)
            model = Wrapper()
            opt = torch.optim.SGD(model.parameters(), lr=0.1)
            return opt
        """)
    [rule] = _scanned(source, monkeypatch)
    assert rule.functions["main"].called == {"Wrapper", "helper"}
    assert rule.functions["helper"].called == set()


def test_a_class_that_calls_a_sampling_function_keeps_it_unkeyed(monkeypatch):
    """The class bodies are read when a function samples: a function a class calls has no
    key given to it (JP403 stays), one only seeded functions call takes rng_key."""
    source = textwrap.dedent("""\
        import torch
        import torch.nn as nn

        def noise(x):
            return x + torch.randn_like(x)

        def jitter(x):
            return x + torch.randn_like(x)

        class Net(nn.Module):
            def forward(self, x):
                return noise(x)

        def main():
            torch.manual_seed(0)
            x = torch.zeros(3)
            return noise(x), jitter(x)
        """)
    [rule] = _scanned(source, monkeypatch)
    assert rule.keyed == {"jitter"}
    out = convert_source(source, path="s.py").output.decode()
    assert "def jitter(x, rng_key=None):" in out and "def noise(x):" in out and "JP403" in out


# --------------------------------------------------------------------------- manifest

def _walk_statements_reference(tree: ast.AST):
    todo = deque([tree])
    while todo:
        node = todo.popleft()
        yield node
        for name in node._fields:
            value = getattr(node, name, None)
            if type(value) is list:
                todo.extend(v for v in value if isinstance(v, manifest._BLOCKS))


def _statements_reference(body):
    for stmt in body:
        yield stmt
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue
        for attr in ("body", "orelse", "finalbody"):
            inner = getattr(stmt, attr, None)
            if isinstance(inner, list):
                yield from _statements_reference(inner)
        for h in getattr(stmt, "handlers", []) or []:
            yield from _statements_reference(h.body)


def _names_read_reference(node: ast.AST) -> set[str]:
    bound = set()
    for n in ast.walk(node):
        if isinstance(n, ast.Lambda):
            a = n.args
            bound |= {x.arg for x in a.posonlyargs + a.args + a.kwonlyargs}
            bound |= {x.arg for x in (a.vararg, a.kwarg) if x is not None}
        elif isinstance(n, ast.comprehension):
            bound |= set(manifest._target_names(n.target))
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)} - bound


def _same(a, b) -> bool:
    a, b = list(a), list(b)
    return len(a) == len(b) and all(x is y for x, y in zip(a, b))


def test_manifest_walks_keep_ast_walk_order():
    for text in _texts(CORPUS):
        tree = ast.parse(text)
        assert _same(manifest._nodes(tree), ast.walk(tree))
        assert _same(manifest._walk_statements(tree), _walk_statements_reference(tree))
        for scope in manifest._scopes(tree).values():
            assert _same(manifest._statements(scope.body), _statements_reference(scope.body))
        for node in ast.walk(tree):
            if isinstance(node, ast.stmt):
                assert manifest._names_read(node) == _names_read_reference(node)


def test_manifest_assignments_by_name_match_a_scan_of_the_scope():
    for text in _texts(TRAINING):
        side = manifest._Side(text)
        for scope in side.scopes.values():
            statements = list(_statements_reference(scope.body))
            names = {n for s in statements for n in manifest._assigned(s)} | {"undefined_name"}
            lines = sorted({s.lineno for s in statements})[::7] + [None]
            for name in names:
                for before in lines:
                    expected = [s for s in statements if (before is None or s.lineno < before)
                                and name in manifest._assigned(s) and not isinstance(s, ast.For)]
                    assert _same(side.assignments(scope, name, before), expected)
