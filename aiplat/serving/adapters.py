"""LoRA adapters on a shared vLLM server: one server per base model, adapters loaded at run time.

A fine-tune is a few MB of LoRA weights over a base model. Serving each as a merged copy costs a
whole server (memory, start-up) per model and per canary version; one server started with
`--enable-lora` (ServerSettings.lora) serves the base model and any number of adapters, each named
in the request's `model` field, and takes new ones through vLLM's runtime API.

That API is not enough on its own: it answers 200 before any request has used the adapter, and
vLLM keeps no notion of who approved what. So `load_adapter` here is the one way an adapter gets
onto a server:
1. verify: the folder's build signature and the promotion attestation approving exactly those
   bytes as this model and version (aiplat.security.approval.verify_for_serving); a refusal
   happens before vLLM is asked anything, and the adapters already served are untouched;
2. load: POST /v1/load_lora_adapter under the adapter's versioned name (`<model>@<version>`:
   a new version is a new name from a new folder, never a reload in place, whose prefix cache
   vLLM does not invalidate);
   and, where the server's base model hash is known, that the adapter was trained on exactly that
   base (the `base_model_sha256` its signed manifest records): an adapter is a delta over one set
   of base weights, and over other weights it answers garbage without any error;
3. confirm: /v1/models lists it with the base model as parent, and a real one-token completion
   through it comes back; otherwise it is unloaded again and the load is an error.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from aiplat.security.approval import Approval, ServingKeys, verify_for_serving
from aiplat.serving.server import json_headers, one_token_completion

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


class AdapterError(RuntimeError):
    """An adapter could not be loaded or unloaded; the message names it and says why."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"adapter {name!r}: {reason}")
        self.name = name
        self.reason = reason


@dataclass(frozen=True)
class LoadedAdapter:
    name: str  # what requests put in `model`
    model: str
    version: str
    folder: str
    parent: str  # the base model's served name
    model_digest: str  # the signed digest the attestation approved


def adapter_name(model: str, version: str) -> str:
    return f"{model}@{version}"


def adapter_version(name: str) -> str:
    """The version in an adapter's served name (`adapter_name`'s inverse)."""
    return name.rsplit("@", 1)[-1]


def check_adapter_folder(folder: Path, max_rank: int | None = None) -> dict:
    """The adapter's config, after checking it is a PEFT LoRA adapter in safetensors (no pickles)
    whose rank the server accepts."""
    config_file, weights = Path(folder) / ADAPTER_CONFIG, Path(folder) / ADAPTER_WEIGHTS
    if not config_file.is_file() or not weights.is_file():
        raise AdapterError(Path(folder).name, f"{folder} is not a LoRA adapter folder (needs {ADAPTER_CONFIG} and "
                                              f"{ADAPTER_WEIGHTS}; .bin pickles are not loaded)")
    config = json.loads(config_file.read_text(encoding="utf-8"))
    if str(config.get("peft_type", "")).upper() != "LORA":
        raise AdapterError(Path(folder).name, f"peft_type is {config.get('peft_type')!r}, not LORA")
    rank = int(config.get("r", 0))
    if max_rank is not None and rank > max_rank:
        raise AdapterError(Path(folder).name, f"rank {rank} is above the server's --max-lora-rank {max_rank}")
    return config


