"""Signed model artifacts: real OpenSSF model-signing with a real key pair over real files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from aiplat.security.signing import (
    SIGNATURE_NAME,
    TAG_MODEL_DIGEST,
    SignatureError,
    check_against_version,
    dev_key_dir,
    dev_key_pair,
    sign_model,
    tag_model_version,
    verify_model,
)


@pytest.fixture
def model_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "ticket-triage-v3"
    folder.mkdir()
    (folder / "model-00001-of-00002.safetensors").write_bytes(os.urandom(4096))
    (folder / "model-00002-of-00002.safetensors").write_bytes(os.urandom(2048))
    (folder / "config.json").write_text('{"model_type": "llama"}')
    (folder / "tokenizer").mkdir()
    (folder / "tokenizer" / "tokenizer.json").write_text('{"version": "1.0"}')
    return folder


def test_dev_key_pair_is_created_once_and_labelled(state_dir: Path) -> None:
    first = dev_key_pair()
    second = dev_key_pair()
    assert first.private_key.read_bytes() == second.private_key.read_bytes()
    assert first.private_key.is_relative_to(state_dir)
    assert "DEVELOPMENT" in (dev_key_dir() / "README").read_text()
    assert oct(first.private_key.stat().st_mode & 0o777) == "0o600"


def test_signed_folder_verifies_and_signature_lies_beside_the_files(state_dir: Path, model_folder: Path) -> None:
    keys = dev_key_pair()
    signed = sign_model(model_folder, keys)
    assert signed.signature_path == model_folder / SIGNATURE_NAME and signed.signature_path.is_file()
    assert signed.files == 4  # the signature itself is not one of the signed files
    assert verify_model(model_folder, keys.public_key) == signed.model_digest


def test_flipped_byte_fails_naming_the_file(state_dir: Path, model_folder: Path) -> None:
    keys = dev_key_pair()
    sign_model(model_folder, keys)
    shard = model_folder / "model-00002-of-00002.safetensors"
    data = bytearray(shard.read_bytes())
    data[100] ^= 0x01
    shard.write_bytes(bytes(data))
    with pytest.raises(SignatureError, match=r"changed since signing: model-00002-of-00002.safetensors$"):
        verify_model(model_folder, keys.public_key)


def test_added_file_fails(state_dir: Path, model_folder: Path) -> None:
    keys = dev_key_pair()
    sign_model(model_folder, keys)
    (model_folder / "tokenizer" / "extra.py").write_text("import os")
    with pytest.raises(SignatureError, match=r"added after signing: tokenizer/extra.py$"):
        verify_model(model_folder, keys.public_key)


def test_missing_shard_fails(state_dir: Path, model_folder: Path) -> None:
    keys = dev_key_pair()
    sign_model(model_folder, keys)
    (model_folder / "model-00001-of-00002.safetensors").unlink()
    with pytest.raises(SignatureError, match=r"missing: model-00001-of-00002.safetensors$"):
        verify_model(model_folder, keys.public_key)


def test_unsigned_folder_and_foreign_key_fail(state_dir: Path, model_folder: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    keys = dev_key_pair()
    with pytest.raises(SignatureError, match="is not signed"):
        verify_model(model_folder, keys.public_key)
    sign_model(model_folder, keys)
    monkeypatch.setenv("AIPLAT_STATE_DIR", str(tmp_path / "other-state"))
    other = dev_key_pair()  # another machine's dev key: must not vouch for this folder
    assert other.public_key.read_bytes() != keys.public_key.read_bytes()
    with pytest.raises(SignatureError, match="invalid for key"):
        verify_model(model_folder, other.public_key)


def test_digest_is_recorded_on_the_mlflow_version(state_dir: Path, model_folder: Path, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.create_registered_model("ticket-triage")
    mv = client.create_model_version("ticket-triage", source=str(model_folder))
    keys = dev_key_pair()
    signed = sign_model(model_folder, keys)
    tag_model_version(client, "ticket-triage", mv.version, signed)

    tags = client.get_model_version("ticket-triage", mv.version).tags
    assert tags[TAG_MODEL_DIGEST] == signed.model_digest
    assert tags["aiplat.signature.key_fingerprint"] == keys.fingerprint()
    assert check_against_version(client, "ticket-triage", mv.version, model_folder, keys.public_key) == signed.model_digest

    # A validly signed folder of *other* bytes is not this version.
    other = tmp_path / "other"
    other.mkdir()
    (other / "model.safetensors").write_bytes(b"other weights")
    sign_model(other, keys)
    with pytest.raises(SignatureError, match="not as ticket-triage version"):
        check_against_version(client, "ticket-triage", mv.version, other, keys.public_key)
