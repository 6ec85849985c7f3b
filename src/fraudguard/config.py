"""Typed, validated settings loaded from params.yaml, the single source of tunables."""

from __future__ import annotations

import dataclasses
import datetime as dt
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from fraudguard.errors import ConfigError

DEFAULT_PARAMS_PATH = Path("params.yaml")


def _admits_bool(annotation: Any) -> bool:
    return annotation is bool or any(_admits_bool(arg) for arg in typing.get_args(annotation))


def _holds_bool(value: Any) -> bool:
    return isinstance(value, bool) or (isinstance(value, (list, tuple)) and any(isinstance(v, bool) for v in value))


class _Strict(BaseModel):
    # NaN passes every comparison a bound makes (NaN <= 0 is false), and an infinite threshold gates nothing: a
    # tunable is a finite number.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _true_false_only_for_switches(cls, value: Any, info: ValidationInfo) -> Any:
        """pydantic reads `true` as 1 for a number and 1 or "yes" as true for a switch; either is a typo that would
        change a threshold or a gate silently."""
        if info.field_name is None:
            return value
        annotation = cls.model_fields[info.field_name].annotation
        if annotation is bool and not isinstance(value, bool):
            raise ValueError("must be true or false")
        if not _admits_bool(annotation) and _holds_bool(value):
            raise ValueError("true/false where a value is expected")
        return value


class SimulateSettings(_Strict):
    seed: int
    n_customers: int = Field(gt=0)
    n_terminals: int = Field(gt=0)
    n_days: int = Field(gt=0)
    start_date: dt.date
    terminal_radius: float = Field(gt=0)
    output: Path
    fraud_amount_threshold: float = Field(gt=0)
    terminal_compromise_share_per_day: float = Field(ge=0, le=1)
    terminal_compromise_days: int = Field(gt=0)
    customer_compromise_share_per_day: float = Field(ge=0, le=1)
    customer_compromise_days: int = Field(gt=0)
    customer_fraud_share: float = Field(ge=0, le=1)
    customer_fraud_amount_factor: float = Field(gt=0)


class ValidateSettings(_Strict):
    input: Path
    max_amount: float = Field(gt=0)
    max_speed_km_per_hour: float = Field(gt=0)
    grid_km_per_unit: float = Field(gt=0)
    max_robust_z: float = Field(gt=0)
    min_customer_history: int = Field(ge=2)
    max_quarantine_share: float = Field(ge=0, le=1)
    # Velocity runs only with a terminal-location table; without one the rule is off (and says so).
    terminal_locations: Path | None = None
    # Plausible time window: earlier than min_timestamp, or later than now + future_tolerance_hours,
    # is timestamp_out_of_range.
    min_timestamp: dt.datetime
    future_tolerance_hours: float = Field(ge=0)
    # An import that would replace data/raw with fewer than (1 - this share) of its rows needs --force.
    max_import_row_loss_share: float = Field(ge=0, le=1)
    # An import whose rows change more than this share of the transactions it shares with data/raw (same
    # TRANSACTION_ID, other values) is refused: that is other data under the same ids, not a new version of
    # this history (--new-history replaces the history on purpose; a few changes are kept out as changed_history).
    max_changed_history_share: float = Field(default=0.05, ge=0, le=1)
    # Poisoning defences (docs/data.md, "Poisoning defences"). A fraud rate more than this factor away
    # from the previous version's (either way) is recorded and blocks promotion until acknowledged.
    max_fraud_rate_change_factor: float = Field(default=1.25, gt=1)
    # A legitimate-labelled row this close to a fraud (same customer and terminal) is
    # conflicting_label_duplicate: a relabelled copy of a known fraud (backdoor poisoning).
    near_duplicate_amount_tolerance: float = Field(default=1.0, ge=0)
    near_duplicate_window_hours: float = Field(default=24.0, ge=0)
    # Volume bursts (flagged in the report, never quarantined): a customer's or terminal's daily count
    # above max(burst_min_daily_tx, burst_factor x its mean daily count over the burst_history_days before).
    burst_factor: float = Field(default=3.0, gt=1)
    burst_min_daily_tx: int = Field(default=12, gt=0)
    burst_history_days: int = Field(default=30, gt=0)
    # Terminal dilution (flagged, never quarantined): legitimate rows at a terminal dated in the
    # dilution_horizon_days before one of its frauds (the rows its delayed risk windows count), where the
    # terminal's legitimate count over dilution_window_days exceeds max(dilution_min_rows, dilution_factor x
    # its median count over such windows when no fraud followed).
    dilution_factor: float = Field(default=3.0, gt=1)
    dilution_min_rows: int = Field(default=12, gt=0)
    dilution_window_days: int = Field(default=7, gt=0)
    dilution_horizon_days: int = Field(default=37, gt=0)

    @field_validator("min_timestamp")
    @classmethod
    def _naive_min_timestamp(cls, value: dt.datetime) -> dt.datetime:
        # Transaction times are naive local times; an aware bound would compare against another clock.
        if value.tzinfo is not None:
            raise ValueError(f"min_timestamp must have no time zone, got {value.isoformat()}")
        return value


