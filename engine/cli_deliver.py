"""``tagengine deliver``: a process that only delivers, beside web processes that only push
(``Engine(..., deliver=False)``).

::

    tagengine deliver --outbox redis://127.0.0.1:6379/0 --rules rules/ --workers 16
    tagengine deliver --outbox sends.db           # the SQLite file of this host's processes

It runs :class:`~engine.background.BackgroundDelivery` over the outbox until SIGTERM or
SIGINT, then stops taking new sends, finishes (within ``--grace`` seconds) what it has in
flight and leaves the rest in the outbox for the next worker; a second signal stops it at
once (what was in flight goes again, from the next worker). Several may run on one outbox,
on one host or many (Redis): each delivers its share of the sessions, in order per session.

Each visitor's identity (ECID, state entries, Sitecore browser id) is read from and written
to the session store (``--sessions``; by default the outbox's Redis), so whichever worker
delivers, the visitor keeps one. The rules give the destination settings: credentials (from
the environment), the Sitecore client key; ``--edge``/``--sitecore``/``--emulator`` send to
other hosts than the ones the sends were stored for (the path and query stay).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

import click

from engine.background import BackgroundDelivery
from engine.destinations.base import Request, with_origin
from engine.dispatch import Dispatcher
from engine.errors import EngineError, RuleError
from engine.loader import load_ruleset
from engine.results import Send
from engine.runtime import Targets
from engine.stores import MemorySessions, RedisOutbox, open_outbox, open_sessions
from engine.stores.base import BaseOutbox, Sessions
from engine.stores.redis_client import is_redis_url

__all__ = ["deliver"]

log = logging.getLogger("engine.deliver")

_REPORT_EVERY = 10.0  # seconds between two status lines


class _Counts:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.delivered = 0
        self.failed = 0

    def heard(self, session: str, send: Send) -> None:
        with self.lock:
            if send.error is None:
                self.delivered += 1
            else:
                self.failed += 1


@click.command("deliver")
@click.option(
    "--outbox",
    "outbox_url",
    required=True,
    envvar="TAGENGINE_OUTBOX",
    help="The outbox: redis://HOST:PORT/DB, or a SQLite file (env: TAGENGINE_OUTBOX).",
)
@click.option(
    "--sessions",
    "sessions_url",
    envvar="TAGENGINE_SESSIONS",
    help="The session store, redis://... (default: the outbox's Redis; env: TAGENGINE_SESSIONS).",
)
@click.option(
    "--rules",
    "rules_path",
    default="rules/",
    show_default=True,
    type=click.Path(path_type=Path),
    help="The ruleset folder: destination settings and credentials.",
)
@click.option(
    "--workers",
    default=16,
    show_default=True,
    type=click.IntRange(1, 256),
    help="The most sends in flight at once.",
)
@click.option("--edge", "edge_url", help="Send Edge requests to this base URL instead.")
@click.option("--sitecore", "sitecore_url", help="Send Sitecore requests to this base URL instead.")
@click.option(
    "--emulator",
    "emulator_url",
    help="Deliver to the local emulator at this URL (its Edge, Sitecore and token server).",
)
@click.option(
    "--grace",
    default=10.0,
    show_default=True,
    type=click.FloatRange(0),
    help="Seconds to finish in-flight sends after SIGTERM/SIGINT.",
)
@click.option(
    "--lease",
    default=10.0,
    show_default=True,
    type=click.FloatRange(0.5),
    help="Redis: seconds a worker holds its partitions without renewing (a killed worker's "
    "are taken over after this).",
)
@click.option("--json", "as_json", is_flag=True, help="Status lines as JSON objects.")
def deliver(
    outbox_url: str,
    sessions_url: str | None,
    rules_path: Path,
    workers: int,
    edge_url: str | None,
    sitecore_url: str | None,
    emulator_url: str | None,
    grace: float,
    lease: float,
    as_json: bool,
) -> None:
    """Deliver the sends stored in an outbox by processes that only push, until stopped."""
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s"
    )
    for chatty in ("httpx", "httpcore"):  # a line per request: the status lines say enough
        logging.getLogger(chatty).setLevel(logging.WARNING)
    try:
        ruleset = load_ruleset(rules_path)
    except RuleError as error:
        raise click.ClickException(f"{rules_path}: {error}") from None
    except EngineError as error:
        raise click.ClickException(str(error)) from None
    token_url = None
    if emulator_url:
        base = emulator_url.rstrip("/")
        edge_url, sitecore_url = edge_url or base, sitecore_url or base
        token_url = f"{base}/ims/token/v3"  # credentials in the rules must not reach Adobe's
    targets = Targets.of(ruleset, edge_url, sitecore_url, token_url)
    try:
        box = (
            RedisOutbox(outbox_url, lease_ttl=lease)
            if is_redis_url(outbox_url)
            else open_outbox(Path(outbox_url))
        )
        if sessions_url is None and isinstance(box, RedisOutbox):
            sessions_url = box.target.url
        store: Sessions
        if sessions_url is None:
            store = MemorySessions()
            log.warning(
                "no --sessions: identities are kept in this process only; give the session "
                "store the pushing processes use, or visitors get a new ECID per delivery worker"
            )
        else:
            store = open_sessions(sessions_url)
    except EngineError as error:
        raise click.ClickException(str(error)) from None

    counts = _Counts()
    stop = threading.Event()

    def stopping(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():  # asked twice: stop now; what is in flight goes again later
            log.warning("stopped without waiting for the sends in flight")
            os._exit(128 + signum)
        stop.set()

    signal.signal(signal.SIGTERM, stopping)
    signal.signal(signal.SIGINT, stopping)
    background = BackgroundDelivery(
        box,
        Dispatcher,
        sessions=store,
        targets=lambda: targets,
        workers=workers,
        flush_timeout=grace,
        on_result=counts.heard,
        poll_interval=0.05,  # other processes' sends: found within 50 ms
        rewrite=_moving(edge_url, sitecore_url),
    )
    _status(as_json, "started", box.name, counts, box)
    try:
        while not stop.wait(_REPORT_EVERY):
            _status(as_json, "delivering", box.name, counts, box)
    finally:
        # Finish what is in flight; what is queued stays for the next worker.
        background.close(grace, drain=False)
        _status(as_json, "stopped", box.name, counts, box)
        box.close()
        store.close()


def _moving(edge: str | None, sitecore: str | None) -> Callable[[Request], Request] | None:
    """What ``--edge``/``--sitecore``/``--emulator`` do to a stored send: its URL was fixed
    by the process that pushed it; it goes to the given host instead."""
    if not edge and not sitecore:
        return None
    bases = {"edge": edge, "sitecore": sitecore}

    def move(request: Request) -> Request:
        base = bases.get(request.destination)
        return with_origin(request, base) if base else request

    return move


def _status(as_json: bool, state: str, name: str, counts: _Counts, box: BaseOutbox) -> None:
    try:
        backlog = box.backlog().to_json()
    except EngineError as error:
        backlog = {"error": str(error)}
    with counts.lock:
        line = {
            "state": state,
            "outbox": name,
            "time": round(time.time(), 3),
            "delivered": counts.delivered,
            "failed": counts.failed,
            "backlog": backlog,
        }
    if as_json:
        click.echo(json.dumps(line), err=False)
        sys.stdout.flush()
        return
    shown = ", ".join(f"{k} {v}" for k, v in backlog.items() if v not in (None, 0))
    click.echo(
        f"{state}: {name}: {counts.delivered} delivered, {counts.failed} failed"
        + (f"; backlog: {shown}" if shown else "; backlog empty")
    )
    sys.stdout.flush()
