"""Approving a folder the way promotion does, for tests that serve a folder without running an
evaluation first (drills, server mechanics): the real attestation signer with this state's
development approval key, over the folder's real signed digest. Attack tests must not use it."""

from __future__ import annotations

from pathlib import Path

from aiplat.security.approval import ServingKeys, attest, dev_approval_key_pair
from aiplat.security.signing import dev_key_pair, verify_model


def approval(folder: Path, model: str, version: str) -> str:
    """The attestation text approving `folder` (signed with this state's dev key) as `model` `version`."""
    digest = verify_model(folder, dev_key_pair().public_key)
    return attest(dev_approval_key_pair(), model=model, version=str(version), model_digest=digest,
                  eval_report_sha256="t" * 64, policy_sha256="p" * 64, approver="tests", approver_team="team:platform")


def approve(folder: Path, model: str, version: str, dest: Path) -> Path:
    """`approval(...)` written to `dest` (a file for run config `attestation_file` / `--attestation-file`)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(approval(folder, model, version))
    return dest


def serving_keys() -> ServingKeys:
    """This state's development keys, as the local runtime verifies with."""
    return ServingKeys(dev_key_pair().public_key, dev_approval_key_pair().public_key)