class SplitSettings(_Strict):
    """Where train and test lie in time: explicit calendar days, or periods counted back from the newest day.

    Periods (the default): test = the last `test_days` days of the data (the newest transaction's day
    included), before it a dropped gap of `delay_gap_days`, before that `train_days` of training
    (null: every day from the end of the feature warm-up). Dates: `train_start`..`train_end` and
    `test_start`..`test_end`, all four given, first and last days included; the days between the two
    periods are the gap. Periods and dates do not mix.
    """

    train_days: int | None = Field(default=None, gt=0)
    delay_gap_days: int | None = Field(default=None, ge=0)
    test_days: int | None = Field(default=None, gt=0)
    train_start: dt.date | None = None
    train_end: dt.date | None = None
    test_start: dt.date | None = None
    test_end: dt.date | None = None

    @property
    def uses_dates(self) -> bool:
        return self.train_start is not None

    @model_validator(mode="after")
    def _dates_or_periods(self) -> "SplitSettings":
        dates = {"train_start": self.train_start, "train_end": self.train_end,
                 "test_start": self.test_start, "test_end": self.test_end}
        periods = {"train_days": self.train_days, "delay_gap_days": self.delay_gap_days,
                   "test_days": self.test_days}
        given_dates = [k for k, v in dates.items() if v is not None]
        given_periods = [k for k, v in periods.items() if v is not None]
        if given_dates:
            if given_periods:
                raise ValueError(
                    f"give either dates or periods, not both: dates {given_dates} and periods {given_periods} "
                    "are set (set the periods to null to split by dates)")
            missing = [k for k, v in dates.items() if v is None]
            train_start, train_end, test_start, test_end = (
                self.train_start, self.train_end, self.test_start, self.test_end)
            if train_start is None or train_end is None or test_start is None or test_end is None:
                raise ValueError(f"a split by dates needs all of train_start, train_end, test_start, test_end; "
                                 f"missing {missing}")
            if not train_start <= train_end < test_start <= test_end:
                raise ValueError(
                    "dates must satisfy train_start <= train_end < test_start <= test_end, got "
                    f"train {self.train_start}..{self.train_end}, test {self.test_start}..{self.test_end}")
            return self
        missing = [k for k in ("delay_gap_days", "test_days") if periods[k] is None]
        if missing:
            raise ValueError(f"a split by periods needs delay_gap_days and test_days (train_days may be null: "
                             f"every day after the feature warm-up); missing {missing}")
        return self


class FeaturizeSettings(_Strict):
    windows_days: list[int] = Field(min_length=1)
    # Customer windows in hours (count and spend): they see a payment split into pieces minutes apart.
    # Shorter than every day window, so they need no more history or warm-up than the day windows.
    windows_hours: list[int] = Field(default_factory=list)
    label_delay_days: int = Field(ge=0)
    night_end_hour: int = Field(ge=0, le=23)
    split: SplitSettings
    # Which test transactions are dropped as cards already known compromised (README, "The split"):
    # handbook = frauds of the training period, plus later frauds once their label has matured;
    # strict = the same, counting frauds from the first day of the data instead of the training start.
    test_filter: Literal["handbook", "strict"]

    @field_validator("windows_days")
    @classmethod
    def _positive_distinct_windows(cls, windows: list[int]) -> list[int]:
        # Each window names two feature columns; a repeated one would collide.
        if any(w <= 0 for w in windows) or len(set(windows)) != len(windows):
            raise ValueError(f"windows must be distinct positive day counts, got {windows}")
        return windows

    @field_validator("windows_hours")
    @classmethod
    def _positive_distinct_hour_windows(cls, windows: list[int]) -> list[int]:
        if any(w <= 0 for w in windows) or len(set(windows)) != len(windows):
            raise ValueError(f"windows must be distinct positive hour counts, got {windows}")
        return windows

    @model_validator(mode="after")
    def _gap_covers_the_label_delay(self) -> "FeaturizeSettings":
        # The days between training and test must hold the label delay: a training fraud's label is known d days
        # after it, so with a shorter gap the model trains on labels nobody had on the first test day (a gap of 0
        # with d = 7 trained on 1,404 such rows), and the test filter drops cards for frauds not yet known.
        split = self.split
        gap = (split.test_start - split.train_end).days - 1 if split.uses_dates and split.test_start \
            and split.train_end else split.delay_gap_days
        if gap is not None and gap < self.label_delay_days:
            where = (f"{split.train_end} to {split.test_start} leaves {gap} day(s)" if split.uses_dates
                     else f"delay_gap_days is {gap}")
            raise ValueError(f"the gap between training and test must be at least label_delay_days "
                             f"({self.label_delay_days}): {where}")
        return self

    @model_validator(mode="after")
    def _hour_windows_within_day_windows(self) -> "FeaturizeSettings":
        # The online state keeps a customer's history for the longest day window only.
        if self.windows_hours and max(self.windows_hours) > 24 * max(self.windows_days):
            raise ValueError(f"windows_hours {self.windows_hours} exceed the longest day window "
                             f"({max(self.windows_days)} d)")
        return self

    @property
    def warmup_days(self) -> int:
        """Days from the first transaction until every window feature is complete: the longest window
        plus the label delay (terminal windows end label_delay_days before the transaction)."""
        return max(self.windows_days) + self.label_delay_days


