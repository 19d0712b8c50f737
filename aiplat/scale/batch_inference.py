"""Batch inference: tickets scored by a model's live adapter through vLLM's OpenAI API, in Ray Data
batches (aiplat.scale.ray_cluster.ordered_map), results in ticket order.

Each Ray actor holds one HTTP client and sends its batch's requests `concurrency` at a time, so the
work spreads over the cluster's CPUs while vLLM batches the requests on its side. A ticket is asked
exactly as the fine-tune phrased it (aiplat.training.prompts, no features: what live_quality asks),
greedy, up to the end of the answer's category line, which is parsed into a category. A request that fails is kept as a row with its error
(never dropped); the caller decides whether a batch with failures may be written.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

import pandas as pd

from aiplat.scale.ray_cluster import RayCluster, ordered_map

# The ticket fields a prompt is made of (the rest of a redacted ticket never leaves the step).
PROMPT_FIELDS = ("ticket_id", "subject", "message")


@dataclass(frozen=True)
class ScoringTarget:
    """Where and how to ask: the live adapter on its base server (aiplat.operations.quality.Target's
    fields), the generation budget and the prompt format of the model's spec."""

    url: str
    served_model_name: str
    model_version: str
    headers: dict[str, str] = field(default_factory=dict, repr=False)  # may hold a bearer token
    max_tokens: int = 12  # the answer's first line, "category: <name>", is all a prediction needs
    timeout_s: float = 120.0
    concurrency: int = 4  # requests in flight per actor
    prompt_format: dict = field(default_factory=dict)  # PromptFormat.key() of the spec: what the fine-tune learned

    def to_json(self) -> str:
        return json.dumps(asdict(self))


@dataclass(frozen=True)
class Prediction:
    ticket_id: str
    category: str | None  # None when the request failed or the answer named no category
    answer: str
    status: int  # HTTP status; 0 = no answer (connection error, timeout)
    latency_ms: float
    prompt_tokens: int
    completion_tokens: int
    error: str = ""


class AskBatches:
    """A Ray Data transform: one HTTP client per actor; each batch's tickets (JSON rows) asked
    `concurrency` at a time; each result a Prediction as JSON."""

    def __init__(self, target_json: str) -> None:
        import httpx

        self.target = ScoringTarget(**json.loads(target_json))
        self.client = httpx.Client(limits=httpx.Limits(max_connections=self.target.concurrency))

    def __call__(self, batch: dict) -> dict:
        rows = [json.loads(item) for item in batch["item"]]
        with ThreadPoolExecutor(self.target.concurrency) as pool:
            predictions = list(pool.map(self._ask, rows))
        return {"out": [json.dumps(asdict(p)) for p in predictions]}

    def _ask(self, row: dict) -> Prediction:
        import httpx

        from aiplat.evaluation import metrics
        from aiplat.training import prompts

        t = self.target
        fmt = prompts.PromptFormat(**t.prompt_format) if t.prompt_format else None
        # Generation stops at the end of the category line: the suggested reply the fine-tune also
        # learned is not needed here, and cutting it makes a batch several times cheaper.
        body = {"model": t.served_model_name, "messages": prompts.messages(row, [], fmt), "max_tokens": t.max_tokens,
                "temperature": 0.0, "stop": ["\n"]}
        start = time.perf_counter()
        try:
            response = self.client.post(f"{t.url.rstrip('/')}/v1/chat/completions", json=body, headers=t.headers,
                                        timeout=t.timeout_s)
            latency = (time.perf_counter() - start) * 1000
            if response.status_code != 200:
                return Prediction(row["ticket_id"], None, "", response.status_code, latency, 0, 0,
                                  f"HTTP {response.status_code}: {response.text[:200]}")
            data = response.json()
            text = data["choices"][0]["message"]["content"] or ""
            usage = data.get("usage") or {}
        except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError) as e:
            return Prediction(row["ticket_id"], None, "", 0, (time.perf_counter() - start) * 1000, 0, 0,
                              f"{type(e).__name__}: {e}")
        category = metrics.normalize_prediction(prompts.parse_answer(text)["category"])
        return Prediction(row["ticket_id"], None if category == metrics.UNPARSED else category, text, 200, latency,
                          int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0))


@dataclass(frozen=True)
class Scored:
    predictions: list[Prediction]
    seconds: float

    @property
    def failed(self) -> list[Prediction]:
        return [p for p in self.predictions if p.status != 200]

    @property
    def tickets_per_s(self) -> float:
        return len(self.predictions) / self.seconds if self.seconds > 0 else 0.0

    def frame(self) -> pd.DataFrame:
        columns = list(Prediction.__dataclass_fields__)
        return pd.DataFrame([asdict(p) for p in self.predictions], columns=columns)


def open_tickets(tickets: pd.DataFrame) -> pd.DataFrame:
    """The tickets not yet resolved (no `resolved_at`), one row per ticket id (the last one landed)."""
    if tickets.empty:
        return tickets
    open_ = tickets[tickets["resolved_at"].isna()] if "resolved_at" in tickets.columns else tickets
    return open_.drop_duplicates("ticket_id", keep="last")


def score_tickets(tickets: pd.DataFrame, target: ScoringTarget, cluster: RayCluster, *, workers: int = 1,
                  batch_size: int = 32, progress: Callable[[int, int], None] | None = None) -> Scored:
    """Every row of `tickets` asked of `target` on `cluster` by `workers` actors; predictions in the
    order of `tickets`. A Ray failure raises RayMapError; a failed request is a row with its error."""
    items: Sequence[str] = [json.dumps({k: _plain(row.get(k)) for k in PROMPT_FIELDS})
                            for row in tickets.to_dict("records")]
    start = time.perf_counter()
    out = ordered_map(cluster, items, AskBatches, (target.to_json(),), workers=workers, batch_size=batch_size,
                      progress=progress)
    return Scored([Prediction(**o) for o in out], time.perf_counter() - start)


def _plain(value):
    if value is None or (isinstance(value, float) and value != value):
        return None
    return str(value)
