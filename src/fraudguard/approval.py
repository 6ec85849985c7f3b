"""Four-eyes approval of a promotion, through Prefect's suspend/resume with a typed input form.

When `promotion.approval.required` is on, the train-and-promote flow suspends after every gate passed
(`suspend_flow_run(wait_for_input=ApprovalInput)`, key `approve-v<version>`). A reviewer answers the form
in the Prefect UI (which resumes the run with the input) or runs `fraudguard approve VERSION --as NAME`
(the same resume call). The approver must differ from the author of the change; a timeout rejects.
"""

from __future__ import annotations

import subprocess  # nosec B404 - git with fixed arguments, no shell
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from fraudguard.errors import PolicyError, RegistryError


class ApprovalInput(BaseModel):
    """The form the reviewer fills in (Prefect renders it from this schema)."""

    approver: str = Field(min_length=1, max_length=100, description="Who approves (not the change's author).")
    approve: bool = Field(description="Approve the promotion (false rejects it).")
    comment: str = Field(default="", max_length=500, description="Why.")


@dataclass(frozen=True)
class ApprovalDecision:
    """The reviewer's answer, checked: `approved` only when approve is true and the approver may approve."""

    approver: str
    approved: bool
    reason: str


def approval_key(version: int) -> str:
    """The suspend key of the approval of `version` (one approval per version and flow run)."""
    return f"approve-v{int(version)}"


def change_authors(root: Path) -> set[str]:
    """Name and e-mail (lower case) of the author of the checkout's HEAD commit: who may not approve it."""
    try:
        # As recorded and as .mailmap maps them: either spelling is the author.
        out = subprocess.run(["git", "log", "-1", "--format=%an%n%ae%n%aN%n%aE"], cwd=root, capture_output=True,  # nosec B603 B607 - git, fixed argv, no shell
                             text=True, check=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise PolicyError(f"{root}: cannot read the author of the change to approve: {exc}") from exc
    return {key for line in out.splitlines() for key in identity_keys(line)}


def identity_keys(identity: str) -> set[str]:
    """The forms one person's name or address is compared in: Unicode NFKC, case-folded, inner white space
    collapsed; `Name <mail>` (git's form) gives the name and the address, `<mail>` the address."""
    import re
    import unicodedata

    text = unicodedata.normalize("NFKC", identity)
    match = re.fullmatch(r"\s*(.*?)\s*<([^<>]*)>\s*", text)
    parts = [match.group(1), match.group(2)] if match else [text]
    return {key for key in (" ".join(part.split()).casefold() for part in parts) if key}


def check_approval(answer: ApprovalInput, authors: set[str]) -> ApprovalDecision:
    """The decision an answer amounts to: a self-approval is a rejection that says why. `authors` as
    change_authors gives them (identity_keys of each)."""
    approver = answer.approver.strip()
    if identity_keys(approver) & authors:
        return ApprovalDecision(approver, False, f"{approver} authored the change and cannot approve it")
    if not answer.approve:
        return ApprovalDecision(approver, False, f"rejected by {approver}" + (f": {answer.comment}" if answer.comment else ""))
    return ApprovalDecision(approver, True, f"approved by {approver}" + (f": {answer.comment}" if answer.comment else ""))


def _waiting_flow_run(client: Any, version: int) -> Any:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType

    runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(
        state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED]))))
    key = approval_key(version)
    waiting = [run for run in runs if run.state and run.state.state_details.pause_key == key]
    if not waiting:
        raise RegistryError(f"no flow run is waiting for the approval of version {version} "
                            f"(looked for a suspended run with key {key!r})")
    return max(waiting, key=lambda run: run.created)


def send_approval(version: int, answer: ApprovalInput, authors: set[str]) -> str:
    """Resume the flow run waiting on `version` with the answer (what the UI's form does); its id.

    A self-approval is refused here (PolicyError) before anything is sent; the flow checks again.
    """
    from prefect import get_client
    from prefect.flow_runs import resume_flow_run

    decision = check_approval(answer, authors)
    if answer.approve and not decision.approved:
        raise PolicyError(f"approval of version {version} refused: {decision.reason}; "
                          "the approver must differ from the author of the change")
    with get_client(sync_client=True) as client:
        run = _waiting_flow_run(client, version)
    resume_flow_run(run.id, run_input=answer.model_dump())
    return str(run.id)
