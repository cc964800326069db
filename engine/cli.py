"""The ``tagengine`` command line."""

from __future__ import annotations

import dataclasses
import gc
import importlib
import json
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, ClassVar

import click

from engine.errors import EngineError, RuleError

# Only light modules at import time: `tagengine --version` and `check` must start fast. The
# engine, the delivery stack (httpx, redis), the emulator and the servers (uvicorn, starlette)
# are imported inside the commands that use them (tests/test_startup_imports.py and
# tests/test_cli_tools.py check this; benchmarks/startup.py times it).
if TYPE_CHECKING:
    from rich.console import Console
    from rich.text import Text

    from engine.diagnostics import Diagnostic
    from engine.engine import Engine
    from engine.results import PushResult
    from engine.ruleset import Ruleset

__all__ = ["main"]


class _LazyGroup(click.Group):
    """A group whose heavier subcommands are imported only when named (or listed in --help)."""

    lazy: ClassVar[dict[str, str]] = {
        "outbox": "engine.cli_outbox:outbox",
        "deliver": "engine.cli_deliver:deliver",
    }

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in self.lazy:
            module, _, attribute = self.lazy[cmd_name].partition(":")
            command = getattr(importlib.import_module(module), attribute)
            assert isinstance(command, click.Command)
            self.add_command(command, cmd_name)
        return super().get_command(ctx, cmd_name)


def _console() -> Console:
    # Plain text when piped (CI logs, tests); colour only on a terminal. rich is imported here,
    # not at the top: `check` on a valid ruleset prints one unstyled line and never needs it.
    from rich.console import Console

    return Console(highlight=False, soft_wrap=True, file=sys.stdout)


def _console_err() -> Console:
    from rich.console import Console

    return Console(highlight=False, soft_wrap=True, stderr=True)


def _styled(diagnostic: Diagnostic) -> Text:
    from rich.text import Text

    text = Text()
    head, *rest = diagnostic.render().split("\n")
    location, _, message = head.partition(f": {diagnostic.severity}: ")
    text.append(location + ": ", style="bold")
    text.append(
        f"{diagnostic.severity}: ",
        style="bold red" if diagnostic.severity == "error" else "bold yellow",
    )
    text.append(message, style="bold")
    for index, line in enumerate(rest):
        text.append("\n")
        text.append(line, style="green" if index == 1 else None)
    return text


def _plural(count: int, word: str) -> str:
    plural = word + ("es" if word.endswith(("sh", "ch", "s")) else "s")
    return f"{count} {word if count == 1 else plural}"


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="tagengine", prog_name="tagengine")
def cli() -> None:
    """tagengine: tag-manager rules, tested like code, sent to Adobe Edge and Sitecore."""


@cli.command()
@click.argument("path", default="rules/", type=click.Path(path_type=Path))
@click.option(
    "--cache-dir", type=click.Path(path_type=Path), help="Keep parsed files here between runs."
)
@click.option(
    "--json", "as_json", is_flag=True, help="Print the outcome as one JSON object on stdout."
)
@click.option("--strict", is_flag=True, help="Treat warnings as errors.")
def check(path: Path, cache_dir: Path | None, as_json: bool, strict: bool) -> None:
    """Parse, check and compile the rules in PATH (default: rules/) and report every problem."""
    global _freeze_at_exit
    _freeze_at_exit = True
    ruleset = _load(path, cache_dir, as_json=as_json, summary=True, strict=strict)
    warnings = ruleset.warnings
    if warnings:
        console = _console_err() if as_json else _console()
        for diagnostic in warnings:
            console.print(_styled(diagnostic))
    if as_json:
        click.echo(
            json.dumps(
                {
                    "rules": len(ruleset.rules),
                    "elements": len(ruleset.elements),
                    "tests": len(ruleset.tests),
                    "files": len(ruleset.files),
                    "version": ruleset.version,
                    "diagnostics": [_diagnostic_json(d) for d in warnings],
                },
                ensure_ascii=False,
            )
        )
        return
    # One unstyled line: click.echo prints what the rich console would, without importing rich.
    click.echo(
        f"{_plural(len(ruleset.rules), 'rule')}, {_plural(len(ruleset.elements), 'element')}, "
        f"{_plural(len(ruleset.tests), 'test')} in {_plural(len(ruleset.files), 'file')}"
        + (f"; {_plural(len(warnings), 'warning')}" if warnings else "")
    )


def _diagnostic_json(diagnostic: Diagnostic) -> dict[str, Any]:
    span = diagnostic.span
    return {
        "file": span.file,
        "line": span.line,
        "column": span.column,
        "end_line": span.end_line,
        "end_column": span.end_column,
        "message": diagnostic.message,
        "severity": diagnostic.severity,
    }


