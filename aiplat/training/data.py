"""The training-set contract the fine-tune reads, its validation and its content hash."""

from __future__ import annotations

import pandas as pd

REQUIRED_COLUMNS = ("ticket_id", "subject", "message", "category", "agent_reply", "split")
# The feature stage names the label and the reply target by their role; both spellings are accepted.
COLUMN_ALIASES = {"label": "category", "reply_target": "agent_reply"}
SPLITS = ("train", "validation", "test")
# Feature columns put into the prompt when the training set has them (the feature stage's names).
PROMPT_FEATURES = ("product", "channel", "priority", "language", "tickets_prior_total", "tickets_30d")


class TrainingSetError(ValueError):
    """The training set breaks its contract; the message names the records and the reason."""


def normalize_columns(df: pd.DataFrame) -> pd.DataFrame:
    """The training set with the aliased columns under the names this module uses."""
    renames = {a: c for a, c in COLUMN_ALIASES.items() if a in df.columns and c not in df.columns}
    return df.rename(columns=renames) if renames else df


def validate_training_set(df: pd.DataFrame) -> None:
    df = normalize_columns(df)
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise TrainingSetError(f"training set lacks columns {missing}; it has {list(df.columns)}")
    problems: list[str] = []
    bad_split = df[~df["split"].isin(SPLITS)]
    for tid, split in zip(bad_split["ticket_id"].head(5), bad_split["split"].head(5), strict=True):
        problems.append(f"ticket {tid!r}: split {split!r} is not one of {SPLITS}")
    for col in ("ticket_id", "message", "category"):
        empty = df[df[col].isna() | (df[col].astype(str).str.strip() == "")]
        for tid in empty["ticket_id"].head(5):
            problems.append(f"ticket {tid!r}: {col} is empty")
    dupes = df[df["ticket_id"].duplicated(keep=False)]["ticket_id"].unique()[:5]
    problems += [f"ticket {tid!r}: appears more than once" for tid in dupes]
    if problems:
        raise TrainingSetError("training set rejected:\n  " + "\n  ".join(problems))
    if not (df["split"] == "train").any():
        raise TrainingSetError("training set has no rows with split == 'train'")


def training_set_hash(df: pd.DataFrame) -> str:
    """The feature stage's content hash (row/column order independent), so the two match."""
    from aiplat.features.training import content_hash

    return content_hash(df)


def feature_columns(df: pd.DataFrame) -> list[str]:
    return [c for c in PROMPT_FEATURES if c in df.columns]
