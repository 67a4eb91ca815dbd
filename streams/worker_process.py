"""Running a ``postpulse worker`` as a child process (demo, tests, benchmarks)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from streams.broker import terminate


def worker_env(settings: Any, web_port: int, **extra: str) -> dict[str, str]:
    """The ``POSTPULSE_*`` variables of a worker configured like ``settings`` (a
    :class:`streams.settings.Settings`), plus ``extra`` settings by field name."""
    env = {
        "POSTPULSE_BROKER_URL": settings.broker_url,
        "POSTPULSE_BUNDLE_PATH": str(settings.bundle_path),
        "POSTPULSE_MILVUS_URI": settings.milvus_uri,
        "POSTPULSE_DATA_DIR": str(settings.data_dir),
        "POSTPULSE_WEB_PORT": str(web_port),
        "POSTPULSE_TOPIC_POSTS": settings.topic_posts,
        "POSTPULSE_TOPIC_DLQ": settings.topic_dlq,
        "POSTPULSE_TOPIC_ANALYSES": settings.topic_analyses,
        "POSTPULSE_TOPIC_TREND_EVENTS": settings.topic_trend_events,
        "POSTPULSE_APP_ID": settings.app_id,
    }
    env.update({f"POSTPULSE_{k.upper()}": v for k, v in extra.items()})
    return env


class WorkerProcess:
    """A worker subprocess configured by ``POSTPULSE_*`` variables, logging to a file."""

    def __init__(self, env: dict[str, str], log_file: Path, extra_args: list[str] | None = None):
        self.env = env
        self.log_file = log_file
        self.extra_args = extra_args or []
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def web_port(self) -> int:
        """Port of the worker's /metrics page."""
        return int(self.env["POSTPULSE_WEB_PORT"])

    def start(self) -> WorkerProcess:
        """Launch the worker (returns at once; it joins the group in the background)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("POSTPULSE_")}
        env.update(self.env)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with self.log_file.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "streams.cli", "worker", *self.extra_args],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def metrics(self, timeout: float = 2.0) -> str:
        """The worker's /metrics text."""
        url = f"http://127.0.0.1:{self.web_port}/metrics"
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return str(resp.read().decode())

    def assigned_partitions(self) -> int:
        """Input partitions the worker consumes now (0 while joining or rebalancing)."""
        for line in self.metrics(timeout=1.0).splitlines():
            if line.startswith("postpulse_assigned_partitions "):
                return int(float(line.split()[1]))
        return 0

    def wait_ready(self, timeout: float = 90.0) -> None:
        """Wait until the worker has joined its group and owns input partitions."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(
                    f"worker exited with {self.process.returncode}; see {self.log_file}"
                )
            try:
                if self.assigned_partitions() > 0:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"worker not ready after {timeout}s; see {self.log_file}")

    def alive(self) -> bool:
        """Whether the process is still running."""
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL: no clean shutdown, no final commit."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM and wait for a clean shutdown; SIGKILL after ``timeout``."""
        if self.process is None:
            return None
        return terminate(self.process, timeout)


class MilvusLiteServer:
    """``milvus-lite server`` as a child process: a real Milvus over gRPC that other
    processes reach at :attr:`uri`, and that can be stopped and started again on the same
    data folder and port (tests, the chaos suite)."""

    def __init__(self, data_dir: Path, port: int, log_file: Path) -> None:
        self.data_dir = data_dir
        self.port = port
        self.log_file = log_file
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> MilvusLiteServer:
        from streams.broker import wait_for_port

        exe = Path(sys.executable).parent / "milvus-lite"
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with self.log_file.open("ab") as out:
            self.process = subprocess.Popen(
                [
                    *(str(exe), "server", "--data-dir", str(self.data_dir)),
                    *("--host", "127.0.0.1", "--port", str(self.port)),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_for_port("127.0.0.1", self.port, timeout)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        proc, self.process = self.process, None
        if proc is not None:
            terminate(proc, timeout)
