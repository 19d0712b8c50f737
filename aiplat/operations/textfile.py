"""Gauges for Prometheus's textfile collector: what a Dagster asset measured, as series the alert
rules (aiplat.operations.alert_rules) can read. Written atomically (temp file + rename) so a
collector never reads half a file."""

from __future__ import annotations

import os
from pathlib import Path

from prometheus_client import CollectorRegistry, Gauge, write_to_textfile

LIVE_QUALITY_FILE = "aiplat_live_quality.prom"


def live_quality_gauges(endpoint: str, model: str, model_version: str, accuracy: float,
                        baseline_accuracy: float | None, max_drop: float, measured_at: float) -> CollectorRegistry:
    registry = CollectorRegistry()
    labels = ["endpoint", "model", "model_version"]
    values = (endpoint, model, str(model_version))
    Gauge("aiplat_live_quality_golden_accuracy", "Golden-set accuracy of the live endpoint", labels,
          registry=registry).labels(*values).set(accuracy)
    # No baseline yet (first reading of a version): the reading is its own baseline, never an alert.
    Gauge("aiplat_live_quality_baseline_accuracy", "Accuracy the live endpoint is judged against", labels,
          registry=registry).labels(*values).set(accuracy if baseline_accuracy is None else baseline_accuracy)
    Gauge("aiplat_live_quality_max_drop", "Allowed drop below the baseline", labels,
          registry=registry).labels(*values).set(max_drop)
    Gauge("aiplat_live_quality_timestamp_seconds", "When the reading was taken (Unix seconds)", labels,
          registry=registry).labels(*values).set(measured_at)
    return registry


def write_live_quality(directory: Path, **reading) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LIVE_QUALITY_FILE
    write_to_textfile(str(path), live_quality_gauges(**reading))  # temp file + os.replace inside
    os.chmod(path, 0o644)
    return path
