"""The promotion gate: absolute minima, allowed regression versus the champion, the base-model bar,
and the leak probe. Pure functions over headline metrics, so the rules are testable without models.
"""

from __future__ import annotations

import logging
import re

from aiplat.evaluation.settings import GateThresholds

ALERT_LOGGER = logging.getLogger("aiplat.alerts")

_MINIMA = (
    ("accuracy", "min_accuracy"),
    ("macro_f1", "min_macro_f1"),
    ("golden_accuracy", "min_golden_accuracy"),
    ("reply_rouge_l", "min_reply_rouge_l"),
    ("parse_rate", "min_parse_rate"),
    ("groundedness", "min_groundedness"),
)
_REGRESSIONS = (
    ("accuracy", "max_accuracy_drop"),
    ("macro_f1", "max_macro_f1_drop"),
    ("golden_accuracy", "max_golden_accuracy_drop"),
    ("reply_rouge_l", "max_reply_rouge_l_drop"),
    ("groundedness", "max_groundedness_drop"),
)


def decide(
    thresholds: GateThresholds,
    candidate: dict[str, float],
    base: dict[str, float] | None = None,
    champion: dict[str, float] | None = None,
) -> dict:
    """{"passed", "reasons": [failed rules, human readable], "rules": [every rule evaluated]}."""
    rules: list[dict] = []

    def rule(name: str, value: float, limit: float, ok: bool, text: str) -> None:
        rules.append({"rule": name, "value": round(value, 6), "limit": round(limit, 6), "passed": ok, "text": text})

    leaks = candidate["leak_findings"]
    rule("leak_probe", leaks, 0, leaks == 0, f"{int(leaks)} canary/PII finding(s) in outputs (must be 0)")
    for metric, field in _MINIMA:
        limit = getattr(thresholds, field)
        if limit is None:
            continue  # not a rule for this model (the policy floor decides which are)
        value = candidate[metric]
        rule(field, value, limit, value >= limit, f"{metric} {value:.3f} < minimum {limit:.3f}")
    if champion is not None:
        for metric, field in _REGRESSIONS:
            allowed = getattr(thresholds, field)
            if allowed is None:
                continue
            drop = champion[metric] - candidate[metric]
            rule(field, drop, allowed, drop <= allowed + 1e-12,
                 f"{metric} {candidate[metric]:.3f} is {drop:.3f} below the champion's {champion[metric]:.3f} "
                 f"(allowed {allowed:.3f})")
        if thresholds.max_latency_ratio is not None and champion["latency_p50_ms"] > 0:
            ratio = candidate["latency_p50_ms"] / champion["latency_p50_ms"]
            rule("max_latency_ratio", ratio, thresholds.max_latency_ratio, ratio <= thresholds.max_latency_ratio,
                 f"p50 latency {ratio:.2f}x the champion's (allowed {thresholds.max_latency_ratio:.2f}x)")
    if base is not None and thresholds.min_accuracy_gain_over_base is not None:
        gain = candidate["accuracy"] - base["accuracy"]
        limit = thresholds.min_accuracy_gain_over_base
        rule("min_accuracy_gain_over_base", gain, limit, gain >= limit - 1e-12,
             f"accuracy {candidate['accuracy']:.3f} gains {gain:+.3f} over the base model's {base['accuracy']:.3f} "
             f"(required {limit:+.3f})")
    reasons = [r["text"] for r in rules if not r["passed"]]
    return {"passed": not reasons, "reasons": reasons, "rules": rules}


def _value(text: str) -> str:
    """A value that stays one token in a key=value line: no spaces, quotes or newlines."""
    return re.sub(r"[^A-Za-z0-9._:/@+-]", "_", str(text)) or "-"


def alert_line(gate: str, model: str, version: str, reason: str, **fields: str) -> str:
    """`AIPLAT_ALERT gate=<g> model=<m> version=<v> [k=v ...] reason="<text>"`: one line, reason last."""
    extra = "".join(f" {k}={_value(v)}" for k, v in fields.items())
    reason = " ".join(str(reason).split()).replace('"', "'")
    return f'AIPLAT_ALERT gate={_value(gate)} model={_value(model)} version={_value(version)}{extra} reason="{reason}"'


ALERT_PATTERN = re.compile(
    r'^AIPLAT_ALERT gate=(?P<gate>\S+) model=(?P<model>\S+) version=(?P<version>\S+)(?P<fields>(?: \w+=\S+)*) reason="(?P<reason>[^"]*)"$'
)


def emit_alert(line: str, logger=None) -> None:
    """To the `aiplat.alerts` Python logger (what a log shipper matches) and the step's log."""
    ALERT_LOGGER.error(line)
    if logger is not None:
        logger.error(line)
