"""Serving refuses an adapter that does not match its signature, and a caller outside the owner team
and the platform team, before the backend is asked for anything: the endpoint's route stays byte
for byte as it was, no vLLM process starts, and the refusal is in the audit log. No vLLM is
needed: a verification that let the adapter through would reach the backend, which would start a
server (its PID file and log under the state dir) or fail naming the missing base model: the
assertions below catch either."""

from __future__ import annotations

import json
import os
from pathlib import Path

import dagster as dg
import pytest

from aiplat.security.approval import ServingKeys
from aiplat.security.audit_log import AuditLog
from aiplat.security.signing import SignatureError, dev_key_pair, sign_model
from aiplat.serving.adapter_routes import AdapterRoutes
from aiplat.serving.adapters import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from aiplat.serving.backend import AdapterVersion, LocalServingBackend
from aiplat.serving.server import ServerSettings
from tests.approval_helpers import approval, serving_keys

ENDPOINT = "ticket-triage"
BASE = "smollm2-135m-instruct"


def make_signed_adapter(folder: Path) -> Path:
    """A PEFT LoRA adapter folder as far as serving's checks go (config + safetensors weights, random
    bytes: no server ever loads it here), signed with the development key."""
    folder.mkdir(parents=True)
    (folder / ADAPTER_CONFIG).write_text(json.dumps({"peft_type": "LORA", "r": 8, "lora_alpha": 16,
                                                     "target_modules": ["q_proj", "v_proj"]}))
    (folder / ADAPTER_WEIGHTS).write_bytes(os.urandom(4096))
    (folder / "README.md").write_text("ticket-triage LoRA adapter\n")
    sign_model(folder, dev_key_pair())
    return folder


@pytest.fixture
def signed_adapter(state_dir: Path, tmp_path: Path) -> Path:
    return make_signed_adapter(tmp_path / "ticket-triage-v2-adapter")


@pytest.fixture
def routes(state_dir: Path) -> AdapterRoutes:
    """An endpoint whose route (version 1) the refused deploys must leave in place."""
    routes = AdapterRoutes()
    routes.set(ENDPOINT, "http://127.0.0.1:9", {f"{ENDPOINT}@1": 100.0})
    return routes


def _tamper(folder: Path, how: str) -> str:
    if how == "flipped byte":
        weights = folder / ADAPTER_WEIGHTS
        data = bytearray(weights.read_bytes())
        data[7] ^= 0x01
        weights.write_bytes(bytes(data))
        return f"changed since signing: {ADAPTER_WEIGHTS}"
    if how == "added file":
        (folder / "extra.safetensors").write_bytes(b"\0" * 64)
        return "added after signing: extra.safetensors"
    if how == "missing file":
        (folder / "README.md").unlink()
        return "missing: README.md"
    (folder / "model.sig").unlink()
    return "is not signed"


def _nothing_started(state_dir: Path) -> None:
    assert not list((state_dir / "run").rglob("*.pid")) and not list((state_dir / "logs").rglob("*.log"))
    assert not (state_dir / "serving" / "base-servers.json").exists()


def _backend(keys: ServingKeys) -> LocalServingBackend:
    # A base the backend would start a server for, if anything reached it.
    return LocalServingBackend(ServerSettings(), keys, {BASE: Path("/nonexistent/base")})


def _caller(monkeypatch: pytest.MonkeyPatch, team: str = "team:ml"):
    from aiplat.security.access import current_identity
    from aiplat.serving.control import Caller
    from tests.identity_helpers import act_as

    act_as(monkeypatch, team)
    return Caller(current_identity(), AuditLog(), {ENDPOINT: "team:ml"})


