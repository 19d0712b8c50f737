"""Street addresses beyond the US one-liner: European streets, military mail, multi-line postal blocks.

A street line is found first, by one of:
- number + up to four capitalized words + a street suffix ("1659 Hoog St", "40 Ryan Crossing");
- a street word of another language + words + number ("Via Pisanelli 104", "ul. Elbląska 97"),
  or number + street word + words ("96 rue de Penthièvre"), or a compound street name + number
  ("Mattenstrasse 108", "Norðurbraut 27");
- a known name + street suffix without a number ("Ryan Crossing", from the name gazetteer);
- a post-office box, or a military unit line ("PSC 1234, Box 5678", "USNS Lee", "Unit 4521 Box 4").
Then the address grows over the lines or comma-separated parts that follow while they look like
address parts (apartment or suite, capitalized place words, a state code, a postal code, an
APO/FPO/DPO line), so a whole postal block becomes one finding.
"""

from __future__ import annotations

import re
from functools import lru_cache

from presidio_analyzer import EntityRecognizer, RecognizerResult

from aiplat.pii.results import recognizer_result

from aiplat.pii.gazetteer import FOREIGN_STREET_WORDS, common_words, is_compound_street, name_words, street_suffixes

_W = r"[^\W\d_][\w'’.-]*"  # a word (any script), may end in "."
_CAPW = r"(?:[^\W\d_a-z][\w'’.-]*)"  # capitalized (or uncased-script) word
_PARTICLE = r"(?:de|del|della|di|da|do|dos|du|des|la|le|les|von|van|der|den|am|an|im|of|the|y|e)"
_SECONDARY = r"(?:(?:Apt\.|Apt\b|Apartment\b|Suite\b|Ste\.|Unit\b|Flat\b|Room\b|Floor\b|Fl\.|#)[ \t]*[A-Z]?\d[\w-]*)"
_POSTCODE = r"(?:\d{4,6}(?:-\d{3,4})?|[A-Z]{1,2}\d[A-Z\d]?[ ]?\d[A-Z]{2}|\d{3}[ ]\d{2}|[A-Z]\d[A-Z][ ]?\d[A-Z]\d)"
_MILITARY_TAIL = r"(?:APO|FPO|DPO)[ \t]+A[AEP][ \t]+\d{5}(?:-\d{4})?"


@lru_cache(maxsize=1)
def _street_res() -> list[re.Pattern]:
    suffixes = sorted({s for s in street_suffixes()} | {"str", "st", "rd", "ave", "blvd", "ln", "dr"}, key=len, reverse=True)
    suffix = "(?:" + "|".join(re.escape(s.capitalize()) for s in suffixes) + r")\b\.?"
    foreign = "(?:" + "|".join(re.escape(w) for w in sorted(set(FOREIGN_STREET_WORDS), key=len, reverse=True)) + ")"
    name_part = rf"(?:{_CAPW}|{_PARTICLE})"
    return [
        # 1659 Hoog St / 183 Epimenidou Street / 251 Charilaou Trikoupi Str.
        re.compile(rf"\b\d{{1,6}}[a-zA-Z]?,?[ \t]+(?:{name_part}[ \t]+){{0,3}}{_CAPW}[ \t]+{suffix}"),
        # Via Pisanelli 104 / ul. Elbląska 97 / Rákóczi út 66. / Avenida Doutor X 1460 / Karu põik 61
        re.compile(rf"(?i:\b{foreign})\.?[ \t]+(?:{name_part}[ \t]+){{0,4}}\d{{1,5}}[a-zA-Z]?\b\.?"),
        re.compile(rf"\b{_CAPW}[ \t]+(?i:{foreign})\.?[ \t]+\d{{1,5}}[a-zA-Z]?\b\.?"),
        # 96 rue de Penthièvre / 94 boulevard Amiral Courbet
        re.compile(rf"\b\d{{1,5}}[a-zA-Z]?,?[ \t]+(?i:{foreign})\.?[ \t]+(?:{name_part}[ \t]+){{0,3}}{_CAPW}"),
        # 637 Strojírenská 1006 / 449 Πεντέλης 210: a building number before a "street number" name.
        re.compile(rf"\b\d{{1,6}}[ \t]+(?:{name_part}[ \t]+){{0,3}}{_CAPW}[ \t]+\d{{1,5}}[a-zA-Z]?\b\.?"),
        # Mstislav Radial St. / Main Street: capitalized words + a common suffix, no number.
        re.compile(rf"\b{_CAPW}(?:[ \t]+{_CAPW}){{0,2}}[ \t]+(?:St|Street|Rd|Road|Ave|Avenue|Blvd|Boulevard|Lane|Drive)\b\.?"),
        # Post-office boxes and military unit lines.
        re.compile(r"\bP\.?[ ]?O\.?[ ]?Box[ \t]+\d{1,6}\b", re.IGNORECASE),
        re.compile(rf"\b(?:PSC[ \t]+\d{{4}},?[ \t]+Box[ \t]+\d{{4}}|Unit[ \t]+\d{{4}},?[ \t]+Box[ \t]+\d{{4}}|"
                   rf"(?:USS|USNS|USNV|USCGC)[ \t]+{_CAPW})(?:[ \t]*\n?[ \t]*{_MILITARY_TAIL})?"),
        re.compile(rf"\b{_MILITARY_TAIL}"),
    ]


