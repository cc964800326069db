"""``tagengine outbox list|retry|purge``: inspect and manage a durable outbox file.

The group is exported as :data:`outbox`, for the main ``tagengine`` command to register.
Opening the file changes nothing (no recovery of entries in flight), so these commands are
safe while an engine is dispatching from the same file.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import click
from rich.console import Console
from rich.table import Table

from engine.stores.sqlite import Entry, Outbox, OutboxError, Which

__all__ = ["outbox"]

_FILE = click.option(
    "--outbox",
    "path",
    required=True,
    envvar="TAGENGINE_OUTBOX",
    type=click.Path(path_type=Path),
    help="The outbox file (env: TAGENGINE_OUTBOX).",
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
def _open(path: Path) -> Iterator[Outbox]:
    """The outbox at ``path``; a missing, unreadable or foreign file exits 1 with a message."""
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


@outbox.command("list")
@_FILE
@click.option("--dead", is_flag=True, help="List dead letters instead of pending sends.")
@click.option("--json", "as_json", is_flag=True, help="A JSON array with every field.")
@click.option("--limit", type=click.IntRange(min=1), help="At most this many entries.")
def list_command(path: Path, dead: bool, as_json: bool, limit: int | None) -> None:
    """List pending sends (in flight or not) or, with --dead, dead letters."""
    with _open(path) as box:
        entries = box.dead(limit) if dead else box.pending(limit)
        counts = box.counts()
        journaled = 0 if as_json else box.journaled()
    if as_json:
        click.echo(json.dumps([_as_json(e) for e in entries], indent=2, ensure_ascii=False))
        return
    console = _console()
    if entries:
        console.print(_table(entries, dead, time.time()))
    summary = (
        f"{counts['pending'] + counts['inflight']} pending ({counts['inflight']} in flight), "
        f"{counts['dead']} dead"
    )
    if journaled:
        summary += (
            f"; {journaled} more in the journals of running processes, "
            "listed once those processes read them in"
        )
    console.print(summary)


@outbox.command("retry")
@_FILE
@click.argument("ids", nargs=-1, type=int)
@click.option("--all", "every", is_flag=True, help="Every dead letter.")
def retry_command(path: Path, ids: tuple[int, ...], every: bool) -> None:
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
def purge_command(path: Path, ids: tuple[int, ...], which: Which) -> None:
    """Delete dead letters, pending sends or both: IDS only, or all of them."""
    with _open(path) as box:
        count = box.purge(which, ids or None)
    _console().print(f"{count} entr{'ies' if count != 1 else 'y'} purged")
    if ids and count < len(set(ids)):
        _fail(f"{len(set(ids)) - count} of the ids given were not found")
