"""Promotion attestations: "approved", as distinct from "built".

Training signs every fine-tune (aiplat.security.signing): a signature says who *built* the bytes.
Promotion, once the version's eval report passed the platform's gate policy and the caller was
authorized, signs a second statement with a second key: an in-toto Statement (DSSE envelope,
ECDSA P-256) whose subject is the model digest the build signature covers and whose predicate
names the model, version, eval report digest, gate policy digest and approver. Serving verifies
both, locally and in the Kubernetes init container, so a folder that was signed but never
promoted (or an alias someone moved by hand in the registry) does not serve.

The attestation is a small JSON document; it travels as the MLflow model version's tag
`aiplat.promotion.attestation` (anyone may read or delete a tag, nobody without the approval key
can write one that verifies), in the endpoint registry beside the server that serves it (for
rollbacks), and inline in the rendered Deployment (for the init container).

Keys: locally a development pair under <state>/security/dev-approval-key/ (made on first use); in
prod the private key only where promotion runs (AIPLAT_APPROVAL_PRIVATE_KEY), the public key
wherever serving verifies (AIPLAT_APPROVAL_PUBLIC_KEY); either missing is an error naming it.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from aiplat.config import state_dir
from aiplat.security.signing import KeyPair, SignatureError

APPROVAL_TAG = "aiplat.promotion.attestation"
PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://aiplat.dev/attestations/promotion/v1"


class ApprovalError(SignatureError):
    """The model is not approved for serving: no attestation, a forged or altered one, or one that
    approves other bytes or another version. A SignatureError, so every path that refuses an
    unsigned folder (audit entry, endpoint unchanged) refuses an unapproved one the same way."""

    kind = "approval"


@dataclass(frozen=True)
class Approval:
    """A verified attestation's predicate."""

    model: str
    version: str
    model_digest: str
    eval_report_sha256: str
    policy_sha256: str
    approver: str
    approver_team: str
    requested_by: str
    dagster_run_id: str
    approved_at: str
    key_fingerprint: str


def dev_approval_key_dir() -> Path:
    return state_dir() / "security" / "dev-approval-key"


def dev_approval_key_pair() -> KeyPair:
    from dataclasses import replace

    from aiplat.security.signing import dev_key_pair

    return replace(dev_key_pair(dev_approval_key_dir()), label="dev-local-approval")


def _pae(payload_type: str, body: bytes) -> bytes:
    """DSSE's pre-authentication encoding: what is actually signed (type and body, length-prefixed)."""
    t = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(body), body)


