"""What the train-and-promote flow loads ahead, while the process would otherwise wait.

Two moments have idle time: `fraudguard run` waiting for Prefect's temporary server to boot (another process),
and the training stage (one torch thread: the second core is free). Loading there what the flow's tasks would
load one after another takes it off the run's critical path (issue 14 §5, bench/end_to_end_bench.py):
  before_stages  what pull-data and dvc-repro need first: DVC and the libraries of the stages run here;
  after_stages   what register-model and the gates need: MLflow and the project's store (created when new),
                 MLflow's installed-package map, plotting, the gate modules and their libraries;
  during_training  when the training runs in fraudguard.stage_interpreter (`fraudguard run` starts one):
                 the drift gate's interpreter (Evidently loads there) and after_stages here, as this
                 interpreter only waits. When the training runs here: only work in other interpreters, the
                 drift gate's and a short-lived one making the MLflow store's tables and matplotlib's font cache.
Each step is best effort: on a failure the task that needs it meets the same error and reports it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fraudguard.config import GatesSettings, RegistrySettings

logger = logging.getLogger(__name__)

Step = tuple[str, Callable[[], object]]

# DVC and the stages' modules, in the order the flow uses them (pull-data, then the stages), with what they import
# only when first used: DVC's lock and git modules (pull-data), its stage graph's networkx (the repro) and the
# validate stage's pandera (0.3-0.5 s on the flow's path when left to the tasks; py-spy of `fraudguard run`).
STAGE_IMPORTS = ("dvc.repo", "dvc.lock", "dvc.scm", "fraudguard.data.versioning", "fraudguard.data.simulator",
                 "networkx", "fraudguard.stages.validate", "pandera.pandas", "fraudguard.stages.featurize")
# The train and evaluate stages' (torch, ART, scikit-learn): not needed here when fraudguard.stage_interpreter
# runs those stages.
HEAVY_STAGE_IMPORTS = ("fraudguard.stages.train", "fraudguard.model", "fraudguard.evaluation", "fraudguard.attacks",
                       "sklearn.metrics", "fraudguard.stages.evaluate")
# What register-model imports: MLflow, torch for the bundle, matplotlib for the loss curve (and the evaluate
# stage's PR curve: matplotlib builds its font cache on first use, ~1.5 s on a new machine).
# GitPython: MLflow's start_run imports it for its git tags.
REGISTER_IMPORTS = ("mlflow", "mlflow.pyfunc", "git", "matplotlib.figure", "fraudguard.model",
                    "fraudguard.pyfunc_model", "fraudguard.tracking")

# Steps that start another interpreter (which keeps its creator's CPU priority).
EVIDENTLY_STEP = "Evidently's interpreter"
PREPARE_ELSEWHERE_STEP = "MLflow store and font cache, in another interpreter"
INTERPRETER_STEPS = frozenset({EVIDENTLY_STEP, PREPARE_ELSEWHERE_STEP})
# matplotlib builds its font cache (and saves it) the first time its font manager loads.
FONT_CACHE_IMPORTS = ("matplotlib.font_manager",)


def _import_step(name: str) -> Step:
    def load() -> None:
        from fraudguard.promotion import warm_imports

        warm_imports({}, (name,))

    return name, load


def before_stages() -> list[Step]:
    """Steps for the stages that run in this interpreter: one module a step, so a caller can stop soon after
    its wait is over."""
    from fraudguard import stage_interpreter

    heavy = () if stage_interpreter.takes("train") and stage_interpreter.takes("evaluate") else HEAVY_STAGE_IMPORTS
    return [_import_step(name) for name in (*STAGE_IMPORTS, *heavy)]


def after_stages(root: Path, registry: "RegistrySettings", gates: "GatesSettings") -> list[Step]:
    """Steps for registration and the gates: MLflow, the store at root (its tables created when new), the
    package map MLflow builds when it checks a logged model's requirements, the gates and their libraries."""
    from fraudguard.promotion import STANDARD_HEAVY_IMPORTS, discover_gates
    from fraudguard.tracking import configure_mlflow

    return [
        *(_import_step(name) for name in REGISTER_IMPORTS),
        ("MLflow store", lambda: configure_mlflow(root, registry)),
        ("installed-package map", load_mlflow_package_map),
        ("gate modules", lambda: discover_gates(gates)),
        *(_import_step(name) for name in STANDARD_HEAVY_IMPORTS),
    ]


def while_server_boots(root: Path, registry: "RegistrySettings", gates: "GatesSettings") -> list[Step]:
    """What `fraudguard run` loads while Prefect's temporary server boots: the stages' libraries, then (when the
    training runs here) registration's and the gates'. When fraudguard.stage_interpreter runs the training,
    registration's and the gates' are left to the training's time (during_training), when this interpreter
    is idle: loading them now would only compete for the two cores with the server's boot and the stage
    interpreter's own loading."""
    from fraudguard import stage_interpreter

    if stage_interpreter.takes("train"):
        return before_stages()
    return [*before_stages(), *after_stages(root, registry, gates)]


