"""One push as :class:`~engine.engine.Engine` runs it, atomic: the session's change and its
sends are stored together or not at all (a failed outbox write leaves the session as it was).

Its own module so that it compiles with the rest of the hot path (engine/_hot.py); the
engine's methods it calls (``_follow``, ``_gate``, ``_deliver``, …) stay with the engine.
"""

from __future__ import annotations

import random
import time
from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from engine.consent import VISITOR_KEY, consent_of
from engine.context import VisitorContext
from engine.errors import EngineError, PushError
from engine.results import PushResult, Send
from engine.ruleset import Ruleset
from engine.runtime import Targets, notice_request, process_push
from engine.sessions import Session
from engine.settings import ConsentSettings
from engine.stores.base import BaseOutbox
from engine.stores.memory import MemorySessions
from engine.values import copy_json

if TYPE_CHECKING:
    from engine.consent import ConsentChange

__all__ = ["MAX_PUSH_ATTEMPTS", "MAX_SEEN", "SEEN_FOR", "push", "seen"]

MAX_PUSH_ATTEMPTS = 50  # runs of one push whose shared session others kept changing
_MAX_BACKOFF = 0.02  # seconds, at most, between two of them
_jitter = random.Random()
_NO_IDENTITY: Mapping[str, Any] = MappingProxyType({})

# Push ids (EngineSession.push(..., push_id=…)): what makes a retried push a no-op.
SEEN_FOR = 900.0  # seconds a session remembers a push id (a browser's retries come sooner)
MAX_SEEN = 100  # push ids a session remembers, at most (the latest: retries are of those)


