"""Split payments: a fraud's amount paid in k payments at the same terminal, interval_s apart.

The threat model's attacker also chooses k (2..threat_model.split_payments.max_splits) within the fraud's
total amount (issue #11). Pieces are the amount in cents split as evenly as possible (the first
amount % k pieces one cent larger); piece j happens j * interval_s after the whole payment would have.

Two ways to get the pieces' features:
- split_into_payments replaces rows of a transaction table by their pieces; compute_features on the result
  gives the exact features (the red-team attack, fraudguard.redteam.split_payments).
- piece_features derives them from the whole payment's feature row alone, with the window definitions of
  fraudguard.features (training copies, the robustness gate's check: no transaction table there). Exact
  when the card has no other transaction in (t, t + j * interval_s] and none leaves a customer window in
  those seconds; terminal windows are taken unchanged (with a label delay they end days before t, so a few
  minutes move them by at most the rows at their boundary).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from fraudguard.data.schema import TRANSACTION_ID, TX_AMOUNT, TX_DATETIME, TX_FRAUD
from fraudguard.features import (
    TX_DURING_NIGHT,
    TX_DURING_WEEKEND,
    calendar_flags,
    customer_avg_amount,
    customer_nb_tx,
    customer_nb_tx_hours,
    customer_spend_hours,
    terminal_nb_fraud,
    terminal_nb_tx,
    terminal_risk,
    window_fraud_count,
    window_mean,
    window_risk,
    window_spend,
)

if TYPE_CHECKING:
    from fraudguard.config import (
        FeaturizeSettings,
        SplitPaymentThreatSettings,
        SplitPaymentTrainingSettings,
    )

SPLIT_OF = "SPLIT_OF"        # piece_features: the whole payment's TRANSACTION_ID
SPLIT_PIECE = "SPLIT_PIECE"  # piece_features: j, the piece's position (0 first)


def piece_cents(amounts: np.ndarray, k: int) -> np.ndarray:
    """(n, k) int64: each amount in cents split into k pieces summing to it, the first amount % k one cent larger."""
    cents = np.round(np.asarray(amounts, dtype=np.float64) * 100).astype(np.int64)
    j = np.arange(k)
    return (cents // k)[:, None] + (j[None, :] < (cents % k)[:, None])


def split_into_payments(transactions: pd.DataFrame, ids: np.ndarray, k: int, interval_s: float,
                        first_new_id: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """`transactions` with each row of `ids` replaced by k payments (amounts in cents summing to the
    original; the first keeps its id and time); also the pieces' (TRANSACTION_ID, original id) map."""
    chosen = transactions[transactions[TRANSACTION_ID].isin(ids)]
    pieces = chosen.loc[chosen.index.repeat(k)].copy()
    j = np.tile(np.arange(k), len(chosen))
    pieces[TX_AMOUNT] = piece_cents(chosen[TX_AMOUNT].to_numpy(), k).ravel() / 100.0
    pieces[TX_DATETIME] = pieces[TX_DATETIME] + pd.to_timedelta(j * interval_s, unit="s")
    original = pieces[TRANSACTION_ID].to_numpy()
    new_ids = first_new_id + np.arange(len(pieces), dtype=np.int64)
    pieces[TRANSACTION_ID] = np.where(j == 0, original, new_ids)
    out = pd.concat([transactions[~transactions[TRANSACTION_ID].isin(ids)], pieces], ignore_index=True)
    return out, pd.DataFrame({TRANSACTION_ID: pieces[TRANSACTION_ID].to_numpy(), "original": original})


