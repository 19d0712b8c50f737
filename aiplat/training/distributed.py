"""The LoRA fine-tune on Ray Train: N DDP workers, the same inputs and the same FineTuneResult as
aiplat.training.lora.fine_tune, and the same step loop (lora.train_adapter: each worker is one
`Replica`).

What runs where:
- The caller's process (the Dagster step, a test, the CLI) is Ray's driver: it validates and splits
  the training set, starts a `ray.train.torch.TorchTrainer` on the cluster it joined
  (aiplat.scale.ray_cluster), and hands every step's metrics to `on_step` as they arrive, so a
  tracked run logs each step to MLflow exactly as the single-process path does.
- Ray Train's controller (an actor beside the driver) starts N workers, `ScalingConfig(num_workers=N)`:
  locally one CPU each (`use_gpu=False`, gloo); in prod one GPU each (`use_gpu=True`,
  `resources_per_worker={"GPU": 1}`, NCCL), which only the KubeRay `gpu` worker group offers
  (deploy/ray/ray-cluster.yaml: the GPU pool, `training` priority class).
- Each worker loads the base model and the LoRA layers with the same seed, wraps the model with
  `ray.train.torch.prepare_model` (DistributedDataParallel when N > 1), and trains on its shard of
  every global batch: lora.batch_indices cuts the single process's seeded batch stream into N
  disjoint equal shards, so the union of what the workers see at a step is what one process would
  see. DDP all-reduces (averages) the gradients in backward; the step's loss, tokens and examples
  are all-reduced too, so every rank reports the same figures. Rank 0 evaluates and writes the
  adapter (safetensors, the same files as lora.fine_tune) into the caller's out_dir/adapter.

Batch size: `params.batch_size` stays the GLOBAL batch and each worker takes batch_size / N
(FineTuneParams refuses a batch that does not split evenly). Workers are there to make the same
fine-tune faster, not a different one: the recipe (learning rate, steps, warm-up) was tuned on the
demo corpus at that batch, and the eval gate judged models trained so. A bigger global batch is a
hyperparameter change, made explicitly with batch_size (and, likely, the learning rate).

How the metrics come back, and why not through `ray.train.report` (measured with ray 2.60, Ray
Train V2, its default):
- `Result.metrics_dataframe` (the "metrics history") holds only the reports that carried a
  checkpoint in V2, so plain per-step reports never reach it.
- A `ray.train.UserCallback` does see every report (`after_report`, in the controller actor), but
  each worker's report queue holds one report, which the controller takes at its worker poll
  (RAY_TRAIN_HEALTH_CHECK_INTERVAL_S, 2 s by default): reporting every step held every step to one
  poll interval. On the tiny model, a 0.04 s step became 1.8 s (0.47 s at a 0.5 s poll, 0.105 s at
  0.1 s); a GPU step of the real base may be that short too (not measured here).
So rank 0 sends each step's metrics straight to a small channel actor (`StepChannel`, no CPU), one
call per step without waiting for it (Ray runs one caller's calls to an actor in order), and the
driver polls the channel while `fit()` runs (in a thread of its own) and hands each step to
`on_step` as it arrives. Rank 0's train function also returns its whole FineTuneResult
(`Result.return_value`, V2): any step the channel had not delivered yet is delivered from its
history before this returns, so `on_step` sees every step once, in order. When `on_step` raises
(MLflow failing mid-run), the driver marks the channel aborted; rank 0 reads that from its previous
call's answer at its next step and raises, which fails the worker group (Ray stops every worker).

Failure: any worker's error fails the run at once (`FailureConfig(max_failures=0)`: a retry is the
Dagster step's decision) and comes back as DistributedTrainingError naming the ranks and the
innermost error (e.g. "NoMatchingPeftModuleError: Target modules {'nope_proj'} not found ...").

Prod (not built; what it needs): the workers run on other machines than the Dagster step, so (1)
the base model must be readable there (from the artifact store, downloaded by each worker), and
(2) the adapter must come back through storage: RunConfig(storage_path="s3://<bucket>/ray-train")
with rank 0 reporting the adapter folder as a `ray.train.Checkpoint` at the end, and the driver
downloading `result.checkpoint.to_directory(out_dir / "adapter")`. Locally the driver and the
workers share this machine's filesystem, so rank 0 writes out_dir directly, and this module checks
that the adapter is really there afterwards (it says so when it is not).
"""

