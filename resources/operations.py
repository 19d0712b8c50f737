"""Operations settings: where the request and audit logs live, cost rates, team budgets (the model
specs' budgets per owner team, with overrides) and which API key (by sha256, never the key) belongs
to which team. Who owns which model is the model spec's business (aiplat.specs).

Local: files under <state>/operations and <state>/audit with demo rates. Prod: the request log's
location comes from dg.EnvVar (a volume shared by the gateway and the Dagster pods), the audit trail
is a PostgreSQL table (AIPLAT_AUDIT_DATABASE_URL, a writer role with INSERT/SELECT only) keyed with
AIPLAT_AUDIT_HMAC_KEY; rates and budgets are reviewed configuration, not secrets.
"""

from datetime import date
from typing import Any, Optional

import dagster as dg
from pydantic import Field


class OperationsResource(dg.ConfigurableResource):
    request_log_path: Optional[str] = Field(default=None, description="Request log JSONL; unset = <state>/operations/requests.jsonl")
    audit_log_path: Optional[str] = Field(default=None, description="Audit log JSONL; unset = <state>/audit/audit.jsonl")
    audit_database_url: Optional[str] = Field(default=None, description=(
        "PostgreSQL DSN of the audit trail (prod; a role with INSERT/SELECT only, see PostgresAuditLog.install). "
        "Set = the trail lives there instead of the file"))
    audit_hmac_key: Optional[str] = Field(default=None, description=(
        "Key of the audit chain (a secret). Unset locally = <state>/security/audit-hmac.key"))
    reports_dir: Optional[str] = Field(default=None, description="Where charts go; unset = <state>/operations/reports")
    prompt_per_1k_tokens: float = Field(default=0.0005, ge=0)
    completion_per_1k_tokens: float = Field(default=0.0015, ge=0)
    gpu_hour: float = Field(default=2.50, ge=0, description="Cost of one GPU-hour")
    gpus_per_endpoint: float = Field(default=1.0, gt=0)
    team_daily_budgets: dict[str, float] = Field(default_factory=dict, description=(
        "Daily budget per team (same unit as the rates) on top of the model specs' budgets, which are summed "
        "per owner team; a team named here takes this value"))
    api_key_teams: dict[str, str] = Field(default_factory=dict, description="sha256(API key) -> team")
    scrape_timeout_s: float = Field(default=5.0, gt=0)
    prometheus_url: Optional[str] = Field(default=None, description=(
        "Prometheus that scrapes the vLLM pods (prod); unset = scrape the local servers' /metrics directly"))
    live_quality_max_golden_drop: float = Field(default=0.10, ge=0, le=1, description=(
        "Allowed drop of the live endpoint's golden accuracy below its baseline. Looser than the gate's "
        "regression rule: vLLM in bf16 and transformers in fp32 do not decode identically"))
    live_quality_max_error_rate: float = Field(default=0.0, ge=0, le=1)
    rollback_on_quality_regression: bool = Field(default=False, description=(
        "Roll the endpoint (and the champion alias) back when the live golden-set check fails"))
    live_quality_concurrency: int = Field(default=4, ge=1)

    @classmethod
    def local(cls) -> "OperationsResource":
        return cls()

    @classmethod
    def prod(cls) -> "OperationsResource":
        # The audit trail lives in PostgreSQL (writers: INSERT/SELECT only) and is keyed with a Secret.
        return cls(request_log_path=dg.EnvVar("AIPLAT_REQUEST_LOG"),
                   audit_database_url=dg.EnvVar("AIPLAT_AUDIT_DATABASE_URL"),
                   audit_hmac_key=dg.EnvVar("AIPLAT_AUDIT_HMAC_KEY"),
                   reports_dir=dg.EnvVar("AIPLAT_REPORTS_DIR"), prometheus_url=dg.EnvVar("AIPLAT_PROMETHEUS_URL"))

    def quality_thresholds(self) -> Any:
        from aiplat.operations.quality import Thresholds

        return Thresholds(self.live_quality_max_golden_drop, self.live_quality_max_error_rate)

    def budgets(self) -> dict[str, float]:
        """Daily budget per team: the sum of its models' spec budgets, overridden per team here."""
        from aiplat.specs import load_specs

        per_team: dict[str, float] = {}
        for spec in load_specs():
            per_team[spec.owner] = per_team.get(spec.owner, 0.0) + spec.budgets.daily_cost
        return {**per_team, **dict(self.team_daily_budgets)}

    def rates(self) -> Any:
        from aiplat.operations.cost import CostRates

        return CostRates(self.prompt_per_1k_tokens, self.completion_per_1k_tokens, self.gpu_hour, self.gpus_per_endpoint)

    def request_log(self) -> Any:
        from pathlib import Path

        from aiplat.operations.requests import RequestLog

        return RequestLog(Path(self.request_log_path) if self.request_log_path else None)

    def audit_log(self) -> Any:
        from pathlib import Path

        from aiplat.security.audit_log import FileAuditLog, PostgresAuditLog

        if self.audit_database_url:
            return PostgresAuditLog(self.audit_database_url, key=self.audit_hmac_key)
        return FileAuditLog(Path(self.audit_log_path) if self.audit_log_path else None, key=self.audit_hmac_key)

    def reports_path(self) -> Any:
        from pathlib import Path

        from aiplat.config import state_dir

        return Path(self.reports_dir) if self.reports_dir else state_dir() / "operations" / "reports"

    def cost_report(self, since: Optional[date], until: Optional[date]) -> Any:
        """The attributed report for since..until (UTC days, inclusive); yesterday when both are None."""
        from datetime import datetime, timezone

        from aiplat.operations.cost import attribute, day_window

        since, until = day_window(since, until, datetime.now(timezone.utc).date())
        records, rejected = self.request_log().read(since, until)
        from aiplat.specs import load_specs

        endpoints = {spec.endpoint: spec.name for spec in load_specs()}
        report = attribute(records, self.rates(), self.budgets(), rejected, endpoints)
        report.window = (since, until)
        return report
