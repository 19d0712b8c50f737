"""Phone and card numbers in any grouping: a loose candidate pattern, then a real check.

Phones: any run of digit groups (spaces, dashes, dots, parentheses, an optional `+CC` or `00CC`
prefix, an optional extension) that Google's libphonenumber (`phonenumbers`) finds as a possible
number in at least one of its 245 regions: "+41 (0)44 123 45 67", "(07700)297048", "436 2743",
"(42) 508-193", "84 23 30". What is plainly something else is never a candidate: dates, dotted IP
addresses, amounts with decimals, versions, numbers glued to letters (order A123456, 1Z
tracking), and a bare run of fewer than 9 digits (reference numbers) unless it starts with + or 0.

Cards: 12-19 digits in any grouping (spaces or dashes), a first digit of 2-6 (the issuer
industries of payment cards; a phone number starts with 0, 1, 7, 8 or 9 or +) or one of the few
card prefixes outside them (JCB 1800, Maestro 0604, UATP 1 with 15 digits), Luhn-valid.
"""

from __future__ import annotations

import re
from functools import lru_cache

from presidio_analyzer import EntityRecognizer, RecognizerResult

from aiplat.pii.results import recognizer_result

_PHONE_CANDIDATE = re.compile(
    r"(?<![\w+/.:@#$€£-])(?<!\d,)"
    r"(?:(?:\+|00)\d{1,3}[ .-]?)?"
    r"(?:\(\d{1,5}\)[ .-]?)?"
    r"\d{1,6}(?:(?:[ .-]|\)[ ]?|[ ]?\()?\d{1,8}){0,6}"
    r"(?:[ ]?(?:x|ext\.?|#)[ ]?\d{1,5})?"
    r"(?![\w/@]|[.,:]\d)"
)
_EXTENSION = re.compile(r"[ ]?(?:x|ext\.?|#)[ ]?\d{1,5}$")
_DATE = re.compile(r"^(?:\d{4}[-./]\d{1,2}[-./]\d{1,2}|\d{1,2}[-./]\d{1,2}[-./](?:\d{2}|\d{4}))$")
_IPV4 = re.compile(r"^\d{1,3}(?:\.\d{1,3}){3}$")
_DECIMAL = re.compile(r"^\d+(?:[ ]\d{3})*\.\d{1,2}$")
_VERSION = re.compile(r"^\d{1,3}(?:\.\d{1,3}){1,2}$")
# Most text is US or European: try those first, then every other region.
_FIRST_REGIONS = ("US", "GB", "DE", "FR", "IN", "CH", "SE", "IT", "ES", "NL", "BR", "RU", "JP", "AU")


@lru_cache(maxsize=1)
def _regions() -> tuple[str, ...]:
    import phonenumbers

    rest = sorted(set(phonenumbers.SUPPORTED_REGIONS) - set(_FIRST_REGIONS))
    return _FIRST_REGIONS + tuple(rest)


@lru_cache(maxsize=8192)
def phone_region(candidate: str) -> str | None:
    """The first region whose numbering plan makes `candidate` a possible phone number, or None.
    Uses phonenumbers' PhoneNumberMatcher, so its own rejections (dates, timestamps) apply too."""
    import phonenumbers
    from phonenumbers import Leniency, PhoneNumberMatcher

    if candidate.startswith(("+", "00")):
        regions: tuple[str, ...] = ("ZZ",) if candidate.startswith("+") else _regions()
    else:
        regions = _regions()
    need = len(_EXTENSION.sub("", candidate)) - 1
    for region in regions:
        for m in PhoneNumberMatcher(candidate, region if region != "ZZ" else None, leniency=Leniency.POSSIBLE):
            if m.start == 0 and m.end >= need and phonenumbers.is_possible_number(m.number):
                return region
    return None


def _plausible_phone(text: str) -> bool:
    body = _EXTENSION.sub("", text)
    digits = sum(c.isdigit() for c in body)
    if not 6 <= digits <= 15:
        return False
    if _DATE.match(body) or _IPV4.match(body) or _DECIMAL.match(body) or _VERSION.match(body):
        return False
    grouped = any(c in " .-()" for c in body.strip("+"))
    if not grouped and not body.startswith(("+", "0")) and digits < 9:
        return False  # reference and order numbers
    if body.count("(") != body.count(")"):
        return False
    return True


class AnyRegionPhoneRecognizer(EntityRecognizer):
    """PHONE_NUMBER in national or international formats, with or without a country code."""

    def __init__(self) -> None:
        super().__init__(supported_entities=["PHONE_NUMBER"], name="AnyRegionPhoneRecognizer",
                         context=["phone", "call", "tel", "mobile", "cell", "fax", "office", "number", "reach"])

    def load(self) -> None:
        _regions()

    def analyze(self, text: str, entities, nlp_artifacts=None) -> list[RecognizerResult]:
        out = []
        for m in _PHONE_CANDIDATE.finditer(text):
            value = m.group().rstrip(" .-(")
            if not _plausible_phone(value):
                continue
            region = phone_region(value)
            if region is None:
                continue
            score = 0.75 if value.startswith("+") else 0.6
            out.append(recognizer_result(self, "PHONE_NUMBER", m.start(), m.start() + len(value), score))
        return out


_CARD_CANDIDATE = re.compile(r"(?<![\w+.,/-])\d{1,6}(?:[ -]?\d{1,6}){2,7}(?![\w/-]|[.,]\d)")
# Issuer prefixes outside 2-6: JCB's 1800, Maestro's 0604, UATP's 1 (15 digits).
_LOW_PREFIXES = ("1800", "0604")


def _card_prefix_ok(digits: str) -> bool:
    return digits[0] in "23456" or digits.startswith(_LOW_PREFIXES) or (digits[0] == "1" and len(digits) == 15)


def luhn_valid(digits: str) -> bool:
    total = 0
    for i, c in enumerate(reversed(digits)):
        d = int(c)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


class LuhnCardRecognizer(EntityRecognizer):
    """CREDIT_CARD: 12-19 digits in any grouping, a payment-card prefix, Luhn checksum valid."""

    def __init__(self) -> None:
        super().__init__(supported_entities=["CREDIT_CARD"], name="LuhnCardRecognizer",
                         context=["card", "credit", "visa", "mastercard", "amex", "cc", "debit"])

    def load(self) -> None:
        pass

    def analyze(self, text: str, entities, nlp_artifacts=None) -> list[RecognizerResult]:
        out = []
        for m in _CARD_CANDIDATE.finditer(text):
            digits = re.sub(r"[ -]", "", m.group())
            if 12 <= len(digits) <= 19 and _card_prefix_ok(digits) and luhn_valid(digits) and len(set(digits)) > 1:
                out.append(recognizer_result(self, "CREDIT_CARD", m.start(), m.end(), 0.85))
        return out
