"""Building a gateway from a project checkout (what `fraudguard serve` and the tests and bench do)."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from fraudguard.config import Settings


def build_app(root: Path, settings: Settings, tracking_uri: str | None = None, api_clients=None) -> Any:
    """The gateway's ASGI app for the project at `root` (store from $MLFLOW_TRACKING_URI or the project's).

    The whole Settings, because the Gateway reads the serve, validate, featurize and registry sections."""
    from mlflow import MlflowClient

    from fraudguard.serving.app import Gateway, create_app
    from fraudguard.serving.security import load_api_clients
    from fraudguard.signing import load_verifier
    from fraudguard.store import resilient
    from fraudguard.tracking import resolve_tracking_uri

    uri = tracking_uri or resolve_tracking_uri(root)
    client = resilient(MlflowClient(tracking_uri=uri, registry_uri=uri))
    clients = api_clients if api_clients is not None else load_api_clients(settings.serve)
    return create_app(Gateway(settings, root, client, load_verifier(), clients))


class ThreadedServer:
    """uvicorn serving an app on 127.0.0.1 in a background thread (tests, bench)."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0):
        import uvicorn

        self.app = app
        config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on",
                                access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="uvicorn", daemon=True)

    def start(self, timeout_s: float = 60) -> "ThreadedServer":
        self.thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the gateway did not start")
            time.sleep(0.02)
        return self

    @property
    def port(self) -> int:
        return self.server.servers[0].sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
