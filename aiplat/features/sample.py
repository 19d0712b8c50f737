"""Redacted-ticket-shaped frames for tests and benchmarks of the feature stage.

They look like the output of the pii stage (pseudonymized ids, redacted text, `pii_entities`),
without running Presidio, so feature code can be exercised on thousands of rows in milliseconds.
"""

from __future__ import annotations

import hashlib
import random
from datetime import datetime, timedelta, timezone

import pandas as pd

from aiplat.features.tables import CATEGORIES

PRODUCTS = ("router-x1", "mesh-pro", "cloud-backup", "smart-plug", "billing-portal")
CHANNELS = ("email", "chat", "phone", "web")
PRIORITIES = ("low", "normal", "high", "urgent")
SUBJECTS = {
    "en": ("Cannot log in to my account", "Refund for the last invoice", "The router keeps dropping"),
    "de": ("Ich kann mich nicht anmelden", "Die Rechnung ist falsch und ich bitte um Hilfe"),
    "fr": ("Je ne peux pas me connecter à mon compte", "La facture est fausse, merci de vérifier"),
}
MESSAGES = {
    "en": "Hello, my name is <PERSON>. I have a problem with the {p} and it is not working, please help.",
    "de": "Hallo, ich bin <PERSON>. Ich habe ein Problem mit dem {p} und es ist nicht gut, bitte helfen Sie mir.",
    "fr": "Bonjour, je suis <PERSON>. Je ai un problème avec le {p} et il ne marche pas, merci de nous aider.",
}


def pseudonym(prefix: str, value: str) -> str:
    return f"{prefix}_{hashlib.sha256(value.encode()).hexdigest()[:16]}"


def redacted_tickets(
    n: int,
    customers: int,
    seed: int = 0,
    end: datetime | None = None,
    span_days: int = 400,
    batches: int = 1,
) -> pd.DataFrame:
    """`n` tickets of `customers` customers created over `span_days` before `end`."""
    rng = random.Random(seed)
    end = end or datetime.now(timezone.utc).replace(microsecond=0)
    rows = []
    for i in range(n):
        lang = rng.choice(("en", "en", "en", "de", "fr"))
        product = rng.choice(PRODUCTS)
        customer = pseudonym("cust", f"customer-{rng.randrange(customers)}")
        created = end - timedelta(seconds=rng.randrange(span_days * 86_400))
        pii = rng.randrange(4)
        rows.append(
            {
                "ticket_id": f"T{i:07d}",
                "customer_id": customer,
                "customer_name": pseudonym("name", customer),
                "customer_email": pseudonym("email", customer),
                "subject": rng.choice(SUBJECTS[lang]),
                "message": MESSAGES[lang].format(p=product) + " <EMAIL_ADDRESS>" * min(pii, 1),
                "agent_reply": "" if rng.random() < 0.05 else "Thanks, <PERSON>. We have looked into it.",
                "category": rng.choice(CATEGORIES),
                "product": product,
                "channel": rng.choice(CHANNELS),
                "priority": rng.choice(PRIORITIES),
                "created_at": created,
                "resolved_at": created + timedelta(hours=rng.randrange(1, 72)),
                "satisfaction": rng.choice((None, 1, 2, 3, 4, 5)),
                "pii_entities": pii,
                "_batch": f"batch-{i * batches // max(n, 1):03d}",
            }
        )
    df = pd.DataFrame(rows)
    df["created_at"] = pd.to_datetime(df["created_at"], utc=True)
    df["resolved_at"] = pd.to_datetime(df["resolved_at"], utc=True)
    return df
