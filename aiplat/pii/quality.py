"""How good the scanner is: a labeled evaluation set and precision / recall / F2 per entity type.

The evaluation set is generated like the demo corpus (templates + seeded Faker, exact spans),
with two additions: sentences phrased differently from the demo templates, and near misses
(order numbers, tracking numbers, recent dates, versions) that must NOT be reported.

Matching: a labeled value counts as found when findings of the same type cover at least 90% of
its characters (a half-redacted name still leaks). A finding is a true positive when it overlaps a
labeled value of its type; a finding that lies entirely inside a labeled value of another type
(a city inside a postal address, a name inside an e-mail address) is redundant rather than
wrong and is not counted; any other finding is a false positive.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from aiplat.pii.engine import Finding
from aiplat.synth import ALL_ENTITIES, PATTERN_ENTITIES, PERSON, Labeled, PiiFaker, Slots, Span, fill

COVERAGE = 0.9
TARGETS = {**{e: 0.99 for e in PATTERN_ENTITIES}, PERSON: 0.90}

EVAL_TEMPLATES = (
    "Please contact {PERSON} regarding the escalation.",
    "{PERSON} called about the refund yesterday and asked for a callback.",
    "Customer {PERSON} reported the issue, see ticket history.",
    "I spoke to {PERSON} from your team and to {PERSON} from billing.",
    "Send the documents to {EMAIL_ADDRESS}, cc {EMAIL_ADDRESS}.",
    "Contact: {EMAIL_ADDRESS}",
    "Call me at {PHONE_NUMBER} please.",
    "Phone: {PHONE_NUMBER} / alt {PHONE_NUMBER}",
    "Card number {CREDIT_CARD}, expiry 08/27.",
    "I used the card {CREDIT_CARD} for this purchase.",
    "SSN: {US_SSN}",
    "My social security number is {US_SSN}.",
    "Wire it to IBAN {IBAN_CODE} please.",
    "Account {IBAN_CODE} was debited twice.",
    "Server at {IP_ADDRESS} refuses connections from {IP_ADDRESS}.",
    "Login from IP {IP_ADDRESS} was blocked.",
    "DOB: {DATE_OF_BIRTH}",
    "Date of birth {DATE_OF_BIRTH}, please verify.",
    "I was born {DATE_OF_BIRTH}.",
    "Ship to {POSTAL_ADDRESS}.",
    "My new address is {POSTAL_ADDRESS}, effective next week.",
    "Mailing address: {POSTAL_ADDRESS}",
    "I relocated to {LOCATION} last month.",
    "Our office in {LOCATION} will handle the return.",
)

NEGATIVES = (
    "Order A{num6} shipped on 2025-03-14 with tracking 1Z{num14}.",
    "Firmware 2.{d}.{d} fixes error E{num3} on most devices.",
    "The invoice total was ${num3}.{num2}, due by 2025-04-30.",
    "Reference number {num8} was created on 03/02/2025.",
    "Please restart the router and wait 30 seconds before retrying.",
    "Version 10.4.2 is available for download from the app store.",
    "The warranty covers 24 months from the purchase date.",
    "Error 0x80070005 appears when the update starts.",
)


@dataclass(frozen=True)
class EvalExample:
    text: str
    spans: tuple[Span, ...]


def build_eval_set(seed: int = 1234, size: int = 1200) -> list[EvalExample]:
    """Deterministic labeled texts: demo-style tickets, rephrased templates and near misses."""
    from aiplat.demo_data import generate_corpus

    gen = PiiFaker(seed)
    rng = gen.rng
    out: list[EvalExample] = []
    third = size // 3
    corpus = generate_corpus(seed=seed, tickets=third, kb=max(1, third // 10))
    for rec in corpus.records:
        for field, spans in rec.spans.items():
            if len(out) >= third:
                break
            out.append(EvalExample(rec.record[field], tuple(spans)))
    while len(out) < size - size // 6:
        labeled: Labeled = fill(rng.choice(EVAL_TEMPLATES), Slots(gen))
        out.append(EvalExample(labeled.text, labeled.spans))
    while len(out) < size:
        nums = {"num6": str(rng.randint(100000, 999999)), "num14": str(rng.randint(10**13, 10**14 - 1)),
                "num3": str(rng.randint(100, 999)), "num2": f"{rng.randint(0, 99):02d}", "d": str(rng.randint(0, 9)),
                "num8": str(rng.randint(10**7, 10**8 - 1))}
        out.append(EvalExample(rng.choice(NEGATIVES).format(**nums), ()))
    return out


@dataclass(frozen=True)
class EntityScore:
    entity: str
    support: int
    found: int
    predicted: int
    true_positive: int
    false_positive: int

    @property
    def recall(self) -> float:
        return self.found / self.support if self.support else 1.0

    @property
    def precision(self) -> float:
        counted = self.true_positive + self.false_positive
        return self.true_positive / counted if counted else 1.0

    @property
    def f2(self) -> float:
        p, r = self.precision, self.recall
        return 5 * p * r / (4 * p + r) if (p + r) else 0.0


def _covered(span: Span, findings: Sequence[Finding]) -> float:
    chars = set()
    for f in findings:
        if f.entity_type == span.entity:
            chars.update(range(max(span.start, f.start), min(span.end, f.end)))
    return len(chars) / (span.end - span.start)


def score(examples: Sequence[EvalExample], predictions: Sequence[Sequence[Finding]]) -> dict[str, EntityScore]:
    counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for ex, preds in zip(examples, predictions, strict=True):
        for span in ex.spans:
            counts[span.entity]["support"] += 1
            counts[span.entity]["found"] += _covered(span, preds) >= COVERAGE
        for f in preds:
            c = counts[f.entity_type]
            c["predicted"] += 1
            if any(s.entity == f.entity_type and f.start < s.end and s.start < f.end for s in ex.spans):
                c["tp"] += 1
            elif any(s.start <= f.start and f.end <= s.end for s in ex.spans):
                pass  # inside another labeled value: redundant, not a leak and not noise
            else:
                c["fp"] += 1
    entities = [e for e in ALL_ENTITIES if e in counts] + sorted(set(counts) - set(ALL_ENTITIES))
    return {e: EntityScore(e, counts[e]["support"], counts[e]["found"], counts[e]["predicted"], counts[e]["tp"],
                           counts[e]["fp"]) for e in entities}


def meets_targets(scores: dict[str, EntityScore]) -> dict[str, bool]:
    return {e: scores[e].recall >= t for e, t in TARGETS.items() if e in scores and scores[e].support}


def markdown_report(scores: dict[str, EntityScore], examples: int, model: str) -> str:
    lines = [
        f"Evaluation set: {examples} labeled texts (templates + Faker, exact spans); NER model `{model}`.",
        "",
        "| entity | support | recall | precision | F2 | target recall | met |",
        "|---|---:|---:|---:|---:|---:|:---:|",
    ]
    for e, s in scores.items():
        target = TARGETS.get(e)
        met = "" if target is None or not s.support else ("yes" if s.recall >= target else "NO")
        lines.append(f"| {e} | {s.support} | {s.recall:.3f} | {s.precision:.3f} | {s.f2:.3f} | "
                     f"{'' if target is None else f'{target:.2f}'} | {met} |")
    return "\n".join(lines)


def plot_report(scores: dict[str, EntityScore], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [e for e, s in scores.items() if s.support or s.predicted]
    x = range(len(names))
    fig, ax = plt.subplots(figsize=(10, 4))
    w = 0.27
    ax.bar([i - w for i in x], [scores[n].precision for n in names], w, label="precision")
    ax.bar(list(x), [scores[n].recall for n in names], w, label="recall")
    ax.bar([i + w for i in x], [scores[n].f2 for n in names], w, label="F2")
    ax.set_xticks(list(x), names, rotation=30, ha="right")
    ax.set_ylim(0, 1.05)
    ax.axhline(0.99, color="grey", lw=0.8, ls="--")
    ax.set_title("PII scanner quality per entity type")
    ax.legend(loc="lower left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


@dataclass(frozen=True)
class QualityReport:
    scores: dict[str, EntityScore]
    examples: int
    model: str
    markdown: str
    markdown_path: Path
    plot_path: Path
    targets_met: dict[str, bool]

    def metadata(self) -> dict[str, float | int]:
        """Flat numbers for asset metadata (no texts, no values)."""
        out: dict[str, float | int] = {"eval_examples": self.examples}
        for e, s in self.scores.items():
            out[f"{e}/recall"] = round(s.recall, 4)
            out[f"{e}/precision"] = round(s.precision, 4)
            out[f"{e}/f2"] = round(s.f2, 4)
            out[f"{e}/support"] = s.support
        return out


def evaluate_scanner(out_dir: Path, size: int = 1200, seed: int = 1234, workers: int = 1,
                     config=None) -> QualityReport:
    """Generate the labeled set, scan it with the tickets configuration, write report.md + quality.png."""
    from aiplat.pii.config import dataset_config
    from aiplat.pii.engine import Scanner

    config = config or dataset_config("tickets")
    examples = build_eval_set(seed=seed, size=size)
    with Scanner(config, workers=workers) as scanner:
        predictions = scanner.scan([e.text for e in examples])
    scores = score(examples, predictions)
    model = f"{config.nlp.engine}:{config.nlp.model_name}"
    markdown = markdown_report(scores, len(examples), model)
    out_dir.mkdir(parents=True, exist_ok=True)
    md_path = out_dir / "report.md"
    md_path.write_text("# PII scanner quality\n\n" + markdown + "\n", encoding="utf-8")
    plot_path = plot_report(scores, out_dir / "quality.png")
    return QualityReport(scores, len(examples), model, markdown, md_path, plot_path, meets_targets(scores))
