"""Synthetic PII values and templated sentences that know where every PII value sits.

The demo corpus (aiplat.demo_data) and the labeled PII evaluation set (aiplat.pii.evalset) are
both built from these pieces, so the scanner is measured on text that looks like the data it
scans. Every inserted PII value is recorded as an exact character span while the text is
assembled; nothing is located after the fact by searching for the value.

All randomness comes from one seeded Faker instance plus one `random.Random`, so a seed gives
identical output on every run.
"""

from __future__ import annotations

import random
import re
import string
from collections.abc import Iterable, Mapping, MutableMapping
from dataclasses import dataclass, field
from datetime import date, timedelta

from faker import Faker

PERSON = "PERSON"
EMAIL_ADDRESS = "EMAIL_ADDRESS"
PHONE_NUMBER = "PHONE_NUMBER"
CREDIT_CARD = "CREDIT_CARD"
US_SSN = "US_SSN"
IBAN_CODE = "IBAN_CODE"
IP_ADDRESS = "IP_ADDRESS"
DATE_OF_BIRTH = "DATE_OF_BIRTH"
POSTAL_ADDRESS = "POSTAL_ADDRESS"
LOCATION = "LOCATION"

PATTERN_ENTITIES: tuple[str, ...] = (
    EMAIL_ADDRESS,
    PHONE_NUMBER,
    CREDIT_CARD,
    US_SSN,
    IBAN_CODE,
    IP_ADDRESS,
    DATE_OF_BIRTH,
    POSTAL_ADDRESS,
)
NER_ENTITIES: tuple[str, ...] = (PERSON, LOCATION)
ALL_ENTITIES: tuple[str, ...] = (PERSON, LOCATION, *PATTERN_ENTITIES)


@dataclass(frozen=True, order=True)
class Span:
    """One PII value inside a text: [start, end) in characters."""

    start: int
    end: int
    entity: str

    def shifted(self, offset: int) -> Span:
        return Span(self.start + offset, self.end + offset, self.entity)


@dataclass(frozen=True)
class Labeled:
    """A text and the exact spans of the PII values placed in it."""

    text: str
    spans: tuple[Span, ...] = ()

    def __add__(self, other: Labeled | str) -> Labeled:
        if isinstance(other, str):
            return Labeled(self.text + other, self.spans)
        offset = len(self.text)
        return Labeled(self.text + other.text, self.spans + tuple(s.shifted(offset) for s in other.spans))


def join(parts: Iterable[Labeled | str], sep: str = " ") -> Labeled:
    out = Labeled("")
    for i, part in enumerate(parts):
        if i:
            out = out + sep
        out = out + (part if isinstance(part, Labeled) else Labeled(part))
    return out


# Real US area codes: phone numbers in landed data are real numbers, not 555 placeholders.
_AREA_CODES = (
    "201 202 203 205 206 207 208 212 213 214 215 216 217 218 219 224 225 228 229 231 234 239 240 248 "
    "251 252 253 254 256 260 262 267 269 270 276 281 301 302 303 304 305 307 308 309 310 312 313 314 "
    "315 316 317 318 319 320 321 323 330 334 336 337 339 347 351 352 360 361 386 401 402 404 405 406 "
    "407 408 409 410 412 413 414 415 417 419 423 425 432 434 435 440 443 469 478 479 480 484 501 502 "
    "503 504 505 507 508 509 510 512 513 515 516 517 518 520 530 540 541 551 559 561 562 563 567 570 "
    "571 573 574 580 585 586 601 602 603 605 606 607 608 609 610 612 614 615 616 617 618 619 620 623 "
    "626 630 631 636 641 646 650 651 660 661 662 678 682 701 702 703 704 706 707 708 712 713 714 715 "
    "716 717 718 719 720 724 727 731 732 734 740 754 757 760 763 765 770 772 773 774 775 781 785 786 "
    "801 802 803 804 805 806 808 810 812 813 814 815 816 817 818 828 830 831 832 843 845 847 848 850 "
    "856 857 858 859 860 862 863 864 865 870 901 903 904 906 907 908 909 910 912 913 914 915 916 917 "
    "918 919 920 925 928 931 936 937 940 941 947 949 951 952 954 956 970 971 972 973 978 979 980 985 989"
).split()

