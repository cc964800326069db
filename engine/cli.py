"""The ``tagengine`` command line."""

from __future__ import annotations

import dataclasses
import json
import sys
from contextlib import ExitStack
from pathlib import Path

import click
from rich.console import Console
from rich.text import Text

from engine.cli_deliver import deliver
from engine.cli_outbox import outbox
from engine.diagnostics import Diagnostic
from engine.engine import Engine
from engine.envelopes import decode, read_envelope
from engine.errors import EngineError, RuleError
from engine.loader import load_ruleset
from engine.ruleset import Ruleset
from engine.testing import run_tests
from engine.trace import render_summary, render_trace

__all__ = ["main"]


def _console() -> Console:
    # Plain text when piped (CI logs, tests); colour only on a terminal.
    return Console(highlight=False, soft_wrap=True, file=sys.stdout)


def _console_err() -> Console:
    return Console(highlight=False, soft_wrap=True, stderr=True)


def _styled(diagnostic: Diagnostic) -> Text:
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


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="tagengine", prog_name="tagengine")
def cli() -> None:
    """tagengine: tag-manager rules, tested like code, sent to Adobe Edge and Sitecore."""


@cli.command()
@click.argument("path", default="rules/", type=click.Path(path_type=Path))
@click.option(
    "--cache-dir", type=click.Path(path_type=Path), help="Keep parsed files here between runs."
)
def check(path: Path, cache_dir: Path | None) -> None:
    """Parse, check and compile the rules in PATH (default: rules/) and report every problem."""
    console = _console()
    try:
        ruleset = load_ruleset(path, cache_dir=cache_dir)
    except RuleError as error:
        for diagnostic in error.diagnostics:
            console.print(_styled(diagnostic))
        errors = sum(1 for d in error.diagnostics if d.severity == "error")
        files = len({d.span.file for d in error.diagnostics})
        console.print(f"{_plural(errors, 'error')} in {_plural(files, 'file')}", style="bold red")
        sys.exit(1)
    console.print(
        f"{_plural(len(ruleset.rules), 'rule')}, {_plural(len(ruleset.elements), 'element')}, "
        f"{_plural(len(ruleset.tests), 'test')} in {_plural(len(ruleset.files), 'file')}"
    )


def _load(path: Path, cache_dir: Path | None = None) -> Ruleset:
    try:
        return load_ruleset(path, cache_dir=cache_dir)
    except RuleError as error:
        console = _console()
        for diagnostic in error.diagnostics:
            console.print(_styled(diagnostic))
        sys.exit(1)


@cli.command()
@click.argument(
    "events", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path)
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
def run(
    events: tuple[Path, ...],
    rules_path: Path,
    dry_run: bool,
    as_json: bool,
    trace: bool,
    use_emulator: bool,
    edge_url: str | None,
    sitecore_url: str | None,
) -> None:
    """Replay JSONL files of pushes (EVENTS) through the rules.

    Without --dry-run the sends are delivered: to the local emulator with --emulator, to
    --edge/--sitecore URLs, or else to the URLs of the ruleset's settings."""
    ruleset = _load(rules_path)
    token_url: str | None = None
    with ExitStack() as stack:
        if use_emulator and not dry_run:
            from engine.emulator import EmulatorServer, emulator_config

            server = stack.enter_context(EmulatorServer(config=emulator_config(ruleset)))
            if edge_url is None:
                edge_url = server.url
                # Its IMS too: credentials in the rules must not reach the real one.
                token_url = f"{server.url}/ims/token/v3"
            sitecore_url = sitecore_url or server.url
            if not as_json:
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
        _replay(engine, events, dry_run=dry_run, as_json=as_json, trace=trace)


def _replay(
    engine: Engine, events: tuple[Path, ...], *, dry_run: bool, as_json: bool, trace: bool
) -> None:
    console = _console()
    errors = _console_err()
    bad = pushes = fired = sent = 0
    for path in events:
        with path.open("rb") as handle:
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
                    errors.print(f"{path}:{number}: error: {error}", style="red", markup=False)
                    if as_json:
                        click.echo(
                            json.dumps({"line": number, "file": str(path), "error": str(error)})
                        )
                    continue
                pushes += 1
                if as_json:
                    # One object per input line: pushes queued by rules ride along inside it.
                    line_json = result.to_json(delivered=not dry_run)
                    click.echo(json.dumps(line_json, ensure_ascii=False))
                for each in (result, *result.followups):
                    fired += len(each.fired)
                    sent += len(each.sends)
                    if as_json:
                        continue
                    if trace:
                        render_trace(console, each, f"{path}:{number}")
                    else:
                        render_summary(console, each)
    if not as_json:
        mode = " (dry run: nothing delivered)" if dry_run else ""
        console.print(
            f"{_plural(pushes, 'push')}, {_plural(fired, 'rule')} fired, "
            f"{_plural(sent, 'send')}{mode}"
            + (f"; {_plural(bad, 'bad line')} skipped" if bad else ""),
            style="bold",
        )
    if bad:
        sys.exit(1)


@cli.command("test")
@click.argument("path", default="rules/", type=click.Path(path_type=Path))
def test_command(path: Path) -> None:
    """Run the test blocks of the rules in PATH (default: rules/)."""
    ruleset = _load(path)
    console = _console()
    passed = failed = 0
    for report in run_tests(ruleset):
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
        f"{passed} passed, {failed} failed", style="bold green" if not failed else "bold red"
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


cli.add_command(outbox)
cli.add_command(deliver)


def main() -> None:
    cli(prog_name="tagengine")
