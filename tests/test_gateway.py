"""The metering gateway, run for real (uvicorn on a free port) in front of a real HTTP upstream.

The upstream of the routing, label, streaming and record tests is a tiny OpenAI-shaped Starlette
app that stands in for vLLM: it answers in vLLM's shapes (usage on non-streamed answers, a final
usage-only chunk when `stream_options.include_usage` is set) and keeps what it received, so the
tests can see what the gateway forwards. Endpoints are routed the way the serving backend routes
them: an adapter route in a real adapter-routes file (aiplat.serving.adapter_routes), so `model` is
rewritten to the adapter version drawn and the request log records that version. In front of a real
vLLM server with real adapters it runs in tests/test_serving_adapters_live.py, which has one up.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import httpx
import kubernetes_validate
import pytest
import uvicorn
import yaml
from click.testing import CliRunner
from kubernetes_validate.utils import all_versions
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from aiplat.config import project_root
from aiplat.net import free_port
from aiplat.operations.requests import RequestLog
from aiplat.serving.adapter_routes import AdapterRouteResolver, AdapterRoutes
from aiplat.serving.gateway import GatewaySettings, build_app
from aiplat.serving.gateway_routing import load_api_key_teams

ENDPOINT = "ticket-triage"
LIVE = "ticket-triage@3"  # the adapter version the endpoint's route sends traffic to
CLIENT_KEY = "sk-client-4f1d9c0e-never-in-a-log"
UPSTREAM_KEY = "upstream-token-7d2a-never-in-a-log"


# --- servers ------------------------------------------------------------------------------------


@contextmanager
def serve(app) -> Iterator[str]:
    """`app` under a real uvicorn on a free port, in a thread; yields its base URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def _stand_in_vllm(seen: list[dict]) -> Starlette:
    async def answer(request: Request):
        body = await request.json()
        seen.append({"path": request.url.path, "headers": dict(request.headers), "body": body})
        prompt = body.get("prompt") or " ".join(m["content"] for m in body.get("messages", []))
        prompt_tokens, words = len(prompt.split()), ["Paris", " is", " the", " capital", "."][: body.get("max_tokens", 5)]
        chat = request.url.path.endswith("/chat/completions")
        if not body.get("stream"):
            choice = {"index": 0, "message": {"role": "assistant", "content": "".join(words)}} if chat \
                else {"index": 0, "text": "".join(words)}
            return JSONResponse({"id": "x", "object": "chat.completion", "model": body["model"], "choices": [choice],
                                 "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": len(words),
                                           "total_tokens": prompt_tokens + len(words)}})

        async def events():
            if body.get("max_tokens", 5) >= 100:  # a long answer, for a client that hangs up half-way
                for _ in range(body["max_tokens"]):
                    yield f"data: {json.dumps({'id': 'x', 'choices': [{'index': 0, 'delta': {'content': 'x'}}]})}\n\n"
                    await asyncio.sleep(0.05)
            for word in words:
                delta = {"delta": {"content": word}} if chat else {"text": word}
                yield f"data: {json.dumps({'id': 'x', 'model': body['model'], 'choices': [{'index': 0, **delta}]})}\n\n"
            if (body.get("stream_options") or {}).get("include_usage"):
                usage = {"prompt_tokens": prompt_tokens, "completion_tokens": len(words), "total_tokens": prompt_tokens + len(words)}
                yield f"data: {json.dumps({'id': 'x', 'model': body['model'], 'choices': [], 'usage': usage})}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    paths = ["/v1/chat/completions", "/v1/completions"]
    return Starlette(routes=[Route(p, answer, methods=["POST"]) for p in paths])


@pytest.fixture(scope="module")
def upstream() -> Iterator[dict]:
    seen: list[dict] = []
    with serve(_stand_in_vllm(seen)) as url:
        yield {"url": url, "seen": seen}


def _deploy(routes: AdapterRoutes, url: str, adapter: str = LIVE, name: str = ENDPOINT) -> None:
    """Route `name` wholly to `adapter` on the server at `url`, as the serving backend does once it is loaded."""
    routes.set(name, url, {adapter: 100.0})


