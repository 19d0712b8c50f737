"""Serving refuses a model folder that does not match its signature, and a caller outside the
owner team and the platform team, before any vLLM process starts: the live endpoint's registry
entry stays byte for byte as it was and the refusal is in the audit log. No vLLM is needed: a
verification that let the folder through would try to start a server, which leaves a PID file and
a log under the state dir and changes the registry (the assertions below would catch it)."""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg
import pytest

from aiplat.security.approval import ServingKeys
from aiplat.security.audit_log import AuditLog
from aiplat.security.signing import SignatureError, dev_key_pair, sign_model
from aiplat.serving.champion import FolderSource
from aiplat.serving.manager import EndpointManager
from aiplat.serving.registry import EndpointRecord, EndpointRegistry, ServerRecord
from aiplat.serving.rollout import roll_out
from aiplat.serving.server import ServerSettings
from tests.approval_helpers import approval, serving_keys

ENDPOINT = "ticket-triage"


@pytest.fixture
def signed_folder(state_dir: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "ticket-triage-v2"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "llama"}')
    (folder / "model-00001-of-00002.safetensors").write_bytes(os.urandom(4096))
    (folder / "model-00002-of-00002.safetensors").write_bytes(os.urandom(2048))
    (folder / "tokenizer.json").write_text('{"version": "1.0"}')
    sign_model(folder, dev_key_pair())
    return folder


@pytest.fixture
def registry(state_dir: Path) -> EndpointRegistry:
    """An endpoint whose live server (version 1) the refused deploys must leave in place."""
    registry = EndpointRegistry()
    live = ServerRecord(url="http://127.0.0.1:9", port=9, pid=0, create_time=0.0, model_version="1",
                        model_path="/models/v1", served_model_name=ENDPOINT, started_at="t", log_file="l", pid_file="p")
    registry.update(ENDPOINT, lambda _: EndpointRecord(ENDPOINT, live, history=[]))
    return registry


def _tamper(folder: Path, how: str) -> str:
    if how == "flipped byte":
        shard = folder / "model-00002-of-00002.safetensors"
        data = bytearray(shard.read_bytes())
        data[7] ^= 0x01
        shard.write_bytes(bytes(data))
        return "changed since signing: model-00002-of-00002.safetensors"
    if how == "added file":
        (folder / "extra.safetensors").write_bytes(b"\0" * 64)
        return "added after signing: extra.safetensors"
    if how == "missing shard":
        (folder / "model-00001-of-00002.safetensors").unlink()
        return "missing: model-00001-of-00002.safetensors"
    (folder / "model.sig").unlink()
    return "is not signed"


def _nothing_started(state_dir: Path) -> None:
    assert not list((state_dir / "run").rglob("*.pid")) and not list((state_dir / "logs").rglob("*.log"))


@pytest.mark.parametrize("how", ["flipped byte", "added file", "missing shard", "unsigned"])
def test_tampered_folder_is_refused_before_any_server_starts(state_dir: Path, signed_folder: Path,
                                                           registry: EndpointRegistry, how: str) -> None:
    manager = EndpointManager(ServerSettings(), registry, keys=serving_keys())
    approved = approval(signed_folder, ENDPOINT, "2")
    assert manager.verify(FolderSource(signed_folder, "2", ENDPOINT, approved).resolve())  # the intact folder passes
    expected = _tamper(signed_folder, how)
    model = FolderSource(signed_folder, "2", ENDPOINT, approved).resolve()
    before = registry.path.read_bytes()
    with pytest.raises(SignatureError, match=expected):
        roll_out(manager, ENDPOINT, model)
    with pytest.raises(SignatureError, match=expected):
        manager.start_candidate(ENDPOINT, model)
    assert registry.path.read_bytes() == before
    assert registry.get(ENDPOINT).live.model_version == "1" and registry.get(ENDPOINT).candidate is None
    _nothing_started(state_dir)


