"""The adapter loader: keeps a shared vLLM server holding exactly its desired adapters.

In Kubernetes it runs as a sidecar of each base model's vLLM pod (aiplat.serving.k8s_adapters):
every `--interval` seconds it reads the desired adapters (a ConfigMap the platform renders: model,
version, the s3:// folder of the version's adapter, its promotion attestation), fetches what is
missing into the pod's adapter volume, and applies them through `adapters.reconcile`, which
verifies each adapter's signature and approval, and that it was trained on the base model the pod
holds (hashed at start), before vLLM loads it, confirms each load, and verifies loaded adapters
again on every pass. A
refused adapter is logged by name and skipped; the others serve on.

    python -m aiplat.serving.adapter_loader --desired /etc/aiplat/adapters/desired.json \\
        --base-name smollm2-135m --base-folder /models/base --public-key KEYS/model-signing.pub \\
        --approval-key KEYS/approval.pub --cache /adapters [--once]
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import time
from pathlib import Path

import click

log = logging.getLogger("aiplat.adapter_loader")


def cached_folder(cache: Path, source: str) -> Path:
    return Path(cache) / hashlib.sha256(source.encode()).hexdigest()[:16]


def s3_fetch(cache: Path, client=None):
    """fetch(source) for s3://bucket/prefix sources: the prefix's files under `cache`/<hash of the
    source> (a version's folder never changes, so one that is complete is reused)."""

    def fetch(source: str) -> Path:
        import boto3

        if not source.startswith("s3://"):
            raise ValueError(f"adapter source {source!r} is not an s3:// folder of the model store")
        bucket, _, prefix = source[5:].partition("/")
        prefix = prefix.rstrip("/") + "/"
        dest = cached_folder(cache, source)
        if dest.is_dir():  # renamed into place only once complete
            return dest
        s3 = client or boto3.client("s3")
        keys = [obj["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
                for obj in page.get("Contents", [])]
        if not keys:
            raise OSError(f"nothing under {source}")
        # Downloaded beside, then renamed: a half-fetched folder is never taken for a version (and
        # nothing is added inside the folder, whose every file the signature covers).
        staging = dest.with_name(f".{dest.name}.partial")
        shutil.rmtree(staging, ignore_errors=True)
        for key in keys:
            relative = Path(key[len(prefix):])
            if ".." in relative.parts:
                raise ValueError(f"{source}: object key {key!r} leaves its folder")
            target = staging / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            s3.download_file(bucket, key, str(target))
        staging.rename(dest)
        return dest

    return fetch


def s3_publish(folder: Path, source: str, client=None) -> int:
    """Upload the verified adapter `folder` to the model store at `source` (s3://bucket/prefix/) unless
    something is already there (a version's folder never changes); returns the files uploaded. The
    sidecar verifies what it fetches again, so a store changed after this is refused, not served."""
    import boto3

    if not source.startswith("s3://"):
        raise ValueError(f"adapter source {source!r} is not an s3:// folder of the model store")
    bucket, _, prefix = source[5:].partition("/")
    prefix = prefix.rstrip("/") + "/"
    s3 = client or boto3.client("s3")
    if s3.list_objects_v2(Bucket=bucket, Prefix=prefix, MaxKeys=1).get("KeyCount", 0):
        return 0
    files = sorted(f for f in Path(folder).rglob("*") if f.is_file())
    for f in files:
        s3.upload_file(str(f), bucket, prefix + f.relative_to(folder).as_posix())
    return len(files)


@click.command()
@click.option("--desired", type=click.Path(dir_okay=False, path_type=Path), required=True)
@click.option("--base-name", required=True, help="The base model's served name (the adapters' parent).")
@click.option("--url", default="http://127.0.0.1:8000", show_default=True)
@click.option("--public-key", type=click.Path(dir_okay=False, path_type=Path), required=True)
@click.option("--approval-key", type=click.Path(dir_okay=False, path_type=Path), required=True)
@click.option("--cache", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--base-folder", type=click.Path(file_okay=False, exists=True, path_type=Path), required=True,
              help="The base model folder vLLM serves: hashed once at start; only adapters trained on that hash load.")
@click.option("--max-rank", type=int, default=None)
@click.option("--interval", type=float, default=30.0, show_default=True)
@click.option("--once", is_flag=True, help="Reconcile once and exit (1 when an adapter was refused).")
@click.option("--api-key", envvar="VLLM_API_KEY", default=None, show_envvar=True)
@click.option("--heartbeat", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Touched after every pass of the loop: the container's liveness and readiness probes read its age.")
def main(desired: Path, base_name: str, url: str, public_key: Path, approval_key: Path, cache: Path,
         base_folder: Path, max_rank: int | None, interval: float, once: bool, api_key: str | None, heartbeat: Path | None) -> None:
    """Keep the vLLM server at URL holding exactly the adapters DESIRED names."""
    from aiplat.security.approval import ServingKeys
    from aiplat.serving import adapters

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    from aiplat.models.manifest import compute_manifest

    keys, fetch = ServingKeys(public_key, approval_key), s3_fetch(cache)
    # The base as fetched into the pod, hashed here rather than trusted from the manifest it came
    # with: a base changed in the model store then loads no adapter (each names its base's hash).
    base_sha256 = compute_manifest(base_folder).folder_sha256
    log.info("base model %s in %s: folder sha256 %s", base_name, base_folder, base_sha256)
    while True:
        try:
            result = adapters.reconcile(url, base_name, adapters.read_wanted(desired), fetch, keys,
                                        api_key=api_key, max_rank=max_rank, base_sha256=base_sha256,
                                        discard=lambda source: shutil.rmtree(cached_folder(cache, source),
                                                                             ignore_errors=True))
            (log.warning if result.refused else log.info)(result.summary())
        except (OSError, ValueError, adapters.AdapterError) as e:  # the server is not up yet, or a bad file
            result = None
            log.warning("reconcile failed: %s", e)
        if once:
            raise SystemExit(0 if result is not None and not result.refused else 1)
        if heartbeat is not None:
            # A pass that failed still beats: the loop is alive and says why in its log; a hung fetch
            # or reconcile stops the beat, and the kubelet restarts the container.
            heartbeat.touch()
        time.sleep(interval)


if __name__ == "__main__":
    main()
