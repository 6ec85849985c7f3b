"""Scheduled drift monitoring: the newest window of all traffic against the champion's training reference."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from fraudguard.files import write_json
from fraudguard.errors import DataError, FraudGuardError, RegistryError
from fraudguard.paths import ProjectPaths

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from fraudguard.explanations import ControlledAttribution

    import pandas as pd

    from fraudguard.config import Settings, ValidateSettings
    from fraudguard.gates.drift import DriftComparison
    from fraudguard.signing import Verifier

logger = logging.getLogger(__name__)

# Attestations signed before the drift reference became a subject (REFERENCE_SUBJECT) cannot check it: said so.
REFERENCE_UNVERIFIED = ("drift reference not verified: the version's signed attestation has no digest of its "
                        "training reference sample (signed before it was a subject), so it is read from the "
                        "tracking store as is")


def verified_champion(client: "MlflowClient", name: str, verifier: "Verifier | None" = None) -> tuple[int, str]:
    """(version, attestation sha256) of the champion as the gateway resolves it (serving.champion.resolve_champion:
    the signed audit chain's last committed move, not the editable alias); RegistryError when there is none or it
    does not verify."""
    from fraudguard.registry import get_champion_version
    from fraudguard.serving.champion import resolve_champion
    from fraudguard.signing import load_verifier

    try:
        alias = get_champion_version(client, name)
    except RegistryError as exc:  # no registered model at all yet
        raise RegistryError(f"model {name!r} has no champion: nothing to monitor yet ({exc})") from exc
    if alias is None:
        raise RegistryError(f"model {name!r} has no champion: nothing to monitor yet")
    try:
        return resolve_champion(client, name, verifier or load_verifier())
    except FraudGuardError as exc:
        raise RegistryError(f"model {name!r}: champion v{alias} does not verify, not monitored: {exc}") from exc


def verified_reference(client: "MlflowClient", name: str, version: int, digest: str,
                       verifier: "Verifier") -> tuple["pd.DataFrame", bool]:
    """The version's drift reference and whether it was checked: against the reference digest of its signed
    attestation `digest` when that holds one (ModelError when the file differs); attestations signed before
    the reference was a subject hold none, and the reference is then read as is (False, with a warning)."""
    from fraudguard.attestation import REFERENCE_SUBJECT, load_attestation
    from fraudguard.registry import get_version
    from fraudguard.tracking import load_reference_features

    expected = load_attestation(get_version(client, name, version), digest, verifier).subjects.get(REFERENCE_SUBJECT)
    if expected is None:
        logger.warning("model %r version %s: %s", name, version, REFERENCE_UNVERIFIED)
    return load_reference_features(client, name, version, expected_sha256=expected), expected is not None


def _reference_tags(verified: bool) -> dict[str, str]:
    return {"fraudguard.reference_verified": str(verified).lower(),
            **({} if verified else {"fraudguard.reference_note": REFERENCE_UNVERIFIED})}


def _load_verified_bundle(client: "MlflowClient", name: str, version: int, settings: "Settings",
                          verifier: "Verifier", work_dir: Path):
    """The bundle of `version` loaded as the gateway loads it (serving.champion.load_verified: its files checked
    against the signed attestation its newest committed move recorded); None when no committed move of it
    records one."""
    import shutil

    from fraudguard.data.schema import TX_AMOUNT
    from fraudguard.features import feature_names
    from fraudguard.registry import read_state
    from fraudguard.serving.champion import load_verified

    digests = {change.version: change.attestation for change in read_state(client, name, verifier).history
               if change.attestation}
    if version not in digests:
        return None
    served = load_verified(client, name, version, digests[version], verifier, work_dir,
                           set(feature_names(settings.featurize)) | {TX_AMOUNT})
    shutil.rmtree(served.model_dir, ignore_errors=True)
    return served.bundle, digests[version]


@dataclass(frozen=True)
class DriftCheck:
    """Outcome of one monitoring pass; `drifted` is True when the share exceeds the threshold."""

    champion_version: int
    drift_share: float
    threshold: float
    drifted_columns: tuple[str, ...]
    drifted_controlled: tuple[str, ...]
    n_reference: int
    n_current: int
    report_path: Path
    run_id: str
    reference_verified: bool = False  # checked against the attestation's reference digest (verified_reference)
    # The window held fewer than monitor.min_rows rows: not compared (drift_share NaN), never drifted.
    too_few_rows: bool = False

    @property
    def drifted(self) -> bool:
        return not self.too_few_rows and self.drift_share > self.threshold


def check_champion_drift(client: "MlflowClient", root: Path, settings: "Settings",
                         report_dir: Path | None = None, verifier: "Verifier | None" = None) -> DriftCheck:
    """Compare the newest `monitor.window_days` of all featurized traffic after training (unfiltered) with the
    champion's training reference (found through its MLflow lineage); log the report and numbers to an MLflow run."""
    import mlflow
    import pandas as pd

    from fraudguard.features import newest_window
    from fraudguard.signing import load_verifier
    from fraudguard.tracking import ensure_experiment

    name = settings.registry.model_name
    champion, digest = verified_champion(client, name, verifier)  # "no champion" before any key is needed
    verifier = verifier or load_verifier()
    paths = ProjectPaths.at(root)
    # All traffic after training, unfiltered (featurize's recent.parquet): the evaluation test set lacks
    # known-compromised cards, and the training split's first days hold the feature warm-up.
    if not paths.recent_features.is_file():
        raise DataError(f"{paths.recent_features}: recent traffic not found; run `dvc repro featurize` first")
    current = newest_window(pd.read_parquet(paths.recent_features), settings.monitor.window_days)
    reference, reference_verified = verified_reference(client, name, champion, digest, verifier)
    report_dir = report_dir or paths.reports_dir / "monitor"
    threshold = settings.monitor.drift_share_threshold
    comparison = _compare_or_too_few(reference, current, settings, report_dir / f"drift_champion_v{champion}.html",
                                     "newest_window")
    controlled = tuple(sorted(set(settings.threat_model.controlled_features) & set(comparison.drifted_columns)))

    experiment_id = ensure_experiment(client, settings.monitor.experiment)
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"drift-v{champion}") as run:
        mlflow.set_tags({"fraudguard.kind": "drift-monitor", "fraudguard.champion_version": str(champion),
                         "fraudguard.champion_verified": "true", **_reference_tags(reference_verified)})
        too_few = comparison.report_path is None
        mlflow.log_metrics({"drift_rows": float(comparison.n_current),
                            **({} if too_few else {"drift_share": comparison.drift_share,
                                                   "drifted_columns": float(len(comparison.drifted_columns)),
                                                   "drifted_controlled": float(len(controlled))})})
        mlflow.log_params({"window_days": settings.monitor.window_days, "threshold": threshold,
                           "min_rows": settings.monitor.min_rows})
        if too_few:
            mlflow.set_tag("fraudguard.drift", "too few rows to judge")
        else:
            mlflow.log_artifact(str(comparison.report_path), artifact_path="drift")
    check = DriftCheck(champion, comparison.drift_share, threshold, comparison.drifted_columns, controlled,
                       comparison.n_reference, comparison.n_current, comparison.report_path, run.info.run_id,
                       reference_verified=reference_verified, too_few_rows=too_few)
    if too_few:
        logger.warning("champion v%s: the last %s days hold %d row(s), fewer than monitor.min_rows %d: drift not "
                       "judged", champion, settings.monitor.window_days, comparison.n_current,
                       settings.monitor.min_rows)
    else:
        logger.info("champion v%s: %.0f%% of features drifted over the last %s days (threshold %.0f%%)%s",
                    champion, 100 * check.drift_share, settings.monitor.window_days, 100 * threshold,
                    f"; attacker-controlled: {', '.join(controlled)}" if controlled else "")
    return check


