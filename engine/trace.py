"""Readable output of pushes for ``tagengine run``: a one-look summary, or the full trace an
analyst debugs with (every rule considered and why, the element values, the bodies)."""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console
from rich.text import Text

from engine.results import PushResult

__all__ = ["render_summary", "render_trace"]

_STATUS_STYLE = {
    "fired": "bold green",
    "condition_not_met": "yellow",
    "blocked": "magenta",
    "sampled_out": "cyan",
    "limited": "cyan",
    "failed": "bold red",
}


def _json(value: Any, indent: int | None = None) -> str:
    return json.dumps(value, ensure_ascii=False, indent=indent, default=str)


def _short(url: str, width: int = 110) -> str:
    return url if len(url) <= width else url[: width - 1] + "…"


def _send_line(index: int, result: PushResult, full: bool = False) -> Text:
    send = result.sends[index]
    size = len(send.request.body_bytes) if send.request.body_bytes else len(_json(send.body))
    delivered = ""
    took = f"in {1000 * (send.duration or 0):.1f} ms, {send.attempts} attempt(s)"
    if send.error and not send.attempts:
        delivered = f"  → not sent, error: {send.error}"
    elif send.error:
        status = f"{send.status} " if send.status is not None else ""
        delivered = f"  → {status}{took}, error: {send.error}"
    elif send.status is not None:
        delivered = f"  → {send.status} {took}"
    if send.consent is not None:  # the visitor's consent kept it back
        delivered = f"  → {send.consent}: consent is {result.consent}"
    return Text.assemble(
        "    send ",
        (f"{send.destination:<8}", "bold"),
        f" {send.method:<4} {send.url if full else _short(send.url)}  ({size:,} bytes, rule {send.rule!r})",
        (delivered, "green" if send.status and send.status < 300 else "red"),
    )


def render_summary(console: Console, result: PushResult) -> None:
    head = Text.assemble(
        (f"[{result.session}] ", "dim"),
        (result.event or "(data push)", "bold"),
    )
    fired = result.fired
    head.append(
        "  fired: " + (", ".join(fired) if fired else "none"), style="green" if fired else "dim"
    )
    failed = [o for o in result.rules if o.status == "failed"]
    if failed:
        head.append("  failed: " + ", ".join(o.rule for o in failed), style="bold red")
    console.print(head)
    for outcome in failed:
        console.print(Text(f"    {outcome.rule}: {outcome.reason}", style="red"))
    for index in range(len(result.sends)):
        console.print(_send_line(index, result))
    _consent_lines(console, result)


def _consent_lines(console: Console, result: PushResult) -> None:
    """What the visitor's consent did on this push, when it did anything."""
    if result.consent_request is not None:
        console.print(
            Text(f"    consent {result.consent}: Edge told ({result.consent_request.url})")
        )
    if result.released:
        console.print(Text(f"    released {len(result.released)} held send(s):", style="green"))
        for send in result.released:
            console.print(Text(f"      {send.destination} {send.method} {_short(send.url)}"))
    if result.dropped:
        console.print(
            Text(f"    dropped {result.dropped} send(s): consent is {result.consent}", style="red")
        )


def _not_triggered_lines(console: Console, result: PushResult) -> None:
    """Why not: each rule the push did not trigger with its triggers, near misses first."""
    for entry in result.not_triggered():
        line = Text.assemble(
            ("  NOT TRIGGERED ", "yellow" if entry.near_miss else "dim"),
            (entry.rule, "bold" if entry.near_miss else ""),
            "  " + ", ".join(entry.triggers),
            (f"  {entry.span.file}:{entry.span.line}", "dim"),
        )
        console.print(line, soft_wrap=True)  # one line each, whatever the width: for grep
        if entry.near_miss:
            console.print(Text(f"      near miss: {entry.near_miss}"), soft_wrap=True)


def render_trace(console: Console, result: PushResult, where: str = "") -> None:
    console.print(
        Text.assemble(
            (result.event or "(data push)", "bold"),
            f"  session {result.session}  {where}",
        )
    )
    console.print(Text(f"ruleset {result.version[:12]}", style="dim"))
    console.print(Text("state (event-time snapshot):", style="bold"))
    console.print(Text(_json(result.snapshot, 2)))
    if not result.rules:
        console.print(Text("no rule is triggered by this push", style="dim"))
    for outcome in result.rules:
        line = Text.assemble(
            ("  " + outcome.status.upper().replace("_", " ") + " ", _STATUS_STYLE[outcome.status]),
            (outcome.rule, "bold"),
        )
        if outcome.span is not None:
            line.append(f"  {outcome.span.file}:{outcome.span.line}", style="dim")
        console.print(line)
        if outcome.reason:
            console.print(Text(f"      {outcome.reason}"))
    _not_triggered_lines(console, result)
    if result.elements:
        console.print(Text("elements:", style="bold"))
        for name, value in result.elements.items():
            console.print(Text(f"  {name} = {_json(value)}"))
    for index, send in enumerate(result.sends):
        console.print(_send_line(index, result, full=True))
        console.print(Text(_json(send.body, 2), style="cyan"))
    _consent_lines(console, result)
    if result.pushes:
        console.print(Text(f"queued pushes: {_json(result.pushes)}", style="dim"))
