"""The signed, hash-chained audit log of champion moves and blocks, kept in the MLflow registry.

Each entry is one registered-model tag `audit.NNNNNN` holding canonical JSON. `hash` is the sha256 of the
entry without `hash`/`signature`, `prev_hash` links it to the entry before, and `signature` is the
pipeline key's Ed25519 signature of `hash` (fraudguard.signing). One entry is one tag write, so no crash
can leave an entry and a separate head pointer apart. Trimming the newest entries (a valid prefix is still a
valid chain) is caught by the anchor file of a host that saw them (fraudguard.registry), and on any host, even
a brand-new one, by the signed checkpoint: a short-lived statement, signed with the pipeline key, of the newest
entry (`audit.checkpoint`, refreshed by every writer and by `fraudguard audit checkpoint`). A trimmed log no
longer reaches the current checkpoint; an older checkpoint put back in its place has expired.

A champion move is a small transaction of two entries sharing a `txid`: `intent` (written before the
alias moves) and `commit` or `abort` (after). A `block` is a single `record` entry. This module is pure:
building, parsing and checking entries; fraudguard.registry reads and writes them.
"""

from __future__ import annotations

import datetime as dt
import getpass
import json
import os
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from fraudguard.errors import AuditError, ConfigError, SignatureError
from fraudguard.signing import (
    Signer,
    Verifier,
    canonical_json,
    in_toto_statement,
    open_envelope,
    sha256_text,
    sign_envelope,
    subject_digests,
)

AUDIT_TAG_PREFIX = "audit."
GENESIS_HASH = "0" * 64
ACTIONS = ("promote", "rollback", "block", "repair")
PHASES = ("intent", "commit", "abort", "record")
# SQL registries store registered-model tag values in a VARCHAR(5000) column (MLflow's validator allows
# 100k, the schema does not): entries stay well under it.
MAX_ENTRY_CHARS = 4000
_MAX_REASON_CHARS = 300
_KEY_RE = re.compile(r"^audit\.(\d{6,})$")
CHECKPOINT_TAG = "audit.checkpoint"  # not an entry key (_KEY_RE): one tag, replaced at each refresh
CHECKPOINT_PREDICATE_TYPE = "https://fraudguard.dev/audit-checkpoint/v1"
CHECKPOINT_TTL_ENV = "FRAUDGUARD_AUDIT_CHECKPOINT_TTL_HOURS"
# How long a trim can go unnoticed by a host that never read the trimmed entries. A host with the signing key
# refreshes the checkpoint on every write; schedule `fraudguard audit checkpoint` more often than this.
DEFAULT_CHECKPOINT_TTL_HOURS = 168.0
MIN_CHECKPOINT_TTL_HOURS = 0.25
MAX_CHECKPOINT_TTL_HOURS = 2160.0

AuditAction = Literal["promote", "rollback", "block", "repair"]
AuditPhase = Literal["intent", "commit", "abort", "record"]


@dataclass(frozen=True)
class AuditEvent:
    """What a caller records; seq, time, hashes and signature are filled in when it is chained."""

    action: AuditAction
    phase: AuditPhase
    from_version: int | None
    to_version: int | None
    txid: str = ""
    reasons: tuple[str, ...] = ()
    gates: Mapping[str, str] = field(default_factory=dict)
    attestation: str = ""
    actor: str | None = None
    approver: str = ""
    recovered: bool = False


@dataclass(frozen=True)
class AuditEntry:
    """One chained, signed audit entry, exactly as stored."""

    seq: int
    time: str
    actor: str
    action: str
    phase: str
    txid: str
    from_version: int | None
    to_version: int | None
    reasons: tuple[str, ...]
    gates: Mapping[str, str]
    attestation: str
    approver: str
    recovered: bool
    key_id: str
    prev_hash: str
    hash: str
    signature: str

    def payload(self) -> dict[str, Any]:
        """The hashed fields (everything but `hash` and `signature`), as plain JSON data."""
        return {
            "seq": self.seq, "time": self.time, "actor": self.actor, "action": self.action,
            "phase": self.phase, "txid": self.txid, "from_version": self.from_version,
            "to_version": self.to_version, "reasons": list(self.reasons), "gates": dict(self.gates),
            "attestation": self.attestation, "approver": self.approver, "recovered": self.recovered,
            "key_id": self.key_id, "prev_hash": self.prev_hash,
        }

    def to_json(self) -> str:
        """The canonical JSON stored in the tag."""
        return canonical_json({**self.payload(), "hash": self.hash, "signature": self.signature})

    @property
    def is_move(self) -> bool:
        return self.action in ("promote", "rollback", "repair")