class ModelSettings(_Strict):
    features: list[str] = Field(min_length=1)
    hidden_sizes: list[int] = Field(min_length=1)
    dropout: float = Field(ge=0, lt=1)
    # Wide-and-deep: a linear term on every input added to the MLP's logits (docs/model.md "Robust AP").
    linear_term: bool = False
    # The card's history before the transaction as extra MLP inputs (model.HistoryInputs; docs/model.md).
    history_inputs: bool = False
    # With them, log ratios of the card's recent history to its longest window (HistoryInputs contrasts).
    history_contrasts: bool = False

    @model_validator(mode="after")
    def _contrasts_need_history(self) -> "ModelSettings":
        if self.history_contrasts and not self.history_inputs:
            raise ValueError("history_contrasts: true needs history_inputs: true (the contrasts are of the history)")
        return self


class FeatureBounds(_Strict):
    min: float
    max: float

    @model_validator(mode="after")
    def _ordered(self) -> "FeatureBounds":
        if self.min > self.max:
            raise ValueError(f"min {self.min} > max {self.max}")
        return self


class DerivedFeatureSettings(_Strict):
    """A feature the attacker moves indirectly: a customer average whose window includes the current
    transaction moves by (change of `source`) / `count` when the attacker changes `source`; a window sum
    (no `count`) moves by the change itself."""

    source: str
    count: str | None = None


class SplitPaymentThreatSettings(_Strict):
    """The attacker also chooses how many payments (2..max_splits) a fraud's total amount is paid in,
    interval_s apart at the same terminal (fraudguard.splitting)."""

    max_splits: int = Field(ge=2)
    interval_s: float = Field(ge=0)


class DilutionThreatSettings(_Strict):
    """Terminal-risk dilution: the attacker adds legitimate-looking payments at a terminal, up to
    max_added_volume_factor x the volume of each of its risk windows, so each risk (a fraud share) falls to
    risk x count / count'; the window's count rises to count'; the known-fraud counts do not move."""

    max_added_volume_factor: float = Field(gt=0)
    # risk feature -> the transaction-count feature of the same window
    risk_features: dict[str, str] = Field(min_length=1)


class ThreatModelSettings(_Strict):
    controlled_features: dict[str, FeatureBounds] = Field(min_length=1)
    derived_features: dict[str, DerivedFeatureSettings] = Field(default_factory=dict)
    # Poisoning-time capability (not an evasion budget): null leaves dilution out of the threat model.
    dilution: DilutionThreatSettings | None = None
    # null: the attacker pays each fraud in one payment (the threat model before issue #11).
    split_payments: SplitPaymentThreatSettings | None = None
    epsilon: float = Field(gt=0)
    eps_step: float = Field(gt=0)
    pgd_iterations: int = Field(gt=0)

    @model_validator(mode="after")
    def _derived_follow_controlled(self) -> "ThreatModelSettings":
        for name, spec in self.derived_features.items():
            if name in self.controlled_features:
                raise ValueError(f"derived feature {name} is also listed in controlled_features")
            if spec.source not in self.controlled_features:
                raise ValueError(
                    f"derived feature {name}: source {spec.source} is not a controlled feature"
                )
        return self


class AdversarialSettings(_Strict):
    enabled: bool
    attack: Literal["fgsm", "fgsm_random_start", "pgd"]
    ratio: float = Field(ge=0, le=1)
    # which rows get adversarial versions: every class, or only frauds (the attacker is the fraudster)
    classes: Literal["both", "fraud"]
    # Adversarial rows for this many consecutive minibatches are crafted in one attack call, against the
    # weights at the first of them: one ART call per minibatch costs more than the step itself at scale.
    craft_batches: int = Field(default=1, gt=0)
    # replace: the picked rows are trained on in their adversarial version only (cross-entropy).
    # trades (Zhang et al. 2019): cross-entropy plus trades_beta x KL(p(x) || p(x_adv)) over the picked rows,
    # which asks the model to score a row and its attacked version alike rather than to fit the attacked one.
    objective: Literal["replace", "trades"] = "replace"
    trades_beta: float = Field(default=1.0, ge=0)
    # trades only: the cross-entropy term on the clean rows (the paper) or on the batch with its picked rows
    # replaced by their adversarial version (as `replace` trains).
    trades_cross_entropy: Literal["clean", "adversarial"] = "clean"
    # PGD iterations when crafting training rows with attack pgd (null: threat_model.pgd_iterations, the
    # evaluation's); fewer iterations craft faster. The attack's step stays threat_model.eps_step.
    pgd_iterations: int | None = Field(default=None, gt=0)
    # Training rows are crafted at threat_model.epsilon x this (a margin above the attacker's budget when > 1);
    # the budget that evaluation and the gates attack with does not change.
    craft_epsilon_scale: float = Field(default=1.0, gt=0)