def _request(url: str, method: str = "GET", body: dict | None = None, api_key: str | None = None,
             timeout: float = 60.0) -> tuple[int, str]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers=json_headers(api_key), method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read().decode("utf-8", errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode("utf-8", errors="replace")


def served_models(url: str, api_key: str | None = None) -> dict[str, str | None]:
    """{name: parent} of what the server answers for: the base model (parent None) and each adapter."""
    status, text = _request(f"{url}/v1/models", api_key=api_key, timeout=10.0)
    if status != 200:
        raise AdapterError("*", f"GET /v1/models answered {status}: {text[:200]}")
    return {card["id"]: card.get("parent") for card in json.loads(text).get("data", [])}


def check_base_binding(folder: Path, name: str, base_name: str, base_sha256: str) -> None:
    """AdapterError unless the (signature-verified) adapter `folder` was trained on the base model
    whose folder hash is `base_sha256`."""
    from aiplat.models.manifest import BASE_FIELD, trained_on

    recorded = trained_on(folder)
    if recorded is None:
        raise AdapterError(name, f"its signed manifest records no {BASE_FIELD}: which base model it was trained on "
                                 f"is unknown, so it is not loaded over {base_name!r}; register it again from a fine-tune")
    if recorded != base_sha256:
        raise AdapterError(name, f"it was trained on base model {recorded[:12]}, but this server's {base_name!r} is "
                                 f"{base_sha256[:12]}: not loaded")


def load_adapter(url: str, base_name: str, folder: Path, *, model: str, version: str, attestation: str | None,
                 keys: ServingKeys, api_key: str | None = None, max_rank: int | None = None,
                 base_sha256: str | None = None) -> LoadedAdapter:
    """Verify, load and confirm one adapter version on the server at `url` (see the module doc).
    `base_sha256` is the hash of the base model the server serves: every platform path passes it."""
    name = adapter_name(model, version)
    folder = Path(folder).resolve()
    check_adapter_folder(folder, max_rank)
    approved: Approval = verify_for_serving(folder, attestation, keys, model=model, version=str(version))
    if base_sha256 is not None:
        check_base_binding(folder, name, base_name, base_sha256)
    status, text = _request(f"{url}/v1/load_lora_adapter", "POST", {"lora_name": name, "lora_path": str(folder)},
                            api_key=api_key)
    if status != 200:
        raise AdapterError(name, f"vLLM refused to load {folder}: HTTP {status}: {_message(text)}")
    problem = _confirm(url, base_name, name, api_key)
    if problem is not None:
        _request(f"{url}/v1/unload_lora_adapter", "POST", {"lora_name": name}, api_key=api_key)
        raise AdapterError(name, f"vLLM accepted the load but {problem}; unloaded again")
    return LoadedAdapter(name, model, str(version), str(folder), base_name, approved.model_digest)


def _confirm(url: str, base_name: str, name: str, api_key: str | None) -> str | None:
    listed = served_models(url, api_key)
    if name not in listed:
        return "/v1/models does not list it"
    if listed[name] != base_name:
        return f"/v1/models lists it over {listed[name]!r}, not {base_name!r}"
    return one_token_completion(url, name, api_key=api_key)


def unload_adapter(url: str, name: str, api_key: str | None = None, missing_ok: bool = False) -> None:
    """Unload `name`; an error unless the server then no longer lists it. Unloading what is not
    loaded is an error too (the caller's idea of the server was wrong) unless `missing_ok`: a
    rollback removes a candidate whether or not it is still there."""
    if missing_ok and name not in served_models(url, api_key):
        return
    status, text = _request(f"{url}/v1/unload_lora_adapter", "POST", {"lora_name": name}, api_key=api_key)
    if status != 200:
        raise AdapterError(name, f"vLLM refused to unload it: HTTP {status}: {_message(text)}")
    if name in served_models(url, api_key):
        raise AdapterError(name, "vLLM answered the unload but still lists it")


def _message(text: str) -> str:
    try:
        body = json.loads(text)
        return str((body.get("error") or {}).get("message") or body.get("message") or text)[:300]
    except (ValueError, AttributeError):
        return text[:300]


# --- desired state: what a shared server should hold, applied by one reconcile step -----------------

@dataclass(frozen=True)
class WantedAdapter:
    """One adapter version a server should serve: where its approved bytes are and their approval."""

    model: str
    version: str
    source: str  # where the adapter folder is fetched from (an s3:// prefix in prod, a folder locally)
    attestation: str

    @property
    def name(self) -> str:
        return adapter_name(self.model, self.version)

    def to_dict(self) -> dict:
        return {"model": self.model, "version": self.version, "source": self.source, "attestation": self.attestation}


@dataclass(frozen=True)
class Reconciled:
    loaded: tuple[str, ...]
    unloaded: tuple[str, ...]
    kept: tuple[str, ...]
    refused: dict[str, str]  # adapter -> why (it was not loaded; everything else went on)

    def summary(self) -> str:
        parts = [f"{label} {', '.join(names)}" for label, names in
                 (("loaded", self.loaded), ("unloaded", self.unloaded), ("kept", self.kept)) if names]
        parts += [f"refused {name}: {why}" for name, why in self.refused.items()]
        return "; ".join(parts) or "nothing to do"


def read_wanted(path: Path) -> list[WantedAdapter]:
    """The desired adapters from a JSON file ({"adapters": [...]}, as render_adapter_server writes)."""
    raw = json.loads(Path(path).read_text(encoding="utf-8"))
    return [WantedAdapter(str(a["model"]), str(a["version"]), str(a["source"]), str(a.get("attestation") or ""))
            for a in raw.get("adapters", [])]


def reconcile(url: str, base_name: str, wanted: list[WantedAdapter], fetch, keys: ServingKeys,
              api_key: str | None = None, max_rank: int | None = None, base_sha256: str | None = None,
              discard=None) -> Reconciled:
    """Make the server hold exactly `wanted`: load what is missing (fetched by `fetch(source) ->
    local folder`, then verified by `load_adapter`), unload what is no longer wanted. One adapter
    that fails (tampered, unapproved, unreachable) is reported in `refused` and skipped: the others
    are loaded and served regardless, and nothing already serving is unloaded because of it.

    An adapter already loaded is verified again on every pass: vLLM reads an adapter's folder again
    whenever it was evicted from its LoRA caches (`--max-loras`, `--max-cpu-loras`), so a folder
    changed after its load would be served on the next eviction. One that no longer matches its
    signature is unloaded, `discard(source)` drops the cached copy, and it is reported in `refused`."""
    from aiplat.security.signing import SignatureError, verify_model

    present = {name for name, parent in served_models(url, api_key).items() if parent is not None}
    wanted_names = {w.name for w in wanted}
    loaded, refused, dropped = [], {}, set()
    for adapter in wanted:
        if adapter.name in present:
            try:
                verify_model(fetch(adapter.source), keys.signature)
            except (SignatureError, OSError, ValueError) as e:
                unload_adapter(url, adapter.name, api_key, missing_ok=True)
                if discard is not None:
                    discard(adapter.source)
                dropped.add(adapter.name)
                refused[adapter.name] = f"unloaded, its folder changed after the load: {type(e).__name__}: {e}"
            continue
        try:
            folder = fetch(adapter.source)
            load_adapter(url, base_name, folder, model=adapter.model, version=adapter.version,
                         attestation=adapter.attestation, keys=keys, api_key=api_key, max_rank=max_rank,
                         base_sha256=base_sha256)
            loaded.append(adapter.name)
        except (SignatureError, AdapterError, OSError, ValueError) as e:  # SignatureError covers ApprovalError
            refused[adapter.name] = f"{getattr(e, 'kind', type(e).__name__)}: {e}"
    unloaded = []
    for name in sorted(present - wanted_names):
        unload_adapter(url, name, api_key, missing_ok=True)
        unloaded.append(name)
    return Reconciled(tuple(loaded), tuple(unloaded), tuple(sorted((present & wanted_names) - dropped)), refused)


def local_fetch(source: str) -> Path:
    """Locally an adapter's source is its folder (the model store is this disk)."""
    folder = Path(source)
    if not folder.is_dir():
        raise OSError(f"adapter source {source} is not a folder")
    return folder