@pytest.mark.parametrize("how", ["flipped byte", "added file", "missing file", "unsigned"])
def test_a_tampered_adapter_is_refused_before_the_backend_is_asked(state_dir: Path, signed_adapter: Path,
                                                                   routes: AdapterRoutes, how: str,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from aiplat.serving.adapter_rollout import deploy_adapter

    approved = approval(signed_adapter, ENDPOINT, "2")
    adapter = AdapterVersion(ENDPOINT, "2", BASE, str(signed_adapter), approved, folder=str(signed_adapter))
    expected = _tamper(signed_adapter, how)
    before = routes.path.read_bytes()
    with pytest.raises(SignatureError, match=expected):
        deploy_adapter(_caller(monkeypatch), _backend(serving_keys()), ENDPOINT, adapter, serving_keys())
    assert routes.path.read_bytes() == before
    _nothing_started(state_dir)
    entries = list(AuditLog().entries())
    assert [(e["event"], e.get("decision")) for e in entries] == [("access", "allowed"), ("deploy refused: signature", None)]
    assert expected in entries[-1]["reason"]


def test_an_adapter_signed_by_another_key_is_refused(state_dir: Path, signed_adapter: Path, routes: AdapterRoutes,
                                                     tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from aiplat.serving.adapter_rollout import deploy_adapter

    other = tmp_path / "other.pem"
    other.write_bytes(ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    keys = ServingKeys(other, serving_keys().approval)
    adapter = AdapterVersion(ENDPOINT, "2", BASE, str(signed_adapter), approval(signed_adapter, ENDPOINT, "2"),
                             folder=str(signed_adapter))
    before = routes.path.read_bytes()
    with pytest.raises(SignatureError, match="invalid for key other.pem"):
        deploy_adapter(_caller(monkeypatch), _backend(keys), ENDPOINT, adapter, keys)
    assert routes.path.read_bytes() == before
    _nothing_started(state_dir)


# --- through the served_endpoint asset, the champion from a real MLflow registry -----------------------


def register(tmp_path: Path, folder: Path, name: str, signed_as: Path | None = None,
             approve: bool = True) -> tuple[object, str, str]:
    """`folder` as the `champion` version of `name` in a real MLflow registry without a server
    (SQLite), the way a fine-tune registers it: the adapter as the artifact, its digest, the signature
    tags of `signed_as` (default: the folder itself), approved by a promotion unless not `approve`.
    (client, uri, version)."""
    from mlflow.tracking import MlflowClient

    from aiplat.evaluation.registry import TAG_ADAPTER_ARTIFACT, TAG_ADAPTER_SHA, TAG_BASE_SHA
    from aiplat.models.manifest import compute_manifest
    from aiplat.provenance import sha256_bytes
    from aiplat.security.approval import APPROVAL_TAG
    from aiplat.security.signing import SIGNATURE_NAME, TAG_ADAPTER_DIGEST, TAG_ADAPTER_SIGNATURE_SHA
    from aiplat.security.signing import verify_model

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri, registry_uri=uri)
    experiment = client.create_experiment("serve", artifact_location=str(tmp_path / "artifacts"))
    run = client.create_run(experiment)
    client.log_artifacts(run.info.run_id, str(folder), "adapter")
    client.set_terminated(run.info.run_id, "FINISHED")
    client.create_registered_model(name, tags={"owner_team": "team:ml"})
    artifact = f"{client.get_run(run.info.run_id).info.artifact_uri}/adapter"
    version = str(client.create_model_version(name, source=artifact, run_id=run.info.run_id, tags={
        TAG_ADAPTER_ARTIFACT: artifact, TAG_ADAPTER_SHA: compute_manifest(folder).folder_sha256,
        TAG_BASE_SHA: "b" * 64}).version)
    signed = signed_as or folder
    client.set_model_version_tag(name, version, TAG_ADAPTER_SIGNATURE_SHA,
                                 sha256_bytes((signed / SIGNATURE_NAME).read_bytes()))
    client.set_model_version_tag(name, version, TAG_ADAPTER_DIGEST, verify_model(signed, dev_key_pair().public_key))
    if approve:
        client.set_model_version_tag(name, version, APPROVAL_TAG, approval(signed, name, version))
    client.set_registered_model_alias(name, "champion", version)
    return client, uri, version


def _serve(uri: str, name: str = ENDPOINT, run_tags: dict | None = None) -> dg.ExecuteInProcessResult:
    from resources.mlflow import MLflowResource
    from resources.operations import OperationsResource
    from resources.signing import ModelSigningResource
    from resources.vllm import LocalVllmResource
    from tests.chain_helpers import chain_asset, chain_for

    chain = chain_for(name, endpoint=ENDPOINT, base_model=BASE)
    served_endpoint = chain_asset(chain, "served_endpoint")

    @dg.asset(key=[chain.spec.key_prefix, "champion"])
    def champion_model() -> None:  # stands in for the promotion asset
        return None

    return dg.materialize([champion_model, served_endpoint], selection=[served_endpoint.key], tags=run_tags,
                          raise_on_error=False,
                          resources={"vllm": LocalVllmResource(gateway_url="http://127.0.0.1:9"),
                                     "operations": OperationsResource(), "model_signing": ModelSigningResource(),
                                     "mlflow": MLflowResource(tracking_uri=uri)})


def _failure(result: dg.ExecuteInProcessResult) -> str:
    return " ".join(str(e.event_specific_data.error.message) if e.event_specific_data.error else e.message
                    for e in result.all_events if e.is_step_failure)


def test_the_asset_refuses_a_champion_changed_since_signing_and_audits_it(state_dir: Path, signed_adapter: Path,
                                                                         routes: AdapterRoutes, tmp_path: Path) -> None:
    """Bytes changed after signing, with the registry's digest changed to match them (the signature
    cannot be): refused by the control sequence, audited, the route and the alias untouched."""
    from aiplat.evaluation.registry import TAG_ADAPTER_ARTIFACT, TAG_ADAPTER_SHA
    from aiplat.models.manifest import compute_manifest

    client, uri, version = register(tmp_path, signed_adapter, ENDPOINT)
    stored = Path(client.get_model_version(ENDPOINT, version).tags[TAG_ADAPTER_ARTIFACT].removeprefix("file://"))
    expected = _tamper(stored, "flipped byte")
    client.set_model_version_tag(ENDPOINT, version, TAG_ADAPTER_SHA, compute_manifest(stored).folder_sha256)
    before = routes.path.read_bytes()
    result = _serve(uri)
    assert not result.success
    assert expected in _failure(result) and f"endpoint {ENDPOINT!r} is unchanged" in _failure(result)
    assert routes.path.read_bytes() == before
    _nothing_started(state_dir)
    entries = list(AuditLog().entries())
    assert [(e["event"], e.get("decision")) for e in entries] == [("access", "allowed"), ("deploy refused: signature", None)]
    assert expected in entries[-1]["reason"] and entries[-1]["team"] == "team:platform"
    assert str(client.get_model_version_by_alias(ENDPOINT, "champion").version) == version
    AuditLog().verify()


def test_the_asset_refuses_bytes_other_than_the_registered_ones(state_dir: Path, signed_adapter: Path,
                                                                routes: AdapterRoutes, tmp_path: Path) -> None:
    """The artifact store's copy changed after registration: its digest is not the version's, so the
    asset refuses before anything is loaded, naming the digests."""
    from aiplat.evaluation.registry import TAG_ADAPTER_ARTIFACT

    client, uri, version = register(tmp_path, signed_adapter, ENDPOINT)
    stored = Path(client.get_model_version(ENDPOINT, version).tags[TAG_ADAPTER_ARTIFACT].removeprefix("file://"))
    _tamper(stored, "flipped byte")
    before = routes.path.read_bytes()
    result = _serve(uri)
    assert not result.success
    assert "no model to serve" in _failure(result) and "refusing to use other bytes than were registered" in _failure(result)
    assert routes.path.read_bytes() == before
    _nothing_started(state_dir)


def test_asset_runs_act_as_the_service_account_whatever_their_tags_say(state_dir: Path, signed_adapter: Path,
                                                                       routes: AdapterRoutes, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: the `aiplat/team` run tag, which any UI user sets, was the team access control
    checked. Now the run is the code location's service account, verified from its credential; a
    tag is attribution (`requested_by`) and a replaced service credential grants nothing."""
    from aiplat.security.identity import SERVICE_ACCOUNT, ensure_local_accounts, token_file

    _, uri, version = register(tmp_path, signed_adapter, ENDPOINT)
    monkeypatch.setenv("AIPLAT_TEAM", "team:platform")  # names nobody
    ensure_local_accounts()
    token_file(SERVICE_ACCOUNT).write_text("aiplat_what-a-ui-user-might-try\n")
    before = routes.path.read_bytes()
    result = _serve(uri, run_tags={"aiplat/team": "team:platform", "aiplat/actor": "eve"})
    assert not result.success and f"svc:dagster (no team) may not deploy ticket-triage version {version}" in _failure(result)
    assert "not known to the platform" in _failure(result)
    assert routes.path.read_bytes() == before
    _nothing_started(state_dir)
    (entry,) = AuditLog().entries()
    assert entry["decision"] == "refused" and entry["owner_team"] == "team:ml" and entry["action"] == "deploy"
    assert entry["identity_source"] == "unknown-credential" and entry["requested_by"] == "eve"


def test_the_asset_refuses_a_champion_signed_as_another_version(state_dir: Path, signed_adapter: Path,
                                                                routes: AdapterRoutes, tmp_path: Path) -> None:
    """The champion's adapter verifies as a signed folder, but its MLflow version records another
    adapter's signature (a version's artifacts swapped for another signed adapter): refused."""
    other = make_signed_adapter(tmp_path / "another-adapter")
    client, uri, version = register(tmp_path, signed_adapter, ENDPOINT, signed_as=other)
    before = routes.path.read_bytes()
    result = _serve(uri)
    assert not result.success
    assert f"is signed, but not as {ENDPOINT} version {version}" in _failure(result)
    assert routes.path.read_bytes() == before
    _nothing_started(state_dir)
    assert str(client.get_model_version_by_alias(ENDPOINT, "champion").version) == version
    entries = list(AuditLog().entries())
    assert [e["event"] for e in entries] == ["access", "deploy refused: signature"]
    assert entries[0]["reason"] == "platform team" and entries[0]["owner_team"] == "team:ml"
