"""Training of the fraud MLP, with adversarial augmentation under the threat model.

Augmentation: in every batch, a `train.adversarial.ratio` share of the eligible rows (frauds, or every row
with `classes: both`; labels kept) is replaced by its adversarial version, crafted with ART (FGSM, FGSM from
a random start, or PGD) under the threat mask and projected onto the threat model. The rows of
`train.adversarial.craft_batches` consecutive batches are crafted in one call against the weights at the
first of them (1: against the current weights, batch by batch). ART's AdversarialTrainer passes no mask to
generate(), hence this loop. With `train.adversarial.objective: trades`, the picked rows are not replaced: the
loss is the cross-entropy (on the clean batch, or on the batch with them replaced) plus trades_beta x the KL
divergence between the model's clean and adversarial predictions on them (TRADES, Zhang et al. 2019). With
`train.early_stopping_patience`, training stops once the validation AP (or, with
`train.early_stopping_metric: robust_average_precision`, the AP once the validation frauds are attacked with
masked PGD at the budget) has not improved for that many epochs and the best epoch's weights are kept. With `train.dilution`, copies of
the rows at terminals with known frauds, their risk features diluted within threat_model.dilution, join the
fit rows (dilution_copies). With `train.split_payments`, split-payment copies
(fraudguard.splitting.split_payment_training_rows) join them after the class weights are set, so that the
model learns to flag a fraud paid in pieces.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd
import torch

from fraudguard.attacks import make_art_classifier, masked_fgsm, masked_pgd
from fraudguard.config import (
    AdversarialSettings,
    FeaturizeSettings,
    ModelSettings,
    Settings,
    ThreatModelSettings,
    TrainSettings,
    params_key,
    select_section,
)
from fraudguard.data.schema import TX_DATETIME, TX_FRAUD
from fraudguard.errors import DataError
from fraudguard.model import FraudMLP, ModelBundle, Standardizer, build_module
from fraudguard.threat import ThreatModel, build_threat_model

logger = logging.getLogger(__name__)


@dataclass
class TrainingResult:
    """A trained bundle, its per-epoch history and the figures the train stage records."""

    bundle: ModelBundle
    history: list[dict[str, Any]]
    seconds_per_epoch: float
    adversarial: bool
    attack: str | None
    n_rows: int
    n_fit_rows: int
    n_validation_rows: int
    fraud_rate: float
    train_average_precision: float
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def final_loss(self) -> float:
        return float(self.history[-1]["loss"])

    @property
    def adversarial_seconds_per_epoch(self) -> float:
        return float(np.mean([h["adversarial_seconds"] for h in self.history]))

    def metrics(self) -> dict[str, Any]:
        """JSON-ready training metrics (models/metrics.json)."""
        out: dict[str, Any] = {
            "final_loss": self.final_loss,
            "seconds_per_epoch": self.seconds_per_epoch,
            "adversarial_seconds_per_epoch": self.adversarial_seconds_per_epoch,
            # What an epoch costs without crafting the adversarial rows (the same number of steps).
            "clean_seconds_per_epoch_estimate": self.seconds_per_epoch - self.adversarial_seconds_per_epoch,
            "adversarial": self.adversarial,
            "attack": self.attack,
            "train_average_precision": self.train_average_precision,
            "threshold": self.bundle.threshold,
            "n_rows": self.n_rows,
            "n_fit_rows": self.n_fit_rows,
            "n_validation_rows": self.n_validation_rows,
            "fraud_rate": self.fraud_rate,
            "epochs": len(self.history),
        }
        clean = out["clean_seconds_per_epoch_estimate"]
        out["augmented_to_clean_ratio_estimate"] = self.seconds_per_epoch / clean if clean > 0 else None
        val = self.history[-1].get("val_average_precision")
        if val is not None:
            out["val_average_precision"] = val
        out.update(self.extra)
        return out


def threshold_at_fpr(scores: np.ndarray, labels: np.ndarray, fpr: float) -> float:
    """The lowest threshold t such that at most a share `fpr` of legitimate rows score >= t."""
    legit = np.sort(np.asarray(scores, dtype=np.float64)[np.asarray(labels) == 0])
    if legit.size == 0:
        raise DataError("threshold_at_fpr: no legitimate rows to measure a false-positive rate on")
    allowed = int(np.floor(fpr * legit.size))  # false positives allowed
    if allowed >= legit.size:
        return float(legit[0])
    # Flag only scores strictly above the (allowed+1)-th highest legitimate score.
    return float(np.nextafter(legit[legit.size - allowed - 1], np.inf))


def _labels(frame: pd.DataFrame, what: str) -> np.ndarray:
    if TX_FRAUD not in frame.columns:
        raise DataError(f"{what}: label column {TX_FRAUD} is missing")
    labels = frame[TX_FRAUD].to_numpy()
    if pd.isna(labels).any() or not np.isin(labels, (0, 1)).all():
        raise DataError(f"{what}: column {TX_FRAUD} must hold only 0/1 labels")
    return labels.astype(np.int64)


def split_validation(frame: pd.DataFrame, share: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(fit, validation): the validation part is the last `share` of rows in time (TX_DATETIME order,
    row order when the column is absent), so it scores later transactions than the model learnt from."""
    if TX_DATETIME in frame.columns:
        frame = frame.sort_values(TX_DATETIME, kind="mergesort")
    n_val = int(round(share * len(frame)))
    if n_val == 0:
        return frame, frame.iloc[0:0]
    return frame.iloc[: len(frame) - n_val], frame.iloc[len(frame) - n_val:]


