"""The FastAPI application of the scoring gateway (docs/serving.md).

POST /score, /score/batch and /feedback need an API key (X-API-Key); GET /health and /metrics do not
(probes and Prometheus scrape them). Handlers are `async` and never await between reading the state
store and writing to it, so transactions are featurized and recorded one at a time, in arrival order,
without locks; the model in use is read once per request (a hot switch replaces one reference).
"""


import asyncio
import importlib
import logging
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from fraudguard.config import Settings
from fraudguard.data.schema import TX_AMOUNT
from fraudguard.features import feature_names
from fraudguard.serving.champion import ChampionFollower, ServedModel
from fraudguard.serving.predictions import PredictionLog
from fraudguard.serving.schema import field_name, request_models
from fraudguard.serving.security import ApiClient, GatewayGuard, RateLimited, RateLimiter, charge_request, \
    request_cost
from fraudguard.serving.state import DuplicateTransaction, RawTransaction, StateStore, StateUnavailable
from fraudguard.serving.stores import open_state_store

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from fraudguard.signing import Verifier

logger = logging.getLogger(__name__)

PROTECTED = ("/score", "/feedback")
_ENDPOINTS = {"/score", "/score/batch", "/feedback", "/health", "/metrics"}
_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class GatewayMetrics:
    """Prometheus metrics of one gateway (its own registry, so several can live in one process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("fraudguard_requests", "HTTP requests", ["endpoint", "status"], registry=r)
        self.latency = Histogram("fraudguard_request_latency_seconds", "Request latency", ["endpoint"],
                                 buckets=_LATENCY_BUCKETS, registry=r)
        self.decisions = Counter("fraudguard_decisions", "Scored transactions", ["decision", "model_version"],
                                 registry=r)
        self.model_version = Gauge("fraudguard_model_version", "Version of the champion being served", registry=r)
        self.model_switches = Counter("fraudguard_model_switches", "Hot switches to a new champion", registry=r)
        self.switch_failures = Gauge("fraudguard_model_switch_failing",
                                     "1 while the newest champion cannot be verified or loaded", registry=r)
        self.log_dropped = Counter("fraudguard_prediction_log_dropped", "Decisions not logged (queue full, or the disk refused them)",
                                   registry=r)
        self.state_rows = Gauge("fraudguard_state_transactions", "Transactions in the state store", registry=r)


@dataclass
class Scored:
    """One request's decisions, and the standardized rows they were made on (for explanations)."""

    request_id: str
    served: ServedModel
    results: list[dict[str, Any]]
    standardized: np.ndarray


