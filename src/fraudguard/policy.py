"""The gate policy of record: thresholds, attack budget and gate set from the committed params.yaml.

An uncommitted edit of params.yaml must not be able to re-gate a blocked version into champion, so a
promotion reads the policy sections from `git show HEAD:params.yaml` and refuses when the working tree
(or a run's overrides) says otherwise, naming the keys. A dry run may use the working tree; it moves
nothing and says which policy it used.
"""

from __future__ import annotations

import re
import subprocess  # nosec B404 - git with fixed arguments, no shell
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fraudguard.errors import ConfigError, PolicyError
from fraudguard.signing import canonical_json, sha256_text

if TYPE_CHECKING:
    from fraudguard.config import Settings

# The sections a verdict depends on: thresholds and gate set, the attacker's budget, the metric k, and
# whether a second person must approve.
POLICY_SECTIONS = ("gates", "threat_model", "evaluate", "promotion")
# Single keys of other sections that a gate judges by: the data-changes gate's fraud-rate factor lives in
# `validate` (the import applies it too); the drift reference signed with each champion (which the next drift gate
# and the monitor compare with) is drawn by `registry.reference_sample_*`. Left out, an override or an uncommitted
# edit passed: `-S registry.reference_sample_rows=1` signed a one-row reference that saw no drift.
POLICY_KEYS = (("validate", "max_fraud_rate_change_factor"), ("registry", "reference_sample_rows"),
               ("registry", "reference_sample_seed"))


@dataclass(frozen=True)
class CommittedTree:
    """One commit of a git checkout: where a promotion reads the reviewed files it acts on (the policy of record,
    data-change acknowledgements), so that an uncommitted edit in the working tree cannot stand in for a review."""

    root: Path
    commit: str

    @classmethod
    def resolve(cls, root: Path, revision: str) -> "CommittedTree | None":
        """The commit `revision` (a commit, branch or tag) names in root's repository; None when it names none.
        Resolved with `--end-of-options`, so a revision that looks like an option (`--output=PATH`) is only ever a
        name; PolicyError when git cannot be asked."""
        try:
            resolved = subprocess.run(["git", "rev-parse", "--verify", "--quiet", "--end-of-options",  # nosec B603 B607 - git, fixed argv, no shell
                                       f"{revision}^{{commit}}"], cwd=root, capture_output=True, text=True,
                                      check=False, timeout=30)
        except (OSError, subprocess.SubprocessError) as exc:
            raise PolicyError(f"{root}: cannot resolve revision {revision!r}: {exc}") from exc
        commit = resolved.stdout.strip()
        if resolved.returncode != 0 or not re.fullmatch(r"[0-9a-f]{40}([0-9a-f]{24})?", commit):
            return None
        return cls(Path(root), commit)

    def read_text(self, path: Path) -> str | None:
        """The text of `path` (relative to the checkout, or absolute inside it) at the commit; None when the commit
        does not hold it. PolicyError when the path lies outside the checkout or git cannot be asked."""
        root = Path(self.root).resolve()
        target = Path(path) if Path(path).is_absolute() else root / path
        try:
            relative = target.resolve().relative_to(root)
        except ValueError as exc:
            raise PolicyError(f"{path} lies outside the checkout {root}: it cannot be a reviewed, committed "
                              "file") from exc
        try:
            shown = subprocess.run(["git", "show", f"{self.commit}:./{relative.as_posix()}"], cwd=root,  # nosec B603 B607 - git, fixed argv, no shell
                                   capture_output=True, check=False, timeout=30)
        except (OSError, subprocess.SubprocessError) as exc:
            raise PolicyError(f"{root}: cannot read {relative} at {self.commit[:12]}: {exc}") from exc
        if shown.returncode != 0:
            listed = subprocess.run(["git", "cat-file", "-e", self.commit], cwd=root,  # nosec B603 B607 - git, fixed argv, no shell
                                    capture_output=True, check=False, timeout=30)
            if listed.returncode != 0:
                raise PolicyError(f"{root}: commit {self.commit[:12]} is not in this checkout")
            return None
        return shown.stdout.decode("utf-8", errors="replace")


@dataclass(frozen=True)
class GatePolicy:
    """The policy sections a promotion is judged by, where they came from, and their hash. `committed` is the
    commit it was read from (a promotion's policy of record); None for the working tree (dry runs, tests)."""

    sections: dict[str, Any]
    source: str
    committed: CommittedTree | None = None

    @property
    def sha256(self) -> str:
        return sha256_text(canonical_json(self.sections))

    @property
    def gate_names(self) -> list[str]:
        return list(self.sections.get("gates", {}))


def policy_sections(settings: "Settings") -> dict[str, Any]:
    """The policy sections of already-validated settings, as plain data."""
    data = settings.as_params_dict()
    sections = {name: data[name] for name in POLICY_SECTIONS}
    for section, key in POLICY_KEYS:
        sections.setdefault(section, {})[key] = data[section][key]
    return sections


def policy_from_settings(settings: "Settings", source: str) -> GatePolicy:
    """The policy the settings hold, labelled with where they came from (dry runs, tests)."""
    return GatePolicy(policy_sections(settings), source)


def _differences(committed: Any, effective: Any, prefix: str = "") -> list[str]:
    if isinstance(committed, dict) and isinstance(effective, dict):
        out: list[str] = []
        for key in sorted(set(committed) | set(effective)):
            out += _differences(committed.get(key), effective.get(key), f"{prefix}.{key}" if prefix else key)
        return out
    return [] if committed == effective else [f"{prefix} ({committed!r} committed, {effective!r} here)"]


def committed_policy(root: Path, effective: "Settings", params_file: str = "params.yaml") -> GatePolicy:
    """The policy at HEAD; PolicyError when git cannot show it or `effective` departs from it."""
    from fraudguard.config import load_params_yaml, parse_settings

    root = Path(root).resolve()
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,  # nosec B603 B607 - git, fixed argv, no shell
                                check=True, timeout=30).stdout.strip()
        text = subprocess.run(["git", "show", f"HEAD:{params_file}"], cwd=root, capture_output=True,  # nosec B603 B607 - git, fixed argv, no shell
                              text=True, check=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise PolicyError(f"{root}: cannot read the committed {params_file} (the policy of record): {exc}; "
                          "promotion needs a git checkout with params.yaml committed") from exc
    try:
        source = f"{params_file} at {commit[:12]}"
        committed = parse_settings(load_params_yaml(text, source), source=source)
    except ConfigError as exc:
        raise PolicyError(f"committed {params_file} at {commit[:12]} is not valid: {exc}") from exc
    policy = GatePolicy(policy_sections(committed), f"git:{commit}:{params_file}", CommittedTree(root, commit))
    differences = _differences(policy.sections, policy_sections(effective))
    if differences:
        shown = "; ".join(differences[:5]) + (f"; and {len(differences) - 5} more" if len(differences) > 5 else "")
        raise PolicyError(
            f"gate policy differs from the committed {params_file} at {commit[:12]}: {shown}. Thresholds and "
            "gates come from the committed params (the policy of record); commit the change to adopt it"
        )
    return policy
