"""A small offline language guess: the language whose common function words the text uses most.

Good enough to route or stratify support tickets (they are mostly one of a handful of languages);
it needs no model download. Short or ambiguous texts get `und` (undetermined, ISO 639).
"""

from __future__ import annotations

import re

UNDETERMINED = "und"

STOPWORDS: dict[str, frozenset[str]] = {
    "en": frozenset(
        "the and is are was were to of in for on with my your you i it this that have has not "
        "can please thanks thank would could be been will from at an or do does did".split()
    ),
    "de": frozenset(
        "der die das und ist sind war nicht ich sie mit für auf ein eine einen mein meine ihr "
        "bitte danke haben hat wird können kann zu von dem den des wir".split()
    ),
    "fr": frozenset(
        "le la les et est sont était pas je vous avec pour sur un une mon ma mes votre merci "
        "avoir a sera pouvez peut de du des nous ne que qui".split()
    ),
    "es": frozenset(
        "el la los las y es son era no yo usted con para en un una mi mis su gracias por favor "
        "tener tiene será puede de del que nosotros".split()
    ),
    "it": frozenset(
        "il lo la gli le e è sono era non io lei con per su un una mio mia suo grazie "
        "avere ha sarà può di del che noi".split()
    ),
    "nl": frozenset(
        "de het en is zijn was niet ik u met voor op een mijn uw bedankt alstublieft hebben "
        "heeft zal kan van dat wij".split()
    ),
    "pt": frozenset(
        "o a os as e é são era não eu você com para em um uma meu minha seu obrigado "
        "ter tem será pode de do da que nós".split()
    ),
}

_WORD = re.compile(r"[^\W\d_]+", re.UNICODE)


def detect_language(text: str, min_hits: int = 2) -> str:
    """ISO 639-1 code of the likeliest language, or `und` when the evidence is thin or tied."""
    words = [w.lower() for w in _WORD.findall(text or "")]
    if not words:
        return UNDETERMINED
    scores = {lang: sum(w in vocab for w in words) for lang, vocab in STOPWORDS.items()}
    ranked = sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))
    (best, best_score), (_, second_score) = ranked[0], ranked[1]
    if best_score < min_hits or best_score == second_score:
        return UNDETERMINED
    return best
