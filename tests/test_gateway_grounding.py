"""Serving-time grounding: a request through the metering gateway to a grounded model's endpoint
(the demo spec with `training.retrieval`) carries the prompt its training set was built with, KB
passages retrieved now from a real Milvus Lite index with the real embedder.

Endpoints are routed as the serving backend routes them, by an adapter route in a real
adapter-routes file. The exact-prompt tests forward to tests/test_gateway.py's stand-in OpenAI
upstream because a real vLLM does not give back the messages it received, and these tests compare
them field by field. The real vLLM test (a base-model server started with the runtime's LoRA
settings) checks the same prompt another way: vLLM's own prompt-token count equals the token count
of the training-time prompt under the model's chat template.
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import pandas as pd
import pytest
import yaml
from click.testing import CliRunner

from aiplat.operations.requests import RequestLog
from aiplat.retrieval.chunking import chunk_articles
from aiplat.retrieval.grounding import EmbedderMismatch, add_passages, ticket_query
from aiplat.retrieval.index import build_index, embed_chunks
from aiplat.retrieval.lite_server import MilvusLiteServer
from aiplat.retrieval.queries import QUERY_SET
from aiplat.retrieval.retry import RetryPolicy
from aiplat.retrieval.sample_kb import sample_kb_articles
from aiplat.retrieval.settings import IndexSettings
from aiplat.retrieval.store import IndexStore
from aiplat.serving.adapter_routes import AdapterRouteResolver, AdapterRoutes
from aiplat.serving.gateway import GatewaySettings, build_app
from aiplat.serving.gateway_grounding import PASSAGES_HEADER, Grounding, Retriever, grounded_endpoints
from aiplat.specs import load_specs
from aiplat.training import prompts
from aiplat.training.data import feature_columns
from tests.test_gateway import _deploy, _stand_in_vllm, serve

SPECS = load_specs()  # the demo specs: one grounded model, one not
[GROUNDED] = [s for s in SPECS if s.grounded]
[PLAIN] = [s for s in SPECS if not s.grounded]
DRAFTER, TRIAGE = f"{GROUNDED.name}@1", f"{PLAIN.name}@1"  # the adapter versions the routes name
SETTINGS = IndexSettings(alias="kb_grounding", collection_prefix="kbc_grounding")
QUICK = RetryPolicy(attempts=2, base_delay_s=0.1, max_delay_s=0.2)
# A redacted ticket as the training set has it (subject, message, the prompt's feature columns).
TICKET = {"ticket_id": "t-1", "subject": "Return label", "message": "How do I print a return label for my order?",
          "product": "router", "channel": "email", "tickets_30d": 2}


def _index(uri: str, embedder, settings: IndexSettings) -> None:
    store = IndexStore.connect(uri, settings=settings)
    try:
        embedded, _ = embed_chunks(chunk_articles(sample_kb_articles(10)), embedder, store)
        build_index(store, embedded, embedder.model_id, embedder.encode(list(QUERY_SET)))
    finally:
        store.close()


@pytest.fixture(scope="module")
def kb(shared_milvus, shared_embedder):
    _index(shared_milvus.uri, shared_embedder, SETTINGS)
    store = IndexStore.connect(shared_milvus.uri, settings=SETTINGS)
    yield {"uri": shared_milvus.uri, "store": store, "embedder": shared_embedder}
    store.close()


@pytest.fixture(scope="module")
def upstream():
    seen: list[dict] = []
    with serve(_stand_in_vllm(seen)) as url:
        yield {"url": url, "seen": seen}


@pytest.fixture
def world(tmp_path: Path, upstream: dict, kb: dict) -> dict:
    routes = AdapterRoutes(tmp_path / "adapter-routes.json")
    _deploy(routes, upstream["url"], adapter=DRAFTER, name=GROUNDED.endpoint)
    _deploy(routes, upstream["url"], adapter=TRIAGE, name=PLAIN.endpoint)
    upstream["seen"].clear()
    return {"routes": routes, "log": RequestLog(tmp_path / "requests.jsonl"), "seen": upstream["seen"],
            "upstream": upstream["url"], **kb}


def _grounding(world: dict, uri: str | None = None) -> Grounding:
    connect = lambda: IndexStore.connect(uri or world["uri"], settings=SETTINGS, retry=QUICK)  # noqa: E731
    return Grounding(grounded_endpoints(SPECS), Retriever(connect, lambda: world["embedder"]))


@contextmanager
def gateway(world: dict, grounding: Grounding | None):
    settings = GatewaySettings(resolver=AdapterRouteResolver(world["routes"]), request_log=world["log"],
                               grounding=grounding)
    with serve(build_app(settings)) as url:
        yield url


def _ask(url: str, endpoint: str, messages: list[dict], path: str = "/v1/chat/completions", **extra) -> httpx.Response:
    return httpx.post(f"{url}{path}", json={"model": endpoint, "messages": messages, "max_tokens": 5, **extra},
                      headers={"X-AIPLAT-Team": "support", "X-AIPLAT-Feature": "drafts"}, timeout=60)


def _training_prompt(world: dict, ticket: dict) -> tuple[list[dict], pd.DataFrame]:
    """What the training set and the fine-tune make of `ticket`: add_passages (the training_set
    asset's retrieval) then prompts.messages with the training set's feature columns (lora.py)."""
    r = GROUNDED.training.retrieval
    df = add_passages(pd.DataFrame([ticket]), world["store"], world["embedder"], r.top_k, r.max_passage_chars)
    return prompts.messages(df.to_dict("records")[0], feature_columns(df), GROUNDED.prompt_format), df


def _lines(world: dict) -> list[dict]:
    return [json.loads(line) for line in world["log"].path.read_text().splitlines()]


def test_a_grounded_endpoint_gets_the_training_prompt_with_passages_retrieved_now(world: dict) -> None:
    expected, df = _training_prompt(world, TICKET)
    # The client sends the ticket in the training shape, without the KB section.
    sent = prompts.user_prompt(TICKET, feature_columns(df))
    with gateway(world, _grounding(world)) as url:
        answer = _ask(url, GROUNDED.endpoint, [{"role": "user", "content": sent}], temperature=0.0)
        streamed = _ask(url, GROUNDED.endpoint, [{"role": "user", "content": sent}], temperature=0.0, stream=True)
    assert answer.status_code == 200, answer.text
    assert streamed.status_code == 200 and "data: [DONE]" in streamed.text
    forwarded, forwarded_stream = world["seen"]
    assert forwarded_stream["body"]["messages"] == expected
    body = forwarded["body"]
    assert body["messages"] == expected  # equal to the training-time builder's, field by field
    assert (body["model"], body["temperature"], body["max_tokens"]) == (DRAFTER, 0.0, 5)
    system, user = body["messages"]
    assert system == {"role": "system", "content": GROUNDED.training.prompt_template}
    assert user["content"].startswith(sent + "\nknowledge base:\n- ")
    passages = user["content"].split("\nknowledge base:\n", 1)[1].split("\n")
    assert len(passages) == GROUNDED.training.retrieval.top_k
    assert all(p.startswith("- ") and 0 < len(p) - 2 <= GROUNDED.training.retrieval.max_passage_chars for p in passages)
    assert "return label" in user["content"].split("knowledge base:")[1].lower()  # the passages fit the ticket

    # The passages used: the index's top hits for the ticket's query, named by id only.
    top = world["store"].search(SETTINGS.alias, world["embedder"].encode([ticket_query(TICKET["subject"],
                                TICKET["message"])]), GROUNDED.training.retrieval.top_k)[0]
    ids = [h["chunk_id"] for h in top]
    assert answer.headers[PASSAGES_HEADER] == streamed.headers[PASSAGES_HEADER] == ",".join(ids)
    for line in _lines(world):  # the plain answer's and the stream's
        assert (line["endpoint"], line["status"], line["team"], line["grounding"]) == \
            (GROUNDED.endpoint, 200, "team:support", "kb=" + ",".join(ids))
    assert len(_lines(world)) == 2
    assert passages[0][2:30] not in world["log"].path.read_text(), "passage text must not reach the request log"


def test_free_text_from_aiplat_chat_is_grounded_as_a_ticket_without_subject(world: dict, state_dir: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from aiplat.cli import cli

    world = {**world, "routes": AdapterRoutes()}  # the state folder's, which `aiplat chat` checks too
    _deploy(world["routes"], world["upstream"], adapter=DRAFTER, name=GROUNDED.endpoint)
    question = "How do I print a return label?"
    expected, _ = _training_prompt(world, {"ticket_id": "x", "subject": "", "message": question})
    with gateway(world, _grounding(world)) as url:
        monkeypatch.setenv("AIPLAT_GATEWAY_PORT", url.rsplit(":", 1)[1])
        chat = CliRunner().invoke(cli, ["chat", GROUNDED.endpoint, question, "--team", "support"])
        with_system = CliRunner().invoke(cli, ["chat", GROUNDED.endpoint, question, "--system", "Be brief."])
    assert chat.exit_code == 0 and "Paris" in chat.output, chat.output  # the stand-in's answer
    [forwarded] = world["seen"]
    assert forwarded["body"]["messages"] == expected
    assert expected[1]["content"].startswith(f"subject: \nmessage: {question}\nknowledge base:\n- ")
    # The spec's system prompt is the one the model learned: a client's own is refused, clearly.
    assert with_system.exit_code == 1 and "HTTP 400" in with_system.output and "no system message" in with_system.output


def test_a_plain_endpoint_is_forwarded_exactly_as_without_grounding(world: dict) -> None:
    messages = [{"role": "system", "content": "You triage."}, {"role": "user", "content": "My parcel is late."}]
    answers, lines = [], []
    for grounding in (None, _grounding(world)):
        with gateway(world, grounding) as url:
            answers.append(_ask(url, PLAIN.endpoint, messages, temperature=0.3, stream=False))
        lines.append(_lines(world)[-1])
    assert [a.status_code for a in answers] == [200, 200]
    without, with_ = world["seen"]
    assert json.dumps(with_["body"]) == json.dumps(without["body"])
    assert with_["body"] == {"model": TRIAGE, "messages": messages, "max_tokens": 5, "temperature": 0.3,
                             "stream": False}
    assert answers[0].content == answers[1].content
    assert dict(answers[0].headers).keys() == dict(answers[1].headers).keys() and PASSAGES_HEADER not in answers[1].headers
    assert sorted(lines[0]) == sorted(lines[1]) and "grounding" not in lines[1]


def test_a_grounded_endpoint_refuses_prompts_it_cannot_ground_as_trained(world: dict) -> None:
    ticket = {"role": "user", "content": "Where is my refund?"}
    with gateway(world, _grounding(world)) as url:
        system = _ask(url, GROUNDED.endpoint, [{"role": "system", "content": "Talk like a pirate."}, ticket])
        turns = _ask(url, GROUNDED.endpoint, [ticket, {"role": "assistant", "content": "Hi"}, ticket])
        completions = httpx.post(f"{url}/v1/completions", json={"model": GROUNDED.endpoint, "prompt": "Refund?"},
                                 timeout=30)
    assert [r.status_code for r in (system, turns, completions)] == [400, 400, 400]
    assert system.json()["error"]["code"] == "grounded_prompt_shape"
    assert "send the ticket as one user message" in turns.json()["error"]["message"]
    assert completions.json()["error"]["code"] == "grounded_chat_only"
    assert world["seen"] == []


def test_an_index_embedded_by_another_model_is_refused_at_training_and_serving_time(world: dict) -> None:
    """Rows of the served index carry the id of the model that embedded them; here a real index whose
    rows name another model (as after a rebuild with a new embedder that this process does not have)."""
    other = IndexSettings(alias="kb_grounding_other", collection_prefix="kbc_grounding_other")
    store = IndexStore.connect(world["uri"], settings=other)
    try:
        embedded, _ = embed_chunks(chunk_articles(sample_kb_articles(4)), world["embedder"], store)
        build_index(store, embedded.assign(model_id="another-model@0123456789ab"), "another-model@0123456789ab",
                    world["embedder"].encode(list(QUERY_SET)))
        with pytest.raises(EmbedderMismatch, match="embedded with another-model@0123456789ab"):
            add_passages(pd.DataFrame([TICKET]), store, world["embedder"], 2, 240)
    finally:
        store.close()
    connect = lambda: IndexStore.connect(world["uri"], settings=other, retry=QUICK)  # noqa: E731
    grounding = Grounding(grounded_endpoints(SPECS), Retriever(connect, lambda: world["embedder"]))
    with gateway(world, grounding) as url:
        refused = _ask(url, GROUNDED.endpoint, [{"role": "user", "content": "How do I print a return label?"}])
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "grounding_unavailable"
    assert "another-model" not in refused.text and world["seen"] == []


@pytest.mark.slow
def test_milvus_down_is_a_clear_503_recorded_and_a_restarted_milvus_grounds_again(world: dict, tmp_path: Path) -> None:
    """A real Milvus Lite server, stopped and started again: the gateway never answers ungrounded."""
    server = MilvusLiteServer(tmp_path / "milvus").start()
    try:
        _index(server.uri, world["embedder"], SETTINGS)
        ticket = [{"role": "user", "content": "How do I print a return label?"}]
        with gateway(world, _grounding(world, server.uri)) as url:
            before = _ask(url, GROUNDED.endpoint, ticket)
            server.stop()
            down = _ask(url, GROUNDED.endpoint, ticket)
            server.start()
            # Until the restarted server answers, each request is a 503 too (never an ungrounded answer).
            deadline = time.monotonic() + 60
            while (after := _ask(url, GROUNDED.endpoint, ticket)).status_code == 503 and time.monotonic() < deadline:
                time.sleep(0.5)
    finally:
        server.stop()
    assert (before.status_code, down.status_code, after.status_code) == (200, 503, 200), down.text
    error = down.json()["error"]
    assert error["code"] == "grounding_unavailable" and "knowledge base" in error["message"]
    assert "not sent to the model" in error["message"]
    assert "127.0.0.1" not in down.text and str(server.port) not in down.text, "no address in the answer"
    assert len(world["seen"]) == 2, "the request that could not be grounded never reached the model"
    assert after.headers[PASSAGES_HEADER] == before.headers[PASSAGES_HEADER]
    statuses = [(line["status"], line["grounding"]) for line in _lines(world)]
    assert statuses[0][1].startswith("kb=") and statuses[-1] == statuses[0]
    assert set(statuses[1:-1]) == {(503, "kb=unavailable")}


@pytest.mark.slow
def test_a_real_vllm_gets_the_training_prompt_through_the_cli_wired_gateway(tmp_path: Path, smollm_base: Path,
                                                                           shared_embedder,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """End to end on real parts: `aiplat gateway serve`'s grounding (from the demo specs, the runtime's
    Milvus and embedder), a real vLLM base-model server started as the local serving backend starts
    one (the runtime's settings, LoRA on), the grounded endpoint routed to the base model's served
    name through the state folder's adapter routes, `aiplat chat` and the official client. vLLM's own
    prompt-token count equals the training prompt's under the chat template."""
    import openai
    from transformers import AutoTokenizer

    from aiplat.cli import cli
    from aiplat.commands.gateway import _grounding
    from aiplat.serving.server import start_server, stop_server
    from resources.vllm import LocalVllmResource
    from tests.conftest import built_vllm_env

    env = built_vllm_env()  # looked up before the private state dir is set
    monkeypatch.setenv("AIPLAT_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("AIPLAT_ENV", "local")
    monkeypatch.setenv("AIPLAT_TEAM", "team:support")
    settings = LocalVllmResource(enforce_eager=True, dtype="float32", vllm_python=str(env.python),
                                 start_timeout_s=900).server_settings()
    assert settings.lora is not None  # a base server as the backend runs it, ready for adapters
    base = GROUNDED.base_model
    question = "How do I print a return label?"
    with MilvusLiteServer(tmp_path / "milvus") as server:
        monkeypatch.setenv("AIPLAT_MILVUS_PORT", str(server.port))  # the local runtime's Milvus, default alias
        _index(server.uri, shared_embedder, IndexSettings())
        store = IndexStore.connect(server.uri)
        world = {"store": store, "embedder": shared_embedder}
        expected, _ = _training_prompt(world, {"ticket_id": "x", "subject": "", "message": question})
        store.close()
        record = start_server(f"base-{base}", smollm_base, "base", base, settings)
        try:
            # No adapter is trained here: the route sends the endpoint to the base model itself.
            _deploy(AdapterRoutes(), record.url, adapter=base, name=GROUNDED.endpoint)
            grounding = _grounding()
            assert grounding is not None and set(grounding.endpoints) == {GROUNDED.endpoint}
            gateway_settings = GatewaySettings(resolver=AdapterRouteResolver(AdapterRoutes()), request_log=RequestLog(),
                                               grounding=grounding)
            with serve(build_app(gateway_settings)) as url:
                monkeypatch.setenv("AIPLAT_GATEWAY_PORT", url.rsplit(":", 1)[1])
                chat = CliRunner().invoke(cli, ["chat", GROUNDED.endpoint, question, "--max-tokens", "16"])
                client = openai.OpenAI(base_url=f"{url}/v1", api_key="sk-not-logged", max_retries=0,
                                       default_headers={"X-AIPLAT-Feature": "drafts"})
                raw = client.chat.completions.with_raw_response.create(
                    model=GROUNDED.endpoint, max_tokens=8, temperature=0,
                    messages=[{"role": "user", "content": question}])
        finally:
            stop_server(record)
    assert chat.exit_code == 0 and chat.output.strip(), chat.output
    answer = raw.parse()
    assert answer.model == base  # vLLM answered as the routed model
    tokenizer = AutoTokenizer.from_pretrained(smollm_base)
    text = tokenizer.apply_chat_template(expected, add_generation_prompt=True, tokenize=False)
    assert answer.usage.prompt_tokens == len(tokenizer(text, add_special_tokens=False)["input_ids"])
    ids = raw.headers[PASSAGES_HEADER].split(",")
    assert len(ids) == GROUNDED.training.retrieval.top_k
    records, rejected = RequestLog().read()
    assert rejected == [] and [(r.endpoint, r.model, r.status, r.grounding) for r in records] == \
        [(GROUNDED.endpoint, base, 200, "kb=" + ",".join(ids))] * 2
    assert records[0].prompt_tokens == answer.usage.prompt_tokens


def test_the_prod_gateway_manifest_gets_the_kb_index_address_and_token_from_the_secret() -> None:
    from aiplat.config import project_root

    docs = [d for d in yaml.safe_load_all((project_root() / "deploy" / "serving" / "gateway.yaml").read_text()) if d]
    [container] = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    for name in ("AIPLAT_MILVUS_URI", "AIPLAT_MILVUS_TOKEN"):
        assert env[name]["valueFrom"]["secretKeyRef"]["name"] == "aiplat-secrets" and "value" not in env[name]
