"""Four-eyes approval: the author of the change cannot approve it, however the name is written."""

from __future__ import annotations

import subprocess
import unicodedata

import pytest

from fraudguard.approval import ApprovalInput, change_authors, check_approval

AUTHOR_NAME = unicodedata.normalize("NFC", "José Smith")


@pytest.fixture
def authors(tmp_path):
    (tmp_path / "f").write_text("x")
    for args in (["init", "-q"], ["add", "f"],
                 ["-c", "user.email=jose@example.com", "-c", f"user.name={AUTHOR_NAME}", "commit", "-qm", "change"]):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)
    return change_authors(tmp_path)


@pytest.mark.parametrize("approver", [
    "José Smith", " JOSÉ SMITH ", "jose@example.com",
    "José Smith <jose@example.com>",            # git's own identity form
    "<jose@example.com>",
    "José  Smith",                              # two spaces
    unicodedata.normalize("NFD", "José Smith"),  # é as e + combining accent
])
def test_the_author_cannot_approve_their_change_in_any_spelling(authors, approver):
    decision = check_approval(ApprovalInput(approver=approver, approve=True), authors)
    assert not decision.approved and "authored the change" in decision.reason


def test_another_person_approves(authors):
    decision = check_approval(ApprovalInput(approver="Ana Reviewer <ana@example.com>", approve=True), authors)
    assert decision.approved
