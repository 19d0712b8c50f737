"""Real LoRA adapters of the SmolLM2 base for the live serving tests, registered as MLflow model
versions the way a fine-tune registers them, and the local runtime pointed at the prepared base.

The adapters' weights are random (seeded), not trained: each changes the model's answers a lot,
so what is under test is which adapter answers, not what it learned (tests/test_serving_adapters_live.py
makes its own the same way).
"""

from __future__ import annotations

from pathlib import Path

BASE = "smollm2-135m-instruct"  # the platform base model the triage spec names (models/ticket-triage.yaml)


def make_adapter(base: Path, dest: Path, seed: int, rank: int = 8, sign: bool = True) -> Path:
    """A PEFT LoRA adapter of `base` with random weights (seeded), in safetensors, with the manifest
    a fine-tune writes (naming `base`'s hash as the base it was trained on) and, unless `sign` is
    False, signed with this state's development key."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from aiplat.models.manifest import BASE_FIELD, compute_manifest, write_manifest
    from aiplat.security.signing import dev_key_pair, sign_model

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base, torch_dtype=torch.float32)
    config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                        init_lora_weights=False, task_type="CAUSAL_LM")
    get_peft_model(model, config).save_pretrained(dest, safe_serialization=True)
    write_manifest(dest, extra={"source": str(base), "seed": seed, BASE_FIELD: compute_manifest(base).folder_sha256})
    if sign:
        sign_model(dest, dev_key_pair())
    return dest


def sqlite_registry(folder: Path) -> tuple[str, object]:
    """A real MLflow tracking store and registry in SQLite (no server: a child process opens the same
    file), artifacts under `folder`; returns its URI and a client."""
    from mlflow.tracking import MlflowClient

    folder.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    client = MlflowClient(uri, registry_uri=uri)
    client.create_experiment("adapters", artifact_location=str(folder / "artifacts"))
    return uri, client


def register_adapter(client, name: str, folder: Path, base: Path) -> str:
    """`folder` as a new version of `name` the way a fine-tune registers it: the adapter as the source,
    its digest, signature and the base model's digest as tags, and a promotion's attestation."""
    from aiplat.evaluation.registry import TAG_ADAPTER_ARTIFACT, TAG_ADAPTER_SHA, TAG_BASE_SHA
    from aiplat.models.manifest import compute_manifest
    from aiplat.provenance import sha256_bytes
    from aiplat.security.approval import APPROVAL_TAG
    from aiplat.security.signing import (
        SIGNATURE_NAME,
        TAG_ADAPTER_DIGEST,
        TAG_ADAPTER_SIGNATURE_SHA,
        dev_key_pair,
        verify_model,
    )
    from tests.approval_helpers import approval

    experiment = client.get_experiment_by_name("adapters")
    run = client.create_run(experiment.experiment_id if experiment else client.create_experiment("adapters"))
    client.log_artifacts(run.info.run_id, str(folder), "adapter")
    client.set_terminated(run.info.run_id, "FINISHED")
    if not client.search_registered_models(f"name = '{name}'"):
        client.create_registered_model(name)
    artifact = f"{client.get_run(run.info.run_id).info.artifact_uri}/adapter"
    version = str(client.create_model_version(name, source=artifact, run_id=run.info.run_id, tags={
        TAG_ADAPTER_ARTIFACT: artifact, TAG_ADAPTER_SHA: compute_manifest(folder).folder_sha256,
        TAG_BASE_SHA: compute_manifest(base).folder_sha256}).version)
    client.set_model_version_tag(name, version, TAG_ADAPTER_SIGNATURE_SHA,
                                 sha256_bytes((folder / SIGNATURE_NAME).read_bytes()))
    client.set_model_version_tag(name, version, TAG_ADAPTER_DIGEST, verify_model(folder, dev_key_pair().public_key))
    client.set_model_version_tag(name, version, APPROVAL_TAG, approval(folder, name, version))
    return version


def artifact_folder(client, name: str, version: str) -> Path:
    """Where the registry keeps the adapter of `name` `version` (a local artifact store)."""
    from urllib.parse import urlparse

    from aiplat.evaluation.registry import TAG_ADAPTER_ARTIFACT

    uri = client.get_model_version(name, version).tags[TAG_ADAPTER_ARTIFACT]
    return Path(urlparse(uri).path if uri.startswith("file:") else uri)


def link_prepared_base(smollm_base: Path) -> Path:
    """The prepared base model under this state's base-models folder, where the local runtime
    (LocalVllmResource.serving_backend) looks for the bases it may serve."""
    from aiplat.models.base import base_models_dir

    link = base_models_dir() / BASE
    link.parent.mkdir(parents=True, exist_ok=True)
    if not link.exists():
        link.symlink_to(smollm_base)
    return link


def resolved(client, uri: str, name: str, version: str):
    """Version `version` of `name` as served_endpoint resolves it (verified copy of the registered adapter)."""
    from aiplat.serving.champion import MlflowAdapterSource

    return MlflowAdapterSource(client, name, BASE, tracking_uri=uri, version=version).resolve()
