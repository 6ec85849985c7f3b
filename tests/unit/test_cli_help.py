"""The CLI's help pages: what a newcomer reads first."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from fraudguard.cli import app


@pytest.mark.parametrize("argv", [["--help"], ["promote", "--help"], ["run", "--help"], ["audit", "--help"]])
def test_help_pages_show_no_type_on_flags(argv):
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 0, result.output
    assert "--help" in result.output
    # Typer 0.26+ labels every flag `<bool>` (`--help <bool>`): pyproject pins a Typer that does not.
    assert "<bool>" not in result.output


def test_version_prints_the_installed_version():
    from importlib.metadata import version

    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"fraudguard {version('fraudguard')}"
