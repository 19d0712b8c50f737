"""Approved is not built (issue 18 item 3): serving loads an adapter only when a promotion
attestation, signed with the platform's approval key, approves exactly those bytes as that version.

Each attack is one test. Before the change, the first deploys here reached a server (the folder
was signed, which was all serving checked). No vLLM is needed: every refusal happens before the
backend is asked, which the routes file and the state folder show (a start leaves a PID file).
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
from aiplat.serving.adapter_routes import AdapterRoutes
from aiplat.serving.backend import AdapterVersion
from tests.approval_helpers import approval, serving_keys
from tests.test_serving_signature import (  # noqa: F401 - fixtures
    BASE,
    ENDPOINT,
    _backend,
    _caller,
    _failure,
    _nothing_started,
    _serve,
    register,
    routes,
    signed_adapter,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def signed_folder(state_dir: Path, tmp_path: Path) -> Path:
    """Signed model files (what an attestation names is the folder's digest, whatever it holds)."""
    folder = tmp_path / "ticket-triage-v2"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "llama"}')
    (folder / "model-00001-of-00002.safetensors").write_bytes(os.urandom(4096))
    (folder / "model-00002-of-00002.safetensors").write_bytes(os.urandom(2048))
    (folder / "tokenizer.json").write_text('{"version": "1.0"}')
    sign_model(folder, dev_key_pair())
    return folder


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


def test_a_signed_but_never_promoted_adapter_is_refused_before_the_backend_is_asked(
        state_dir: Path, signed_adapter: Path, routes: AdapterRoutes, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: signed was enough, and this deploy reached the server."""
    from aiplat.serving.adapter_rollout import deploy_adapter

    before = routes.path.read_bytes()
    folder = str(signed_adapter)
    for version, text in (("2", ""),
                          # an approval of the same bytes as another version does not relabel them
                          ("7", approval(signed_adapter, ENDPOINT, "2"))):
        with pytest.raises(ApprovalError):
            deploy_adapter(_caller(monkeypatch), _backend(serving_keys()), ENDPOINT,
                           AdapterVersion(ENDPOINT, version, BASE, folder, text, folder=folder), serving_keys())
    assert routes.path.read_bytes() == before
    _nothing_started(state_dir)
    assert verify_for_serving(signed_adapter, approval(signed_adapter, ENDPOINT, "2"), serving_keys(),
                              model=ENDPOINT, version="2").version == "2"
    events = [e["event"] for e in AuditLog().entries()]
    assert events == ["access", "deploy refused: approval"] * 2


def test_an_approved_folder_changed_afterwards_is_refused_on_its_signature(signed_folder: Path) -> None:
    text = approval(signed_folder, ENDPOINT, "2")
    (signed_folder / "tokenizer.json").write_text('{"version": "2.0"}')
    with pytest.raises(SignatureError, match="changed since signing: tokenizer.json"):
        verify_for_serving(signed_folder, text, serving_keys(), model=ENDPOINT, version="2")


def test_a_ui_user_cannot_name_a_folder_for_served_endpoint_to_serve(state_dir: Path, signed_adapter: Path,
                                                                      routes: AdapterRoutes, tmp_path: Path) -> None:
    """Before: `served_endpoint` took run config `model_folder` (and an attestation file), a way for
    anyone with the UI to put other bytes on an endpoint. Now the asset serves only what the registry's
    champion names: such run config is refused by Dagster before the step runs."""
    _, uri, _ = register(tmp_path, signed_adapter, ENDPOINT)
    before = routes.path.read_bytes()
    from resources.mlflow import MLflowResource
    from resources.operations import OperationsResource
    from resources.signing import ModelSigningResource
    from resources.vllm import LocalVllmResource
    from tests.chain_helpers import chain_asset, chain_for, op_name

    import dagster as dg

    chain = chain_for(ENDPOINT, base_model=BASE)
    served = chain_asset(chain, "served_endpoint")
    with pytest.raises(dg.DagsterInvalidConfigError, match="model_folder"):
        dg.materialize([served], resources={"vllm": LocalVllmResource(), "operations": OperationsResource(),
                                            "model_signing": ModelSigningResource(),
                                            "mlflow": MLflowResource(tracking_uri=uri)},
                       run_config={"ops": {op_name(chain, "served_endpoint"): {"config": {
                           "model_folder": str(signed_adapter), "model_version": "1"}}}})
    assert routes.path.read_bytes() == before
    _nothing_started(state_dir)


def test_an_alias_moved_by_hand_in_mlflow_serves_nothing(state_dir: Path, signed_adapter: Path,
                                                         routes: AdapterRoutes, tmp_path: Path) -> None:
    """MLflow's alias API is unauthenticated (without the platform's MLflow auth): anyone could point
    `champion` at any version with one call. The version it now names carries no promotion
    attestation, so serving refuses it, audited."""
    client, uri, version = register(tmp_path, signed_adapter, ENDPOINT, approve=False)  # the alias set by hand
    before = routes.path.read_bytes()
    result = _serve(uri)
    assert not result.success and "was never approved" in _failure(result)
    # Copying another version's attestation onto it does not help either: it names other bytes.
    client.set_model_version_tag(ENDPOINT, version, APPROVAL_TAG,
                                 attest(dev_approval_key_pair(), model=ENDPOINT, version=version, model_digest="e" * 64,
                                        eval_report_sha256="r" * 64, policy_sha256="p" * 64, approver="x",
                                        approver_team="team:ml"))
    result = _serve(uri)
    assert not result.success and "is not the approved one" in _failure(result)
    assert routes.path.read_bytes() == before
    _nothing_started(state_dir)
    assert [e["event"] for e in AuditLog().entries()] == ["access", "deploy refused: approval"] * 2


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