@pytest.fixture
def world(tmp_path: Path, upstream: dict) -> dict:
    routes = AdapterRoutes(tmp_path / "adapter-routes.json")
    _deploy(routes, upstream["url"])
    upstream["seen"].clear()
    return {"routes": routes, "log_path": tmp_path / "requests.jsonl", "upstream": upstream, "tmp": tmp_path}


@contextmanager
def gateway(world: dict, **options) -> Iterator[str]:
    settings = GatewaySettings(resolver=options.pop("resolver", None) or AdapterRouteResolver(world["routes"]),
                               request_log=RequestLog(world["log_path"]), **options)
    with serve(build_app(settings)) as url:
        yield url


def _chat(url: str, headers: dict | None = None, model: str = ENDPOINT, **extra) -> httpx.Response:
    return httpx.post(f"{url}/v1/chat/completions", headers=headers or {}, timeout=30, json={
        "model": model, "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "max_tokens": 5, **extra})


def _records(world: dict) -> list:
    records, rejected = RequestLog(world["log_path"]).read()
    assert rejected == []
    return records


# --- routing, labels, records --------------------------------------------------------------------


def test_header_labels_are_recorded_and_the_model_is_rewritten(world: dict) -> None:
    with gateway(world) as url:
        answer = _chat(url, {"X-AIPLAT-Team": "ml", "X-AIPLAT-Feature": "triage-ui",
                             "Authorization": f"Bearer {CLIENT_KEY}"})
    assert answer.status_code == 200, answer.text
    assert answer.json()["choices"][0]["message"]["content"] == "Paris is the capital."
    [forwarded] = world["upstream"]["seen"]
    # The shared base server is asked for the adapter version the route names, at its own /v1.
    assert forwarded["body"]["model"] == LIVE and forwarded["path"] == "/v1/chat/completions"
    assert "authorization" not in forwarded["headers"], "the client's key must not travel upstream"
    [record] = _records(world)
    assert (record.endpoint, record.model, record.team, record.feature, record.status) == \
        (ENDPOINT, LIVE, "team:ml", "triage-ui", 200)
    assert (record.prompt_tokens, record.completion_tokens) == (6, 5) and record.latency_ms > 0
    text = world["log_path"].read_text()
    assert CLIENT_KEY not in text and "Bearer" not in text and "uthorization" not in text


def test_an_api_key_mapped_to_a_team_labels_the_request(world: dict) -> None:
    hashed = CliRunner().invoke(__import__("aiplat.cli", fromlist=["cli"]).cli, ["gateway", "hash-key"], input=CLIENT_KEY + "\n")
    assert hashed.exit_code == 0, hashed.output
    digest = hashed.output.strip()
    assert digest == hashlib.sha256(CLIENT_KEY.encode()).hexdigest()
    mapping_file = world["tmp"] / "api-key-teams.json"
    mapping_file.write_text(json.dumps({digest: "team:search"}))
    with gateway(world, api_key_teams=load_api_key_teams(mapping_file), require_attribution=True) as url:
        answer = _chat(url, {"Authorization": f"Bearer {CLIENT_KEY}", "X-AIPLAT-Feature": "kb-search"})
        other = _chat(url, {"Authorization": "Bearer some-unmapped-key"})
    assert answer.status_code == 200 and other.status_code == 401
    assert [(r.team, r.feature, r.status) for r in _records(world)] == \
        [("team:search", "kb-search", 200), ("unattributed", "unattributed", 401)]
    assert CLIENT_KEY not in world["log_path"].read_text()


def test_a_mapping_file_holding_a_raw_key_is_refused_without_echoing_it(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text(yaml.safe_dump({CLIENT_KEY: "team:ml"}))
    with pytest.raises(ValueError, match="entry 1 is not a lowercase sha256") as err:
        load_api_key_teams(path)
    assert CLIENT_KEY not in str(err.value)


def test_unattributed_is_recorded_locally_and_refused_when_attribution_is_required(world: dict) -> None:
    with gateway(world) as url:
        assert _chat(url).status_code == 200
    with gateway(world, require_attribution=True) as url:
        refused = _chat(url, {"X-AIPLAT-Feature": "triage-ui"})
    assert refused.status_code == 401
    error = refused.json()["error"]
    assert "X-AIPLAT-Team" in error["message"] and error["type"] == "authentication_error"
    assert len(world["upstream"]["seen"]) == 1, "a refused request never reaches the endpoint"
    first, second = _records(world)
    assert (first.team, first.feature, first.status) == ("unattributed", "unattributed", 200)
    assert (second.team, second.feature, second.status, second.latency_ms) == ("unattributed", "triage-ui", 401, 0.0)
    assert (second.prompt_tokens, second.completion_tokens) == (0, 0)


def test_an_endpoint_without_a_route_is_a_404_listing_the_routed_ones(world: dict) -> None:
    _deploy(world["routes"], world["upstream"]["url"], adapter="kb-search@1", name="kb-search")
    with gateway(world) as url:
        missing = _chat(url, {"X-AIPLAT-Team": "ml"}, model="no-such-endpoint")
        listed = httpx.get(f"{url}/v1/models", timeout=10).json()
        metrics = httpx.get(f"{url}/metrics", timeout=10).text
    assert missing.status_code == 404
    assert missing.json()["error"] == {
        "message": "no live endpoint named 'no-such-endpoint' (endpoints: kb-search, ticket-triage)",
        "type": "invalid_request_error", "param": None, "code": "model_not_found"}
    assert [m["id"] for m in listed["data"]] == ["kb-search", ENDPOINT]
    assert _records(world) == [] and world["upstream"]["seen"] == []
    assert 'aiplat_gateway_requests_total{endpoint="unknown",feature="unattributed",status="404",team="team:ml"} 1.0' in metrics


def test_bad_labels_and_bodies_are_clear_400s(world: dict) -> None:
    with gateway(world) as url:
        bad_label = _chat(url, {"X-AIPLAT-Team": "ml; drop table", "X-AIPLAT-Feature": "x"})
        no_model = httpx.post(f"{url}/v1/completions", json={"prompt": "hi"}, timeout=10)
    assert bad_label.status_code == 400 and "x-aiplat-team" in bad_label.json()["error"]["message"]
    assert no_model.status_code == 400 and "`model`" in no_model.json()["error"]["message"]
    assert _records(world) == []


def test_upstream_down_is_a_502_and_recorded(world: dict) -> None:
    _deploy(world["routes"], f"http://127.0.0.1:{free_port()}")  # a real closed port: nothing listens
    with gateway(world) as url:
        answer = _chat(url, {"X-AIPLAT-Team": "ml", "X-AIPLAT-Feature": "triage-ui"})
    assert answer.status_code == 502
    assert "unreachable" in answer.json()["error"]["message"] and ENDPOINT in answer.json()["error"]["message"]
    [record] = _records(world)
    assert (record.status, record.team, record.prompt_tokens) == (502, "team:ml", 0)


def test_a_canary_split_and_a_switch_are_followed_at_the_next_request(world: dict) -> None:
    headers = {"X-AIPLAT-Team": "ml", "X-AIPLAT-Feature": "triage-ui"}
    resolver = AdapterRouteResolver(world["routes"], rng=random.Random(7))  # seeded: the same draws every run
    with gateway(world, resolver=resolver) as url:
        assert _chat(url, headers).status_code == 200
        world["routes"].set(ENDPOINT, world["upstream"]["url"], {LIVE: 50.0, "ticket-triage@4": 50.0})
        assert all(_chat(url, headers).status_code == 200 for _ in range(20))
        _deploy(world["routes"], world["upstream"]["url"], adapter="ticket-triage@4")  # promoted
        assert _chat(url, headers).status_code == 200
    sent = [s["body"]["model"] for s in world["upstream"]["seen"]]
    # Each request's record names the version it was really sent to: the per-version figures rely on it.
    assert [r.model for r in _records(world)] == sent
    assert sent[0] == LIVE and sent[-1] == "ticket-triage@4"
    assert set(sent[1:-1]) == {LIVE, "ticket-triage@4"}


def _stream(url: str, body: dict, path: str = "/v1/chat/completions") -> list[str]:
    headers = {"X-AIPLAT-Team": "search", "X-AIPLAT-Feature": "kb-stream"}
    with httpx.stream("POST", f"{url}{path}", json={"model": ENDPOINT, "max_tokens": 5, "stream": True, **body},
                      headers=headers, timeout=30) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        return [line for line in response.iter_lines() if line.startswith("data:")]


def test_streaming_passes_chunks_through_and_records_usage(world: dict) -> None:
    with gateway(world) as url:
        plain = _stream(url, {"messages": [{"role": "user", "content": "capital of France"}]})
        wanted = _stream(url, {"prompt": "The capital of France", "stream_options": {"include_usage": True}},
                         path="/v1/completions")
    assert plain[-1] == "data: [DONE]" and len(plain) == 6
    chunks = [json.loads(line[5:]) for line in plain[:-1]]
    assert "".join(c["choices"][0]["delta"]["content"] for c in chunks) == "Paris is the capital."
    assert not any(c.get("usage") for c in chunks), "the usage chunk the gateway asked for is not the client's"
    usage_chunk = json.loads(wanted[-2][5:])
    assert usage_chunk["choices"] == [] and usage_chunk["usage"]["completion_tokens"] == 5
    sent = [s["body"] for s in world["upstream"]["seen"]]
    assert all(b["stream_options"]["include_usage"] is True for b in sent)
    first, second = _records(world)
    assert (first.team, first.feature, first.status, first.prompt_tokens, first.completion_tokens) == \
        ("team:search", "kb-stream", 200, 3, 5)
    assert (second.prompt_tokens, second.completion_tokens) == (4, 5)


def test_a_client_that_hangs_up_mid_stream_is_recorded(world: dict) -> None:
    with gateway(world) as url:
        with httpx.stream("POST", f"{url}/v1/chat/completions", timeout=30, headers={"X-AIPLAT-Team": "ml"},
                          json={"model": ENDPOINT, "max_tokens": 200, "stream": True, "messages": []}) as response:
            assert next(response.iter_lines()).startswith("data:")
        deadline = time.monotonic() + 30  # a wait for the record, not a timing assertion
        while not (world["log_path"].exists() and world["log_path"].read_text().strip()) and time.monotonic() < deadline:
            time.sleep(0.05)
    [record] = _records(world)
    assert (record.team, record.status) == ("team:ml", 499)


def test_the_cost_report_attributes_gateway_traffic_to_team_and_feature(world: dict) -> None:
    from resources.operations import OperationsResource

    with gateway(world) as url:
        for _ in range(3):
            assert _chat(url, {"X-AIPLAT-Team": "ml", "X-AIPLAT-Feature": "triage-ui"}).status_code == 200
        assert _chat(url, {"X-AIPLAT-Team": "search", "X-AIPLAT-Feature": "kb-search"}).status_code == 200
        metrics = httpx.get(f"{url}/metrics", timeout=10).text
    today = datetime.now(timezone.utc).date()
    report = OperationsResource(request_log_path=str(world["log_path"])).cost_report(today, today)
    rows = {(r.team, r.feature): r for r in report.rows.itertuples()}
    assert set(rows) == {("team:ml", "triage-ui"), ("team:search", "kb-search")}
    assert (rows["team:ml", "triage-ui"].requests, rows["team:ml", "triage-ui"].prompt_tokens) == (3, 18)
    assert rows["team:search", "kb-search"].completion_tokens == 5
    assert rows["team:ml", "triage-ui"].total_cost > rows["team:search", "kb-search"].total_cost > 0
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(metrics) for s in family.samples}
    assert samples["aiplat_gateway_tokens_total", (("kind", "prompt"), ("team", "team:ml"))] == 18
    assert samples["aiplat_gateway_requests_total", (("endpoint", ENDPOINT), ("feature", "kb-search"),
                                                     ("status", "200"), ("team", "team:search"))] == 1


def test_the_configured_upstream_key_is_sent_and_a_request_cannot_steer_the_url(world: dict) -> None:
    with gateway(world, upstream_api_key=UPSTREAM_KEY, require_attribution=True) as url:
        answer = _chat(url, {"X-AIPLAT-Team": "ml", "X-AIPLAT-Feature": "triage-ui",
                             "Authorization": f"Bearer {CLIENT_KEY}"})
        escape = _chat(url, {"X-AIPLAT-Team": "ml"}, model="../admin")
    assert answer.status_code == 200 and escape.status_code == 404
    # The URL is the route's, never built from the request's `model`.
    [forwarded] = world["upstream"]["seen"]
    assert forwarded["path"] == "/v1/chat/completions" and forwarded["body"]["model"] == LIVE
    assert forwarded["headers"]["authorization"] == f"Bearer {UPSTREAM_KEY}"
    [record] = _records(world)
    assert (record.model, record.team) == (LIVE, "team:ml")
    assert UPSTREAM_KEY not in world["log_path"].read_text() and CLIENT_KEY not in world["log_path"].read_text()


def test_a_broken_routes_file_is_a_503_until_it_is_fixed(world: dict) -> None:
    good = world["routes"].path.read_text()
    with gateway(world) as url:
        world["routes"].path.write_text(good[: len(good) // 2])  # as a hand edit cut short would leave it
        broken = _chat(url, {"X-AIPLAT-Team": "ml"})
        listing = httpx.get(f"{url}/v1/models", timeout=10)
        world["routes"].path.write_text(good)
        fixed = _chat(url, {"X-AIPLAT-Team": "ml"})
    assert (broken.status_code, listing.status_code, fixed.status_code) == (503, 503, 200)
    assert broken.json()["error"]["code"] == "routes_unreadable"
    assert str(world["tmp"]) not in broken.text, "the answer does not show where the routes live"
    assert len(world["upstream"]["seen"]) == 1  # the broken file was never taken for "no such endpoint"


def test_prod_serve_without_the_routes_file_names_its_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from aiplat.cli import cli

    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps({hashlib.sha256(CLIENT_KEY.encode()).hexdigest(): "team:ml"}))
    monkeypatch.setenv("AIPLAT_ENV", "prod")
    monkeypatch.setenv("AIPLAT_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.delenv("AIPLAT_GATEWAY_ADAPTER_ROUTES", raising=False)
    result = CliRunner().invoke(cli, ["gateway", "serve", "--port", str(free_port()), "--api-key-teams", str(keys),
                                      "--request-log", str(tmp_path / "requests.jsonl")])
    assert result.exit_code == 1, result.output
    assert "AIPLAT_GATEWAY_ADAPTER_ROUTES (--adapter-routes) is not set" in result.output
    assert not (tmp_path / "requests.jsonl").exists()  # refused before it served or wrote anything


def test_chat_cli_goes_through_the_gateway_with_team_and_feature(world: dict, state_dir: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from aiplat.cli import cli

    monkeypatch.setenv("AIPLAT_TEAM", "ml")
    world = {**world, "routes": AdapterRoutes()}  # the state folder's, which `aiplat chat` checks too
    _deploy(world["routes"], world["upstream"]["url"])
    with gateway(world) as url:
        monkeypatch.setenv("AIPLAT_GATEWAY_PORT", url.rsplit(":", 1)[1])
        default = CliRunner().invoke(cli, ["chat", ENDPOINT, "What is the capital of France?"])
        chosen = CliRunner().invoke(cli, ["chat", ENDPOINT, "Capital?", "--team", "search", "--feature", "notebook"])
    assert default.exit_code == 0 and "Paris" in default.output, default.output
    assert chosen.exit_code == 0, chosen.output
    assert [(r.team, r.feature) for r in _records(world)] == [("team:ml", "cli-chat"), ("team:search", "notebook")]

    monkeypatch.setenv("AIPLAT_GATEWAY_PORT", str(free_port()))
    down = CliRunner().invoke(cli, ["chat", ENDPOINT, "Capital?"])
    assert down.exit_code == 1 and "aiplat stack up gateway" in down.output
    typo = CliRunner().invoke(cli, ["chat", "ticket-triag", "Capital?"])
    assert typo.exit_code == 1 and "no live endpoint named 'ticket-triag' (endpoints: ticket-triage)" in typo.output


# --- Kubernetes ----------------------------------------------------------------------------------


def test_the_committed_manifest_runs_the_real_command_and_validates_strictly() -> None:
    from aiplat.commands.gateway import serve as serve_command
    from aiplat.serving import gateway_k8s

    path = project_root() / "deploy" / "serving" / "gateway.yaml"
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    # What `aiplat gateway render` prints today, not an older rendering.
    assert docs == gateway_k8s.render_gateway(gateway_k8s.GatewaySpec())
    assert [d["kind"] for d in docs] == ["PersistentVolumeClaim", "Deployment", "Service"]
    for doc in docs:
        for version in sorted({v for v in all_versions() if tuple(map(int, v.split(".")[:2])) >= (1, 30)}):
            kubernetes_validate.validate(doc, version, strict=True)
    claim, deployment, service = docs
    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]
    command = container["command"]
    assert command[:3] == ["aiplat", "gateway", "serve"]
    params = serve_command.make_context("serve", command[3:]).params  # the real options accept them
    assert params["require_attribution"] is True
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert str(params["request_log"]).startswith(mounts["request-log"]["mountPath"] + "/")
    assert volumes["request-log"]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    assert "ReadWriteMany" in claim["spec"]["accessModes"]
    assert str(params["api_key_teams"]).startswith(mounts["api-keys"]["mountPath"] + "/")
    assert volumes["api-keys"]["configMap"]["name"] == gateway_k8s.API_KEYS_CONFIGMAP
    key_env = next(e for e in container["env"] if e["name"] == "AIPLAT_VLLM_API_KEY")
    assert key_env["valueFrom"]["secretKeyRef"]["name"] == "aiplat-secrets" and "value" not in key_env
    assert container["readinessProbe"]["httpGet"]["path"] == "/health"
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True and pod["automountServiceAccountToken"] is False


def test_the_gateway_pod_routes_by_the_mounted_routes_configmap_without_subpath() -> None:
    from aiplat.commands.gateway import serve as serve_command
    from aiplat.serving import gateway_k8s
    from aiplat.serving.k8s_adapters import routes_configmap

    rendered = routes_configmap([])  # what the Kubernetes serving backend writes
    name, [key] = rendered["metadata"]["name"], rendered["data"]
    deployment = next(d for d in gateway_k8s.render_gateway(gateway_k8s.GatewaySpec()) if d["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]
    params = serve_command.make_context("serve", container["command"][3:]).params
    [volume] = [v for v in pod["volumes"] if v.get("configMap", {}).get("name") == name]
    # Optional: the pod starts before the backend has written the ConfigMap (then no endpoint is routed).
    assert volume["configMap"]["optional"] is True
    assert volume["configMap"]["items"] == [{"key": key, "path": key}]
    [mount] = [m for m in container["volumeMounts"] if m["name"] == volume["name"]]
    # A subPath mount is copied once at pod start and never refreshed: the routes would go stale.
    assert "subPath" not in mount and "subPathExpr" not in mount and mount["readOnly"] is True
    assert str(params["adapter_routes"]) == f"{mount['mountPath']}/{key}"
    assert "--upstream-template" not in container["command"]


def test_a_configmap_update_as_kubelet_makes_it_is_followed_at_the_next_request(tmp_path: Path) -> None:
    """kubelet's layout of a ConfigMap volume: each key a symlink through `..data` to a timestamped
    folder; an update writes a new folder and swaps `..data` atomically. The resolver reads the
    file's path at every request, so it follows the swap with no restart."""
    import os

    from aiplat.serving.adapter_routes import AdapterRoute
    from aiplat.serving.k8s_adapters import routes_configmap

    mount = tmp_path / "mount"
    mount.mkdir()

    def publish(stamp: str, adapter: str) -> None:
        data = routes_configmap([AdapterRoute(ENDPOINT, "http://vllm-base-smollm2:8000", ((adapter, 100.0),))])["data"]
        (mount / stamp).mkdir()
        (mount / stamp / "adapter-routes.json").write_text(data["adapter-routes.json"])
        os.symlink(stamp, mount / "..data_tmp")
        os.replace(mount / "..data_tmp", mount / "..data")

    publish("..2026_01_01_00_00_00.1", LIVE)
    os.symlink("..data/adapter-routes.json", mount / "adapter-routes.json")
    resolver = AdapterRouteResolver(AdapterRoutes(mount / "adapter-routes.json"))
    before = resolver.resolve(ENDPOINT)
    publish("..2026_01_01_00_01_00.2", "ticket-triage@4")
    after = resolver.resolve(ENDPOINT)
    assert (before.base_url, before.served_model_name, after.served_model_name) == \
        ("http://vllm-base-smollm2:8000", LIVE, "ticket-triage@4")


def test_the_gateway_runs_as_one_replica() -> None:
    from aiplat.serving import gateway_k8s

    with pytest.raises(ValueError, match="exactly one replica"):
        gateway_k8s.render_gateway(gateway_k8s.GatewaySpec(replicas=2))
