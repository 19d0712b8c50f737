"""Approved is not built (issue 18 item 3): serving starts a folder only when a promotion
attestation, signed with the platform's approval key, approves exactly those bytes as that version.

Each attack is one test. Before the change, the first three deploys here started a server (the
folder was signed, which was all serving checked). No vLLM is needed: every refusal happens before
a server would start, which the registry and the state folder show (a start leaves a PID file).
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from aiplat.security.approval import (
    APPROVAL_TAG,
    ApprovalError,
    attest,
    describe,
    dev_approval_key_pair,
    verify_approval,
    verify_for_serving,
)
from aiplat.security.audit_log import AuditLog
from aiplat.security.signing import SignatureError, dev_key_pair, sign_model, verify_model
from aiplat.serving.champion import FolderSource, MlflowAliasSource
from aiplat.serving.manager import EndpointManager
from aiplat.serving.registry import EndpointRegistry
from aiplat.serving.rollout import roll_out
from aiplat.serving.server import ServerSettings
from tests.approval_helpers import approval, serving_keys
from tests.test_serving_signature import (  # noqa: F401 - fixtures
    ENDPOINT,
    _deploy,
    _failure,
    _nothing_started,
    registry,
    signed_folder,
)

ROOT = Path(__file__).resolve().parents[1]


def _other_key(tmp_path: Path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from aiplat.security.signing import KeyPair

    key = ec.generate_private_key(ec.SECP256R1())
    private, public = tmp_path / "eve.pem", tmp_path / "eve.pub"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))
    return KeyPair(private, public, label="eve")


# --- the attestation itself -----------------------------------------------------------------------


def test_an_approval_names_exactly_what_was_approved(signed_folder: Path) -> None:
    digest = verify_model(signed_folder, dev_key_pair().public_key)
    text = attest(dev_approval_key_pair(), model=ENDPOINT, version="2", model_digest=digest,
                  eval_report_sha256="r" * 64, policy_sha256="p" * 64, approver="svc:dagster",
                  approver_team="team:platform", requested_by="alice", dagster_run_id="run-1")
    got = verify_approval(text, dev_approval_key_pair().public_key, model=ENDPOINT, version="2", model_digest=digest)
    assert (got.model, got.version, got.model_digest, got.eval_report_sha256, got.policy_sha256) == \
        (ENDPOINT, "2", digest, "r" * 64, "p" * 64)
    assert (got.approver, got.approver_team, got.requested_by, got.dagster_run_id) == \
        ("svc:dagster", "team:platform", "alice", "run-1")
    assert f"approves {ENDPOINT} v2 digest {digest[:12]}" in describe(text) and "by svc:dagster (team:platform)" in describe(text)
    envelope = json.loads(text)
    assert envelope["payloadType"] == "application/vnd.in-toto+json"
    assert json.loads(base64.b64decode(envelope["payload"]))["subject"][0]["digest"]["sha256"] == digest


def test_a_promotion_approves_the_versions_adapter_too_and_nothing_else(signed_folder: Path, tmp_path: Path) -> None:
    """A version's LoRA adapter (what a shared multi-adapter server loads) is approved by the same
    attestation as a second subject; another adapter, or an attestation without one, is not."""
    import shutil

    adapter = shutil.copytree(signed_folder, tmp_path / "adapter")
    (adapter / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 8}')
    adapter_digest = sign_model(adapter, dev_key_pair()).model_digest
    digest = verify_model(signed_folder, dev_key_pair().public_key)
    common = dict(model=ENDPOINT, version="2", eval_report_sha256="r" * 64, policy_sha256="p" * 64,
                  approver="svc:dagster", approver_team="team:platform")
    both = attest(dev_approval_key_pair(), model_digest=digest, adapter_digest=adapter_digest, **common)
    for folder in (signed_folder, adapter):
        got = verify_for_serving(folder, both, serving_keys(), model=ENDPOINT, version="2")
        assert got.model_digest == verify_model(folder, dev_key_pair().public_key)
    model_only = attest(dev_approval_key_pair(), model_digest=digest, **common)
    with pytest.raises(ApprovalError, match="is not the approved one"):
        verify_for_serving(adapter, model_only, serving_keys(), model=ENDPOINT, version="2")
    other = shutil.copytree(adapter, tmp_path / "other-adapter")
    (other / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 4}')
    sign_model(other, dev_key_pair())
    with pytest.raises(ApprovalError, match="is not the approved one"):
        verify_for_serving(other, both, serving_keys(), model=ENDPOINT, version="2")


@pytest.mark.parametrize("attack", ["other key", "edited version", "other bytes", "other version", "other model",
                                    "no attestation", "not an envelope"])
def test_a_forged_altered_or_misapplied_attestation_is_refused(signed_folder: Path, tmp_path: Path, attack: str) -> None:
    digest = verify_model(signed_folder, dev_key_pair().public_key)
    keys = _other_key(tmp_path) if attack == "other key" else dev_approval_key_pair()
    text = attest(keys, model=ENDPOINT, version="2", model_digest="f" * 64 if attack == "other bytes" else digest,
                  eval_report_sha256="r" * 64, policy_sha256="p" * 64, approver="eve", approver_team="team:ml")
    model, version = ENDPOINT, "2"
    expected = {"other key": "not signed by the approval key", "edited version": "not signed by the approval key",
                "other bytes": "is not the approved one", "other version": "approves ticket-triage version 2, not",
                "other model": "approves ticket-triage version 2, not", "no attestation": "was never approved",
                "not an envelope": "not a DSSE envelope"}[attack]
    if attack == "edited version":  # the payload re-encoded with another version, the signature kept
        envelope = json.loads(text)
        statement = json.loads(base64.b64decode(envelope["payload"]))
        statement["predicate"]["version"], version = "3", "3"
        envelope["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
        text = json.dumps(envelope)
    elif attack == "other version":
        version = "3"
    elif attack == "other model":
        model = "reply-drafter"
    elif attack == "no attestation":
        text = ""
    elif attack == "not an envelope":
        text = '{"approved": true}'
    with pytest.raises(ApprovalError, match=expected):
        verify_approval(text, dev_approval_key_pair().public_key, model=model, version=version, model_digest=digest)


# --- serving refuses what no promotion approved --------------------------------------------------


def test_a_signed_but_never_promoted_folder_is_refused_before_any_server_starts(
        state_dir: Path, signed_folder: Path, registry: EndpointRegistry) -> None:
    """Before: signed was enough, and this roll_out started a server."""
    manager = EndpointManager(ServerSettings(), registry, keys=serving_keys())
    before = registry.path.read_bytes()
    for model in (FolderSource(signed_folder, "2", ENDPOINT).resolve(),
                  # an approval of the same bytes as another version does not relabel them
                  FolderSource(signed_folder, "7", ENDPOINT, approval(signed_folder, ENDPOINT, "2")).resolve()):
        with pytest.raises(ApprovalError):
            roll_out(manager, ENDPOINT, model)
    assert registry.path.read_bytes() == before
    _nothing_started(state_dir)
    approved = FolderSource(signed_folder, "2", ENDPOINT, approval(signed_folder, ENDPOINT, "2")).resolve()
    assert manager.verify(approved).version == "2"


def test_an_approved_folder_changed_afterwards_is_refused_on_its_signature(signed_folder: Path) -> None:
    text = approval(signed_folder, ENDPOINT, "2")
    (signed_folder / "tokenizer.json").write_text('{"version": "2.0"}')
    with pytest.raises(SignatureError, match="changed since signing: tokenizer.json"):
        verify_for_serving(signed_folder, text, serving_keys(), model=ENDPOINT, version="2")


def test_a_ui_user_cannot_serve_a_signed_folder_through_the_drill_config(
        state_dir: Path, signed_folder: Path, registry: EndpointRegistry, tmp_path: Path) -> None:
    """Before: `served_endpoint` with run config `model_folder` served any signed folder. Now it needs
    an approval of those bytes as that version; one made with another key (the attacker's) is refused
    and audited, and the live endpoint stays."""
    forged = tmp_path / "forged.json"
    digest = verify_model(signed_folder, dev_key_pair().public_key)
    forged.write_text(attest(_other_key(tmp_path), model=ENDPOINT, version="2", model_digest=digest,
                             eval_report_sha256="r" * 64, policy_sha256="p" * 64, approver="eve",
                             approver_team="team:platform"))
    before = registry.path.read_bytes()
    result = _deploy(signed_folder, attestation_file=forged)
    assert not result.success
    assert "not signed by the approval key" in _failure(result) and f"endpoint {ENDPOINT!r} is unchanged" in _failure(result)
    assert registry.path.read_bytes() == before
    _nothing_started(state_dir)
    events = [e["event"] for e in AuditLog().entries()]
    assert events == ["access", "deploy refused: approval"]


def test_an_alias_moved_by_hand_in_mlflow_serves_nothing(state_dir: Path, signed_folder: Path,
                                                         registry: EndpointRegistry, tmp_path: Path) -> None:
    """MLflow's alias API is unauthenticated: anyone can point `champion` at any version with one
    call. The version it now names carries no promotion attestation, so serving refuses it."""
    from aiplat.security.signing import tag_model_version
    from tests.test_serving_signature import registered_version

    client, uri, version = registered_version(tmp_path, signed_folder, ENDPOINT)
    tag_model_version(client, ENDPOINT, version, sign_model(signed_folder, dev_key_pair()))
    client.set_registered_model_alias(ENDPOINT, "champion", version)  # the attack: no promotion

    model = MlflowAliasSource(client, ENDPOINT, download_root=tmp_path / "served", tracking_uri=uri).resolve()
    manager = EndpointManager(ServerSettings(), registry, keys=serving_keys())
    with pytest.raises(ApprovalError, match="was never approved"):
        roll_out(manager, ENDPOINT, model)
    # Copying another version's attestation onto it does not help either: it names other bytes.
    client.set_model_version_tag(ENDPOINT, version, APPROVAL_TAG,
                                 attest(dev_approval_key_pair(), model=ENDPOINT, version=version, model_digest="e" * 64,
                                        eval_report_sha256="r" * 64, policy_sha256="p" * 64, approver="x",
                                        approver_team="team:ml"))
    model = MlflowAliasSource(client, ENDPOINT, download_root=tmp_path / "served", tracking_uri=uri).resolve()
    with pytest.raises(ApprovalError, match="is not the approved one"):
        manager.verify(model)
    _nothing_started(state_dir)


# --- the Kubernetes init container's verifier ------------------------------------------------------


def _verify_cli(folder: Path, attestation: str, version: str = "2") -> subprocess.CompletedProcess:
    keys = serving_keys()
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT), "AIPLAT_ATTESTATION": attestation,
           "HOME": str(folder.parent)}
    return subprocess.run(
        [sys.executable, "-m", "aiplat.security.verify_folder", str(folder), "--public-key", str(keys.signature),
         "--approval-key", str(keys.approval), "--model-name", ENDPOINT, "--version", version],
        env=env, capture_output=True, text=True, timeout=120)


def test_the_init_container_verifier_passes_approved_bytes_and_refuses_the_rest(signed_folder: Path,
                                                                                tmp_path: Path) -> None:
    text = approval(signed_folder, ENDPOINT, "2")
    ok = _verify_cli(signed_folder, text)
    assert ok.returncode == 0, ok.stderr
    assert f"{ENDPOINT} version 2 verified" in ok.stdout and "approved by tests (team:platform)" in ok.stdout
    unapproved = _verify_cli(signed_folder, "")
    assert unapproved.returncode == 1 and "REFUSED" in unapproved.stderr and "never approved" in unapproved.stderr
    relabelled = _verify_cli(signed_folder, text, version="3")
    assert relabelled.returncode == 1 and "not ticket-triage version 3" in relabelled.stderr
    (signed_folder / "extra.safetensors").write_bytes(b"\0" * 8)
    tampered = _verify_cli(signed_folder, text)
    assert tampered.returncode == 1 and "added after signing: extra.safetensors" in tampered.stderr


def test_rendered_pods_verify_the_bytes_vllm_loads_and_answer_only_the_gateway(tmp_path: Path) -> None:
    from aiplat.serving import k8s

    spec = k8s.EndpointSpec(ENDPOINT, "4", "s3://models/ticket-triage/v4", ENDPOINT, model_name="ticket-triage",
                            attestation='{"payloadType": "x"}')
    pod = k8s.deployment(spec)["spec"]["template"]["spec"]
    fetch, verify = pod["initContainers"]
    vllm = pod["containers"][0]
    assert fetch["command"][:3] == ["aws", "s3", "sync"] and fetch["command"][-2:] == ["s3://models/ticket-triage/v4/",
                                                                                       f"{k8s.MODEL_DIR}/"]
    assert verify["command"][:2] == ["aiplat-verify-model", k8s.MODEL_DIR]
    assert verify["command"][verify["command"].index("--version") + 1] == "4"
    assert {"name": "AIPLAT_ATTESTATION", "value": '{"payloadType": "x"}'} in verify["env"]
    assert vllm["args"][0] == k8s.MODEL_DIR and "--load-format" not in vllm["args"]  # never the store directly
    mounts = {m["name"]: m for m in vllm["volumeMounts"]}
    assert mounts["model"]["readOnly"] is True and mounts["model"]["mountPath"] == k8s.MODEL_DIR
    key = {e["name"]: e for e in vllm["env"]}["VLLM_API_KEY"]["valueFrom"]["secretKeyRef"]
    assert key == {"name": "aiplat-secrets", "key": "AIPLAT_VLLM_API_KEY"}  # the gateway's upstream key
    assert "Authorization" in vllm["readinessProbe"]["exec"]["command"][3]
    with pytest.raises(ValueError, match="s3://"):
        k8s.deployment(k8s.EndpointSpec(ENDPOINT, "4", "/mnt/models/v4", ENDPOINT))
