"""Names the small NER model misses: in lists, without context, from other languages.

A run of capitalized words (any script; particles like "van", "de" inside) is a PERSON when one of
its words is a given or family name of some Faker locale and not an ordinary English word; the
run's other capitalized words come with it ("Csanád Vörös", "Yoneda Hatsuho"). An ordinary word
that is also a name ("Will", "May", "Grant") counts only beside a name that is not. In lower
case, only a given name followed by a family name counts ("cecilie josefsen"). Words glued to
"@" or "." (e-mail addresses, domains) are never names here.
"""

from __future__ import annotations

import re

from presidio_analyzer import EntityRecognizer, RecognizerResult

from aiplat.pii.results import recognizer_result

from aiplat.pii.gazetteer import common_words, name_words, street_suffixes

_TOKEN = re.compile(r"[^\W\d_]+(?:['’-][^\W\d_]+)*")
_PARTICLES = frozenset({"van", "von", "de", "der", "den", "da", "di", "do", "dos", "du", "del", "della", "la", "le",
                        "bin", "ibn", "al", "el", "ter", "ten", "zu"})
_MAX_RUN = 4
_NOT_PERSON_LABELS = frozenset({"NORP", "LANGUAGE", "WORK_OF_ART", "EVENT"})
# A capitalized run followed by one of these is a company: "Brands Inc", "James River Group".
_ORG_WORDS = frozenset({"inc", "corp", "corporation", "ltd", "llc", "plc", "co", "company", "group", "holdings",
                        "gmbh", "ag", "sa", "nv", "bv", "ab", "asa", "oy", "spa", "trust", "bank", "fund"})


def _capitalized(word: str) -> bool:
    return word[0].isupper() and not (len(word) > 3 and word.isupper())


class GazetteerNameRecognizer(EntityRecognizer):
    def __init__(self, allow_list: tuple[str, ...] = ()) -> None:
        super().__init__(supported_entities=["PERSON"], name="GazetteerNameRecognizer")
        # Words of allow-listed phrases (product names: "Atlas Doorbell Cam") never make a name.
        self._allowed_words = frozenset(w.casefold() for p in allow_list for w in _TOKEN.findall(p))

    def load(self) -> None:
        name_words()
        common_words()

    def analyze(self, text: str, entities, nlp_artifacts=None) -> list[RecognizerResult]:
        given, family = name_words()
        common = common_words() | self._allowed_words
        tokens = [m for m in _TOKEN.finditer(text)
                  if not (m.end() < len(text) and text[m.end()] in "@._" and m.end() + 1 < len(text)
                          and not text[m.end() + 1].isspace())
                  and not (m.start() > 0 and text[m.start() - 1] in "@._/")]
        # Words spaCy's NER calls a nationality, language, organisation or work ("Danish food",
        # "Hyatt Hotels Corporation") are not names, whatever the gazetteer says.
        not_person = [(e.start_char, e.end_char) for e in getattr(nlp_artifacts, "entities", None) or ()
                      if e.label_ in _NOT_PERSON_LABELS]
        out: list[RecognizerResult] = []
        i = 0
        while i < len(tokens):
            # A run: capitalized tokens (particles allowed inside) separated by one space or hyphen.
            run = [tokens[i]]
            j = i + 1
            while j < len(tokens) and len(run) < _MAX_RUN + 1:
                gap = text[run[-1].end():tokens[j].start()]
                if gap not in (" ", "-"):
                    break
                w = tokens[j].group()
                if not (_capitalized(w) or w.casefold() in _PARTICLES):
                    break
                run.append(tokens[j])
                j += 1
            words = [t.group() for t in run]
            if _capitalized(words[0]):
                span = self._name_in_run(run, words, given, family, common)
                if span:
                    a, b, score = span
                    start, end = run[a].start(), run[b].end()
                    after = tokens[j].group().casefold().rstrip(".") if j < len(tokens) else ""
                    last = words[b].casefold().rstrip(".")
                    if not (after in _ORG_WORDS or last in _ORG_WORDS or last in street_suffixes()
                            or any(s <= start and end <= e for s, e in not_person)):
                        out.append(self._result(start, end, score))
                i = j
                continue
            # Lower case: given name + family name, neither an ordinary word.
            if j == i + 1 and i + 1 < len(tokens) and text[tokens[i].end():tokens[i + 1].start()] == " ":
                w1, w2 = tokens[i].group().casefold(), tokens[i + 1].group().casefold()
                if w1 in given and w2 in family and w1 not in common and w2 not in common and w2.islower():
                    out.append(self._result(tokens[i].start(), tokens[i + 1].end(), 0.52))
                    i += 2
                    continue
            i += 1
        return out

    @staticmethod
    def _name_in_run(run, words, given, family, common):
        folded = [w.casefold() for w in words]
        strong = [k for k, w in enumerate(folded) if (w in given or w in family) and w not in common]
        if not strong:
            return None
        # Keep capitalized words next to a strong one; drop ordinary words at the edges unless they
        # are names too ("Will Smith": "will" is a given name).
        a, b = min(strong), max(strong)
        while a > 0 and folded[a - 1] not in _PARTICLES and (folded[a - 1] not in common or folded[a - 1] in given):
            a -= 1
        while b + 1 < len(words) and (folded[b + 1] not in common or folded[b + 1] in family):
            b += 1
        while a < b and folded[a] in _PARTICLES:
            a += 1
        while b > a and folded[b] in _PARTICLES:
            b -= 1
        if b - a + 1 > _MAX_RUN:
            return None
        # Scores differ from the other name recognizers' (0.85, 0.6, 0.55): Presidio keeps one of two
        # tied results on a span in an order that is not the same on the batched and naive paths.
        score = 0.8 if b > a else 0.58
        return a, b, score

    def _result(self, start: int, end: int, score: float) -> RecognizerResult:
        return recognizer_result(self, "PERSON", start, end, score)
