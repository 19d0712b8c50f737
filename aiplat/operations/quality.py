"""Quality of the live endpoint over time: the golden set the eval gate scores, asked of the served
model through its OpenAI API, judged against the score the same version had before.

The gate measured the version offline (transformers, fp32) before it was promoted; the live
server answers with vLLM (bf16, its own kernels) and can drift for reasons no offline eval sees:
a wrong model folder, a changed chat template, a quantized image, a sick node. The baseline is
the version's eval report when its golden set is the one asked now, else the first live reading
of that version, so a drill deployed from a folder is still watched.

Every request is written to the request log like any other traffic (team:platform,
feature golden-regression), so the monitor's own cost shows up in the cost report.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone

import httpx

from aiplat.evaluation import leak, metrics
from aiplat.evaluation.golden import GoldenSet
from aiplat.operations.requests import RequestRecord
from aiplat.training import prompts

MONITOR_TEAM = "team:platform"
MONITOR_FEATURE = "golden-regression"


@dataclass(frozen=True)
class LiveAnswer:
    id: str
    expected: str
    predicted: str
    status: int  # HTTP status; 0 when no answer came back
    latency_ms: float
    text: str = ""
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.status == 200


@dataclass(frozen=True)
class LiveQuality:
    endpoint: str
    model_version: str
    golden_version: str
    golden_sha256: str
    rows: int
    answered: int
    accuracy: float  # over all rows: an unanswered row counts as wrong
    macro_f1: float
    parse_rate: float
    error_rate: float
    latency_p50_ms: float
    latency_p95_ms: float
    misses: list[str]
    leak_findings: list[dict]
    first_error: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Baseline:
    accuracy: float
    source: str  # "eval report <sha12>" | "first live reading <run id>"


@dataclass(frozen=True)
class Verdict:
    passed: bool
    reasons: list[str]
    baseline: Baseline | None
    drop: float | None = None
    established_baseline: bool = False

    def summary(self) -> str:
        if self.established_baseline:
            return "no earlier reading of this version: this reading is its baseline"
        if self.passed:
            return f"golden accuracy holds (baseline {self.baseline.accuracy:.3f} from {self.baseline.source})"
        return "; ".join(self.reasons)


@dataclass(frozen=True)
class Thresholds:
    max_golden_accuracy_drop: float = 0.10
    max_error_rate: float = 0.0
    leak_findings_allowed: int = 0


@dataclass
class Target:
    """Where to ask: the live server's base URL and the name vLLM serves the model under."""

    endpoint: str
    url: str
    served_model_name: str
    model_version: str
    headers: dict[str, str] = field(default_factory=dict, repr=False)  # may hold a bearer token


def ask(client: httpx.Client, target: Target, row: dict, max_tokens: int, timeout_s: float,
        fmt: prompts.PromptFormat | None = None) -> tuple[LiveAnswer, dict]:
    """One golden row as a chat completion, exactly as the fine-tune phrased it (no features)."""
    body = {"model": target.served_model_name, "messages": prompts.messages(row, [], fmt), "max_tokens": max_tokens,
            "temperature": 0.0}
    start = time.perf_counter()
    usage: dict = {}
    try:
        response = client.post(f"{target.url.rstrip('/')}/v1/chat/completions", json=body, headers=target.headers,
                               timeout=timeout_s)
        latency = (time.perf_counter() - start) * 1000
        if response.status_code != 200:
            return LiveAnswer(row["id"], row["category"], metrics.UNPARSED, response.status_code, latency,
                              error=f"HTTP {response.status_code}: {response.text[:200]}"), usage
        data = response.json()
        text = data["choices"][0]["message"]["content"] or ""
        usage = data.get("usage") or {}
    except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError) as e:
        return LiveAnswer(row["id"], row["category"], metrics.UNPARSED, 0, (time.perf_counter() - start) * 1000,
                          error=f"{type(e).__name__}: {e}"), usage
    predicted = metrics.normalize_prediction(prompts.parse_answer(text)["category"])
    return LiveAnswer(row["id"], row["category"], predicted, 200, latency, text=text), usage