class DilutionTrainingSettings(_Strict):
    """Training copies of rows at terminals with known frauds, their risk features diluted as
    threat_model.dilution allows (a factor drawn uniformly up to its budget), labels kept."""

    enabled: bool
    copies: float = Field(gt=0)   # copies per eligible row (fractions: a seeded random subset)
    classes: Literal["both", "fraud"]
class SplitPaymentTrainingSettings(_Strict):
    """Training copies of each fit-part fraud split into k payments (its last piece, labelled fraud)."""

    enabled: bool
    splits: list[int] = Field(min_length=1)
    copies: int = Field(ge=1)   # copies of each fraud's last piece per k: its weight in the loss
    # Each legitimate fit row also gets one split copy, k drawn from these (empty: none).
    legit_splits: list[int] = Field(default_factory=list)

    @field_validator("splits", "legit_splits")
    @classmethod
    def _split_counts(cls, value: list[int]) -> list[int]:
        if any(k < 2 for k in value) or len(set(value)) != len(value):
            raise ValueError(f"split counts must be distinct and >= 2, got {value}")
        return value


class TrainSettings(_Strict):
    seed: int
    epochs: int = Field(gt=0)
    batch_size: int = Field(gt=0)
    learning_rate: float = Field(gt=0)
    # constant: learning_rate throughout; cosine: annealed from learning_rate to 0 over `epochs` (the last
    # epochs take small steps, so the kept weights do not depend on where one noisy step landed).
    lr_schedule: Literal["constant", "cosine"] = "constant"
    weight_decay: float = Field(ge=0)
    class_weighting: Literal["balanced", "none"]
    adversarial: AdversarialSettings
    torch_threads: int = Field(gt=0)
    validation_share: float = Field(ge=0, lt=0.5)
    # Stop after this many epochs without a better validation AP and keep the best epoch's weights
    # (null: train every epoch, keep the last).
    early_stopping_patience: int | None = Field(default=None, gt=0)
    # What early stopping keeps the best of: the validation AP, or the validation AP once the validation
    # frauds are attacked with masked PGD at threat_model's budget (robust AP, as evaluate measures it).
    early_stopping_metric: Literal["average_precision", "robust_average_precision"] = "average_precision"
    # Margin-gradient penalty: weight x (epsilon x the first-order drop of the fraud margin, logit(fraud) -
    # logit(legit), under the threat model: |slope along the amount and its derived features| + |slope along
    # each other controlled feature|)^2, summed over the penalized rows (frauds, or every row with `both`) / batch
    # size, added to each step's loss. Unlike adversarial cross-entropy it does not fade on confidently scored
    # rows, whose margin drop is what costs ranking. 0: off.
    gradient_penalty: float = Field(default=0.0, ge=0)
    gradient_penalty_classes: Literal["both", "fraud"] = "fraud"
    # Off when absent; needs threat_model.dilution when enabled (checked in Settings).
    dilution: DilutionTrainingSettings | None = None
    # null: no split-payment copies (fraudguard.splitting.split_payment_training_rows).
    split_payments: SplitPaymentTrainingSettings | None = None

    @model_validator(mode="after")
    def _early_stopping_needs_validation(self) -> "TrainSettings":
        if self.early_stopping_patience is not None and self.validation_share == 0:
            raise ValueError("early_stopping_patience needs a validation slice (validation_share > 0)")
        return self


class EvaluateSettings(_Strict):
    card_precision_k: int = Field(gt=0)
    fpr_for_recall: float = Field(gt=0, lt=1)


class QualityGateSettings(_Strict):
    min_average_precision: float = Field(ge=0, le=1)
    min_card_precision_at_k: float = Field(ge=0, le=1)
    min_recall_at_fpr: float = Field(ge=0, le=1)
    non_inferiority_tolerance: float = Field(ge=0)
    # The operating point the model ships with: share of the test split's legitimate payments flagged at its
    # threshold. The ranking metrics ignore the threshold and the robustness figures are measured at it, so a
    # threshold of 0 (everything flagged) passed both.
    max_false_positive_rate: float = Field(gt=0, le=1)


class SplitPaymentGateSettings(_Strict):
    splits: int = Field(ge=2)                       # k the detected frauds are split into
    min_flagged_share: float = Field(ge=0, le=1)    # of them, the share with a piece still flagged


