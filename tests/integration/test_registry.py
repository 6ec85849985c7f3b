"""Journaled champion moves, recovery, lock and verification on a real sqlite MLflow store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from fraudguard.audit import AuditEvent
from fraudguard.errors import AuditError
from fraudguard.registry import (
    CHAMPION_ALIAS,
    ChampionChanged,
    append_entry,
    champion_history,
    get_champion_version,
    lock_path_for,
    move_champion,
    read_audit_log,
    read_state,
    recover,
    registry_lock,
)
from fraudguard.signing import load_signer
from fraudguard.verification import verify_registry

from registry_helpers import all_passing_gates, make_client, promote_with_gates, register_version

NAME = "fraudguard"
PROJECT_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def store(tmp_path, small_settings):
    client = make_client(tmp_path / "store")
    versions = [register_version(client, NAME, tmp_path / f"w{i}", f"weights-{i}".encode()) for i in range(3)]
    return client, versions, small_settings, tmp_path


@pytest.fixture
def keys():
    signer = load_signer()
    return signer, signer.verifier()


def _promote(store, version, actor="tester"):
    client, _, settings, tmp_path = store
    return promote_with_gates(client, NAME, version, settings, tmp_path, all_passing_gates(), actor=actor)


def test_no_champion_before_the_first_promotion(store):
    client, *_ = store
    assert get_champion_version(client, NAME) is None
    assert champion_history(client, NAME) == []


def test_a_move_is_an_intent_then_the_alias_then_a_commit(store):
    client, (v1, v2, _), _, _ = store
    _promote(store, v1, actor="alice")
    move = _promote(store, v2, actor="bob")
    assert get_champion_version(client, NAME) == v2
    audit = read_audit_log(client, NAME)
    assert [(e.action, e.phase, e.from_version, e.to_version) for e in audit] == [
        ("promote", "intent", None, v1), ("promote", "commit", None, v1),
        ("promote", "intent", v1, v2), ("promote", "commit", v1, v2)]
    assert audit[2].txid == audit[3].txid and audit[0].txid != audit[2].txid
    assert move.audit == audit[-1] and audit[-1].attestation == move.attestation
    history = champion_history(client, NAME)
    assert [(c.version, c.previous, c.actor) for c in history] == [(v1, None, "alice"), (v2, v1, "bob")]
    assert client.get_model_version(NAME, str(v2)).tags["fraudguard.status"] == "champion"
    assert client.get_model_version(NAME, str(v1)).tags["fraudguard.status"] == "retired"
    assert "## Champion history" in client.get_registered_model(NAME).description


def test_move_against_a_stale_champion_changes_nothing_and_says_to_re_gate(store, keys):
    client, (v1, v2, v3), _, _ = store
    first = _promote(store, v1)
    before = read_audit_log(client, NAME)
    with pytest.raises(ChampionChanged, match="re-gate"):
        move_champion(client, NAME, v3, action="promote", expected_current=v2, attestation=first.attestation,
                      signer=keys[0], verifier=keys[1])
    assert get_champion_version(client, NAME) == v1 and read_audit_log(client, NAME) == before


def test_lock_file_sits_next_to_the_sqlite_store(store):
    client, _, _, tmp_path = store
    assert lock_path_for(client) == tmp_path / "store" / "mlflow.db.fraudguard.lock"


def test_the_lock_of_a_server_registry_is_in_a_private_folder_not_the_shared_temporary_one(tmp_path, monkeypatch):
    # /tmp/fraudguard-registry-<digest>.lock had a predictable name: any local user could hold it and block every
    # promotion and rollback of that registry on the host.
    from mlflow import MlflowClient

    monkeypatch.delenv("FRAUDGUARD_REGISTRY_LOCK_DIR", raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    path = lock_path_for(MlflowClient(tracking_uri="http://mlflow.internal:5000",
                                      registry_uri="http://mlflow.internal:5000"))
    assert path.parent == tmp_path / "run" / "fraudguard" / "locks"
    assert path.parent.stat().st_mode & 0o077 == 0


def test_half_done_move_with_the_alias_moved_is_completed(store, keys):
    client, (v1, v2, _), _, _ = store
    first = _promote(store, v1)
    with registry_lock(client):  # what a crash right after the alias write leaves behind
        state = read_state(client, NAME, keys[1])
        append_entry(client, state, AuditEvent("promote", "intent", v1, v2, txid="crashed", attestation="x"), keys[0])
        client.set_registered_model_alias(NAME, CHAMPION_ALIAS, str(v2))
    assert not verify_registry(client, NAME, keys[1], check_files=False).ok
    (outcome,) = recover(client, NAME, *keys)
    assert outcome.kind == "completed" and get_champion_version(client, NAME) == v2
    last = read_audit_log(client, NAME)[-1]
    assert (last.phase, last.txid, last.recovered) == ("commit", "crashed", True)
    assert first.attestation  # v1's history entry still verifies; v2's forged attestation "x" does not
    report = verify_registry(client, NAME, keys[1], check_files=False)
    assert any("attestation" in p for p in report.problems)


def test_half_done_move_with_the_alias_not_moved_is_reverted(store, keys):
    client, (v1, v2, _), _, _ = store
    _promote(store, v1)
    with registry_lock(client):
        state = read_state(client, NAME, keys[1])
        append_entry(client, state, AuditEvent("promote", "intent", v1, v2, txid="crashed"), keys[0])
    (outcome,) = recover(client, NAME, *keys)
    assert outcome.kind == "reverted" and get_champion_version(client, NAME) == v1
    assert read_audit_log(client, NAME)[-1].phase == "abort"
    assert verify_registry(client, NAME, keys[1]).ok


def test_edited_audit_entry_in_the_store_is_detected(store, keys):
    client, (v1, v2, _), _, _ = store
    _promote(store, v1, actor="alice")
    _promote(store, v2, actor="alice")
    raw = json.loads(client.get_registered_model(NAME).tags["audit.000001"])
    raw["actor"] = "mallory"
    client.set_registered_model_tag(NAME, "audit.000001", json.dumps(raw))
    report = verify_registry(client, NAME, keys[1])
    assert not report.ok and "audit entry 1" in report.problems[0]


def test_trimmed_audit_log_is_detected_by_the_anchor(store, keys):
    client, (v1, v2, _), _, _ = store
    _promote(store, v1)
    _promote(store, v2)
    for seq in (3, 4):  # drop the newest move and put the alias back where the shorter log ends
        client.delete_registered_model_tag(NAME, f"audit.{seq:06d}")
    client.set_registered_model_alias(NAME, CHAMPION_ALIAS, str(v1))
    report = verify_registry(client, NAME, keys[1])
    assert not report.ok and "newest entries removed" in " ".join(report.problems)


def test_champion_move_refused_when_the_audit_log_was_tampered(store):
    client, (v1, v2, _), _, _ = store
    _promote(store, v1)
    client.set_registered_model_tag(NAME, "audit.000001", "{}")
    with pytest.raises(AuditError, match="seq 1"):
        _promote(store, v2)
    assert get_champion_version(client, NAME) == v1


_WORKER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from mlflow import MlflowClient
    sys.path.insert(0, "tests")
    sys.path.insert(0, "tests/integration")
    from conftest import small_params
    from fraudguard.config import parse_settings
    from fraudguard.errors import RegistryError
    from registry_helpers import all_passing_gates, promote_with_gates

    uri, workdir, start_at = sys.argv[1], Path(sys.argv[2]), float(sys.argv[3])
    versions = [int(v) for v in sys.argv[4:]]
    settings = parse_settings(small_params())
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    time.sleep(max(0.0, start_at - time.time()))  # both processes promote at the same instant
    for version in versions:
        while True:
            try:
                promote_with_gates(client, "fraudguard", version, settings, workdir, all_passing_gates(),
                                   actor=f"proc-{versions[0]}")
                break
            except RegistryError as exc:  # the other process moved the champion after our gates: re-gate
                assert "re-gate" in str(exc), exc
""")


@pytest.mark.slow
def test_two_concurrent_promotions_end_consistent_each_gated_against_what_it_replaced(store, keys):
    import time

    client, versions, _, tmp_path = store
    versions.append(register_version(client, NAME, tmp_path / "w3", b"weights-3"))
    env = {**os.environ, "FRAUDGUARD_LOG_LEVEL": "WARNING"}
    start_at = time.time() + 10.0  # after both interpreters have imported mlflow
    procs = [subprocess.Popen([sys.executable, "-c", _WORKER, client.tracking_uri, str(tmp_path / f"proc{i}"),
                               str(start_at), *map(str, versions[i::2])],
                              cwd=PROJECT_ROOT, env=env, stderr=subprocess.PIPE, text=True)
             for i in (0, 1)]
    for proc in procs:
        _, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err
    history = champion_history(client, NAME)
    assert sorted(c.version for c in history) == sorted(versions)  # no lost moves
    assert int(client.get_model_version_by_alias(NAME, CHAMPION_ALIAS).version) == history[-1].version
    # Each move started from the champion the previous move left: no update from a stale read.
    assert [c.previous for c in history] == [None] + [c.version for c in history[:-1]]
    report = verify_registry(client, NAME, keys[1])
    assert report.ok, report.problems
