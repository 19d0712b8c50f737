"""Word lists the recognizers read, all from packages installed with the platform (never a download).

- Given names and family names: every locale of Faker's person provider (about 31,000 given and
  28,000 family names from 86 locales), so names that the small English NER model has never seen
  ("Bronisław", "Yoneda", "Szôllôssy") are known words.
- Common English words (Faker's en_US word list + spaCy's stop words): a name that is also an
  ordinary word ("Will", "Grant", "May") counts only beside another name.
- Street suffixes: Faker's en_US list (225 of them) plus street words of other languages.
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import lru_cache


def _strings(value) -> list[str]:
    if isinstance(value, dict):  # weighted OrderedDicts
        value = list(value)
    if isinstance(value, (list, tuple, set, frozenset)):
        return [v for v in value if isinstance(v, str)]
    return []


@lru_cache(maxsize=1)
def name_words() -> tuple[frozenset[str], frozenset[str]]:
    """(given names, family names) of every Faker locale, casefolded; multi-word entries split."""
    import faker.providers.person as person

    given: set[str] = set()
    family: set[str] = set()
    for module in pkgutil.iter_modules(person.__path__):
        provider = importlib.import_module(f"{person.__name__}.{module.name}").Provider
        # first_names*, first_romanized_names* (ja_JP), middle_names*; last_names*, *_last_names.
        for attr, value in provider.__dict__.items():
            if attr.endswith("_pairs") or "kana" in attr or "name" not in attr:
                continue
            target = given if attr.startswith(("first_", "middle_")) else \
                family if attr.startswith("last_") or attr.endswith("last_names") else None
            if target is not None:
                for n in _strings(value):
                    target.update(w.casefold() for w in n.split() if len(w) > 1)
    return frozenset(given), frozenset(family)


@lru_cache(maxsize=1)
def common_words() -> frozenset[str]:
    from faker.providers.lorem.en_US import Provider as Lorem
    from spacy.lang.en.stop_words import STOP_WORDS

    extra = {  # words of support text that are also someone's name somewhere
        "order", "card", "phone", "email", "account", "please", "thanks", "thank", "hello", "dear", "hi",
        "regards", "best", "cheers", "customer", "support", "team", "billing", "refund", "device", "music",
        "update", "reset", "error", "router", "battery", "screen", "warranty", "return", "shipping",
        "monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday", "january", "february",
        "march", "april", "may", "june", "july", "august", "september", "october", "november", "december",
        "street", "road", "avenue", "city", "state", "country", "north", "south", "east", "west", "new",
        "mr", "mrs", "ms", "dr", "miss", "sir", "madam", "ok", "yes", "no", "ship", "mail", "apt", "suite",
    }
    return frozenset(w.casefold() for w in (*Lorem.word_list, *STOP_WORDS, *extra))


# Street words of other languages (prefix or suffix of a street name): "Via Pisanelli 104",
# "Mattenstrasse 108", "ul. Elbląska 97", "Rákóczi út 66.".
FOREIGN_STREET_WORDS = (
    "via", "viale", "piazza", "corso", "rue", "avenue", "boulevard", "bd", "chemin", "allée", "place", "quai",
    "avenida", "av", "rua", "calle", "carrer", "paseo", "plaza", "travessa", "largo", "estrada", "praça",
    "ul", "ulica", "aleja", "al", "út", "utca", "tér", "körút", "ulice", "náměstí", "trg", "cesta", "ulica",
    "str", "straße", "strasse", "gasse", "weg", "platz", "allee", "ring", "damm", "ufer", "steig",
    "straat", "laan", "plein", "gracht", "dreef", "kade", "singel", "pad",
    "vej", "gade", "stræde", "allé", "plads", "veien", "vegen", "gata", "gatan", "vägen", "väg", "gränd",
    "tie", "katu", "kuja", "polku", "tee", "põik", "puiestee", "braut", "gata", "vegur", "stígur",
    "odos", "leoforos", "ulitsa", "prospekt", "pereulok", "shosse", "street", "st", "road", "rd", "lane",
)
_GERMANIC_SUFFIXES = ("straße", "strasse", "gasse", "weg", "platz", "allee", "straat", "laan", "vej", "gade",
                      "veien", "vegen", "gatan", "vägen", "braut", "katu", "tie", "kuja", "damm", "ring", "stræde")


@lru_cache(maxsize=1)
def street_suffixes() -> frozenset[str]:
    from faker.providers.address.en_US import Provider as Address

    words = {s.casefold() for s in Address.street_suffixes}
    words.update(s.casefold() for s in getattr(Address, "street_suffixes_abbr", ()) if isinstance(s, str))
    return frozenset(words)


def is_compound_street(word: str) -> bool:
    """"Mattenstrasse", "Algade", "Norðurbraut": a street word glued to a name."""
    w = word.casefold().rstrip(".")
    return len(w) > 4 and any(w.endswith(s) and len(w) > len(s) + 1 for s in _GERMANIC_SUFFIXES)
