"""Model signing keys: OpenSSF model-signing with an elliptic-curve key pair, and the second pair
promotion approvals are signed with (aiplat.security.approval: built is not approved).

Local: no configuration; a development key pair is generated under <state>/security/ on first use.
Prod: key paths (mounted secrets) and the key's password come from dg.EnvVar; the verifying side
(serving) needs only the public key. In prod an empty key path is an error naming its variable,
never a silently generated development key pair. Sigstore keyless signing can replace this in prod later.
"""

from typing import Any, Optional

import dagster as dg
from pydantic import Field


class ModelSigningResource(dg.ConfigurableResource):
    private_key_path: Optional[str] = Field(default=None, description="PEM EC private key; unset locally = dev key")
    public_key_path: Optional[str] = Field(default=None, description="PEM EC public key; unset locally = dev key")
    key_password: Optional[str] = Field(default=None, description="Password of the private key (a secret)")
    key_label: str = Field(default="configured", description="Shown in tags and metadata to name the key")
    approval_private_key_path: Optional[str] = Field(
        default=None, description="PEM EC private key promotion attestations are signed with; unset locally = dev key")
    approval_public_key_path: Optional[str] = Field(
        default=None, description="PEM EC public key serving verifies promotion attestations with; unset locally = dev key")

    @classmethod
    def local(cls) -> "ModelSigningResource":
        return cls()

    @classmethod
    def prod(cls) -> "ModelSigningResource":
        return cls(
            private_key_path=dg.EnvVar("AIPLAT_SIGNING_PRIVATE_KEY"),
            public_key_path=dg.EnvVar("AIPLAT_SIGNING_PUBLIC_KEY"),
            key_password=dg.EnvVar("AIPLAT_SIGNING_KEY_PASSWORD"),
            key_label="prod",
            approval_private_key_path=dg.EnvVar("AIPLAT_APPROVAL_PRIVATE_KEY"),
            approval_public_key_path=dg.EnvVar("AIPLAT_APPROVAL_PUBLIC_KEY"),
        )

    def key_pair(self) -> Any:
        from pathlib import Path

        from aiplat.config import MissingSecret, runtime
        from aiplat.security.signing import KeyPair, dev_key_pair

        if not (self.public_key_path or "").strip():
            if runtime() == "prod":
                raise MissingSecret("AIPLAT_SIGNING_PUBLIC_KEY", "the key model signatures are verified with")
            return dev_key_pair()
        return KeyPair(Path(self.private_key_path) if self.private_key_path else None, Path(self.public_key_path),
                       label=self.key_label, password=self.key_password or None)

    def approval_key_pair(self) -> Any:
        """The promotion-approval pair (the private half may be absent where serving only verifies)."""
        from pathlib import Path

        from aiplat.config import MissingSecret, runtime
        from aiplat.security.approval import dev_approval_key_pair
        from aiplat.security.signing import KeyPair

        if not (self.approval_public_key_path or "").strip():
            if runtime() == "prod":
                raise MissingSecret("AIPLAT_APPROVAL_PUBLIC_KEY", "the key promotion attestations are verified with")
            return dev_approval_key_pair()
        private = (self.approval_private_key_path or "").strip()
        return KeyPair(Path(private) if private else None, Path(self.approval_public_key_path), label=f"{self.key_label}-approval")

    def serving_keys(self) -> Any:
        """The public keys serving verifies a folder with (aiplat.security.approval.ServingKeys)."""
        from aiplat.security.approval import ServingKeys

        return ServingKeys(self.key_pair().public_key, self.approval_key_pair().public_key)

    def approver(self) -> Any:
        """The pair promotion signs attestations with; in prod without its private key, an error naming it."""
        from aiplat.config import MissingSecret, runtime

        if runtime() == "prod" and not (self.approval_private_key_path or "").strip():
            raise MissingSecret("AIPLAT_APPROVAL_PRIVATE_KEY", "the key promotion attestations are signed with")
        return self.approval_key_pair()

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        from aiplat.config import runtime

        if runtime() == "prod":
            self.key_pair()  # a prod resource without its key fails when the run starts, naming the variable
            self.approval_key_pair()

    def sign(self, folder: str) -> Any:
        from aiplat.config import MissingSecret, runtime
        from aiplat.security.signing import sign_model

        if runtime() == "prod" and not (self.private_key_path or "").strip():
            raise MissingSecret("AIPLAT_SIGNING_PRIVATE_KEY", "the key fine-tunes are signed with")
        return sign_model(folder, self.key_pair())

    def verify(self, folder: str) -> str:
        from aiplat.security.signing import verify_model

        return verify_model(folder, self.key_pair().public_key)