@dataclass(frozen=True)
class AuditVerification:
    """Outcome of checking the chain: ok, how many entries, and the first seq at fault with why."""

    ok: bool
    entries: int
    bad_seq: int | None = None
    problem: str = ""

    def raise_if_broken(self) -> None:
        """Raise AuditError naming the seq at fault when the chain is broken."""
        if not self.ok:
            raise AuditError(f"audit log broken at seq {self.bad_seq}: {self.problem}")


def entry_hash(payload: Mapping[str, Any]) -> str:
    """sha256 hex of the canonical JSON of an entry's payload."""
    return sha256_text(canonical_json(dict(payload)))


def new_txid() -> str:
    """A fresh id tying an intent to its commit or abort."""
    return uuid.uuid4().hex[:16]


def current_actor() -> str:
    """Who acts: $FRAUDGUARD_ACTOR, else the OS user."""
    actor = os.environ.get("FRAUDGUARD_ACTOR", "").strip()
    if actor:
        return actor
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry in some containers
        return "unknown"


def _utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


def _compact_reasons(reasons: Sequence[str], budget: int) -> tuple[str, ...]:
    per_reason = max(40, min(_MAX_REASON_CHARS, budget // max(1, len(reasons))))
    out = []
    for reason in reasons:
        reason = " ".join(str(reason).split())
        out.append(reason if len(reason) <= per_reason else reason[: per_reason - 3] + "...")
    return tuple(out)


def chain_entry(prev: AuditEntry | None, event: AuditEvent, signer: Signer, now: str | None = None) -> AuditEntry:
    """The signed entry that follows `prev` (or starts the chain) for `event`, compact enough for a tag."""
    if event.action not in ACTIONS:
        raise AuditError(f"audit action must be one of {ACTIONS}, got {event.action!r}")
    if event.phase not in PHASES:
        raise AuditError(f"audit phase must be one of {PHASES}, got {event.phase!r}")
    base: dict[str, Any] = dict(
        seq=1 if prev is None else prev.seq + 1,
        time=now or _utc_now(),
        actor=(event.actor or current_actor())[:100],
        action=event.action, phase=event.phase, txid=event.txid,
        from_version=event.from_version, to_version=event.to_version,
        gates={str(k): str(v) for k, v in sorted(event.gates.items())},
        attestation=event.attestation, approver=event.approver[:100], recovered=bool(event.recovered),
        key_id=signer.key_id,
        prev_hash=GENESIS_HASH if prev is None else prev.hash,
    )
    budget = MAX_ENTRY_CHARS - 700 - len(canonical_json(base["gates"]))
    reasons = _compact_reasons(list(event.reasons), budget)
    while True:
        payload = {**base, "reasons": list(reasons)}
        digest = entry_hash(payload)
        entry = AuditEntry(hash=digest, signature=signer.sign(digest.encode("ascii")), reasons=reasons, **base)
        if len(entry.to_json()) <= MAX_ENTRY_CHARS or not reasons:
            return entry
        reasons = reasons[:-1]  # drop trailing reasons rather than exceed the tag size


def parse_entry(text: str) -> AuditEntry:
    """An entry from its stored JSON; AuditError when it is not a well-formed entry."""
    try:
        raw = json.loads(text)
        return AuditEntry(
            seq=int(raw["seq"]), time=str(raw["time"]), actor=str(raw["actor"]),
            action=str(raw["action"]), phase=str(raw["phase"]), txid=str(raw["txid"]),
            from_version=None if raw["from_version"] is None else int(raw["from_version"]),
            to_version=None if raw["to_version"] is None else int(raw["to_version"]),
            reasons=tuple(str(r) for r in raw["reasons"]),
            gates={str(k): str(v) for k, v in raw["gates"].items()},
            attestation=str(raw["attestation"]), approver=str(raw["approver"]),
            recovered=bool(raw["recovered"]), key_id=str(raw["key_id"]),
            prev_hash=str(raw["prev_hash"]), hash=str(raw["hash"]), signature=str(raw["signature"]),
        )
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise AuditError(f"malformed audit entry ({exc.__class__.__name__}: {exc})") from exc


def verify_chain(entries: Sequence[AuditEntry], verifier: Verifier,
                 key_seqs: Sequence[int] | None = None) -> AuditVerification:
    """Check seq continuity, each entry's hash, signature and link; name the first seq at fault.

    `key_seqs` are the seqs of the tags the entries were read from (same order).
    """
    prev_hash = GENESIS_HASH
    for position, entry in enumerate(entries, start=1):
        stored_at = key_seqs[position - 1] if key_seqs is not None else entry.seq
        if stored_at != position:
            return AuditVerification(False, len(entries), position,
                                     f"entry {position} is missing (next stored entry is {stored_at}): removed")
        if entry.seq != position:
            return AuditVerification(False, len(entries), position,
                                     f"tag for seq {position} holds the entry with seq {entry.seq}: reordered")
        if entry_hash(entry.payload()) != entry.hash:
            return AuditVerification(False, len(entries), position, "content does not match its hash: edited")
        if entry.key_id != verifier.key_id or not verifier.verify(entry.hash.encode("ascii"), entry.signature):
            return AuditVerification(False, len(entries), position,
                                     f"signature does not verify with the pipeline key {verifier.key_id}: "
                                     "written or rewritten without the signing key")
        if entry.prev_hash != prev_hash:
            return AuditVerification(False, len(entries), position,
                                     "prev_hash does not match the previous entry's hash: "
                                     "an entry before it was edited, removed or reordered")
        prev_hash = entry.hash
    return AuditVerification(True, len(entries))


def stored_audit_tags(tags: Mapping[str, str]) -> list[tuple[int, str]]:
    """(seq, json) of every `audit.NNNNNN` tag in already-read registered-model tags, by seq."""
    found = []
    for key, value in tags.items():
        match = _KEY_RE.match(key)
        if match:
            found.append((int(match.group(1)), value))
    return sorted(found)


def audit_tag_key(seq: int) -> str:
    return f"{AUDIT_TAG_PREFIX}{seq:06d}"


def audit_entries_from_tags(tags: Mapping[str, str]) -> list[AuditEntry]:
    """The audit entries held in already-read registered-model tags, oldest first (unverified)."""
    entries = []
    for seq, text in stored_audit_tags(tags):
        try:
            entries.append(parse_entry(text))
        except AuditError as exc:
            raise AuditError(f"tag {audit_tag_key(seq)}: {exc}") from exc
    return entries


def check_audit_tags(tags: Mapping[str, str], verifier: Verifier) -> AuditVerification:
    """Check the chain held in already-read registered-model tags."""
    stored = stored_audit_tags(tags)
    entries: list[AuditEntry] = []
    for seq, text in stored:
        try:
            entries.append(parse_entry(text))
        except AuditError as exc:
            return AuditVerification(False, len(stored), seq, f"unreadable: edited ({exc})")
    return verify_chain(entries, verifier, [seq for seq, _ in stored])


# ------------------------------------------------------------------------------------------ checkpoint

@dataclass(frozen=True)
class Checkpoint:
    """A signed statement that entry `seq` with hash `hash` was the newest of the log at `issued_at`."""

    seq: int
    hash: str
    issued_at: dt.datetime
    expires_at: dt.datetime


def checkpoint_ttl_hours() -> float:
    """The lifetime of the checkpoints this host signs: $FRAUDGUARD_AUDIT_CHECKPOINT_TTL_HOURS, else 168."""
    raw = os.environ.get(CHECKPOINT_TTL_ENV, "").strip()
    if not raw:
        return DEFAULT_CHECKPOINT_TTL_HOURS
    try:
        hours = float(raw)
    except ValueError:
        hours = float("nan")
    # Bounded, not only positive: `inf` or 1e9 crashed the promotion after its registry write (the date overflows),
    # reporting a failure for a move that happened; 1e-9 expired every checkpoint as it was signed.
    if not MIN_CHECKPOINT_TTL_HOURS <= hours <= MAX_CHECKPOINT_TTL_HOURS:
        raise ConfigError(f"${CHECKPOINT_TTL_ENV} must be a number of hours from {MIN_CHECKPOINT_TTL_HOURS:g} to "
                          f"{MAX_CHECKPOINT_TTL_HOURS:g} (90 days), got {raw!r}")
    return hours


def _log_subject(model_name: str) -> str:
    return f"audit-log/{model_name}"


def sign_checkpoint(model_name: str, head: AuditEntry, signer: Signer, now: dt.datetime | None = None,
                    ttl_hours: float | None = None) -> str:
    """The signed checkpoint (a DSSE envelope) naming `head` as the newest entry of `model_name`'s log."""
    issued = now or dt.datetime.now(dt.timezone.utc)
    expires = issued + dt.timedelta(hours=ttl_hours if ttl_hours is not None else checkpoint_ttl_hours())
    statement = in_toto_statement({_log_subject(model_name): head.hash}, CHECKPOINT_PREDICATE_TYPE, {
        "model_name": model_name, "seq": head.seq,
        "issued_at": issued.isoformat(timespec="seconds"), "expires_at": expires.isoformat(timespec="seconds")})
    return sign_envelope(signer, statement)


def parse_checkpoint(model_name: str, envelope: str, verifier: Verifier) -> Checkpoint:
    """The checkpoint in `envelope`, its signature checked; AuditError when forged, altered or not this log's."""
    what = f"audit checkpoint of {model_name!r}"
    try:
        statement = open_envelope(verifier, envelope, what)
    except SignatureError as exc:
        raise AuditError(str(exc)) from exc
    predicate = statement.get("predicate") or {}
    digest = subject_digests(statement).get(_log_subject(model_name))
    if statement.get("predicateType") != CHECKPOINT_PREDICATE_TYPE or predicate.get("model_name") != model_name \
            or not digest:
        raise AuditError(f"{what}: the signed statement is not a checkpoint of this model's log")
    try:
        return Checkpoint(int(predicate["seq"]), digest, dt.datetime.fromisoformat(predicate["issued_at"]),
                          dt.datetime.fromisoformat(predicate["expires_at"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise AuditError(f"{what}: malformed ({exc.__class__.__name__}: {exc})") from exc


def checkpoint_problem(model_name: str, entries: Sequence[AuditEntry], envelope: str | None, verifier: Verifier,
                       now: dt.datetime | None = None, accept_expired: bool = False) -> str:
    """Why the (already verified) chain `entries` cannot be trusted to be whole against the stored checkpoint
    `envelope` ('' when it can). A log with entries must have a checkpoint; the chain must reach the entry it
    names, with the same hash; and it must not have expired (unless `accept_expired`)."""
    if envelope is None:
        if not entries:
            return ""
        return (f"the log has {len(entries)} entries but no signed checkpoint (tag {CHECKPOINT_TAG}): deleted, or "
                "written before checkpoints; on the host holding the signing key run `fraudguard audit checkpoint`")
    try:
        checkpoint = parse_checkpoint(model_name, envelope, verifier)
    except AuditError as exc:
        return str(exc)
    issued = checkpoint.issued_at.isoformat(timespec="seconds")
    if len(entries) < checkpoint.seq:
        return (f"the log ends at entry {len(entries)} but the signed checkpoint of {issued} names entry "
                f"{checkpoint.seq}: newest entries removed")
    if entries[checkpoint.seq - 1].hash != checkpoint.hash:
        return f"entry {checkpoint.seq} differs from the one the signed checkpoint names: the log was rewritten"
    moment = now or dt.datetime.now(dt.timezone.utc)
    if not accept_expired and moment >= checkpoint.expires_at:
        return (f"the signed checkpoint of the log (entry {checkpoint.seq}, issued {issued}) expired at "
                f"{checkpoint.expires_at.isoformat(timespec='seconds')}: entries written since may have been "
                "removed; on the host holding the signing key run `fraudguard audit checkpoint` (schedule it)")
    return ""