def attest(keys: KeyPair, *, model: str, version: str, model_digest: str, eval_report_sha256: str,
           policy_sha256: str, approver: str, approver_team: str, requested_by: str = "",
           dagster_run_id: str = "", adapter_digest: str = "") -> str:
    """The signed attestation (DSSE envelope JSON text) that `model` `version` with these bytes was
    approved: the model's signed digest, and its LoRA adapter's when that is other bytes (a second
    subject, so a shared multi-adapter server may load exactly that adapter as this version; a
    fine-tune's version is its adapter, one subject)."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    if keys.private_key is None or not Path(keys.private_key).is_file():
        raise ApprovalError(f"cannot approve {model} version {version}: no approval private key ({keys.label})")
    if not model_digest:
        raise ApprovalError(f"cannot approve {model} version {version}: it records no signed model digest")
    statement = {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": f"{model}/v{version}", "digest": {"sha256": model_digest}},
                    *([{"name": f"{model}/v{version}/adapter", "digest": {"sha256": adapter_digest}}]
                      if adapter_digest and adapter_digest != model_digest else [])],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "model": model, "version": str(version), "eval_report_sha256": eval_report_sha256,
            "policy_sha256": policy_sha256, "approver": approver, "approver_team": approver_team,
            "requested_by": requested_by, "dagster_run_id": dagster_run_id,
            "approved_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        },
    }
    body = json.dumps(statement, sort_keys=True, separators=(",", ":")).encode()
    password = keys.password.encode() if keys.password else None
    private = serialization.load_pem_private_key(Path(keys.private_key).read_bytes(), password=password)
    signature = private.sign(_pae(PAYLOAD_TYPE, body), ec.ECDSA(hashes.SHA256()))
    return json.dumps({
        "payloadType": PAYLOAD_TYPE,
        "payload": base64.b64encode(body).decode(),
        "signatures": [{"keyid": keys.fingerprint(), "sig": base64.b64encode(signature).decode()}],
    }, sort_keys=True)


def verify_approval(attestation: str | None, public_key: Path, *, model: str, version: str,
                    model_digest: str) -> Approval:
    """The approval, when `attestation` is signed by the approval key and approves exactly these
    bytes (`model_digest`, from the build signature's verification) as `model` (when named) `version`;
    else ApprovalError saying which of these failed."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    what = f"{model or 'the model'} version {version}"
    if not (attestation or "").strip():
        raise ApprovalError(f"{what} has no promotion attestation: it was never approved (promoted) for serving")
    try:
        envelope = json.loads(attestation)
        body = base64.b64decode(envelope["payload"], validate=True)
        signatures = [base64.b64decode(s["sig"], validate=True) for s in envelope["signatures"]]
        payload_type = envelope["payloadType"]
    except (ValueError, KeyError, TypeError) as e:
        raise ApprovalError(f"the promotion attestation of {what} is not a DSSE envelope: {type(e).__name__}: {e}") from None
    key = serialization.load_pem_public_key(Path(public_key).read_bytes())
    for signature in signatures:
        try:
            key.verify(signature, _pae(payload_type, body), ec.ECDSA(hashes.SHA256()))
            break
        except InvalidSignature:
            continue
    else:
        raise ApprovalError(f"the promotion attestation of {what} is not signed by the approval key "
                            f"{Path(public_key).name}: it was forged or altered")
    statement = json.loads(body)
    predicate = statement.get("predicate") or {}
    approved = [(subject.get("digest") or {}).get("sha256") for subject in statement.get("subject") or []
                if isinstance(subject, dict)]
    subject_digest = model_digest if model_digest in approved else (approved or [None])[0]
    if payload_type != PAYLOAD_TYPE or statement.get("predicateType") != PREDICATE_TYPE:
        raise ApprovalError(f"the attestation of {what} is not a promotion attestation ({statement.get('predicateType')})")
    if subject_digest != model_digest:
        raise ApprovalError(f"{what}: the folder's signed digest {model_digest[:12]} is not the approved one "
                            f"({str(subject_digest)[:12]}, {predicate.get('model')} version {predicate.get('version')})")
    if str(predicate.get("version")) != str(version) or (model and predicate.get("model") != model):
        raise ApprovalError(f"the attestation approves {predicate.get('model')} version {predicate.get('version')}, "
                            f"not {what}")
    return Approval(
        model=predicate["model"], version=str(predicate["version"]), model_digest=subject_digest,
        eval_report_sha256=predicate.get("eval_report_sha256", ""), policy_sha256=predicate.get("policy_sha256", ""),
        approver=predicate.get("approver", ""), approver_team=predicate.get("approver_team", ""),
        requested_by=predicate.get("requested_by", ""), dagster_run_id=predicate.get("dagster_run_id", ""),
        approved_at=predicate.get("approved_at", ""),
        key_fingerprint=KeyPair(None, Path(public_key), "").fingerprint(),
    )


def describe(attestation: str) -> str:
    """One line for people: what the attestation claims (its sha256 and predicate), not a verification."""
    import hashlib

    try:
        statement = json.loads(base64.b64decode(json.loads(attestation)["payload"]))
        p = statement["predicate"]
        claim = (f"approves {p.get('model')} v{p.get('version')} digest "
                 f"{statement['subject'][0]['digest']['sha256'][:12]}, report {p.get('eval_report_sha256', '')[:12]}, "
                 f"policy {p.get('policy_sha256', '')[:12]}, by {p.get('approver')} ({p.get('approver_team')}) "
                 f"at {p.get('approved_at')}")
    except (ValueError, KeyError, TypeError, IndexError):
        claim = "not a promotion attestation"
    return f"sha256 {hashlib.sha256(attestation.encode()).hexdigest()[:16]}: {claim}"


def registry_attestation(client, name: str, version: str) -> str:
    """The attestation recorded on MLflow version `version` of `name` ("" when there is none)."""
    from mlflow.exceptions import MlflowException

    try:
        return (client.get_model_version(name, str(version)).tags or {}).get(APPROVAL_TAG, "")
    except MlflowException as e:
        if e.error_code == "RESOURCE_DOES_NOT_EXIST":
            return ""
        raise


@dataclass(frozen=True)
class ServingKeys:
    """What serving verifies a model folder with: the build signature's key and the approval key."""

    signature: Path
    approval: Path


def verify_for_serving(folder: Path, attestation: str | None, keys: ServingKeys, *, model: str,
                       version: str) -> Approval:
    """The one check before any server loads adapter `folder` (the control sequence, the local load,
    the Kubernetes adapter-loader sidecar): its files match their build signature, and a promotion attestation approves
    exactly those bytes as `model` `version`. SignatureError / ApprovalError otherwise."""
    from aiplat.security.signing import verify_model

    digest = verify_model(folder, keys.signature)
    return verify_approval(attestation, keys.approval, model=model, version=version, model_digest=digest)
