"""The train-and-promote Prefect artifact: what an operator reads after a run."""

from __future__ import annotations

from fraudguard.gates.base import GateResult
from fraudguard.promotion import PromotionOutcome
from fraudguard.reporting import mlflow_links, promotion_markdown

PASSED = (GateResult(name="quality", passed=True, metrics={"average_precision": 0.61}, thresholds={},
                     reason="ap 0.61 >= 0.3"),)


def _outcome(champion_before, results=PASSED, **kwargs):
    promoted = all(r.passed for r in results)
    return PromotionOutcome(version=1, promoted=promoted, dry_run=False, blocked=not promoted,
                            champion_before=champion_before,
                            champion_after=1 if promoted else champion_before, results=results, **kwargs)


def _record(tracking_uri):
    return {"version": 1, "run_id": "abc123", "experiment_id": "2", "tracking_uri": tracking_uri,
            "model_name": "fraudguard", "metrics": {"eval.average_precision": 0.61}}


def test_first_promotion_says_there_was_no_previous_champion():
    text = promotion_markdown(_outcome(None), _record("sqlite:///p/mlflow.db"), "feed.dir", {"ran": ["train"]})
    assert "None" not in text
    assert "**Promoted**: v1 is the first champion (no previous champion)" in text
    assert "champion unchanged (no previous champion)" in promotion_markdown(
        _outcome(None, (GateResult(name="drift", passed=False, metrics={}, thresholds={}, reason="drifted"),)),
        _record("sqlite:///p/mlflow.db"), "feed.dir", {})


def test_links_point_at_the_configured_tracking_server():
    text = promotion_markdown(_outcome(3), _record("http://mlflow.internal:8443/"), "feed.dir", {})
    assert "champion v3 -> v1" in text
    # ?workflowType=machine_learning: MLflow 3's UI would open the GenAI pages otherwise
    assert "(http://mlflow.internal:8443/#/experiments/2/runs/abc123?workflowType=machine_learning)" in text
    assert "(http://mlflow.internal:8443/#/models/fraudguard/versions/1?workflowType=machine_learning)" in text
    assert ":5000" not in text


def test_a_local_store_gets_the_command_that_opens_it_not_a_guessed_link():
    text = promotion_markdown(_outcome(3), _record("sqlite:////srv/p/mlflow.db"), "feed.dir", {})
    assert ("`mlflow ui --backend-store-uri sqlite:////srv/p/mlflow.db`, then "
            "http://127.0.0.1:5000/#/experiments/2?workflowType=machine_learning") in text


def test_links_never_carry_credentials_from_the_tracking_uri():
    run_link, _ = mlflow_links("https://bot:s3cret@mlflow.example/", "2", "abc", 1)
    assert run_link == "https://mlflow.example/#/experiments/2/runs/abc?workflowType=machine_learning"