class RobustnessGateSettings(_Strict):
    epsilons: list[float] = Field(min_length=1)
    min_robust_recall: float = Field(ge=0, le=1)
    non_inferiority_tolerance: float = Field(ge=0)
    hopskipjump_samples: int = Field(ge=0)
    hopskipjump_max_iter: int = Field(gt=0)
    max_attack_rows: int = Field(gt=0)
    batch_size: int = Field(gt=0)
    seed: int
    # Terminal-risk dilution at threat_model.dilution's budget: share of the detected frauds at terminals
    # with known frauds still detected (gated only when the threat model has dilution and such frauds exist).
    min_dilution_recall: float = Field(default=0.5, ge=0, le=1)
    dilution_steps: int = Field(default=4, gt=0)  # factors tried: budget x 1/steps, 2/steps, ..., 1
    # null: no split-payment check (it needs threat_model.split_payments).
    split_payments: SplitPaymentGateSettings | None = None

    @field_validator("epsilons")
    @classmethod
    def _positive_epsilons(cls, value: list[float]) -> list[float]:
        if any(eps <= 0 for eps in value):
            raise ValueError(f"every epsilon must be > 0, got {value}")
        return value


class DriftGateSettings(_Strict):
    drift_share_threshold: float = Field(ge=0, le=1)
    window_days: int = Field(gt=0)
    # Fewer rows than this on either side of a comparison and Evidently's tests are noise (1 to 5 rows of undrifted
    # traffic read as 100 % drift): the gate fails naming the counts instead of judging drift.
    min_rows: int = Field(ge=2)


class StaticAnalysisGateSettings(_Strict):
    paths: list[str] = Field(min_length=1)
    min_severity: Literal["low", "medium", "high"]
    min_confidence: Literal["low", "medium", "high"]


class PrivacyGateSettings(_Strict):
    max_attack_auc: float = Field(ge=0.5, le=1)
    sample_size: int = Field(ge=4)
    # Fewer member or non-member rows than this and the attack AUC is noise (4 rows passed at AUC 0.375, 8 failed
    # at 0.69): the gate fails naming the counts instead of judging.
    min_sample_size: int = Field(ge=4)
    attack_model_type: Literal["rf", "gb", "lr", "nn"]
    seed: int

    @model_validator(mode="after")
    def _minimum_within_the_sample(self) -> "PrivacyGateSettings":
        if self.min_sample_size > self.sample_size:
            raise ValueError(f"min_sample_size {self.min_sample_size} > sample_size {self.sample_size}")
        return self


class DataChangesGateSettings(_Strict):
    # Reviewed acknowledgements of fraud-rate changes (`fraudguard data acknowledge`), relative to the root.
    acknowledgements: Path = Path("data/acknowledgements.yaml")


class GatesSettings(_Strict):
    quality: QualityGateSettings
    robustness: RobustnessGateSettings
    drift: DriftGateSettings
    static_analysis: StaticAnalysisGateSettings
    privacy: PrivacyGateSettings
    data_changes: DataChangesGateSettings = DataChangesGateSettings()


class RegistrySettings(_Strict):
    model_name: str = Field(min_length=1)
    experiment: str = Field(min_length=1)
    # The drift reference signed with each version: with a handful of rows any traffic looks undrifted (1 row: drift
    # share 0.2 on traffic x3, 20,000 rows: 1.0).
    reference_sample_rows: int = Field(ge=1000)
    reference_sample_seed: int


class ApprovalSettings(_Strict):
    """Four-eyes approval: a person other than the change's author approves every promotion."""

    required: bool = False
    timeout_s: int = Field(gt=0)


class PromotionSettings(_Strict):
    approval: ApprovalSettings


class MonitorSettings(_Strict):
    window_days: int = Field(gt=0)
    drift_share_threshold: float = Field(ge=0, le=1)
    # A window with fewer rows than this is reported as too few to judge: never drifted, never a retrain (one row
    # after a quiet spell read as 100 % drift and retrained on every scheduled run).
    min_rows: int = Field(ge=2)
    experiment: str = Field(min_length=1)
    retrain_on_drift: bool
    retrain_deployment: str = Field(pattern=r"^[^/]+/[^/]+$")
    # Live traffic (the gateway's prediction log): a terminal with more decisions than this in one hour is a burst.
    burst_tx_per_hour: int = Field(default=20, gt=0)
    # Attributions of flagged live traffic (docs/serving.md, "Explanations"): an alert when the share of the
    # attacker-controlled features in them exceeds the share in the flagged training reference by more than this.
    controlled_attribution_margin: float = Field(default=0.15, ge=0, le=1)
    max_explained_rows: int = Field(default=500, gt=0)  # flagged rows explained per side (a seeded sample)


