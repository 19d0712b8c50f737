"""The recognizers the platform runs: Presidio's own where they fit, ours where they do not.

Ours: an e-mail recognizer that validates domains against tldextract's bundled suffix list
(Presidio's asks the network first); phone numbers in any national or international format,
checked with `phonenumbers` over every region (Presidio's recognizer tries a few regions, scores
bare numbers 0.4 and fires on dotted IP addresses); card numbers of 12-19 Luhn-valid digits in any
grouping (Presidio's wants known prefixes and lengths); dates of birth; street addresses (US,
European, military APO/FPO/DPO, multi-line postal blocks); names from a gazetteer of every Faker
locale, and names in greeting and signature lines, where the small NER model misses most of them.
Held-out quality per recognizer: docs/pii.md.
"""

from __future__ import annotations

import re
from functools import lru_cache

from presidio_analyzer import EntityRecognizer, Pattern, PatternRecognizer, RecognizerResult
from presidio_analyzer.predefined_recognizers import (
    EmailRecognizer,
    IbanRecognizer,
    IpRecognizer,
    SpacyRecognizer,
    UsSsnRecognizer,
)

from aiplat.pii.config import PiiConfig
from aiplat.synth import (
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


@lru_cache(maxsize=1)
def _offline_tld_extractor():
    import tldextract

    # No suffix-list URLs: the snapshot shipped inside tldextract, never a download.
    return tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None, fallback_to_snapshot=True)


class OfflineEmailRecognizer(EmailRecognizer):
    def validate_result(self, pattern_text: str) -> bool:
        return _offline_tld_extractor()(pattern_text).fqdn != ""


_MONTHS = r"(?:Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|June?|July?|Aug(?:ust)?|Sep(?:t(?:ember)?)?|Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?)"
# Birth years: 1900-2009. Dates in support text (orders, deliveries) are recent and stay.
_YEAR = r"(?:19\d{2}|200\d)"
_MM = r"(?:0?[1-9]|1[0-2])"
_DD = r"(?:0?[1-9]|[12]\d|3[01])"


class DateOfBirthRecognizer(PatternRecognizer):
    PATTERNS = [
        Pattern("dob_us", rf"\b{_MM}/{_DD}/{_YEAR}\b", 0.6),
        Pattern("dob_iso", rf"\b{_YEAR}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12]\d|3[01])\b", 0.6),
        Pattern("dob_dots", rf"\b{_DD}\.{_MM}\.{_YEAR}\b", 0.6),
        Pattern("dob_long", rf"\b{_MONTHS}\.? {_DD}(?:st|nd|rd|th)?,? {_YEAR}\b", 0.6),
        Pattern("dob_long_eu", rf"\b{_DD} {_MONTHS} {_YEAR}\b", 0.6),
    ]
    CONTEXT = ["born", "birth", "dob", "birthday", "d.o.b"]

    def __init__(self) -> None:
        super().__init__(supported_entity=DATE_OF_BIRTH, patterns=self.PATTERNS, context=self.CONTEXT,
                         name="DateOfBirthRecognizer")


# Presidio compiles patterns case-insensitively by default; capitalisation is the signal here.
_CASED = re.DOTALL | re.MULTILINE

class UsPhoneRecognizer(PatternRecognizer):
    PATTERNS = [
        Pattern(
            "us_phone",
            r"(?<![\w.+-])(?:\+?1[-.\s]?)?(?:\(\d{3}\)\s?|\d{3}[-.\s])\d{3}[-.\s]\d{4}(?![\w-]|\.\d)",
            0.7,
        ),
    ]
    def __init__(self) -> None:
        # No context words: with them this and AnyRegionPhoneRecognizer both reach 1.0 on the same
        # span, and Presidio keeps one of two tied results in an order that differs between the
        # batched and the naive path (the findings must be identical).
        super().__init__(supported_entity=PHONE_NUMBER, patterns=self.PATTERNS, name="UsPhoneRecognizer")


_NAME = r"[A-Z][a-z]+(?:[-'][A-Z]?[a-z]+)?"
_NOT_A_NAME = r"(?!(?:The|Our|Your|Customer|Support|Team|Sales|Billing|Everyone|All)\b)"