def test_folder_signed_by_another_key_is_refused(state_dir: Path, signed_folder: Path, registry: EndpointRegistry,
                                                 tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    other = tmp_path / "other.pem"
    other.write_bytes(ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    manager = EndpointManager(ServerSettings(), registry, keys=ServingKeys(other, serving_keys().approval))
    approved = approval(signed_folder, ENDPOINT, "2")
    with pytest.raises(SignatureError, match="invalid for key other.pem"):
        manager.start_candidate(ENDPOINT, FolderSource(signed_folder, "2", ENDPOINT, approved).resolve())
    _nothing_started(state_dir)


def _deploy(folder: Path, run_tags: dict | None = None, attestation_file: Path | None = None) -> dg.ExecuteInProcessResult:
    """The folder drill through the asset. Without `attestation_file`, an empty document: these
    tests refuse on access or on the signature, which are checked before any approval."""
    from resources.mlflow import MLflowResource
    from resources.operations import OperationsResource
    from resources.signing import ModelSigningResource
    from resources.vllm import LocalVllmResource
    from tests.chain_helpers import chain_asset, chain_for, op_name

    chain = chain_for(ENDPOINT)
    served_endpoint = chain_asset(chain, "served_endpoint")

    @dg.asset(key=[chain.spec.key_prefix, "champion"])
    def champion_model() -> None:  # stands in for the promotion asset
        return None

    return dg.materialize(
        [champion_model, served_endpoint], selection=[served_endpoint.key],
        resources={"vllm": LocalVllmResource(), "operations": OperationsResource(),
                   "model_signing": ModelSigningResource(),
                   # never reached: a folder deploy takes its owner from the model spec
                   "mlflow": MLflowResource(tracking_uri="http://127.0.0.1:9")},
        run_config={"ops": {op_name(chain, "served_endpoint"): {"config": {
            "model_folder": str(folder), "model_version": "2",
            "attestation_file": str(attestation_file or _empty_attestation(folder))}}}},
        tags=run_tags, raise_on_error=False,
    )


def _empty_attestation(folder: Path) -> Path:
    path = folder.parent / "no-attestation.json"
    path.write_text("")
    return path


def _failure(result: dg.ExecuteInProcessResult) -> str:
    return " ".join(str(e.event_specific_data.error.message) if e.event_specific_data.error else e.message
                    for e in result.all_events if e.is_step_failure)


def test_asset_refuses_a_tampered_folder_and_logs_it(state_dir: Path, signed_folder: Path, registry: EndpointRegistry,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    expected = _tamper(signed_folder, "flipped byte")
    before = registry.path.read_bytes()
    result = _deploy(signed_folder)
    assert not result.success
    assert expected in _failure(result) and f"endpoint {ENDPOINT!r} is unchanged" in _failure(result)
    assert registry.path.read_bytes() == before
    _nothing_started(state_dir)
    entries = list(AuditLog().entries())
    assert [(e["event"], e.get("decision")) for e in entries] == [("access", "allowed"), ("deploy refused: signature", None)]
    assert expected in entries[-1]["reason"] and entries[-1]["team"] == "team:platform"
    AuditLog().verify()


def test_asset_runs_act_as_the_service_account_whatever_their_tags_say(state_dir: Path, signed_folder: Path,
                                                                       registry: EndpointRegistry,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: the `aiplat/team` run tag, which any UI user sets, was the team access control
    checked. Now the run is the code location's service account, verified from its credential; a
    tag is attribution (`requested_by`) and a replaced service credential grants nothing."""
    from aiplat.security.identity import SERVICE_ACCOUNT, ensure_local_accounts, token_file

    monkeypatch.setenv("AIPLAT_TEAM", "team:platform")  # names nobody
    ensure_local_accounts()
    token_file(SERVICE_ACCOUNT).write_text("aiplat_what-a-ui-user-might-try\n")
    before = registry.path.read_bytes()
    result = _deploy(signed_folder, {"aiplat/team": "team:platform", "aiplat/actor": "eve"})
    assert not result.success and "svc:dagster (no team) may not deploy ticket-triage version 2" in _failure(result)
    assert "not known to the platform" in _failure(result)
    assert registry.path.read_bytes() == before
    _nothing_started(state_dir)
    (entry,) = AuditLog().entries()
    assert entry["decision"] == "refused" and entry["owner_team"] == "team:ml" and entry["action"] == "deploy"
    assert entry["identity_source"] == "unknown-credential" and entry["requested_by"] == "eve"


def registered_version(tmp_path: Path, folder: Path, name: str):
    """`folder` as version 1 of `name` in a real MLflow registry without a server (SQLite):
    (client, uri, version), as the fine-tune leaves it but for the signature tags."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri, registry_uri=uri)
    experiment = client.create_experiment("serve", artifact_location=str(tmp_path / "artifacts"))
    run = client.create_run(experiment)
    client.log_artifacts(run.info.run_id, str(folder), "model")
    client.set_terminated(run.info.run_id, "FINISHED")
    client.create_registered_model(name, tags={"owner_team": "team:ml"})
    source = f"{client.get_run(run.info.run_id).info.artifact_uri}/model"
    return client, uri, client.create_model_version(name, source=source, run_id=run.info.run_id).version


def test_asset_refuses_a_champion_signed_as_another_version(state_dir: Path, signed_folder: Path,
                                                            registry: EndpointRegistry, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The registry's champion verifies as a signed folder, but its MLflow version records another
    digest (a version's artifacts swapped for another signed model): refused, alias left alone."""
    from aiplat.security.signing import TAG_MODEL_DIGEST, tag_model_version
    from resources.mlflow import MLflowResource
    from resources.operations import OperationsResource
    from resources.signing import ModelSigningResource
    from resources.vllm import LocalVllmResource

    client, uri, version = registered_version(tmp_path, signed_folder, "triage-signed")
    signed = sign_model(signed_folder, dev_key_pair())  # same files: the digest the version should carry
    tag_model_version(client, "triage-signed", version, signed)
    client.set_model_version_tag("triage-signed", version, TAG_MODEL_DIGEST, "0" * 64)
    client.set_registered_model_alias("triage-signed", "champion", version)

    before = registry.path.read_bytes()

    from tests.chain_helpers import chain_asset, chain_for

    chain = chain_for("triage-signed", endpoint=ENDPOINT)
    served_endpoint = chain_asset(chain, "served_endpoint")

    @dg.asset(key=[chain.spec.key_prefix, "champion"])
    def champion_model() -> None:
        return None

    result = dg.materialize(
        [champion_model, served_endpoint], selection=[served_endpoint.key], raise_on_error=False,
        resources={"vllm": LocalVllmResource(), "operations": OperationsResource(),
                   "model_signing": ModelSigningResource(),
                   "mlflow": MLflowResource(tracking_uri=uri)},
    )
    assert not result.success
    assert f"is signed, but not as triage-signed version {version}" in _failure(result)
    assert registry.path.read_bytes() == before
    _nothing_started(state_dir)
    assert client.get_model_version_by_alias("triage-signed", "champion").version == version
    entries = list(AuditLog().entries())
    assert [e["event"] for e in entries] == ["access", "deploy refused: signature"]
    assert entries[0]["reason"] == "platform team" and entries[0]["owner_team"] == "team:ml"