def during_training(root: Path, registry: "RegistrySettings", gates: "GatesSettings") -> list[Step]:
    """What runs while the training does (run them with run_during_training). When fraudguard.stage_interpreter
    trains, this interpreter is idle: the drift gate's interpreter starts (Evidently loads there) and
    registration's and the gates' libraries load here. When the training runs in this interpreter, only work
    in other interpreters: the drift gate's, and a short-lived one that creates the MLflow store's tables and
    matplotlib's font cache (written once, then only read here), waited for without holding the interpreter
    lock: a second thread loading modules beside the training's Python loop made the repro task 6 to 11 s
    longer than the stages' compute (the two threads hand the lock back and forth)."""
    from fraudguard import stage_interpreter
    from fraudguard.gates.drift import start_evidently_interpreter

    if stage_interpreter.takes("train"):
        # The training runs in another interpreter: this one is idle meanwhile, and loads here what registration
        # and the gates need (no lock shared with the training), the font cache included.
        return [(EVIDENTLY_STEP, start_evidently_interpreter), *after_stages(root, registry, gates),
                *(_import_step(name) for name in FONT_CACHE_IMPORTS)]
    return [(EVIDENTLY_STEP, start_evidently_interpreter),
            (PREPARE_ELSEWHERE_STEP, lambda: prepare_elsewhere(root, registry))]


def prepare_elsewhere(root: Path, registry: "RegistrySettings", timeout_s: float = 300) -> None:
    """Run `python -m fraudguard.preload prepare ROOT REGISTRY_JSON` and wait for it (best effort: a failure
    is logged; the task that needs the store or the fonts then does that work itself)."""
    import subprocess  # nosec B404 - this interpreter, a fixed module, no shell
    import sys

    proc = subprocess.run(  # nosec B603 - fixed argv, no shell
        [sys.executable, "-m", "fraudguard.preload", "prepare", str(root), registry.model_dump_json()],
        capture_output=True, text=True, timeout=timeout_s, check=False)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        logger.warning("preparing the MLflow store and font cache elsewhere failed (exit %s): %s",
                       proc.returncode, tail[0])


def _prepare(root: Path, registry_json: str) -> None:
    """prepare_elsewhere's child: nothing waits on it until registration, so it yields the cores to the
    training (a child starts at its creator's priority, and may lower its own)."""
    import importlib
    import os

    from fraudguard.priority import BACKGROUND_NICE

    try:
        os.nice(BACKGROUND_NICE)
    except (OSError, AttributeError) as exc:  # not allowed, or not a Unix
        logger.debug("preparing at normal priority: %s", exc)

    from fraudguard.config import RegistrySettings
    from fraudguard.tracking import configure_mlflow

    configure_mlflow(root, RegistrySettings.model_validate_json(registry_json))  # creates the tables when new
    for name in FONT_CACHE_IMPORTS:  # builds and saves the font cache when there is none
        importlib.import_module(name)


def run_during_training(steps: list[Step], repro_over: threading.Event | None = None) -> list[str]:
    """during_training's steps: those that start an interpreter here (a process inherits its creator's
    priority, and the drift gate's reports run in that one later), the loading ones at lower CPU priority
    (fraudguard.priority), so that the training keeps its core and the loading takes what is left. Once
    `repro_over` is set, registration waits for that loading: what is left of it goes on at normal priority
    where the system allows it (on a busy machine a nice-10 thread may barely run)."""
    from fraudguard.priority import BackgroundWork

    starting = [step for step in steps if step[0] in INTERPRETER_STEPS]
    loading = [step for step in steps if step[0] not in INTERPRETER_STEPS]
    left = run_steps(starting)
    work = BackgroundWork(lambda: run_steps(loading), name="load-during-training").start()
    if repro_over is not None:
        repro_over.wait()
        work.hurry()
    return [*left, *work.result()]


def run_steps(steps: list[Step], until: Callable[[], bool] = lambda: False) -> list[str]:
    """Run the steps in order until `until()` is true; the names of the steps left undone."""
    for index, (what, step) in enumerate(steps):
        if until():
            return [name for name, _ in steps[index:]]
        try:
            step()
        except Exception as exc:
            logger.debug("preload of %s failed (the task that needs it will report it): %s", what, exc)
    return []


def load_mlflow_package_map() -> None:
    """MLflow maps installed packages to modules (importlib.metadata over every distribution) the first time
    it checks a logged model's requirements; that map is cached per process, so build it now."""
    from mlflow.utils import requirements_utils

    init = getattr(requirements_utils, "_init_modules_to_packages_map", None)  # private: absent means skip
    if callable(init):
        init()


if __name__ == "__main__":  # pragma: no cover - run by prepare_elsewhere, tested through it
    import sys

    if len(sys.argv) != 4 or sys.argv[1] != "prepare":
        print("usage: python -m fraudguard.preload prepare ROOT REGISTRY_JSON", file=sys.stderr)
        sys.exit(2)
    _prepare(Path(sys.argv[2]), sys.argv[3])
