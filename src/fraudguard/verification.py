"""`fraudguard audit verify`: can the registry's record of how `champion` got there be trusted?

Checked, with only the public key: every audit entry's hash, link and signature; that the log was not
trimmed (anchor beside the key, when this host has it; the signed checkpoint, present, reached and not
expired, on every host); that every move is an intent closed by its
commit or abort and starts where the previous one ended; that the alias equals the last committed
move's target; that every champion in the history had a valid signed pass attestation; and that the
files the champion serves match its attestation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fraudguard.attestation import Attestation, check_served_copy, load_attestation
from fraudguard.audit import CHECKPOINT_TAG, AuditEntry, audit_entries_from_tags, check_audit_tags, checkpoint_problem
from fraudguard.errors import FraudGuardError
from fraudguard.registry import (
    CHAMPION_ALIAS,
    ChampionChange,
    anchor_path,
    anchor_problem,
    judged_without_a_log,
    pin_seen_head,
    get_registered_tags_and_aliases,
    get_version,
    history_from_entries,
    read_anchor,
)
from fraudguard.signing import Verifier

if TYPE_CHECKING:
    from mlflow import MlflowClient


@dataclass(frozen=True)
class RegistryReport:
    """What verification found: problems (empty when everything holds), the history and the champion."""

    model_name: str
    entries: int
    champion: int | None
    history: tuple[ChampionChange, ...]
    problems: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    champion_attestation: Attestation | None = field(default=None, compare=False)

    @property
    def ok(self) -> bool:
        return not self.problems


def _structure_problems(entries: list[AuditEntry]) -> tuple[list[str], int | None, AuditEntry | None]:
    """Transaction shape and continuity; returns the problems, the committed champion, an open intent."""
    problems: list[str] = []
    committed: int | None = None
    open_intent: AuditEntry | None = None
    for entry in entries:
        closes = entry.phase in ("commit", "abort")
        if open_intent is not None and not (closes and entry.txid == open_intent.txid):
            problems.append(f"audit entry {open_intent.seq}: the {open_intent.action} intent "
                            f"{open_intent.from_version} -> {open_intent.to_version} was never committed or aborted")
            open_intent = None
        if entry.phase == "intent":
            if entry.from_version != committed:
                problems.append(f"audit entry {entry.seq}: the {entry.action} starts at {entry.from_version} but "
                                f"the champion was {committed}")
            open_intent = entry
        elif closes:
            if open_intent is None or entry.txid != open_intent.txid or \
                    (entry.from_version, entry.to_version) != (open_intent.from_version, open_intent.to_version):
                problems.append(f"audit entry {entry.seq}: a {entry.phase} with no matching intent")
            elif entry.phase == "commit":
                committed = entry.to_version
            open_intent = None
    return problems, committed, open_intent


def verify_registry(client: "MlflowClient", model_name: str, verifier: Verifier,
                    check_files: bool = True) -> RegistryReport:
    """Every check in the module docstring; never raises for what it finds, reports it."""
    tags, aliases = get_registered_tags_and_aliases(client, model_name)
    champion = aliases.get(CHAMPION_ALIAS)
    chain = check_audit_tags(tags, verifier)
    if not chain.ok:
        return RegistryReport(model_name, chain.entries, champion, (),
                              (f"audit entry {chain.bad_seq}: {chain.problem}",))
    entries = audit_entries_from_tags(tags)
    history = tuple(history_from_entries(entries))
    problems: list[str] = []
    notes: list[str] = []
    anchor_file = anchor_path(client, model_name)
    anchor = read_anchor(anchor_file)
    if anchor is None:
        notes.append(f"no audit anchor on this host ({anchor_file}): trimming of the newest entries is "
                     "checked against the signed checkpoint and the alias")
    trimmed = anchor_problem(entries, anchor)
    if trimmed:
        problems.append(trimmed)
    else:
        pin_seen_head(anchor_file, entries, anchor)
    stale = checkpoint_problem(model_name, entries, tags.get(CHECKPOINT_TAG), verifier)
    if not stale and not entries and tags.get(CHECKPOINT_TAG) is None:
        stale = judged_without_a_log(client, model_name)
    if stale:
        problems.append(stale)
    structure, committed, open_intent = _structure_problems(entries)
    problems += structure
    if open_intent is not None:
        problems.append(f"audit entry {open_intent.seq}: a {open_intent.action} {open_intent.from_version} -> "
                        f"{open_intent.to_version} is half-done (interrupted); run `fraudguard audit recover`")
    elif champion != committed:
        problems.append(f"champion alias points at {champion} but the last committed move ends at {committed}: "
                        "moved outside fraudguard (`fraudguard audit recover` restores it)")
    attestations: dict[tuple[int, str], Attestation] = {}
    for change in history:
        key = (change.version, change.attestation)
        if key in attestations:
            continue
        try:
            mv = get_version(client, model_name, change.version)
            attestations[key] = load_attestation(mv, change.attestation, verifier)
        except FraudGuardError as exc:
            problems.append(f"audit entry {change.audit_seq} ({change.action} to {change.version}): {exc}")
    champion_attestation = attestations.get((history[-1].version, history[-1].attestation)) if history else None
    if check_files and champion is not None and champion == committed and champion_attestation is not None:
        try:
            check_served_copy(client, get_version(client, model_name, champion), champion_attestation)
        except FraudGuardError as exc:
            problems.append(f"champion {champion}: {exc}")
    return RegistryReport(model_name, len(entries), champion, history, tuple(problems), tuple(notes),
                          champion_attestation)
