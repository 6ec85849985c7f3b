"""The migrated Prefect database `make install` makes and `fraudguard run` copies into each new Prefect home."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from fraudguard.prefect_database import MEMO_FILE, TEMPLATE_ENV, create_template, memo_path, seed_prefect_database


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    return create_template(tmp_path_factory.mktemp("template") / "prefect.db")


def test_template_holds_prefects_schema_and_block_types_and_nothing_of_a_run(template):
    with sqlite3.connect(template) as db:
        tables = [name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        filled = {name: db.execute(f'SELECT count(*) FROM "{name}"').fetchone()[0] for name in tables}
        (revision,) = db.execute("SELECT version_num FROM alembic_version").fetchone()
        journal = db.execute("PRAGMA journal_mode").fetchone()[0]
    assert {"flow_run", "task_run", "deployment", "block_document"} <= set(tables)
    # Prefect's built-in block types and schemas; no runs, no flows, no configuration (its keys are per home).
    assert {name for name, rows in filled.items() if rows} <= {"alembic_version", "block_type", "block_schema",
                                                                "block_schema_reference"}
    assert filled["block_type"] > 0
    assert revision and journal == "delete"  # one closed file, nothing in a side WAL
    assert not list(template.parent.glob("*.tmp"))
    assert "block_auto_registration" in memo_path(template).read_text()


def test_seeding_copies_the_template_only_where_prefect_would_create_a_new_database(template, tmp_path,
                                                                                    monkeypatch):
    monkeypatch.setenv(TEMPLATE_ENV, str(template))
    for name in ("PREFECT_SERVER_DATABASE_CONNECTION_URL", "PREFECT_API_DATABASE_CONNECTION_URL"):
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "home"

    assert seed_prefect_database(home) == home / "prefect.db"
    assert (home / "prefect.db").read_bytes() == template.read_bytes()
    assert (home / MEMO_FILE).read_bytes() == memo_path(template).read_bytes()

    (home / "prefect.db").write_bytes(b"a database with runs in it")
    assert seed_prefect_database(home) is None  # an existing database is never replaced
    assert (home / "prefect.db").read_bytes() == b"a database with runs in it"

    other = tmp_path / "other"
    monkeypatch.setenv("PREFECT_SERVER_DATABASE_CONNECTION_URL", "postgresql+asyncpg://db/prefect")
    assert seed_prefect_database(other) is None  # another database is configured
    monkeypatch.delenv("PREFECT_SERVER_DATABASE_CONNECTION_URL")
    monkeypatch.setenv(TEMPLATE_ENV, "")
    assert seed_prefect_database(other) is None  # no template
    assert not other.exists()


def test_prefects_server_starts_on_a_seeded_home_and_records_runs(template, tmp_path, monkeypatch):
    monkeypatch.setenv(TEMPLATE_ENV, str(template))
    home = tmp_path / "home"
    seed_prefect_database(home)
    env = {"PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_UI_ENABLED": "0",
           "PATH": str(Path(sys.executable).parent)}
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen([str(Path(sys.executable).parent / "prefect"), "server", "start", "--host", "127.0.0.1",
                               "--port", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "server did not answer on the seeded home"
            time.sleep(0.2)
        script = ("from prefect import flow\n"
                  "@flow(name='seeded-home-check')\n"
                  "def check():\n    return 42\n"
                  "assert check() == 42\n")
        subprocess.run([sys.executable, "-c", script], check=True, timeout=300,
                       env={**env, "PREFECT_API_URL": f"http://127.0.0.1:{port}/api"})
    finally:
        server.terminate()
        server.wait(timeout=30)
    with sqlite3.connect(home / "prefect.db") as db:
        names = [name for (name,) in db.execute("SELECT name FROM flow")]
    assert names == ["seeded-home-check"]


def test_the_temporary_server_on_a_just_seeded_home_skips_its_start_up_checks_and_records_runs(template, tmp_path,
                                                                                           monkeypatch):
    from fraudguard.prefect_database import SEEDED_DATABASE_SETTINGS, TemporaryServer, temporary_server_env

    monkeypatch.setenv(TEMPLATE_ENV, str(template))
    for name in ("PREFECT_SERVER_DATABASE_CONNECTION_URL", "PREFECT_API_DATABASE_CONNECTION_URL", "PREFECT_API_URL"):
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "home"
    assert seed_prefect_database(home) is not None
    env = temporary_server_env(home, {"PATH": str(Path(sys.executable).parent),
                                      "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}, seeded=True)
    assert SEEDED_DATABASE_SETTINGS.items() <= env.items()
    server = TemporaryServer(home, 180, env, log_path=tmp_path / "server.log")
    server.start()
    try:
        assert server.wait() is None, (tmp_path / "server.log").read_text()
        script = ("from prefect import flow, task\n"
                  "@task\n"
                  "def double(x):\n    return 2 * x\n"
                  "@flow(name='seeded-temporary-server-check')\n"
                  "def check():\n    return double(21)\n"
                  "assert check() == 42\n")
        subprocess.run([sys.executable, "-c", script], check=True, timeout=300,
                       env={**env, "PREFECT_API_URL": server.api_url})
    finally:
        server.stop()
    with sqlite3.connect(home / "prefect.db") as db:
        flows = [name for (name,) in db.execute("SELECT name FROM flow")]
        states = [state for (state,) in db.execute("SELECT state_type FROM flow_run")]
    assert flows == ["seeded-temporary-server-check"] and states == ["COMPLETED"]


def test_an_existing_database_keeps_prefects_start_up_checks(tmp_path):
    from fraudguard.prefect_database import SEEDED_DATABASE_SETTINGS, temporary_server_env

    env = temporary_server_env(tmp_path, {}, seeded=False)
    assert not set(SEEDED_DATABASE_SETTINGS) & set(env)
    # Another database configured: nothing of ours applies, seeded or not.
    other = temporary_server_env(tmp_path, {"PREFECT_SERVER_DATABASE_CONNECTION_URL": "postgresql+asyncpg://db/p"},
                                 seeded=True)
    assert not set(SEEDED_DATABASE_SETTINGS) & set(other)
