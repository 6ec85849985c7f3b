"""API keys per client, a per-key rate limit and a request body size limit, as one ASGI middleware.

Keys are never in the repository or params.yaml: $FRAUDGUARD_API_KEYS_FILE names a YAML/JSON file
(`client: key` or `client: {key: ..., rate_limit_per_s: ..., rate_limit_burst: ...}`), or
$FRAUDGUARD_API_KEYS holds "client:key,client:key". A presented key is compared with every configured key
in constant time (hmac.compare_digest on sha256 digests, no early exit), so timing tells nothing about
which prefix matched.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from fraudguard.config import ServeSettings
from fraudguard.errors import ConfigError

KEYS_FILE_ENV = "FRAUDGUARD_API_KEYS_FILE"
KEYS_ENV = "FRAUDGUARD_API_KEYS"
API_KEY_HEADER = b"x-api-key"
_MIN_KEY_CHARS = 16


@dataclass(frozen=True)
class ApiClient:
    name: str
    key_digest: bytes
    rate_per_s: float
    burst: int


def _client(name: str, spec: Any, settings: ServeSettings, source: str) -> ApiClient:
    if isinstance(spec, str):
        spec = {"key": spec}
    if not isinstance(spec, Mapping) or not isinstance(spec.get("key"), str):
        raise ConfigError(f"{source}: client {name!r} needs a key (a string)")
    unknown = set(spec) - {"key", "rate_limit_per_s", "rate_limit_burst"}
    if unknown:
        raise ConfigError(f"{source}: client {name!r}: unknown field(s) {sorted(unknown)}")
    key = spec["key"]
    if len(key) < _MIN_KEY_CHARS:
        raise ConfigError(f"{source}: client {name!r}: key shorter than {_MIN_KEY_CHARS} characters")
    try:
        rate = float(spec.get("rate_limit_per_s", settings.rate_limit_per_s))
        burst = int(spec.get("rate_limit_burst", settings.rate_limit_burst))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{source}: client {name!r}: bad rate limit ({exc})") from exc
    if not rate > 0 or burst <= 0:
        raise ConfigError(f"{source}: client {name!r}: rate limits must be > 0")
    return ApiClient(str(name), hashlib.sha256(key.encode()).digest(), rate, burst)


def load_api_clients(settings: ServeSettings, env: Mapping[str, str] | None = None) -> list[ApiClient]:
    """The configured clients (file first, else the variable); ConfigError when none or malformed."""
    env = os.environ if env is None else env
    path = env.get(KEYS_FILE_ENV)
    if path:
        try:
            data = yaml.safe_load(Path(path).expanduser().read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"${KEYS_FILE_ENV}={path}: unreadable API key file ({exc})") from exc
        if not isinstance(data, Mapping) or not data:
            raise ConfigError(f"${KEYS_FILE_ENV}={path}: must map client names to keys")
        clients = [_client(str(name), spec, settings, path) for name, spec in data.items()]
    elif env.get(KEYS_ENV):
        clients = []
        for item in env[KEYS_ENV].split(","):
            name, sep, key = item.strip().partition(":")
            if not sep or not name:
                raise ConfigError(f"${KEYS_ENV}: expected client:key pairs separated by commas")
            clients.append(_client(name, key, settings, f"${KEYS_ENV}"))
    else:
        raise ConfigError(f"no API keys: set ${KEYS_FILE_ENV} to a key file or ${KEYS_ENV} to "
                          "client:key pairs (never commit keys)")
    digests = [c.key_digest for c in clients]
    if len(set(digests)) != len(digests):
        raise ConfigError("two API clients share one key")
    return clients


def authenticate(clients: Iterable[ApiClient], presented: bytes | None) -> ApiClient | None:
    """The client whose key equals `presented`, compared in constant time against every key."""
    digest = hashlib.sha256(presented or b"").digest()
    found = None
    for client in clients:
        if hmac.compare_digest(client.key_digest, digest) and presented:
            found = client
    return found


class RateLimiter:
    """A token bucket per client: `burst` requests at once, refilled at `rate_per_s`."""

    def __init__(self) -> None:
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def allow(self, client: ApiClient, cost: float = 1.0) -> float:
        """0 when allowed (and charged), else the seconds until it would be."""
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(client.name, (float(client.burst), now))
            tokens = min(float(client.burst), tokens + (now - last) * client.rate_per_s)
            if tokens >= cost:
                self._buckets[client.name] = (tokens - cost, now)
                return 0.0
            self._buckets[client.name] = (tokens, now)
            return (cost - tokens) / client.rate_per_s


class RateLimited(Exception):
    """A request costs more tokens than its client has (retry_after_s > 0) or can ever hold (its burst)."""

    def __init__(self, message: str, retry_after_s: float | None):
        super().__init__(message)
        self.retry_after_s = retry_after_s


def request_cost(transactions: int, explained: int, explain_cost: float) -> float:
    """Rate-limit tokens of a request: one per scored transaction, explain_cost per explained one instead."""
    return float(transactions - explained) + explained * explain_cost


def charge_request(limiter: RateLimiter, client: ApiClient, cost: float, charged: float = 1.0) -> None:
    """Charge the part of `cost` the guard has not charged yet; RateLimited (nothing charged) when over."""
    if cost > client.burst:
        raise RateLimited(f"this request costs {cost:g} rate-limit tokens, more than client {client.name!r} can "
                          f"hold ({client.burst}); send fewer transactions (or explanations) per request", None)
    rest = cost - charged
    if rest <= 0:
        return
    wait = limiter.allow(client, rest)
    if wait > 0:
        raise RateLimited(f"client {client.name!r} exceeds {client.rate_per_s:g} transactions/s "
                          f"(this request costs {cost:g} tokens)", wait)


def _json_response(status: int, body: dict, headers: list[tuple[bytes, bytes]] | None = None):
    payload = json.dumps(body).encode()
    start = {"type": "http.response.start", "status": status,
             "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                         *(headers or [])]}
    return start, {"type": "http.response.body", "body": payload}


class GatewayGuard:
    """ASGI middleware: for protected paths, API key (401), rate limit (429), then body size (413).

    The guard charges one token per request, before the body is read; a handler that learns the request's
    real cost (transactions, explanations) charges the rest with charge_request.

    The authenticated client's name is put in scope["state"]["client"] for the handlers and the log.
    """

    def __init__(self, app, clients: list[ApiClient], max_body_bytes: int, protected: tuple[str, ...],
                 on_reject=None, limiter: RateLimiter | None = None):
        self.app = app
        self.clients = clients
        self.max_body_bytes = max_body_bytes
        self.protected = protected
        self.limiter = limiter or RateLimiter()
        self.on_reject = on_reject or (lambda path, status: None)

    async def _reject(self, send, path: str, status: int, body: dict, headers=None) -> None:
        self.on_reject(path, status)
        start, payload = _json_response(status, body, headers)
        await send(start)
        await send(payload)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not scope["path"].startswith(self.protected):
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        headers = dict(scope.get("headers") or [])
        client = authenticate(self.clients, headers.get(API_KEY_HEADER))
        if client is None:
            await self._reject(send, path, 401, {"error": "unauthorized", "field": "X-API-Key",
                                                 "detail": "missing or unknown API key (header X-API-Key)"},
                               [(b"www-authenticate", b"ApiKey")])
            return
        wait = self.limiter.allow(client)
        if wait > 0:
            await self._reject(send, path, 429, {"error": "rate limited", "field": "X-API-Key",
                                                 "detail": f"client {client.name!r} exceeds "
                                                           f"{client.rate_per_s:g} requests/s"},
                               [(b"retry-after", str(max(1, round(wait))).encode())])
            return
        declared = headers.get(b"content-length")
        too_large = {"error": "request body too large", "field": "body",
                     "detail": f"at most {self.max_body_bytes} bytes"}
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_body_bytes):
            await self._reject(send, path, 413, too_large)
            return
        # Read the whole body (bounded) before the app sees it: a chunked body without a length is cut off too.
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                await self._reject(send, path, 413, too_large)
                return
            chunks.append(chunk)
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        delivered = False

        async def replay():
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        state = scope.setdefault("state", {})
        state["client"], state["api_client"] = client.name, client  # the handler charges the rest of the cost
        await self.app(scope, replay, send)
