"""Python source for hot conditions, generated from the checked syntax tree.

Closures (:mod:`engine.compiler`) are cheap to build, so every condition starts as one. The
first time a condition runs, it is rewritten as one flat Python function: paths, comparisons
with constants and ``and``/``or``/``not`` inline, anything else calling its closure. Python's
``compile()`` costs ~0.1 ms a condition, too much to pay for every rule at load time, and
nothing at all for a rule that never fires.

Only code generated here is ever compiled: the source holds generated names (``_k3``, ``_v1``)
and nothing from the rule text; constants, strings included, live in the function's namespace.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from engine import ast, values
from engine.scope import Fn

__all__ = ["generate_condition"]

_NUMERIC_FALLBACK = {
    ">": values.greater,
    ">=": values.greater_equal,
    "<": values.less,
    "<=": values.less_equal,
}
_BOOLEAN_NODES = (ast.Matches, ast.Logical)


class _Source:
    def __init__(self, closure_of: Callable[[ast.Expr], Fn]) -> None:
        self.namespace: dict[str, Any] = {
            "_lookup": values.lookup,
            "_equals": values.equals,
            "_truthy": values.truthy,
        }
        self.closure_of = closure_of
        self.count = 0

    def name(self, prefix: str, value: Any = None, *, bind: bool = True) -> str:
        self.count += 1
        name = f"_{prefix}{self.count}"
        if bind:
            self.namespace[name] = value
        return name

    def is_boolean(self, node: ast.Expr) -> bool:
        if isinstance(node, _BOOLEAN_NODES):
            return True
        if isinstance(node, ast.Unary):
            return node.op in ("not", "exists")
        return isinstance(node, ast.Binary) and node.op in values.COMPARISONS

    def truth(self, node: ast.Expr) -> str:
        code = self.expr(node)
        return code if self.is_boolean(node) else f"_truthy({code})"

    def fallback(self, node: ast.Expr) -> str:
        return f"{self.name('f', self.closure_of(node))}(s)"

    def expr(self, node: ast.Expr) -> str:
        if isinstance(node, ast.Literal) and node.parts is None:
            return self.name("k", node.value)
        if isinstance(node, ast.Ref):
            return self.ref(node)
        if isinstance(node, ast.Logical):
            joiner = f" {node.op} "
            return "(" + joiner.join(self.truth(o) for o in node.operands) + ")"
        if isinstance(node, ast.Unary) and node.op == "not":
            return f"(not {self.truth(node.operand)})"
        if isinstance(node, ast.Unary) and node.op == "exists":
            return f"({self.expr(node.operand)} is not None)"
        if isinstance(node, ast.Binary):
            constant = _constant(node.right)
            if constant is not _NOT_CONSTANT:
                return self.compare(node, constant) or self.fallback(node)
        return self.fallback(node)

    def ref(self, node: ast.Ref) -> str:
        if node.root == "state":
            base = "st"
        elif node.root == "event":
            base = "s.event"
        elif node.root == "request":
            base = "s.request"
        else:
            base = f"s.element({self.name('k', node.name)})"
        code = base
        for index, step in enumerate(node.path):
            key = self.name("k", step)
            holder = self.name("v", bind=False)
            if isinstance(step, str) and index == 0 and node.root != "element":
                code = f"{code}.get({key})"  # the state and the event are always objects
            elif isinstance(step, str):
                code = f"({holder}.get({key}) if type({holder} := {code}) is dict else None)"
            else:
                code = f"_lookup({code}, ({key},))"
        return code

    def compare(self, node: ast.Binary, constant: Any) -> str | None:
        left = self.expr(node.left)
        value = self.name("v", bind=False)
        number = type(constant) is int or type(constant) is float
        if node.op in ("==", "!=") and values.plain_text(constant):
            return f"({left} {node.op} {self.name('k', constant)})"
        if node.op in ("==", "!=") and number:
            k = self.name("k", constant)
            test = (
                f"({value} == {k} if type({value} := {left}) is int or type({value}) is float "
                f"else _equals({value}, {k}))"
            )
            return test if node.op == "==" else f"(not {test})"
        if node.op in _NUMERIC_FALLBACK and number:
            k = self.name("k", constant)
            slow = self.name("g", _NUMERIC_FALLBACK[node.op])
            return (
                f"({value} {node.op} {k} if type({value} := {left}) is int or type({value}) is float "
                f"else {slow}({value}, {k}))"
            )
        if (
            node.op in ("in", "not in")
            and type(constant) is list
            and all(values.plain_text(item) for item in constant)
        ):
            members = self.name("k", frozenset(constant))
            test = f"(type({value} := {left}) is str and {value} in {members})"
            return test if node.op == "in" else f"(not {test})"
        return None


_NOT_CONSTANT = object()


def _constant(node: ast.Expr) -> Any:
    """The value of a literal or a list of literals, else ``_NOT_CONSTANT``."""
    if isinstance(node, ast.Literal) and node.parts is None:
        return node.value
    if isinstance(node, ast.ListExpr):
        items = [_constant(item) for item in node.items]
        return _NOT_CONSTANT if any(i is _NOT_CONSTANT for i in items) else items
    return _NOT_CONSTANT


def generate_condition(expr: ast.Expr, closure_of: Callable[[ast.Expr], Fn], label: str) -> Fn:
    """One Python function computing ``bool(expr)`` for a scope."""
    source = _Source(closure_of)
    body = source.truth(expr)
    # Constants and helpers become default arguments: locals are the fastest names to read.
    bound = "".join(f", {name}={name}" for name in source.namespace)
    text = f"def _condition(s{bound}):\n    st = s.state\n    return {body}\n"
    code = compile(text, f"<condition {label}>", "exec")
    namespace = source.namespace
    exec(code, namespace)  # generated above from the checked tree; no rule text in it
    function: Fn = namespace["_condition"]
    return function
