"""The ``tagengine`` command line."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from rich.console import Console
from rich.text import Text

from engine.diagnostics import Diagnostic
from engine.errors import RuleError
from engine.loader import load_ruleset

__all__ = ["main"]


def _console() -> Console:
    # Plain text when piped (CI logs, tests); colour only on a terminal.
    return Console(highlight=False, soft_wrap=True, file=sys.stdout)


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
    return f"{count} {word}{'' if count == 1 else 's'}"


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


def main() -> None:
    cli(prog_name="tagengine")
