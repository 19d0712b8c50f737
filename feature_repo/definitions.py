"""The platform's Feast definitions: entities, sources, feature views and feature services.

Pure declarations, nothing computed here. `aiplat.features.store.load_definitions` reads this
file (and any other *.py beside it) the same way `feast apply` does.

Entities are keyed on pseudonymous ids only: in redacted data `customer_id` is a keyed HMAC token
(`cust_3f9a...`), never the help desk's raw id or an e-mail address. Source paths are relative to
the store's `repo_path`, which the platform points at its data folder (aiplat.features.store), so
no machine-specific path lives in this repo.
"""

from datetime import timedelta

from feast import Entity, FeatureService, FeatureView, Field, FileSource, ValueType
from feast.types import Float64, Int64, String

OWNER = "team:ml"

customer = Entity(
    name="customer",
    join_keys=["customer_id"],
    value_type=ValueType.STRING,
    description="A help-desk customer, by pseudonymous id (HMAC token, never the raw id).",
    owner=OWNER,
    tags={"pii": "pseudonymized"},
)

ticket = Entity(
    name="ticket",
    join_keys=["ticket_id"],
    value_type=ValueType.STRING,
    description="A support ticket, by the help desk's ticket id (not personal data).",
    owner=OWNER,
)

customer_features_source = FileSource(
    name="customer_features_source",
    path="data/customer_features.parquet",
    timestamp_field="event_timestamp",
    description="Written by the `customer_features` asset from redacted tickets.",
)

ticket_features_source = FileSource(
    name="ticket_features_source",
    path="data/ticket_features.parquet",
    timestamp_field="event_timestamp",
    description="Written by the `ticket_features` asset from redacted tickets.",
)

# One row per (customer, time a ticket of theirs arrived), summarizing the tickets that came
# before it. A window's counts stop being true as time passes, so a row serves at most 90 days.
customer_features = FeatureView(
    name="customer_features",
    entities=[customer],
    ttl=timedelta(days=90),
    schema=[
        Field(name="customer_id", dtype=String),
        Field(name="tickets_prior_total", dtype=Int64, description="Tickets before this moment, all time."),
        Field(name="tickets_7d", dtype=Int64, description="Tickets in the 7 days before."),
        Field(name="tickets_30d", dtype=Int64, description="Tickets in the 30 days before."),
        Field(name="tickets_90d", dtype=Int64, description="Tickets in the 90 days before."),
        Field(name="tickets_per_week_90d", dtype=Float64, description="Ticket rate over the 90 days before."),
        Field(name="high_priority_rate_90d", dtype=Float64, description="Share of high/urgent tickets, 90 days."),
        Field(name="share_billing_90d", dtype=Float64),
        Field(name="share_technical_90d", dtype=Float64),
        Field(name="share_account_90d", dtype=Float64),
        Field(name="share_shipping_90d", dtype=Float64),
        Field(name="share_returns_90d", dtype=Float64),
        Field(name="share_general_90d", dtype=Float64),
        Field(name="tenure_days", dtype=Float64, description="Days since the customer's first ticket."),
        Field(name="top_product", dtype=String, description="Most frequent product of earlier tickets."),
    ],
    source=customer_features_source,
    online=True,
    description="Per-customer ticket history as of each of the customer's tickets.",
    owner=OWNER,
    tags={"owner": OWNER, "group": "features", "pii": "none"},
)

# Properties of one ticket's (redacted) text, known the moment it arrives.
ticket_features = FeatureView(
    name="ticket_features",
    entities=[ticket],
    ttl=timedelta(days=365),
    schema=[
        Field(name="ticket_id", dtype=String),
        Field(name="subject_chars", dtype=Int64),
        Field(name="message_chars", dtype=Int64),
        Field(name="message_words", dtype=Int64),
        Field(name="language", dtype=String, description="ISO 639-1 code from an offline heuristic, 'und' if unsure."),
        Field(name="pii_entities", dtype=Int64, description="PII findings redacted from the ticket."),
        Field(name="pii_per_1k_chars", dtype=Float64, description="PII findings per 1,000 characters of text."),
        Field(name="channel", dtype=String),
        Field(name="priority", dtype=String),
        Field(name="product", dtype=String),
    ],
    source=ticket_features_source,
    online=True,
    description="Per-ticket text properties of redacted tickets.",
    owner=OWNER,
    tags={"owner": OWNER, "group": "features", "pii": "none"},
)

# Versioned services: a consumer pins `_v1`; a changed feature list becomes `_v2` beside it.
ticket_triage_v1 = FeatureService(
    name="ticket_triage_v1",
    features=[customer_features, ticket_features],
    description="Features for ticket triage and reply generation (training set and serving).",
    owner=OWNER,
    tags={"version": "1", "consumer": "fine_tuned_model"},
)

customer_profile_v1 = FeatureService(
    name="customer_profile_v1",
    features=[customer_features],
    description="A customer's ticket history, looked up by pseudonymous customer_id.",
    owner=OWNER,
    tags={"version": "1"},
)