_CITIES = (
    "Denver Chicago Boston Seattle Atlanta Houston Phoenix Portland Austin Dallas Miami Detroit "
    "Minneapolis Baltimore Nashville Milwaukee Sacramento Pittsburgh Cleveland Cincinnati Orlando "
    "Toronto Vancouver Montreal London Manchester Dublin Berlin Munich Hamburg Paris Lyon Madrid "
    "Barcelona Amsterdam Rotterdam Brussels Vienna Zurich Geneva Stockholm Oslo Copenhagen Helsinki "
    "Lisbon Rome Milan Prague Warsaw Budapest Athens Sydney Melbourne Auckland Tokyo Singapore"
).split() + ["San Francisco", "Los Angeles", "New York", "San Diego", "Salt Lake City", "Kansas City", "Las Vegas"]

# (country, bank code alphabet, bank code length, account digits) -> total IBAN length matches ISO 13616.
_IBAN_FORMATS = (
    ("DE", "", 0, 18),
    ("GB", string.ascii_uppercase, 4, 14),
    ("NL", string.ascii_uppercase, 4, 10),
    ("FR", "", 0, 23),
    ("ES", "", 0, 20),
    ("IT", string.ascii_uppercase, 1, 22),
    ("BE", "", 0, 12),
)

_CARD_PREFIXES = (("4", 16), ("51", 16), ("52", 16), ("53", 16), ("54", 16), ("55", 16), ("37", 15), ("34", 15), ("6011", 16))
_MONTHS = (
    "January February March April May June July August September October November December".split()
)


def luhn_check_digit(digits: str) -> str:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 0:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return str((10 - total % 10) % 10)


def luhn_valid(number: str) -> bool:
    digits = re.sub(r"\D", "", number)
    return len(digits) >= 12 and luhn_check_digit(digits[:-1]) == digits[-1]


def _iban_numeric(s: str) -> int:
    return int("".join(str(int(c, 36)) for c in s))


def iban_valid(iban: str) -> bool:
    compact = iban.replace(" ", "").upper()
    return len(compact) >= 15 and _iban_numeric(compact[4:] + compact[:4]) % 97 == 1