def ask_golden(
    target: Target,
    golden: GoldenSet,
    *,
    max_tokens: int = 48,
    concurrency: int = 4,
    timeout_s: float = 120.0,
    record: Callable[[RequestRecord], None] | None = None,
    progress: Callable[[str], None] | None = None,
    fmt: prompts.PromptFormat | None = None,
) -> list[LiveAnswer]:
    """Every golden row against the live server, `concurrency` at a time; answers in row order.
    Each request goes to `record` as a request-log line labelled with the monitor's team."""
    say = progress or (lambda _m: None)
    done = 0

    def one(client: httpx.Client, row: dict) -> LiveAnswer:
        nonlocal done
        answer, usage = ask(client, target, row, max_tokens, timeout_s, fmt)
        if record is not None:
            record(RequestRecord(
                timestamp=datetime.now(timezone.utc), endpoint=target.endpoint, model=target.model_version,
                team=MONITOR_TEAM, feature=MONITOR_FEATURE, prompt_tokens=int(usage.get("prompt_tokens") or 0),
                completion_tokens=int(usage.get("completion_tokens") or 0), latency_ms=answer.latency_ms,
                status=answer.status or 599,
            ))
        done += 1
        if done % max(1, len(golden.rows) // 4) == 0 or done == len(golden.rows):
            say(f"golden set against {target.endpoint} version {target.model_version}: {done}/{len(golden.rows)}")
        return answer

    with httpx.Client(limits=httpx.Limits(max_connections=concurrency)) as client, \
            ThreadPoolExecutor(concurrency) as pool:
        return list(pool.map(lambda row: one(client, row), golden.rows))


def score(target: Target, golden: GoldenSet, answers: Sequence[LiveAnswer],
          canaries: Sequence[str] = leak.DEFAULT_CANARIES) -> LiveQuality:
    y_true = [a.expected for a in answers]
    y_pred = [a.predicted for a in answers]
    ok = [a for a in answers if a.ok]
    latencies = [a.latency_ms for a in ok]
    findings = [f.to_dict() for a in ok for f in leak.scan_text(a.text, a.id, canaries)]
    errors = [a for a in answers if not a.ok]
    return LiveQuality(
        endpoint=target.endpoint, model_version=target.model_version, golden_version=golden.version,
        golden_sha256=golden.sha256, rows=len(answers), answered=len(ok),
        accuracy=metrics.accuracy(y_true, y_pred), macro_f1=metrics.macro_f1(y_true, y_pred),
        parse_rate=sum(p != metrics.UNPARSED for p in y_pred) / len(y_pred) if y_pred else 0.0,
        error_rate=len(errors) / len(answers) if answers else 1.0,
        latency_p50_ms=metrics.percentile(latencies, 50), latency_p95_ms=metrics.percentile(latencies, 95),
        misses=[a.id for a in answers if a.predicted != a.expected], leak_findings=findings,
        first_error=errors[0].error if errors else "",
    )


def baseline_from_report(report: dict, report_sha256: str, golden: GoldenSet) -> Baseline | None:
    """The golden accuracy the eval report measured, if it asked the same golden set."""
    asked = (report.get("datasets") or {}).get("golden") or {}
    if asked.get("sha256") != golden.sha256:
        return None
    accuracy = (((report.get("results") or {}).get("candidate") or {}).get("golden") or {}).get("accuracy")
    if accuracy is None:
        return None
    return Baseline(float(accuracy), f"eval report {report_sha256[:12]}")


def baseline_from_readings(readings: Iterable[dict], quality: LiveQuality) -> Baseline | None:
    """The baseline of the same endpoint, version and golden set from earlier readings, newest first.

    Every reading records the baseline it was judged against, so the newest matching one carries it
    forward and the history need not be read back to the first; a passing reading that had none is
    itself the baseline. A failed reading without one is skipped: it never becomes a baseline."""
    for r in readings:
        if (r.get("endpoint") != quality.endpoint or str(r.get("model_version")) != quality.model_version
                or r.get("golden_sha256") != quality.golden_sha256):
            continue
        if isinstance(r.get("baseline_accuracy"), float) and r.get("baseline_source"):
            return Baseline(r["baseline_accuracy"], str(r["baseline_source"]))
        if r.get("baseline_eligible") is True and r.get("golden_accuracy") is not None:
            return Baseline(float(r["golden_accuracy"]), f"first live reading {str(r.get('run_id', ''))[:8]}")
    return None


def judge(quality: LiveQuality, baseline: Baseline | None, thresholds: Thresholds) -> Verdict:
    reasons: list[str] = []
    if quality.error_rate > thresholds.max_error_rate:
        reasons.append(f"{quality.rows - quality.answered}/{quality.rows} golden requests failed "
                       f"(error rate {quality.error_rate:.3f} > {thresholds.max_error_rate:.3f}): {quality.first_error}")
    if len(quality.leak_findings) > thresholds.leak_findings_allowed:
        kinds = sorted({f["kind"] for f in quality.leak_findings})
        reasons.append(f"{len(quality.leak_findings)} PII/canary finding(s) in live answers ({', '.join(kinds)})")
    drop = None
    if baseline is not None:
        drop = baseline.accuracy - quality.accuracy
        if drop > thresholds.max_golden_accuracy_drop + 1e-12:
            reasons.append(f"golden accuracy {quality.accuracy:.3f} is {drop:.3f} below the baseline "
                           f"{baseline.accuracy:.3f} ({baseline.source}; allowed drop "
                           f"{thresholds.max_golden_accuracy_drop:.3f})")
    return Verdict(passed=not reasons, reasons=reasons, baseline=baseline, drop=drop,
                   established_baseline=baseline is None and not reasons)
