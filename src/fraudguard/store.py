"""Bounded retries for a busy or unreachable tracking store.

A sqlite store answers `database is locked` while another process writes; a server store can be briefly
unreachable. Registry operations go through `resilient(client)`: each call is retried with exponential
backoff within a time budget, then StoreUnavailable names the cause and what to do. Every registry write
here is idempotent (tag set, alias set), so a retried call that had in fact landed does no harm.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Callable
from typing import Any, TypeVar

from fraudguard.errors import StoreUnavailable

logger = logging.getLogger(__name__)

RETRY_BUDGET_ENV = "FRAUDGUARD_STORE_RETRY_S"
DEFAULT_RETRY_BUDGET_S = 30.0
_TRANSIENT_MARKERS = (
    "database is locked", "database table is locked", "database is busy", "sqlite_busy",
    "connection refused", "max retries exceeded", "temporarily unavailable", "failed to establish",
    "connection reset", "connection aborted", "read timed out", "server closed the connection",
    "could not connect to server", "too many connections", "503", "502", "504",
)
T = TypeVar("T")


def is_transient(exc: BaseException) -> bool:
    """True for a store error that a retry can cure: locked sqlite, refused/reset connection, 5xx."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        name = type(current).__name__
        text = str(current).lower()
        if name in ("ConnectionError", "ConnectTimeout", "ReadTimeout") or \
                any(marker in text for marker in _TRANSIENT_MARKERS):
            return True
        current = current.__cause__ or current.__context__
    return False


def retry_budget_s() -> float:
    try:
        return max(0.0, float(os.environ.get(RETRY_BUDGET_ENV, DEFAULT_RETRY_BUDGET_S)))
    except ValueError:
        return DEFAULT_RETRY_BUDGET_S


def call_with_retries(fn: Callable[..., T], *args: Any, what: str = "", **kwargs: Any) -> T:
    """fn(*args, **kwargs), retried on transient store errors; StoreUnavailable once the budget is spent."""
    budget = retry_budget_s()
    deadline = time.monotonic() + budget
    delay = 0.2
    attempt = 0
    while True:
        attempt += 1
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # classified below: only transient store errors are retried
            if not is_transient(exc):
                raise
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
                raise StoreUnavailable(
                    f"tracking store busy or unreachable during {what or getattr(fn, '__name__', 'a call')} "
                    f"after {attempt} attempt(s) in {budget:.0f}s ({type(exc).__name__}: {first_line}); "
                    f"nothing half-done is left unrecorded: retry the command, or raise ${RETRY_BUDGET_ENV}"
                ) from exc
            pause = min(delay, remaining) * (0.5 + random.random() / 2)  # nosec B311 - jitter, not crypto
            logger.warning("store busy (%s); retrying in %.1fs", type(exc).__name__, pause)
            time.sleep(pause)
            delay = min(delay * 2, 5.0)


class ResilientClient:
    """Wraps an MlflowClient (or MLflow's registry client): every method call gets call_with_retries."""

    def __init__(self, inner: Any):
        self._inner = inner

    @property
    def inner(self) -> Any:
        return self._inner

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if not callable(attr) or name.startswith("__"):
            return attr

        def retried(*args: Any, **kwargs: Any) -> Any:
            return call_with_retries(attr, *args, what=name, **kwargs)

        return retried


def resilient(client: Any) -> Any:
    """The client with bounded retries on every call (idempotent: wrapping twice wraps once)."""
    return client if isinstance(client, ResilientClient) else ResilientClient(client)