class SalutationNameRecognizer(PatternRecognizer):
    """Names right after a greeting or a sign-off, and signature lines that hold only a name."""

    PATTERNS = [
        Pattern("signoff", rf"(?<=\b(?:Thanks|Thank you|Regards|Best|Cheers|Sincerely|Best regards|Kind regards|"
                           rf"Warm regards|Many thanks)[,!.]?[ \t]*\n?[ \t]*){_NOT_A_NAME}{_NAME}(?: {_NAME}){{0,2}}\b", 0.6),
        Pattern("greeting", rf"(?<=\b(?:Hi|Hello|Hey|Dear)[ \t]+){_NOT_A_NAME}{_NAME}(?: {_NAME}){{0,2}}(?=[,!])", 0.6),
        Pattern("introduction", rf"(?<=\b(?:[Mm]y name is|I am|I'm|[Tt]his is)[ \t]+){_NOT_A_NAME}{_NAME} {_NAME}\b", 0.55),
        Pattern("signature_line", rf"(?m)^(?:- ?)?\K{_NOT_A_NAME}{_NAME} {_NAME}(?: {_NAME})?(?=,? *$|, Customer Support)", 0.6),
    ]

    def __init__(self) -> None:
        super().__init__(supported_entity=PERSON, patterns=self.PATTERNS, name="SalutationNameRecognizer",
                         global_regex_flags=_CASED)


def pattern_recognizers(config: PiiConfig) -> list[EntityRecognizer]:
    """Every recognizer that works without the NER model, for the configured entities, less those
    the configuration disables (the quality benchmark measures what each one adds that way)."""
    from aiplat.pii.addresses import StreetAddressRecognizer
    from aiplat.pii.names import GazetteerNameRecognizer
    from aiplat.pii.numbers import AnyRegionPhoneRecognizer, LuhnCardRecognizer

    wanted = set(config.entities)
    candidates: list[tuple[str, EntityRecognizer]] = [
        (EMAIL_ADDRESS, OfflineEmailRecognizer()),
        (PHONE_NUMBER, UsPhoneRecognizer()),
        (PHONE_NUMBER, AnyRegionPhoneRecognizer()),
        (CREDIT_CARD, LuhnCardRecognizer()),
        (US_SSN, UsSsnRecognizer()),
        (IBAN_CODE, IbanRecognizer()),
        (IP_ADDRESS, IpRecognizer()),
        (DATE_OF_BIRTH, DateOfBirthRecognizer()),
        (POSTAL_ADDRESS, StreetAddressRecognizer(POSTAL_ADDRESS)),
        (PERSON, SalutationNameRecognizer()),
        (PERSON, GazetteerNameRecognizer(config.allow_list)),
    ]
    disabled = set(config.disabled_recognizers)
    out = [r for entity, r in candidates if entity in wanted and r.name not in disabled]
    for entity, phrases in sorted(config.deny_list.items()):
        if phrases and entity in wanted:
            out.append(PatternRecognizer(supported_entity=entity, deny_list=list(phrases),
                                         name=f"DenyList_{entity}", deny_list_score=1.0))
    return out


RECOGNIZER_NAMES = ("OfflineEmailRecognizer", "UsPhoneRecognizer", "AnyRegionPhoneRecognizer", "LuhnCardRecognizer",
                    "UsSsnRecognizer", "IbanRecognizer", "IpRecognizer", "DateOfBirthRecognizer",
                    "StreetAddressRecognizer", "SalutationNameRecognizer",
                    "GazetteerNameRecognizer", "SpacyRecognizer")


def ner_recognizer(config: PiiConfig) -> EntityRecognizer | None:
    ner_entities = [e for e in (PERSON, LOCATION) if e in config.entities]
    if not ner_entities or "SpacyRecognizer" in config.disabled_recognizers:
        return None
    if config.nlp.engine == "transformers":
        from presidio_analyzer.predefined_recognizers import TransformersRecognizer

        return TransformersRecognizer(supported_entities=ner_entities)
    return SpacyRecognizer(supported_entities=ner_entities)
