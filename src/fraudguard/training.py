"""Training of the fraud MLP, with adversarial augmentation under the threat model.

Augmentation: in every batch, a `train.adversarial.ratio` share of the eligible rows (frauds, or every row
with `classes: both`; labels kept) is replaced by its adversarial version, crafted with ART (FGSM, FGSM from
a random start, or PGD) under the threat mask and projected onto the threat model. The rows of
`train.adversarial.craft_batches` consecutive batches are crafted in one call against the weights at the
first of them (1: against the current weights, batch by batch). ART's AdversarialTrainer passes no mask to
generate(), hence this loop. With `train.early_stopping_patience`, training stops once the validation AP
has not improved for that many epochs and the best epoch's weights are kept. With `train.split_payments`,
the fit rows are joined by split-payment copies (fraudguard.splitting.split_payment_training_rows) after the
class weights are set, so that the model learns to flag a fraud paid in pieces.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

from fraudguard.attacks import make_art_classifier, masked_fgsm, masked_pgd
from fraudguard.config import Settings
from fraudguard.data.schema import TX_DATETIME, TX_FRAUD
from fraudguard.errors import DataError
from fraudguard.model import FraudMLP, ModelBundle, Standardizer
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
    attack: str, classifier: Any, x: np.ndarray, y: np.ndarray, threat: ThreatModel
) -> np.ndarray:
    if attack == "fgsm":
        return masked_fgsm(classifier, x, y, threat, threat.epsilon, random_start=False, batch_size=len(x))
    if attack == "fgsm_random_start":
        return masked_fgsm(classifier, x, y, threat, threat.epsilon, random_start=True, batch_size=len(x))
    if attack == "pgd":
        return masked_pgd(
            classifier, x, y, threat, threat.epsilon, threat.eps_step, threat.pgd_iterations,
            batch_size=len(x),
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


def _with_split_payment_copies(x_fit: torch.Tensor, y_fit: torch.Tensor, fit_frame: pd.DataFrame,
                               standardizer: Standardizer, settings: Settings) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The fit rows plus train.split_payments' copies of the fit frauds paid in k pieces (their last piece,
    labelled fraud; fraudguard.splitting), standardized like the rest; and how many were added."""
    from fraudguard.splitting import split_payment_training_rows

    copies = split_payment_training_rows(fit_frame, settings)
    if copies.empty:
        return x_fit, y_fit, 0
    logger.info("adding %d split-payment copies of %d fit frauds", len(copies), int((y_fit == 1).sum()))
    x = torch.cat([x_fit, torch.from_numpy(standardizer.transform(copies))])
    y = torch.cat([y_fit, torch.from_numpy(_labels(copies, "split-payment copies"))])
    return x, y, len(copies)


def _average_precision(labels: np.ndarray, scores: np.ndarray) -> float | None:
    from sklearn.metrics import average_precision_score

    if labels.size == 0 or labels.min() == labels.max():
        return None
    return float(average_precision_score(labels, scores))


