"""`fraudguard run` starts Prefect's temporary server itself only when no Prefect settings could apply."""

from __future__ import annotations

import pytest

from fraudguard.cli.run import prefect_is_configured

PREFECT_ENV = ("PREFECT_API_URL", "PREFECT_PROFILE", "PREFECT_PROFILES_PATH", "PREFECT_SERVER_EPHEMERAL_ENABLED")


@pytest.fixture
def bare(tmp_path, monkeypatch):
    """A working directory and PREFECT_HOME with no Prefect settings at all."""
    for name in PREFECT_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect-home"))
    work = tmp_path / "work"
    work.mkdir()
    return work


def test_nothing_configured_lets_the_cli_start_the_server(bare):
    assert prefect_is_configured(bare) is False


def test_an_api_url_in_the_environment_leaves_the_server_to_prefect(bare, monkeypatch):
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:4200/api")
    assert prefect_is_configured(bare) is True


def test_temporary_server_turned_off_leaves_it_to_prefect(bare, monkeypatch):
    monkeypatch.setenv("PREFECT_SERVER_EPHEMERAL_ENABLED", "false")
    assert prefect_is_configured(bare) is True


def test_prefects_default_profile_counts_as_not_configured(bare, tmp_path):
    home = tmp_path / "prefect-home"
    home.mkdir()
    (home / "profiles.toml").write_text('active = "ephemeral"\n\n[profiles.ephemeral]\n'
                                        'PREFECT_SERVER_EPHEMERAL_ENABLED = "true"\n')
    assert prefect_is_configured(bare) is False


def test_an_active_profile_with_an_api_url_leaves_the_server_to_prefect(bare, tmp_path):
    home = tmp_path / "prefect-home"
    home.mkdir()
    (home / "profiles.toml").write_text('active = "local"\n\n[profiles.local]\n'
                                        'PREFECT_API_URL = "http://127.0.0.1:4200/api"\n')
    assert prefect_is_configured(bare) is True


@pytest.mark.parametrize("name, content", [("prefect.toml", "[api]\nurl = 'http://x/api'\n"),
                                           (".env", "PREFECT_API_URL=http://x/api\n"),
                                           ("pyproject.toml", "[tool.prefect.api]\nurl = 'http://x/api'\n")])
def test_settings_files_in_the_working_directory_leave_the_server_to_prefect(bare, name, content):
    (bare / name).write_text(content)
    assert prefect_is_configured(bare) is True


def test_a_pyproject_without_a_prefect_table_is_not_prefect_configuration(bare):
    (bare / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    assert prefect_is_configured(bare) is False