class StateSettings(_Strict):
    """Where the gateway keeps the customer and terminal history: an embedded SQLite file (`serve.state_path`,
    one gateway) or a Redis server shared by several replicas. $FRAUDGUARD_REDIS_URL, when set, replaces
    `redis_url` (a password never goes into params.yaml)."""

    backend: Literal["sqlite", "redis"] = "sqlite"
    redis_url: str = Field(default="redis://127.0.0.1:6379/0", pattern=r"^(redis|rediss|unix)://")

    @field_validator("redis_url")
    @classmethod
    def _no_password_in_params(cls, value: str) -> str:
        # params.yaml is committed and logged whole with every run: a password in it would be published.
        from urllib.parse import urlsplit

        parts = urlsplit(value)
        if parts.password is not None or any(item.partition("=")[0].lower() == "password"
                                             for item in parts.query.split("&")):
            raise ValueError("the Redis URL carries a password: set $FRAUDGUARD_REDIS_URL on the gateway's host "
                             "instead (params.yaml is committed and logged with every run)")
        return value
    redis_key_prefix: str = Field(default="fraudguard:state", min_length=1, pattern=r"^[A-Za-z0-9_.:-]+$")
    redis_timeout_s: float = Field(default=5.0, gt=0)


class ServeSettings(_Strict):
    """The scoring gateway (`fraudguard serve`, docs/serving.md). Paths are relative to the project root.

    API keys are never here: they come from the file named by $FRAUDGUARD_API_KEYS_FILE or from
    $FRAUDGUARD_API_KEYS ("client:key,client:key").
    """

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    state_path: Path = Path("state/serve/features.sqlite")
    prediction_log: Path = Path("state/serve/predictions.jsonl")
    model_cache_dir: Path = Path("state/serve/models")
    # Bootstrap the state store from this transactions file when the store is empty at start (null: never).
    bootstrap_from: Path | None = Path("data/validated/transactions.parquet")
    reload_interval_s: float = Field(default=10.0, gt=0)
    max_body_bytes: int = Field(default=1_048_576, gt=0)
    max_batch_size: int = Field(default=1000, gt=0)
    rate_limit_per_s: float = Field(default=500.0, gt=0)
    rate_limit_burst: int = Field(default=1000, gt=0)
    prediction_log_queue: int = Field(default=100_000, gt=0)
    state: StateSettings = Field(default_factory=StateSettings)
    # ?explain=true: integrated-gradients steps per explained transaction (more: closer to exact, slower).
    explain_steps: int = Field(default=64, ge=4, le=1024)
    # Rate-limit tokens an explained transaction costs (a scored one costs 1): its integrated gradients are
    # explain_steps forward and backward passes.
    explain_cost: float = Field(default=10.0, ge=1)
    # ?explain=true explains at most this many transactions per request (more: HTTP 422 naming this cap).
    max_explained_per_request: int = Field(default=100, gt=0)
    # Intra-op threads of the gateway's torch: one request is a 1-row forward pass, which a second thread only
    # slows (it spins against the event loop on a small machine).
    torch_threads: int = Field(default=1, gt=0)


class ComputeSettings(_Strict):
    """Where train-and-promote runs its gates: in-process threads (default), or a Dask cluster through
    prefect-dask's DaskTaskRunner (a scheduler's address, or a LocalCluster of `dask_local_workers`)."""

    # The scheduler runs whatever code its clients send (pickled tasks) on workers holding the signing key: only a
    # TLS address, with this host's client certificate, is accepted (a plain tcp:// one took tasks from anyone who
    # could reach it). The LocalCluster of dask_local_workers gets a throw-away certificate of its own.
    dask_address: str | None = Field(default=None, pattern=r"^tls://")
    dask_tls_ca_file: Path | None = None
    dask_tls_cert_file: Path | None = None
    dask_tls_key_file: Path | None = None
    dask_local_workers: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _address_needs_certificates(self) -> "ComputeSettings":
        missing = [key for key in ("dask_tls_ca_file", "dask_tls_cert_file", "dask_tls_key_file")
                   if getattr(self, key) is None]
        if self.dask_address is not None and missing:
            raise ValueError(f"dask_address needs {', '.join(missing)} (mutual TLS with the scheduler)")
        return self


class LabelFlipSettings(_Strict):
    share: float = Field(gt=0, le=1)


class BackdoorSettings(_Strict):
    share: float = Field(gt=0)
    trigger_cents: float = Field(ge=0, lt=1)
    trigger_hours: tuple[int, int]

    @field_validator("trigger_hours")
    @classmethod
    def _hour_range(cls, value: tuple[int, int]) -> tuple[int, int]:
        if not 0 <= value[0] < value[1] <= 24:
            raise ValueError(f"trigger_hours must be [first, last) with 0 <= first < last <= 24, got {list(value)}")
        return value


