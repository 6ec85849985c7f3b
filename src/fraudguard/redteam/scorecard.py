"""The suite's answer: one row per attack (caught by what, metric change), as JSON, a rich table and an
MLflow run in the `redteam.experiment` experiment."""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fraudguard.files import write_json
from fraudguard.redteam.base import AttackResult

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from rich.console import Console


@dataclass(frozen=True)
class Scorecard:
    project: str
    target: str
    results: tuple[AttackResult, ...]
    durations_s: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    created: str = field(default_factory=lambda: dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))

    @property
    def all_caught(self) -> bool:
        return all(r.caught for r in self.results)

    @property
    def not_caught(self) -> list[str]:
        return [r.name for r in self.results if not r.caught]

    def result(self, name: str) -> AttackResult:
        for r in self.results:
            if r.name == name:
                return r
        raise KeyError(f"no attack {name!r} in the scorecard")

    def as_dict(self) -> dict[str, Any]:
        return {"project": self.project, "target": self.target, "created": self.created,
                "all_caught": self.all_caught, "not_caught": self.not_caught,
                "seconds": round(self.seconds, 2),
                "attacks": [{**r.as_dict(), "duration_s": round(self.durations_s.get(r.name, 0.0), 2)}
                            for r in self.results]}


def write_scorecard(card: Scorecard, path: Path) -> Path:
    """The scorecard as JSON at `path` (folders made)."""
    return write_json(path, card.as_dict())


def _number(value: float) -> str:
    return "n/a" if not math.isfinite(value) else f"{value:.3f}"


def render_scorecard(card: Scorecard, console: "Console") -> None:
    """The scorecard as a table: attack, kind, caught by, metric, before -> after, change."""
    from rich.table import Table

    table = Table(title=f"Red-team scorecard: {card.target}", show_lines=True)
    for column in ("attack", "kind", "caught by", "metric", "before -> after", "change"):
        table.add_column(column, overflow="fold")
    for r in card.results:
        caught = "\n".join(r.caught_by) if r.caught else "[bold red]NOT CAUGHT[/]"
        table.add_row(r.name, r.kind, caught, r.metric, f"{_number(r.baseline)} -> {_number(r.attacked)}",
                      _number(r.change) if math.isfinite(r.change) else "n/a")
    console.print(table)
    for r in card.results:
        console.print(f"[bold]{r.name}[/]: {r.summary}", highlight=False)
    verdict = "every attack caught" if card.all_caught else f"NOT caught: {', '.join(card.not_caught)}"
    console.print(f"{len(card.results) - len(card.not_caught)} of {len(card.results)} attacks caught: {verdict}")


def log_scorecard(client: "MlflowClient", experiment: str, card: Scorecard, json_path: Path) -> str:
    """An MLflow run in `experiment`: the scorecard artifact, metrics `<attack>.caught|baseline|attacked|change`
    and `attacks_caught`/`attacks_total`; returns its run id."""
    import time

    from mlflow.entities import Metric, Param, RunTag

    from fraudguard.tracking import ensure_experiment

    experiment_id = ensure_experiment(client, experiment)
    run = client.create_run(experiment_id, run_name=f"redteam {card.target}",
                            tags={"fraudguard.redteam.target": card.target,
                                  "fraudguard.redteam.all_caught": str(card.all_caught).lower()})
    run_id = run.info.run_id
    try:
        now = int(time.time() * 1000)
        metrics = [Metric("attacks_total", float(len(card.results)), now, 0),
                   Metric("attacks_caught", float(len(card.results) - len(card.not_caught)), now, 0)]
        for r in card.results:
            for key, value in (("caught", float(r.caught)), ("baseline", r.baseline), ("attacked", r.attacked),
                               ("change", r.change), ("duration_s", card.durations_s.get(r.name, math.nan))):
                if math.isfinite(value):
                    metrics.append(Metric(f"{r.name}.{key}", float(value), now, 0))
        client.log_batch(run_id, metrics=metrics, params=[Param("target", card.target)],
                         tags=[RunTag(f"fraudguard.redteam.caught_by.{r.name}",
                                      ("; ".join(r.caught_by) or "NOT CAUGHT")[:4000]) for r in card.results])
        client.log_artifact(run_id, str(json_path), "redteam")
    except BaseException:
        client.set_terminated(run_id, status="FAILED")
        raise
    client.set_terminated(run_id)
    return run_id
