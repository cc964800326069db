"""``tagengine outbox list|retry|purge``: inspect and manage an outbox: a SQLite file, or
Redis Streams (``--outbox redis://HOST:PORT/DB``).

The group is exported as :data:`outbox`, for the main ``tagengine`` command to register.
Opening the file changes nothing in flight (no recovery of entries claimed by a deliverer),
so these commands are safe while an engine is dispatching from the same file; it does read in
what dead processes left in their journals.

:func:`_open` opens what ``--outbox`` names; the commands then use only what every
:class:`~engine.stores.base.BaseOutbox` has (``backlog``, ``pending``, ``dead``, ``revive``,
``purge``). The quarantine file is the SQLite outbox's own (:func:`quarantine_of`).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn

import click
from rich.console import Console
from rich.table import Table

from engine.errors import OutboxError
from engine.stores.base import Backlog, BaseOutbox, Entry, Which
from engine.stores.journal import Quarantined
from engine.stores.redis_client import is_redis_url
from engine.stores.redis_outbox import RedisOutbox
from engine.stores.sqlite import Outbox

__all__ = ["list_outbox", "outbox", "quarantine_of"]


_FILE = click.option(
    "--outbox",
    "path",
    required=True,
    envvar="TAGENGINE_OUTBOX",
    help="The outbox: a SQLite file, or redis://HOST:PORT/DB (env: TAGENGINE_OUTBOX).",
)


def _console() -> Console:
    # Piped (grep, CI logs, tests): wide enough that a row stays on one line.
    width = None if sys.stdout.isatty() else 200
    return Console(highlight=False, soft_wrap=False, file=sys.stdout, width=width)


def _fail(message: str) -> NoReturn:
    Console(highlight=False, soft_wrap=True, stderr=True).print(
        f"error: {message}", style="red", markup=False
    )
    sys.exit(1)


@contextmanager
def _open(where: str) -> Iterator[BaseOutbox]:
    """The outbox ``where`` names; a missing, unreadable or foreign file, or an unreachable
    Redis, exits 1 with a message."""
    box: BaseOutbox
    if is_redis_url(where):
        try:
            box = RedisOutbox(where)
            box.ensure_ready()
        except OutboxError as error:
            _fail(str(error))
    else:
        path = Path(where)
        if not path.exists():
            _fail(f"no outbox at {path}")
        if path.is_dir():
            _fail(f"{path} is a directory, not an outbox file")
        try:
            box = Outbox(path, create=False)
        except OutboxError as error:
            _fail(str(error))
    try:
        yield box
    except OutboxError as error:
        _fail(str(error))
    finally:
        box.close()


def _age(seconds: float) -> str:
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"


def _short(text: str | None, width: int = 60) -> str:
    if not text:
        return ""
    line = text.splitlines()[0]
    return line if len(line) <= width else line[: width - 1] + "…"


def _as_json(entry: Entry) -> dict[str, Any]:
    return {
        "id": entry.id,
        "state": entry.state,
        "session": entry.session,
        "seq": entry.seq,
        "destination": entry.destination,
        "rule": entry.rule,
        "kind": entry.kind,
        "method": entry.method,
        "url": entry.url,
        "event_id": entry.event_id,
        "request_id": entry.request_id,
        "created": entry.created,
        "attempts": entry.attempts,
        "next_attempt_at": entry.next_attempt_at,
        "last_error": entry.last_error,
        "failed_at": entry.failed_at,
        "headers": [list(pair) for pair in entry.headers],
        "body": entry.body,
    }


def _table(entries: list[Entry], dead: bool, now: float) -> Table:
    table = Table(box=None, pad_edge=False, header_style="bold")
    for name in ("id", "session", "destination", "rule", "state", "attempts", "age"):
        if name == "state" and dead:
            continue
        table.add_column(name, overflow="fold", justify="right" if name == "id" else "left")
    table.add_column("last error", overflow="fold")
    for entry in entries:
        cells = [str(entry.id), entry.session, entry.destination, entry.rule]
        if not dead:
            cells.append(entry.state)
        cells += [str(entry.attempts), _age(now - entry.created), _short(entry.last_error)]
        table.add_row(*cells)
    return table


@click.group("outbox")
def outbox() -> None:
    """Inspect the durable outbox: pending sends and dead letters."""


def quarantine_of(box: BaseOutbox) -> tuple[str, list[Quarantined]] | None:
    """The quarantine file of ``box`` and its chunks, when it has one (a SQLite file)."""
    if isinstance(box, Outbox) and box.quarantine_path is not None:
        return box.quarantine_path, box.quarantined()
    return None


def _when(stamp: float) -> str:
    return datetime.fromtimestamp(stamp).astimezone().isoformat(timespec="seconds")


def _quarantine_json(found: tuple[str, list[Quarantined]] | None) -> dict[str, Any] | None:
    if found is None:
        return None
    path, chunks = found
    return {
        "path": path,
        "chunks": [
            {
                "journal": chunk.journal,
                "offset": chunk.offset,
                "bytes": chunk.length,
                "time": chunk.time,
                "reason": chunk.reason,
            }
            for chunk in chunks
        ],
    }


def _summary(backlog: Backlog) -> list[str]:
    """The backlog's figures, as lines."""
    first = f"{backlog.pending} pending ({backlog.inflight} in flight), {backlog.dead} dead"
    if backlog.oldest_age is not None:
        first += f"; the oldest stored {_age(backlog.oldest_age)} ago"
    second = f"{backlog.journaled} journaled"
    if backlog.journaled:
        second += (
            " (more in the journals of running processes, listed once those processes read them in)"
        )
    second += f", {backlog.quarantined} quarantined"
    second += f", {backlog.held} held for the visitor's consent"
    second += f", {backlog.consent_dropped} dropped for the visitor's consent (never stored)"
    return [first, second]


