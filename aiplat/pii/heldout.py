"""Scoring the scanner on labeled text the team did not write, and on the demo corpus, separately.

The held-out set comes from presidio-evaluator's own templates and fake-data generator
(scripts/setup_pii_eval_env.sh builds its environment, scripts/generate_pii_eval_set.py writes the
JSONL). Its entity names are mapped to the platform's (STREET_ADDRESS -> POSTAL_ADDRESS, GPE ->
LOCATION); labels of types the platform does not redact (ORGANIZATION, DATE_TIME, AGE, ...) are
dropped, so that a finding on one of them counts as a false positive.

Per entity: recall (a value counts as found when findings of its type cover >= 90% of it),
precision (quality.score's rule), F2, and the leak rate: the share of labeled values that appear
verbatim in the redacted text (the redaction's own placeholders taken out first, so a digest that
happens to contain "42" is not a leak of the building number "42").
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from aiplat.pii.config import PiiConfig
from aiplat.pii.quality import EntityScore, EvalExample, score
from aiplat.synth import CREDIT_CARD, EMAIL_ADDRESS, IBAN_CODE, IP_ADDRESS, LOCATION, PERSON, PHONE_NUMBER, \
    POSTAL_ADDRESS, US_SSN, Span

ENTITY_MAP = {"STREET_ADDRESS": POSTAL_ADDRESS, "GPE": LOCATION, "PERSON": PERSON, "PHONE_NUMBER": PHONE_NUMBER,
              "CREDIT_CARD": CREDIT_CARD, "EMAIL_ADDRESS": EMAIL_ADDRESS, "IBAN_CODE": IBAN_CODE,
              "US_SSN": US_SSN, "IP_ADDRESS": IP_ADDRESS}
# The goals: leak rate at most 1% for pattern entities, 10% for names and addresses.
LEAK_GOALS = {PHONE_NUMBER: 0.01, CREDIT_CARD: 0.01, EMAIL_ADDRESS: 0.01, IBAN_CODE: 0.01, US_SSN: 0.01,
              IP_ADDRESS: 0.01, PERSON: 0.10, POSTAL_ADDRESS: 0.10}


class LabeledSetError(ValueError):
    pass


def load_labeled(path: Path) -> list[EvalExample]:
    """Examples with the spans of the entities the platform redacts; a bad line names itself."""
    examples = []
    with path.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                text = rec["text"]
                spans = []
                for s in rec["spans"]:
                    start, end, entity = int(s["start"]), int(s["end"]), str(s["entity"])
                    if not (0 <= start < end <= len(text)):
                        raise LabeledSetError(f"span [{start}, {end}) outside a text of {len(text)} characters")
                    if entity in ENTITY_MAP:
                        spans.append(Span(start, end, ENTITY_MAP[entity]))
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
                raise LabeledSetError(f"{path}:{n}: not a labeled record ({type(e).__name__}: {e})") from None
            if not isinstance(text, str):
                raise LabeledSetError(f"{path}:{n}: `text` is not a string")
            examples.append(EvalExample(text, tuple(spans)))
    if not examples:
        raise LabeledSetError(f"{path}: no labeled records")
    return examples


@dataclass(frozen=True)
class HeldoutScore:
    score: EntityScore
    leaked: int

    @property
    def leak_rate(self) -> float:
        return self.leaked / self.score.support if self.score.support else 0.0


def _strip_placeholders(text: str) -> str:
    from aiplat.pii.redact import PLACEHOLDER_RE

    return PLACEHOLDER_RE.sub("<>", text)


def score_predictions(examples: Sequence[EvalExample], predictions, config: PiiConfig,
                      pseudonymizer) -> dict[str, HeldoutScore]:
    from aiplat.pii.redact import redact_text

    # Findings on out-of-scope labels ("Acme Corp" as PERSON) are false positives: score() forgives a
    # finding inside a labeled value of another type, so those labels are not shown to it.
    scores = score(examples, predictions)
    leaked: dict[str, int] = {}
    for ex, preds in zip(examples, predictions, strict=True):
        redacted = _strip_placeholders(redact_text(ex.text, preds, config, pseudonymizer))
        for span in ex.spans:
            if ex.text[span.start:span.end] in redacted:
                leaked[span.entity] = leaked.get(span.entity, 0) + 1
    return {e: HeldoutScore(s, leaked.get(e, 0)) for e, s in scores.items()}


DEMO_TEXT_FIELDS = ("subject", "message", "agent_reply", "title", "body", "product")


def demo_examples(seed: int = 7, records: int = 400) -> list[EvalExample]:
    """Every text field of generated demo tickets, with their exact labels (the corpus the team wrote)."""
    from aiplat.demo_data import generate_corpus

    corpus = generate_corpus(seed=seed, tickets=records, kb=max(1, records // 10))
    out = []
    for rec in corpus.records:
        for field in DEMO_TEXT_FIELDS:
            value = rec.record.get(field)
            if isinstance(value, str) and value:
                out.append(EvalExample(value, tuple(rec.spans.get(field, ()))))
    return out


def kept_readable(examples: Sequence[EvalExample], predictions) -> dict[str, int]:
    """On demo text: how many product names, amounts, order numbers and dates a finding touched."""
    import re

    from aiplat.demo_data import PRODUCTS

    kinds = {
        "product names": re.compile("|".join(re.escape(p) for p in sorted(PRODUCTS, key=len, reverse=True))),
        "amounts": re.compile(r"[$€£]\s?\d[\d,]*(?:\.\d{2})?"),
        "order numbers": re.compile(r"\bA\d{6}\b|\bRMA-\d{5}\b|\b1Z\d{14}\b"),
        "dates": re.compile(r"\b\d{4}-\d{2}-\d{2}\b|\b\d{1,2}/\d{1,2}/\d{2,4}\b|\b(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|"
                            r"Sep|Oct|Nov|Dec)[a-z]*\.? \d{1,2}(?:, \d{4})?\b"),
    }
    seen = {k: 0 for k in kinds}
    hit = {k: 0 for k in kinds}
    for ex, preds in zip(examples, predictions, strict=True):
        for kind, rx in kinds.items():
            for m in rx.finditer(ex.text):
                if any(s.start <= m.start() and m.end() <= s.end for s in ex.spans):
                    continue  # a date of birth is PII, not a date to keep
                seen[kind] += 1
                hit[kind] += any(f.start < m.end() and m.start() < f.end for f in preds)
    return {**{f"{k} seen": v for k, v in seen.items()}, **{f"{k} redacted": v for k, v in hit.items()}}


def markdown_table(scores: dict[str, HeldoutScore], title: str) -> str:
    lines = [title, "", "| entity | support | recall | precision | F2 | leak rate | leak goal | met |",
             "|---|---:|---:|---:|---:|---:|---:|:---:|"]
    for e, h in scores.items():
        s = h.score
        if not s.support and not s.predicted:
            continue
        goal = LEAK_GOALS.get(e)
        met = "" if goal is None or not s.support else ("yes" if h.leak_rate <= goal else "NO")
        lines.append(f"| {e} | {s.support} | {s.recall:.3f} | {s.precision:.3f} | {s.f2:.3f} | {h.leak_rate:.3f} | "
                     f"{'' if goal is None else f'{goal:.2f}'} | {met} |")
    return "\n".join(lines)


def goals_met(scores: dict[str, HeldoutScore]) -> dict[str, bool]:
    return {e: scores[e].leak_rate <= g for e, g in LEAK_GOALS.items() if e in scores and scores[e].score.support}


# --- generating the held-out set (in presidio-evaluator's own environment) ------------------------

EVAL_ENV_SETUP = "scripts/setup_pii_eval_env.sh"


def eval_env_python() -> Path:
    from aiplat.config import local_paths

    return local_paths().venvs / "pii-eval" / "bin" / "python"


def generate_labeled_set(out: Path, size: int, seed: int, timeout_s: float = 600.0) -> Path:
    """Run scripts/generate_pii_eval_set.py in the presidio-evaluator environment; the child gets an
    explicit environment (no inherited secrets) and nothing of the platform on its path."""
    import subprocess

    from aiplat.config import project_root

    python = eval_env_python()
    if not python.exists():
        raise LabeledSetError(f"no presidio-evaluator environment at {python.parent.parent}; "
                              f"build it with {EVAL_ENV_SETUP} (or pass --labeled FILE)")
    script = project_root() / "scripts" / "generate_pii_eval_set.py"
    out.parent.mkdir(parents=True, exist_ok=True)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(out.parent), "LANG": "C.UTF-8", "PYTHONHASHSEED": "0",
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run([str(python), str(script), "--out", str(out), "--size", str(size), "--seed", str(seed)],
                          env=env, cwd=str(out.parent), capture_output=True, text=True, timeout=timeout_s)
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-5:])
        raise LabeledSetError(f"generating the held-out set failed (exit {proc.returncode}):\n{tail}")
    return out


# --- the whole evaluation ---------------------------------------------------------------------------

# Recognizers whose contribution the ablation measures: each is switched off alone.
ABLATION = ("AnyRegionPhoneRecognizer", "UsPhoneRecognizer", "LuhnCardRecognizer", "StreetAddressRecognizer",
            "GazetteerNameRecognizer", "SalutationNameRecognizer", "SpacyRecognizer")


@dataclass(frozen=True)
class EvaluationReport:
    heldout: dict[str, HeldoutScore]
    demo: dict[str, HeldoutScore]
    readable: dict[str, int]
    ablation: dict[str, dict[str, HeldoutScore]]
    heldout_texts: int
    demo_texts: int
    markdown: str

    @property
    def goals(self) -> dict[str, bool]:
        return goals_met(self.heldout)


def _scan(config: PiiConfig, texts: list[str], workers: int):
    from aiplat.pii.engine import Scanner

    with Scanner(config, workers=workers) as scanner:
        return scanner.scan(texts)


def ablation_table(full: dict[str, HeldoutScore], ablation: dict[str, dict[str, HeldoutScore]]) -> str:
    entities = [e for e in LEAK_GOALS if e in full and full[e].score.support]
    lines = ["| recognizer switched off | " + " | ".join(entities) + " |",
             "|---|" + "---:|" * len(entities),
             "| (none: the platform's set) | " + " | ".join(f"{full[e].leak_rate:.3f}" for e in entities) + " |"]
    for name, scores in ablation.items():
        cells = []
        for e in entities:
            rate = scores[e].leak_rate if e in scores else 0.0
            delta = rate - full[e].leak_rate
            cells.append(f"{rate:.3f}" + (f" (+{delta:.3f})" if delta > 0.0005 else ""))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_evaluation(labeled: Path, config: PiiConfig, pseudonymizer, demo_records: int = 400, workers: int = 1,
                   ablation: bool = False) -> EvaluationReport:
    examples = load_labeled(labeled)
    texts = [e.text for e in examples]
    heldout = score_predictions(examples, _scan(config, texts, workers), config, pseudonymizer)
    demo = demo_examples(records=demo_records)
    demo_predictions = _scan(config, [e.text for e in demo], workers)
    demo_scores = score_predictions(demo, demo_predictions, config, pseudonymizer)
    readable = kept_readable(demo, demo_predictions)
    ablations: dict[str, dict[str, HeldoutScore]] = {}
    if ablation:
        for name in ABLATION:
            off = config.model_copy(update={"disabled_recognizers": (*config.disabled_recognizers, name)})
            ablations[name] = score_predictions(examples, _scan(off, texts, workers), off, pseudonymizer)
    parts = [
        markdown_table(heldout, f"Held-out: {len(examples)} texts generated by presidio-evaluator from its own "
                                f"templates and fake data ({labeled.name}); scanner `{config.dataset}` configuration, "
                                f"NER `{config.nlp.model_name}`."),
        "",
        markdown_table(demo_scores, f"Demo corpus (written by the team; reported separately): {len(demo)} texts."),
        "",
        "Kept readable on the demo corpus (a finding touching one counts as redacted): " + ", ".join(
            f"{k.removesuffix(' seen')} {readable[k.replace(' seen', ' redacted')]}/{v} redacted"
            for k, v in readable.items() if k.endswith(" seen")) + ".",
    ]
    if ablations:
        parts += ["", "What each recognizer adds (held-out leak rate with it switched off):", "",
                  ablation_table(heldout, ablations)]
    return EvaluationReport(heldout, demo_scores, readable, ablations, len(examples), len(demo), "\n".join(parts))