def _compare_or_too_few(reference: "pd.DataFrame", current: "pd.DataFrame", settings: "Settings", report: Path,
                        label: str) -> "DriftComparison":
    """Evidently's comparison of the model features, or (fewer rows than monitor.min_rows on either side) a
    comparison that was not made: drift share NaN, no report (report_path None)."""
    from fraudguard.gates.drift import DriftComparison, compare_features

    if min(len(reference), len(current)) < settings.monitor.min_rows:
        return DriftComparison(label, float("nan"), (), len(reference), len(current), None)
    return compare_features(reference, current, list(settings.model.features),
                            settings.monitor.drift_share_threshold, report, label)


@dataclass(frozen=True)
class LiveCheck:
    """The gateway's live traffic over the newest window: drift against the champion's training reference,
    the flag rate, and volume bursts per terminal."""

    champion_version: int
    n_decisions: int
    flag_rate: float
    drift_share: float
    threshold: float
    drifted_columns: tuple[str, ...]
    drifted_controlled: tuple[str, ...]
    bursts: tuple[dict, ...]
    report_path: Path
    run_id: str
    attribution: "ControlledAttribution | None" = None  # None: no flagged decision in the window
    explained_version: int | None = None
    # Days a customer or terminal went far beyond its own history (validate's burst rule on live traffic).
    relative_bursts: tuple[dict, ...] = ()
    # Terminals with recent known frauds whose live volume went beyond validate.dilution_factor x their usual.
    terminal_dilution: tuple[dict, ...] = ()
    # Prediction-log lines that were not a readable decision (torn or edited): skipped, counted, logged.
    log_lines_skipped: int = 0
    # The champion is resolved and its weights loaded as the gateway does (signed attestation); the drift reference
    # is checked against the attestation's digest of it, where the attestation holds one (verified_reference).
    reference_verified: bool = False
    # Fewer decisions than monitor.min_rows in the window: drift not compared (NaN), never drifted.
    too_few_rows: bool = False

    @property
    def drifted(self) -> bool:
        return not self.too_few_rows and self.drift_share > self.threshold

    @property
    def controlled_attribution_alert(self) -> bool:
        """Attacker-controlled features dominate the flagged live decisions more than the flagged training rows."""
        return self.attribution is not None and self.attribution.alert


