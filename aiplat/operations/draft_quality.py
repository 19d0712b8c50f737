"""Live quality of a generation model: held-out tickets, grounded at serving time in passages
retrieved from the live KB index, asked of the live endpoint; drafts scored against the held-out
agent replies (ROUGE-L) and the passages (groundedness), every answer scanned for leaks."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone

import httpx

from aiplat.evaluation import leak, metrics
from aiplat.evaluation.evaluate import groundedness
from aiplat.operations.quality import MONITOR_FEATURE, MONITOR_TEAM, Target
from aiplat.operations.requests import RequestRecord
from aiplat.training import prompts


@dataclass
class DraftQuality:
    endpoint: str
    model_version: str
    rows: int
    reply_rouge_l: float
    groundedness: float
    error_rate: float
    latency_p50_ms: float
    leak_findings: list[dict] = field(default_factory=list)


def ask_drafts(target: Target, rows: Sequence[dict], fmt: prompts.PromptFormat, *, max_tokens: int = 64,
               timeout_s: float = 120.0, record: Callable[[RequestRecord], None] | None = None) -> DraftQuality:
    """`rows`: held-out tickets with `kb_passages` retrieved now (aiplat.retrieval.grounding)."""
    rouge, grounded, latencies, findings, errors = [], [], [], [], 0
    with httpx.Client() as client:
        for row in rows:
            body = {"model": target.served_model_name, "messages": prompts.messages(row, [], fmt),
                    "max_tokens": max_tokens, "temperature": 0.0}
            start = time.perf_counter()
            usage: dict = {}
            status = 599
            try:
                response = client.post(f"{target.url.rstrip('/')}/v1/chat/completions", json=body,
                                       headers=target.headers, timeout=timeout_s)
                status = response.status_code
                text = response.json()["choices"][0]["message"]["content"] or "" if status == 200 else ""
                usage = response.json().get("usage") or {} if status == 200 else {}
            except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError):
                text = ""
            latency = (time.perf_counter() - start) * 1000
            latencies.append(latency)
            if status != 200:
                errors += 1
            rouge.append(metrics.rouge_l(text, prompts.short_reply(row["agent_reply"])))
            grounded.append(groundedness(text, prompts.passages_of(row)))
            findings += [f.to_dict() for f in leak.scan_text(text, str(row["ticket_id"]))]
            if record is not None:
                record(RequestRecord(timestamp=datetime.now(timezone.utc), endpoint=target.endpoint,
                                     model=target.model_version, team=MONITOR_TEAM, feature=MONITOR_FEATURE,
                                     prompt_tokens=int(usage.get("prompt_tokens") or 0),
                                     completion_tokens=int(usage.get("completion_tokens") or 0),
                                     latency_ms=latency, status=status))
    n = max(1, len(rows))
    return DraftQuality(target.endpoint, target.model_version, len(rows), metrics.mean(rouge), metrics.mean(grounded),
                        errors / n, metrics.percentile(latencies, 50), findings)


def judge_drafts(quality: DraftQuality, baseline_rouge: float | None, max_drop: float, max_error_rate: float) -> list[str]:
    """Reasons the reading fails (empty: it passes)."""
    reasons = []
    if quality.leak_findings:
        reasons.append(f"{len(quality.leak_findings)} canary/PII finding(s) in live drafts")
    if quality.error_rate > max_error_rate:
        reasons.append(f"error rate {quality.error_rate:.2f} above {max_error_rate:.2f}")
    if baseline_rouge is not None and baseline_rouge - quality.reply_rouge_l > max_drop:
        reasons.append(f"live ROUGE-L {quality.reply_rouge_l:.3f} is {baseline_rouge - quality.reply_rouge_l:.3f} below "
                       f"the eval report's {baseline_rouge:.3f} (allowed {max_drop:.3f})")
    return reasons
