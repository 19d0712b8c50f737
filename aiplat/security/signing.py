"""Signed model artifacts: OpenSSF model-signing over a model folder, with an elliptic-curve key pair.

The signature (a Sigstore bundle, `model.sig`) lies inside the folder it signs, so it travels with
the folder wherever the folder is copied (MLflow artifacts, the model store); model-signing is told
to leave that one file out of the hash, and records that in the signed payload, so a verifier
cannot be talked into ignoring anything else. Every other file is signed: a flipped byte, an added
file or a missing shard fails verification, and the error names the file.

Keys: prod reads the key paths from the deployment (resources.signing.ModelSigningResource, fed
by dg.EnvVar). Local uses a generated development key pair under <state>/security/dev-signing-key/,
created on first use and labelled as such; it proves nothing outside this machine.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from aiplat.config import state_dir

SIGNATURE_NAME = "model.sig"
DEV_KEY_LABEL = "aiplat DEVELOPMENT signing key: generated locally, not trusted anywhere else"

TAG_SIGNATURE_SHA = "aiplat.signature.sha256"
TAG_MODEL_DIGEST = "aiplat.signature.model_digest"
TAG_KEY_FINGERPRINT = "aiplat.signature.key_fingerprint"
TAG_KEY_LABEL = "aiplat.signature.key_label"
TAG_SIGNED_FILES = "aiplat.signature.files"
# The LoRA adapter of the same version, signed with the same key: what a shared multi-adapter
# server loads (aiplat.serving.adapters); a promotion approves both digests.
TAG_ADAPTER_SIGNATURE_SHA = "aiplat.adapter.signature.sha256"
TAG_ADAPTER_DIGEST = "aiplat.adapter.model_digest"


class SignatureError(RuntimeError):
    """The model folder does not match a valid signature; the message says which file and why."""

    kind = "signature"  # names the refusal in the audit log ("deploy refused: signature")


@dataclass(frozen=True)
class KeyPair:
    private_key: Path | None  # None: this process may only verify
    public_key: Path
    label: str
    password: str | None = None

    def fingerprint(self) -> str:
        """sha256 of the public key's DER bytes: names the key in tags without revealing anything."""
        from cryptography.hazmat.primitives import serialization

        key = serialization.load_pem_public_key(self.public_key.read_bytes())
        der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        return hashlib.sha256(der).hexdigest()


@dataclass(frozen=True)
class SignedModel:
    folder: Path
    signature_path: Path
    signature_sha256: str
    model_digest: str  # model-signing's digest of all signed files (the in-toto subject)
    files: int
    key_fingerprint: str
    key_label: str

    def tags(self) -> dict[str, str]:
        return {
            TAG_SIGNATURE_SHA: self.signature_sha256,
            TAG_MODEL_DIGEST: self.model_digest,
            TAG_KEY_FINGERPRINT: self.key_fingerprint,
            TAG_KEY_LABEL: self.key_label,
            TAG_SIGNED_FILES: str(self.files),
        }

    def adapter_tags(self) -> dict[str, str]:
        """The tags of this signature when its folder is the version's LoRA adapter."""
        return {TAG_ADAPTER_SIGNATURE_SHA: self.signature_sha256, TAG_ADAPTER_DIGEST: self.model_digest}


def dev_key_dir() -> Path:
    return state_dir() / "security" / "dev-signing-key"


def dev_key_pair(folder: Path | None = None) -> KeyPair:
    """The local development key pair, generated (P-256) under the state folder on first use
    (`folder`: another purpose's pair, e.g. promotion approvals)."""
    folder = folder or dev_key_dir()
    private, public = folder / "private.pem", folder / "public.pem"
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / ".lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two steps signing at once must not make two different keys
        if not (private.is_file() and public.is_file()):
            from cryptography.hazmat.primitives import serialization
            from cryptography.hazmat.primitives.asymmetric import ec

            key = ec.generate_private_key(ec.SECP256R1())
            fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
            public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                             serialization.PublicFormat.SubjectPublicKeyInfo))
            (folder / "README").write_text(DEV_KEY_LABEL + "\n")
    return KeyPair(private, public, label="dev-local")


def _hashing_config():
    from model_signing import hashing

    return hashing.Config().set_ignored_paths(paths=[SIGNATURE_NAME], ignore_git_paths=True)


def signed_statement(signature: Path) -> dict:
    """The in-toto statement inside a signature bundle. Trust it only after verify_model passed."""
    import base64
    import json

    bundle = json.loads(Path(signature).read_text())
    return json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))