def explain_flagged_traffic(client: "MlflowClient", current: "pd.DataFrame", settings: "Settings",
                            work_dir: Path, verifier: "Verifier | None" = None
                            ) -> tuple[int | None, "ControlledAttribution | None"]:
    """Attacker-controlled share of the attributions of the window's flagged decisions against the flagged rows
    of the training reference, with the version that made most of the flagged decisions, loaded as the gateway
    loads it (files checked against its signed attestation). (None, None) when nothing was flagged, or when that
    version has no committed move with an attestation (a warning says so)."""
    from fraudguard.explanations import compare_controlled_attribution
    from fraudguard.signing import load_verifier

    flagged = current[current["decision"].astype(bool)]
    if flagged.empty:
        return None, None
    version = int(flagged["model_version"].astype(int).value_counts().idxmax())
    name, monitor = settings.registry.model_name, settings.monitor
    verifier = verifier or load_verifier()
    loaded = _load_verified_bundle(client, name, version, settings, verifier, work_dir)
    if loaded is None:
        logger.warning("model %r version %s made most flagged live decisions but no committed move of it records "
                       "a signed attestation: its attributions are not computed", name, version)
        return None, None
    bundle, digest = loaded
    reference, _ = verified_reference(client, name, version, digest, verifier)
    comparison = compare_controlled_attribution(
        bundle, reference,
        flagged[flagged["model_version"].astype(int) == version], settings.threat_model.controlled_features,
        monitor.controlled_attribution_margin, monitor.max_explained_rows, settings.serve.explain_steps)
    return version, comparison


def live_volume_bursts(decisions: "pd.DataFrame", history: "pd.DataFrame | None",
                       settings: "ValidateSettings") -> list[dict]:
    """The validation burst rule (fraudguard.data.validation.volume_bursts) on live traffic: each customer's and
    terminal's daily decisions against its own history, the history being the `burst_history_days` of
    `history` (e.g. the validated training data) before the log starts plus the log's own earlier days.
    Dilution shows here even when it never reaches training. Bursts on the log's days, largest first."""
    import pandas as pd

    from fraudguard.data import schema
    from fraudguard.data.validation import volume_bursts

    if decisions.empty:
        return []
    columns = [schema.TX_DATETIME, schema.CUSTOMER_ID, schema.TERMINAL_ID]
    live = decisions[columns]
    start = live[schema.TX_DATETIME].min().floor("D")
    frames = [live]
    if history is not None and len(history):
        earlier = history.loc[(history[schema.TX_DATETIME] < start) & (
            history[schema.TX_DATETIME] >= start - pd.Timedelta(days=settings.burst_history_days)), columns]
        frames.insert(0, earlier)
    bursts = volume_bursts(pd.concat(frames, ignore_index=True), settings)
    bursts = bursts[bursts["day"] >= start].sort_values("count", ascending=False)
    return [{"entity": r.entity, "id": int(r.id), "day": str(pd.Timestamp(r.day).date()), "count": int(r.count),
             "baseline": round(float(r.baseline), 3)} for r in bursts.itertuples(index=False)]


