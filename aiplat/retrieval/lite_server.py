"""A Milvus Lite server process (gRPC over TCP), for tests and benchmarks.

Server mode, not the local-file mode: the file mode takes an exclusive lock, and Dagster's steps
run in separate processes that must all reach the same index.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from aiplat.config import default_signals
from aiplat.net import free_port, wait_for_port


def _executable() -> str:
    local = Path(sys.executable).with_name("milvus-lite")
    return str(local) if local.exists() else (shutil.which("milvus-lite") or "milvus-lite")


@dataclass
class MilvusLiteServer:
    data_dir: Path
    host: str = "127.0.0.1"
    port: int = field(default_factory=free_port)
    log_path: Path | None = None
    process: subprocess.Popen | None = None

    @property
    def uri(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 60.0) -> MilvusLiteServer:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path or self.data_dir.parent / f"milvus-lite-{self.port}.log", "ab")
        self.process = subprocess.Popen(
            [_executable(), "server", "--data-dir", str(self.data_dir), "--host", self.host, "--port", str(self.port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=default_signals,
        )
        log.close()
        if not wait_for_port(self.host, self.port, timeout):
            self.stop()
            raise RuntimeError(f"milvus-lite did not listen on {self.host}:{self.port} within {timeout}s")
        return self

    def stop(self, timeout: float = 20.0) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def __enter__(self) -> MilvusLiteServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
