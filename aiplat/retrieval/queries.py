"""The fixed query set that recall@10 and backup verification are measured on.

Fixed on purpose: a recall number is only comparable across builds on the same queries.
"""

QUERY_SET: tuple[str, ...] = (
    "how do I reset my password",
    "my invoice shows a double charge",
    "refund for a returned item",
    "package has not arrived yet",
    "change the shipping address of an order",
    "two-factor authentication code not received",
    "cancel my subscription",
    "update payment method credit card",
    "app crashes on startup",
    "how to export my data",
    "account locked after too many attempts",
    "warranty claim for a broken device",
    "tracking number does not work",
    "upgrade to a higher plan",
    "delete my account permanently",
    "connect the device to wifi",
    "return label printing",
    "tax on my bill is wrong",
    "error message when logging in",
    "how long does delivery take",
)
