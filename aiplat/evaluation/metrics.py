"""Task metrics in plain Python: triage accuracy, macro-F1, confusion matrix, ROUGE-L for replies.

An unparseable answer (no `category: <label>` line, or a label outside the label set) is counted
as wrong: it is predicted as UNPARSED, which is never a true label.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import get_args

from aiplat.intake.schema import TicketCategory

LABELS: tuple[str, ...] = tuple(get_args(TicketCategory))
UNPARSED = "(unparsed)"

_WORD = re.compile(r"\w+", re.UNICODE)


def normalize_prediction(category: str | None, labels: Sequence[str] = LABELS) -> str:
    if category is None:
        return UNPARSED
    value = category.strip().lower()
    return value if value in labels else UNPARSED


def accuracy(y_true: Sequence[str], y_pred: Sequence[str]) -> float:
    if len(y_true) != len(y_pred):
        raise ValueError(f"{len(y_true)} labels but {len(y_pred)} predictions")
    if not y_true:
        return 0.0
    return sum(t == p for t, p in zip(y_true, y_pred)) / len(y_true)


def per_class_f1(y_true: Sequence[str], y_pred: Sequence[str]) -> dict[str, float]:
    """F1 of each label that occurs in the truth or in the (parsed) predictions."""
    classes = sorted({*y_true, *(p for p in y_pred if p != UNPARSED)})
    out: dict[str, float] = {}
    for c in classes:
        tp = sum(t == c and p == c for t, p in zip(y_true, y_pred))
        fp = sum(t != c and p == c for t, p in zip(y_true, y_pred))
        fn = sum(t == c and p != c for t, p in zip(y_true, y_pred))
        denominator = 2 * tp + fp + fn
        out[c] = 2 * tp / denominator if denominator else 0.0
    return out


def macro_f1(y_true: Sequence[str], y_pred: Sequence[str]) -> float:
    scores = per_class_f1(y_true, y_pred)
    return sum(scores.values()) / len(scores) if scores else 0.0


def confusion_matrix(y_true: Sequence[str], y_pred: Sequence[str], labels: Sequence[str] = LABELS) -> dict:
    """Rows are true labels, columns predicted labels plus UNPARSED."""
    columns = [*labels, UNPARSED]
    index = {c: i for i, c in enumerate(columns)}
    matrix = [[0] * len(columns) for _ in labels]
    for t, p in zip(y_true, y_pred):
        if t in index and t != UNPARSED:
            matrix[index[t]][index.get(p, index[UNPARSED])] += 1
    return {"labels": list(labels), "columns": columns, "matrix": matrix}


def tokens(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _lcs(a: Sequence[str], b: Sequence[str]) -> int:
    if not a or not b:
        return 0
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b, start=1):
            current.append(previous[j - 1] + 1 if x == y else max(previous[j], current[j - 1]))
        previous = current
    return previous[-1]


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence of two token lists."""
    return _lcs(a, b)


def rouge_l(candidate: str | None, reference: str) -> float:
    """ROUGE-L F1 on lower-cased word tokens (Lin, 2004, with beta = 1)."""
    cand, ref = tokens(candidate or ""), tokens(reference)
    lcs = _lcs(cand, ref)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(cand), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(q / 100 * len(ordered))))
    return ordered[rank - 1]
