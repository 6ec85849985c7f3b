"""Shared fixtures: small, seeded settings so tests stay fast on 2 cores."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from fraudguard.config import Settings, merge_overrides, parse_settings

PROJECT_ROOT = Path(__file__).resolve().parents[1]

# No Prefect server a test starts (its own or one Prefect starts for a flow called directly) tries to send
# telemetry: nothing outside this machine is reachable, and CI's log showed the failed attempts.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

# A small world: a few thousand transactions, trains in seconds.
SMALL_OVERRIDES = {
    # Compromise shares raised so the small world holds a few hundred frauds (~4%) to learn from.
    # 80 days = 37-day feature warm-up + 22 training days + 7-day gap + 14 test days.
    "simulate": {"n_customers": 100, "n_terminals": 200, "n_days": 80,
                 "terminal_compromise_share_per_day": 0.002, "customer_compromise_share_per_day": 0.006},
    "featurize": {"split": {"train_days": 22, "delay_gap_days": 7, "test_days": 14}},
    "train": {"epochs": 4, "batch_size": 256, "torch_threads": 1},
    # The synthetic registry worlds (registry_helpers.write_pipeline_outputs) have ~160 rows in the newest window.
    "gates": {"privacy": {"sample_size": 500}, "drift": {"min_rows": 100}},
}


def small_params(extra: dict | None = None) -> dict:
    """params.yaml's content with the small-world overrides (plus `extra`) applied."""
    raw = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    raw = merge_overrides(raw, SMALL_OVERRIDES)
    if extra:
        raw = merge_overrides(raw, extra)
    return raw


@pytest.fixture
def small_settings() -> Settings:
    return parse_settings(small_params(), source="small test params")


@pytest.fixture(autouse=True, scope="session")
def pipeline_signing_key(tmp_path_factory):
    """One signing key and anchor folder for the whole session, outside every store (as on a real host).

    Set in os.environ so that CLI subprocesses, Prefect servers and workers started by tests use it too.
    """
    import os

    keys = tmp_path_factory.mktemp("pipeline-keys")
    previous = {name: os.environ.get(name) for name in ("FRAUDGUARD_SIGNING_KEY", "FRAUDGUARD_AUDIT_ANCHOR_DIR")}
    os.environ["FRAUDGUARD_SIGNING_KEY"] = str(keys / "signing-key.pem")
    os.environ["FRAUDGUARD_AUDIT_ANCHOR_DIR"] = str(keys / "anchors")
    yield keys / "signing-key.pem"
    for name, value in previous.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def pytest_unconfigure(config):
    """Prefect stops the temporary API servers still running (its ephemeral server) at interpreter exit and says
    so at INFO, through a console bound to the stream pytest captured; a pytest-xdist worker has closed that
    stream by then, so the line came out as a "--- Logging error ---" traceback in the suite's output."""
    import logging

    logging.getLogger("prefect").setLevel(logging.WARNING)
