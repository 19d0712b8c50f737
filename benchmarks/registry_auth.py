"""The registry's authentication, before and after: the round-one attack (another team moves
`champion` with one REST call) on a plain `mlflow server` and on the platform's authenticated one,
then what authentication costs per request (200 GETs of a registered model on each, in turns).

    PYTHONPATH=. .venv/bin/python benchmarks/registry_auth.py
"""
import os, sys, time, shutil, statistics, tempfile
from pathlib import Path
root = Path(tempfile.mkdtemp(prefix="bench-registry-auth-")); (root / "state").mkdir(parents=True)
os.environ["AIPLAT_STATE_DIR"] = str(root / "state"); os.environ["AIPLAT_ENV"] = "local"
import requests
from aiplat.security.identity import init_local_accounts
from tests.evaluation_helpers import mlflow_server
files = init_local_accounts({"team:ml", "team:support"})
tok = {k: v.read_text().strip() for k, v in files.items()}

def setup(uri, auth):
    api = f"{uri}/api/2.0/mlflow"
    requests.post(f"{api}/registered-models/create", json={"name": "m"}, auth=auth, timeout=10).raise_for_status()
    exp = requests.post(f"{api}/experiments/create", json={"name": "e"}, auth=auth, timeout=10).json()["experiment_id"]
    run = requests.post(f"{api}/runs/create", json={"experiment_id": exp}, auth=auth, timeout=10).json()["run"]["info"]
    requests.post(f"{api}/model-versions/create", json={"name": "m", "source": run["artifact_uri"] + "/model", "run_id": run["run_id"]}, auth=auth, timeout=10).raise_for_status()
    return api

def timed(api, auth, n=200):
    s = requests.Session(); out = []
    for _ in range(n):
        t = time.perf_counter(); s.get(f"{api}/registered-models/get", params={"name": "m"}, auth=auth, timeout=10).raise_for_status(); out.append((time.perf_counter() - t) * 1000)
    return statistics.median(out), sorted(out)[int(0.99 * n) - 1]

with mlflow_server(root / "plain") as plain, mlflow_server(root / "auth", root / "state") as authed:
    svc = ("svc-dagster", tok["svc:dagster"])
    api_p, api_a = setup(plain, None), setup(authed, svc)
    from aiplat.security.mlflow_auth import sync_registry_grants, present
    present(tok["svc:dagster"]); sync_registry_grants(authed, {"m": "team:ml"})
    move = {"name": "m", "alias": "champion", "version": "1"}
    print("attack on plain server: alias move by support ->", requests.post(f"{api_p}/registered-models/alias", json=move, auth=("support", tok["support"]), timeout=10).status_code)
    print("attack on auth server:  alias move by support ->", requests.post(f"{api_a}/registered-models/alias", json=move, auth=("support", tok["support"]), timeout=10).status_code)
    for rnd in range(3):
        p50p, p99p = timed(api_p, None); p50a, p99a = timed(api_a, ("ml", tok["ml"]))
        print(f"round {rnd}: GET registered-models/get x200: plain p50 {p50p:.1f} ms p99 {p99p:.1f}; authenticated p50 {p50a:.1f} ms p99 {p99a:.1f}; p50 ratio {p50a/p50p:.2f}")
shutil.rmtree(root, ignore_errors=True)
