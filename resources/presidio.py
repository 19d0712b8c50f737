"""Presidio: the PII scanner and the pseudonymization key, as one resource.

Local: the offline spaCy model and a fixed development key that is clearly not a secret. Prod:
`hmac_key` from dg.EnvVar("AIPLAT_PII_HMAC_KEY") (the UI shows the variable's name, never the
value) and whatever NER model the image carries (e.g. en_core_web_lg).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import dagster as dg
from pydantic import Field, PrivateAttr

from aiplat.pii.config import OFFLINE_SPACY_MODEL, PiiConfig, dataset_config
from aiplat.pii.engine import Scanner
from aiplat.pii.redact import Pseudonymizer
from aiplat.scale.ray_cluster import RayCluster

# Deliberately public: local demo data only. Tokens made with it are NOT protected.
LOCAL_DEV_HMAC_KEY = "aiplat-local-dev-pii-key-NOT-A-SECRET"


class PresidioResource(dg.ConfigurableResource):
    """Scans and redacts the platform's datasets (see aiplat.pii)."""

    nlp_engine: Literal["spacy", "transformers"] = "spacy"
    model_name: str = Field(default=OFFLINE_SPACY_MODEL, description="spaCy package or transformers model")
    spacy_model: str = Field(default=OFFLINE_SPACY_MODEL, description="tokenizer pipeline for transformers")
    workers: int = Field(default=2, ge=1, description="Ray actors scanning a large batch (aiplat.pii.engine)")
    ray_min_texts: int = Field(default=2000, ge=1, description="Texts from which a scan runs on Ray: below it, "
                               "starting Ray and its actors costs more than it saves")
    batch_size: int = Field(default=64, ge=1)
    hmac_key: str = Field(default=LOCAL_DEV_HMAC_KEY, description="pseudonymization key (secret in prod)")

    _pseudonymizer: Pseudonymizer | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self._pseudonymizer = self._checked_pseudonymizer()

    def _checked_pseudonymizer(self) -> Pseudonymizer:
        from aiplat.config import MissingSecret, runtime

        # dg.EnvVar catches an unset variable, not an empty one; and prod must never pseudonymize
        # with the public development key, whose tokens anyone can recompute.
        if runtime() == "prod" and (not self.hmac_key.strip() or self.uses_dev_key):
            raise MissingSecret("AIPLAT_PII_HMAC_KEY", "the pseudonymization key")
        return Pseudonymizer(self.hmac_key)

    def config_for(self, dataset_name: str) -> PiiConfig:
        return dataset_config(dataset_name).with_nlp(
            engine=self.nlp_engine, model_name=self.model_name, spacy_model=self.spacy_model)

    def scanner(self, dataset_name: str, cluster: RayCluster | None = None,
                progress: Callable[[int, int], None] | None = None) -> Scanner:
        """The dataset's scanner; a large scan runs on `cluster` (aiplat.scale.ray_cluster)."""
        return Scanner(self.config_for(dataset_name), workers=self.workers, batch_size=self.batch_size,
                       min_parallel=self.ray_min_texts, cluster=cluster, progress=progress)

    @property
    def pseudonymizer(self) -> Pseudonymizer:
        if self._pseudonymizer is None:
            self._pseudonymizer = self._checked_pseudonymizer()
        return self._pseudonymizer

    @property
    def uses_dev_key(self) -> bool:
        return self.hmac_key == LOCAL_DEV_HMAC_KEY


def local_presidio() -> PresidioResource:
    return PresidioResource()


def prod_presidio() -> PresidioResource:
    return PresidioResource(
        model_name=dg.EnvVar("AIPLAT_PII_NER_MODEL"),
        hmac_key=dg.EnvVar("AIPLAT_PII_HMAC_KEY"),
    )