from __future__ import annotations

import functools
import logging
import shutil
import tempfile
import threading
import uuid
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import pandas as pd

from aiplat.training import prompts
from aiplat.training.data import normalize_columns, validate_training_set
from aiplat.training.lora import (
    FineTuneParams,
    FineTuneResult,
    Replica,
    StepMetrics,
    split_rows,
    train_adapter,
)

log = logging.getLogger(__name__)

POLL_S = 0.2  # how often the driver asks the channel for new steps


class DistributedTrainingError(RuntimeError):
    """The Ray Train fine-tune failed; nothing of it may be used. Names the ranks and the cause."""


def fine_tune_on_ray(
    base_dir: Path,
    training_set: pd.DataFrame,
    params: FineTuneParams,
    out_dir: Path,
    on_step: Callable[[StepMetrics], None] | None = None,
    fmt: prompts.PromptFormat | None = None,
    *,
    cluster=None,
    workers: int | None = None,
    use_gpu: bool | None = None,
    storage_path: str | None = None,
) -> FineTuneResult:
    """lora.fine_tune on `workers` (default params.ray_workers) Ray Train workers of `cluster`
    (aiplat.scale.ray_cluster.RayCluster; default: the local one). `use_gpu` default: GPUs in prod
    or when params.device asks for cuda, the CPU otherwise. `storage_path`: Ray Train's run folder
    (default: a temporary local folder, removed afterwards; prod: S3, see the module docstring)."""
    from aiplat.config import runtime
    from aiplat.scale.ray_cluster import RayCluster

    n = workers if workers is not None else params.ray_workers
    if n < 1:
        raise ValueError(f"fine_tune_on_ray needs at least one worker, got {n}")
    params = FineTuneParams(**{**params.model_dump(), "ray_workers": n})  # the global batch must split over n
    if use_gpu is None:
        use_gpu = params.device.startswith("cuda") or (params.device == "auto" and runtime() == "prod")
    training_set = normalize_columns(training_set)
    validate_training_set(training_set)
    train_df, val_df = split_rows(training_set, params)
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)

    cluster = cluster or RayCluster()
    try:
        connection = cluster.connect()
    except Exception as e:  # noqa: BLE001 - ray.init raises ConnectionError, RuntimeError, ValueError, ...
        raise DistributedTrainingError(f"cannot reach the Ray cluster at {cluster.address or 'the local Ray'}: "
                                       f"{_cause(e)}") from None
    import ray
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    log.info("fine-tune on %d Ray Train worker(s) (%s) of %s", n, "GPU" if use_gpu else "CPU", connection.describe())
    channel = _channel_class().remote()
    own_storage = storage_path is None
    storage = storage_path or tempfile.mkdtemp(prefix="aiplat-ray-train-")
    trainer = TorchTrainer(
        _train_worker,
        train_loop_config={"base_dir": str(Path(base_dir).resolve()), "train": train_df, "val": val_df,
                           "params": params.model_dump(), "out_dir": str(out_dir), "fmt": fmt, "channel": channel},
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(
            num_workers=n, use_gpu=use_gpu, resources_per_worker={"GPU": 1} if use_gpu else {"CPU": 1}),
        run_config=ray.train.RunConfig(
            name=f"aiplat-fine-tune-{uuid.uuid4().hex[:8]}", storage_path=storage,
            failure_config=ray.train.FailureConfig(max_failures=0)),
    )
    # fit() in a thread of its own: this thread hands steps to on_step (the MLflow client lives
    # here) as they arrive. (From the main thread fit() would also replace the process's SIGINT
    # handler, for good.)
    outcome: dict = {}

    def fit() -> None:
        try:
            outcome["result"] = trainer.fit()
        except BaseException as e:  # noqa: BLE001 - re-raised below, in the caller's thread
            outcome["error"] = e

    thread = threading.Thread(target=fit, name="ray-train-fit", daemon=True)
    delivered = 0
    try:
        thread.start()
        while True:
            alive = thread.is_alive()
            for metrics in ray.get(channel.take.remote()):
                if metrics["step"] == delivered + 1:  # in order, once
                    _deliver(on_step, metrics, channel)
                    delivered += 1
            if not alive:
                break
            thread.join(POLL_S)
        if "error" in outcome:
            raise _training_error(outcome["error"], n) from None
        result: FineTuneResult | None = outcome["result"].return_value
        if not isinstance(result, FineTuneResult):
            raise DistributedTrainingError(f"Ray Train's rank 0 returned {type(result).__name__}, not the fine-tune's result")
        for m in result.history[delivered:]:  # steps the channel had not delivered yet
            _deliver(on_step, asdict(m), channel)
        if len(result.history) != params.steps:
            raise DistributedTrainingError(f"Ray Train reported {len(result.history)} of {params.steps} steps")
        if not (result.adapter_dir / "adapter_model.safetensors").is_file():
            raise DistributedTrainingError(
                f"rank 0 wrote the adapter to {result.adapter_dir} on its own machine, which this process cannot "
                "read: a cluster needs the adapter reported as a checkpoint to shared storage (module docstring)")
        return result
    finally:
        if thread.is_alive():  # on_step failed: the run is aborting; wait for its workers to stop
            thread.join(120)
        try:
            ray.kill(channel)
        except Exception as e:  # noqa: BLE001 - the cluster may be what failed
            log.warning("could not stop the step channel actor: %s", e)
        if own_storage:
            shutil.rmtree(storage, ignore_errors=True)