def piece_features(frame: pd.DataFrame, k: int, interval_s: float, settings: "FeaturizeSettings",
                   pieces: Sequence[int] | None = None) -> pd.DataFrame:
    """The rows of `frame` (whole payments with their compute_features columns) paid in k pieces: for each
    row, its pieces j in `pieces` (default: all k), with the features compute_features would give them
    (module docstring for when that is exact), plus SPLIT_OF and SPLIT_PIECE. Labels are copied."""
    js = np.arange(k) if pieces is None else np.asarray(pieces, dtype=np.int64)
    if js.size == 0 or js.min() < 0 or js.max() >= k:
        raise ValueError(f"pieces {list(js)} must be positions in 0..{k - 1}")
    n = len(frame)
    whole = frame[TX_AMOUNT].to_numpy(dtype=np.float64)
    cents = piece_cents(whole, k)
    paid = np.cumsum(cents, axis=1)[:, js] / 100.0          # (n, len(js)): amount paid up to piece j
    amount = cents[:, js] / 100.0
    out = frame.loc[frame.index.repeat(len(js))].reset_index(drop=True)
    j = np.tile(js, n)
    # Pieces replace the whole payment: windows lose it and gain the pieces paid so far.
    gained = (paid - whole[:, None]).ravel()
    out[SPLIT_OF] = out[TRANSACTION_ID].to_numpy()
    out[SPLIT_PIECE] = j
    out[TX_AMOUNT] = amount.ravel()
    out[TX_DATETIME] = out[TX_DATETIME] + pd.to_timedelta(j * interval_s, unit="s")
    stamps = out[TX_DATETIME]
    out[TX_DURING_WEEKEND], out[TX_DURING_NIGHT] = calendar_flags(stamps.dt.weekday.to_numpy(),
                                                                  stamps.dt.hour.to_numpy(), settings)
    for w in settings.windows_days:
        count = out[customer_nb_tx(w)].to_numpy(dtype=np.int64)
        total = out[customer_avg_amount(w)].to_numpy(dtype=np.float64) * count + gained
        out[customer_nb_tx(w)] = (count + j).astype(np.int32)
        out[customer_avg_amount(w)] = window_mean(total, count + j)
    for h in settings.windows_hours:
        out[customer_nb_tx_hours(h)] = (out[customer_nb_tx_hours(h)].to_numpy(dtype=np.int64) + j).astype(np.int32)
        out[customer_spend_hours(h)] = window_spend(out[customer_spend_hours(h)].to_numpy(dtype=np.float64) + gained)
    if settings.label_delay_days == 0:
        # Without a label delay a terminal window (t - w, t] holds the earlier pieces and their labels.
        fraud = out[TX_FRAUD].to_numpy(dtype=np.int64)
        for w in settings.windows_days:
            count = out[terminal_nb_tx(w)].to_numpy(dtype=np.int64) + j
            frauds = out[terminal_nb_fraud(w)].to_numpy(dtype=np.int64) + j * fraud
            out[terminal_nb_tx(w)] = count.astype(np.int32)
            out[terminal_nb_fraud(w)] = window_fraud_count(frauds)
            out[terminal_risk(w)] = window_risk(frauds, count)
    return out


def split_payment_training_rows(fit_frame: pd.DataFrame, cfg: "SplitPaymentTrainingSettings | None",
                                threat: "SplitPaymentThreatSettings | None", featurize: "FeaturizeSettings",
                                seed: int) -> pd.DataFrame:
    """Training copies that teach the model to flag split frauds (cfg: train.split_payments; threat:
    threat_model.split_payments): for each fraud of `fit_frame` and each k of `splits`, its last piece (whose
    hour windows hold the whole amount), labelled fraud, `copies` times; and for each legitimate row one last
    piece of a split into k drawn (seeded by `seed`, train.seed) from `legit_splits`, labelled legitimate, so
    that paying several times within the hour is not in itself the signal, the spend against the card's habits
    is. Empty when the copies are off."""
    if cfg is None or not cfg.enabled or threat is None:
        return fit_frame.iloc[0:0]

    def last_pieces(rows: pd.DataFrame, k: int) -> pd.DataFrame:
        return piece_features(rows, k, threat.interval_s, featurize,
                              pieces=[k - 1]).drop(columns=[SPLIT_OF, SPLIT_PIECE])

    frauds = fit_frame[fit_frame[TX_FRAUD] == 1]
    parts = [last_pieces(frauds, k) for k in cfg.splits for _ in range(cfg.copies)]
    if cfg.legit_splits:
        legit = fit_frame[fit_frame[TX_FRAUD] == 0]
        ks = np.random.default_rng(seed).choice(np.asarray(cfg.legit_splits), size=len(legit))
        parts += [last_pieces(legit[ks == k], k) for k in cfg.legit_splits if (ks == k).any()]
    return pd.concat(parts, ignore_index=True)


def flagged_share_of_split(bundle, frauds: pd.DataFrame, k: int, interval_s: float,
                           settings: "FeaturizeSettings") -> float:
    """Share of `frauds` (whole payments, with features) with at least one of their k pieces flagged by
    `bundle` at its threshold (NaN for no rows)."""
    if frauds.empty:
        return float("nan")
    pieces = piece_features(frauds.reset_index(drop=True).assign(**{TRANSACTION_ID: np.arange(len(frauds))}),
                            k, interval_s, settings)
    flagged = pd.Series(bundle.predict_proba(pieces) >= bundle.threshold).groupby(pieces[SPLIT_OF].to_numpy()).any()
    return float(flagged.mean())
