"""Evaluate one model folder: test-split triage and replies, golden set, leak probe, speed."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from aiplat.evaluation import generate as gen
from aiplat.evaluation import leak, metrics
from aiplat.evaluation.golden import GoldenSet, load_golden
from aiplat.evaluation.settings import EvalSettings
from aiplat.models.manifest import compute_manifest
from aiplat.provenance import frame_hash
from aiplat.training import prompts
from aiplat.training.data import feature_columns, normalize_columns

Progress = Callable[[str], None]


class EvalDataError(ValueError):
    """The evaluation data breaks its contract; the message names the records and the reason."""


@dataclass(frozen=True)
class EvalInputs:
    test_rows: list[dict]
    features: list[str]
    test_sha256: str
    golden: GoldenSet | None
    probes: list[dict]
    fmt: prompts.PromptFormat = prompts.TRIAGE
    training_set_sha256: str = ""

    def describe(self) -> dict:
        out = {
            "test": {"rows": len(self.test_rows), "sha256": self.test_sha256, "features": self.features,
                     "training_set_sha256": self.training_set_sha256},
            "leak_probe": {"prompts": len(self.probes)},
            "prompt": self.fmt.key(),
        }
        if self.golden is not None:
            out["golden"] = {"version": self.golden.version, "rows": len(self.golden.rows), "sha256": self.golden.sha256}
        return out


def prepare_inputs(training_set: pd.DataFrame, settings: EvalSettings,
                   fmt: prompts.PromptFormat | None = None) -> EvalInputs:
    """The held-out test rows (first max_test_examples by ticket_id), golden set (classification)
    and probes."""
    from aiplat.training.data import training_set_hash

    fmt = fmt or prompts.TRIAGE
    generation = fmt.task == "generation"
    df = normalize_columns(training_set)
    missing = [c for c in ("ticket_id", "subject", "message", "category", "agent_reply", "split") if c not in df.columns]
    if missing:
        raise EvalDataError(f"training set lacks columns {missing} needed for evaluation; it has {list(df.columns)}")
    test = df[df["split"] == "test"].sort_values("ticket_id", kind="stable").head(settings.max_test_examples)
    if test.empty:
        raise EvalDataError(f"training set has no rows with split == 'test' ({len(df)} rows); nothing to evaluate on")
    problems = [] if generation else [
        f"ticket {tid!r}: category {cat!r} is not one of {metrics.LABELS}"
        for tid, cat in zip(test["ticket_id"], test["category"])
        if cat not in metrics.LABELS
    ]
    if problems:
        raise EvalDataError("test split rejected:\n  " + "\n  ".join(problems[:10]))
    features = feature_columns(df)
    columns = ["ticket_id", "subject", "message", "category", "agent_reply", *features]
    if fmt.grounded:
        if prompts.PASSAGES_COLUMN not in df.columns:
            raise EvalDataError(f"a grounded model's training set needs the {prompts.PASSAGES_COLUMN!r} column")
        columns.append(prompts.PASSAGES_COLUMN)
    rows = test[columns].to_dict("records")
    return EvalInputs(
        test_rows=rows,
        features=features,
        test_sha256=frame_hash(test[columns].reset_index(drop=True)),
        golden=None if generation else load_golden(settings.golden_version),
        probes=leak.probe_rows(settings.canaries),
        fmt=fmt,
        training_set_sha256=training_set_hash(training_set),
    )


def evaluate_model(
    folder: Path, inputs: EvalInputs, settings: EvalSettings, progress: Progress | None = None,
    base: Path | None = None, base_sha256: str | None = None,
) -> dict:
    """Evaluate the model `folder`, or the LoRA adapter `folder` over the base model `base`; the
    result's `model_sha256` is the folder's (the adapter's), `base_model_sha256` the base's (hashed
    here unless the caller already verified it: `base_sha256`)."""
    say = progress or (lambda _m: None)
    folder = Path(folder)
    model_sha256 = compute_manifest(folder).folder_sha256
    say(f"loading {folder}" + (f" over the base model {base}" if base is not None else ""))
    lm = gen.load(folder, settings.threads, base=Path(base) if base is not None else None)
    result = _evaluate(lm, model_sha256, inputs, settings, say)
    if base is not None:
        result = {**result, "evaluated": "adapter",
                  "base_model_sha256": base_sha256 or compute_manifest(Path(base)).folder_sha256}
    return result


def _evaluate(lm, model_sha256: str, inputs: EvalInputs, settings: EvalSettings, say: Progress) -> dict:
    run = lambda rows: gen.generate(  # noqa: E731
        lm, rows, inputs.features, settings.max_new_tokens, settings.batch_size, settings.max_prompt_tokens,
        fmt=inputs.fmt,
    )
    if inputs.fmt.task == "generation":
        return _evaluate_drafts(lm, model_sha256, run, inputs, settings, say)
    say(f"generating {len(inputs.test_rows)} test answers")
    test_out = run(inputs.test_rows)
    say(f"generating {len(inputs.golden.rows)} golden answers")
    golden_out = run(inputs.golden.rows)
    say(f"running {len(inputs.probes)} leak probes")
    probe_out = run(inputs.probes)
    latencies: list[float] = []
    if settings.latency_samples:
        sample = inputs.test_rows[: settings.latency_samples]
        gen.latencies_ms(lm, sample[:1], inputs.features, settings.max_new_tokens, settings.max_prompt_tokens,
                         inputs.fmt)  # warm-up
        latencies = gen.latencies_ms(lm, sample, inputs.features, settings.max_new_tokens, settings.max_prompt_tokens,
                                     inputs.fmt)

    parsed = [prompts.parse_answer(t) for t in test_out.texts]
    y_true = [r["category"] for r in inputs.test_rows]
    y_pred = [metrics.normalize_prediction(p["category"]) for p in parsed]
    rouge = [metrics.rouge_l(p["reply"], prompts.short_reply(r["agent_reply"])) for p, r in zip(parsed, inputs.test_rows)]
    g_true = [r["category"] for r in inputs.golden.rows]
    g_pred = [metrics.normalize_prediction(prompts.parse_answer(t)["category"]) for t in golden_out.texts]

    findings: list[dict] = []
    for rows, out, id_field in (
        (inputs.probes, probe_out, "id"),
        (inputs.test_rows, test_out, "ticket_id"),
        (inputs.golden.rows, golden_out, "id"),
    ):
        for row, text in zip(rows, out.texts):
            findings += [f.to_dict() for f in leak.scan_text(text, str(row[id_field]), settings.canaries)]

    total_seconds = test_out.seconds + golden_out.seconds + probe_out.seconds
    total_tokens = test_out.new_tokens + golden_out.new_tokens + probe_out.new_tokens
    return {
        "model_sha256": model_sha256,
        "test": {
            "rows": len(y_true),
            "accuracy": metrics.accuracy(y_true, y_pred),
            "macro_f1": metrics.macro_f1(y_true, y_pred),
            "per_class_f1": metrics.per_class_f1(y_true, y_pred),
            "parse_rate": sum(p != metrics.UNPARSED for p in y_pred) / len(y_pred),
            "reply_rouge_l": metrics.mean(rouge),
            "confusion": metrics.confusion_matrix(y_true, y_pred),
        },
        "golden": {
            "rows": len(g_true),
            "accuracy": metrics.accuracy(g_true, g_pred),
            "macro_f1": metrics.macro_f1(g_true, g_pred),
            "misses": [r["id"] for r, p in zip(inputs.golden.rows, g_pred) if p != r["category"]],
        },
        "leak": {"passed": not findings, "prompts": len(inputs.probes), "findings": findings},
        "speed": {
            "latency_p50_ms": metrics.percentile(latencies, 50),
            "latency_p95_ms": metrics.percentile(latencies, 95),
            "tokens_per_second": total_tokens / total_seconds if total_seconds > 0 else 0.0,
            "generated_tokens": total_tokens,
            "generation_seconds": total_seconds,
        },
        "samples": [
            {
                "ticket_id": r["ticket_id"],
                "expected": r["category"],
                "predicted": p,
                "output": leak.redact_findings(t, settings.canaries)[:300],
            }
            for r, p, t in list(zip(inputs.test_rows, y_pred, test_out.texts))[: settings.samples_in_report]
        ],
    }


def groundedness(draft: str, passages: list[str]) -> float:
    """How much of the draft's wording comes from the retrieved passages: the best ROUGE-L precision
    of the draft against one passage (0 when there is none). A draft that ignores the passages
    scores near 0; one that reuses a passage's instructions scores high."""
    best = 0.0
    draft_tokens = metrics.tokens(draft or "")
    if not draft_tokens:
        return 0.0
    for passage in passages:
        best = max(best, metrics.lcs_length(draft_tokens, metrics.tokens(passage)) / len(draft_tokens))
    return best


def _evaluate_drafts(lm, model_sha256: str, run, inputs: EvalInputs, settings: EvalSettings, say: Progress) -> dict:
    """Generation: drafts scored against the held-out agent replies (ROUGE-L), their use of the
    retrieved passages (groundedness), and the leak probe on every output."""
    say(f"drafting {len(inputs.test_rows)} held-out replies")
    test_out = run(inputs.test_rows)
    say(f"running {len(inputs.probes)} leak probes")
    probe_out = run(inputs.probes)
    latencies: list[float] = []
    if settings.latency_samples:
        sample = inputs.test_rows[: settings.latency_samples]
        gen.latencies_ms(lm, sample[:1], inputs.features, settings.max_new_tokens, settings.max_prompt_tokens, inputs.fmt)
        latencies = gen.latencies_ms(lm, sample, inputs.features, settings.max_new_tokens, settings.max_prompt_tokens,
                                     inputs.fmt)
    drafts = [t.strip() for t in test_out.texts]
    rouge = [metrics.rouge_l(d, prompts.short_reply(r["agent_reply"])) for d, r in zip(drafts, inputs.test_rows)]
    grounded = [groundedness(d, prompts.passages_of(r)) for d, r in zip(drafts, inputs.test_rows)]
    findings: list[dict] = []
    for rows, out, id_field in ((inputs.probes, probe_out, "id"), (inputs.test_rows, test_out, "ticket_id")):
        for row, text in zip(rows, out.texts):
            findings += [f.to_dict() for f in leak.scan_text(text, str(row[id_field]), settings.canaries)]
    total_seconds = test_out.seconds + probe_out.seconds
    total_tokens = test_out.new_tokens + probe_out.new_tokens
    return {
        "task": "generation",
        "model_sha256": model_sha256,
        "test": {
            "rows": len(drafts),
            "reply_rouge_l": metrics.mean(rouge),
            "groundedness": metrics.mean(grounded),
            "empty_drafts": sum(1 for d in drafts if not d),
        },
        "leak": {"passed": not findings, "prompts": len(inputs.probes), "findings": findings},
        "speed": {
            "latency_p50_ms": metrics.percentile(latencies, 50),
            "latency_p95_ms": metrics.percentile(latencies, 95),
            "tokens_per_second": total_tokens / total_seconds if total_seconds > 0 else 0.0,
            "generated_tokens": total_tokens,
            "generation_seconds": total_seconds,
        },
        "samples": [
            {"ticket_id": r["ticket_id"], "expected": prompts.short_reply(r["agent_reply"])[:200],
             "predicted": f"rouge_l={s:.2f} grounded={g:.2f}",
             "output": leak.redact_findings(t, settings.canaries)[:300]}
            for r, s, g, t in list(zip(inputs.test_rows, rouge, grounded, test_out.texts))[: settings.samples_in_report]
        ],
    }


def headline(result: dict | None) -> dict[str, float] | None:
    """The numbers the gate and the comparison table use."""
    if result is None:
        return None
    if result.get("task") == "generation":
        return {
            "reply_rouge_l": result["test"]["reply_rouge_l"],
            "groundedness": result["test"]["groundedness"],
            "leak_findings": float(len(result["leak"]["findings"])),
            "latency_p50_ms": result["speed"]["latency_p50_ms"],
            "tokens_per_second": result["speed"]["tokens_per_second"],
        }
    return {
        "accuracy": result["test"]["accuracy"],
        "macro_f1": result["test"]["macro_f1"],
        "parse_rate": result["test"]["parse_rate"],
        "reply_rouge_l": result["test"]["reply_rouge_l"],
        "golden_accuracy": result["golden"]["accuracy"],
        "leak_findings": float(len(result["leak"]["findings"])),
        "latency_p50_ms": result["speed"]["latency_p50_ms"],
        "tokens_per_second": result["speed"]["tokens_per_second"],
    }
