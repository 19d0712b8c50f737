"""What a model spec declares, as pydantic models (extra fields are errors, like typos)."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from aiplat.models.base import DEFAULT_NAME, DEFAULT_SOURCE
from aiplat.training.lora import FineTuneParams
from aiplat.training.prompts import PromptFormat

TaskKind = Literal["classification", "generation"]
# Base models the platform prepares (offline, hashed) and serves from one vLLM per base.
BASE_MODELS: dict[str, str] = {DEFAULT_NAME: DEFAULT_SOURCE}
# Columns of the point-in-time training set a label or a target can come from
# (aiplat.features.training.labeled_entities).
LABEL_COLUMNS = ("label",)
TARGET_COLUMNS = ("reply_target",)
NAME_PATTERN = r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$"


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Retrieval(_Strict):
    """Ground the prompt in the top KB passages from the platform's Milvus index (kb_index)."""

    index: Literal["kb_index"] = "kb_index"
    top_k: int = Field(default=2, ge=1, le=8)
    max_passage_chars: int = Field(default=300, ge=50, le=2000)


class TrainingData(_Strict):
    feature_service: str = Field(min_length=1, description="Feast feature service joined point-in-time")
    label_column: Optional[Literal["label"]] = Field(default=None, description="classification: the class column")
    target_column: Optional[Literal["reply_target"]] = Field(default=None, description="generation: the text to learn")
    prompt_template: str = Field(min_length=20, description="The system prompt, at training and at serving time")
    retrieval: Optional[Retrieval] = None


class Evaluation(_Strict):
    suite: TaskKind
    thresholds: dict[str, Optional[float]] = Field(
        default_factory=dict, description="Gate rules; only stricter than the platform policy's floor")
    max_test_examples: int = Field(default=48, ge=1)
    max_new_tokens: int = Field(default=48, ge=4)
    batch_size: int = Field(default=8, ge=1)
    latency_samples: int = Field(default=4, ge=0)


class LoadTest(_Strict):
    """The endpoint_load_test asset's shape for this model (run config may still override it)."""

    concurrencies: list[int] = Field(default_factory=lambda: [1, 4, 8], min_length=1, max_length=8)
    num_prompts: Optional[int] = Field(default=None, ge=1, description="Requests per concurrency; unset = max(sample, 2 x concurrency)")
    output_len: int = Field(default=32, ge=1, le=2048)

    @field_validator("concurrencies")
    @classmethod
    def _positive(cls, value: list[int]) -> list[int]:
        if any(c < 1 for c in value):
            raise ValueError(f"each must be >= 1, got {value}")
        return value


class Budgets(_Strict):
    daily_cost: float = Field(gt=0, description="Daily inference cost budget (the cost report's unit)")


class ModelSpec(_Strict):
    name: str = Field(pattern=NAME_PATTERN, max_length=48, description="Registered model name; the file is <name>.yaml")
    owner: str = Field(pattern=r"^team:[a-z][a-z0-9-]*$", description="The owner team, e.g. team:ml")
    description: str = Field(min_length=10)
    task: TaskKind
    training: TrainingData
    base_model: str = DEFAULT_NAME
    fine_tune: FineTuneParams = Field(default_factory=FineTuneParams)
    evaluation: Evaluation
    endpoint: str = Field(pattern=NAME_PATTERN, max_length=48)
    load_test: LoadTest = Field(default_factory=LoadTest)
    budgets: Budgets
    batch_predictions: Optional[bool] = Field(
        default=None, description="Score every landed ticket batch with the live champion (<model>/predictions); "
        "classification models only; unset = on for classification")
    # Where it was read from (set by the loader, not by the file).
    source_file: Optional[str] = Field(default=None, exclude=True)

    # Cross-field errors say "<field>|<reason>" so the loader can name the field.
    @model_validator(mode="after")
    def _consistent(self) -> "ModelSpec":
        if self.base_model not in BASE_MODELS:
            raise ValueError(f"base_model|{self.base_model!r} is not a platform base model "
                             f"(one of {', '.join(sorted(BASE_MODELS))})")
        if self.task == "classification" and not self.training.label_column:
            raise ValueError("training.label_column|required for a classification model")
        if self.task == "generation" and not self.training.target_column:
            raise ValueError("training.target_column|required for a generation model")
        if self.task == "classification" and self.training.target_column:
            raise ValueError("training.target_column|is for generation models; a classification model names a label_column")
        if self.task == "generation" and self.training.label_column:
            raise ValueError("training.label_column|is for classification models; a generation model names a target_column")
        if self.evaluation.suite != self.task:
            raise ValueError(f"evaluation.suite|{self.evaluation.suite!r} does not evaluate a {self.task} model")
        if self.task != "classification" and self.batch_predictions:
            raise ValueError("batch_predictions|scores tickets into categories: classification models only")
        return self

    @property
    def predicts_batches(self) -> bool:
        """Whether the chain has <model>/predictions (batch inference of every landed ticket batch)."""
        return self.task == "classification" and self.batch_predictions is not False

    # Names the platform derives from the spec; nothing else names a model.
    @property
    def key_prefix(self) -> str:
        """Asset key prefix, group and op-name prefix (Dagster names allow no hyphen)."""
        return self.name.replace("-", "_")

    @property
    def experiment(self) -> str:
        return f"{self.name}-fine-tuning"

    @property
    def base_source(self) -> str:
        return BASE_MODELS[self.base_model]

    @property
    def grounded(self) -> bool:
        return self.training.retrieval is not None

    @property
    def prompt_format(self) -> PromptFormat:
        """How the model is asked: at training, evaluation and serving time (the gateway) alike."""
        return PromptFormat(system_prompt=self.training.prompt_template, task=self.task, grounded=self.grounded)