def live_terminal_dilution(decisions: "pd.DataFrame", history: "pd.DataFrame | None",
                           settings: "ValidateSettings") -> list[dict]:
    """Validation's terminal_dilution rule turned to live traffic, where later frauds are not known yet: a
    terminal with a known fraud (history's labels) in the dilution_horizon_days before the log starts, whose
    decisions over a dilution_window_days window of the log exceed max(dilution_min_rows, dilution_factor x its
    usual count: the median such window over that horizon of history). Payments added to lower its risk before
    it serves more frauds show here whether or not they ever reach training. One entry per terminal (its
    largest window), largest first."""
    import numpy as np
    import pandas as pd

    from fraudguard.data import schema

    if decisions.empty or history is None or history.empty or schema.TX_FRAUD not in history.columns:
        return []
    start = decisions[schema.TX_DATETIME].min().floor("D")
    horizon, k = pd.Timedelta(days=settings.dilution_horizon_days), settings.dilution_window_days
    past = history[(history[schema.TX_DATETIME] < start) & (history[schema.TX_DATETIME] >= start - horizon)]
    risky = past.loc[past[schema.TX_FRAUD] == 1, schema.TERMINAL_ID].unique()
    live = decisions[decisions[schema.TERMINAL_ID].isin(risky)]
    if live.empty:
        return []
    columns = [schema.TX_DATETIME, schema.TERMINAL_ID]
    rows = pd.concat([past.loc[past[schema.TERMINAL_ID].isin(risky), columns], live[columns]], ignore_index=True)
    daily = rows.groupby([rows[schema.TERMINAL_ID], rows[schema.TX_DATETIME].dt.floor("D")]).size().unstack(0)
    daily = daily.reindex(pd.date_range(start - horizon, daily.index.max(), freq="D")).fillna(0.0)
    windows = daily.rolling(k, min_periods=k).sum()
    usual = windows[windows.index < start].median().fillna(0.0)
    over = windows[windows.index >= start]
    over = over[over.gt(np.maximum(settings.dilution_min_rows, settings.dilution_factor * usual), axis=1)]
    found = []
    for terminal in over.columns[over.notna().any().to_numpy()]:
        day = over[terminal].idxmax()
        found.append({"terminal_id": int(terminal), "window_end": str(pd.Timestamp(day).date()),
                      "count": int(over.at[day, terminal]), "usual": float(usual[terminal])})
    return sorted(found, key=lambda f: -f["count"])


def validated_history(root: Path) -> "pd.DataFrame | None":
    """The validated transactions (data/validated) as the entities' history for live bursts; None if absent."""
    import pandas as pd

    path = ProjectPaths.at(root).validated
    if not path.is_file():
        logger.info("%s absent: live bursts are judged against the prediction log's own days only", path)
        return None
    return pd.read_parquet(path, columns=["TX_DATETIME", "CUSTOMER_ID", "TERMINAL_ID", "TX_FRAUD"])


def terminal_bursts(decisions: "pd.DataFrame", max_per_hour: int) -> list[dict]:
    """(terminal, hour, count) for every terminal with more than `max_per_hour` decisions in one clock hour,
    largest first."""
    if decisions.empty:
        return []
    hours = decisions["TX_DATETIME"].dt.floor("h")
    counts = decisions.groupby([decisions["TERMINAL_ID"], hours]).size()
    over = counts[counts > max_per_hour].sort_values(ascending=False)
    return [{"terminal_id": int(terminal), "hour": hour.isoformat(), "count": int(count)}
            for (terminal, hour), count in over.items()]