class Gateway:
    """The gateway's parts: state store, champion follower, prediction log and metrics."""

    def __init__(self, settings: Settings, root: Path, client: "MlflowClient", verifier: "Verifier",
                 api_clients: list[ApiClient]):
        self.settings, self.root = settings, Path(root)
        serve = settings.serve
        self.metrics = GatewayMetrics()
        self.api_clients = api_clients
        self.models = request_models(settings.validate_, serve)
        self.feature_names = set(feature_names(settings.featurize)) | {TX_AMOUNT}
        self.follower = ChampionFollower(client, settings.registry.model_name, verifier,
                                         self._path(serve.model_cache_dir), self.feature_names,
                                         serve.reload_interval_s, on_change=self._on_switch)
        self.store: StateStore | None = None
        self.log: PredictionLog | None = None
        self.limiter = RateLimiter()  # the guard charges 1 per request, the handlers the rest of its cost
        # Explanations (seconds of CPU for a large request) run here, one at a time, off the event loop.
        self.explainer: ThreadPoolExecutor | None = None

    def _path(self, path: Path) -> Path:
        return path if path.is_absolute() else self.root / path

    def _on_switch(self, old: ServedModel | None, new: ServedModel) -> None:
        self.metrics.model_version.set(new.version)
        if old is not None:
            self.metrics.model_switches.inc()

    def start(self) -> None:
        serve = self.settings.serve
        self.store = open_state_store(serve, self.settings.featurize, self.root)
        if self.store.count() == 0 and serve.bootstrap_from is not None:
            source = self._path(serve.bootstrap_from)
            if source.is_file():
                from fraudguard.data.io import read_transactions

                self.store.bootstrap(read_transactions(source))
            else:
                logger.warning("state store is empty and %s does not exist: features start from no history",
                               source)
        self.metrics.state_rows.set(self.store.count())
        self.log = PredictionLog(self._path(serve.prediction_log), serve.prediction_log_queue,
                                 on_drop=self.metrics.log_dropped.inc)
        # Captum takes seconds to import: done off the start-up path, so the first ?explain=true need not pay it.
        threading.Thread(target=importlib.import_module, args=("captum.attr",), name="captum-import",
                         daemon=True).start()
        self.follower.check()
        self.follower.start()

    def stop(self) -> None:
        self.follower.stop()
        if self.explainer is not None:
            self.explainer.shutdown(wait=True, cancel_futures=True)
            self.explainer = None
        if self.log is not None:
            self.log.close()
        if self.store is not None:
            self.store.close()

    # ------------------------------------------------------------------------------------------ scoring

    def score(self, transactions: list[RawTransaction], client: str, request_id: str, started: float) -> Scored:
        """Featurize, record and score the transactions in order; raises _Refused for a 409 or 503.
        Runs on the event loop: nothing else touches the state store between a read and its write."""
        served = self.follower.current
        if served is None:
            raise _Refused(503, "no verified champion to serve (see /health)", "model")
        rows = []
        bundle = served.bundle
        try:
            with self.store.transaction():
                for tx in transactions:
                    # One atomic step per transaction (one Lua script in Redis): no replica records a payment
                    # between this one's read and its write. DuplicateTransaction for an id already scored (or
                    # repeated in the batch); the batch is then undone.
                    rows.append(self.store.score_and_add(tx))
                # Scored inside the batch: a model that fails undoes the recorded transactions too. Before, they
                # stayed in the history (in later windows) and the retry of "nothing was decided" was a 409.
                values = np.array([[tx.amount if name == TX_AMOUNT else row[name] for name in bundle.features]
                                   for tx, row in zip(transactions, rows)], dtype=np.float64)
                std = bundle.standardizer
                standardized = ((values - std.mean) / std.std).astype(np.float32)
                scores = bundle.predict_proba_standardized(standardized)
                if not np.all(np.isfinite(scores)):
                    raise _Refused(500, "the model returned a non-finite score; nothing was decided or recorded",
                                   "model")
        except DuplicateTransaction as exc:
            raise _Refused(409, str(exc), "TRANSACTION_ID") from None
        latency_ms = (time.perf_counter() - started) * 1000
        results: list[dict[str, Any]] = []
        version = str(served.version)
        for tx, row, score in zip(transactions, rows, scores):
            flagged = bool(score >= bundle.threshold)
            results.append({"TRANSACTION_ID": tx.transaction_id, "fraud_probability": float(score),
                            "is_fraud": flagged})
            self.metrics.decisions.labels("fraud" if flagged else "legit", version).inc()
            self.log.put({
                "time": time.time(), "request_id": request_id, "client": client, "model_version": served.version,
                # One fixed format (isoformat drops ".000000" on whole seconds): the log reads back as one column.
                "transaction": {"TRANSACTION_ID": tx.transaction_id,
                                "TX_DATETIME": tx.time.isoformat(timespec="microseconds"),
                                "CUSTOMER_ID": tx.customer_id, "TERMINAL_ID": tx.terminal_id,
                                "TX_AMOUNT": tx.amount},
                "features": row, "score": float(score), "decision": flagged, "threshold": bundle.threshold,
                "latency_ms": round(latency_ms, 3)})
        self.metrics.state_rows.inc(len(transactions))
        return Scored(request_id, served, results, standardized)

    async def explain(self, scored: Scored) -> None:
        """Attach its attributions to every result, flagged or not (an analyst asks why one was declined as often
        as why one was not); computed on the explainer thread, so the event loop keeps scoring meanwhile."""
        loop = asyncio.get_running_loop()
        explanations = await loop.run_in_executor(self.explain_pool(), self._explain, scored.served.bundle,
                                                  scored.standardized)
        for result, explanation in zip(scored.results, explanations):
            result["explanation"] = explanation

    async def explain_or_say_why(self, scored: Scored) -> None:
        """explain(), but a failure costs only the reasons: the decisions stand (recorded and logged), so they are
        returned, each with `explanation: null` and `explanation_error` naming what failed."""
        try:
            await self.explain(scored)
        except Exception as exc:
            logger.exception("request %s: explanations failed", scored.request_id)
            for result in scored.results:
                result["explanation"] = None
                result["explanation_error"] = f"{type(exc).__name__}: {str(exc)[:200]}"

    def explain_pool(self) -> ThreadPoolExecutor:
        """The one thread explanations run on (created on first use; stop() shuts it down)."""
        if self.explainer is None:
            self.explainer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="explain")
        return self.explainer

    def _explain(self, bundle, standardized: np.ndarray) -> list[dict[str, Any]]:
        """Attributions of each row, in standardized input space, from the training mean."""
        from fraudguard.explanations import BASELINE, METHOD, explain_standardized

        found = explain_standardized(bundle, standardized, self.settings.serve.explain_steps)
        return [{"method": METHOD, "target": "fraud_probability", "space": "standardized", "baseline": BASELINE,
                 "baseline_probability": found.baseline_probability, "convergence_delta": float(found.delta[k]),
                 "attributions": found.row(k)} for k in range(len(standardized))]

    def health(self) -> tuple[int, dict[str, Any]]:
        served, status = self.follower.current, self.follower.status
        body = {
            "status": "unavailable" if served is None else ("degraded" if status.last_error else "ok"),
            "model_version": served.version if served else None,
            "attestation": served.attestation[:16] if served else None,
            "verified": served is not None,
            "loaded_at": served.loaded_at if served else None,
            "threshold": served.bundle.threshold if served else None,
            "last_check": status.last_check,
            "last_switch_error": status.last_error,
            "last_switch_error_at": status.last_error_at,
            "refused_version": status.failed_target[0] if status.failed_target else None,
            "switches": status.switches,
            "state_backend": self.settings.serve.state.backend,
            "state_transactions": _unavailable_count(self.store),
            "prediction_log_dropped": self.log.dropped if self.log else 0,
            "prediction_log_error": self.log.last_error if self.log else None,
        }
        self.metrics.switch_failures.set(1 if status.last_error else 0)
        return (200 if served is not None else 503), body