def _load(
    path: Path,
    cache_dir: Path | None = None,
    *,
    as_json: bool = False,
    summary: bool = False,
    strict: bool = False,
) -> Ruleset:
    """The ruleset at ``path``, or exit 1 printing every diagnostic: as text on stdout, or with
    ``as_json`` as one JSON object on stdout (``{"error", "diagnostics"}``) and the text on
    stderr, so that stdout stays pure JSON."""
    # The engine's modules are thousands of long-lived objects and no garbage: the cyclic
    # collector would only rescan them while they load (about 5 ms of `check`). The loader
    # holds it off in the same way while it builds the ruleset.
    collecting = gc.isenabled()
    gc.disable()
    try:
        from engine.loader import load_ruleset
    finally:
        if collecting:
            gc.enable()

    try:
        return load_ruleset(path, cache_dir=cache_dir, strict=strict)
    except RuleError as error:
        console = _console_err() if as_json else _console()
        for diagnostic in error.diagnostics:
            console.print(_styled(diagnostic))
        errors = sum(1 for d in error.diagnostics if d.severity == "error")
        files = len({d.span.file for d in error.diagnostics})
        headline = f"{_plural(errors, 'error')} in {_plural(files, 'file')}"
        if summary or as_json:
            console.print(headline, style="bold red")
        if as_json:
            click.echo(
                json.dumps(
                    {
                        "error": headline,
                        "diagnostics": [_diagnostic_json(d) for d in error.diagnostics],
                    },
                    ensure_ascii=False,
                )
            )
        sys.exit(1)


@cli.command()
@click.argument(
    "events",
    nargs=-1,
    required=True,
    type=click.Path(exists=True, dir_okay=False, allow_dash=True, path_type=Path),
)
@click.option(
    "--rules",
    "rules_path",
    default="rules/",
    show_default=True,
    type=click.Path(path_type=Path),
    help="The ruleset folder.",
)
@click.option("--dry-run", is_flag=True, help="Build every send, deliver none.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per input line on stdout.")
@click.option(
    "--trace", is_flag=True, help="The full trace of each push: every rule, why, and the bodies."
)
@click.option(
    "--emulator",
    "use_emulator",
    is_flag=True,
    help="Start the local emulator on a free port and send there (no account needed).",
)
@click.option("--edge", "edge_url", help="Send Edge requests to this base URL instead.")
@click.option("--sitecore", "sitecore_url", help="Send Sitecore requests to this base URL instead.")
@click.option(
    "--live",
    is_flag=True,
    help="Send to the URLs of the ruleset's settings: the real Adobe and Sitecore hosts.",
)
@click.option(
    "--session",
    "only_session",
    metavar="ID",
    help="Show only the pushes of this session (every push still runs).",
)
@click.option(
    "--rule",
    "only_rule",
    metavar="NAME",
    help="Show only this rule: its outcome and sends, on the pushes that triggered it.",
)
def run(
    events: tuple[Path, ...],
    rules_path: Path,
    dry_run: bool,
    as_json: bool,
    trace: bool,
    use_emulator: bool,
    edge_url: str | None,
    sitecore_url: str | None,
    live: bool,
    only_session: str | None,
    only_rule: str | None,
) -> None:
    """Replay JSONL files of pushes (EVENTS; - reads standard input) through the rules.

    Nothing reaches the real hosts unless --live is given. Without --dry-run the sends are
    delivered: to --edge/--sitecore URLs, to the local emulator (with --emulator, and for every
    destination given no URL), or with --live to the URLs of the ruleset's settings."""
    if live and (dry_run or use_emulator):
        raise click.UsageError(
            "--live sends to the hosts of the settings: drop --dry-run/--emulator"
        )
    if sum(1 for path in events if str(path) == "-") > 1:
        raise click.UsageError("standard input (-) can be read once")
    ruleset = _load(rules_path, as_json=as_json)
    if only_rule is not None and all(rule.name != only_rule for rule in ruleset.rules):
        from engine.diagnostics import did_you_mean

        hint = did_you_mean(only_rule, [rule.name for rule in ruleset.rules])
        raise click.BadParameter(f"no rule named {only_rule!r}{hint}", param_hint="'--rule'")
    token_url: str | None = None
    # Without --live, a destination given no URL goes to a local emulator, never to the
    # hosts of the settings: a replay must not reach production unless asked to.
    implicit = [
        name
        for name, url in (("edge", edge_url), ("sitecore", sitecore_url))
        if url is None and not (dry_run or live or use_emulator)
    ]
    from engine.engine import Engine

    with ExitStack() as stack:
        if (use_emulator or implicit) and not dry_run:
            from engine.emulator import EmulatorServer, emulator_config

            server = stack.enter_context(EmulatorServer(config=emulator_config(ruleset)))
            if edge_url is None:
                edge_url = server.url
                # Its IMS too: credentials in the rules must not reach the real one.
                token_url = f"{server.url}/ims/token/v3"
            sitecore_url = sitecore_url or server.url
            if implicit:
                click.echo(
                    f"note: {' and '.join(implicit)} sends go to a local emulator on "
                    f"{server.url}, not to the hosts of the settings; --live sends there, "
                    "--dry-run sends nothing",
                    err=True,
                )
            elif not as_json:
                _console().print(f"emulator listening on {server.url}", style="dim")
        engine = stack.enter_context(
            Engine(
                ruleset,
                dry_run=dry_run,
                edge_url=edge_url,
                sitecore_url=sitecore_url,
                token_url=token_url,
            )
        )
        _replay(
            engine,
            events,
            dry_run=dry_run,
            as_json=as_json,
            trace=trace,
            only_session=only_session,
            only_rule=only_rule,
        )