def check_live_traffic(client: "MlflowClient", log_path: Path, settings: "Settings",
                       report_dir: Path, history: "pd.DataFrame | None" = None,
                       verifier: "Verifier | None" = None) -> LiveCheck:
    """Read the prediction log's newest `monitor.window_days` (by transaction time); compare its features with
    the champion's training reference, compute the flag rate, the terminal bursts (absolute, per hour) and
    the customers' and terminals' bursts against their own history (`history`: earlier transactions, e.g.
    the validated data); log all to MLflow."""

    import mlflow

    from fraudguard.features import newest_window
    from fraudguard.serving.predictions import load_prediction_log
    from fraudguard.signing import load_verifier
    from fraudguard.tracking import ensure_experiment

    name = settings.registry.model_name
    verifier = verifier or load_verifier()
    champion, digest = verified_champion(client, name, verifier)
    if not Path(log_path).is_file():
        raise DataError(f"{log_path}: no prediction log (start `fraudguard serve` first)")
    read = load_prediction_log(log_path)  # torn or malformed lines are skipped and counted, never fatal
    decisions = read.frame
    if decisions.empty:
        raise DataError(f"{log_path}: the prediction log holds no decision yet"
                        + (f" ({read.describe_skipped(Path(log_path))})" if read.skipped else ""))
    current = newest_window(decisions, settings.monitor.window_days)
    reference, reference_verified = verified_reference(client, name, champion, digest, verifier)
    threshold = settings.monitor.drift_share_threshold
    comparison = _compare_or_too_few(reference, current, settings,
                                     report_dir / f"live_drift_champion_v{champion}.html", "live traffic")
    too_few = comparison.report_path is None
    controlled = tuple(sorted(set(settings.threat_model.controlled_features) & set(comparison.drifted_columns)))
    flag_rate = float(current["decision"].astype(bool).mean())
    bursts = terminal_bursts(current, settings.monitor.burst_tx_per_hour)
    relative = live_volume_bursts(current, history, settings.validate_)
    dilution = live_terminal_dilution(current, history, settings.validate_)
    bursts_file = report_dir / "live_bursts.json"
    write_json(bursts_file, {"terminal_hours": bursts[:1000], "beyond_own_history": relative[:1000],
                             "terminal_dilution": dilution[:1000]}, indent=1)
    explained_version, attribution = explain_flagged_traffic(client, current, settings, report_dir / "models",
                                                             verifier)
    metrics = {**({} if too_few else {"live_drift_share": comparison.drift_share}), "live_flag_rate": flag_rate,
               "live_decisions": float(len(current)), "live_terminal_bursts": float(len(bursts)),
               "live_drifted_controlled": float(len(controlled)), "live_relative_bursts": float(len(relative)),
               "live_terminal_dilution": float(len(dilution)), "live_log_lines_skipped": float(read.skipped)}
    if attribution is not None:
        metrics.update({"live_controlled_attribution_share": attribution.live_share,
                        "reference_controlled_attribution_share": attribution.reference_share,
                        "live_controlled_attribution_alert": float(attribution.alert)})
    experiment_id = ensure_experiment(client, settings.monitor.experiment)
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"live-v{champion}") as run:
        mlflow.set_tags({"fraudguard.kind": "live-monitor", "fraudguard.champion_version": str(champion),
                         "fraudguard.champion_verified": "true", **_reference_tags(reference_verified),
                         **({"fraudguard.explained_version": str(explained_version),
                             "fraudguard.attribution_reference_rows": attribution.reference_rows}
                            if attribution is not None else {})})
        mlflow.log_metrics(metrics)
        mlflow.log_params({"window_days": settings.monitor.window_days, "threshold": threshold,
                           "burst_tx_per_hour": settings.monitor.burst_tx_per_hour,
                           "controlled_attribution_margin": settings.monitor.controlled_attribution_margin})
        if too_few:
            mlflow.set_tag("fraudguard.live_drift", "too few decisions to judge")
        else:
            mlflow.log_artifact(str(comparison.report_path), artifact_path="live")
        mlflow.log_artifact(str(bursts_file), artifact_path="live")
    check = LiveCheck(champion, len(current), flag_rate, comparison.drift_share, threshold,
                      comparison.drifted_columns, controlled, tuple(bursts), comparison.report_path, run.info.run_id,
                      attribution, explained_version, relative_bursts=tuple(relative),
                      terminal_dilution=tuple(dilution), log_lines_skipped=read.skipped,
                      reference_verified=reference_verified, too_few_rows=too_few)
    logger.info("live traffic (champion v%s, %d decisions): flag rate %.2f%%, %.0f%% of features drifted, "
                "%d terminal burst(s), %d day(s) beyond an entity's own history", champion, len(current),
                100 * flag_rate, 100 * check.drift_share, len(bursts), len(relative))
    if check.controlled_attribution_alert and attribution is not None:
        logger.warning("attacker-controlled features carry %.0f%% of the attributions of flagged live decisions "
                       "(v%s), %.0f%% in training: more than the %.0f-point margin", 100 * attribution.live_share,
                       explained_version, 100 * attribution.reference_share, 100 * attribution.margin)
    return check
