"""Python source for hot conditions, generated from the checked syntax tree.

Closures (:mod:`engine.compiler`) are cheap to build, so every condition starts as one. The
first time a condition runs, it is rewritten as one flat Python function: paths, truthiness,
``and``/``or``/``not``, comparisons (with a constant on either side, list membership included)
and arithmetic inline, a container read by several paths (``state.user`` in ``state.user.tier``
and ``state.user.segments``) read once; filters, ``matches``, ``if``/``else`` and the like call
their closure. Python's ``compile()`` costs ~0.1 ms a condition, too much to pay for every rule
at load time, and nothing at all for a rule that never fires.

Only code generated here is ever compiled: the source holds generated names (``_k3``, ``_v1``)
and nothing from the rule text; constants, strings included, live in the function's namespace.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from engine import ast, values
from engine.scope import Fn

__all__ = ["StateFn", "generate_condition", "generate_conditions"]

_NUMERIC_FALLBACK = {
    ">": values.greater,
    ">=": values.greater_equal,
    "<": values.less,
    "<=": values.less_equal,
}
_BOOLEAN_NODES = (ast.Matches, ast.Logical)
_SWAPPED = {"==": "==", "!=": "!=", "<": ">", "<=": ">=", ">": "<", ">=": "<="}


# What a container read by several paths holds when it is not an object (nothing writes it).
_EMPTY: dict[str, Any] = {}

# A path read as a container (``state.user`` in ``state.user.tier``): its root, then its steps.
_Prefix = tuple[Any, ...]


class _Source:
    def __init__(self, closure_of: Callable[[ast.Expr], Fn], shared: set[_Prefix]) -> None:
        self.namespace: dict[str, Any] = {
            "_lookup": values.lookup,
            "_equals": values.equals,
            "_truthy": values.truthy,
            "_E": _EMPTY,
        }
        self.closure_of = closure_of
        self.count = 0
        self.constants: dict[tuple[Any, Any], str] = {}
        self.fallbacks: dict[int, str] = {}  # by the node's identity: the tree outlives them
        # Containers read more than once, and those of them whose local is certainly set at the
        # point being generated (code is generated in the order it runs).
        self.shared = shared
        self.available: dict[_Prefix, str] = {}
        self.optimistic = False  # see ref()
        self.reads_scope = False  # reads more than the state: the event, an element, a closure

    def name(self, prefix: str, value: Any = None, *, bind: bool = True) -> str:
        key: tuple[Any, Any] | None = None
        if bind and prefix == "k" and (type(value) is str or type(value) is int):
            key = (type(value), value)
        elif bind and prefix == "g":  # a helper: the same function under one name
            key = (prefix, id(value))
        if key is not None:
            known = self.constants.get(key)
            if known is not None:
                return known
        self.count += 1
        name = f"_{prefix}{self.count}"
        if bind:
            self.namespace[name] = value
            if key is not None:
                self.constants[key] = name
        return name

    def is_boolean(self, node: ast.Expr) -> bool:
        if isinstance(node, _BOOLEAN_NODES):
            return True
        if isinstance(node, ast.Unary):
            return node.op in ("not", "exists")
        return isinstance(node, ast.Binary) and node.op in values.COMPARISONS

    def truth(self, node: ast.Expr) -> str:
        """``node`` as a bool (values.truthy): only text needs the function, the rest is
        Python's truthiness."""
        code = self.expr(node)
        if self.is_boolean(node):
            return code
        v = self.name("v", bind=False)
        return f"(_truthy({v}) if type({v} := {code}) is str else (True if {v} else False))"

    def negation(self, node: ast.Expr) -> str:
        code = self.expr(node)
        if self.is_boolean(node):
            return f"(not {code})"
        v = self.name("v", bind=False)
        return f"(not (_truthy({v}) if type({v} := {code}) is str else {v}))"

    def fallback(self, node: ast.Expr) -> str:
        # One closure a node, though the expression is generated twice (generate_condition).
        name = self.fallbacks.get(id(node))
        if name is None:
            name = self.fallbacks[id(node)] = self.name("f", self.closure_of(node))
        self.reads_scope = True
        return f"{name}(s)"

    def expr(self, node: ast.Expr) -> str:
        if isinstance(node, ast.Literal) and node.parts is None:
            return self.name("k", node.value)
        if isinstance(node, ast.Ref):
            return self.ref(node)
        if isinstance(node, ast.Logical):
            # Only the first operand surely runs: what the others set is not available after.
            parts = [self.truth(node.operands[0])]
            after_first = dict(self.available)
            parts.extend(self.truth(o) for o in node.operands[1:])
            self.available = after_first
            return "(" + f" {node.op} ".join(parts) + ")"
        if isinstance(node, ast.Unary) and node.op == "not":
            return self.negation(node.operand)
        if isinstance(node, ast.Unary) and node.op == "exists":
            return f"({self.expr(node.operand)} is not None)"
        if isinstance(node, ast.Unary):
            return f"{self.name('g', values.negate)}({self.expr(node.operand)})"
        if isinstance(node, ast.Binary):
            return self.binary(node)
        return self.fallback(node)

    def binary(self, node: ast.Binary) -> str:
        right = _constant(node.right)
        if right is not _NOT_CONSTANT:
            fast = self.compare(node.op, node.left, right)
            if fast is not None:
                return fast
        left = _constant(node.left)
        if left is not _NOT_CONSTANT and right is _NOT_CONSTANT:
            fast = self.constant_left(node.op, left, node.right)
            if fast is not None:
                return fast
        if node.op not in values.COMPARISONS:  # arithmetic
            function = self.name("g", values.ARITHMETIC[node.op])
            return f"{function}({self.expr(node.left)}, {self.expr(node.right)})"
        # Left before right, as the closure reads them; a constant list is passed as it is
        # (no comparison changes or keeps its operands).
        function = self.name("g", values.COMPARISONS[node.op])
        return f"{function}({self.operand(node.left)}, {self.operand(node.right)})"

    def operand(self, node: ast.Expr) -> str:
        constant = _constant(node)
        return self.name("k", constant) if constant is not _NOT_CONSTANT else self.expr(node)

    def constant_left(self, op: str, constant: Any, right: ast.Expr) -> str | None:
        if op in _SWAPPED:  # `c < x` is `x > c`: equality is symmetric, values.order antisymmetric
            return self.compare(_SWAPPED[op], right, constant)
        if op in ("in", "not in") and values.plain_text(constant):
            # Plain text equals only the same text (values.equals): Python's `in` is exact.
            value = self.name("v", bind=False)
            k = self.name("k", constant)
            test = f"(type({value} := {self.expr(right)}) is list and {k} in {value})"
            return test if op == "in" else f"(not {test})"
        return None

    def ref(self, node: ast.Ref) -> str:
        self.reads_scope = self.reads_scope or node.root != "state"
        if node.root == "state":
            base = "st"
        elif node.root == "event":
            base = "s.event"
        elif node.root == "request":
            base = "s.request"
        else:
            base = f"s.element({self.name('k', node.name)})"
        code = base
        prefix: _Prefix = (node.root, node.name)
        path = node.path
        # Optimistic code reads `a.get(k, _E).get(j)` with no type checks: only an object has a
        # `get`, a missing key gives the empty one, and anything else raises AttributeError.
        unchecked = self.optimistic and node.root != "element"
        for index, step in enumerate(path):
            key = self.name("k", step)
            holder = self.name("v", bind=False)
            inner = ", _E" if index + 1 < len(path) and isinstance(path[index + 1], str) else ""
            if isinstance(step, str) and index == 0 and node.root != "element":
                # The state and the event are always objects.
                code = f"{code}.get({key}{inner if unchecked else ''})"
            elif isinstance(step, str) and prefix in self.available:
                code = f"{self.available[prefix]}.get({key}{inner if unchecked else ''})"
            elif isinstance(step, str) and unchecked and prefix in self.shared:
                code = f"({holder} := {code}).get({key}{inner})"
                self.available[prefix] = holder
            elif isinstance(step, str) and unchecked:
                code = f"{code}.get({key}{inner})"
            elif isinstance(step, str) and prefix in self.shared:
                # Read once, kept in a local as an object (or an empty one) for the next reads.
                code = f"({holder} if type({holder} := {code}) is dict else ({holder} := _E)).get({key})"
                self.available[prefix] = holder
            elif isinstance(step, str):
                code = f"({holder}.get({key}) if type({holder} := {code}) is dict else None)"
            else:
                code = f"_lookup({code}, ({key},))"
                unchecked = False  # what a list holds may be anything: checked from here
            prefix = (*prefix, step)
        return code

    def compare(self, op: str, node: ast.Expr, constant: Any) -> str | None:
        """``node OP constant`` inline, when the constant allows a fast path."""
        value = self.name("v", bind=False)
        number = type(constant) is int or type(constant) is float
        if op in ("==", "!=") and values.plain_text(constant):
            return f"({self.expr(node)} {op} {self.name('k', constant)})"
        if op in ("==", "!=") and number:
            k = self.name("k", constant)
            test = (
                f"({value} == {k} if type({value} := {self.expr(node)}) is int "
                f"or type({value}) is float else _equals({value}, {k}))"
            )
            return test if op == "==" else f"(not {test})"
        if op in _NUMERIC_FALLBACK and number:
            k = self.name("k", constant)
            slow = self.name("g", _NUMERIC_FALLBACK[op])
            return (
                f"({value} {op} {k} if type({value} := {self.expr(node)}) is int "
                f"or type({value}) is float else {slow}({value}, {k}))"
            )
        if (
            op in ("in", "not in")
            and type(constant) is list
            and constant
            and all(type(item) is str for item in constant)
        ):
            # Text equals text only when it is the same text (values.equals); another value
            # needs the number-like equality, unless no item spells a number or a boolean.
            members = self.name("k", frozenset(constant))
            if all(values.plain_text(item) for item in constant):
                test = f"(type({value} := {self.expr(node)}) is str and {value} in {members})"
            else:
                listed, slow = self.name("k", constant), self.name("g", values.member)
                test = (
                    f"({value} in {members} if type({value} := {self.expr(node)}) is str "
                    f"else {slow}({value}, {listed}))"
                )
            return test if op == "in" else f"(not {test})"
        if op == "contains" and values.plain_text(constant):
            # Substring of text, item of a list (plain text equals only itself), key of an object.
            k = self.name("k", constant)
            kind = self.name("v", bind=False)
            return (
                f"((({kind} := type({value} := {self.expr(node)})) is str or {kind} is list "
                f"or {kind} is dict) and {k} in {value})"
            )
        if op in ("starts with", "ends with") and type(constant) is str:
            method = "startswith" if op == "starts with" else "endswith"
            k = self.name("k", constant)
            return f"(type({value} := {self.expr(node)}) is str and {value}.{method}({k}))"
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


