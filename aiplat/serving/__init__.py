"""Serving: every model version is a LoRA adapter on one shared vLLM server per base model.

- `backend`          ServingBackend (local vLLM CPU servers, Kubernetes manifests): load/unload an
                     adapter, route an endpoint, live state, load test, stop.
- `adapter_rollout`  the control sequence around a deploy, rollback or stop, and the canary.
- `adapter_canary`   the canary's split and its verdict from the gateway's request log.
- `adapter_routes`   endpoint -> adapter versions by weight: what the gateway routes.
- `adapters`         load/unload through vLLM's API, each adapter verified first and confirmed after.
- `adapter_loader`   the Kubernetes sidecar that fetches, verifies and loads the desired adapters.
- `server`           one vLLM OpenAI-compatible server process: start, readiness, stop, log tail.
- `registry`         the JSON file of the base servers this machine runs, written atomically.
- `champion`         which registered version (the `champion` alias, or another) an endpoint serves.
- `loadtest`         `vllm bench serve` at several concurrencies, parsed into numbers.
- `gateway*`         the metering gateway in front of every endpoint.
- `k8s*`             Kubernetes manifests of the prod runtime.
"""
