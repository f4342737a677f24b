"""A local MLflow tracking server (SQLite backend) from .venv-bench: the baseline the
tracker's benchmarks compare with (`make bench-deps` installs it)."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from ports import free_port, wait_port

BENCH_PY = Path(__file__).resolve().parent.parent / ".venv-bench" / "bin" / "python"


def installed() -> bool:
    return (
        BENCH_PY.exists()
        and subprocess.run([str(BENCH_PY), "-c", "import mlflow"], capture_output=True).returncode
        == 0
    )


@contextlib.contextmanager
def mlflow_server() -> Iterator[str]:
    """The tracking URI of a fresh `mlflow server` (one worker, its own folder), stopped and
    its folder deleted on exit."""
    tmp = Path(tempfile.mkdtemp(prefix="neural-mlflow-"))
    port = free_port()
    server = subprocess.Popen(
        [
            str(BENCH_PY.parent / "mlflow"),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--backend-store-uri",
            f"sqlite:///{tmp / 'mlflow.db'}",
            "--default-artifact-root",
            str(tmp / "artifacts"),
            "--workers",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_port(port, 120)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(30)
        shutil.rmtree(tmp, ignore_errors=True)  # its database: tens of MB a large series
