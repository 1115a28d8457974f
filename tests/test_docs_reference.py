"""The command-line page is the parser's own description of itself.

docs/cli.md's "## Reference" section is written from `aidp_metrics.cli`'s parser
(tests/support/cli_reference.py): every command and every argument, with its help text.
A command or option added, renamed or re-described without the page fails here.
"""

from __future__ import annotations

import argparse

import pytest

from tests.support import cli_reference


def test_the_cli_page_is_the_parsers_reference() -> None:
    page = cli_reference.page_reference(cli_reference.PAGE.read_text(encoding="utf-8"))
    assert page == cli_reference.reference(), (
        "docs/cli.md is out of date: python -m tests.support.cli_reference"
    )


def test_the_reference_names_every_command_and_option() -> None:
    parser = cli_reference.build_parser()
    text = cli_reference.reference()
    for name, command in cli_reference.commands(parser).items():
        assert f"### `aidp-metrics {name}`" in text, name
        for action in command._actions:
            for option in action.option_strings:
                if option not in ("-h", "--help"):
                    assert f"`{option}`" in text, (name, option)


def test_the_check_sees_a_new_option(monkeypatch: pytest.MonkeyPatch) -> None:
    build = cli_reference.build_parser

    def with_extra_option() -> argparse.ArgumentParser:
        parser = build()
        cli_reference.commands(parser)["sync"].add_argument("--brand-new", help="new")
        return parser

    monkeypatch.setattr(cli_reference, "build_parser", with_extra_option)
    page = cli_reference.page_reference(cli_reference.PAGE.read_text(encoding="utf-8"))
    assert "`--brand-new`" in cli_reference.reference()
    assert page != cli_reference.reference()