class TerminalDilutionSettings(_Strict):
    share_of_rows: float = Field(gt=0, le=1)
    min_amount: float = Field(gt=0)
    max_amount: float = Field(gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> "TerminalDilutionSettings":
        if self.min_amount > self.max_amount:
            raise ValueError(f"min_amount {self.min_amount} > max_amount {self.max_amount}")
        return self


class BoundaryAttackSettings(_Strict):
    samples: int = Field(gt=0)
    max_iter: int = Field(gt=0)


class SplitPaymentSettings(_Strict):
    splits: list[int] = Field(min_length=1)
    gated_splits: int = Field(ge=2)
    min_flagged_share: float = Field(ge=0, le=1)
    interval_s: float = Field(ge=0)

    @model_validator(mode="after")
    def _gated_is_measured(self) -> "SplitPaymentSettings":
        if any(k < 2 for k in self.splits):
            raise ValueError(f"every split count must be >= 2, got {self.splits}")
        if self.gated_splits not in self.splits:
            raise ValueError(f"gated_splits {self.gated_splits} is not one of splits {self.splits}")
        return self


class RedteamSettings(_Strict):
    """The red-team suite (`fraudguard redteam`): what each attack does and when it counts as caught."""

    experiment: str = Field(min_length=1)
    seed: int
    harmless_recall_drop: float = Field(ge=0, le=1)
    min_targeted_flagged: int = Field(ge=1)
    min_quarantined_share: float = Field(gt=0, le=1)
    skip_gates: list[str] = Field(default_factory=list)
    label_flip: LabelFlipSettings
    backdoor: BackdoorSettings
    terminal_dilution: TerminalDilutionSettings
    boundary: BoundaryAttackSettings
    split_payments: SplitPaymentSettings


class DataRemoteSettings(_Strict):
    """The DVC remote holding data versions (docs/team.md): a path (relative: to the project root), or an
    ssh:// / s3:// (or other DVC) URL; None keeps the per-user folder under ~/.cache (one machine).
    Credentials never go here: they come from the environment or `dvc remote modify --local`."""

    url: str | None = None

    @field_validator("url")
    @classmethod
    def _no_credentials_in_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip()
        if not value:
            raise ValueError("an empty remote URL: use null for the per-user default")
        from urllib.parse import urlsplit

        parts = urlsplit(value)
        if parts.scheme and parts.password is not None:
            # params.yaml is committed and logged with every run: a password here would be published.
            raise ValueError(f"the remote URL carries a password ({parts.scheme}://{parts.username}:***@...): "
                             "put credentials in the environment or `dvc remote modify --local`")
        return value


class Settings(_Strict):
    simulate: SimulateSettings
    validate_: ValidateSettings = Field(alias="validate")
    featurize: FeaturizeSettings
    model: ModelSettings
    threat_model: ThreatModelSettings
    train: TrainSettings
    evaluate: EvaluateSettings
    gates: GatesSettings
    registry: RegistrySettings
    promotion: PromotionSettings
    monitor: MonitorSettings
    serve: ServeSettings = Field(default_factory=ServeSettings)
    compute: ComputeSettings = ComputeSettings()
    redteam: RedteamSettings
    data_remote: DataRemoteSettings = DataRemoteSettings()

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True,
                              protected_namespaces=())

    @model_validator(mode="after")
    def _attacker_features_are_model_features(self) -> "Settings":
        unknown = sorted(set(self.threat_model.controlled_features) - set(self.model.features))
        if unknown:
            raise ValueError(
                f"threat_model.controlled_features names features the model does not use: {unknown}"
            )
        derived = self.threat_model.derived_features
        unknown = sorted(
            ({*derived} | {spec.count for spec in derived.values() if spec.count is not None}) - set(self.model.features)
        )
        if unknown:
            raise ValueError(
                f"threat_model.derived_features names features the model does not use: {unknown}"
            )
        dilution = self.threat_model.dilution
        if dilution is not None:
            unknown = sorted(({*dilution.risk_features} | {*dilution.risk_features.values()})
                             - set(self.model.features))
            if unknown:
                raise ValueError(f"threat_model.dilution.risk_features names features the model does not use: {unknown}")
        if self.train.dilution is not None and self.train.dilution.enabled and dilution is None:
            raise ValueError("train.dilution.enabled needs threat_model.dilution (the budget the copies are diluted within)")
        self._split_counts_within_threat_model()
        return self

    def _split_counts_within_threat_model(self) -> None:
        """Training copies and the gate's check split into at most threat_model.split_payments.max_splits."""
        threat = self.threat_model.split_payments
        used = {"train.split_payments": self.train.split_payments is not None and self.train.split_payments.enabled,
                "gates.robustness.split_payments": self.gates.robustness.split_payments is not None}
        if threat is None:
            named = [key for key, on in used.items() if on]
            if named:
                raise ValueError(f"{' and '.join(named)} need(s) threat_model.split_payments")
            return
        counts = {"train.split_payments.splits": list(self.train.split_payments.splits)
                  if self.train.split_payments else [],
                  "train.split_payments.legit_splits": list(self.train.split_payments.legit_splits)
                  if self.train.split_payments else [],
                  "gates.robustness.split_payments.splits": [self.gates.robustness.split_payments.splits]
                  if self.gates.robustness.split_payments else []}
        for key, ks in counts.items():
            if any(k > threat.max_splits for k in ks):
                raise ValueError(f"{key} {ks} exceed(s) threat_model.split_payments.max_splits {threat.max_splits}")

    def as_params_dict(self) -> dict[str, Any]:
        """The settings as plain data, with the same keys as params.yaml."""
        return self.model_dump(mode="json", by_alias=True)