def _attack_batch(
    attack: str, classifier: Any, x: np.ndarray, y: np.ndarray, threat: ThreatModel,
    pgd_iterations: int | None = None, epsilon_scale: float = 1.0,
) -> np.ndarray:
    eps = threat.epsilon * epsilon_scale
    if attack == "fgsm":
        return masked_fgsm(classifier, x, y, threat, eps, random_start=False, batch_size=len(x))
    if attack == "fgsm_random_start":
        return masked_fgsm(classifier, x, y, threat, eps, random_start=True, batch_size=len(x))
    if attack == "pgd":
        # The step scales with the budget, so that the iterations reach the ball's edge as they do at scale 1.
        return masked_pgd(
            classifier, x, y, threat, eps, threat.eps_step * epsilon_scale,
            threat.pgd_iterations if pgd_iterations is None else pgd_iterations, batch_size=len(x),
        )
    raise ValueError(f"unknown adversarial attack {attack!r}")


def _adversarial_rows(labels: torch.Tensor, batch_size: int, ratio: float, classes: str) -> torch.Tensor:
    """Positions (in `labels`, consecutive minibatches of `batch_size`) of the rows to replace by their
    adversarial version: in each minibatch, the first `ratio` share of its eligible rows (a random share,
    since the batch is a random draw). Eligible: fraud rows, or every row when `classes` is "both"."""
    picked = []
    for first in range(0, len(labels), batch_size):
        yb = labels[first:first + batch_size]
        eligible = torch.nonzero(yb == 1).flatten() if classes == "fraud" else torch.arange(len(yb))
        picked.append(eligible[: int(round(ratio * len(eligible)))] + first)
    return torch.cat(picked) if picked else torch.empty(0, dtype=torch.long)


def _average_precision(labels: np.ndarray, scores: np.ndarray) -> float | None:
    from sklearn.metrics import average_precision_score

    if labels.size == 0 or labels.min() == labels.max():
        return None
    return float(average_precision_score(labels, scores))


@dataclass(frozen=True)
class TrainingParams:
    """What training reads from params.yaml, field for field the train stage's dvc.yaml `params:`."""

    model: ModelSettings
    threat_model: ThreatModelSettings
    train: TrainSettings
    # Split-payment copies recompute their pieces' window and calendar features (fraudguard.splitting).
    featurize: FeaturizeSettings
    # The operating threshold is chosen at this false-positive rate on the training split.
    fpr_for_recall: float = params_key("evaluate.fpr_for_recall")

    @classmethod
    def of(cls, settings: Settings) -> "TrainingParams":
        return select_section(settings, cls)


