"""A small triage training set in the feature stage's shape, for tests, benchmarks and demos
without running the upstream stages. Text depends on the category, so there is something to learn."""

from __future__ import annotations

import random

import pandas as pd

TEMPLATES = {
    "billing": ("Charged twice this month", "I was charged twice for my subscription on my card <CREDIT_CARD>.",
                "Sorry about the double charge. We have refunded the duplicate payment."),
    "technical": ("Router keeps dropping", "My {p} disconnects every few minutes since the update.",
                  "Please restart the {p} and install the latest firmware. Tell us if it persists."),
    "account": ("Cannot log in", "I cannot log in to my account, the password reset mail never arrives.",
                "We have sent a new reset link. Check your spam folder as well."),
    "shipping": ("Where is my order", "My order of the {p} has not arrived after ten days.",
                 "Your parcel is delayed at the carrier. It should arrive within three days."),
    "returns": ("Return request", "I want to return the {p}, it does not fit my needs.",
                "You can return it within 30 days. We have emailed you a prepaid label."),
    "general": ("Question about your service", "Do you offer the {p} in other colours?",
                "Thanks for asking. The {p} comes in black and white."),
}
PRODUCTS = ("router-x1", "mesh-pro", "smart-plug", "cloud-backup")


def sample_training_set(n: int = 60, seed: int = 0) -> pd.DataFrame:
    rng = random.Random(seed)
    rows = []
    categories = sorted(TEMPLATES)
    for i in range(n):
        category = categories[i % len(categories)]
        subject, message, reply = TEMPLATES[category]
        product = rng.choice(PRODUCTS)
        rows.append(
            {
                "ticket_id": f"T{i:05d}",
                "subject": subject,
                "message": message.format(p=product) + f" Ticket ref <PERSON> {rng.randint(100, 999)}.",
                "category": category,
                "agent_reply": reply.format(p=product),
                "product": product,
                "channel": rng.choice(("email", "chat", "web")),
                "priority": rng.choice(("low", "normal", "high")),
                "split": "train" if i % 10 < 8 else ("validation" if i % 10 == 8 else "test"),
            }
        )
    return pd.DataFrame(rows)