def _failed(result: PushResult) -> int:
    """How many of a delivered push's requests failed: an error, or an answer other than 2xx."""
    requests = [*result.released, *result.sends]
    if result.consent_request is not None:
        requests.append(result.consent_request)
    return sum(
        1
        for send in requests
        if send.error is not None or (send.status is not None and not 200 <= send.status < 300)
    )


def _only_rule(result: PushResult, rule: str) -> PushResult | None:
    """``result`` showing only ``rule`` (its outcome and sends); ``None`` when it did not
    consider that rule and queued nothing that did."""
    followups = [f for f in (_only_rule(each, rule) for each in result.followups) if f]
    # Why not: the rule when this push did not trigger it (shown only for a near miss).
    why_not = [entry for entry in result.not_triggered() if entry.rule == rule]
    near = any(getattr(entry, "near_miss", None) for entry in why_not)
    if result.outcome(rule) is None and not followups and not near:
        return None
    shown = dataclasses.replace(
        result,
        rules=[o for o in result.rules if o.rule == rule],
        sends=[s for s in result.sends if s.rule == rule],
        released=[s for s in result.released if s.rule == rule],
        followups=followups,
    )
    cached = "_not_triggered"  # computed on demand from the ruleset: keep only this rule
    setattr(shown, cached, why_not)
    return shown


def _inputs(events: tuple[Path, ...]) -> Iterator[tuple[str, IO[bytes]]]:
    """(name, binary handle) of each events file; ``-`` is standard input."""
    for path in events:
        if str(path) == "-":
            yield "<stdin>", sys.stdin.buffer
            continue
        with path.open("rb") as handle:
            yield str(path), handle


def _replay(
    engine: Engine,
    events: tuple[Path, ...],
    *,
    dry_run: bool,
    as_json: bool,
    trace: bool,
    only_session: str | None = None,
    only_rule: str | None = None,
) -> None:
    from engine.envelopes import decode, read_envelope
    from engine.trace import render_summary, render_trace

    console = _console()
    errors = _console_err()
    bad = pushes = fired = sent = failed = 0
    for name, handle in _inputs(events):
        for number, raw in enumerate(handle, 1):
            if not raw.strip():
                continue
            try:
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as error:
                    raise ValueError(f"not UTF-8 text (byte {error.start + 1})") from None
                # A push object (session "default") or an envelope (engine/envelopes.py)
                result = read_envelope(decode(line)).run(engine)
            except (ValueError, EngineError) as error:
                bad += 1
                errors.print(f"{name}:{number}: error: {error}", style="red", markup=False)
                if as_json:
                    click.echo(json.dumps({"line": number, "file": name, "error": str(error)}))
                continue
            pushes += 1
            for each in (result, *result.followups):
                fired += len(each.fired)
                sent += len(each.sends)
                if not dry_run:
                    failed += _failed(each)
            shown: PushResult | None = result
            if only_session is not None and result.session != only_session:
                shown = None
            if shown is not None and only_rule is not None:
                shown = _only_rule(shown, only_rule)
            if shown is None:
                continue
            if as_json:
                # One object per input line: pushes queued by rules ride along inside it.
                line_json = shown.to_json(delivered=not dry_run)
                click.echo(json.dumps(line_json, ensure_ascii=False))
                continue
            for each in (shown, *shown.followups):
                if trace:
                    render_trace(console, each, f"{name}:{number}")
                else:
                    render_summary(console, each)
    problems = []
    if failed:
        problems.append(f"{_plural(failed, 'send')} failed")
    if bad:
        problems.append(f"{_plural(bad, 'bad line')} skipped")
    if not as_json:
        mode = " (dry run: nothing delivered)" if dry_run else ""
        console.print(
            f"{_plural(pushes, 'push')}, {_plural(fired, 'rule')} fired, "
            f"{_plural(sent, 'send')}{mode}" + "".join(f"; {p}" for p in problems),
            style="bold",
        )
    elif failed:
        errors.print(f"error: {_plural(failed, 'send')} failed", style="red")
    if problems:
        sys.exit(1)


