"""Running the catalogue: load the target, build the scratch project, run each attack, return the scorecard."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from fraudguard.errors import ConfigError, ModelError
from fraudguard.paths import ProjectPaths
from fraudguard.redteam.base import RedTeamContext
from fraudguard.redteam.scorecard import Scorecard

if TYPE_CHECKING:
    from fraudguard.config import RegistrySettings
    from fraudguard.model import ModelBundle

logger = logging.getLogger(__name__)

TARGETS = ("candidate", "champion")


def load_target(paths: ProjectPaths, registry: RegistrySettings, target: str, work_dir: Path) -> tuple[ModelBundle, str]:
    """(bundle, description) of the model attacked: the project's models/ (its sha256 checked against
    models/metrics.json) or the registry's committed champion (checked against its signed attestation)."""
    import json

    from fraudguard.model import load_bundle

    if target == "candidate":
        expected = None
        if paths.metrics.is_file():
            expected = json.loads(paths.metrics.read_text(encoding="utf-8")).get("weights_sha256")
        if not paths.model_weights.is_file():
            raise ModelError(f"{paths.model_weights}: no candidate to attack (run `dvc repro` first)")
        return load_bundle(paths.model_weights, paths.preprocess, expected_sha256=expected), \
            f"candidate ({paths.model_weights.relative_to(paths.root)})"
    if target == "champion":
        from fraudguard.attestation import load_attested_bundle
        from fraudguard.registry import committed_champion_attestation, get_champion_version, get_version, read_state
        from fraudguard.signing import load_verifier
        from fraudguard.tracking import configure_mlflow

        client = configure_mlflow(paths.root, registry)
        if get_champion_version(client, registry.model_name) is None:
            raise ModelError(f"model {registry.model_name!r} has no champion to attack; "
                             "use --target candidate")
        # The model attacked is the one the gateway serves: the committed champion, its files checked against
        # its signed attestation (not a copy checked against editable tags).
        verifier = load_verifier()
        version, digest = committed_champion_attestation(read_state(client, registry.model_name, verifier))
        bundle, _ = load_attested_bundle(client, get_version(client, registry.model_name, version), digest,
                                         verifier, work_dir / "champion")
        return bundle, f"champion (version {version}, attestation {digest[:12]})"
    raise ConfigError(f"unknown red-team target {target!r}; expected one of {', '.join(TARGETS)}")


def build_context(root: Path, target: str, work_dir: Path, versioned: bool = True) -> RedTeamContext:
    """Load the target and the project's settings; copy the project to work_dir/base (git + DVC when
    `versioned`) and run the clean validate and featurize stages there."""
    import pandas as pd

    from fraudguard.config import load_settings
    from fraudguard.data.io import read_transactions
    from fraudguard.features import compute_features, plan_split
    from fraudguard.redteam.scratch import make_scratch_project
    from fraudguard.stages import featurize, validate

    source = ProjectPaths.at(root)
    settings = load_settings(source.params)
    bundle, name = load_target(source, settings.registry, target, work_dir)
    base = make_scratch_project(source, work_dir / "base", versioned=versioned)
    frames = [read_transactions(f) for f in validate.raw_files(base.raw_dir)]
    raw = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    validation = validate.run(validate.ValidatePaths.of(base), settings.validate_)
    featurize.run(featurize.FeaturizePaths.of(base), settings.featurize)
    plan = plan_split(compute_features(validation.accepted, settings.featurize), settings.featurize)
    return RedTeamContext(
        settings=settings, target=bundle, target_name=name, base=base, raw=raw, validated=validation.accepted,
        clean_report=validation.report, train=pd.read_parquet(base.train_features),
        test=pd.read_parquet(base.test_features), recent=pd.read_parquet(base.recent_features), plan=plan,
        work_dir=work_dir)


def run_redteam(root: Path, work_dir: Path, target: str = "candidate",
                attacks: Sequence[str] | None = None, progress: bool = False) -> Scorecard:
    """Every attack of the catalogue (or the named ones) against `target` of the project at root."""
    from fraudguard.redteam.catalogue import ATTACKS, POISONING

    names = list(attacks) if attacks else list(ATTACKS)
    unknown = [n for n in names if n not in ATTACKS]
    if unknown:
        raise ConfigError(f"unknown attack(s) {', '.join(unknown)}; the catalogue has {', '.join(ATTACKS)}")
    started = time.perf_counter()
    ctx = build_context(root, target, work_dir, versioned=any(n in POISONING for n in names))
    results, durations = [], {}
    from rich.progress import Progress

    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("red team", total=len(names))
        for name in names:
            bar.update(task, description=f"attack {name}")
            t0 = time.perf_counter()
            results.append(ATTACKS[name](ctx))
            durations[name] = time.perf_counter() - t0
            logger.info("attack %s: %s (%.1f s)", name, "caught" if results[-1].caught else "NOT caught",
                        durations[name])
            bar.advance(task)
    return Scorecard(project=str(Path(root).resolve()), target=ctx.target_name, results=tuple(results),
                     durations_s=durations, seconds=time.perf_counter() - started)