def seen(session: Session, push_id: str, now: float) -> bool:
    """Whether the session processed ``push_id`` within :data:`SEEN_FOR`; if not, it is
    remembered now (with the push: a push that fails or is not stored forgets it again)."""
    known = session.identity.get("seen")
    if not isinstance(known, dict):
        known = {}
    at = known.get(push_id)
    if isinstance(at, int | float) and now - at < SEEN_FOR:
        return True
    # A new dict (the session's rollback copy is shallow), in arrival order: the oldest go
    # first once there are too many, and expired ones with them.
    recent = dict(known)
    recent.pop(push_id, None)
    recent[push_id] = now
    if len(recent) > MAX_SEEN:  # down to three quarters: the pruning is not on every push
        keep = list(recent.items())[-(MAX_SEEN * 3 // 4) :]
        recent = {key: t for key, t in keep if isinstance(t, int | float) and now - t < SEEN_FOR}
    session.identity["seen"] = recent
    return False


def _every_send_goes(session: Session, settings: ConsentSettings) -> bool:
    """Whether consent has nothing to decide for this push (a ruleset without a consent
    block, a visitor who never set one, nothing held); read without making the session's
    parts. Else :meth:`Engine._gate <engine.engine.Engine._gate>` decides."""
    if settings.path is not None:
        return False
    identity = session._identity or _NO_IDENTITY
    memory = session._visitor
    return (
        (memory is None or VISITOR_KEY not in memory.kept)
        and "held" not in identity
        and "held_out" not in identity
        # (consent_of, without the visitor's value: Edge's entries, else the default)
        and (
            ("entries" not in identity and settings.default == "in")
            or consent_of(identity, settings, _NO_IDENTITY) == "in"
        )
    )


def push(
    engine: Any,
    session_id: str,
    visitor_id: str | None,
    item: object,
    context: VisitorContext | None,
    consent: ConsentChange | None,
    notice: dict[str, Any] | None,
    push_id: str | None,
) -> PushResult:
    """:meth:`Engine._push <engine.engine.Engine._push>`. With sessions shared by other
    processes, a push that finds the session changed meanwhile runs again on it."""
    background = engine._background
    # Marked in progress: the delivery threads do not start a step meanwhile.
    pushing = None if background is None else background.pushing
    if pushing is not None:
        pushing.append(None)
    try:
        if engine._closed:
            raise EngineError("the engine is closed")
        if push_id is not None and (not isinstance(push_id, str) or not 0 < len(push_id) <= 128):
            raise PushError("a push id is a string of 1 to 128 characters")
        if context is not None:
            if not isinstance(context, VisitorContext):
                raise PushError(f"context must be a VisitorContext, not {type(context).__name__}")
            context = context.forwarding(engine.forward_ip)
        ruleset, targets = engine._live  # a retry runs on the same ruleset
        outbox = engine._outbox
        if background is not None:
            background.check_open()
        contended = False
        for attempt in range(MAX_PUSH_ATTEMPTS):
            if contended:
                # Lost a race for the session: step aside a random moment, growing, so that
                # processes pushing to one session at once all get through (no livelock).
                time.sleep(_jitter.uniform(0, min(_MAX_BACKOFF, 0.0005 * 2**attempt)))
            result, contended = _attempt(
                engine,
                ruleset,
                targets,
                outbox,
                session_id,
                visitor_id,
                item,
                context,
                consent,
                notice,
                push_id,
            )
            if result is not None:
                return result
        raise EngineError(
            f"session {session_id!r} was changed by other processes {MAX_PUSH_ATTEMPTS} times "
            "while this push ran; nothing was stored"
        )
    finally:
        if pushing is not None:
            pushing.pop()


def _attempt(
    engine: Any,
    ruleset: Ruleset,
    targets: Targets,
    outbox: BaseOutbox | None,
    session_id: str,
    visitor_id: str | None,
    item: object,
    context: VisitorContext | None,
    consent: ConsentChange | None,
    notice: dict[str, Any] | None,
    push_id: str | None,
) -> tuple[PushResult | None, bool]:
    """One run of the push: its result, or ``None`` and whether another process changed the
    session meanwhile (then nothing was stored, and the push runs again)."""
    now = engine._clock()  # (as the clock gives it: an int stays an int)
    with engine.sessions.begin(session_id, visitor_id, now) as transaction:
        session = transaction.session
        before = session.state
        result: PushResult
        if push_id is not None and seen(session, push_id, now):
            result = PushResult(session.id, None, ruleset.version, session.state)
            result.duplicate = True
            transaction.commit((), None, now)
            return result, False
        if notice is not None:
            result = PushResult(session.id, None, ruleset.version, session.state)
            request = notice_request(
                targets,
                session,
                notice,
                name=str(notice["type"]),
                now=now,
                ids=engine._ids,
                context=context,
            )
            result.sends.append(Send(request.rule, "edge", request))
        elif consent is None:
            result = process_push(
                ruleset, session, item, now=now, ids=engine._ids, targets=targets, context=context
            )
            if result.pushes:
                engine._follow(ruleset, targets, session, result, context)
        else:
            result = PushResult(session.id, None, ruleset.version, session.state)
        if consent is None and _every_send_goes(session, ruleset.consent):
            if result.followups:
                sends = [send for made in (result, *result.followups) for send in made.sends]
            else:
                sends = list(result.sends)
            stored = False
        else:
            sends, stored = engine._gate(ruleset, targets, session, result, before, now, consent)
        if outbox is not None:
            items = [] if stored else [(send.request, session.id) for send in sends]
            if not transaction.commit(items, outbox, now):
                return None, transaction.contended  # another process changed the session
            engine._count_dropped(result)
            background = engine._background
            if background is not None and (items or stored):
                background.notify()
            return result, False
        if not transaction.commit((), None, now):
            return None, transaction.contended
        engine._count_dropped(result)
        if engine.dry_run:
            return result, False
        # Still holding the session (its lock here, or this process's turn on a shared one):
        # its sends answer in order, and the identity the first one brings back is in the
        # requests built after it.
        if isinstance(engine.sessions, MemorySessions):
            engine._deliver(sends, session, targets)
            return result, False
        # A shared store: what the answers changed of the identity is stored, as a delivery
        # worker does.
        base = copy_json(session.identity)
        engine._deliver(sends, session, targets)
        engine.sessions.merge_identity(session.id, base, session.identity)
        return result, False