def _deliver(on_step, metrics: dict, channel) -> None:
    if on_step is None:
        return
    try:
        on_step(StepMetrics(**metrics))
    except BaseException as e:
        import ray

        ray.get(channel.abort.remote(f"{type(e).__name__}: {e}"))
        raise


def _train_worker(config: dict) -> FineTuneResult | None:
    """One Ray Train worker: lora.train_adapter as this rank's Replica."""
    import ray.train
    import ray.train.torch
    import torch
    import torch.distributed as dist

    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    params = FineTuneParams(**config["params"])
    device = ray.train.torch.get_device()  # cpu, or this worker's GPU

    def all_reduce(values: list[float]) -> list[float]:
        if world == 1:
            return values
        tensor = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor.tolist()

    channel = config["channel"]
    pending: list = []  # rank 0's previous call to the channel

    def report(m: StepMetrics) -> None:
        if rank != 0:
            return
        if pending:
            done, _ = ray.wait(pending, timeout=0)
            aborted = ray.get(done[0]) if done else None
            if aborted:
                raise DistributedTrainingError(f"stopped at step {m.step} by the driver: {aborted}")
        pending[:] = [channel.put.remote(asdict(m))]

    return train_adapter(
        Path(config["base_dir"]), config["train"], config["val"], params, Path(config["out_dir"]),
        Replica(rank=rank, world=world, device=str(device), wrap=ray.train.torch.prepare_model, all_reduce=all_reduce),
        on_step=report, fmt=config["fmt"],
    )


@functools.cache
def _channel_class():
    """The channel actor's class, made on first use: importing this module must not import Ray
    (cloudpickle ships the class to Ray by value)."""
    import ray

    @ray.remote(num_cpus=0)
    class StepChannel:
        """Rank 0's step metrics to the driver, and the driver's abort back to rank 0."""

        def __init__(self) -> None:
            self.steps: list[dict] = []
            self.aborted: str | None = None

        def put(self, metrics: dict) -> str | None:
            self.steps.append(metrics)
            return self.aborted

        def take(self) -> list[dict]:
            steps, self.steps = self.steps, []
            return steps

        def abort(self, reason: str) -> None:
            self.aborted = reason

    return StepChannel


def _training_error(error: BaseException, workers: int) -> DistributedTrainingError:
    """Ray Train's error as one line an operator can act on: which ranks, the innermost cause."""
    failures = getattr(error, "worker_failures", None)
    if failures:
        ranks = ", ".join(str(r) for r in sorted(failures))
        first = failures[min(failures)]
        return DistributedTrainingError(
            f"Ray Train fine-tune failed on worker rank(s) {ranks} of {workers}: {_cause(first)}")
    inner = getattr(error, "controller_failure", None)
    if inner is not None:
        return DistributedTrainingError(f"Ray Train's controller stopped the fine-tune: {_cause(inner)}")
    return DistributedTrainingError(f"Ray Train fine-tune failed: {_cause(error)}")


def _cause(error: BaseException) -> str:
    from aiplat.scale.ray_cluster import _cause as innermost

    return innermost(error)

