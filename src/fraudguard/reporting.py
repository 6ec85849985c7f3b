"""Human-facing summaries of a pipeline run (Prefect artifacts, `fraudguard run` output)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from fraudguard.gates.base import GateResult


class PromotionVerdict(Protocol):
    """What promotion_markdown reads of a promotion attempt (fraudguard.promotion.PromotionOutcome); a protocol,
    so that this module of summaries does not depend on the promotion module, which uses its tables."""

    @property
    def version(self) -> int: ...
    @property
    def dry_run(self) -> bool: ...
    @property
    def champion_before(self) -> int | None: ...
    @property
    def champion_after(self) -> int | None: ...
    @property
    def results(self) -> "tuple[GateResult, ...]": ...
    @property
    def failed_gates(self) -> list[str]: ...


# MLflow 3.17's UI opens an experiment on its GenAI pages (traces overview) unless the URL, or the browser's
# last choice, picks its "Model training" view; the experiment tag mlflow.experimentKind alone does not.
# Every link fraudguard hands out picks that view.
UI_VIEW_QUERY = "?workflowType=machine_learning"
LOCAL_UI = "http://127.0.0.1:5000"  # where `mlflow ui` serves by default
# The gate table's heading in a model version's description (promotion replaces the section below it).
GATE_SECTION_TITLE = "## Gate verdicts"
MAX_DESCRIPTION_CHARS = 4900  # model_versions.description is VARCHAR(5000) in SQL stores


def champion_label(version: int | None) -> str:
    """`v3`, or `no previous champion` before the first promotion (never `vNone`)."""
    return "no previous champion" if version is None else f"v{version}"


def ui_base(tracking_uri: str) -> str:
    """The MLflow UI's address for a tracking URI: the server itself (never its user:password@), or where
    `mlflow ui` serves a SQLite store by default."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(tracking_uri)
    if parts.scheme not in ("http", "https"):
        return LOCAL_UI
    return urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path.rstrip("/"), "", ""))


def mlflow_links(tracking_uri: str, experiment_id: str, run_id: str, version: int,
                 model_name: str = "fraudguard") -> tuple[str, str] | None:
    """Links to the run and the model version in the MLflow UI of the tracking server the run was logged to;
    None for a store no server answers for (a SQLite file: `mlflow ui` serves it wherever it is started)."""
    if not tracking_uri.startswith(("http://", "https://")):
        return None
    base = ui_base(tracking_uri)
    return (f"{base}/#/experiments/{experiment_id}/runs/{run_id}{UI_VIEW_QUERY}",
            f"{base}/#/models/{model_name}/versions/{version}{UI_VIEW_QUERY}")


def _fmt_metrics(metrics: Mapping[str, float], limit: int = 4) -> str:
    items = list(metrics.items())[:limit]
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in items)


def gate_table_markdown(version: int, results: "tuple[GateResult, ...]") -> str:
    """The gate verdicts as a markdown table, compact enough for a model version description."""
    verdict = "all gates passed" if all(r.passed for r in results) else \
        "BLOCKED by " + ", ".join(r.name for r in results if not r.passed)
    lines = [GATE_SECTION_TITLE, "", f"Version {version}: {verdict}.", "",
             "| Gate | Verdict | Reason | Metrics |", "|---|---|---|---|"]
    budget = max(60, (MAX_DESCRIPTION_CHARS - 600) // max(1, len(results)) - 80)
    for r in results:
        reason = " ".join(r.reason.split()).replace("|", "/")
        metrics = _fmt_metrics(r.metrics).replace("|", "/")
        if len(reason) > budget * 2 // 3:
            reason = reason[: budget * 2 // 3 - 3] + "..."
        lines.append(f"| {r.name} | {'passed' if r.passed else '**failed**'} | {reason} | {metrics[: budget // 3]} |")
    return "\n".join(lines)


def promotion_markdown(outcome: PromotionVerdict, record: Mapping[str, Any], data_md5: str,
                       stages: Mapping[str, Any]) -> str:
    """Markdown for the train-and-promote Prefect artifact: verdict, gate table, MLflow links, lineage."""
    tracking_uri = str(record.get("tracking_uri", ""))
    model_name = str(record.get("model_name", "fraudguard"))
    links = mlflow_links(tracking_uri, str(record.get("experiment_id", "0")), str(record["run_id"]),
                         int(record["version"]), model_name)
    if links is not None:
        where = [f"- MLflow run: [{record['run_id']}]({links[0]})",
                 f"- Model version: [{model_name}/{record['version']}]({links[1]})"]
    else:
        where = [f"- MLflow run `{record['run_id']}`, model version `{model_name}/{record['version']}`: "
                 f"open the store with `mlflow ui --backend-store-uri {tracking_uri or 'sqlite:///mlflow.db'}`, "
                 f"then {LOCAL_UI}/#/experiments/{record.get('experiment_id', '0')}{UI_VIEW_QUERY}"]
    before = champion_label(outcome.champion_before)
    if outcome.failed_gates:
        verdict = f"**Blocked** by {', '.join(outcome.failed_gates)}; champion unchanged ({before})"
    elif outcome.dry_run:
        verdict = f"Dry run: every gate passed; champion unchanged ({before})"
    elif outcome.champion_before is None:
        verdict = f"**Promoted**: v{outcome.champion_after} is the first champion ({before})"
    else:
        verdict = f"**Promoted**: champion {before} -> v{outcome.champion_after}"
    metrics = record.get("metrics", {})
    metric_rows = "\n".join(f"| {k} | {v:.4f} |" for k, v in sorted(metrics.items())
                            if k.startswith("eval.") and isinstance(v, (int, float)))
    return "\n".join([
        f"# {model_name} version {record['version']}",
        "",
        verdict,
        "",
        *where,
        f"- Data (data/raw md5): `{data_md5}`",
        f"- DVC stages run: {', '.join(stages.get('ran', [])) or 'none (all up to date)'}",
        "",
        gate_table_markdown(outcome.version, outcome.results),
        "",
        "| Metric | Value |",
        "|---|---|",
        metric_rows or "| (none) | |",
    ])
