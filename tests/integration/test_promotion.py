"""Gated promotion and rollback against a real sqlite MLflow store (custom gates where ML gates don't matter)."""

from __future__ import annotations

import threading

import pytest

from fraudguard.audit import read_audit_log, verify_audit_log
from fraudguard.config import parse_settings
from fraudguard.errors import PromotionBlocked, RegistryError
from fraudguard.gates.base import GateResult
from fraudguard.promotion import discover_gates, previous_champion, promote_version, rollback
from fraudguard.registry import ChampionChange, champion_history, get_champion_version

from conftest import small_params
from registry_helpers import (
    artifact_file,
    candidate_for,
    failing_gate,
    make_client,
    passing_gate,
    register_version,
    simple_context,
)

NAME = "fraudguard"


@pytest.fixture
def world(tmp_path, small_settings):
    client = make_client(tmp_path / "store")
    versions = [register_version(client, NAME, tmp_path / f"w{i}", f"weights-{i}".encode()) for i in range(3)]
    return client, versions, small_settings, tmp_path


def _promote(world, version, gates, promote=True):
    client, _, settings, tmp_path = world
    report_dir = tmp_path / "reports" / f"v{version}"
    report_dir.mkdir(parents=True, exist_ok=True)
    return promote_version(client, tmp_path, settings, version=version, promote=promote, actor="tester",
                           gates=gates, candidate=candidate_for(client, NAME, version),
                           context=simple_context(settings, tmp_path, report_dir))


def _ok_gates(report_dir=None):
    return {"quality": passing_gate("quality", report_dir), "privacy": passing_gate("privacy")}


def _snapshot(client, version):
    """Everything a failed promotion must leave alone: champion alias, its tags, history."""
    return (get_champion_version(client, NAME), dict(client.get_model_version(NAME, str(version)).tags),
            champion_history(client, NAME))


def test_all_gates_passing_moves_champion_and_challenger_and_audits(world):
    client, (v1, _, _), _, tmp_path = world
    outcome = _promote(world, v1, _ok_gates())
    assert outcome.promoted and outcome.champion_after == v1
    model = client.get_registered_model(NAME)
    assert model.aliases == {"champion": v1, "challenger": v1} or \
        {k: int(v) for k, v in model.aliases.items()} == {"champion": v1, "challenger": v1}
    entry = read_audit_log(client, NAME)[-1]
    assert (entry.action, entry.to_version, entry.actor) == ("promote", v1, "tester")
    assert entry.gates == {"quality": "passed", "privacy": "passed"}


def test_verdicts_are_recorded_as_tags_table_and_run_artifacts(world):
    client, (v1, _, _), _, tmp_path = world
    report_dir = tmp_path / "reports" / f"v{v1}"
    report_dir.mkdir(parents=True)
    _promote(world, v1, _ok_gates(report_dir))
    mv = client.get_model_version(NAME, str(v1))
    assert mv.tags["gate.quality"] == "passed" and mv.tags["gate.privacy"] == "passed"
    assert "| quality | passed |" in mv.description
    logged = {a.path for a in client.list_artifacts(mv.run_id, "gates/quality")}
    assert "gates/quality/quality_report.json" in logged
    assert "gates/gate_summary.json" in {a.path for a in client.list_artifacts(mv.run_id, "gates")}


def test_failing_gate_leaves_champion_exactly_as_it_was(world):
    client, (v1, v2, _), _, _ = world
    _promote(world, v1, _ok_gates())
    before = _snapshot(client, v1)
    with pytest.raises(PromotionBlocked, match="robustness") as blocked:
        _promote(world, v2, {**_ok_gates(), "robustness": failing_gate("robustness")})
    assert _snapshot(client, v1) == before
    assert blocked.value.failed_gates == ["robustness"]
    tags = client.get_model_version(NAME, str(v2)).tags
    assert tags["fraudguard.status"] == "blocked" and "robustness" in tags["fraudguard.blocked_reasons"]
    assert tags["gate.robustness"] == "failed"
    last = read_audit_log(client, NAME)[-1]
    assert (last.action, last.from_version, last.to_version) == ("block", v1, v2)
    assert "alias" not in str(client.get_registered_model(NAME).aliases.get("challenger", ""))
    assert int(client.get_registered_model(NAME).aliases["challenger"]) == v1


def test_gate_that_raises_counts_as_failed_with_the_error_as_reason(world):
    client, (v1, _, _), _, _ = world

    def exploding(candidate, context, settings) -> GateResult:
        raise ValueError("feature matrix has NaN in column TX_AMOUNT")

    with pytest.raises(PromotionBlocked) as blocked:
        _promote(world, v1, {**_ok_gates(), "exploding": exploding})
    assert blocked.value.failed_gates == ["exploding"]
    assert "NaN in column TX_AMOUNT" in blocked.value.reasons[0]
    assert get_champion_version(client, NAME) is None