def _quarantine_table(chunks: list[Quarantined]) -> Table:
    table = Table(box=None, pad_edge=False, header_style="bold")
    for name in ("journal", "offset", "bytes", "reason", "when"):
        table.add_column(name, justify="right" if name in ("offset", "bytes") else "left")
    for chunk in chunks:
        table.add_row(
            chunk.journal, str(chunk.offset), str(chunk.length), chunk.reason, _when(chunk.time)
        )
    return table


def list_outbox(
    box: BaseOutbox,
    *,
    dead: bool = False,
    as_json: bool = False,
    with_backlog: bool = False,
    limit: int | None = None,
) -> None:
    """Print what ``tagengine outbox list`` shows of ``box``."""
    entries = box.dead(limit) if dead else box.pending(limit)
    backlog = box.backlog()
    quarantine = quarantine_of(box)
    if as_json:
        rows = [_as_json(e) for e in entries]
        document: Any = rows
        if with_backlog:
            document = {
                "entries": rows,
                "backlog": backlog.to_json(),
                "quarantine": _quarantine_json(quarantine),
            }
        click.echo(json.dumps(document, indent=2, ensure_ascii=False))
        return
    console = _console()
    if entries:
        console.print(_table(entries, dead, time.time()))
    for line in _summary(backlog):
        console.print(line, markup=False)
    if quarantine is not None and quarantine[1]:
        path, chunks = quarantine
        size = sum(chunk.length for chunk in chunks)
        console.print(
            f"{len(chunks)} unreadable journal chunk{'s' if len(chunks) != 1 else ''} "
            f"({size} bytes) kept aside, not delivered, in {path}:",
            markup=False,
        )
        console.print(_quarantine_table(chunks))


@outbox.command("list")
@_FILE
@click.option("--dead", is_flag=True, help="List dead letters instead of pending sends.")
@click.option("--json", "as_json", is_flag=True, help="A JSON array with every field.")
@click.option(
    "--with-backlog",
    is_flag=True,
    help='With --json: an object {"entries": [...], "backlog": {...}, "quarantine": {...}}.',
)
@click.option("--limit", type=click.IntRange(min=1), help="At most this many entries.")
def list_command(
    path: str, dead: bool, as_json: bool, with_backlog: bool, limit: int | None
) -> None:
    """List pending sends (in flight or not) or, with --dead, dead letters, and the backlog's
    figures: pending, in flight, the oldest's age, dead, journaled, quarantined."""
    with _open(path) as box:
        list_outbox(box, dead=dead, as_json=as_json, with_backlog=with_backlog, limit=limit)


@outbox.command("retry")
@_FILE
@click.argument("ids", nargs=-1, type=int)
@click.option("--all", "every", is_flag=True, help="Every dead letter.")
def retry_command(path: str, ids: tuple[int, ...], every: bool) -> None:
    """Put dead letters (IDS, or --all) back to pending, attempts reset."""
    if bool(ids) == every:
        raise click.UsageError("give the ids of dead letters to retry, or --all")
    with _open(path) as box:
        missing = [] if every else sorted(set(ids) - {e.id for e in box.dead()})
        count = box.revive(None if every else ids)
    _console().print(f"{count} dead letter{'s' if count != 1 else ''} back to pending")
    if missing:
        _fail(f"not among the dead letters: {', '.join(map(str, missing))}")


@outbox.command("purge")
@_FILE
@click.argument("ids", nargs=-1, type=int)
@click.option("--dead", "which", flag_value="dead", default=True, help="Dead letters (default).")
@click.option(
    "--pending", "which", flag_value="pending", help="Undelivered sends, in flight or not."
)
@click.option("--all", "which", flag_value="all", help="Both.")
def purge_command(path: str, ids: tuple[int, ...], which: Which) -> None:
    """Delete dead letters, pending sends or both: IDS only, or all of them."""
    with _open(path) as box:
        count = box.purge(which, ids or None)
    _console().print(f"{count} entr{'ies' if count != 1 else 'y'} purged")
    if ids and count < len(set(ids)):
        _fail(f"{len(set(ids)) - count} of the ids given were not found")
