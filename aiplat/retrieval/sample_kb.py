"""A synthetic, already-redacted KB snapshot in the KbArticle shape, for tests and benchmarks.

Deterministic for a seed, so that benchmark runs and test expectations are repeatable.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pandas as pd

_TOPICS = {
    "account": ["reset your password", "unlock a locked account", "set up two-factor authentication",
                "delete your account", "change the e-mail address on your profile"],
    "billing": ["read your invoice", "dispute a double charge", "update the payment card",
                "understand tax on your bill", "switch to annual billing"],
    "shipping": ["track a package", "change a delivery address", "delivery times by region",
                 "report a lost parcel", "ship to a pickup point"],
    "returns": ["print a return label", "refund timelines after a return", "return a damaged item",
                "exchange an item for another size", "warranty claims for devices"],
    "technical": ["fix the app crashing on startup", "connect the device to wifi", "export your data",
                  "clear the cache of the app", "update the device firmware"],
}
_PRODUCTS = ["Nimbus Router", "Aurora Phone", "Atlas Laptop", "Comet Watch", "Orbit Speaker"]
_FILLER = ("Open the settings page and follow the steps shown. If the option is greyed out, sign out and "
           "sign in again. Most requests complete within a few minutes and you get a confirmation message. "
           "Contact support with the reference number if the problem persists.").split()


def _paragraph(rng: random.Random, topic: str, product: str, words: int) -> str:
    body = [rng.choice(_FILLER) for _ in range(words)]
    return f"To {topic} on the {product}, " + " ".join(body) + "."


def sample_kb_articles(n: int, seed: int = 0, paragraphs: tuple[int, int] = (2, 4)) -> pd.DataFrame:
    rng = random.Random(seed)
    categories = sorted(_TOPICS)
    base = datetime(2026, 1, 1, tzinfo=UTC)
    rows = []
    for i in range(n):
        category = categories[i % len(categories)]
        topic = _TOPICS[category][(i // len(categories)) % len(_TOPICS[category])]
        product = _PRODUCTS[(i * 7) % len(_PRODUCTS)]
        body = "\n\n".join(
            _paragraph(rng, topic, product, rng.randint(20, 70)) for _ in range(rng.randint(*paragraphs))
        )
        rows.append(
            {
                "article_id": f"kb-{i:05d}",
                "title": f"How to {topic} ({product})",
                "body": body,
                "product": product,
                "category": category,
                "author_name": f"auth_{i % 13:04x}",
                "author_email": f"auth_{i % 13:04x}",
                "tags": [category, product.split()[0].lower()],
                "updated_at": base + timedelta(hours=i),
            }
        )
    return pd.DataFrame(rows)


def edit_articles(df: pd.DataFrame, fraction: float, seed: int = 1) -> tuple[pd.DataFrame, list[str]]:
    """A copy with `fraction` of the articles given a new last paragraph (at least one)."""
    rng = random.Random(seed)
    out = df.copy()
    count = max(1, round(len(df) * fraction))
    picked = sorted(rng.sample(range(len(df)), count))
    for i in picked:
        out.at[out.index[i], "body"] = out.iloc[i]["body"] + f"\n\nUpdate {seed}: the steps changed in release {seed}.{i}."
    return out, out.iloc[picked]["article_id"].tolist()
