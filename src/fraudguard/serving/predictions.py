"""The prediction log: every decision appended as one JSON line by a background writer thread.

The request path only appends a dict to a bounded deque (never blocks); when it is full the record is
dropped and counted (the gateway's /metrics shows it). The writer flushes after each burst it drains, and
on close. Lines: time, request_id, client, model_version, transaction (raw fields), features, score,
decision, threshold, latency_ms. TX_DATETIME is written with microseconds always
(isoformat(timespec="microseconds")); the reader accepts any ISO 8601 form, and skips and counts a line that is
not a decision (torn by a crash, or edited) instead of failing on it.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import threading
import time
from collections import deque
from dataclasses import dataclass
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
        self.lost = 0  # taken from the queue but not stored (serialisation or disk errors); in `dropped` too
        self.last_error: str | None = None
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

    def _drain(self, handle) -> bool:
        """Write what is pending, then flush; False when the file failed. A record is counted written only once
        flushed; one that cannot be serialised, or a batch the disk refused, is counted dropped (never written)."""
        lines = []
        while self._pending:
            record = self._pending.popleft()
            try:
                lines.append(json.dumps(record, allow_nan=False, default=str) + "\n")
            except (TypeError, ValueError) as exc:
                self._lose(1, f"a record cannot be written as JSON ({exc})")
        if not lines:
            return True
        try:
            handle.write("".join(lines))
            handle.flush()
        except OSError as exc:
            self._lose(len(lines), f"{self.path}: {exc}")
            return False
        self.written += len(lines)
        return True

    def _lose(self, count: int, why: str) -> None:
        self.lost += count
        self.dropped += count
        self.last_error = why
        for _ in range(count):
            self._on_drop()
        logger.error("prediction log: %d record(s) lost: %s", count, why)

    def _open(self):
        """The log for appending. A line torn by a crash (no newline at the end) is ended first: the next record
        would otherwise be glued to it and lost with it."""
        handle = self.path.open("a", encoding="utf-8")
        if handle.tell() > 0:
            with self.path.open("rb") as existing:
                existing.seek(-1, 2)
                torn = existing.read(1) != b"\n"
            if torn:
                handle.write("\n")
        return handle

    def _run(self) -> None:
        # A disk error (full, gone) loses the records it hit, counted, and the writer goes on: it opens the file
        # again after a second, so the log resumes once the disk is back. Before, the thread died on the error.
        while True:
            stopping = False
            try:
                with self._open() as handle:
                    healthy = True
                    while healthy and not stopping:
                        stopping = self._stop.wait(self._interval_s)
                        healthy = self._drain(handle)
            except OSError as exc:
                pending = len(self._pending)
                self._pending.clear()
                self._lose(pending, f"{self.path}: cannot open or close: {exc}")
            if stopping:
                return
            self._stop.wait(1.0)

    def flush(self, timeout_s: float = 10.0) -> None:
        """Wait until every record put so far is written or counted lost (for tests and shutdown)."""
        target, deadline = self.put_count, time.monotonic() + timeout_s
        while self.written + self.lost < target and time.monotonic() < deadline:
            time.sleep(0.01)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


# One decision line: what the monitor needs of it, and the JSON types each must have.
_TRANSACTION_FIELDS: dict[str, type | tuple[type, ...]] = {"TRANSACTION_ID": int, "CUSTOMER_ID": int, "TERMINAL_ID": int, "TX_DATETIME": str,
                       "TX_AMOUNT": (int, float)}
_SKIPPED_SHOWN = 20
# The decision's own fields beside the transaction's: a feature named like one of them would overwrite it.
_RECORD_FIELDS = ("time", "request_id", "client", "model_version", "score", "decision", "latency_ms")
# What the reader's one column-wide parse (pandas, format="ISO8601") takes: the gateway's form, with or without the
# fraction. Python's fromisoformat also takes week dates ("2024-W31-1") and years pandas cannot hold (9999).
_LOGGED_TIME = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?")
_YEARS = range(pd.Timestamp.min.year + 1, pd.Timestamp.max.year)


@dataclass(frozen=True)
class PredictionLogRead:
    """The readable decisions of a prediction log, and the lines skipped: (line number, reason), first ones only."""

    frame: pd.DataFrame
    skipped: int
    skipped_lines: tuple[tuple[int, str], ...]

    def describe_skipped(self, path: Path) -> str:
        shown = "; ".join(f"line {n}: {why}" for n, why in self.skipped_lines)
        more = f" (first {len(self.skipped_lines)} shown)" if self.skipped > len(self.skipped_lines) else ""
        return f"{path}: {self.skipped} unreadable line(s) skipped{more}: {shown}"


def _line_problem(record) -> str | None:
    """Why a parsed line cannot be a decision, or None when it can."""
    if not isinstance(record, dict):
        return "not a JSON object"
    transaction, features = record.get("transaction"), record.get("features")
    if not isinstance(transaction, dict):
        return "no transaction object"
    for field, kind in _TRANSACTION_FIELDS.items():
        value = transaction.get(field)
        if not isinstance(value, kind) or isinstance(value, bool):
            return f"transaction.{field} missing or not {getattr(kind, '__name__', 'a number')}"
    try:
        stamp = dt.datetime.fromisoformat(transaction["TX_DATETIME"])
    except ValueError:
        return "transaction.TX_DATETIME is not an ISO 8601 date and time"
    if stamp.tzinfo is not None:
        return "transaction.TX_DATETIME has a time zone (the gateway logs naive local times)"
    if not _LOGGED_TIME.fullmatch(transaction["TX_DATETIME"]) or stamp.year not in _YEARS:
        return "transaction.TX_DATETIME is not a date and time the gateway writes (YYYY-MM-DDTHH:MM:SS[.ffffff])"
    if not isinstance(features, dict) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in features.values()):
        return "features missing or not all numbers"
    clashing = sorted(set(features) & (set(_TRANSACTION_FIELDS) | set(_RECORD_FIELDS)))
    if clashing:
        return f"features named like transaction or decision fields ({', '.join(clashing[:3])})"
    if not isinstance(record.get("decision"), bool):
        return "decision missing or not a boolean"
    if not isinstance(record.get("model_version"), int) or isinstance(record.get("model_version"), bool):
        return "model_version missing or not an integer"
    score = record.get("score")
    if not isinstance(score, (int, float)) or isinstance(score, bool):
        return "score missing or not a number"
    return None


def load_prediction_log(path: Path) -> PredictionLogRead:
    """The log as a frame (one row per decision, features as columns, TX_DATETIME parsed as ISO 8601, with or
    without fractional seconds), skipping and counting lines that are torn or not a decision: one bad line in
    an append-only log must not stop the monitor from reading every later one."""
    rows: list[dict] = []
    shown: list[tuple[int, str]] = []
    skipped = 0

    def skip(number: int, why: str) -> None:
        nonlocal skipped
        skipped += 1
        if len(shown) < _SKIPPED_SHOWN:
            shown.append((number, why))

    with Path(path).open(encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                skip(number, f"not JSON ({exc.msg})")
                continue
            problem = _line_problem(record)
            if problem is not None:
                skip(number, problem)
                continue
            rows.append({**record["transaction"], **record["features"],
                         **{k: record.get(k) for k in _RECORD_FIELDS}})
    frame = pd.DataFrame(rows)
    if not frame.empty:
        # format="ISO8601": lines written before the fixed format omit ".000000" on whole seconds.
        frame["TX_DATETIME"] = pd.to_datetime(frame["TX_DATETIME"], format="ISO8601")
    read = PredictionLogRead(frame, skipped, tuple(shown))
    if skipped:
        logger.warning("%s", read.describe_skipped(Path(path)))
    return read


def read_prediction_log(path: Path) -> pd.DataFrame:
    """The readable decisions of the log as a frame (load_prediction_log, which also counts the lines skipped)."""
    return load_prediction_log(path).frame