@dataclass(frozen=True)
class PreparedData:
    """The training frame made tensors: fit rows standardized (the standardizer sees only them), the later
    validation slice, and every row's label (for the threshold and train AP)."""

    standardizer: Standardizer
    x_fit: torch.Tensor
    y_fit: torch.Tensor
    x_val: np.ndarray | None
    y_val: np.ndarray
    labels_all: np.ndarray
    n_dilution_copies: int = 0
    # Split-payment copies, standardized, held apart until the class weights are set (with_split_copies).
    x_split: torch.Tensor | None = None
    y_split: torch.Tensor | None = None
    n_split_copies: int = 0

    def with_split_copies(self) -> "PreparedData":
        """The fit rows joined by the split-payment copies. Called after the class weights are set: the copies
        add weight to the frauds rather than being balanced away."""
        if self.x_split is None or self.y_split is None:
            return self
        return replace(self, x_fit=torch.cat([self.x_fit, self.x_split]), y_fit=torch.cat([self.y_fit, self.y_split]),
                       x_split=None, y_split=None, n_split_copies=len(self.y_split))

    @property
    def n_fit(self) -> int:
        return len(self.y_fit)


@dataclass
class Trainee:
    """The module being trained, with its optimizer and loss."""

    module: FraudMLP
    optimizer: torch.optim.Optimizer
    loss_fn: torch.nn.Module
    # train.lr_schedule cosine: the learning rate decays to 0 over train.epochs (None: constant).
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None


@dataclass
class AdversarialCrafter:
    """Crafts the adversarial rows of a block of minibatches (train.adversarial) against the current weights."""

    attack: str
    classifier: Any
    threat: ThreatModel
    batch_size: int
    ratio: float
    classes: str
    pgd_iterations: int | None = None
    epsilon_scale: float = 1.0

    def craft(self, x_block: torch.Tensor, y_block: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x_block with its picked rows replaced by their adversarial version, a copy; which rows were
        picked, a boolean mask). x_block itself is left as it is."""
        rows = _adversarial_rows(y_block, self.batch_size, self.ratio, self.classes)
        x_adv_block = x_block.clone()
        picked = torch.zeros(len(y_block), dtype=torch.bool)
        if len(rows) > 0:
            # One attack call for the block's minibatches, against the weights at its start.
            x_adv = _attack_batch(self.attack, self.classifier, x_block[rows].numpy(), y_block[rows].numpy(),
                                  self.threat, self.pgd_iterations, self.epsilon_scale)
            x_adv_block[rows] = torch.from_numpy(x_adv)
            picked[rows] = True
        return x_adv_block, picked


@dataclass
class EarlyStopping:
    """Keeps the weights of the epoch with the best validation figure (AP or robust AP: train.early_stopping_
    metric); says when `patience` epochs passed without a better one (patience None: never stops, keeps nothing)."""

    patience: int | None
    best: tuple[float, int, dict[str, torch.Tensor]] | None = None  # (val figure, epoch, weights)
    metric: str = "average_precision"  # names the figure in restore_best's keys

    def should_stop(self, epoch: int, val_ap: float | None, module: torch.nn.Module) -> bool:
        if self.patience is None or val_ap is None:
            return False
        if self.best is None or val_ap > self.best[0]:
            self.best = (val_ap, epoch, {k: v.detach().clone() for k, v in module.state_dict().items()})
            return False
        if epoch - self.best[1] >= self.patience:
            logger.info("early stop after epoch %d: val %s best at epoch %d (%.4f)", epoch, self.metric,
                        self.best[1], self.best[0])
            return True
        return False

    def restore_best(self, module: torch.nn.Module) -> dict[str, Any]:
        """Load the best epoch's weights into module; the figures that say so (none without a best epoch)."""
        if self.best is None:
            return {}
        module.load_state_dict(self.best[2])
        return {"best_epoch": self.best[1], f"best_val_{self.metric}": self.best[0]}


