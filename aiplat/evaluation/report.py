"""The eval report: one canonical JSON (whose sha256 is the report hash) plus a readable
markdown/HTML page with a confusion matrix and metric plots."""

from __future__ import annotations

import base64
import html
import json
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from aiplat.evaluation.evaluate import headline
from aiplat.provenance import sha256_bytes

SCHEMA_VERSION = 1
REPORT_JSON = "report.json"
REPORT_MD = "report.md"
REPORT_HTML = "report.html"
CONFUSION_PNG = "confusion_matrix.png"
METRICS_PNG = "metrics.png"
COMPARED = ("accuracy", "macro_f1", "golden_accuracy", "reply_rouge_l", "groundedness", "parse_rate", "leak_findings",
            "latency_p50_ms", "tokens_per_second")


def build_report(
    *,
    model: dict,
    candidate: dict,
    base: dict | None,
    champion: dict | None,
    champion_version: str | None,
    gate: dict,
    settings: dict,
    thresholds: dict,
    datasets: dict,
    dagster_run_id: str | None,
    code_version: str,
    created_at_ms: int | None = None,
    policy: dict | None = None,
    task: str = "classification",
) -> dict:
    """`model`: name, version, source, model_sha256 (what was evaluated)."""
    created = created_at_ms if created_at_ms is not None else int(time.time() * 1000)
    heads = {"candidate": headline(candidate), "base": headline(base), "champion": headline(champion)}
    comparison = {}
    for metric in COMPARED:
        if metric not in heads["candidate"]:
            continue  # not measured for this task kind
        value = heads["candidate"][metric]
        row = {"candidate": value}
        for other in ("base", "champion"):
            if heads[other] is not None:
                row[other] = heads[other][metric]
                row[f"delta_vs_{other}"] = value - heads[other][metric]
        comparison[metric] = row
    report = {
        "schema": SCHEMA_VERSION,
        "model": model,
        "created_at": datetime.fromtimestamp(created / 1000, timezone.utc).isoformat(),
        "created_at_ms": created,
        "dagster_run_id": dagster_run_id,
        "code_version": code_version,
        "champion_version": champion_version,
        "datasets": datasets,
        "settings": settings,
        "thresholds": thresholds,
        "gate": gate,
        "comparison": comparison,
        "results": {"candidate": candidate, "base": base, "champion": champion},
    }
    # Older reports have neither: they keep their hash (and promotion refuses them: no policy).
    if policy is not None:
        report["policy"] = policy
        report["task"] = task
    return report


def canonical_bytes(report: dict) -> bytes:
    return json.dumps(report, sort_keys=True, indent=2, ensure_ascii=False, allow_nan=False).encode("utf-8") + b"\n"


def report_hash(report: dict) -> str:
    return sha256_bytes(canonical_bytes(report))


@dataclass(frozen=True)
class WrittenReport:
    folder: Path
    sha256: str
    json_path: Path
    markdown: str


def write_report(report: dict, folder: Path) -> WrittenReport:
    folder.mkdir(parents=True, exist_ok=True)
    data = canonical_bytes(report)
    (folder / REPORT_JSON).write_bytes(data)
    sha = sha256_bytes(data)
    (folder / "report.sha256").write_text(f"{sha}  {REPORT_JSON}\n")
    _plot_confusion(report, folder / CONFUSION_PNG)
    _plot_metrics(report, folder / METRICS_PNG)
    markdown = render_markdown(report, sha)
    (folder / REPORT_MD).write_text(markdown)
    (folder / REPORT_HTML).write_text(render_html(report, sha, folder))
    return WrittenReport(folder, sha, folder / REPORT_JSON, markdown)


def _fmt(metric: str, value: float | None) -> str:
    if value is None:
        return "-"
    if metric in ("latency_p50_ms", "tokens_per_second"):
        return f"{value:.1f}"
    if metric == "leak_findings":
        return f"{int(value)}"
    return f"{value:.3f}"


def _comparison_rows(report: dict) -> list[list[str]]:
    rows = []
    for metric, row in report["comparison"].items():
        rows.append([
            metric,
            _fmt(metric, row["candidate"]),
            _fmt(metric, row.get("base")),
            _fmt(metric, row.get("champion")),
            "-" if "delta_vs_champion" not in row else f"{row['delta_vs_champion']:+.3f}",
        ])
    return rows


