"""Shared by the evaluation tests: a real MLflow server, tiny triage models that really learn
(or are deliberately degraded), and registering a model folder as an MLflow model version."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd

from aiplat.config import default_signals
from aiplat.evaluation.settings import EvalSettings, GateThresholds
from aiplat.models.manifest import write_manifest
from aiplat.models.tiny import build_tiny_llama
from aiplat.net import free_port, wait_for_port
from aiplat.training import prompts
from aiplat.training.sample import sample_training_set

VENV_BIN = Path(sys.executable).parent

# Small enough for a tiny model; the test thresholds below are what a tiny model can meet.
TEST_SETTINGS = EvalSettings(max_test_examples=18, max_new_tokens=20, batch_size=9, latency_samples=2,
                             samples_in_report=3, threads=1)
TEST_THRESHOLDS = GateThresholds(
    min_accuracy=0.6, min_macro_f1=0.5, min_golden_accuracy=0.0, min_reply_rouge_l=0.0, min_parse_rate=0.5,
    max_accuracy_drop=0.05, max_macro_f1_drop=0.05, max_golden_accuracy_drop=1.0, max_reply_rouge_l_drop=1.0,
    max_latency_ratio=None,  # wall-clock ratios on a shared 2-core CI box are noise, not signal
    min_accuracy_gain_over_base=0.0,
)


def write_test_policy(path: Path, thresholds: GateThresholds = TEST_THRESHOLDS,
                      min_test_examples: int | None = None) -> Path:
    """A gate policy whose classification floor is `thresholds` (what a tiny model can meet), with the
    real golden set; tests point AIPLAT_GATE_POLICY (honoured by the local runtime only) at it."""
    import yaml

    from aiplat.policy import load_policy

    shipped = load_policy(Path(__file__).resolve().parent.parent / "aiplat" / "policy" / "gate_policy.yaml")
    policy = shipped.canonical()
    floor = {k: v for k, v in thresholds.model_dump().items() if k in policy["tasks"]["classification"]}
    policy["tasks"]["classification"] = floor
    policy["min_test_examples"] = min_test_examples or TEST_SETTINGS.max_test_examples
    path.write_text(yaml.safe_dump(policy, sort_keys=False))
    return path


def triage_data(n: int = 90) -> pd.DataFrame:
    """The sample triage set with whole blocks of six categories per split, so every category is tested."""
    df = sample_training_set(n, seed=3)
    blocks = (df.index // 6) % 5
    df["split"] = ["test" if b == 4 else "train" for b in blocks]
    return df


@contextlib.contextmanager
def mlflow_server(root: Path, accounts_state: Path | None = None) -> Iterator[str]:
    """`mlflow server` on a SQLite store and a free port, artifacts proxied by the server. With
    `accounts_state`, MLflow's basic-auth app authenticating the accounts of that state folder (as
    the stack runs it)."""
    port = free_port()
    root.mkdir(parents=True, exist_ok=True)
    log = (root / "server.log").open("wb")
    argv = [str(VENV_BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
            "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
            "--workers", "1"]
    env = {**os.environ, "MLFLOW_TRACKING_URI": ""}
    if accounts_state is not None:
        from aiplat.security.mlflow_auth import server_args

        extra_argv, extra_env = server_args(root, accounts_state)
        argv, env = [*argv, *extra_argv], {**env, **extra_env}
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env,
                            preexec_fn=default_signals)  # stops on SIGTERM under any launcher
    try:
        if not wait_for_port("127.0.0.1", port, timeout=120):
            raise RuntimeError(f"mlflow server did not open port {port}: {(root / 'server.log').read_text()[-2000:]}")
        import requests

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if requests.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            time.sleep(0.3)
        yield f"http://127.0.0.1:{port}"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def build_base(folder: Path) -> Path:
    df = triage_data()
    corpus = [prompts.SYSTEM_PROMPT] + [
        prompts.user_prompt(r, ["product", "channel", "priority"]) + "\n" + prompts.target(r) for r in df.to_dict("records")
    ]
    build_tiny_llama(folder, corpus)
    return folder


def train_full(base: Path, df: pd.DataFrame, out: Path, steps: int = 100, lr: float = 1e-2, seed: int = 0) -> Path:
    """A full fine-tune (LoRA barely moves a randomly initialised 2-layer model in test time).
    Uses the training stage's own encoding, so prompts match what the evaluation sends."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from aiplat.training.lora import collate, encode_examples

    threads = torch.get_num_threads()
    # One thread: on a shared 2-core box, two BLAS threads contending made this ~7x slower.
    torch.set_num_threads(1)
    try:
        _train(base, df, out, steps, lr, seed)
    finally:
        torch.set_num_threads(threads)
    write_manifest(out, extra={"source": str(base), "seed": seed})
    return out


def _train(base: Path, df: pd.DataFrame, out: Path, steps: int, lr: float, seed: int) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from aiplat.training.lora import collate, encode_examples

    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base)
    examples = encode_examples(tok, df[df["split"] == "train"], 400)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    order = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        idx = torch.randint(len(examples), (8,), generator=order).tolist()
        ids, mask, labels = collate([examples[i] for i in idx], tok.pad_token_id)
        model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
        opt.step()
        opt.zero_grad()
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)


def shuffled_labels(df: pd.DataFrame, seed: int = 1) -> pd.DataFrame:
    out = df.copy()
    train = out["split"] == "train"
    out.loc[train, "category"] = out.loc[train, "category"].sample(frac=1.0, random_state=seed).to_numpy()
    return out


def register(client, name: str, folder: Path, sha256: str | None = None, training_set: pd.DataFrame | None = None) -> str:
    """What the fine-tune does at its end: the folder signed (this state's dev key), a run holding it
    as `model`, then a version tagged with the training set it was trained on (default:
    triage_data()) and with its signature (the digest a promotion attestation approves)."""
    from aiplat.models.manifest import compute_manifest
    from aiplat.security.signing import dev_key_pair, sign_model, tag_model_version
    from aiplat.training.data import training_set_hash

    signed = sign_model(folder, dev_key_pair())

    experiment = client.get_experiment_by_name("eval-tests") or None
    experiment_id = experiment.experiment_id if experiment else client.create_experiment("eval-tests")
    run = client.create_run(experiment_id)
    client.log_artifacts(run.info.run_id, str(folder), "model")
    client.set_terminated(run.info.run_id, "FINISHED")
    try:
        client.get_registered_model(name)
    except Exception:  # noqa: BLE001 - absent
        client.create_registered_model(name)
    artifact_uri = client.get_run(run.info.run_id).info.artifact_uri
    mv = client.create_model_version(
        name, source=f"{artifact_uri}/model", run_id=run.info.run_id,
        tags={"aiplat.merged_sha256": sha256 or compute_manifest(folder).folder_sha256,
              "aiplat.training_set_sha256": training_set_hash(triage_data() if training_set is None else training_set)},
    )
    tag_model_version(client, name, mv.version, signed)
    return str(mv.version)


def session_models(base_temp: Path) -> dict[str, Path]:
    """Base, good and shuffled-label tiny models, trained once per pytest session (shared basetemp)."""
    root = base_temp / "evaluation-models"
    paths = {"base": root / "base", "good": root / "good", "shuffled": root / "shuffled"}
    done = root / ".complete"
    if not done.exists():
        data = triage_data()
        build_base(paths["base"])
        train_full(paths["base"], data, paths["good"], steps=100)
        train_full(paths["base"], shuffled_labels(data), paths["shuffled"], steps=100)
        done.touch()
    return paths