def test_gates_run_concurrently(world):
    client, (v1, _, _), _, _ = world
    barrier = threading.Barrier(2, timeout=20)

    def meeting(name):
        def run(candidate, context, settings) -> GateResult:
            barrier.wait()  # only returns if the other gate runs at the same time
            return GateResult(name, True, {}, {}, "met the other gate")
        return run

    outcome = _promote(world, v1, {"a": meeting("a"), "b": meeting("b")})
    assert outcome.promoted and [r.passed for r in outcome.results] == [True, True]


def test_dry_run_tags_the_version_but_moves_no_alias(world):
    client, (v1, _, _), _, _ = world
    outcome = _promote(world, v1, _ok_gates(), promote=False)
    assert outcome.dry_run and not outcome.promoted
    assert client.get_registered_model(NAME).aliases == {}
    assert client.get_model_version(NAME, str(v1)).tags["gate.quality"] == "passed"
    assert read_audit_log(client, NAME) == []


def test_promote_defaults_to_the_newest_version(world):
    client, (_, _, v3), settings, tmp_path = world
    report_dir = tmp_path / "reports" / "newest"
    report_dir.mkdir(parents=True)
    outcome = promote_version(client, tmp_path, settings, gates=_ok_gates(),
                              candidate=candidate_for(client, NAME, v3),
                              context=simple_context(settings, tmp_path, report_dir))
    assert outcome.version == v3 and get_champion_version(client, NAME) == v3


def test_rollback_restores_the_previous_champion_and_is_audited(world):
    client, (v1, v2, _), settings, _ = world
    _promote(world, v1, _ok_gates())
    _promote(world, v2, _ok_gates())
    outcome = rollback(client, settings, reason="v2 flags every night transaction", actor="oncall")
    assert (outcome.from_version, outcome.to_version) == (v2, v1)
    assert get_champion_version(client, NAME) == v1
    assert client.get_model_version(NAME, str(v2)).tags["fraudguard.status"] == "rolled_back_from"
    last = read_audit_log(client, NAME)[-1]
    assert (last.action, last.from_version, last.to_version, last.actor) == ("rollback", v2, v1, "oncall")
    assert last.reasons == ("v2 flags every night transaction",)
    assert champion_history(client, NAME)[-1].action == "rollback"
    assert verify_audit_log(client, NAME).ok


def test_rollback_to_altered_weights_is_refused_and_changes_nothing(world):
    client, (v1, v2, _), settings, _ = world
    _promote(world, v1, _ok_gates())
    _promote(world, v2, _ok_gates())
    artifact_file(client, NAME, v1).write_bytes(b"weights swapped by an attacker")
    before = (_snapshot(client, v2), read_audit_log(client, NAME))
    with pytest.raises(RegistryError, match=f"version {v1}.*sha256"):
        rollback(client, settings)
    assert (_snapshot(client, v2), read_audit_log(client, NAME)) == before


def test_rollback_to_a_version_that_failed_a_gate_is_refused(world):
    client, (v1, v2, v3), settings, _ = world
    _promote(world, v1, _ok_gates())
    with pytest.raises(PromotionBlocked):
        _promote(world, v2, {"quality": failing_gate("quality")})
    with pytest.raises(RegistryError, match="failed gate"):
        rollback(client, settings, to_version=v2)
    assert get_champion_version(client, NAME) == v1


def test_rollback_without_history_names_the_way_out(world):
    client, (v1, _, _), settings, _ = world
    _promote(world, v1, _ok_gates())
    with pytest.raises(RegistryError, match="--to"):
        rollback(client, settings)


def test_previous_champion_skips_versions_rolled_back_from():
    def change(seq, version, previous, action):
        return ChampionChange(seq, version, previous, action, "t", "a")

    history = [change(1, 1, None, "promote"), change(2, 2, 1, "promote"), change(3, 3, 2, "promote"),
               change(4, 2, 3, "rollback")]
    assert previous_champion(history, current=2) == 1
    assert previous_champion(history + [change(5, 3, 2, "promote")], current=3) == 2


def test_gates_are_discovered_from_params_sections(small_settings):
    gates = discover_gates(small_settings)
    assert list(gates) == list(small_settings.gates.model_dump())
    from fraudguard.gates.drift import run_drift_gate
    from fraudguard.gates.static_analysis import run_static_analysis_gate
    assert gates["drift"] is run_drift_gate and gates["static_analysis"] is run_static_analysis_gate
