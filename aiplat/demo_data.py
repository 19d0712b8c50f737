"""A deterministic demo corpus: support tickets and knowledge-base articles with PII in them.

The corpus is written the way the help desk and the documentation system land their exports:
`<landing>/tickets/tickets-<YYYY-MM>.jsonl` (one incremental batch per month: new tickets, and
tickets updated since the last batch) and `<landing>/kb_articles/kb-<YYYY-MM-DD>.jsonl` (a full
snapshot). Every record validates against aiplat.intake.schema, except `bad_lines` deliberately
broken lines that let the demo show quarantine.

PII is woven into the free text as people write it (names, e-mails, phones, postal addresses,
card numbers, SSNs, IBANs, IP addresses, dates of birth), and the exact span of each value is
kept in the returned `Corpus`, so the PII stage can be checked against ground truth.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

from aiplat.synth import (
    CREDIT_CARD,
    DATE_OF_BIRTH,
    EMAIL_ADDRESS,
    IBAN_CODE,
    IP_ADDRESS,
    PERSON,
    PHONE_NUMBER,
    POSTAL_ADDRESS,
    US_SSN,
    Labeled,
    PiiFaker,
    Slots,
    Span,
    fill,
    join,
)

DEFAULT_SEED = 7
DEFAULT_TICKETS = 3000
DEFAULT_KB = 200
DEFAULT_BAD_LINES = 5
DEFAULT_START = date(2025, 1, 1)
DEFAULT_MONTHS = 6

# Declared frequencies (tests hold the generator to them).
P_MESSAGE_DETAIL_PII = 0.55  # the customer adds a personal detail (card, address, DOB, ...)
P_MESSAGE_SIGNED = 0.6  # the customer signs with their name
P_REPLY_GREETS_BY_NAME = 0.7
P_REPLY_SIGNED_BY_AGENT = 0.7
P_REPLY_DETAIL_PII = 0.12  # the agent repeats a contact detail back
P_SUBJECT_PII = 0.02
P_KB_PII = 0.25
P_SATISFACTION = 0.65
CUSTOMERS_PER_TICKET = 0.25

PRODUCTS: dict[str, tuple[str, ...]] = {
    "Nimbus Router X2": ("technical", "shipping", "returns", "billing"),
    "Nimbus Mesh Pro": ("technical", "shipping", "returns"),
    "Atlas Smart Thermostat": ("technical", "shipping", "returns", "general"),
    "Atlas Doorbell Cam": ("technical", "shipping", "returns", "account"),
    "Helio Laptop 14": ("technical", "shipping", "returns", "billing"),
    "Helio Tablet Mini": ("technical", "shipping", "returns"),
    "Orbit Cloud Backup": ("technical", "billing", "account", "general"),
    "Orbit Password Vault": ("technical", "account", "billing"),
    "Pulse Fitness Band": ("technical", "shipping", "returns", "general"),
    "Pulse Earbuds": ("technical", "shipping", "returns"),
    "Vega Streaming Plus": ("billing", "account", "technical", "general"),
    "Vega Music": ("billing", "account", "general"),
}
CATEGORY_WEIGHTS = {"technical": 30, "billing": 20, "account": 15, "shipping": 15, "returns": 10, "general": 10}
CHANNEL_WEIGHTS = {"email": 45, "web": 25, "chat": 20, "phone": 10}

SUBJECTS: dict[str, tuple[str, ...]] = {
    "technical": ("{product} keeps disconnecting", "{product} will not turn on", "Error {error_code} on {product}",
                  "{product} firmware update failed", "{product} is very slow", "Cannot pair {product}"),
    "billing": ("Charged twice for {product}", "Refund request for order {order_id}", "Wrong amount on my invoice",
                "{product} subscription renewal question", "Unexpected charge of {amount}"),
    "account": ("Cannot log in to my {product} account", "Please update my account details", "Locked out of {product}",
                "Two-factor codes not arriving", "Close my {product} account"),
    "shipping": ("Where is my order {order_id}?", "{product} delivery delayed", "Package marked delivered but missing",
                 "Change delivery address for {order_id}"),
    "returns": ("Return {product}", "Return label for order {order_id}", "{product} arrived damaged",
                "Exchange {product} for another size"),
    "general": ("Question about {product}", "Feedback on {product}", "Does {product} work with my setup?",
                "Business pricing for {product}"),
}

ISSUES: dict[str, tuple[str, ...]] = {
    "technical": (
        "My {product} drops the connection every few minutes since yesterday and restarting it did not help.",
        "The {product} shows error {error_code} right after the firmware update and nothing works.",
        "I set up the {product} last week but it will not connect to my home network anymore.",
        "The {product} gets really hot and then switches itself off after about ten minutes.",
        "After the latest update the {product} app crashes as soon as I open the settings page.",
        "My {product} is extremely slow and the status light keeps blinking orange.",
        "Bluetooth pairing with the {product} fails every time with error {error_code}.",
    ),
    "billing": (
        "I was charged {amount} twice this month for my {product} subscription.",
        "My invoice for order {order_id} shows {amount} but the price on your site was lower.",
        "I cancelled my {product} plan but I still got billed {amount}. Please refund it.",
        "Can you explain the charge of {amount} on my statement? I do not recognise it.",
        "I would like to switch my {product} plan from monthly to yearly billing.",
    ),
    "account": (
        "I cannot log in to my {product} account, the password reset e-mail never arrives.",
        "My {product} account got locked after too many attempts and I need access today.",
        "Please update the contact details on my {product} account.",
        "The two-factor codes for {product} stopped arriving on my phone.",
        "I want to delete my {product} account and all data you hold about me.",
    ),
    "shipping": (
        "My order {order_id} for a {product} was supposed to arrive on Monday and it still has not shown up.",
        "Tracking for order {order_id} has not moved in five days.",
        "The courier marked my {product} as delivered but there was no package.",
        "Can you change the delivery address for order {order_id} before it ships?",
    ),
    "returns": (
        "I would like to return the {product} from order {order_id}, it does not fit my needs.",
        "My {product} arrived with a cracked screen. I want a replacement or a refund.",
        "I need a return label for order {order_id}, the one in the box was missing.",
        "Can I exchange my {product} for the newer model? It is still within 30 days.",
    ),
    "general": (
        "Does the {product} work with older devices? I could not find it in the manual.",
        "Just wanted to say the {product} has been great, but the setup guide could be clearer.",
        "Do you offer business pricing for ten or more {product} units?",
        "Is there a student discount on the {product}?",
    ),
}

# Personal details a customer adds, by the kind of issue they write about.
DETAILS: dict[str, tuple[str, ...]] = {
    "technical": (
        "My public IP is {IP_ADDRESS} if that helps with the logs.",
        "The device reports the address {IP_ADDRESS} and the gateway cannot reach it.",
        "You can call me back on {PHONE_NUMBER:customer} any time after 5pm.",
        "I am currently in {LOCATION} for work, so the device is at home alone.",
    ),
    "billing": (
        "The card on file ends up charged twice, it is {CREDIT_CARD:customer}.",
        "Please refund to my card {CREDIT_CARD:customer}.",
        "You can send the refund by bank transfer to {IBAN_CODE:customer}.",
        "My IBAN for the direct debit is {IBAN_CODE:customer}, please check it was used correctly.",
        "The billing address is {POSTAL_ADDRESS:customer}.",
    ),
    "account": (
        "To verify me, my date of birth is {DATE_OF_BIRTH:customer}.",
        "For identification, my SSN is {US_SSN:customer} and DOB {DATE_OF_BIRTH:customer}.",
        "The account e-mail is {EMAIL_ADDRESS:customer} and my phone is {PHONE_NUMBER:customer}.",
        "Please change my phone number to {PHONE_NUMBER} and my address to {POSTAL_ADDRESS}.",
        "I was born on {DATE_OF_BIRTH:customer}, in case you need it for the security question.",
        "The last login attempts came from {IP_ADDRESS}, which is not me.",
    ),
    "shipping": (
        "The delivery address is {POSTAL_ADDRESS:customer}.",
        "Please ship it to {POSTAL_ADDRESS} instead, that is my office.",
        "The courier can reach me on {PHONE_NUMBER:customer}.",
        "My neighbour {PERSON} may have taken the package in.",
    ),
    "returns": (
        "Please send the label to {EMAIL_ADDRESS:customer}.",
        "I paid with {CREDIT_CARD:customer}, please refund to that card.",
        "Pick-up would be from {POSTAL_ADDRESS:customer}.",
        "My phone number is {PHONE_NUMBER:customer} if the courier needs it.",
    ),
    "general": (
        "You can reach me at {PHONE_NUMBER:customer} or {EMAIL_ADDRESS:customer}.",
        "I am writing from {LOCATION}, so please tell me if it ships here.",
        "My colleague {PERSON} recommended your products.",
    ),
}

GREETINGS = ("Hello,", "Hi there,", "Hi,", "Good morning,", "Dear support team,", "Hey,")
SIGNATURES = ("Thanks, {PERSON:customer}", "Regards,\n{PERSON:customer}", "Best, {PERSON:customer}",
              "- {PERSON:customer}", "Thank you!\n{PERSON:customer}", "Cheers, {PERSON:customer}")

REPLIES: dict[str, tuple[str, ...]] = {
    "technical": (
        "Sorry about the trouble with your {product}. Please hold the reset button for 10 seconds and install "
        "firmware {firmware}; that fixes the connection drops for most customers.",
        "Thanks for the details. Error {error_code} means the firmware image was corrupted; I have pushed "
        "firmware {firmware} to your {product}, please restart it once.",
        "I checked the diagnostics of your {product}: it overheats because of a known fan issue. A replacement "
        "unit is on its way under warranty.",
        "Please remove the {product} from the app, reinstall the app and pair it again. If the error comes back "
        "we will escalate to our engineering team.",
    ),
    "billing": (
        "I am sorry for the double charge. I have issued a refund of {amount}; it will show on your statement "
        "within 5 to 7 business days.",
        "I reviewed your invoice for order {order_id} and corrected it. The difference of {amount} has been "
        "refunded to your original payment method.",
        "Your {product} subscription is now cancelled and the last charge of {amount} refunded. You will not be "
        "billed again.",
        "I switched your {product} plan to yearly billing; the prorated credit appears on the next invoice.",
    ),
    "account": (
        "I have verified your identity and sent a new password reset link. It is valid for 24 hours.",
        "Your {product} account is unlocked. For security, please set a new password and enable two-factor "
        "authentication again.",
        "The contact details on your account are updated. You will receive a confirmation e-mail shortly.",
        "Your deletion request is registered; your {product} account and data will be removed within 30 days.",
    ),
    "shipping": (
        "I checked with the carrier: order {order_id} is delayed at the regional depot and should arrive within "
        "two business days. Your tracking number is {tracking}.",
        "The carrier has opened an investigation for the missing package. If it is not found in 48 hours we "
        "will ship a replacement {product} at no cost.",
        "I updated the delivery address for order {order_id}; the new tracking number is {tracking}.",
    ),
    "returns": (
        "I have created return authorisation {rma} for your {product}. The prepaid return label is attached; "
        "the refund is issued once the item arrives at our warehouse.",
        "Sorry the {product} arrived damaged. A replacement ships today and a return label {rma} is attached "
        "for the damaged unit.",
        "Your exchange is approved under return authorisation {rma}. Ship the old {product} back within 14 days.",
    ),
    "general": (
        "Thanks for your feedback on the {product}! I have passed it on to our product team.",
        "Yes, the {product} works with devices from the last five years. The compatibility list is in our "
        "knowledge base.",
        "We do offer volume pricing for the {product}; our sales team will contact you with a quote.",
    ),
}
REPLY_DETAILS = (
    "We will call you back on {PHONE_NUMBER:customer}.",
    "The replacement ships to {POSTAL_ADDRESS:customer}.",
    "A confirmation was sent to {EMAIL_ADDRESS:customer}.",
)
AGENT_SIGNOFFS = ("Best regards,\n{PERSON:agent}", "Kind regards, {PERSON:agent}", "Thanks,\n{PERSON:agent}",
                  "{PERSON:agent}, Customer Support")

KB_TITLES: dict[str, tuple[str, ...]] = {
    "technical": ("Troubleshooting connection drops on {product}", "Updating the firmware of {product}",
                  "Resolving error {error_code} on {product}", "Factory reset for {product}"),
    "billing": ("Understanding your {product} invoice", "Refunds and double charges for {product}",
                "Changing the billing plan of {product}"),
    "account": ("Recovering access to your {product} account", "Two-factor authentication for {product}",
                "Deleting your {product} account and data"),
    "shipping": ("Tracking a {product} order", "Changing the delivery address of a {product} order"),
    "returns": ("Returning or exchanging a {product}", "Warranty replacements for {product}"),
    "general": ("Getting started with {product}", "Compatibility of {product}", "{product} frequently asked questions"),
}
KB_PARAGRAPHS: dict[str, tuple[str, ...]] = {
    "technical": (
        "Most connection problems with the {product} come from outdated firmware. Open the app, go to Settings, "
        "then Device, and install firmware {firmware} or newer.",
        "If the device shows error {error_code}, unplug it for 30 seconds, then hold the reset button for 10 "
        "seconds until the light blinks white.",
        "Check that the {product} is within range of your router and that no other device uses the same channel.",
    ),
    "billing": (
        "Invoices for the {product} are issued on the first day of each billing period and list every charge.",
        "A double charge is usually a pending authorisation that disappears within three business days. If it "
        "does not, support issues a refund to the original payment method.",
        "You can switch between monthly and yearly plans at any time; the unused part is credited prorated.",
    ),
    "account": (
        "To reset your password, choose Forgot password on the sign-in page of the {product} app. The link is "
        "valid for 24 hours.",
        "Support verifies your identity before changing account details. Never share your password with anyone.",
        "Two-factor codes can be delayed by your carrier; an authenticator app is more reliable.",
    ),
    "shipping": (
        "Orders of the {product} ship within two business days. The tracking number is in the confirmation e-mail.",
        "The delivery address can be changed until the order leaves the warehouse.",
    ),
    "returns": (
        "You can return the {product} within 30 days of delivery. Start the return from your order page to get a "
        "prepaid label.",
        "Damaged items are replaced at no cost; keep the packaging until the replacement has arrived.",
    ),
    "general": (
        "The {product} works with devices released in the last five years. See the compatibility table below.",
        "Business customers ordering ten or more {product} units can ask for volume pricing.",
    ),
}
KB_PII_SENTENCES = (
    "For enterprise escalations contact {PERSON} at {EMAIL_ADDRESS} or {PHONE_NUMBER}.",
    "Example: if the device reports {IP_ADDRESS}, open that address in a browser to reach the admin page.",
    "Returns from outside the US go to our partner warehouse at {POSTAL_ADDRESS}.",
    "This article was reviewed by {PERSON} from the {LOCATION} support office.",
)


@dataclass(frozen=True)
class LabeledRecord:
    """One record of the corpus and the PII spans of each of its free-text fields."""

    dataset: str  # "tickets" | "kb_articles"
    batch: str  # file stem the record lands in
    record: dict
    spans: dict[str, tuple[Span, ...]]


@dataclass
class Corpus:
    records: list[LabeledRecord] = field(default_factory=list)

    def of(self, dataset: str) -> list[LabeledRecord]:
        return [r for r in self.records if r.dataset == dataset]


@dataclass(frozen=True)
class DemoDataSummary:
    files: list[Path]
    records: dict[str, int]
    bad_lines: int
    pii_values: dict[str, int]

    def as_dict(self) -> dict:
        return {
            "files": [str(p) for p in self.files],
            "records": dict(self.records),
            "bad_lines": self.bad_lines,
            "pii_values": dict(self.pii_values),
        }


@dataclass(frozen=True)
class _Customer:
    customer_id: str
    values: dict[str, str]


def _iso(ts: datetime) -> str:
    return ts.astimezone(timezone.utc).isoformat()


def _weighted(rng: random.Random, weights: dict[str, int]) -> str:
    return rng.choices(list(weights), weights=list(weights.values()))[0]


def _plain(rng: random.Random, product: str) -> dict[str, str]:
    return {
        "product": product,
        "order_id": f"A{rng.randint(100000, 999999)}",
        "amount": f"${rng.randint(5, 400)}.{rng.randint(0, 99):02d}",
        "error_code": f"E{rng.randint(100, 999)}",
        "firmware": f"{rng.randint(1, 4)}.{rng.randint(0, 20)}.{rng.randint(0, 9)}",
        "tracking": f"1Z{rng.randint(10**13, 10**14 - 1)}",
        "rma": f"RMA-{rng.randint(10000, 99999)}",
    }


def _customers(gen: PiiFaker, n: int) -> list[_Customer]:
    out = []
    for i in range(n):
        name = gen.person()
        values = {
            f"{PERSON}:customer": name,
            f"{PERSON}:customer_first": name.split()[0],
            f"{EMAIL_ADDRESS}:customer": gen.email(name),
            f"{PHONE_NUMBER}:customer": gen.phone(),
            f"{POSTAL_ADDRESS}:customer": gen.postal_address(),
            f"{CREDIT_CARD}:customer": gen.credit_card(),
            f"{IBAN_CODE}:customer": gen.iban(),
            f"{DATE_OF_BIRTH}:customer": gen.date_of_birth(),
            f"{US_SSN}:customer": gen.ssn(),
        }
        out.append(_Customer(customer_id=f"CUST-{100000 + i * 7919 % 900000:06d}", values=values))
    return out


def _ticket_text(gen: PiiFaker, rng: random.Random, category: str, plain: dict[str, str],
                 slots: Slots) -> tuple[Labeled, Labeled, Labeled]:
    subject = fill(rng.choice(SUBJECTS[category]), slots, plain)
    if rng.random() < P_SUBJECT_PII:
        subject = join([subject, fill("({EMAIL_ADDRESS:customer})", slots)])
    parts: list[Labeled | str] = [rng.choice(GREETINGS), fill(rng.choice(ISSUES[category]), slots, plain)]
    if rng.random() < P_MESSAGE_DETAIL_PII:
        parts.append(fill(rng.choice(DETAILS[category]), slots, plain))
    message = join(parts)
    if rng.random() < P_MESSAGE_SIGNED:
        message = join([message, fill(rng.choice(SIGNATURES), slots)], sep="\n")
    greet = fill("Hi {PERSON:customer_first},", slots) if rng.random() < P_REPLY_GREETS_BY_NAME else Labeled("Hello,")
    reply_parts: list[Labeled | str] = [greet, fill(rng.choice(REPLIES[category]), slots, plain)]
    if rng.random() < P_REPLY_DETAIL_PII:
        reply_parts.append(fill(rng.choice(REPLY_DETAILS), slots))
    reply = join(reply_parts)
    signoff = fill(rng.choice(AGENT_SIGNOFFS), slots) if rng.random() < P_REPLY_SIGNED_BY_AGENT else Labeled(
        "The Support Team")
    reply = join([reply, signoff], sep="\n")
    return subject, message, reply


def _satisfaction(rng: random.Random, hours: float, priority: str) -> int | None:
    if rng.random() >= P_SATISFACTION:
        return None
    score = 4.4 - (1.2 if hours > 72 else 0.6 if hours > 24 else 0.0) - (0.5 if priority == "urgent" else 0.0)
    return max(1, min(5, round(score + rng.gauss(0, 0.8))))


def generate_corpus(
    seed: int = DEFAULT_SEED,
    tickets: int = DEFAULT_TICKETS,
    kb: int = DEFAULT_KB,
    start: date = DEFAULT_START,
    months: int = DEFAULT_MONTHS,
) -> Corpus:
    """Build the corpus in memory, with ground-truth PII spans. Same arguments, same corpus."""
    if tickets < 0 or kb < 0 or months < 1:
        raise ValueError("tickets and kb must be >= 0 and months >= 1")
    gen = PiiFaker(seed)
    rng = gen.rng
    begin = datetime(start.year, start.month, 1, tzinfo=timezone.utc)
    end_month = (start.month - 1 + months) % 12 + 1
    end_year = start.year + (start.month - 1 + months) // 12
    end = datetime(end_year, end_month, 1, tzinfo=timezone.utc)
    span_seconds = int((end - begin).total_seconds())

    customers = _customers(gen, max(1, int(tickets * CUSTOMERS_PER_TICKET)))
    # A few customers write often, most only once or twice (Zipf-like).
    weights = [1.0 / (1 + i) ** 0.8 for i in range(len(customers))]
    agents = [gen.person() for _ in range(12)]
    writers = [(name, gen.email(name).split("@")[0] + "@support.example.com") for name in
               (gen.person() for _ in range(15))]

    corpus = Corpus()
    created_times = sorted(begin + timedelta(seconds=rng.randrange(span_seconds)) for _ in range(tickets))
    for n, created in enumerate(created_times):
        customer = rng.choices(customers, weights=weights)[0]
        category = _weighted(rng, CATEGORY_WEIGHTS)
        product = rng.choice([p for p, cats in PRODUCTS.items() if category in cats])
        plain = _plain(rng, product)
        slots = Slots(gen, dict(customer.values))
        slots.values[f"{PERSON}:agent"] = rng.choice(agents)
        subject, message, reply = _ticket_text(gen, rng, category, plain, slots)
        priority = rng.choices(("low", "normal", "high", "urgent"),
                               weights=(2, 5, 3, 2) if category in ("billing", "account") else (3, 6, 2, 1))[0]
        hours = rng.expovariate(1 / 30) + 0.25
        resolved = created + timedelta(seconds=int(hours * 3600))
        record = {
            "ticket_id": f"TCK-{n + 1:06d}",
            "customer_id": customer.customer_id,
            "customer_name": customer.values[f"{PERSON}:customer"],
            "customer_email": customer.values[f"{EMAIL_ADDRESS}:customer"],
            "subject": subject.text,
            "message": message.text,
            "agent_reply": reply.text,
            "category": category,
            "product": product,
            "channel": _weighted(rng, CHANNEL_WEIGHTS),
            "priority": priority,
            "created_at": _iso(created),
            "resolved_at": None,
            "satisfaction": None,
        }
        spans = {"subject": subject.spans, "message": message.spans, "agent_reply": reply.spans}
        satisfaction = _satisfaction(rng, hours, priority)
        opened_batch = created.strftime("%Y-%m")
        if resolved >= end:
            corpus.records.append(LabeledRecord("tickets", f"tickets-{opened_batch}", record, spans))
            continue
        closed = dict(record, resolved_at=_iso(resolved), satisfaction=satisfaction)
        closed_batch = resolved.strftime("%Y-%m")
        if closed_batch != opened_batch:
            # Still open when the month's export ran: it lands twice, the later batch wins downstream.
            corpus.records.append(LabeledRecord("tickets", f"tickets-{opened_batch}", record, spans))
        corpus.records.append(LabeledRecord("tickets", f"tickets-{closed_batch}", closed, spans))

    snapshot = (end - timedelta(days=1)).date().isoformat()
    for n in range(kb):
        category = _weighted(rng, CATEGORY_WEIGHTS)
        product = rng.choice([p for p, cats in PRODUCTS.items() if category in cats])
        plain = _plain(rng, product)
        slots = Slots(gen)
        title = fill(rng.choice(KB_TITLES[category]), slots, plain)
        paragraphs: list[Labeled | str] = [fill(p, slots, plain) for p in rng.sample(
            KB_PARAGRAPHS[category], k=min(len(KB_PARAGRAPHS[category]), rng.randint(2, 3)))]
        if rng.random() < P_KB_PII:
            paragraphs.insert(rng.randint(1, len(paragraphs)), fill(rng.choice(KB_PII_SENTENCES), slots, plain))
        body = join(paragraphs, sep="\n\n")
        writer, writer_email = writers[n % len(writers)]
        record = {
            "article_id": f"KB-{n + 1:04d}",
            "title": title.text,
            "body": body.text,
            "product": product,
            "category": category,
            "author_name": writer,
            "author_email": writer_email,
            "tags": sorted({category, product.split()[0].lower(), rng.choice(("how-to", "faq", "troubleshooting"))}),
            "updated_at": _iso(begin + timedelta(seconds=rng.randrange(span_seconds))),
        }
        corpus.records.append(LabeledRecord("kb_articles", f"kb-{snapshot}", record,
                                            {"title": title.spans, "body": body.spans}))
    return corpus


def _bad_line(kind: int, good: dict, dataset: str) -> str:
    text = json.dumps(good, ensure_ascii=False)
    if kind == 0:  # an export cut off mid-record
        return text[: len(text) // 2]
    if kind == 1:  # a required field missing
        dropped = dict(good)
        dropped.pop("message" if dataset == "tickets" else "body")
        return json.dumps(dropped, ensure_ascii=False)
    if kind == 2:  # a number where a string is declared
        wrong = dict(good)
        wrong["product" if dataset == "kb_articles" else "customer_id"] = 12345
        return json.dumps(wrong, ensure_ascii=False)
    if kind == 3:  # a value outside the allowed set
        wrong = dict(good)
        wrong["category"] = "complaints"
        return json.dumps(wrong, ensure_ascii=False)
    return "{not json at all"


def write_landing(corpus: Corpus, out: Path, bad_lines: int = DEFAULT_BAD_LINES, seed: int = DEFAULT_SEED) -> DemoDataSummary:
    """Write the corpus as landed JSONL batches under `out`; returns what was written."""
    if bad_lines < 0:
        raise ValueError("bad_lines must be >= 0")
    rng = random.Random(seed + 1)
    by_file: dict[Path, list[LabeledRecord]] = {}
    for rec in corpus.records:
        folder = out / rec.dataset
        by_file.setdefault(folder / f"{rec.batch}.jsonl", []).append(rec)
    files = sorted(by_file)
    lines: dict[Path, list[str]] = {
        f: [json.dumps(r.record, ensure_ascii=False) for r in recs] for f, recs in by_file.items()
    }
    ticket_files = [f for f in files if f.parent.name == "tickets"] or files
    for k in range(bad_lines if files else 0):
        target = ticket_files[k % len(ticket_files)]
        good = by_file[target][rng.randrange(len(by_file[target]))]
        lines[target].insert(rng.randint(0, len(lines[target])), _bad_line(k % 5, good.record, good.dataset))
    for f in files:
        f.parent.mkdir(parents=True, exist_ok=True)
        tmp = f.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(line + "\n" for line in lines[f]), encoding="utf-8")
        tmp.replace(f)  # a reader never sees a half-written batch
    pii = Counter(s.entity for r in corpus.records for spans in r.spans.values() for s in spans)
    counts = Counter(r.dataset for r in corpus.records)
    return DemoDataSummary(files=files, records=dict(sorted(counts.items())), bad_lines=bad_lines if files else 0,
                           pii_values=dict(sorted(pii.items())))


def generate(
    out: Path,
    seed: int = DEFAULT_SEED,
    tickets: int = DEFAULT_TICKETS,
    kb: int = DEFAULT_KB,
    bad_lines: int = DEFAULT_BAD_LINES,
    start: date = DEFAULT_START,
    months: int = DEFAULT_MONTHS,
) -> DemoDataSummary:
    """Generate the demo corpus and land it under `out` (tickets/ and kb_articles/)."""
    corpus = generate_corpus(seed=seed, tickets=tickets, kb=kb, start=start, months=months)
    return write_landing(corpus, Path(out), bad_lines=bad_lines, seed=seed)


__all__: Sequence[str] = ("Corpus", "LabeledRecord", "DemoDataSummary", "PRODUCTS", "generate", "generate_corpus",
                          "write_landing")
