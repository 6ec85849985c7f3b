"""Prefect flow `audit-checkpoint`: re-sign the audit log's newest entry before its checkpoint expires.

Scheduled on the host that holds the signing key (prefect.yaml), so that a brand-new serving replica can tell a
log trimmed back past a rollback even when no promotion or rollback has happened for longer than the
checkpoint's lifetime (docs/promotion.md "Signed checkpoint").
"""

from __future__ import annotations

import os
from pathlib import Path

from prefect import flow, task
from prefect.cache_policies import NO_CACHE


@task(name="refresh-audit-checkpoint", cache_policy=NO_CACHE)
def refresh_audit_checkpoint(root: Path):
    from fraudguard.config import load_settings
    from fraudguard.registry import refresh_checkpoint
    from fraudguard.signing import load_signer
    from fraudguard.tracking import configure_mlflow

    settings = load_settings(root / "params.yaml")
    client = configure_mlflow(root, settings.registry)
    signer = load_signer(create=False)
    return refresh_checkpoint(client, settings.registry.model_name, signer, signer.verifier())


@flow(name="audit-checkpoint", log_prints=True)
def audit_checkpoint():
    """Refresh the signed checkpoint; fails (naming the newest entry) when it is missing or has expired."""
    root = Path(os.environ.get("FRAUDGUARD_PROJECT_DIR", ".")).resolve()
    checkpoint = refresh_audit_checkpoint(root)
    if checkpoint is None:
        print("the audit log is empty: nothing to checkpoint")
        return None
    print(f"audit checkpoint: entry {checkpoint.seq} signed, valid until {checkpoint.expires_at.isoformat()}")
    return {"seq": checkpoint.seq, "expires_at": checkpoint.expires_at.isoformat()}


if __name__ == "__main__":
    audit_checkpoint()
