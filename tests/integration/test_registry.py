"""Champion alias, history, lock and audit on a real sqlite MLflow store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from fraudguard.audit import read_audit_log, verify_audit_log
from fraudguard.errors import AuditError, RegistryError
from fraudguard.registry import (
    CHAMPION_ALIAS,
    champion_history,
    get_champion_version,
    lock_path_for,
    set_champion,
)

from registry_helpers import make_client, register_version

NAME = "fraudguard"
PROJECT_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def store(tmp_path):
    client = make_client(tmp_path / "store")
    versions = [register_version(client, NAME, tmp_path / f"w{i}", f"weights-{i}".encode(),
                                 {"quality": "passed"}) for i in range(3)]
    return client, versions


def test_no_champion_before_the_first_promotion(store):
    client, _ = store
    assert get_champion_version(client, NAME) is None
    assert champion_history(client, NAME) == []


def test_set_champion_moves_alias_and_records_history_and_audit(store):
    client, (v1, v2, _) = store
    set_champion(client, NAME, v1, action="promote", actor="alice")
    move = set_champion(client, NAME, v2, action="promote", actor="bob", gates={"quality": "passed"})
    assert get_champion_version(client, NAME) == v2
    history = champion_history(client, NAME)
    assert [(c.version, c.previous, c.actor) for c in history] == [(v1, None, "alice"), (v2, v1, "bob")]
    audit = read_audit_log(client, NAME)
    assert [(e.action, e.from_version, e.to_version) for e in audit] == [("promote", None, v1), ("promote", v1, v2)]
    assert move.audit == audit[-1]
    assert client.get_model_version(NAME, str(v2)).tags["fraudguard.status"] == "promoted"


def test_set_champion_with_stale_expectation_changes_nothing(store):
    client, (v1, v2, v3) = store
    set_champion(client, NAME, v1, action="promote")
    with pytest.raises(RegistryError, match="changed"):
        set_champion(client, NAME, v3, action="rollback", expected_current=v2)
    assert get_champion_version(client, NAME) == v1
    assert len(champion_history(client, NAME)) == 1 and len(read_audit_log(client, NAME)) == 1


def test_lock_file_sits_next_to_the_sqlite_store(store, tmp_path):
    client, _ = store
    assert lock_path_for(client) == tmp_path / "store" / "mlflow.db.fraudguard.lock"


def test_edited_audit_entry_in_the_store_is_detected(store):
    client, (v1, v2, _) = store
    set_champion(client, NAME, v1, action="promote", actor="alice")
    set_champion(client, NAME, v2, action="promote", actor="alice")
    raw = json.loads(client.get_registered_model(NAME).tags["audit.000001"])
    raw["actor"] = "mallory"
    client.set_registered_model_tag(NAME, "audit.000001", json.dumps(raw))
    result = verify_audit_log(client, NAME)
    assert not result.ok and result.bad_seq == 1


def test_deleted_audit_entry_in_the_store_is_detected(store):
    client, (v1, v2, v3) = store
    for v in (v1, v2, v3):
        set_champion(client, NAME, v, action="promote")
    client.delete_registered_model_tag(NAME, "audit.000002")
    result = verify_audit_log(client, NAME)
    assert not result.ok and result.bad_seq == 2


def test_champion_move_refused_when_the_audit_log_was_tampered(store):
    client, (v1, v2, _) = store
    set_champion(client, NAME, v1, action="promote")
    client.set_registered_model_tag(NAME, "audit.000001", "{}")
    with pytest.raises(AuditError, match="seq 1"):
        set_champion(client, NAME, v2, action="promote")
    assert get_champion_version(client, NAME) == v1


_WORKER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from mlflow import MlflowClient
    sys.path.insert(0, "tests")
    from conftest import small_params
    from fraudguard.config import parse_settings
    from fraudguard.gates.base import GateContext, GateResult, ModelUnderTest
    from fraudguard.promotion import promote_version

    uri, workdir, start_at = sys.argv[1], Path(sys.argv[2]), float(sys.argv[3])
    versions = [int(v) for v in sys.argv[4:]]
    settings = parse_settings(small_params())
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)

    def gate(candidate, context, section):
        time.sleep(0.2)  # long enough for the other process to be mid-promotion
        return GateResult("smoke", True, {}, {}, "ok")

    time.sleep(max(0.0, start_at - time.time()))  # both processes promote at the same instant
    for version in versions:
        context = GateContext(settings=settings, train_features=None, test_features=None, newest_window=None,
                              source_root=workdir, report_dir=workdir / f"v{version}")
        promote_version(client, workdir, settings, version=version, actor=f"proc-{versions[0]}",
                        gates={"smoke": gate}, candidate=ModelUnderTest(bundle=None, version=version),
                        context=context)
""")


@pytest.mark.slow
def test_two_concurrent_promotions_end_consistent(store, tmp_path):
    import time

    client, versions = store
    versions.append(register_version(client, NAME, tmp_path / "w3", b"weights-3", {"quality": "passed"}))
    uri = client.tracking_uri
    env = {**os.environ, "FRAUDGUARD_LOG_LEVEL": "WARNING"}
    start_at = time.time() + 10.0  # after both interpreters have imported mlflow
    procs = [subprocess.Popen([sys.executable, "-c", _WORKER, uri, str(tmp_path / f"proc{i}"), str(start_at),
                               *map(str, versions[i::2])],
                              cwd=PROJECT_ROOT, env=env, stderr=subprocess.PIPE, text=True)
             for i in (0, 1)]
    for proc in procs:
        _, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err
    history = champion_history(client, NAME)
    assert sorted(c.version for c in history) == sorted(versions)  # no lost entries
    assert [c.seq for c in history] == [1, 2, 3, 4]
    assert int(client.get_model_version_by_alias(NAME, CHAMPION_ALIAS).version) == history[-1].version
    # Each move saw the champion the previous move left: no update based on a stale read.
    assert [c.previous for c in history] == [None] + [c.version for c in history[:-1]]
    audit = verify_audit_log(client, NAME)
    assert audit.ok and audit.entries == 4