@dataclass
class MarginGradientPenalty:
    """train.gradient_penalty: weight x (eps x first-order worst-case drop of the fraud margin)^2 under the
    threat model, summed over the penalized rows and divided by the batch size."""

    threat: ThreatModel
    weight: float
    classes: str

    def first_order_drop(self, module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Per row: sum over controlled features c of |d margin / d c|, where moving the amount also moves its
        derived features (by source_std / (count x std) each, as ThreatModel.project does); differentiable."""
        x = x.detach().clone().requires_grad_(True)
        logits = module(x)
        margin = logits[:, 1] - logits[:, 0]
        (grad,) = torch.autograd.grad(margin.sum(), x, create_graph=True)
        drop = torch.zeros(len(x), dtype=grad.dtype)
        for c in np.flatnonzero(self.threat.mask > 0):
            slope = grad[:, int(c)]
            for d in self.threat.derived:
                if d.source == c:
                    count = torch.clamp(torch.round(x.detach()[:, d.count_index] * d.count_std + d.count_mean), min=1.0)
                    slope = slope + grad[:, d.index] * (d.source_std / d.std) / count
            drop = drop + slope.abs()
        return drop

    def loss(self, module: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        rows = torch.nonzero(y == 1).flatten() if self.classes == "fraud" else torch.arange(len(y))
        if len(rows) == 0 or self.weight == 0:
            return torch.zeros(())
        drop = self.first_order_drop(module, x[rows])
        return self.weight * ((self.threat.epsilon * drop) ** 2).sum() / len(y)


def seed_everything(seed: int) -> torch.Generator:
    """Seed torch and numpy's global generators; the generator that draws each epoch's row order."""
    torch.manual_seed(seed)
    # ART's random starts draw from numpy's global generator; seed it so runs repeat.
    np.random.seed(seed)
    return torch.Generator().manual_seed(seed)


def dilution_copies(fit_frame: pd.DataFrame, settings: Settings | TrainingParams) -> pd.DataFrame:
    """Training copies against terminal-risk dilution (train.dilution): rows at terminals with a known fraud
    (frauds only, or every class), `copies` per row, each risk window diluted by its own factor drawn
    uniformly in [0, threat_model.dilution.max_added_volume_factor] (fraudguard.threat.dilute_terminal_risk),
    labels kept. Empty when off. Seeded by train.seed."""
    cfg, threat = settings.train.dilution, settings.threat_model.dilution
    if cfg is None or not cfg.enabled or threat is None:
        return fit_frame.iloc[0:0]
    from fraudguard.threat import at_risky_terminal, dilute_terminal_risk

    eligible = at_risky_terminal(fit_frame, threat)
    if cfg.classes == "fraud":
        eligible &= fit_frame[TX_FRAUD].to_numpy() == 1
    rows = np.flatnonzero(eligible)
    rng = np.random.default_rng(settings.train.seed)
    whole, part = divmod(cfg.copies, 1.0)
    picked = np.concatenate([np.tile(rows, int(whole)),
                             rng.choice(rows, int(round(part * len(rows))), replace=False)]).astype(np.int64)
    if picked.size == 0:
        return fit_frame.iloc[0:0]
    # One factor per risk window, drawn independently: the attacker may crowd the short windows (payments in
    # the last days) or spread them over the long one; uniform factors alone left half the gap (bench).
    factors = rng.uniform(0.0, threat.max_added_volume_factor, (picked.size, len(threat.risk_features)))
    copies = dilute_terminal_risk(fit_frame.iloc[picked].reset_index(drop=True), threat, factors)
    logger.info("dilution copies: %d of %d rows at terminals with known frauds (%s), factors up to %g",
                picked.size, int(eligible.sum()), cfg.classes, threat.max_added_volume_factor)
    return copies


def split_payment_copies(fit_frame: pd.DataFrame, params: TrainingParams) -> pd.DataFrame:
    """train.split_payments' copies of the fit rows paid in k pieces (fraudguard.splitting); empty when off."""
    from fraudguard.splitting import split_payment_training_rows

    copies = split_payment_training_rows(fit_frame, params.train.split_payments, params.threat_model.split_payments,
                                         params.featurize, params.train.seed)
    if len(copies):
        logger.info("split-payment copies: %d rows (%d fit frauds)", len(copies),
                    int((fit_frame[TX_FRAUD].to_numpy() == 1).sum()))
    return copies


def prepare_data(train_frame: pd.DataFrame, params: TrainingParams) -> PreparedData:
    """Check the labels, split off the later validation slice, fit the standardizer on the fit rows."""
    labels_all = _labels(train_frame, "training frame")
    if labels_all.sum() == 0 or labels_all.sum() == labels_all.size:
        raise DataError(
            f"training frame: needs both classes, got {int(labels_all.sum())} fraud of {labels_all.size} rows"
        )
    fit_frame, val_frame = split_validation(train_frame, params.train.validation_share)
    y_fit = _labels(fit_frame, "training frame")
    y_val = _labels(val_frame, "validation slice")
    if y_fit.sum() == 0:
        raise DataError("training frame: no fraud in the fit part (before the validation slice)")
    standardizer = Standardizer.fit(fit_frame, params.model.features)
    split = split_payment_copies(fit_frame, params)
    # Appended after the standardizer is fitted: it describes real traffic, not the copies.
    diluted = dilution_copies(fit_frame, params)
    if len(diluted):
        fit_frame = pd.concat([fit_frame, diluted], ignore_index=True)
        y_fit = _labels(fit_frame, "training frame")
    return PreparedData(
        standardizer=standardizer,
        x_fit=torch.from_numpy(standardizer.transform(fit_frame)),
        y_fit=torch.from_numpy(y_fit),
        x_val=standardizer.transform(val_frame) if len(val_frame) else None,
        y_val=y_val,
        labels_all=labels_all,
        n_dilution_copies=int(len(diluted)),
        x_split=torch.from_numpy(standardizer.transform(split)) if len(split) else None,
        y_split=torch.from_numpy(_labels(split, "split-payment copies")) if len(split) else None,
    )


def build_model(data: PreparedData, params: TrainingParams) -> Trainee:
    """The MLP (initialised from torch's seeded generator), Adam, and the (class-weighted) loss."""
    cfg = params.train
    module = build_module(data.standardizer, params.model.hidden_sizes, params.model.dropout,
                          linear_term=params.model.linear_term, history_inputs=params.model.history_inputs,
                          history_contrasts=params.model.history_contrasts)
    optimizer = torch.optim.Adam(module.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    scheduler = (torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs)
                 if cfg.lr_schedule == "cosine" else None)
    if cfg.class_weighting == "balanced":
        counts = np.bincount(data.y_fit.numpy(), minlength=2).astype(np.float64)
        weight = torch.tensor(data.n_fit / (2.0 * counts), dtype=torch.float32)
    else:
        weight = None
    return Trainee(module, optimizer, torch.nn.CrossEntropyLoss(weight=weight), scheduler)


def build_crafter(trainee: Trainee, threat: ThreatModel, cfg: TrainSettings) -> AdversarialCrafter:
    """The crafter of train.adversarial's rows, attacking the trainee's module through ART."""
    return AdversarialCrafter(
        attack=cfg.adversarial.attack,
        # The recipe's crafting loss (its figures were measured with it); evaluation and gates attack the margin.
        classifier=make_art_classifier(trainee.module, threat.n_features, loss="cross_entropy"),
        threat=threat,
        batch_size=cfg.batch_size,
        ratio=cfg.adversarial.ratio,
        classes=cfg.adversarial.classes,
        pgd_iterations=cfg.adversarial.pgd_iterations,
        epsilon_scale=cfg.adversarial.craft_epsilon_scale,
    )


def trades_loss(
    trainee: Trainee, x_clean: torch.Tensor, x_adv: torch.Tensor, picked: torch.Tensor, y: torch.Tensor,
    cfg: AdversarialSettings,
) -> torch.Tensor:
    """TRADES (Zhang et al. 2019): cross-entropy (on x_clean, or on x_adv with trades_cross_entropy
    adversarial) plus trades_beta x KL(p(x_clean) || p(x_adv)) summed over the picked rows, divided by the
    batch size (the paper's batch mean when every row is picked)."""
    logits_clean = trainee.module(x_clean)
    if cfg.trades_cross_entropy == "clean":
        cross_entropy = trainee.loss_fn(logits_clean, y)
        logits_adv = trainee.module(x_adv[picked]) if bool(picked.any()) else None
    else:
        logits_all_adv = trainee.module(x_adv)
        cross_entropy = trainee.loss_fn(logits_all_adv, y)
        logits_adv = logits_all_adv[picked]
    if logits_adv is None or len(logits_adv) == 0 or cfg.trades_beta == 0:
        return cross_entropy
    log_p_adv = torch.log_softmax(logits_adv, dim=1)
    log_p_clean = torch.log_softmax(logits_clean[picked], dim=1)
    # KL(p_clean || p_adv) = sum p_clean (log p_clean - log p_adv); gradients flow through both sides, as in
    # the paper's reference code.
    kl = torch.nn.functional.kl_div(log_p_adv, log_p_clean, reduction="sum", log_target=True)
    return cross_entropy + cfg.trades_beta * kl / len(y)


def train_one_epoch(
    trainee: Trainee, data: PreparedData, order: torch.Tensor, cfg: TrainSettings,
    crafter: AdversarialCrafter | None, penalty: MarginGradientPenalty | None = None,
) -> tuple[float, float]:
    """One pass over the fit rows in `order`, block by block of train.adversarial.craft_batches minibatches
    (each block's adversarial rows crafted first; train.gradient_penalty added to each step's loss at the
    rows it trains on); (mean loss, seconds spent crafting)."""
    attack_seconds = 0.0
    loss_sum = 0.0
    block_rows = cfg.batch_size * cfg.adversarial.craft_batches
    for block_first in range(0, data.n_fit, block_rows):
        block = order[block_first:block_first + block_rows]
        x_block, y_block = data.x_fit[block], data.y_fit[block]
        x_adv_block, picked = x_block, torch.zeros(len(block), dtype=torch.bool)
        if crafter is not None:
            t0 = time.perf_counter()
            x_adv_block, picked = crafter.craft(x_block, y_block)
            attack_seconds += time.perf_counter() - t0
        trades = crafter is not None and cfg.adversarial.objective == "trades"
        trainee.module.train()  # ART's gradient calls leave the module in eval mode
        for first in range(0, len(block), cfg.batch_size):
            batch = slice(first, first + cfg.batch_size)
            yb = y_block[batch]
            trainee.optimizer.zero_grad()  # ART's gradient calls also leave gradients on the parameters
            if trades:
                loss = trades_loss(trainee, x_block[batch], x_adv_block[batch], picked[batch], yb, cfg.adversarial)
            else:
                loss = trainee.loss_fn(trainee.module(x_adv_block[batch]), yb)
            if penalty is not None:
                loss = loss + penalty.loss(trainee.module, x_adv_block[batch], yb)
            loss.backward()
            trainee.optimizer.step()
            loss_sum += float(loss.detach()) * len(yb)
    return loss_sum / data.n_fit, attack_seconds


def validation_average_precision(module: torch.nn.Module, data: PreparedData) -> float | None:
    """AP of the module on the validation slice (None without a slice, or with one class only)."""
    if data.x_val is None:
        return None
    module.eval()
    with torch.no_grad():
        val_scores = torch.softmax(module(torch.from_numpy(data.x_val)), dim=1)[:, 1].numpy()
    return _average_precision(data.y_val, val_scores)


def validation_robust_average_precision(
    module: FraudMLP, data: PreparedData, threat: ThreatModel
) -> float | None:
    """AP on the validation slice once its frauds are attacked with masked PGD at the threat model's budget
    (fraudguard.evaluation.robust_average_precision's attack; legitimate rows keep their clean scores)."""
    if data.x_val is None or data.y_val.size == 0 or data.y_val.min() == data.y_val.max():
        return None
    module.eval()
    x_val = data.x_val
    with torch.no_grad():
        scores = torch.softmax(module(torch.from_numpy(x_val)), dim=1)[:, 1].numpy()
    fraud = np.flatnonzero(data.y_val == 1)
    classifier = make_art_classifier(module, threat.n_features)
    x_adv = masked_pgd(classifier, x_val[fraud], data.y_val[fraud], threat, threat.epsilon, threat.eps_step,
                       threat.pgd_iterations, batch_size=max(len(fraud), 1))
    module.eval()
    with torch.no_grad():
        scores[fraud] = torch.softmax(module(torch.from_numpy(x_adv)), dim=1)[:, 1].numpy()
    return _average_precision(data.y_val, scores)


def finalize(
    module: FraudMLP, train_frame: pd.DataFrame, data: PreparedData, params: TrainingParams
) -> tuple[ModelBundle, float | None]:
    """The bundle in eval mode, its threshold at evaluate.fpr_for_recall on the training split; its train AP."""
    module.eval()
    bundle = ModelBundle(
        module=module,
        standardizer=data.standardizer,
        hidden_sizes=tuple(int(h) for h in params.model.hidden_sizes),
        dropout=float(params.model.dropout),
        threshold=0.5,
        linear_term=params.model.linear_term,
        history_inputs=params.model.history_inputs,
        history_contrasts=params.model.history_contrasts,
    )
    train_scores = bundle.predict_proba(train_frame)
    bundle.threshold = threshold_at_fpr(train_scores, data.labels_all, params.fpr_for_recall)
    train_ap = _average_precision(data.labels_all, train_scores)
    logger.info(
        "trained: train AP %.4f, threshold %.6f (FPR %.3f on the training split's legitimate rows)",
        train_ap, bundle.threshold, params.fpr_for_recall,
    )
    return bundle, train_ap


def train_model(
    train_frame: pd.DataFrame,
    settings: Settings | TrainingParams,
    *,
    adversarial: bool | None = None,
    progress: bool = True,
) -> TrainingResult:
    """Train the MLP on `train_frame` (features + TX_FRAUD), adversarially augmented when `adversarial`
    (default: train.adversarial.enabled). Seeded; the standardizer sees the fit rows only. `settings`: the
    whole Settings or just the TrainingParams it reads."""
    params = TrainingParams.of(settings) if isinstance(settings, Settings) else settings
    cfg = params.train
    adversarial = cfg.adversarial.enabled if adversarial is None else adversarial
    adversarial = adversarial and cfg.adversarial.ratio > 0
    torch.set_num_threads(cfg.torch_threads)
    generator = seed_everything(cfg.seed)

    data = prepare_data(train_frame, params)
    trainee = build_model(data, params)
    data = data.with_split_copies()
    threat = build_threat_model(params.threat_model, data.standardizer)
    crafter = build_crafter(trainee, threat, cfg) if adversarial else None
    penalty = (MarginGradientPenalty(threat, cfg.gradient_penalty, cfg.gradient_penalty_classes)
               if cfg.gradient_penalty > 0 else None)
    attack = cfg.adversarial.attack if adversarial else None
    logger.info(
        "training on %d rows (%d fraud), validating on %d later rows; %s",
        data.n_fit, int(data.y_fit.sum()), len(data.y_val),
        f"adversarial augmentation: {attack}, ratio {cfg.adversarial.ratio}, eps {threat.epsilon}, "
        f"attacker controls {list(threat.controlled)}" if adversarial else "no adversarial augmentation",
    )

    history: list[dict[str, Any]] = []
    epochs = range(1, cfg.epochs + 1)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(epochs, desc="adversarial training" if adversarial else "training", unit="epoch")
        epochs = bar
    stopping = EarlyStopping(cfg.early_stopping_patience, metric=cfg.early_stopping_metric)
    for epoch in epochs:
        start, cpu_start = time.perf_counter(), time.process_time()
        order = torch.randperm(data.n_fit, generator=generator)
        loss, attack_seconds = train_one_epoch(trainee, data, order, cfg, crafter, penalty)
        learning_rate = float(trainee.optimizer.param_groups[0]["lr"])  # what this epoch's steps used
        if trainee.scheduler is not None:
            trainee.scheduler.step()
        seconds = time.perf_counter() - start
        entry: dict[str, Any] = {
            "epoch": epoch,
            "loss": loss,
            "learning_rate": learning_rate,
            "seconds": seconds,
            # CPU seconds of this process over the epoch: on a shared machine, wall time also counts waiting.
            "cpu_seconds": time.process_time() - cpu_start,
            "adversarial_seconds": attack_seconds,
        }
        if data.x_val is not None:
            entry["val_average_precision"] = validation_average_precision(trainee.module, data)
            if cfg.early_stopping_metric == "robust_average_precision":
                entry["val_robust_average_precision"] = validation_robust_average_precision(
                    trainee.module, data, threat)
        history.append(entry)
        logger.info(
            "epoch %d/%d: loss %.4f, %.2fs (%.2fs crafting adversarial rows), val AP %s",
            epoch, cfg.epochs, entry["loss"], seconds, attack_seconds,
            "n/a" if entry.get("val_average_precision") is None else f"{entry['val_average_precision']:.4f}",
        )
        if bar is not None:
            bar.set_postfix(loss=f"{entry['loss']:.4f}")
        if stopping.should_stop(epoch, entry.get("val_" + cfg.early_stopping_metric), trainee.module):
            break
    if bar is not None:
        bar.close()
    extra = stopping.restore_best(trainee.module)
    extra["dilution_copies"] = data.n_dilution_copies
    extra["split_payment_copies"] = data.n_split_copies

    bundle, train_ap = finalize(trainee.module, train_frame, data, params)
    return TrainingResult(
        bundle=bundle,
        history=history,
        seconds_per_epoch=float(np.mean([h["seconds"] for h in history])),
        adversarial=adversarial,
        attack=attack,
        n_rows=int(len(train_frame)),
        n_fit_rows=data.n_fit,
        n_validation_rows=int(len(data.y_val)),
        fraud_rate=float(data.labels_all.mean()),
        train_average_precision=float(train_ap) if train_ap is not None else float("nan"),
        extra=extra,
    )
