"""Serving: vLLM endpoints for registered models, with canary, rollback, load tests and manifests.

- `registry`   the JSON file of endpoints (what serves where), written atomically under a lock.
- `server`     one vLLM OpenAI-compatible server process: command line, start by PID, readiness
               from a real one-token completion, stop, log tail.
- `manager`    EndpointManager: deploy a model folder as an endpoint, switch, stop; a failed start
               leaves the previous endpoint serving.
- `canary`     replay probes + a share of a load sample against live and candidate, compare, switch
               or roll back.
- `loadtest`   `vllm bench serve` at several concurrencies, parsed into numbers.
- `champion`   where the model to deploy comes from (a folder, or the MLflow `champion` alias).
- `k8s`        Kubernetes Deployment/Service/HTTPRoute manifests for the prod runtime.
"""
