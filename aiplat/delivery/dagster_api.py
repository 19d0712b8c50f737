"""Launch a Dagster job over the webserver's GraphQL API, wait for the run, and read its gates.

This is what the merge workflow (.github/workflows/model-release.yaml) runs through
`aiplat pipeline launch`: the run happens on the platform's own infrastructure (GPU node pool,
MLflow, signing keys), CI only asks for it and waits for the verdict. A run that ends in anything
but SUCCESS, or a gate (asset check) that failed or never reported, is a failure; there is no
silent pass.

Access: the webserver sits behind the platform's authenticating proxy; the bearer token comes from
AIPLAT_DAGSTER_TOKEN (a CI secret) and is sent only as a header, never printed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import httpx

TERMINAL = {"SUCCESS", "FAILURE", "CANCELED"}
DEFAULT_LOCATION = "ai_platform"
DEFAULT_REPOSITORY = "__repository__"

LAUNCH = """
mutation($params: ExecutionParams!) { launchRun(executionParams: $params) {
  __typename
  ... on LaunchRunSuccess { run { runId } }
  ... on PythonError { message }
  ... on InvalidSubsetError { message }
  ... on PipelineNotFoundError { message }
  ... on RunConfigValidationInvalid { errors { message } }
  ... on UnauthorizedError { message }
  ... on InvalidStepError { invalidStepKey }
  ... on InvalidOutputError { invalidOutputName }
  ... on RunConflict { message }
  ... on PresetNotFoundError { message }
  ... on ConflictingExecutionParamsError { message }
  ... on NoModeProvidedError { message }
} }"""

RUN = """query($id: ID!) { runOrError(runId: $id) { __typename
  ... on Run { status }
  ... on RunNotFoundError { message }
  ... on PythonError { message } } }"""

CHECKS = """query($key: AssetKeyInput!, $check: String!) {
  assetCheckExecutions(assetKey: $key, checkName: $check, limit: 25) {
    runId status evaluation { success severity description
      metadataEntries { label __typename
        ... on FloatMetadataEntry { floatValue } ... on IntMetadataEntry { intValue }
        ... on TextMetadataEntry { text } ... on BoolMetadataEntry { boolValue } } } } }"""

WORKSPACE = """query { workspaceOrError { __typename
  ... on Workspace { locationEntries { name loadStatus
      locationOrLoadError { __typename ... on PythonError { message } } } }
  ... on PythonError { message } } }"""


class DagsterApiError(RuntimeError):
    """The API refused or could not be reached; the message says which and why."""


@dataclass(frozen=True)
class Gate:
    asset: tuple[str, ...]
    check: str

    @classmethod
    def parse(cls, text: str) -> "Gate":
        """`ticket_triage/eval_report:eval_gate` -> asset path + check name."""
        asset, sep, check = text.rpartition(":")
        if not sep or not asset or not check:
            raise ValueError(f"gate {text!r} is not ASSET_PATH:CHECK_NAME (e.g. ticket_triage/eval_report:eval_gate)")
        return cls(tuple(asset.split("/")), check)

    def __str__(self) -> str:
        return f"{'/'.join(self.asset)}:{self.check}"


@dataclass(frozen=True)
class GateResult:
    gate: Gate
    status: str                   # SUCCEEDED | FAILED | EXECUTION_FAILED | SKIPPED | IN_PROGRESS | MISSING
    passed: bool
    severity: str | None = None
    metadata: Mapping[str, object] = field(default_factory=dict)

    def line(self) -> str:
        meta = " ".join(f"{k}={v}" for k, v in sorted(self.metadata.items()))
        return f"gate {self.gate}: {'passed' if self.passed else 'FAILED'} ({self.status}{', ' + self.severity if self.severity else ''}) {meta}".rstrip()


@dataclass(frozen=True)
class Outcome:
    run_id: str
    status: str
    gates: list[GateResult]

    @property
    def ok(self) -> bool:
        return self.status == "SUCCESS" and all(g.passed for g in self.gates)


class DagsterApi:
    def __init__(self, url: str, token: str | None = None, timeout_s: float = 30.0,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.url = url.rstrip("/") + ("" if url.rstrip("/").endswith("/graphql") else "/graphql")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(headers=headers, timeout=timeout_s, transport=transport)

    def close(self) -> None:
        self._http.close()

    def query(self, query: str, variables: Mapping | None = None) -> dict:
        try:
            response = self._http.post(self.url, json={"query": query, "variables": dict(variables or {})})
        except httpx.HTTPError as e:
            raise DagsterApiError(f"{self.url} unreachable: {type(e).__name__}: {e}") from None
        if response.status_code in (401, 403):
            raise DagsterApiError(f"{self.url} refused the credentials (HTTP {response.status_code}); check AIPLAT_DAGSTER_TOKEN")
        if response.status_code != 200:
            raise DagsterApiError(f"{self.url} answered HTTP {response.status_code}: {response.text[:300]}")
        body = response.json()
        if body.get("errors"):
            raise DagsterApiError(f"GraphQL errors: {'; '.join(e.get('message', '?') for e in body['errors'])}")
        return body["data"]


def _sleep_until(deadline: float, seconds: float, what: str) -> None:
    if time.monotonic() + seconds > deadline:
        raise DagsterApiError(f"gave up {what}: deadline reached")
    time.sleep(seconds)


def launch(api: DagsterApi, job: str, *, tags: Mapping[str, str] | None = None, assets: Sequence[Sequence[str]] = (),
           gates: Sequence[Gate] = (), location: str = DEFAULT_LOCATION, repository: str = DEFAULT_REPOSITORY,
           run_config: Mapping | None = None, deadline: float | None = None, poll_s: float = 2.0) -> str:
    """Launch `job` (optionally only `assets` and the `gates` checks of it); the run id. Waits for the
    code location to load first, until `deadline` (monotonic seconds)."""
    deadline = deadline if deadline is not None else time.monotonic() + 300
    selector: dict = {"repositoryLocationName": location, "repositoryName": repository, "jobName": job}
    if assets:
        selector["assetSelection"] = [{"path": list(a)} for a in assets]
        selector["assetCheckSelection"] = [{"assetKey": {"path": list(g.asset)}, "name": g.check} for g in gates]
    params = {"selector": selector, "runConfigData": dict(run_config or {}),
              "executionMetadata": {"tags": [{"key": k, "value": v} for k, v in sorted((tags or {}).items())]}}
    wait_for_location(api, location, deadline, poll_s)
    answer = api.query(LAUNCH, {"params": params})["launchRun"]
    if answer["__typename"] == "LaunchRunSuccess":
        return answer["run"]["runId"]
    message = answer.get("message") or "; ".join(e["message"] for e in answer.get("errors", [])) or ""
    raise DagsterApiError(f"launching {job} was refused: {answer['__typename']}: {message}".rstrip(": "))


def wait_for_location(api: DagsterApi, location: str, deadline: float, poll_s: float = 2.0) -> None:
    """The webserver loads code locations in the background after it starts listening: wait until
    `location` is loaded; its load error, or its absence once loaded, is an error."""
    while True:
        workspace = api.query(WORKSPACE)["workspaceOrError"]
        if workspace["__typename"] != "Workspace":
            raise DagsterApiError(f"workspace unavailable: {workspace.get('message', workspace['__typename'])}")
        entries = {e["name"]: e for e in workspace["locationEntries"]}
        entry = entries.get(location)
        if entry is None:
            raise DagsterApiError(f"no code location {location!r} (locations: {', '.join(sorted(entries)) or 'none'})")
        if entry["loadStatus"] == "LOADED":
            loaded = entry.get("locationOrLoadError") or {}
            if loaded.get("__typename") == "PythonError":
                raise DagsterApiError(f"code location {location!r} failed to load: {loaded.get('message', '')[:500]}")
            return
        _sleep_until(deadline, poll_s, f"waiting for code location {location!r} to load")


def wait(api: DagsterApi, run_id: str, deadline: float, poll_s: float = 5.0,
         progress: Callable[[str], None] | None = None) -> str:
    """Poll the run until it ends; its final status."""
    last = None
    while True:
        answer = api.query(RUN, {"id": run_id})["runOrError"]
        if answer["__typename"] != "Run":
            raise DagsterApiError(f"run {run_id}: {answer['__typename']}: {answer.get('message', '')}")
        status = answer["status"]
        if status != last and progress:
            progress(f"run {run_id}: {status}")
        last = status
        if status in TERMINAL:
            return status
        _sleep_until(deadline, poll_s, f"waiting for run {run_id} (last status {status})")


def _metadata(entries: list[dict]) -> dict[str, object]:
    out: dict[str, object] = {}
    for e in entries:
        for key in ("floatValue", "intValue", "text", "boolValue"):
            if key in e:
                out[e["label"]] = e[key]
    return out


def gate_result(api: DagsterApi, run_id: str, gate: Gate) -> GateResult:
    executions = api.query(CHECKS, {"key": {"path": list(gate.asset)}, "check": gate.check})["assetCheckExecutions"]
    mine = [x for x in executions if x["runId"] == run_id]
    if not mine:
        # A gate that never reported is not a pass.
        return GateResult(gate, "MISSING", False)
    latest = mine[0]
    evaluation = latest.get("evaluation") or {}
    passed = latest["status"] == "SUCCEEDED" and evaluation.get("success") is True
    return GateResult(gate, latest["status"], passed, evaluation.get("severity"),
                      _metadata(evaluation.get("metadataEntries", [])))


def launch_and_wait(api: DagsterApi, job: str, *, gates: Sequence[Gate] = (), timeout_s: float = 3600,
                    progress: Callable[[str], None] | None = None, poll_s: float = 5.0, **launch_args) -> Outcome:
    deadline = time.monotonic() + timeout_s
    run_id = launch(api, job, gates=gates, deadline=deadline, **launch_args)
    if progress:
        progress(f"launched {job}: run {run_id}")
    status = wait(api, run_id, deadline, poll_s=poll_s, progress=progress)
    return Outcome(run_id, status, [gate_result(api, run_id, g) for g in gates])