def _unavailable_count(store) -> int | None:
    try:
        return store.count() if store else None
    except StateUnavailable as exc:
        logger.error("%s", exc)
        return None


class _Refused(Exception):
    def __init__(self, status: int, message: str, field: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.field, self.headers = status, message, field, headers


def _raw(tx) -> RawTransaction:
    return RawTransaction(tx.TRANSACTION_ID, tx.TX_DATETIME, tx.CUSTOMER_ID, tx.TERMINAL_ID, tx.TX_AMOUNT)


def create_app(gateway: Gateway) -> Any:
    """The ASGI application: FastAPI routes inside the API-key/rate/size guard and a metrics recorder."""
    models = gateway.models
    Transaction, Batch, Feedback = models.transaction, models.batch, models.feedback
    metrics = gateway.metrics

    @asynccontextmanager
    async def lifespan(app):
        gateway.start()
        try:
            yield
        finally:
            gateway.stop()

    app = FastAPI(title="FraudGuard scoring gateway", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        fields = []
        for err in exc.errors():
            loc = tuple(err.get("loc", ()))
            name = "body" if err.get("type") == "json_invalid" else field_name(loc)
            message = str(err.get("msg", "invalid")).removeprefix("Value error, ")
            fields.append({"field": name, "message": message[:300]})
        return JSONResponse({"error": "invalid request", "fields": fields[:50]}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code)

    @app.exception_handler(_Refused)
    async def refused(request: Request, exc: _Refused):
        return JSONResponse({"error": exc.message, "field": exc.field}, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(StateUnavailable)
    async def state_down(request: Request, exc: StateUnavailable):
        logger.error("%s", exc)
        return JSONResponse({"error": "the state store is unavailable; nothing was scored", "field": "state"},
                            status_code=503)

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception):
        logger.exception("unhandled error on %s", request.url.path)
        return JSONResponse({"error": "internal error; see the gateway's log"}, status_code=500)

    def client_of(request: Request) -> str:
        return str(request.scope.get("state", {}).get("client", ""))

    serve = gateway.settings.serve

    def admit(request: Request, transactions: int, explain: bool) -> None:
        """Refuse (nothing scored) an explanation beyond the cap (422), or a request its client's rate cannot
        cover (429): a transaction costs 1 token, an explained one serve.explain_cost; the guard charged 1."""
        if explain and transactions > serve.max_explained_per_request:
            raise _Refused(422, f"explain=true explains at most serve.max_explained_per_request = "
                                f"{serve.max_explained_per_request} transactions per request; this one has "
                                f"{transactions}", "explain")
        api_client = request.scope.get("state", {}).get("api_client")
        if api_client is None:  # not through the guard (an in-process test app): nothing to charge
            return
        cost = request_cost(transactions, transactions if explain else 0, serve.explain_cost)
        try:
            charge_request(gateway.limiter, api_client, cost)
        except RateLimited as exc:
            headers = None if exc.retry_after_s is None else {"Retry-After": str(max(1, round(exc.retry_after_s)))}
            raise _Refused(429, str(exc), "X-API-Key", headers) from None

    async def scored(request: Request, transactions: list[RawTransaction], explain: bool) -> Scored:
        admit(request, len(transactions), explain)
        started, request_id = time.perf_counter(), uuid.uuid4().hex
        done = gateway.score(transactions, client_of(request), request_id, started)
        if explain:
            await gateway.explain_or_say_why(done)
        return done

    @app.post("/score")
    async def score(transaction: Transaction, request: Request, explain: bool = False):
        done = await scored(request, [_raw(transaction)], explain)
        return {"request_id": done.request_id, "model_version": done.served.version,
                "threshold": done.served.bundle.threshold, **done.results[0]}

    @app.post("/score/batch")
    async def score_batch(batch: Batch, request: Request, explain: bool = False):
        done = await scored(request, [_raw(t) for t in batch.transactions], explain)
        return {"request_id": done.request_id, "model_version": done.served.version,
                "threshold": done.served.bundle.threshold, "results": done.results}

    @app.post("/feedback")
    async def feedback(body: Feedback, request: Request):
        from fraudguard.serving.state import time_ns

        admit(request, len(body.labels), False)  # a label costs what a scored transaction does (labels feed training)
        store = gateway.store
        unknown, problems, conflicts, accepted, kept = [], [], [], [], 0
        seen: set[int] = set()
        for i, label in enumerate(body.labels):
            tx_time = store.transaction_time(label.TRANSACTION_ID)
            if label.TRANSACTION_ID in seen:
                problems.append({"field": f"labels[{i}].TRANSACTION_ID", "message": "is repeated in this request"})
            elif tx_time is None:
                unknown.append(label.TRANSACTION_ID)
            elif time_ns(label.LABEL_DATETIME) < tx_time:
                problems.append({"field": f"labels[{i}].LABEL_DATETIME",
                                 "message": "is before the transaction's TX_DATETIME"})
            elif store.fraud_label_time(label.TRANSACTION_ID) is not None:
                # A chargeback on record is history: the same again changes nothing, a legitimate label would erase it.
                if label.TX_FRAUD:
                    kept += 1
                else:
                    conflicts.append({"field": f"labels[{i}].TX_FRAUD",
                                      "message": "the transaction already holds a fraud label; it is not changed"})
            else:
                accepted.append(label)
            seen.add(label.TRANSACTION_ID)
        if problems:
            return JSONResponse({"error": "invalid request", "fields": problems[:50]}, status_code=422)
        if conflicts:
            return JSONResponse({"error": "conflict", "fields": conflicts[:50]}, status_code=409)
        with store.transaction():
            for label in accepted:
                store.record_label(label.TRANSACTION_ID, label.TX_FRAUD, label.LABEL_DATETIME)
        return {"recorded": len(accepted), "already_recorded": kept, "unknown_transaction_ids": unknown[:100],
                "unknown": len(unknown)}

    @app.get("/health")
    async def health():
        status, body = gateway.health()
        return JSONResponse(body, status_code=status)

    @app.get("/metrics")
    async def prometheus():
        gateway.health()  # refreshes the switch-failure gauge
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    # Rejections by the guard (401, 413, 429) are counted by the recorder, which wraps it.
    guarded = GatewayGuard(app, gateway.api_clients, gateway.settings.serve.max_body_bytes, PROTECTED,
                           limiter=gateway.limiter)

    async def recorder(scope, receive, send):
        if scope["type"] != "http":
            await guarded(scope, receive, send)
            return
        started = time.perf_counter()
        endpoint = scope["path"] if scope["path"] in _ENDPOINTS else "other"
        status_code = [500]

        async def send_status(message):
            if message["type"] == "http.response.start":
                status_code[0] = message["status"]
            await send(message)

        try:
            await guarded(scope, receive, send_status)
        finally:
            metrics.requests.labels(endpoint, str(status_code[0])).inc()
            metrics.latency.labels(endpoint).observe(time.perf_counter() - started)

    recorder.gateway = gateway
    return recorder