def _model_digest(statement: dict) -> tuple[str, int]:
    """model-signing's own digest of the whole model (the statement's subject) and the file count."""
    return statement["subject"][0]["digest"]["sha256"], len(statement["predicate"]["resources"])


def _describe_mismatch(folder: Path, signature: Path) -> str:
    signed = {r["name"]: r["digest"] for r in signed_statement(signature)["predicate"]["resources"]}
    actual = {rd.identifier: rd.digest.digest_hex for rd in _hashing_config().hash(folder).resource_descriptors()}
    parts = []
    changed = sorted(n for n in signed.keys() & actual.keys() if signed[n] != actual[n])
    for label, names in (("changed since signing", changed), ("added after signing", sorted(actual.keys() - signed.keys())),
                         ("missing", sorted(signed.keys() - actual.keys()))):
        if names:
            parts.append(f"{label}: {', '.join(names)}")
    return "; ".join(parts) or "the files differ from the signed manifest"


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def sign_model(folder: Path, keys: KeyPair) -> SignedModel:
    """Sign every file of `folder` (but the signature itself) and write `folder/model.sig`."""
    from model_signing import signing

    folder = Path(folder)
    if not folder.is_dir():
        raise SignatureError(f"cannot sign {folder}: not a folder")
    if keys.private_key is None or not Path(keys.private_key).is_file():
        raise SignatureError(f"cannot sign {folder}: no private key ({keys.label}: {keys.private_key})")
    signature = folder / SIGNATURE_NAME
    tmp = folder.parent / f".{folder.name}.{os.getpid()}.sig"  # outside the folder while hashing
    config = signing.Config().set_hashing_config(_hashing_config())
    config.use_elliptic_key_signer(private_key=keys.private_key, password=keys.password)
    try:
        config.sign(folder, tmp)
        tmp.replace(signature)
    finally:
        tmp.unlink(missing_ok=True)
    digest, files = _model_digest(signed_statement(signature))
    return SignedModel(folder, signature, sha256_file(signature), digest, files, keys.fingerprint(), keys.label)


def verify_model(folder: Path, public_key: Path) -> str:
    """The model digest when `folder` matches its signature under `public_key`, else SignatureError."""
    from model_signing import verifying

    folder = Path(folder)
    signature = folder / SIGNATURE_NAME
    if not folder.is_dir():
        raise SignatureError(f"model folder {folder} does not exist")
    if not signature.is_file():
        raise SignatureError(f"model folder {folder} is not signed: {SIGNATURE_NAME} is missing")
    config = verifying.Config().use_elliptic_key_verifier(public_key=Path(public_key))
    config.set_hashing_config(_hashing_config())
    try:
        config.verify(folder, signature)
    except ValueError as e:
        if "Signature mismatch" not in str(e):
            raise SignatureError(f"signature {signature} is invalid for key {Path(public_key).name}: {e}") from None
        # The signature itself was valid (model-signing checks it first): its file list is authentic.
        raise SignatureError(
            f"model folder {folder} does not match its signature: {_describe_mismatch(folder, signature)}"
        ) from None
    except Exception as e:  # noqa: BLE001 - a corrupt bundle or wrong key surfaces as assorted errors
        raise SignatureError(
            f"signature {signature} is invalid for key {Path(public_key).name}: {type(e).__name__}: {e}"
        ) from None
    return _model_digest(signed_statement(signature))[0]


def tag_model_version(client, name: str, version: str, signed: SignedModel,
                      adapter: SignedModel | None = None) -> dict[str, str]:
    """Record the signature's hash, the model digest and the key's fingerprint on the MLflow version
    (and the signature and digest of its LoRA adapter, when signed too)."""
    tags = {**signed.tags(), **(adapter.adapter_tags() if adapter is not None else {})}
    for key, value in tags.items():
        client.set_model_version_tag(name, str(version), key, value)
    return tags


def check_against_version(client, name: str, version: str, folder: Path, public_key: Path, adapter: bool = False) -> str:
    """Verify the folder, then that it is the exact signature recorded on the MLflow version (its
    LoRA adapter's with `adapter`)."""
    digest = verify_model(folder, public_key)
    tags = client.get_model_version(name, str(version)).tags or {}
    tag = TAG_ADAPTER_DIGEST if adapter else TAG_MODEL_DIGEST
    recorded = tags.get(tag)
    if not recorded:
        raise SignatureError(f"{name} version {version} carries no {tag} tag: it was never signed")
    if recorded != digest:
        raise SignatureError(
            f"{folder} is signed, but not as {name} version {version}: digest {digest[:12]} != recorded {recorded[:12]}"
        )
    return digest
