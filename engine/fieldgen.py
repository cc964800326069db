"""Python source for an action's field builder and for an element, generated from the
checked syntax tree.

An action's fields (``send event { … }``, ``push { … }``) are one object whose shape is fixed
by the rule: its keys, the nesting its dotted keys expand to, its lists, and which values are
constants. The builder is generated the first time the action runs, as one function returning
one nested dict display: constant values are read from its namespace, element references are
``s.element(NAME)`` calls, data paths and the commonest filters are inline, and every other
value calls its compiled closure (:func:`engine.compiler.compile_expr`), in the order the rule
writes them. The closures built it the same way, one comprehension per object level and one
call per key and per filter. An element's value is generated the same way
(:func:`generate_element`), the first time it is read.

Each builder comes twice (:class:`FieldBuilder`): ``builder(scope)`` returns fresh fields,
constant lists and objects copied, as :attr:`~engine.ruleset.CompiledAction.build` promises;
``builder.sent(scope)`` shares them, for the runtime's request builders, which copy what they
keep and never change what they are given.

As in :mod:`engine.codegen`, the source holds only generated names (``_k3``, ``_f1``): keys
and constants, strings included, live in the function's namespace, never in its text.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from engine import ast, values
from engine.scope import Fn, Scope

__all__ = ["FieldBuilder", "generate_element", "generate_fields", "place"]


class FieldBuilder:
    """An action's fields: ``builder(scope)`` a fresh dict, ``builder.sent(scope)`` the same
    with the action's constant lists and objects shared rather than copied.

    ``constants`` are the top-level fields whose values are constants (by name; ``None``
    when not known), ``pushed`` the names of the others; ``plan`` is for the request builder
    to keep what the constants decide (the runtime's: ``None`` until it looks)."""

    __slots__ = ("constants", "fresh", "plan", "pushed", "sent")

    def __init__(
        self,
        fresh: Fn,
        sent: Fn,
        constants: dict[str, Any] | None = None,
        pushed: frozenset[str] = frozenset(),
    ) -> None:
        self.fresh = fresh
        self.sent = sent
        self.constants = constants
        self.pushed = pushed
        self.plan: Any = None

    def __call__(self, s: Scope) -> Any:
        return self.fresh(s)


# What a compiled leaf is: (True, its constant value) or (False, its function).
Leaf = Callable[[ast.Expr], tuple[bool, Any]]

# Filters that are one method of text, and leave any other value as it is (values.f_lower…).
_STRING_METHODS = {"lower": "lower", "upper": "upper", "trim": "strip"}

_SCALARS = (str, int, float, bool, type(None))
_NO_MEMO: dict[str, Any] = {}  # a scope's memo before its first element (never written)
_MISS: Any = object()


class _Part:
    """A generated value: its source in the fresh and the shared builder, and, when it is a
    constant, its value."""

    __slots__ = ("constant", "fresh", "sent", "value")

    def __init__(self, fresh: str, sent: str, constant: bool = False, value: Any = None) -> None:
        self.fresh, self.sent, self.constant, self.value = fresh, sent, constant, value


class _Source:
    def __init__(self, leaf: Leaf) -> None:
        self.leaf = leaf
        self.namespace: dict[str, Any] = {
            "_copy": values.copy_json,
            "_text": values.stringify,
            "_lookup": values.lookup,
            "_join": " ".join,
            "_nomemo": _NO_MEMO,
            "_miss": _MISS,
        }
        self.count = 0

    def name(self, prefix: str, value: Any) -> str:
        name = f"_{prefix}{self.count}"
        self.count += 1
        self.namespace[name] = value
        return name

    def constant(self, value: Any) -> _Part:
        name = self.name("c", value)
        if type(value) in _SCALARS:
            return _Part(name, name, True, value)
        return _Part(f"_copy({name})", name, True, value)  # a list or an object: copied

    # ------------------------------------------------------------------ shapes
    @staticmethod
    def shape(node: ast.ObjectExpr) -> dict[str, Any]:
        """Dotted keys expanded into nested dicts whose leaves are expressions (see
        :func:`place`; the compiler's closures are built from the same shapes)."""
        shape: dict[str, Any] = {}
        for pair in node.pairs:
            place(shape, pair.key, pair.value)
        return shape

    def object(self, shape: dict[str, Any]) -> _Part:
        return self.assemble([(key, self.part(item)) for key, item in shape.items()])

    def part(self, item: Any) -> _Part:
        """A value of a shape: a nested shape, or an expression."""
        return self.object(item) if type(item) is dict else self.expr(item)

    def assemble(self, parts: list[tuple[str, _Part]]) -> _Part:
        """An object of ``parts``: a constant if they all are."""
        if all(part.constant for _, part in parts):
            return self.constant({key: part.value for key, part in parts})
        keys = [self.name("k", key) for key, _ in parts]
        fresh = ", ".join(
            f"{key}: {part.fresh}" for key, (_, part) in zip(keys, parts, strict=True)
        )
        sent = ", ".join(f"{key}: {part.sent}" for key, (_, part) in zip(keys, parts, strict=True))
        return _Part(f"{{{fresh}}}", f"{{{sent}}}")

    def list(self, node: ast.ListExpr) -> _Part:
        parts = [self.expr(item) for item in node.items]
        if all(part.constant for part in parts):
            return self.constant([part.value for part in parts])
        fresh = "".join(f"{part.fresh}, " for part in parts)
        sent = "".join(f"{part.sent}, " for part in parts)
        return _Part(f"[{fresh}]", f"[{sent}]")

    def expr(self, node: ast.Expr) -> _Part:
        if isinstance(node, ast.ObjectExpr):
            return self.object(self.shape(node))
        if isinstance(node, ast.ListExpr):
            return self.list(node)
        if isinstance(node, ast.Ref):
            return self.call(self.ref(node))
        if isinstance(node, ast.Literal) and node.parts is not None and len(node.parts) > 1:
            # A string with tokens: the text of each joined (one lone token keeps its type).
            pieces = [
                self.name("k", part) if isinstance(part, str) else f"_text({self.ref(part.ref)})"
                for part in node.parts
            ]
            return self.call(f"({' + '.join(pieces)})")
        constant, value = self.leaf(node)  # a constant folded, or the closure
        if constant:
            return self.constant(value)
        if isinstance(node, ast.Filter):
            return self.call(self.filter(node))
        if isinstance(node, ast.Binary) and node.op in values.ARITHMETIC:
            function = self.name("g", values.ARITHMETIC[node.op])
            return self.call(f"{function}({self.value(node.left)}, {self.value(node.right)})")
        return self.call(f"{self.name('f', value)}(s)")

    def value(self, node: ast.Expr) -> str:
        """``node`` as an expression (fresh: a value it returns is its caller's)."""
        return self.expr(node).fresh

    def ref(self, node: ast.Ref) -> str:
        """A reference read inline, as the compiler's closures read it."""
        if node.root == "element":
            # The push's memo read inline (a C lookup); Scope.element only for the first
            # read, which computes the element and keeps it as its `keep` says.
            name, v = self.name("k", node.name), self.local()
            code = (
                f"({v} if ({v} := (s._memo or _nomemo).get({name}, _miss)) is not _miss "
                f"else s.element({name}))"
            )
        else:
            # The state, the event and the request are always objects.
            code = {"state": "s.state", "event": "s.event", "request": "s.request"}[node.root]
        for index, step in enumerate(node.path):
            key = self.name("k", step)
            if type(step) is not str:
                code = f"_lookup({code}, ({key},))"
            elif index == 0 and node.root != "element":
                code = f"{code}.get({key})"
            else:
                v = self.local()
                code = f"({v}.get({key}) if type({v} := {code}) is dict else None)"
        return code

    def filter(self, node: ast.Filter) -> str:
        """``operand | name arg`` inline for the commonest filters, else a call of the
        filter's function (values.FILTERS), the operand read first."""
        operand = self.value(node.operand)
        v = self.local()
        if node.name == "default":
            fallback = "None" if node.arg is None else self.value(node.arg)
            return f"({v} if ({v} := {operand}) is not None else {fallback})"
        if node.name == "clean" and node.arg is None:  # values.f_clean, without its call
            return f"(_join({v}.split()) if type({v} := {operand}) is str else {v})"
        if node.name in _STRING_METHODS and node.arg is None:
            method = _STRING_METHODS[node.name]
            return f"({v}.{method}() if type({v} := {operand}) is str else {v})"
        function = self.name("g", values.FILTERS[node.name][0])
        if node.arg is None:
            return f"{function}({operand})"
        return f"{function}({operand}, {self.value(node.arg)})"

    def local(self) -> str:
        self.count += 1
        return f"_v{self.count}"

    @staticmethod
    def call(source: str) -> _Part:
        return _Part(source, source)


def place(shape: dict[str, Any], key: tuple[str, ...], value: ast.Expr) -> None:
    """Put ``value`` at the dotted ``key`` of a nested object's shape: dotted keys and nested
    object literals become nested dicts, the other values stay expressions."""
    for part in key[:-1]:
        inner = shape.get(part)
        if not isinstance(inner, dict):
            inner = shape[part] = {}
        shape = inner
    last = key[-1]
    if isinstance(value, ast.ObjectExpr):
        inner = shape.get(last)
        if not isinstance(inner, dict):
            inner = shape[last] = {}
        for pair in value.pairs:
            place(inner, pair.key, pair.value)
    else:
        shape[last] = value


def generate_fields(fields: ast.ObjectExpr, leaf: Leaf, label: str = "") -> FieldBuilder:
    """The builder of the action whose fields are ``fields``; ``leaf`` compiles a value that
    is neither an object, a list, an element nor a string with tokens. Raises what
    ``compile()`` raises for a structure too deep to compile (the caller keeps closures)."""
    source = _Source(leaf)
    parts = [(key, source.part(item)) for key, item in source.shape(fields).items()]
    constants = {key: part.value for key, part in parts if part.constant}
    pushed = frozenset(key for key, part in parts if not part.constant)
    part = source.assemble(parts)
    namespace = source.namespace
    # Constants and helpers become default arguments: locals are the fastest names to read.
    bound = "".join(f", {name}={name}" for name in namespace)
    text = (
        f"def _fresh(s{bound}):\n    return {part.fresh}\n"
        f"def _sent(s{bound}):\n    return {part.sent}\n"
    )
    exec(compile(text, f"<fields {label}>", "exec"), namespace)  # generated names only
    # Taken out of their own globals: a function in them is a reference cycle, which a frozen
    # ruleset (gc.freeze) would never free.
    return FieldBuilder(namespace.pop("_fresh"), namespace.pop("_sent"), constants, pushed)


def generate_element(expr: ast.Expr, leaf: Leaf, label: str = "") -> Fn:
    """One function computing the value of an element whose expression is ``expr`` (paths
    and the commonest filters inline, anything else its closure). Raises what ``compile()``
    raises for a structure too deep to compile."""
    source = _Source(leaf)
    code = source.value(expr)
    namespace = source.namespace
    bound = "".join(f", {name}={name}" for name in namespace)
    text = f"def _element(s{bound}):\n    return {code}\n"
    exec(compile(text, f"<element {label}>", "exec"), namespace)  # generated names only
    function: Fn = namespace.pop("_element")  # not in its own globals: no cycle
    return function
