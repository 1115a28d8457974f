"""The command-line reference of docs/cli.md, written from the `aidp-metrics` parser itself.

`tests/test_docs_reference.py` fails when the page's "## Reference" section differs from
`reference()`; `python -m tests.support.cli_reference` rewrites that section.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from aidp_metrics.cli import build_parser

PAGE = Path(__file__).resolve().parents[2] / "docs" / "cli.md"
HEADING = "## Reference\n"


def _name(action: argparse.Action) -> str:
    if not action.option_strings:
        return f"`{action.metavar or action.dest.upper()}`"
    names = ", ".join(f"`{option}`" for option in action.option_strings)
    if action.nargs != 0:
        names += f" `{action.metavar or action.dest.upper()}`"
    return names


def _rows(parser: argparse.ArgumentParser, skip: set[str]) -> list[str]:
    rows = []
    for action in parser._actions:  # argparse has no public way to list them
        if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
            continue
        if action.dest in skip:
            continue
        meaning = " ".join((action.help or "").split()) % {"default": action.default}
        meaning = meaning.replace("|", "\\|")
        rows.append(f"| {_name(action)} | {meaning} |")
    return rows


def commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def reference() -> str:
    parser = build_parser()
    global_options = {action.dest for action in parser._actions}
    lines = [
        HEADING,
        "Every command and argument, from the parser that `aidp-metrics` runs (a test keeps",
        "this section equal to it; `python -m tests.support.cli_reference` rewrites it).",
        "",
        "### Global options",
        "",
        "They go before or after the command.",
        "",
        "| option | meaning |",
        "|---|---|",
        *_rows(parser, set()),
    ]
    for name, command in commands(parser).items():
        lines += ["", f"### `aidp-metrics {name}`", ""]
        lines += [" ".join((command.description or "").split()), ""]
        rows = _rows(command, global_options)
        if rows:
            lines += ["| argument | meaning |", "|---|---|", *rows]
    return "\n".join(lines) + "\n"


def page_reference(text: str) -> str:
    """The page's section from its "## Reference" heading to the end."""
    return HEADING + text.split(f"\n{HEADING}", 1)[1]


if __name__ == "__main__":
    text = PAGE.read_text(encoding="utf-8")
    head = text.split(f"\n{HEADING}", 1)[0].rstrip("\n")
    PAGE.write_text(f"{head}\n\n{reference()}", encoding="utf-8")