def _selected(name: str, pattern: str) -> bool:
    """``-k``: a case-insensitive substring of the test name, or a glob (``*``, ``?``, ``[``)."""
    import fnmatch

    name, pattern = name.lower(), pattern.lower()
    if any(char in pattern for char in "*?["):
        return fnmatch.fnmatchcase(name, pattern)
    return pattern in name


@cli.command("test")
@click.argument("path", default="rules/", type=click.Path(path_type=Path))
@click.option(
    "-k",
    "pattern",
    metavar="PATTERN",
    help="Run only the tests whose name contains PATTERN, or matches it as a glob "
    "(*, ?, [...]); case-insensitive.",
)
@click.option("--strict", is_flag=True, help="Treat the ruleset's warnings as errors.")
def test_command(path: Path, pattern: str | None, strict: bool) -> None:
    """Run the test blocks of the rules in PATH (default: rules/).

    PATH may be one .rules file: its tests run, within the ruleset of its folder."""
    from rich.text import Text

    from engine.testing import run_test

    single = path.is_file()
    ruleset = _load(path.parent if single else path, strict=strict)
    tests = list(ruleset.tests)
    if single:
        target = path.resolve()
        tests = [t for t in tests if Path(t.span.file).resolve() == target]
    if pattern is not None:
        tests = [t for t in tests if _selected(t.name, pattern)]
    deselected = len(ruleset.tests) - len(tests)
    console = _console()
    if not tests and (single or pattern is not None):
        where = f" in {path}" if single else ""
        matching = f" matching -k {pattern!r}" if pattern is not None else ""
        console.print(f"no test{where}{matching}", style="bold red")
        sys.exit(1)
    passed = failed = 0
    for test in tests:
        report = run_test(ruleset, test)
        where = f"{report.span.file}:{report.span.line}"
        if report.passed:
            passed += 1
            console.print(
                Text.assemble(("PASS ", "bold green"), report.name, (f"  {where}", "dim"))
            )
            continue
        failed += 1
        console.print(Text.assemble(("FAIL ", "bold red"), report.name, (f"  {where}", "dim")))
        for failure in report.failures:
            for index, line in enumerate(failure.split("\n")):
                style = (
                    "red"
                    if line.lstrip().startswith("+ ")
                    else "green"
                    if line.lstrip().startswith("- ")
                    else None
                )
                console.print(Text("    " + line if index else "  " + line, style=style or ""))
    console.print(
        f"{passed} passed, {failed} failed" + (f" ({deselected} deselected)" if deselected else ""),
        style="bold green" if not failed else "bold red",
    )
    if failed:
        sys.exit(1)


