"""`fraudguard run` starts Prefect's temporary server ahead of the flow: the same server Prefect's clients use."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from fraudguard.cli.run import TemporaryServerStart

pytestmark = pytest.mark.slow


def test_with_a_configured_prefect_api_no_temporary_server_is_started():
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: "http://127.0.0.1:4200/api"}):
        assert TemporaryServerStart.begin() is None


def test_the_server_started_ahead_is_the_one_prefect_clients_then_use(tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_HOME,
        PREFECT_SERVER_ANALYTICS_ENABLED,
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
        temporary_settings,
    )

    with temporary_settings({PREFECT_HOME: tmp_path / "prefect", PREFECT_SERVER_ANALYTICS_ENABLED: False,
                             PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS: 180},
                            restore_defaults={PREFECT_API_URL}):
        # A session's prefect_test_harness registers its server as the default one: set it aside, as the
        # harness itself does with a prior default, so this test starts (and stops) its own.
        harness_server = SubprocessASGIServer._instances.pop(None, None)
        starting = TemporaryServerStart.begin()
        assert starting is not None
        try:
            assert starting.wait() is None
            server = SubprocessASGIServer()
            assert server.running and server.server_process is not None
            with get_client(sync_client=True) as client:
                assert client.api_url == server.api_url + "/"
                assert client.api_healthcheck() is None
        finally:
            SubprocessASGIServer().stop()
            if harness_server is not None:
                SubprocessASGIServer._instances[None] = harness_server


def test_the_server_launched_before_prefect_is_imported_serves_prefects_client(tmp_path):
    # A fresh interpreter, as `fraudguard run` is: Prefect not imported yet, nothing configured.
    code = textwrap.dedent("""
        import sys
        from fraudguard.cli.run import EarlyPrefectServer
        server = EarlyPrefectServer.launch()
        assert server is not None and "prefect" not in sys.modules
        assert server.wait() is None
        from prefect.client.orchestration import get_client
        with get_client(sync_client=True) as client:
            assert client.api_url == server.api_url + "/", (client.api_url, server.api_url)
            assert client.api_healthcheck() is None
        # Prefect's clients use it through PREFECT_API_URL: its server package is never loaded here.
        assert "prefect.server.api.server" not in sys.modules
        process = server.process
        server.stop()
        assert process.poll() is not None
        print("SERVED", server.api_url)
    """)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(tmp_path / "prefect"), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "SERVED http://127.0.0.1:" in proc.stdout


def test_a_server_process_that_dies_before_answering_is_reported_in_one_line(tmp_path):
    import importlib.util
    from pathlib import Path

    from fraudguard.cli.run import EarlyPrefectServer

    spec = importlib.util.find_spec("prefect")
    assert spec is not None and spec.origin is not None
    server = EarlyPrefectServer(Path(spec.origin).parent.parent, timeout_s=30)
    server.start()
    assert server.process is not None
    server.process.kill()
    server.process.wait()

    problem = server.wait()

    assert problem is not None and "exited with status" in problem and "\n" not in problem
