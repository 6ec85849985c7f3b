"""What a reviewer sees in the MLflow UI after a promotion, read through the REST API the UI itself calls,
from a real `mlflow server` on 127.0.0.1."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from local_services import free_port, stop_process_group, wait_for_health
from mlflow import MlflowClient

from fraudguard.gates.drift import run_drift_gate
from fraudguard.gates.static_analysis import run_static_analysis_gate
from fraudguard.policy import policy_from_settings
from fraudguard.promotion import promote_version

from registry_helpers import EXPERIMENT, candidate_for, register_version, simple_context

NAME = "fraudguard"


@pytest.fixture
def server(tmp_path):
    port = free_port()
    home = tmp_path / "server"
    home.mkdir()
    mlflow_bin = Path(sys.executable).parent / "mlflow"
    log = (home / "server.log").open("w")
    proc = subprocess.Popen(
        [str(mlflow_bin), "server", "--backend-store-uri", f"sqlite:///{home / 'mlflow.db'}",
         "--artifacts-destination", str(home / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"],
        cwd=home, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, "MLFLOW_TRACKING_URI": ""},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_health(f"{url}/health", proc, home / "server.log", "mlflow server")
        yield url
    finally:
        stop_process_group(proc, signal.SIGTERM, timeout_s=20)  # gunicorn/uvicorn workers too
        log.close()


def _get(url: str, endpoint: str, **params) -> dict:
    with urllib.request.urlopen(f"{url}{endpoint}?{urllib.parse.urlencode(params)}", timeout=30) as resp:
        return json.loads(resp.read())


def _clean_source(root: Path) -> Path:
    for rel in ("src/pkg/core.py", "flows/flow.py"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("def add(a: int, b: int) -> int:\n    return a + b\n")
    return root


@pytest.mark.slow
def test_reviewer_sees_gate_table_lineage_and_reports(server, tmp_path, small_settings):
    client = MlflowClient(tracking_uri=server, registry_uri=server)
    client.create_experiment(EXPERIMENT)
    version = register_version(client, NAME, tmp_path / "w", b"weights-1")
    report_dir = tmp_path / "reports"
    report_dir.mkdir()
    context = simple_context(small_settings, _clean_source(tmp_path / "repo"), report_dir)
    outcome = promote_version(client, tmp_path, small_settings, version=version, actor="reviewer-test",
                              gates={"static_analysis": run_static_analysis_gate, "drift": run_drift_gate},
                              candidate=candidate_for(client, NAME, version), context=context,
                              policy=policy_from_settings(small_settings, "test"))
    assert outcome.promoted, [r.reason for r in outcome.results]

    mv = _get(server, "/api/2.0/mlflow/model-versions/get", name=NAME, version=str(version))["model_version"]
    assert "| static_analysis | passed |" in mv["description"] and "| drift | passed |" in mv["description"]
    tags = {t["key"]: t["value"] for t in mv["tags"]}
    assert tags["lineage.git_commit"] == "0123abcd" and len(tags["artifact.sha256"]) == 64
    assert tags["gate.static_analysis"] == "passed" and tags["gate.drift"] == "passed"

    champion = _get(server, "/api/2.0/mlflow/registered-models/alias", name=NAME, alias="champion")
    assert champion["model_version"]["version"] == str(version)

    run_id = mv["run_id"]
    listed = {f["path"] for sub in ("gates", "gates/static_analysis", "gates/drift")
              for f in _get(server, "/api/2.0/mlflow/artifacts/list", run_id=run_id, path=sub).get("files", [])}
    assert {"gates/gate_summary.json", "gates/static_analysis/bandit.json",
            "gates/drift/drift_vs_newest_window.html"} <= listed