@cli.command()
@click.option(
    "--host", default="127.0.0.1", show_default=True, help="Address to bind (loopback by default)."
)
@click.option(
    "--port",
    default=8080,
    show_default=True,
    type=int,
    help="Port to listen on (0: any free port).",
)
@click.option(
    "--scopes",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="JSON file: decision scope → propositions.",
)
@click.option(
    "--org",
    help="The IMS org the kndctr_<org>_* state entries are named after (as the rules' "
    "edge settings say).",
)
@click.option(
    "--datastream",
    "datastreams",
    multiple=True,
    help="A datastream id to accept (repeatable); others get EXEG-0003-400. Default: any.",
)
@click.option(
    "--client-key",
    "client_keys",
    multiple=True,
    help="A Sitecore client key to accept (repeatable); others get 401. Default: any.",
)
@click.option(
    "--allow-override",
    "allowed_overrides",
    multiple=True,
    metavar="PATH=VALUE",
    help="A meta.configOverrides value the datastream allows (repeatable), e.g. "
    "com_adobe_analytics.reportSuites=rs1; others get EXEG-0113-400. Default: any.",
)
def emulator(
    host: str,
    port: int,
    scopes: Path | None,
    org: str | None,
    datastreams: tuple[str, ...],
    client_keys: tuple[str, ...],
    allowed_overrides: tuple[str, ...],
) -> None:
    """Serve a local Adobe Edge Network and Sitecore Stream API for development."""
    from engine.emulator import EmulatorConfig, serve
    from engine.emulator.overrides import parse_allowance

    overrides: dict[str, frozenset[str]] = {}
    for text in allowed_overrides:
        try:
            path, value = parse_allowance(text)
        except ValueError as error:
            raise click.BadParameter(str(error), param_hint="'--allow-override'") from None
        overrides[path] = overrides.get(path, frozenset()) | {value}
    config = EmulatorConfig(
        datastreams=frozenset(datastreams) if datastreams else None,
        client_keys=frozenset(client_keys) if client_keys else None,
        overrides=overrides if allowed_overrides else None,
    )
    if org is not None:
        config = dataclasses.replace(config, org=org)
    click.echo(f"tagengine emulator on http://{host}:{port}  (Ctrl+C stops it)")
    # Without ids to check against it cannot refuse a typo, as the real services would.
    loose = [
        what
        for what, given in (("datastream id", datastreams), ("client key", client_keys))
        if not given
    ]
    if loose:
        click.echo(
            f"note: any {' and any '.join(loose)} is accepted; give --datastream/--client-key "
            "to have unknown ones refused as the real services do",
            err=True,
        )
    if not allowed_overrides:
        click.echo(
            "note: every meta.configOverrides value (dataset, report suite, property token, "
            "ID sync container) passes; give --allow-override PATH=VALUE to have the others "
            "refused with EXEG-0113-400 as Edge does",
            err=True,
        )
    try:
        serve(host=host, port=port, scopes=scopes, config=config)
    except ValueError as error:  # the scopes file, refused before anything binds
        raise click.ClickException(str(error)) from None
    except OSError as error:
        raise click.ClickException(f"cannot serve on {host}:{port}: {error}") from None


@cli.command()
@click.option(
    "--rules",
    "rules_path",
    default="rules/",
    show_default=True,
    type=click.Path(path_type=Path),
    help="The ruleset folder, reloaded on every save.",
)
@click.option(
    "--host", default="127.0.0.1", show_default=True, help="Address to bind (loopback by default)."
)
@click.option(
    "--port",
    default=8000,
    show_default=True,
    type=int,
    help="Port of the POST /push endpoint (0: any free port).",
)
@click.option(
    "--replay",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A JSONL file of pushes (or envelopes) to replay first.",
)
@click.option("--summary", is_flag=True, help="One line per push instead of the full trace.")
@click.option("--dry-run", is_flag=True, help="Build every send, deliver none (no emulator).")
def dev(
    rules_path: Path, host: str, port: int, replay: Path | None, summary: bool, dry_run: bool
) -> None:
    """Develop rules: watch them, start the emulator, and trace every push POSTed to /push."""
    from engine.devserver import run_dev

    try:
        run_dev(
            rules_path,
            host=host,
            port=port,
            replay=replay,
            console=_console(),
            trace=not summary,
            dry_run=dry_run,
        )
    except OSError as error:
        raise click.ClickException(f"cannot serve on {host}:{port}: {error}") from None


@cli.command()
def lsp() -> None:
    """Run the language server for .rules files on stdin/stdout (for editors)."""
    from engine.lsp import serve  # imports pygls: only when the server runs

    serve()


@cli.command("fmt")
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path, allow_dash=True))
@click.option(
    "--check", is_flag=True, help="Change nothing; exit 1 if a file would be reformatted."
)
@click.option("--diff", "show_diff", is_flag=True, help="Print a unified diff; change nothing.")
def fmt(paths: tuple[Path, ...], check: bool, show_diff: bool) -> None:
    """Rewrite .rules files in the canonical layout (PATHS: files or folders; default rules/).

    A lone - formats standard input to standard output. A file with syntax errors is left as
    it is: its errors are printed, and the exit status is 1."""
    if len(paths) > 1 and any(str(path) == "-" for path in paths):
        raise click.UsageError("- (standard input) must be the only path")
    from engine.fmt import main as fmt_main  # imports lark: only when the command runs

    sys.exit(fmt_main(paths, check=check, diff=show_diff))


# `outbox` and `deliver` are added on first use: see _LazyGroup.


# Set by the commands that end the process as soon as they are done (`check`).
_freeze_at_exit = False


def main() -> None:
    try:
        cli(prog_name="tagengine")
    finally:
        if _freeze_at_exit:
            # Python's last collections at exit would go over every object once more (about
            # 10 ms after `check`: the engine's modules, the syntax trees, lark's tables)
            # only to free memory the exit frees anyway. Frozen, they are skipped.
            gc.freeze()