# After "address:", "lives at", ...: words + number, or number + words (group "a").
_AFTER_CUE = re.compile(
    rf"(?i:address:|lives at|lives on|located at|is at|live at|sent to|send to|ship to|deliver to|it's in|meet at|"
    rf"stop at)[ \t]+(?P<a>(?:\d{{1,6}}[ \t]+)?(?:{_CAPW}[ \t]+){{0,4}}{_CAPW}(?:[ \t]+\d{{1,5}}[a-zA-Z]?\b\.?)?)")
_NUMBER_BEFORE = re.compile(r"\d{1,6}[a-zA-Z]?,?[ \t]+$")
_COMPOUND = re.compile(rf"\b({_CAPW}(?:[ \t]+{_CAPW})?)[ \t]+(\d{{1,5}}[a-zA-Z]?)\b\.?")
_NAME_SUFFIX = re.compile(rf"\b({_CAPW})[ \t]+({_CAPW})\b\.?")
# One more part of a postal block: after ", " or a line break (quote markers like "> " allowed).
_PART = re.compile(
    rf"(?:,[ \t]*|[ \t]*\n{{1,2}}[ \t>?]*)"
    rf"(?:{_SECONDARY}|{_MILITARY_TAIL}|"
    rf"(?:{_CAPW}|{_PARTICLE})(?:[ \t]+(?:{_CAPW}|{_PARTICLE}|and)){{0,4}}(?:,?[ \t]+{_POSTCODE})?|"
    rf"[A-Z]{{2}}(?:[ \t]+{_POSTCODE})?|{_POSTCODE})"
    rf"(?=[ \t]*(?:$|[,.;:!?\n)])|[ \t]+[a-z])",  # a whole part: the text goes on in lower case or stops
    re.MULTILINE,
)
_SECONDARY_LINE = re.compile(rf"(?m)^[ \t>?]*{_SECONDARY}[ \t]*$|(?<=[ \t]){_SECONDARY}(?=[ \t]*(?:\n|$))")
_SAME_LINE_TAIL = re.compile(rf"[ \t]+(?:{_SECONDARY}|[A-Z]{{2}}[ \t]+\d{{5}}(?:-\d{{4}})?)")
_MAX_PARTS = 6


def _extend(text: str, end: int) -> int:
    m = _SAME_LINE_TAIL.match(text, end)
    if m:
        end = m.end()
    for _ in range(_MAX_PARTS):
        m = _PART.match(text, end)
        if not m:
            break
        part = m.group().strip(" \t\n>?,").casefold()
        if part in common_words() or part in {"thanks", "thank you", "regards", "best regards", "cheers"}:
            break
        end = m.end()
    return end


class StreetAddressRecognizer(EntityRecognizer):
    def __init__(self, entity: str = "POSTAL_ADDRESS") -> None:
        super().__init__(supported_entities=[entity], name="StreetAddressRecognizer",
                         context=["address", "ship", "deliver", "live", "lives", "street", "billing", "mail"])
        self.entity = entity

    def load(self) -> None:
        _street_res()

    def _lines(self, text: str):
        for rx in _street_res():
            for m in rx.finditer(text):
                yield m.start(), m.end(), 0.7
        for m in _AFTER_CUE.finditer(text):
            if m.group("a").casefold() not in common_words():
                yield m.start("a"), m.end("a"), 0.6
        for m in _COMPOUND.finditer(text):
            words = m.group(1).split()
            if is_compound_street(words[-1]):
                yield m.start(), m.end(), 0.65
        given, family = name_words()
        common = common_words()
        suffixes = street_suffixes()
        for m in _NAME_SUFFIX.finditer(text):
            name, suffix = m.group(1).casefold(), m.group(2).casefold().rstrip(".")
            if suffix in suffixes and name not in common and (name in given or name in family):
                yield m.start(), m.end(), 0.6

    def _blocks(self, text: str):
        """A line holding only "Apt. 559" / "Suite 026" is inside a postal block: the line before
        it is the street, the lines after it the place."""
        for m in _SECONDARY_LINE.finditer(text):
            before = text.rfind("\n", 0, m.start())
            prev_start = text.rfind("\n", 0, before) + 1 if before >= 0 else m.start()
            prev = text[prev_start:before] if before >= 0 else ""
            if prev.strip(" \t>?") and len(prev.split()) <= 6:
                start = prev_start + len(prev) - len(prev.lstrip(" \t>?"))
            else:
                start = m.start() + len(m.group()) - len(m.group().lstrip(" \t\n>?"))
            yield start, m.end(), 0.7

    def analyze(self, text: str, entities, nlp_artifacts=None) -> list[RecognizerResult]:
        spans = sorted([*self._lines(text), *self._blocks(text)], key=lambda s: (s[0], -s[1]))
        out: list[RecognizerResult] = []
        last_end = -1
        for start, end, score in spans:
            if start < last_end:
                continue
            before = _NUMBER_BEFORE.search(text, max(0, start - 12), start)
            if before and before.start() >= last_end:
                start = before.start()
            end = _extend(text, end)
            while end > start and text[end - 1] in " \t\n,":
                end -= 1
            last_end = end
            out.append(recognizer_result(self, self.entity, start, end, score))
        return out