# Values an error message must not repeat: a URL refused for carrying a password would print it.
_NOT_ECHOED = frozenset({"data_remote.url", "serve.state.redis_url"})  # may hold a password


def parse_settings(raw: Any, source: str = "<params>") -> Settings:
    """Validate already-parsed params data; errors name each bad key and the source."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: top level must be a mapping, got {type(raw).__name__}")
    try:
        return Settings.model_validate(raw)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            key = ".".join(str(part) for part in err["loc"]) or "<root>"
            if err["type"] == "extra_forbidden":
                problems.append(f"unknown key '{key}'")
            elif err["type"] == "missing":
                problems.append(f"missing key '{key}'")
            elif key in _NOT_ECHOED:
                problems.append(f"key '{key}': {err['msg']}")
            else:
                problems.append(f"key '{key}': {err['msg']} (got {err.get('input')!r})")
        raise ConfigError(f"{source}: invalid params: " + "; ".join(problems)) from exc


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader refusing a mapping that repeats a key: safe_load keeps the last, so a second `gates:` block
    appended to params.yaml would silently replace every threshold above it."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark, f"found duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_params_yaml(text: str, source: str) -> Any:
    """The YAML document of a params file (safe types only); ConfigError naming `source` when it is not valid YAML
    or a mapping repeats a key."""
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # nosec B506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark, problem = getattr(exc, "problem_mark", None), getattr(exc, "problem", None)
        where = f"{problem} on line {mark.line + 1}" if mark is not None and problem else str(exc)
        raise ConfigError(f"{source}: not valid YAML: {where}") from exc


def load_settings(path: Path | str = DEFAULT_PARAMS_PATH, overrides: dict[str, Any] | None = None) -> Settings:
    """Read params.yaml (plus optional nested overrides) into validated Settings."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read params file: {exc.strerror or exc}") from exc
    raw = load_params_yaml(text, str(path))
    if overrides:
        raw = merge_overrides(raw, overrides)
    return parse_settings(raw, source=str(path))


def flat_keys(data: Any, prefix: str = "") -> dict[str, Any]:
    """Nested params as dotted keys ("train.epochs") -> values; a non-mapping is one key, the prefix itself."""
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(flat_keys(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: data}


def merge_overrides(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge overrides into a copy of base. Dotted keys ("train.epochs") are accepted."""
    merged: dict[str, Any] = dict(base)
    for key, value in overrides.items():
        if "." in key:
            head, rest = key.split(".", 1)
            value = {rest: value}
            key = head
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_overrides(merged[key], value)
        else:
            merged[key] = value
    return merged


# A stage's section: a frozen dataclass of exactly the params it reads, one field per dvc.yaml `params:` entry.
# A field holds the params.yaml section (or key) of its name, or the dotted key given with params_key(), so
# the dataclass is at once what the stage's code can read and what dvc.yaml must declare (tests/unit/test_stages.py).
SectionT = TypeVar("SectionT")


def params_key(key: str) -> Any:
    """A section-dataclass field holding params.yaml's dotted `key` (e.g. "evaluate.fpr_for_recall")."""
    return dataclasses.field(metadata={"params_key": key})


def section_keys(section_type: type) -> tuple[str, ...]:
    """The params.yaml keys a section dataclass holds, in field order: dvc.yaml's `params:` for its stage."""
    return tuple(f.metadata.get("params_key", f.name) for f in dataclasses.fields(section_type))


def settings_value(settings: Settings, key: str) -> Any:
    """The value at params.yaml's dotted `key` ("train.torch_threads", or a whole section: "validate")."""
    value: Any = settings
    for part in key.split("."):
        # `validate` is a pydantic field alias (BaseModel.validate is taken); its attribute is validate_.
        value = getattr(value, "validate_" if value is settings and part == "validate" else part)
    return value


def select_section(settings: Settings, section_type: type[SectionT]) -> SectionT:
    """The section dataclass filled from settings, each field from its params key."""
    names = [f.name for f in dataclasses.fields(section_type)]  # type: ignore[arg-type]
    values = [settings_value(settings, key) for key in section_keys(section_type)]
    return section_type(**dict(zip(names, values)))
