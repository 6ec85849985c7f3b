"""Human-facing summaries of a pipeline run (Prefect artifacts, `fraudguard run` output)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fraudguard.promotion import PromotionOutcome


def mlflow_links(experiment_id: str, run_id: str, version: int, model_name: str = "fraudguard") -> tuple[str, str]:
    """Links to the run and the model version in the MLflow UI; a local store is assumed to be served
    by `mlflow ui` on its default port."""
    uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    base = uri.rstrip("/") if uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000"
    return (f"{base}/#/experiments/{experiment_id}/runs/{run_id}",
            f"{base}/#/models/{model_name}/versions/{version}")


def promotion_markdown(outcome: "PromotionOutcome", record: Mapping[str, Any], data_md5: str,
                       stages: Mapping[str, Any]) -> str:
    """Markdown for the train-and-promote Prefect artifact: verdict, gate table, MLflow links, lineage."""
    from fraudguard.promotion import gate_table_markdown

    run_link, version_link = mlflow_links(str(record.get("experiment_id", "0")), str(record["run_id"]),
                                          int(record["version"]))
    if outcome.failed_gates:
        verdict = f"**Blocked** by {', '.join(outcome.failed_gates)}; champion stays v{outcome.champion_before}"
    elif outcome.dry_run:
        verdict = "Dry run: every gate passed; champion unchanged"
    else:
        verdict = f"**Promoted**: champion v{outcome.champion_before} -> v{outcome.champion_after}"
    metrics = record.get("metrics", {})
    metric_rows = "\n".join(f"| {k} | {v:.4f} |" for k, v in sorted(metrics.items())
                            if k.startswith("eval.") and isinstance(v, (int, float)))
    return "\n".join([
        f"# fraudguard version {record['version']}",
        "",
        verdict,
        "",
        f"- MLflow run: [{record['run_id']}]({run_link})",
        f"- Model version: [fraudguard/{record['version']}]({version_link})",
        f"- Data (data/raw md5): `{data_md5}`",
        f"- DVC stages run: {', '.join(stages.get('ran', [])) or 'none (all up to date)'}",
        "",
        gate_table_markdown(outcome.version, outcome.results),
        "",
        "| Metric | Value |",
        "|---|---|",
        metric_rows or "| (none) | |",
    ])
