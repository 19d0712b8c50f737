"""Promotion and rollback of the registered-model alias `champion`, and their log.

Promotion moves `champion` to a version whose eval report is present, intact, passing and current,
and moves `previous` to the old champion; rollback moves `champion` back to `previous`. Both are
idempotent: asking for the state that already holds is a recorded no-op.

The promotion log lives in MLflow, next to the registry it describes: every promote, rollback,
no-op and refusal is one finished run in the experiment `aiplat-promotion-log`, tagged with the
model, version, previous champion, report hash, Dagster run id and actor. (A local JSONL would be
lost with the pod that wrote it in prod.)

Only the model's owner team or the platform team may promote or roll back
(aiplat.security.access): the decision, allowed or refused, is appended to the audit log before
anything moves, and what an allowed call did is appended after it.

Promotion also *approves*: before the alias moves it records a signed promotion attestation on the
version (aiplat.security.approval: the signed model digest, the report and gate-policy digests, the
approver), and serving starts only folders such an attestation approves. Moving the alias any other
way (one REST call to MLflow) therefore serves nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass

from aiplat.evaluation.registry import (
    CHAMPION,
    PREVIOUS,
    TAG_ADAPTER_SHA,
    TAG_BASE_SHA,
    TAG_EVAL_SHA,
    ModelRef,
    ReportMissing,
    _experiment_id,
    alias_version,
    model_version,
    version_report,
)

from aiplat.security.access import AccessDenied, Identity, authorize, current_identity, owner_team, record
from aiplat.security.approval import APPROVAL_TAG, ApprovalError, attest, dev_approval_key_pair
from aiplat.security.audit_log import AuditLog
from aiplat.security.signing import TAG_ADAPTER_DIGEST, TAG_MODEL_DIGEST, KeyPair

PROMOTION_LOG_EXPERIMENT = "aiplat-promotion-log"
TAG_PROMOTED_SHA = "aiplat.promotion.report_sha256"
TAG_PROMOTED_RUN = "aiplat.promotion.dagster_run_id"
TAG_PROMOTED_AT = "aiplat.promotion.promoted_at"
TAG_PROMOTED_FROM = "aiplat.promotion.previous_version"
TAG_PROMOTED_BY = "aiplat.promotion.actor"


class PromotionRefused(RuntimeError):
    """The version may not become champion; `reason` says why in one line."""

    def __init__(self, name: str, version: str, reason: str):
        super().__init__(f"{name} version {version} was not promoted: {reason}")
        self.name, self.version, self.reason = name, version, reason


class RollbackImpossible(RuntimeError):
    pass


@dataclass(frozen=True)
class Outcome:
    action: str  # promote | rollback
    status: str  # promoted | rolled_back | noop | refused
    name: str
    version: str | None
    previous_version: str | None
    report_sha256: str | None
    dagster_run_id: str | None
    log_run_id: str | None
    detail: str
    attestation_sha256: str = ""  # sha256 of the champion's promotion attestation (promote: promoted / noop)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class VerifiedReport:
    report: dict
    sha256: str
    eval_run_id: str


def verify_report(
    client, ref: ModelRef, champion: ModelRef | None, expected_sha256: str | None = None, policy=None
) -> VerifiedReport:
    """The version's report, when it may promote the version now; else PromotionRefused.

    Refused: no report; bytes that do not hash to the tagged sha256; a report naming another model
    or version, other model bytes, or made before the version existed; a report whose comparison
    was made against another champion than the current one (stale); a failed gate; a report
    other than the one the caller expected; or one that does not hold under the platform's gate
    policy (`policy`, default: the current one; see check_policy).
    """
    try:
        report, sha, run_id = version_report(client, ref)
    except ReportMissing as e:
        raise PromotionRefused(ref.name, ref.version, f"missing report: {e}") from None
    tagged = ref.tags.get(TAG_EVAL_SHA)
    if sha != tagged:
        raise PromotionRefused(ref.name, ref.version, f"report bytes hash to {sha[:12]}, the version is tagged "
                               f"{str(tagged)[:12]}: the report was altered")
    if expected_sha256 and expected_sha256 != sha:
        raise PromotionRefused(ref.name, ref.version, f"stale report: asked to promote on report {expected_sha256[:12]}, "
                               f"the version's current report is {sha[:12]}")
    model = report.get("model", {})
    if model.get("name") != ref.name or str(model.get("version")) != ref.version:
        raise PromotionRefused(ref.name, ref.version, f"stale report: it evaluated {model.get('name')} version "
                               f"{model.get('version')}, not this version")
    if model.get("evaluated") == "adapter":  # its LoRA adapter over the base model it was trained on
        held, base = ref.tags.get(TAG_ADAPTER_SHA), ref.tags.get(TAG_BASE_SHA)
        if not held or model.get("model_sha256") != held or model.get("base_model_sha256") != base:
            raise PromotionRefused(ref.name, ref.version, "stale report: it evaluated another adapter or base "
                                   f"({str(model.get('model_sha256'))[:12]} over {str(model.get('base_model_sha256'))[:12]}) "
                                   f"than the version holds ({str(held)[:12]} over {str(base)[:12]})")
    elif ref.sha256 and model.get("model_sha256") != ref.sha256:
        raise PromotionRefused(ref.name, ref.version, "stale report: it evaluated other model bytes "
                               f"({str(model.get('model_sha256'))[:12]}) than the version holds ({ref.sha256[:12]})")
    if int(report.get("created_at_ms", 0)) < ref.created_ms:
        raise PromotionRefused(ref.name, ref.version, "stale report: it is older than the model version")
    current = champion.version if champion else None
    if (report.get("champion_version") or None) != current:
        raise PromotionRefused(ref.name, ref.version, f"stale report: it compared against champion "
                               f"{report.get('champion_version') or 'none'}, the champion is now {current or 'none'}; "
                               "re-evaluate")
    gate = report.get("gate", {})
    if gate.get("passed") is not True:
        reasons = "; ".join(gate.get("reasons", [])) or "gate did not pass"
        raise PromotionRefused(ref.name, ref.version, f"failed report: {reasons}")
    check_policy(ref, report, policy)
    return VerifiedReport(report, sha, run_id)


def champion_compared(client, name: str, version: str) -> ModelRef | None:
    """The champion a report of `version` must have compared against to be current now: the
    champion, or, when `version` already is the champion, the one it replaced (`previous`).

    The promotion sensor can promote a version on its report between the report and the run's own
    gate check (locally a run executes its steps one at a time); the report then compared against
    the champion that is now `previous`, and calling it stale would fail a run whose model was
    rightly promoted."""
    from aiplat.evaluation.registry import CHAMPION, PREVIOUS, alias_version

    champion = alias_version(client, name, CHAMPION)
    if champion is not None and champion.version == str(version):
        return alias_version(client, name, PREVIOUS)
    return champion


def check_policy(ref: ModelRef, report: dict, policy=None) -> None:
    """PromotionRefused unless the report was made under the current gate policy (digest), with
    thresholds at least as strict as its floor, every mandatory probe run and passed, the policy's
    golden set (classification), at least the policy's test rows, and a test split drawn from the
    training set this version was trained on (its `aiplat.training_set_sha256` tag)."""
    from aiplat.policy import current_policy, looser_fields

    policy = policy or current_policy()
    refuse = lambda why: PromotionRefused(ref.name, ref.version, f"policy: {why}")  # noqa: E731
    recorded = (report.get("policy") or {}).get("sha256")
    if recorded != policy.digest:
        raise refuse(f"the report was made under gate policy {str(recorded)[:12] if recorded else 'none'}, "
                     f"the current policy is {policy.digest[:12]}; re-evaluate")
    task = report.get("task", "classification")
    loose = looser_fields(policy.floor(task), report.get("thresholds") or {})
    missing = [r for r in policy.floor(task) if r not in (report.get("thresholds") or {})]
    if loose or missing:
        raise refuse("the report's thresholds are looser than the policy floor: "
                     + "; ".join(loose + [f"{r} missing" for r in missing]))
    rules = {r.get("rule"): r for r in (report.get("gate") or {}).get("rules", [])}
    for probe in policy.mandatory_probes:
        if probe not in rules or rules[probe].get("passed") is not True:
            raise refuse(f"mandatory probe {probe} was not run or did not pass")
    datasets = report.get("datasets") or {}
    if task == "classification":
        golden = (datasets.get("golden") or {}).get("sha256")
        if golden != policy.golden_sha256:
            raise refuse(f"golden set {str(golden)[:12]} is not the policy's {policy.golden_version} "
                         f"({policy.golden_sha256[:12]})")
    test = datasets.get("test") or {}
    if int(test.get("rows") or 0) < policy.min_test_examples:
        raise refuse(f"the test split had {test.get('rows')} rows, the policy requires at least {policy.min_test_examples}")
    trained_on = ref.tags.get("aiplat.training_set_sha256")
    if not trained_on or test.get("training_set_sha256") != trained_on:
        raise refuse(f"the test split came from training set {str(test.get('training_set_sha256'))[:12]}, "
                     f"the version was trained on {str(trained_on)[:12] if trained_on else 'an unrecorded one'}")


def _authorize(client, action: str, name: str, version: str | None, identity: Identity | None,
               owners: Mapping[str, str] | None, audit: AuditLog | None, dagster_run_id: str | None,
               actor: str) -> Identity:
    """The caller's identity when it may act on the model; else the refusal is logged twice (audit
    log, promotion log) and AccessDenied raised."""
    identity = identity or current_identity()
    owner = owner_team(name, owners)
    try:
        authorize(action, name, version, identity, owner, audit, dagster_run_id=dagster_run_id or "")
    except AccessDenied as denied:
        _record(client, Outcome(action, "refused", name, version, None, None, dagster_run_id, None,
                                f"access denied: {denied}"), actor)
        raise
    return identity


def promote(
    client,
    name: str,
    version: str,
    *,
    dagster_run_id: str | None,
    actor: str,
    expected_report_sha256: str | None = None,
    identity: Identity | None = None,
    owners: Mapping[str, str] | None = None,
    audit: AuditLog | None = None,
    approver: Callable[[], KeyPair] | None = None,
) -> Outcome:
    """Make `version` the champion (and the old champion `previous`) on a passing, current report.

    `identity` defaults to the CLI caller's, verified from their credential (aiplat.security.identity); `owners` maps model
    names to their specs' owner teams (aiplat.specs.spec_owners). AccessDenied when the
    caller is neither the owner team nor the platform team. `approver`: returns the key pair the
    promotion attestation is signed with (resources.signing's `approver`; default: the local
    development pair); called only once the caller is authorized and the report verified.
    """
    version = str(version)
    who = _authorize(client, "promote", name, version, identity, owners, audit, dagster_run_id, actor)
    outcome = _promote(client, name, version, dagster_run_id, actor, expected_report_sha256, who,
                       approver or dev_approval_key_pair)
    record(f"promote {outcome.status}", name, version, who, audit, detail=outcome.detail,
           report_sha256=outcome.report_sha256 or "", dagster_run_id=dagster_run_id or "")
    return outcome


def _promote(client, name: str, version: str, dagster_run_id: str | None, actor: str,
             expected_report_sha256: str | None, who: Identity, approver: Callable[[], KeyPair]) -> Outcome:
    ref = model_version(client, name, version)
    champion = alias_version(client, name, CHAMPION)
    if champion is not None and champion.version == version:
        sha = ref.tags.get(TAG_PROMOTED_SHA)
        return _record(client, Outcome("promote", "noop", name, version, None, sha, dagster_run_id, None,
                                       f"version {version} is already the champion",
                                       _sha256(ref.tags.get(APPROVAL_TAG, ""))), actor)
    try:
        verified = verify_report(client, ref, champion, expected_report_sha256)
    except PromotionRefused as refused:
        _record(client, Outcome("promote", "refused", name, version, champion.version if champion else None,
                                ref.tags.get(TAG_EVAL_SHA), dagster_run_id, None, refused.reason), actor)
        raise
    try:
        attestation = attest(
            approver(), model=name, version=version, model_digest=ref.tags.get(TAG_MODEL_DIGEST, ""),
            adapter_digest=ref.tags.get(TAG_ADAPTER_DIGEST, ""),
            eval_report_sha256=verified.sha256, policy_sha256=(verified.report.get("policy") or {}).get("sha256", ""),
            approver=who.actor, approver_team=who.team or "", requested_by=who.requested_by or actor,
            dagster_run_id=dagster_run_id or "")
    except ApprovalError as e:
        _record(client, Outcome("promote", "refused", name, version, champion.version if champion else None,
                                verified.sha256, dagster_run_id, None, str(e)), actor)
        raise PromotionRefused(name, version, str(e)) from None
    # The approval before the aliases: a champion always carries one. If an alias move fails after it,
    # the version is approved but not champion (serving follows the alias, so nothing else changes).
    client.set_model_version_tag(name, version, APPROVAL_TAG, attestation)
    # `previous` first: a failure between the two calls leaves champion unchanged and previous
    # pointing at it, which is a consistent state (rollback is then a no-op).
    if champion is not None:
        client.set_registered_model_alias(name, PREVIOUS, champion.version)
    client.set_registered_model_alias(name, CHAMPION, version)
    for key, value in {
        TAG_PROMOTED_SHA: verified.sha256,
        TAG_PROMOTED_RUN: dagster_run_id or "",
        TAG_PROMOTED_AT: str(int(time.time() * 1000)),
        TAG_PROMOTED_FROM: champion.version if champion else "",
        TAG_PROMOTED_BY: actor,
    }.items():
        client.set_model_version_tag(name, version, key, value)
    detail = f"champion {champion.version if champion else 'none'} -> {version}"
    return _record(client, Outcome("promote", "promoted", name, version, champion.version if champion else None,
                                   verified.sha256, dagster_run_id, None, detail, _sha256(attestation)), actor)


def _sha256(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest() if text else ""


def rollback(client, name: str, *, dagster_run_id: str | None, actor: str, identity: Identity | None = None,
             owners: Mapping[str, str] | None = None, audit: AuditLog | None = None) -> Outcome:
    """Point `champion` back at `previous`. Rolling back again is a no-op (they already agree).
    AccessDenied when the caller is neither the owner team nor the platform team."""
    who = _authorize(client, "rollback", name, None, identity, owners, audit, dagster_run_id, actor)
    outcome = _rollback(client, name, dagster_run_id, actor)
    record(f"rollback {outcome.status}", name, outcome.version, who, audit, detail=outcome.detail,
           dagster_run_id=dagster_run_id or "")
    return outcome


def _rollback(client, name: str, dagster_run_id: str | None, actor: str) -> Outcome:
    champion = alias_version(client, name, CHAMPION)
    previous = alias_version(client, name, PREVIOUS)
    if champion is None or previous is None:
        missing = CHAMPION if champion is None else PREVIOUS
        raise RollbackImpossible(f"{name} has no {missing!r} alias; there is nothing to roll back to")
    if champion.version == previous.version:
        return _record(client, Outcome("rollback", "noop", name, previous.version, champion.version, None,
                                       dagster_run_id, None, f"champion is already version {previous.version}"), actor)
    client.set_registered_model_alias(name, CHAMPION, previous.version)
    client.set_model_version_tag(name, champion.version, "aiplat.promotion.rolled_back_at", str(int(time.time() * 1000)))
    return _record(client, Outcome("rollback", "rolled_back", name, previous.version, champion.version,
                                   previous.tags.get(TAG_PROMOTED_SHA), dagster_run_id, None,
                                   f"champion {champion.version} -> {previous.version}"), actor)


def _record(client, outcome: Outcome, actor: str) -> Outcome:
    """One finished run in the promotion-log experiment; returns the outcome with its log run id."""
    experiment_id = _experiment_id(client, PROMOTION_LOG_EXPERIMENT)
    tags = {
        "aiplat.action": outcome.action,
        "aiplat.status": outcome.status,
        "aiplat.model_name": outcome.name,
        "aiplat.model_version": outcome.version or "",
        "aiplat.previous_version": outcome.previous_version or "",
        "aiplat.report_sha256": outcome.report_sha256 or "",
        "dagster.run_id": outcome.dagster_run_id or "",
        "aiplat.actor": actor,
        "aiplat.detail": outcome.detail[:4000],
    }
    run = client.create_run(experiment_id, run_name=f"{outcome.action}-{outcome.name}-v{outcome.version}", tags=tags)
    client.set_terminated(run.info.run_id, "FINISHED")
    return Outcome(**{**outcome.to_dict(), "log_run_id": run.info.run_id})


def history(client, name: str, max_results: int = 100) -> list[dict]:
    """The promotion log of a model, oldest first."""
    experiment = client.get_experiment_by_name(PROMOTION_LOG_EXPERIMENT)
    if experiment is None:
        return []
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.`aiplat.model_name` = '{name}'",
        order_by=["attributes.start_time ASC"],
        max_results=max_results,
    )
    keys = ("aiplat.action", "aiplat.status", "aiplat.model_version", "aiplat.previous_version",
            "aiplat.report_sha256", "dagster.run_id", "aiplat.actor", "aiplat.detail")
    return [
        {"at_ms": r.info.start_time, "run_id": r.info.run_id, **{k.split(".", 1)[1]: r.data.tags.get(k, "") for k in keys}}
        for r in runs
    ]
