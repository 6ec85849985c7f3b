"""`fraudguard run` starts Prefect's temporary server ahead of the flow: the same server Prefect's clients use."""

from __future__ import annotations

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