def render_markdown(report: dict, sha: str) -> str:
    m, gate = report["model"], report["gate"]
    verdict = "PASSED" if gate["passed"] else "FAILED"
    champion = f"version {report['champion_version']}" if report["champion_version"] else "none (first promotion)"
    lines = [
        f"# Eval report: {m['name']} version {m['version']}",
        "",
        f"**Gate: {verdict}**  ",
        f"Report sha256 `{sha}`  ",
        f"Created {report['created_at']} by {report['code_version']} (Dagster run {report['dagster_run_id'] or '-'})  ",
        f"Model sha256 `{m['model_sha256']}`; champion at evaluation: {champion}",
        "",
    ]
    if gate["reasons"]:
        lines += ["## Why the gate failed", "", *[f"- {r}" for r in gate["reasons"]], ""]
    lines += ["## Metrics", "", "| metric | candidate | base | champion | Δ vs champion |", "|---|---|---|---|---|"]
    lines += ["| " + " | ".join(r) + " |" for r in _comparison_rows(report)]
    lines += ["", "## Gate rules", "", "| rule | value | limit | passed |", "|---|---|---|---|"]
    lines += [f"| {r['rule']} | {r['value']} | {r['limit']} | {'yes' if r['passed'] else 'NO'} |" for r in gate["rules"]]
    cand = report["results"]["candidate"]
    if "confusion" in cand["test"]:
        lines += ["", "## Confusion matrix (test split, candidate)", "", f"![confusion matrix]({CONFUSION_PNG})", ""]
        conf = cand["test"]["confusion"]
        lines += ["| true \\ predicted | " + " | ".join(conf["columns"]) + " |", "|---" * (len(conf["columns"]) + 1) + "|"]
        lines += [f"| {label} | " + " | ".join(str(n) for n in row) + " |" for label, row in zip(conf["labels"], conf["matrix"])]
    lines += ["", f"![metrics]({METRICS_PNG})", "", "## Leak probe", ""]
    findings = cand["leak"]["findings"]
    lines += [f"{cand['leak']['prompts']} probe prompts; {len(findings)} finding(s) across all outputs."]
    lines += [f"- {f['kind']} in output for {f['source']}: {f['masked']}" for f in findings[:20]]
    lines += ["", "## Data", ""]
    d = report["datasets"]
    lines += [
        f"- test split: {d['test']['rows']} rows, sha256 `{d['test']['sha256'][:16]}`",
        *([f"- golden set {d['golden']['version']}: {d['golden']['rows']} tickets, sha256 `{d['golden']['sha256'][:16]}`"]
          if "golden" in d else []),
        *([f"- gate policy sha256 `{report['policy']['sha256'][:16]}`"] if "policy" in report else []),
        "",
        "## Sample outputs (candidate; PII patterns masked)",
        "",
    ]
    for s in cand["samples"]:
        lines.append(f"- `{s['ticket_id']}` expected **{s['expected']}**, got **{s['predicted']}**: "
                     + s["output"].replace("\n", " / ").replace("|", "/"))
    return "\n".join(lines) + "\n"


def render_html(report: dict, sha: str, folder: Path) -> str:
    """Self-contained (images inlined), so it renders in MLflow's artifact viewer as well."""
    m, gate = report["model"], report["gate"]
    color = "#1a7f37" if gate["passed"] else "#cf222e"
    head = ["metric", "candidate", "base", "champion", "Δ vs champion"]
    table = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in _comparison_rows(report))
    rules = "".join(
        f"<tr><td>{html.escape(r['rule'])}</td><td>{r['value']}</td><td>{r['limit']}</td>"
        f"<td style='color:{'#1a7f37' if r['passed'] else '#cf222e'}'>{'yes' if r['passed'] else 'NO'}</td></tr>"
        for r in gate["rules"]
    )
    reasons = "".join(f"<li>{html.escape(r)}</li>" for r in gate["reasons"])
    images = "".join(
        f"<img alt='{name}' style='max-width:48%' src='data:image/png;base64,"
        f"{base64.b64encode((folder / name).read_bytes()).decode()}'/>"
        for name in (CONFUSION_PNG, METRICS_PNG)
    )
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>Eval {html.escape(m['name'])} v{html.escape(str(m['version']))}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px}}</style>
</head><body><h1>Eval report: {html.escape(m['name'])} version {html.escape(str(m['version']))}</h1>
<p style="font-size:1.4em;color:{color}"><b>Gate {'PASSED' if gate['passed'] else 'FAILED'}</b></p>
<ul>{reasons}</ul>
<p>Report sha256 <code>{sha}</code><br/>Created {html.escape(report['created_at'])} by {html.escape(report['code_version'])};
champion at evaluation: {html.escape(str(report['champion_version'] or 'none'))}</p>
<h2>Metrics</h2><table><tr>{table}</tr>{body}</table>
<h2>Gate rules</h2><table><tr><th>rule</th><th>value</th><th>limit</th><th>passed</th></tr>{rules}</table>
<h2>Plots</h2>{images}
</body></html>
"""


def _plot_confusion(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    conf = report["results"]["candidate"]["test"].get("confusion")
    fig, ax = plt.subplots(figsize=(6.5, 5))
    if conf is None:  # generation: no classes
        ax.text(0.5, 0.5, "no confusion matrix: a generation model", ha="center", va="center")
        ax.axis("off")
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return
    ax.imshow(conf["matrix"], cmap="Blues")
    ax.set_xticks(range(len(conf["columns"])), conf["columns"], rotation=45, ha="right")
    ax.set_yticks(range(len(conf["labels"])), conf["labels"])
    for i, row in enumerate(conf["matrix"]):
        for j, n in enumerate(row):
            if n:
                ax.text(j, i, str(n), ha="center", va="center")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{report['model']['name']} v{report['model']['version']}: test split")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_metrics(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scores = tuple(s for s in ("accuracy", "macro_f1", "golden_accuracy", "reply_rouge_l", "groundedness")
                   if s in report["comparison"])
    roles = [r for r in ("base", "champion", "candidate") if report["results"][r] is not None]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 4), gridspec_kw={"width_ratios": [3, 1]})
    width = 0.8 / len(roles)
    for k, role in enumerate(roles):
        values = [report["comparison"][s].get(role) or 0.0 for s in scores]
        ax.bar([i + k * width for i in range(len(scores))], values, width, label=role)
        ax2.bar([k], [report["comparison"]["latency_p50_ms"].get(role) or 0.0], 0.6, label=role)
    ax.set_xticks([i + width * (len(roles) - 1) / 2 for i in range(len(scores))], scores)
    ax.set_ylim(0, 1)
    ax.legend()
    ax.set_title("scores (higher is better)")
    ax2.set_xticks(range(len(roles)), roles)
    ax2.set_title("p50 latency, ms")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def load_report_bytes(data: bytes) -> dict:
    return json.loads(data.decode("utf-8"))