def _shared_containers(expr: ast.Expr) -> set[_Prefix]:
    """The containers (a path whose next step is a name) ``expr`` reads more than once."""
    seen: set[_Prefix] = set()
    shared: set[_Prefix] = set()
    stack: list[Any] = [expr]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Ref):
            prefix: _Prefix = (node.root, node.name)
            for index, step in enumerate(node.path):
                if type(step) is not str:
                    break
                if index > 0 or node.root == "element":
                    (shared if prefix in seen else seen).add(prefix)
                prefix = (*prefix, step)
        elif isinstance(node, tuple):
            stack.extend(node)
        elif hasattr(node, "__slots__"):  # any other node: look at its fields
            stack.extend(getattr(node, slot) for slot in node.__slots__)
    return shared


StateFn = Callable[[dict[str, Any]], Any]


def generate_condition(expr: ast.Expr, closure_of: Callable[[ast.Expr], Fn], label: str) -> Fn:
    """One Python function computing ``bool(expr)`` for a scope."""
    return generate_conditions(expr, closure_of, label)[0]


def generate_conditions(
    expr: ast.Expr, closure_of: Callable[[ast.Expr], Fn], label: str
) -> tuple[Fn, StateFn | None]:
    """The function computing ``bool(expr)`` for a scope and, when ``expr`` reads nothing but
    the state, the same for the state alone: a push calls that one without making a scope."""
    source = _Source(closure_of, _shared_containers(expr))
    body = source.truth(expr)
    # The same expression with paths read unchecked first: on states whose paths hold objects
    # where the condition reads into them, as nearly all do, it skips a type test per step;
    # the checked code answers the rest (nothing it calls has effects, and its closures and
    # elements give the same answer twice). A try costs nothing in Python 3.11 until it raises.
    source.available = {}
    source.optimistic = True
    fast = source.truth(expr)
    if fast != body:
        body = f"try:\n        return {fast}\n    except AttributeError:\n        return {body}"
    else:
        body = f"return {body}"
    # Constants and helpers are the functions' globals, read only when reached: default
    # arguments would be copied on every call.
    text = f"def _condition(s):\n    st = s.state\n    {body}\n"
    if not source.reads_scope:
        text += f"def _on_state(st):\n    {body}\n"
    code = compile(text, f"<condition {label}>", "exec")
    namespace = source.namespace
    exec(code, namespace)  # generated above from the checked tree; no rule text in it
    # Taken out of their own globals: a function in them is a reference cycle, which a frozen
    # ruleset (gc.freeze) would never free.
    function: Fn = namespace.pop("_condition")
    on_state: StateFn | None = namespace.pop("_on_state", None)
    return function, on_state
