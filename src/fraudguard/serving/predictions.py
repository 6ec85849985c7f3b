"""The prediction log: every decision appended as one JSON line by a background writer thread.

The request path only puts a dict on a bounded queue (never blocks); when the queue is full the record is
dropped and counted (the gateway's /metrics shows it). The writer flushes after each burst it drains, and
on close. Lines: time, request_id, client, model_version, transaction (raw fields), features, score,
decision, threshold, latency_ms.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
from pathlib import Path

import pandas as pd

logger = logging.getLogger(__name__)

_STOP = object()


class PredictionLog:
    """A JSONL file appended by one daemon thread; put() never blocks."""

    def __init__(self, path: Path, max_queue: int, on_drop=None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._queue: queue.Queue = queue.Queue(maxsize=max_queue)
        self._on_drop = on_drop or (lambda: None)
        self.dropped = 0
        self.written = 0
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self._thread.start()

    def put(self, record: dict) -> None:
        try:
            self._queue.put_nowait(record)
        except queue.Full:
            self.dropped += 1
            self._on_drop()

    def _run(self) -> None:
        with self.path.open("a", encoding="utf-8") as handle:
            while True:
                item = self._queue.get()
                batch = [item]
                while True:  # drain what is waiting, then flush once
                    try:
                        batch.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
                stop = False
                for record in batch:
                    if record is _STOP:
                        stop = True
                        continue
                    try:
                        handle.write(json.dumps(record, allow_nan=False, default=str) + "\n")
                        self.written += 1
                    except (TypeError, ValueError) as exc:
                        logger.error("prediction log: record not written (%s)", exc)
                handle.flush()
                for _ in batch:
                    self._queue.task_done()
                if stop:
                    return

    def flush(self, timeout_s: float = 10.0) -> None:
        """Wait until every record put so far is written (for tests and shutdown)."""
        done = threading.Event()

        def waiter():
            self._queue.join()
            done.set()

        threading.Thread(target=waiter, daemon=True).start()
        done.wait(timeout_s)

    def close(self) -> None:
        self._queue.put(_STOP)
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