class PiiFaker:
    """Realistic PII values from a seeded Faker plus a seeded Random."""

    def __init__(self, seed: int) -> None:
        self.faker = Faker("en_US")
        self.faker.seed_instance(seed)
        self.rng = random.Random(seed)

    # names and contact details --------------------------------------------------------------
    def person(self) -> str:
        return f"{self.faker.first_name()} {self.faker.last_name()}"

    def email(self, name: str | None = None) -> str:
        name = name or self.person()
        first, last = (re.sub(r"[^a-z]", "", p.lower()) for p in (name.split()[0], name.split()[-1]))
        local = self.rng.choice(
            (f"{first}.{last}", f"{first[0]}{last}", f"{first}{last}{self.rng.randint(1, 99)}", f"{first}_{last}")
        )
        domain = self.rng.choice((self.faker.free_email_domain(), self.faker.free_email_domain(), self.faker.domain_name()))
        return f"{local}@{domain}"

    def phone(self) -> str:
        area = self.rng.choice(_AREA_CODES)
        exchange = f"{self.rng.randint(2, 9)}{self.rng.randint(0, 9)}{self.rng.randint(2, 9)}"
        line = f"{self.rng.randint(0, 9999):04d}"
        fmt = self.rng.choice(("({a}) {e}-{l}", "{a}-{e}-{l}", "+1 {a} {e} {l}", "{a}.{e}.{l}", "+1-{a}-{e}-{l}"))
        return fmt.format(a=area, e=exchange, l=line)

    # financial and government identifiers -----------------------------------------------------
    def credit_card(self) -> str:
        prefix, length = self.rng.choice(_CARD_PREFIXES)
        body = prefix + "".join(str(self.rng.randint(0, 9)) for _ in range(length - len(prefix) - 1))
        number = body + luhn_check_digit(body)
        style = self.rng.choice(("space", "dash", "plain"))
        if style == "plain":
            return number
        sep = " " if style == "space" else "-"
        groups = (4, 6, 5) if length == 15 else (4, 4, 4, 4)
        out, i = [], 0
        for g in groups:
            out.append(number[i : i + g])
            i += g
        return sep.join(out)

    def ssn(self) -> str:
        area = self.rng.choice([a for a in range(1, 900) if a != 666])
        return f"{area:03d}-{self.rng.randint(1, 99):02d}-{self.rng.randint(1, 9999):04d}"

    def iban(self) -> str:
        country, alphabet, bank_len, account_len = self.rng.choice(_IBAN_FORMATS)
        bban = "".join(self.rng.choice(alphabet) for _ in range(bank_len))
        bban += "".join(str(self.rng.randint(0, 9)) for _ in range(account_len))
        check = 98 - _iban_numeric(bban + country + "00") % 97
        compact = f"{country}{check:02d}{bban}"
        if self.rng.random() < 0.5:
            return compact
        return " ".join(compact[i : i + 4] for i in range(0, len(compact), 4))

    def ip_address(self) -> str:
        if self.rng.random() < 0.2:
            return self.faker.ipv6()
        return self.faker.ipv4_public()

    def date_of_birth(self) -> str:
        born = date(1940, 1, 1) + timedelta(days=self.rng.randint(0, 365 * 65))
        fmt = self.rng.choice(("us", "iso", "long", "dots"))
        if fmt == "us":
            return f"{born.month:02d}/{born.day:02d}/{born.year}"
        if fmt == "iso":
            return born.isoformat()
        if fmt == "dots":
            return f"{born.day:02d}.{born.month:02d}.{born.year}"
        return f"{_MONTHS[born.month - 1]} {born.day}, {born.year}"

    def postal_address(self) -> str:
        street = f"{self.faker.building_number()} {self.faker.street_name()}"
        if self.rng.random() < 0.3:
            street += f", {self.rng.choice(('Apt.', 'Apt', 'Suite', 'Unit'))} {self.rng.randint(1, 999)}"
        return f"{street}, {self.faker.city()}, {self.faker.state_abbr(include_territories=False)} {self.faker.zipcode()}"

    def location(self) -> str:
        return self.rng.choice(_CITIES)

    def value(self, entity: str) -> str:
        return {
            PERSON: self.person,
            EMAIL_ADDRESS: self.email,
            PHONE_NUMBER: self.phone,
            CREDIT_CARD: self.credit_card,
            US_SSN: self.ssn,
            IBAN_CODE: self.iban,
            IP_ADDRESS: self.ip_address,
            DATE_OF_BIRTH: self.date_of_birth,
            POSTAL_ADDRESS: self.postal_address,
            LOCATION: self.location,
        }[entity]()


_SLOT = re.compile(r"\{([A-Za-z_]+)(?::([a-z_]+))?\}")


@dataclass
class Slots:
    """Values a template may refer to.

    `{ENTITY:role}` (e.g. `{PERSON:customer}`) reuses the value stored under "ENTITY:role" and
    creates it on first use, so a record names the same customer everywhere; a bare `{ENTITY}`
    draws a fresh value; lowercase `{name}` slots are plain, non-PII text.
    """

    gen: PiiFaker
    values: MutableMapping[str, str] = field(default_factory=dict)

    def pii(self, entity: str, role: str | None) -> str:
        if role is None:
            return self.gen.value(entity)
        key = f"{entity}:{role}"
        if key not in self.values:
            self.values[key] = self.gen.value(entity)
        return self.values[key]


def fill(template: str, slots: Slots, plain: Mapping[str, str] | None = None) -> Labeled:
    """Render `template`, recording the span of every PII value it places."""
    plain = plain or {}
    parts: list[str] = []
    spans: list[Span] = []
    pos = 0
    length = 0
    for m in _SLOT.finditer(template):
        literal = template[pos : m.start()]
        parts.append(literal)
        length += len(literal)
        name, role = m.group(1), m.group(2)
        if name.isupper():
            if name not in ALL_ENTITIES:
                raise ValueError(f"template {template!r} names unknown entity {name!r}")
            value = slots.pii(name, role)
            spans.append(Span(length, length + len(value), name))
        else:
            if name not in plain:
                raise KeyError(f"template {template!r} needs a value for {{{name}}}")
            value = plain[name]
        parts.append(value)
        length += len(value)
        pos = m.end()
    parts.append(template[pos:])
    return Labeled("".join(parts), tuple(spans))


def template_entities(template: str) -> set[str]:
    return {m.group(1) for m in _SLOT.finditer(template) if m.group(1).isupper()}
