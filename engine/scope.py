"""What a compiled expression reads while it runs: the snapshot, the pushed event, elements."""

from __future__ import annotations

from collections.abc import Callable, Mapping, MutableMapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engine.ruleset import CompiledElement

__all__ = ["Fn", "Scope"]

Fn = Callable[["Scope"], Any]


NO_REQUEST: dict[str, Any] = {"bot": False}  # what rules see of a push without a context
_MISS: Any = object()


class Scope:
    """The inputs of one push: ``state`` (the event-time snapshot), ``event`` (the pushed
    object) and the ruleset's elements, each evaluated at most once per push.

    ``kept`` maps a keep scope (``pageview``, ``session``, ``visitor``) to the stored values of
    elements declared with ``keep``; the runtime owns those mappings.
    """

    # A push builds one, and a condition that matches one rule pays for it: nothing is made
    # here that a push may not need (the memo is made by the first element evaluated).
    __slots__ = ("_memo", "elements", "event", "kept", "request", "state")

    def __init__(
        self,
        state: dict[str, Any],
        event: dict[str, Any],
        elements: Mapping[str, CompiledElement],
        kept: Mapping[str, MutableMapping[str, Any]] | None = None,
        request: dict[str, Any] | None = None,
    ) -> None:
        self.state = state
        self.event = event
        self.request = NO_REQUEST if request is None else request
        self.elements = elements
        self.kept = kept
        self._memo: dict[str, Any] | None = None

    @property
    def memo(self) -> dict[str, Any]:
        """The elements evaluated so far, by name."""
        memo = self._memo
        if memo is None:
            memo = self._memo = {}
        return memo

    def element(self, name: str) -> Any:
        # Generated code (engine.fieldgen) reads `_memo` itself and calls this on a miss.
        memo = self._memo
        if memo is None:
            memo = self._memo = {}
        else:
            value = memo.get(name, _MISS)
            if value is not _MISS:
                return value
        element = self.elements[name]
        value = element.fn(self)
        keep = element.keep
        kept = self.kept
        if keep is not None and kept is not None:
            if value is not None:
                store = kept.get(keep)
                if store is not None:
                    store[name] = value
            else:
                read = getattr(kept, "read", None)  # (a session's: makes nothing to find it)
                if read is not None:
                    value = read(keep, name)
                else:
                    store = kept.get(keep)
                    if store is not None:
                        value = store.get(name)
        memo[name] = value
        return value
