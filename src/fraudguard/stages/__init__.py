"""DVC stages: one module per stage, each run as `python -m fraudguard.stages.<name>`.

Every stage has the same shape (docs/architecture.md, "Stages"):

- `<Name>Paths`: a frozen dataclass of the files it reads and writes, built from the checkout's layout by
  `<Name>Paths.of(ProjectPaths)`;
- `PARAMS` and `section_of(settings)`: the params it reads (exactly its dvc.yaml `params:`; a unit test
  compares them) and the typed section holding them, its own config section or a dataclass of several;
- `run(paths, section) -> summary`: the work, outputs written, a typed summary returned; domain errors
  (FraudGuardError) raised;
- `main(root=".")`: `stage_main`: read params.yaml, build the paths, call run, turn a domain error into
  one log line and exit status 1.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from fraudguard.config import Settings, load_settings
from fraudguard.errors import FraudGuardError
from fraudguard.paths import ProjectPaths

logger = logging.getLogger(__name__)

STAGE_NAMES = ("validate", "featurize", "train", "evaluate")


def stage_main(root: Path | str, run_stage: Callable[[ProjectPaths, Settings], object]) -> None:
    """A stage's entry point: logging on, params.yaml of the checkout at root read, run_stage called; a
    FraudGuardError (bad params, bad data) is logged as one line and exits with status 1, no traceback."""
    from fraudguard.logs import configure_logging
    from fraudguard.shutdown import skip_final_collection

    # A stage is a short-lived process under `dvc repro`: it exits without the interpreter's final garbage
    # collection (about 0.8 s of the evaluate stage's wall time on 2 cores).
    skip_final_collection()
    configure_logging()
    project = ProjectPaths.at(root)
    try:
        run_stage(project, load_settings(project.params))
    except FraudGuardError as exc:
        logger.error("%s", exc)
        raise SystemExit(1) from exc