def train_model(
    train_frame: pd.DataFrame,
    settings: Settings,
    *,
    adversarial: bool | None = None,
    progress: bool = True,
) -> TrainingResult:
    """Train the MLP on `train_frame` (features + TX_FRAUD), adversarially augmented when `adversarial`
    (default: settings.train.adversarial.enabled). Seeded; the standardizer sees the fit rows only."""
    cfg = settings.train
    adversarial = cfg.adversarial.enabled if adversarial is None else adversarial
    adversarial = adversarial and cfg.adversarial.ratio > 0
    torch.set_num_threads(cfg.torch_threads)
    torch.manual_seed(cfg.seed)
    # ART's random starts draw from numpy's global generator; seed it so runs repeat.
    np.random.seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)

    labels_all = _labels(train_frame, "training frame")
    if labels_all.sum() == 0 or labels_all.sum() == labels_all.size:
        raise DataError(
            f"training frame: needs both classes, got {int(labels_all.sum())} fraud of {labels_all.size} rows"
        )
    fit_frame, val_frame = split_validation(train_frame, cfg.validation_share)
    y_fit = _labels(fit_frame, "training frame")
    y_val = _labels(val_frame, "validation slice")
    if y_fit.sum() == 0:
        raise DataError("training frame: no fraud in the fit part (before the validation slice)")

    standardizer = Standardizer.fit(fit_frame, settings.model.features)
    x_fit = torch.from_numpy(standardizer.transform(fit_frame))
    x_val = standardizer.transform(val_frame) if len(val_frame) else None
    y_fit_t = torch.from_numpy(y_fit)

    n_features = len(standardizer.features)
    module = FraudMLP(n_features, settings.model.hidden_sizes, settings.model.dropout)
    optimizer = torch.optim.Adam(module.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    if cfg.class_weighting == "balanced":
        counts = np.bincount(y_fit, minlength=2).astype(np.float64)
        weight = torch.tensor(len(y_fit) / (2.0 * counts), dtype=torch.float32)
    else:
        weight = None
    loss_fn = torch.nn.CrossEntropyLoss(weight=weight)
    # After the class weights: the copies add weight to the frauds rather than being balanced away.
    x_fit, y_fit_t, n_split_copies = _with_split_payment_copies(x_fit, y_fit_t, fit_frame, standardizer, settings)

    threat = build_threat_model(settings.threat_model, standardizer)
    classifier = make_art_classifier(module, n_features) if adversarial else None
    attack = cfg.adversarial.attack if adversarial else None
    logger.info(
        "training on %d rows (%d fraud), validating on %d later rows; %s",
        len(y_fit), int(y_fit.sum()), len(y_val),
        f"adversarial augmentation: {attack}, ratio {cfg.adversarial.ratio}, eps {threat.epsilon}, "
        f"attacker controls {list(threat.controlled)}" if adversarial else "no adversarial augmentation",
    )

    history: list[dict[str, Any]] = []
    n = len(y_fit_t)
    epochs = range(1, cfg.epochs + 1)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(epochs, desc="adversarial training" if adversarial else "training", unit="epoch")
        epochs = bar
    best: tuple[float, int, dict[str, torch.Tensor]] | None = None  # (val AP, epoch, weights)
    patience = cfg.early_stopping_patience
    block_rows = cfg.batch_size * cfg.adversarial.craft_batches
    for epoch in epochs:
        start, cpu_start = time.perf_counter(), time.process_time()
        attack_seconds = 0.0
        loss_sum = 0.0
        order = torch.randperm(n, generator=generator)
        for block_first in range(0, n, block_rows):
            block = order[block_first:block_first + block_rows]
            x_block, y_block = x_fit[block], y_fit_t[block]
            if classifier is not None and attack is not None:
                t0 = time.perf_counter()
                rows = _adversarial_rows(y_block, cfg.batch_size, cfg.adversarial.ratio, cfg.adversarial.classes)
                if len(rows) > 0:
                    # One attack call for the block's minibatches, against the weights at its start.
                    x_adv = _attack_batch(attack, classifier, x_block[rows].numpy(), y_block[rows].numpy(), threat)
                    x_block[rows] = torch.from_numpy(x_adv)
                attack_seconds += time.perf_counter() - t0
            module.train()  # ART's gradient calls leave the module in eval mode
            for first in range(0, len(block), cfg.batch_size):
                xb, yb = x_block[first:first + cfg.batch_size], y_block[first:first + cfg.batch_size]
                optimizer.zero_grad()  # ART's gradient calls also leave gradients on the parameters
                loss = loss_fn(module(xb), yb)
                loss.backward()
                optimizer.step()
                loss_sum += float(loss.detach()) * len(yb)
        seconds = time.perf_counter() - start
        entry: dict[str, Any] = {
            "epoch": epoch,
            "loss": loss_sum / n,
            "seconds": seconds,
            # CPU seconds of this process over the epoch: on a shared machine, wall time also counts waiting.
            "cpu_seconds": time.process_time() - cpu_start,
            "adversarial_seconds": attack_seconds,
        }
        if x_val is not None:
            module.eval()
            with torch.no_grad():
                val_scores = torch.softmax(module(torch.from_numpy(x_val)), dim=1)[:, 1].numpy()
            entry["val_average_precision"] = _average_precision(y_val, val_scores)
        history.append(entry)
        logger.info(
            "epoch %d/%d: loss %.4f, %.2fs (%.2fs crafting adversarial rows), val AP %s",
            epoch, cfg.epochs, entry["loss"], seconds, attack_seconds,
            "n/a" if entry.get("val_average_precision") is None else f"{entry['val_average_precision']:.4f}",
        )
        if bar is not None:
            bar.set_postfix(loss=f"{entry['loss']:.4f}")
        val_ap = entry.get("val_average_precision")
        if patience is not None and val_ap is not None:
            if best is None or val_ap > best[0]:
                best = (val_ap, epoch, {k: v.detach().clone() for k, v in module.state_dict().items()})
            elif epoch - best[1] >= patience:
                logger.info("early stop after epoch %d: val AP best at epoch %d (%.4f)", epoch, best[1], best[0])
                break
    if bar is not None:
        bar.close()
    extra: dict[str, Any] = {"split_payment_copies": n_split_copies} if n_split_copies else {}
    if best is not None:
        module.load_state_dict(best[2])
        extra.update({"best_epoch": best[1], "best_val_average_precision": best[0]})

    module.eval()
    bundle = ModelBundle(
        module=module,
        standardizer=standardizer,
        hidden_sizes=tuple(int(h) for h in settings.model.hidden_sizes),
        dropout=float(settings.model.dropout),
        threshold=0.5,
    )
    train_scores = bundle.predict_proba(train_frame)
    bundle.threshold = threshold_at_fpr(train_scores, labels_all, settings.evaluate.fpr_for_recall)
    train_ap = _average_precision(labels_all, train_scores)
    logger.info(
        "trained: train AP %.4f, threshold %.6f (FPR %.3f on the training split's legitimate rows)",
        train_ap, bundle.threshold, settings.evaluate.fpr_for_recall,
    )
    return TrainingResult(
        bundle=bundle,
        history=history,
        seconds_per_epoch=float(np.mean([h["seconds"] for h in history])),
        adversarial=adversarial,
        attack=attack,
        n_rows=int(len(train_frame)),
        n_fit_rows=int(len(y_fit)),
        n_validation_rows=int(len(y_val)),
        fraud_rate=float(labels_all.mean()),
        train_average_precision=float(train_ap) if train_ap is not None else float("nan"),
        extra=extra,
    )
