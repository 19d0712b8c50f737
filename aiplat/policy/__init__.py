"""The platform-owned gate policy (aiplat/policy/gate_policy.yaml) and its digest."""

from aiplat.policy.policy import (
    GatePolicy,
    PolicyError,
    current_policy,
    is_stricter,
    load_policy,
    looser_fields,
)

__all__ = ["GatePolicy", "PolicyError", "current_policy", "is_stricter", "load_policy", "looser_fields"]
