"""The prediction log: every decision appended as one JSON line by a background writer thread.

The request path only appends a dict to a bounded deque (never blocks); when it is full the record is
dropped and counted (the gateway's /metrics shows it). The writer flushes after each burst it drains, and
on close. Lines: time, request_id, client, model_version, transaction (raw fields), features, score,
decision, threshold, latency_ms.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from pathlib import Path

import pandas as pd

logger = logging.getLogger(__name__)


class PredictionLog:
    """A JSONL file appended by one daemon thread; put() never blocks (a deque append, no thread wake-up)."""

    def __init__(self, path: Path, max_queue: int, on_drop=None, interval_s: float = 0.05):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._pending: deque = deque()
        self._max = max_queue
        self._interval_s = interval_s
        self._on_drop = on_drop or (lambda: None)
        self.dropped = 0
        self.put_count = 0
        self.written = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self._thread.start()

    def put(self, record: dict) -> None:
        if len(self._pending) >= self._max:
            self.dropped += 1
            self._on_drop()
            return
        self.put_count += 1
        self._pending.append(record)

    def _drain(self, handle) -> None:
        wrote = False
        while self._pending:
            record = self._pending.popleft()
            try:
                handle.write(json.dumps(record, allow_nan=False, default=str) + "\n")
            except (TypeError, ValueError) as exc:
                logger.error("prediction log: record not written (%s)", exc)
            self.written += 1
            wrote = True
        if wrote:
            handle.flush()

    def _run(self) -> None:
        with self.path.open("a", encoding="utf-8") as handle:
            while not self._stop.wait(self._interval_s):
                self._drain(handle)
            self._drain(handle)

    def flush(self, timeout_s: float = 10.0) -> None:
        """Wait until every record put so far is written (for tests and shutdown)."""
        target, deadline = self.put_count, time.monotonic() + timeout_s
        while self.written < target and time.monotonic() < deadline:
            time.sleep(0.01)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def read_prediction_log(path: Path) -> pd.DataFrame:
    """The log as a frame: one row per decision, features as columns, TX_DATETIME parsed; skips torn lines."""
    rows = []
    with Path(path).open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                logger.warning("%s:%d: unreadable line skipped", path, number)
                continue
            rows.append({**record.get("transaction", {}), **record.get("features", {}),
                         **{k: record.get(k) for k in ("time", "request_id", "client", "model_version",
                                                        "score", "decision", "latency_ms")}})
    frame = pd.DataFrame(rows)
    if not frame.empty:
        frame["TX_DATETIME"] = pd.to_datetime(frame["TX_DATETIME"])
    return frame
