"""`fraudguard run`: the main job, the train-and-promote flow in-process (Prefect's ephemeral mode)."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer

from fraudguard.prefect_database import TemporaryServer, seed_prefect_database, temporary_server_env

logger = logging.getLogger(__name__)

ROOT_OPTION = typer.Option(Path("."), "--root", help="Project root (holds params.yaml, dvc.yaml, flows/).")


def load_flow(root: Path, module: str, attribute: str) -> Any:
    """Import a flow object from <root>/flows/<module>.py (flows/ is not an installed package)."""
    path = root / "flows" / f"{module}.py"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: flow file not found (is --root the project root?)")
    spec = importlib.util.spec_from_file_location(f"fraudguard_flows_{module}", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return getattr(mod, attribute)


def _prepare_local_prefect(root: Path) -> None:
    # A laptop run needs no Prefect server: an ephemeral one with its state inside the project.
    os.environ.setdefault("PREFECT_HOME", str(root / ".prefect"))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")
    # Prefect waits 20 s for its temporary server; on a busy 2-core machine it needed up to ~70 s.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")


def run(
    root: Path = ROOT_OPTION,
    promote: bool = typer.Option(True, "--promote/--dry-run", help="Move `champion` if every gate passes."),
    params_override: list[str] = typer.Option(
        [], "--set", "-S", help="params.yaml override as dotted.key=YAML value, e.g. -S train.epochs=3."),
) -> None:
    """Pull or simulate the data, run the DVC stages, register the model, run every gate, promote."""
    import yaml

    from fraudguard.logs import configure_logging
    from fraudguard.shutdown import skip_final_collection

    root = root.resolve()
    skip_final_collection()
    configure_logging()
    _prepare_local_prefect(root)
    overrides = {}
    for item in params_override:
        key, sep, value = item.partition("=")
        if not sep:
            typer.echo(f"--set {item!r}: expected dotted.key=value", err=True)
            raise typer.Exit(2)
        overrides[key] = yaml.safe_load(value)
    os.environ["FRAUDGUARD_PROJECT_DIR"] = str(root)
    # First, before Prefect itself is imported here: the API server's interpreter boots (about 7 s quiet)
    # while this one imports Prefect, the flow, MLflow and torch. Prefect's own way (below) when a server or
    # profile is configured.
    server: EarlyPrefectServer | TemporaryServerStart | None = EarlyPrefectServer.launch()
    if server is None:
        server = TemporaryServerStart.begin()
    # Then the interpreter that will run the train and evaluate stages: it loads torch, ART and scikit-learn on
    # the second core while the server boots and this one loads Prefect; while it trains, this one loads what
    # registration and the gates need (fraudguard.stage_interpreter).
    from fraudguard import stage_interpreter

    stage_interpreter.start()
    flow = load_flow(root, "train_and_promote", "train_and_promote")
    if server is not None:
        # While the server boots (another interpreter that imports Prefect's server and migrates a fresh
        # database), load here what the flow's tasks would otherwise load one after another.
        import time

        started = time.perf_counter()
        left = preload_for_flow(root, overrides or None, until=server.ready)
        preloaded = time.perf_counter()
        problem = server.wait()
        logger.info("loaded ahead in %.1f s (left to the flow: %s); temporary server ready %.1f s later",
                    preloaded - started, ", ".join(left) or "nothing", time.perf_counter() - preloaded)
        if problem:
            typer.echo(f"error: Prefect's temporary API server did not start: {problem}", err=True)
            raise typer.Exit(1)
    with _without_heartbeats_on(server):
        state = flow(promote=promote, params_overrides=overrides or None, return_state=True)
    from fraudguard.reporting import LOCAL_UI, UI_VIEW_QUERY

    summary = {"data": summarize_data(root), "registry": summarize_registry(root)}
    typer.echo("")
    typer.echo(f"flow run: {state.name}: {state.message or ''}")
    typer.echo(json.dumps(summary, indent=2, default=str))
    typer.echo("\nOpen the MLflow UI on this project's store:\n"
               f"  mlflow ui --backend-store-uri sqlite:///{root / 'mlflow.db'}\n"
               f"then {LOCAL_UI}/#/experiments/{summary['registry'].get('experiment_id', '')}{UI_VIEW_QUERY} (runs) "
               f"or {LOCAL_UI}/#/models (versions, gate tables and lineage).")
    if state.is_failed() or state.is_crashed():
        if state.name != "Blocked":
            try:
                state.result()
            except Exception as exc:  # show the cause, not a Prefect traceback
                typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1)


@contextmanager
def _without_heartbeats_on(server: "EarlyPrefectServer | TemporaryServerStart | None") -> Iterator[None]:
    """No flow-run heartbeats on the server this command started and stops: it lives exactly as long as this
    process, so nothing can ever act on a missing heartbeat. Prefect's heartbeat thread sleeps in one-second
    steps and the engine joins it at the flow's end (~0.5 s of every run). Kept when set explicitly
    (PREFECT_FLOWS_HEARTBEAT_FREQUENCY) or on any other server."""
    if not isinstance(server, EarlyPrefectServer) or os.environ.get("PREFECT_FLOWS_HEARTBEAT_FREQUENCY"):
        yield
        return
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield


# Settings that make Prefect talk to a configured server, or change how its temporary one runs: with any of
# them, `fraudguard run` leaves the server to Prefect (TemporaryServerStart, or none at all).
_PREFECT_CONFIG_FILES = ("prefect.toml", ".env")
_FALSE = ("0", "false", "no", "off")


def prefect_is_configured(cwd: Path) -> bool:
    """Whether Prefect settings other than this process's environment could apply: an API URL or profile
    chosen in the environment, a profiles file with a profile that sets anything, a prefect.toml or .env in
    the working directory, or a [tool.prefect] table in its pyproject.toml. Read without importing Prefect."""
    import tomllib

    if os.environ.get("PREFECT_API_URL") or os.environ.get("PREFECT_PROFILE"):
        return True
    if os.environ.get("PREFECT_SERVER_EPHEMERAL_ENABLED", "true").lower() in _FALSE:
        return True
    if any((cwd / name).is_file() for name in _PREFECT_CONFIG_FILES):
        return True
    pyproject = cwd / "pyproject.toml"
    try:
        if pyproject.is_file() and "prefect" in tomllib.loads(pyproject.read_text(encoding="utf-8")).get("tool", {}):
            return True
        home = Path(os.environ.get("PREFECT_HOME") or Path.home() / ".prefect").expanduser()
        profiles_path = Path(os.environ.get("PREFECT_PROFILES_PATH") or home / "profiles.toml").expanduser()
        if profiles_path.is_file():
            profiles = tomllib.loads(profiles_path.read_text(encoding="utf-8"))
            active = profiles.get("profiles", {}).get(profiles.get("active", "ephemeral"), {})
            # Prefect's default profile only turns the temporary server on.
            if {k: str(v).lower() for k, v in active.items()} not in ({}, {"PREFECT_SERVER_EPHEMERAL_ENABLED": "true"}):
                return True
    except (OSError, tomllib.TOMLDecodeError, AttributeError):
        return True  # cannot tell: Prefect's own way
    return False


class EarlyPrefectServer(TemporaryServer):
    """Prefect's temporary API server, started by `fraudguard run` before it imports Prefect.

    fraudguard.prefect_database.TemporaryServer (the command Prefect's temporary server runs, UI off, a free
    port of 8000-8999, the database under PREFECT_HOME); this process then points PREFECT_API_URL at it, so
    Prefect's clients use it without importing Prefect's server package here, and stops it at exit. Only when
    no Prefect server or profile is configured (prefect_is_configured) and Prefect is not yet imported in this
    process (its settings are read once, at import).
    """

    def __init__(self, home: Path, timeout_s: float, seeded: bool = False) -> None:
        super().__init__(home, timeout_s, temporary_server_env(home, seeded=seeded))

    @classmethod
    def launch(cls, cwd: Path | None = None) -> "EarlyPrefectServer | None":
        """Start the server's process now; None when Prefect is configured or already imported here."""
        import atexit
        import importlib.util
        import sys

        if "prefect" in sys.modules or prefect_is_configured(cwd or Path.cwd()):
            return None
        spec = importlib.util.find_spec("prefect")
        if spec is None or spec.origin is None:
            return None
        timeout_s = float(os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180"))
        # A new home would make the server migrate a new database and register Prefect's block types first
        # (~8 s): copy the database (and Prefect's memo of that registration) prepared at install.
        home = Path(os.environ.get("PREFECT_HOME") or Path.home() / ".prefect").expanduser().resolve()
        home.mkdir(parents=True, exist_ok=True)
        seeded = seed_prefect_database(home) is not None
        server = cls(home, timeout_s, seeded=seeded)
        server.start()
        server.port_changed()
        atexit.register(server.stop)
        _announce("Starting temporary server on http://127.0.0.1:%d (Prefect's API for this run, started before "
                  "the CLI loads Prefect; stopped when it exits)", server.port)
        return server

    def port_changed(self) -> None:
        os.environ["PREFECT_API_URL"] = self.api_url

    def stop(self) -> None:
        if self.process is not None:
            _announce("Stopping temporary server on http://127.0.0.1:%d", self.port)
        super().stop()


def _announce(message: str, *args: object) -> None:
    """Log on the logger Prefect's own temporary server announces itself on ("prefect"), at Prefect's log level:
    the CLI's quiet default (WARNING) must not hide the server's start and stop, as Prefect's do not."""
    announcer = logging.getLogger("prefect")
    if announcer.level == logging.NOTSET:  # Prefect not configured yet: what its set-up will apply
        announcer.setLevel(os.environ.get("PREFECT_LOGGING_LEVEL", "INFO").upper())
    announcer.info(message, *args)


class TemporaryServerStart:
    """Prefect's temporary API server, started in a thread before the flow asks for it.

    The flow's first API call starts the same server (one per process, SubprocessASGIServer's singleton)
    and waits for it; started here, the main thread can do useful work during those seconds instead.
    """

    def __init__(self, server: Any) -> None:
        self.error: BaseException | None = None
        self._server = server
        self._thread = threading.Thread(target=self._start, name="prefect-temporary-server", daemon=True)

    @classmethod
    def begin(cls) -> "TemporaryServerStart | None":
        """Start the server's boot now; None when a Prefect API is configured (no temporary server then)."""
        from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_ENABLED

        if PREFECT_API_URL.value() or not PREFECT_SERVER_EPHEMERAL_ENABLED.value():
            return None
        # Imported here, not in the thread: two threads importing Prefect's modules at once can deadlock.
        from prefect.logging.configuration import ensure_logging_setup
        from prefect.server.api.server import SubprocessASGIServer

        ensure_logging_setup()  # what `import prefect` does: the server's start is logged as before

        starting = cls(SubprocessASGIServer())
        starting._thread.start()
        return starting

    def _start(self) -> None:
        try:
            self._server.start()  # waits up to PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS
        except Exception as exc:  # reported by wait(), in the main thread
            self.error = exc

    def ready(self) -> bool:
        """Whether the start is over (ready or failed: wait() says which); does not wait."""
        return not self._thread.is_alive()

    def wait(self) -> str | None:
        """Block until the server answers its health check; the reason (one line) when it never did."""
        self._thread.join()
        if self.error is None:
            return None
        return (str(self.error).strip().splitlines() or [type(self.error).__name__])[0][:300]


def preload_for_flow(root: Path, overrides: dict[str, Any] | None,
                     until: Callable[[], bool] = lambda: False) -> list[str]:
    """Load what the flow's tasks will need first (fraudguard.preload.while_server_boots), until `until()` says
    to stop (the temporary server is ready); returns what was left: the flow loads it while the training
    runs (flows/train_and_promote.py).
    """
    from fraudguard import preload
    from fraudguard.pipeline import validate_overrides

    try:
        settings = validate_overrides(root / "params.yaml", overrides)
    except Exception as exc:  # the flow's validate-params task reports it
        logger.debug("preload skipped: %s", exc)
        return ["everything (params do not validate)"]
    return preload.run_steps(preload.while_server_boots(root, settings.registry, settings.gates), until)


def summarize_data(root: Path) -> dict[str, Any]:
    """Rows, fraud rate and quarantine counts by reason from the validate and featurize reports."""
    from fraudguard.paths import ProjectPaths

    paths = ProjectPaths.at(root)
    out: dict[str, Any] = {}
    if paths.validation_report.is_file():
        report = json.loads(paths.validation_report.read_text(encoding="utf-8"))
        out.update(rows_in=report.get("rows_in"), rows_accepted=report.get("rows_accepted"),
                   fraud_rate=round(float(report.get("fraud_rate", 0.0)), 5),
                   quarantined_by_reason=report.get("reasons", {}))
    split = paths.features_summary
    if split.is_file():
        doc = json.loads(split.read_text(encoding="utf-8"))
        for part in ("train", "test"):
            if isinstance(doc.get(part), dict):
                out[f"{part}_rows"] = doc[part].get("rows")
                out[f"{part}_fraud_rate"] = round(float(doc[part].get("fraud_rate", 0.0)), 5)
    return out


def summarize_registry(root: Path) -> dict[str, Any]:
    """Newest version, champion, gate verdicts and headline metrics from the registry."""
    from fraudguard.config import load_settings
    from fraudguard.names import GATE_TAG_PREFIX, STATUS_TAG
    from fraudguard.registry import get_champion_version, newest_version
    from fraudguard.tracking import configure_mlflow

    settings = load_settings(root / "params.yaml")
    client = configure_mlflow(root, settings.registry)
    name = settings.registry.model_name
    try:
        newest = newest_version(client, name)
    except Exception as exc:  # no version registered: the flow failed before registration
        return {"error": f"no registered version: {exc}"}
    mv = client.get_model_version(name, str(newest))
    run = client.get_run(mv.run_id) if mv.run_id else None
    metrics = {k: round(v, 4) for k, v in (run.data.metrics if run else {}).items() if k.startswith("eval.")}
    return {
        "model": name,
        "newest_version": newest,
        "champion": get_champion_version(client, name),
        "gates": {k.removeprefix(GATE_TAG_PREFIX): v for k, v in (mv.tags or {}).items()
                  if k.startswith(GATE_TAG_PREFIX)},
        "status": (mv.tags or {}).get(STATUS_TAG),
        "metrics": metrics,
        "run_id": mv.run_id,
        "experiment_id": run.info.experiment_id if run else None,
    }


if __name__ == "__main__":  # pragma: no cover
    typer.run(run)
