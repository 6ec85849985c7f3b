"""Seeded, vectorised transaction simulator after the Fraud Detection Handbook (Le Borgne et al.).

Customers and terminals sit on a 100x100 grid; each customer pays at the terminals within
`terminal_radius`. Three fraud scenarios are injected: (1) amounts above a threshold, (2) compromised
terminals, (3) compromised customers whose stolen-card transactions are inflated. Same seed and
settings give the same frame; `fraudguard.data.io.write_transactions` turns that into the same bytes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from fraudguard.config import SimulateSettings
from fraudguard.data import schema

logger = logging.getLogger(__name__)

GRID_SIZE = 100.0
SECONDS_PER_DAY = 86_400
# The handbook's time-of-day law: Normal(noon, 20000 s), times outside the day dropped.
TIME_OF_DAY_MEAN_S = SECONDS_PER_DAY / 2
TIME_OF_DAY_STD_S = 20_000.0


@dataclass(frozen=True)
class SimulatedWorld:
    """Everything the simulator drew: profiles (with grid locations) and the transactions."""

    customers: pd.DataFrame  # CUSTOMER_ID, x_customer_id, y_customer_id, mean_amount, std_amount, mean_nb_tx_per_day
    terminals: pd.DataFrame  # TERMINAL_ID, x_terminal_id, y_terminal_id (handbook names)
    transactions: pd.DataFrame  # the raw schema, sorted by time, TRANSACTION_ID = row number


def simulate_transactions(settings: SimulateSettings) -> pd.DataFrame:
    """Seeded handbook transactions in the raw schema (sorted by time, TRANSACTION_ID = row number)."""
    return simulate_world(settings).transactions


def simulate_world(settings: SimulateSettings) -> SimulatedWorld:
    """Draw customer and terminal profiles, their transactions, and inject the three fraud scenarios."""
    rng = np.random.default_rng(settings.seed)
    customers = _customer_profiles(rng, settings.n_customers)
    terminals = _terminal_profiles(rng, settings.n_terminals)
    tx = _genuine_transactions(rng, customers, terminals, settings)
    tx = _inject_frauds(rng, tx, settings)
    frame = _to_raw_frame(tx, settings)
    logger.info(
        "simulated %d transactions (%d customers, %d terminals, %d days), fraud rate %.4f",
        len(frame), settings.n_customers, settings.n_terminals, settings.n_days,
        float(frame[schema.TX_FRAUD].mean()) if len(frame) else 0.0,
    )
    return SimulatedWorld(customers=customers, terminals=terminals, transactions=frame)


def _customer_profiles(rng: np.random.Generator, n: int) -> pd.DataFrame:
    xy = rng.uniform(0, GRID_SIZE, size=(n, 2))
    mean_amount = rng.uniform(5, 100, size=n)
    return pd.DataFrame({
        schema.CUSTOMER_ID: np.arange(n, dtype=np.int64),
        "x_customer_id": xy[:, 0],
        "y_customer_id": xy[:, 1],
        "mean_amount": mean_amount,
        "std_amount": mean_amount / 2,
        "mean_nb_tx_per_day": rng.uniform(0, 4, size=n),
    })


def _terminal_profiles(rng: np.random.Generator, n: int) -> pd.DataFrame:
    xy = rng.uniform(0, GRID_SIZE, size=(n, 2))
    return pd.DataFrame({
        schema.TERMINAL_ID: np.arange(n, dtype=np.int64),
        "x_terminal_id": xy[:, 0],
        "y_terminal_id": xy[:, 1],
    })


def _terminals_within_radius(customers: pd.DataFrame, terminals: pd.DataFrame, radius: float
                             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CSR layout of each customer's reachable terminals: (flat terminal ids, offsets, counts)."""
    c_xy = customers[["x_customer_id", "y_customer_id"]].to_numpy()
    t_xy = terminals[["x_terminal_id", "y_terminal_id"]].to_numpy()
    ids: list[np.ndarray] = []
    # Chunked so a large world does not build one n_customers x n_terminals matrix.
    chunk = max(1, 2_000_000 // max(1, len(t_xy)))
    for start in range(0, len(c_xy), chunk):
        d = np.sqrt(((c_xy[start:start + chunk, None, :] - t_xy[None, :, :]) ** 2).sum(axis=2))
        ids.extend(np.flatnonzero(row < radius) for row in d)
    counts = np.array([len(a) for a in ids], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    flat = np.concatenate(ids).astype(np.int64) if ids else np.empty(0, dtype=np.int64)
    return flat, offsets, counts


def _genuine_transactions(rng: np.random.Generator, customers: pd.DataFrame, terminals: pd.DataFrame,
                          settings: SimulateSettings) -> dict[str, np.ndarray]:
    n_c, n_days = len(customers), settings.n_days
    lam = customers["mean_nb_tx_per_day"].to_numpy()
    per_day = rng.poisson(lam[:, None], size=(n_c, n_days))
    cust = np.repeat(np.repeat(np.arange(n_c), n_days), per_day.ravel())
    day = np.repeat(np.tile(np.arange(n_days), n_c), per_day.ravel())

    # Handbook: int(normal(noon, 20000)), kept only strictly inside the day.
    time_of_day = rng.normal(TIME_OF_DAY_MEAN_S, TIME_OF_DAY_STD_S, size=len(cust)).astype(np.int64)
    keep = (time_of_day > 0) & (time_of_day < SECONDS_PER_DAY)

    mean = customers["mean_amount"].to_numpy()[cust]
    std = customers["std_amount"].to_numpy()[cust]
    amount = rng.normal(mean, std)
    # Handbook: a negative draw is replaced by Uniform(0, 2 * mean).
    negative = amount < 0
    amount[negative] = rng.uniform(0, 2 * mean[negative])
    amount = np.round(amount, 2)

    flat, offsets, counts = _terminals_within_radius(customers, terminals, settings.terminal_radius)
    pick = np.floor(rng.uniform(size=len(cust)) * counts[cust]).astype(np.int64)
    has_terminal = counts[cust] > 0
    # A sentinel slot at the end keeps the gather valid for customers with no terminal.
    terminal = np.append(flat, -1)[np.where(has_terminal, offsets[cust] + pick, len(flat))]
    # Customers with no terminal in reach make no transactions, as in the handbook.
    keep &= has_terminal

    seconds = day * SECONDS_PER_DAY + time_of_day
    tx = {"seconds": seconds[keep], "day": day[keep], "customer": cust[keep],
          "terminal": terminal[keep], "amount": amount[keep]}
    # Stable sort on time keeps generation order for ties, so the order is seed-determined.
    order = np.argsort(tx["seconds"], kind="stable")
    return {k: v[order] for k, v in tx.items()}


def _compromised_per_day(share: float, population: int, n_days: int) -> np.ndarray:
    """How many entities are compromised each day: `share * population` on average, spread
    deterministically (carry the fractional part) so small worlds still get a few."""
    cumulative = np.floor(share * population * np.arange(n_days + 1) + 1e-9).astype(np.int64)
    return np.minimum(np.diff(cumulative), population)


def _compromise_matrix(rng: np.random.Generator, population: int, n_days: int, share: float,
                       duration_days: int) -> np.ndarray:
    """Boolean [entity, day]: compromised on that day (each draw lasts `duration_days`)."""
    comp = np.zeros((population, n_days), dtype=bool)
    for day, k in enumerate(_compromised_per_day(share, population, n_days)):
        if k:
            chosen = rng.choice(population, size=k, replace=False)
            comp[chosen, day:day + duration_days] = True
    return comp


def _inject_frauds(rng: np.random.Generator, tx: dict[str, np.ndarray], settings: SimulateSettings
                   ) -> dict[str, np.ndarray]:
    n = len(tx["seconds"])
    fraud = np.zeros(n, dtype=np.int64)
    scenario = np.zeros(n, dtype=np.int64)

    # Scenario 1: large amounts (on the genuine amount, before scenario 3 inflates any).
    s1 = tx["amount"] > settings.fraud_amount_threshold
    fraud[s1], scenario[s1] = 1, 1

    # Scenario 2: a compromised terminal makes every transaction fraudulent for `terminal_compromise_days`.
    comp_t = _compromise_matrix(rng, settings.n_terminals, settings.n_days,
                                settings.terminal_compromise_share_per_day, settings.terminal_compromise_days)
    s2 = comp_t[tx["terminal"], tx["day"]] if n else np.zeros(0, dtype=bool)
    fraud[s2], scenario[s2] = 1, 2

    # Scenario 3: a compromised customer's card is used by a fraudster for part of its transactions,
    # with amounts inflated. Per-transaction Bernoulli draw replaces the handbook's per-day sampling,
    # which could inflate a transaction twice when windows overlapped.
    comp_c = _compromise_matrix(rng, settings.n_customers, settings.n_days,
                                settings.customer_compromise_share_per_day, settings.customer_compromise_days)
    in_window = comp_c[tx["customer"], tx["day"]] if n else np.zeros(0, dtype=bool)
    s3 = in_window & (rng.uniform(size=n) < settings.customer_fraud_share)
    fraud[s3], scenario[s3] = 1, 3
    amount = tx["amount"].copy()
    amount[s3] = np.round(amount[s3] * settings.customer_fraud_amount_factor, 2)
    return {**tx, "amount": amount, "fraud": fraud, "scenario": scenario}


def _to_raw_frame(tx: dict[str, np.ndarray], settings: SimulateSettings) -> pd.DataFrame:
    start = pd.Timestamp(settings.start_date)
    n = len(tx["seconds"])
    return pd.DataFrame({
        schema.TRANSACTION_ID: np.arange(n, dtype=np.int64),
        schema.TX_DATETIME: (start + pd.to_timedelta(tx["seconds"], unit="s")).astype("datetime64[ns]"),
        schema.CUSTOMER_ID: tx["customer"].astype(np.int64),
        schema.TERMINAL_ID: tx["terminal"].astype(np.int64),
        schema.TX_AMOUNT: tx["amount"].astype(np.float64),
        schema.TX_FRAUD: tx["fraud"].astype(np.int64),
        schema.TX_FRAUD_SCENARIO: tx["scenario"].astype(np.int64),
    })
