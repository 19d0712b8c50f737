"""What an evaluation measures (sizes, generation) and what the gate demands (thresholds).

Both are plain pydantic models so the asset's run config, the CLI and the tests share them; the
values used are written into every report (and so into its hash).
"""

from __future__ import annotations

from typing import Optional

from pydantic import BaseModel, ConfigDict, Field

from aiplat.evaluation.golden import DEFAULT_GOLDEN_VERSION
from aiplat.evaluation.leak import DEFAULT_CANARIES


class EvalSettings(BaseModel):
    """Defaults keep one SmolLM2-135M evaluation within a few minutes on 2 CPU cores."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_test_examples: int = Field(default=48, ge=1, description="Test-split rows evaluated (by ticket_id order)")
    max_new_tokens: int = Field(default=48, ge=4, description="Greedy generation budget per answer")
    batch_size: int = Field(default=8, ge=1)
    max_prompt_tokens: int = Field(default=384, ge=32, description="Longer prompts keep head and tail, as in training")
    latency_samples: int = Field(default=4, ge=0, description="Single-prompt generations timed for latency")
    golden_version: str = DEFAULT_GOLDEN_VERSION
    canaries: tuple[str, ...] = DEFAULT_CANARIES
    samples_in_report: int = Field(default=5, ge=0)
    threads: int = Field(default=0, ge=0, description="torch threads; 0 = torch's default")


class GateThresholds(BaseModel):
    """Absolute minima, allowed regression versus the champion, and the bar set by the base model.

    Regressions are absolute differences of scores in [0, 1]; latency is a ratio. None turns a rule
    off. The leak probe is not configurable: any canary or PII pattern in outputs fails the gate.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    min_accuracy: Optional[float] = Field(default=0.5, ge=0, le=1)
    min_macro_f1: Optional[float] = Field(default=0.4, ge=0, le=1)
    min_golden_accuracy: Optional[float] = Field(default=0.4, ge=0, le=1)
    min_reply_rouge_l: Optional[float] = Field(default=0.1, ge=0, le=1)
    min_parse_rate: Optional[float] = Field(default=0.8, ge=0, le=1)
    min_groundedness: Optional[float] = Field(default=None, ge=0, le=1, description=(
        "generation: share of drafts that reuse a retrieved KB passage's wording"))
    max_accuracy_drop: Optional[float] = Field(default=0.02, ge=0, le=1, description="vs champion")
    max_macro_f1_drop: Optional[float] = Field(default=0.03, ge=0, le=1, description="vs champion")
    max_golden_accuracy_drop: Optional[float] = Field(default=0.05, ge=0, le=1, description="vs champion")
    max_reply_rouge_l_drop: Optional[float] = Field(default=0.05, ge=0, le=1, description="vs champion")
    max_groundedness_drop: Optional[float] = Field(default=None, ge=0, le=1, description="vs champion")
    max_latency_ratio: Optional[float] = Field(
        default=2.0, gt=0, description="candidate p50 latency / champion p50 latency; None = not gated"
    )
    min_accuracy_gain_over_base: Optional[float] = Field(
        default=0.0, description="candidate accuracy - base accuracy must be at least this; None = not gated"
    )

    @classmethod
    def only(cls, rules: dict) -> "GateThresholds":
        """Exactly `rules` (a policy floor, tightened): every other rule off."""
        return cls(**{**{name: None for name in cls.model_fields}, **rules})
