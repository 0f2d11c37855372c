"""Run the learnstream flow: one worker in this process, or N worker processes as one cluster.

`run_flow` is what `learnstream run` and `learnstream demo` call. Worker processes talk over
loopback (Bytewax's `-i/-a` cluster protocol); each builds the same flow from a picklable `RunSpec`.

Workers are `python -c` children in their own process group, killed by the kernel if this
process dies; this process supervises them (`_run_cluster`): signals are forwarded once, the
first worker failure stops the others, and the failing step's own error is reported
(`guard_flow`, because Bytewax loses it in multi-process mode).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import polars as pl
from bytewax.dataflow import Dataflow, _CoreOperator
from bytewax.inputs import (
    DynamicSource,
    FixedPartitionedSource,
    StatefulSourcePartition,
    StatelessSourcePartition,
)
from bytewax.operators import StatefulBatchLogic
from bytewax.outputs import (
    DynamicSink,
    FixedPartitionedSink,
    StatefulSinkPartition,
    StatelessSinkPartition,
)
from bytewax.recovery import RecoveryConfig
from bytewax.testing import cluster_main, run_main

from flows.pipeline import FlowConfig, Publish, build_flow, decode_ahead, now_us
from learnstream.config import Settings
from sources.files import FileSource


@dataclass
class KafkaSpec:
    bootstrap: str
    events_topic: str = "learning.events"
    alerts_topic: str = "learning.alerts"
    metrics_topic: str = "learning.metrics"
    dlq_topic: str = "learning.events.dlq"
    config: dict[str, str] = field(default_factory=dict)
    #: stop at the end of the topic instead of running until signalled (tests, backfills)
    stop_at_end: bool = False


@dataclass
class RunSpec:
    """Everything a worker process needs to build the flow (picklable)."""

    settings: Settings
    out_dir: Path
    secret: bytes
    paths: list[Path] = field(default_factory=list)
    kafka: KafkaSpec | None = None
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    recovery_dir: Path | None = None
    started_at_us: int = field(default_factory=now_us)
    #: the flow runs under `python -m bytewax.run`, whose `-r` decides recovery: outputs are made
    #: durable at every snapshot as if a recovery store were configured
    external_recovery: bool = False

    @property
    def recovers(self) -> bool:
        """Bytewax snapshots are stored and read back (a recovery store, ours or bytewax.run's)."""
        return self.recovery_dir is not None or self.external_recovery


def make_flow(spec: RunSpec) -> Dataflow:
    """Build the Dataflow of a run (file or Kafka source, tables, and topics in Kafka mode)."""
    cfg = FlowConfig(
        settings=spec.settings,
        out_dir=spec.out_dir,
        run_id=spec.run_id,
        secret=spec.secret,
        started_at_us=spec.started_at_us,
        live=spec.kafka is not None and not spec.kafka.stop_at_end,
        recovery=spec.recovers,
    )
    if spec.kafka is None:
        return build_flow(FileSource(spec.paths, spec.settings.batch_size, prepare=decode_ahead(cfg)), cfg)
    from sinks.kafka import KafkaTopicsSink

    kafka = spec.kafka
    cfg.publish = Publish(alerts=kafka.alerts_topic, metrics=kafka.metrics_topic, dlq=kafka.dlq_topic)
    source = _low_latency_source()(
        kafka.bootstrap,
        kafka.events_topic,
        config=kafka.config,
        batch_size=spec.settings.batch_size,
        stop_at_end=kafka.stop_at_end,
    )
    return build_flow(
        source,
        cfg,
        partition_of=lambda batch: batch.ref_prefix,
        topics_sink=KafkaTopicsSink(kafka.bootstrap, kafka.config),
        # "<topic>/<partition>" -> the batches' ref_prefix "kafka:<topic>/<partition>/"
        partition_key=lambda part: f"kafka:{part}/",
    )


def _low_latency_source() -> type:
    from sources.kafka import KafkaBatchSource

    class LowLatencyKafkaSource(KafkaBatchSource):
        """Consumers fetch with `fetch.wait.max.ms=20` unless `--kafka-config` sets it
        (librdkafka's default is 500 ms). On Tansu a waiting fetch is not answered when data
        arrives, which adds up to that wait to every record's latency (measured, a consumer
        tailing Tansu at 250 msg/s: p50 137 ms with 500, 11 ms with 10). Only the consumers get
        it: the metadata client would warn about a consumer property."""

        def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> Any:
            config = self.config
            self.config = {"fetch.wait.max.ms": 20, **config}
            try:
                return super().build_part(step_id, for_part, resume_state)
            finally:
                self.config = config

    return LowLatencyKafkaSource


def _recovery(spec: RunSpec) -> RecoveryConfig | None:
    if spec.recovery_dir is None:
        return None
    return RecoveryConfig(str(spec.recovery_dir))


#: Bytewax epoch of a live run without a recovery store (see `_epoch`)
LIVE_EPOCH = timedelta(milliseconds=250)


def _epoch(spec: RunSpec) -> timedelta:
    """Bytewax's epoch: snapshots are taken at its end, and with several workers the items a
    worker hands to another wait for it too (measured, 2 workers at 5k events/s: alert p50 5.5 s
    at 10 s epochs, 0.28 s at 1 s, 0.21 s at 0.25 s; 1 worker is not slowed measurably). A live
    run that keeps no recovery store uses 0.25 s epochs (its snapshots are never read);
    otherwise `snapshot_interval`."""
    if spec.kafka is not None and not spec.recovers:
        return min(spec.settings.snapshot_interval, LIVE_EPOCH)
    return spec.settings.snapshot_interval


def _free_ports(count: int) -> list[int]:
    """Loopback ports that were free a moment ago (another process may take one before the
    worker binds it; the run then fails naming the address)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


# -- errors in cluster mode -----------------------------------------------------------------------
#
# Bytewax 0.21.1 loses the exception of a step in multi-process mode: the worker thread panics,
# Timely's send thread panics in turn, and every process reports only "PanicException: Send thread
# panic" (or aborts with "exception not rethrown"); the original error is printed nowhere
# (bytewax issue #318). `guard_flow` therefore wraps the Python callables of a dataflow's core
# steps and reports the first real exception of the process *when it is raised*, before Bytewax
# gets to panic.


class ErrorReport:
    """Keeps the first exception raised in a step of this process and reports it once.

    `report` gets one line, `step '<id>': <Type>: <message>`; the traceback goes to stderr.
    StopIteration (end of a source partition) and KeyboardInterrupt (a stop) are not errors.
    """

    def __init__(self, report: Callable[[str], None]) -> None:
        self._report = report
        self._lock = threading.Lock()
        self.first: str | None = None

    def record(self, step: str, exc: BaseException) -> None:
        if isinstance(exc, StopIteration | KeyboardInterrupt | SystemExit):
            return
        with self._lock:
            if self.first is not None:
                return
            cause = _root_cause(exc)
            line = f"step {step!r}: {type(cause).__name__}: {cause}"
            self.first = " ".join(line.split())[:2000]
        traceback.print_exception(exc, file=sys.stderr)
        with contextlib.suppress(Exception):
            self._report(self.first)

    def wrap(self, step: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        """`fn` reporting what it raises (and re-raising it)."""

        def guarded(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except BaseException as exc:
                self.record(step, exc)
                raise

        guarded.__name__ = getattr(fn, "__name__", "guarded")
        guarded.__qualname__ = getattr(fn, "__qualname__", guarded.__name__)
        return guarded


class _Guarded:
    def __init__(self, inner: Any, report: ErrorReport, step: str) -> None:
        self._inner = inner
        self._report = report
        self._step = step

    def _call(self, name: str, *args: Any) -> Any:
        try:
            return getattr(self._inner, name)(*args)
        except BaseException as exc:
            self._report.record(self._step, exc)
            raise


class _GuardedLogic(_Guarded, StatefulBatchLogic[Any, Any, Any]):
    def on_batch(self, values: list[Any]) -> Any:
        return self._call("on_batch", values)

    def on_notify(self) -> Any:
        return self._call("on_notify")

    def on_eof(self) -> Any:
        return self._call("on_eof")

    def notify_at(self) -> Any:
        return self._call("notify_at")

    def snapshot(self) -> Any:
        return self._call("snapshot")


class _GuardedSourcePart(_Guarded, StatefulSourcePartition[Any, Any]):
    def next_batch(self) -> Any:
        return self._call("next_batch")

    def next_awake(self) -> Any:
        return self._call("next_awake")

    def snapshot(self) -> Any:
        return self._call("snapshot")

    def close(self) -> None:
        self._call("close")


class _GuardedSource(_Guarded, FixedPartitionedSource[Any, Any]):
    def list_parts(self) -> list[str]:
        parts: list[str] = self._call("list_parts")
        return parts

    def build_part(self, step_id: str, for_part: str, resume_state: Any | None) -> _GuardedSourcePart:
        part = self._call("build_part", step_id, for_part, resume_state)
        return _GuardedSourcePart(part, self._report, self._step)


class _GuardedDynamicSourcePart(_Guarded, StatelessSourcePartition[Any]):
    def next_batch(self) -> Any:
        return self._call("next_batch")

    def next_awake(self) -> Any:
        return self._call("next_awake")

    def close(self) -> None:
        self._call("close")


class _GuardedDynamicSource(_Guarded, DynamicSource[Any]):
    def build(self, step_id: str, worker_index: int, worker_count: int) -> _GuardedDynamicSourcePart:
        part = self._call("build", step_id, worker_index, worker_count)
        return _GuardedDynamicSourcePart(part, self._report, self._step)


class _GuardedSinkPart(_Guarded, StatefulSinkPartition[Any, Any]):
    def write_batch(self, values: list[Any]) -> None:
        self._call("write_batch", values)

    def snapshot(self) -> Any:
        return self._call("snapshot")

    def close(self) -> None:
        self._call("close")


class _GuardedSink(_Guarded, FixedPartitionedSink[Any, Any]):
    def list_parts(self) -> list[str]:
        parts: list[str] = self._call("list_parts")
        return parts

    def part_fn(self, item_key: str) -> int:
        index: int = self._call("part_fn", item_key)
        return index

    def build_part(self, step_id: str, for_part: str, resume_state: Any | None) -> _GuardedSinkPart:
        part = self._call("build_part", step_id, for_part, resume_state)
        return _GuardedSinkPart(part, self._report, self._step)


class _GuardedDynamicSinkPart(_Guarded, StatelessSinkPartition[Any]):
    def write_batch(self, items: list[Any]) -> None:
        self._call("write_batch", items)

    def close(self) -> None:
        self._call("close")


class _GuardedDynamicSink(_Guarded, DynamicSink[Any]):
    def build(self, step_id: str, worker_index: int, worker_count: int) -> _GuardedDynamicSinkPart:
        part = self._call("build", step_id, worker_index, worker_count)
        return _GuardedDynamicSinkPart(part, self._report, self._step)


def _guard_step(step: Any, report: ErrorReport, flow_id: str) -> None:
    name = step.step_id.removeprefix(f"{flow_id}.").split(".")[0]
    fields = {f.name for f in dataclasses.fields(step)}

    def replace(field_name: str, value: Any) -> None:
        object.__setattr__(step, field_name, value)  # core steps are frozen dataclasses

    if "builder" in fields:  # stateful_batch
        builder = step.builder
        replace("builder", lambda resume: _GuardedLogic(report.wrap(name, builder)(resume), report, name))
    for attr in ("mapper", "predicate", "inspector"):  # flat_map_batch, branch, inspect_debug
        if attr in fields:
            replace(attr, report.wrap(name, getattr(step, attr)))
    if "source" in fields:
        if isinstance(step.source, FixedPartitionedSource):
            replace("source", _GuardedSource(step.source, report, name))
        elif isinstance(step.source, DynamicSource):
            replace("source", _GuardedDynamicSource(step.source, report, name))
    if "sink" in fields:
        if isinstance(step.sink, FixedPartitionedSink):
            replace("sink", _GuardedSink(step.sink, report, name))
        elif isinstance(step.sink, DynamicSink):
            replace("sink", _GuardedDynamicSink(step.sink, report, name))


def guard_flow(flow: Dataflow, report: ErrorReport) -> Dataflow:
    """Wrap every Python callable of `flow`'s core steps so that `report` sees the first
    exception as it is raised (in place; returns `flow`). Costs one Python call per batch.

    Use it for multi-process runs (`run_flow` workers, `python -m bytewax.run -i/-a`), where
    Bytewax would otherwise lose the exception.
    """
    stack = list(flow.substeps)
    while stack:
        step = stack.pop()
        if isinstance(step, _CoreOperator):
            _guard_step(step, report, flow.flow_id)
        stack.extend(step.substeps)
    return flow


class WorkerFailed(RuntimeError):
    """A worker process of a multi-worker run failed; the other workers were stopped.

    `worker` is the process id in the cluster (0..N-1), `exit_code` its exit status (negative:
    killed by that signal), `error` the worker's own one-line error (empty if it died without
    saying, e.g. killed by the OOM killer).
    """

    def __init__(self, worker: int, workers: int, exit_code: int, error: str) -> None:
        self.worker = worker
        self.workers = workers
        self.exit_code = exit_code
        self.error = error
        if error:
            what = error
        elif exit_code < 0:
            what = f"killed by {signal.Signals(-exit_code).name}"
        else:
            what = f"exit status {exit_code}"
        super().__init__(
            f"worker {worker} of {workers} failed: {what}; the other workers were stopped"
        )


#: exit status of a worker process stopped by SIGINT (aborted, like Ctrl-C in a shell)
_EXIT_INTERRUPTED = 130
#: seconds the workers get to finish after SIGINT before SIGKILL
ABORT_GRACE_S = 10.0
_POLL_S = 0.05
# until the worker installs its handlers, SIGINT/SIGTERM end it quietly (status 130)
_CHILD = (
    "import os, signal\n"
    "for _sig in (signal.SIGINT, signal.SIGTERM):\n"
    "    signal.signal(_sig, lambda *_: os._exit(130))\n"
    "from learnstream.runner import _worker_main\n"
    "_worker_main()\n"
)


def _root_cause(exc: BaseException) -> BaseException:
    """The innermost exception of a chain: Bytewax wraps errors raised in a step in its own."""
    seen = {id(exc)}
    while exc.__cause__ is not None and id(exc.__cause__) not in seen:
        exc = exc.__cause__
        seen.add(id(exc))
    return exc


def _die_with_parent(parent_pid: int) -> None:
    """Linux: the kernel SIGKILLs this worker when the parent dies (even by SIGKILL), so a
    worker is never left running on its own. Exits at once if the parent is already gone."""
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(Exception):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent_pid:
        os._exit(1)


_INTERRUPTED = threading.Event()


def _worker_signals(live: bool) -> None:
    """SIGINT aborts (KeyboardInterrupt). SIGTERM stops cleanly: a live run ends its sources
    (`flows.pipeline.request_stop`) so every sink flushes and commits; a second SIGTERM, or
    SIGTERM in a finite run, aborts. An abort is remembered in `_INTERRUPTED`: raised inside a
    step, Bytewax turns the KeyboardInterrupt into a panic."""
    from flows.pipeline import request_stop, stop_requested

    def on_int(signum: int, frame: object) -> None:
        _INTERRUPTED.set()
        raise KeyboardInterrupt

    def on_term(signum: int, frame: object) -> None:
        if not live or stop_requested():
            on_int(signum, frame)
        request_stop()

    signal.signal(signal.SIGINT, on_int)
    signal.signal(signal.SIGTERM, on_term)


def _listening_ports() -> set[int]:
    """Local TCP ports in LISTEN state (Linux /proc/net/tcp*, read without connecting)."""
    ports: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 3 and fields[3] == "0A":  # TCP_LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def _wait_for_peers_listening(peers: list[str], timeout_s: float = 20.0) -> None:
    """Wait until the lower-numbered workers listen (worker i connects to every j < i).

    Only cosmetic: Timely retries a refused connection every second, but prints "error
    connecting to worker 0: Connection refused; retrying" each time. Looks at the kernel's socket
    table instead of probing (a stray connection would break Timely's handshake). Gives up
    silently after `timeout_s` or where /proc/net is missing.
    """
    ports = {int(address.rsplit(":", 1)[1]) for address in peers}
    if not ports or not Path("/proc/net/tcp").exists():
        return
    deadline = time.monotonic() + timeout_s
    while not ports <= _listening_ports() and time.monotonic() < deadline:
        time.sleep(0.02)


def _worker_main() -> None:
    """Entry point of one worker process (`python -c`, started by `run_flow`).

    Reads two pickles from stdin: a header (parent pid, sys.path, status fd), then
    `(spec, proc_id, addresses)`. Reports its first error to the status fd as one JSON line:
    `{"step": bool, "error": str}` (`step`: raised by a step of the flow, i.e. the root cause;
    otherwise a cluster-level failure such as a lost peer). Exit status: 0 done, 130 aborted by
    a signal, 1 failed.
    """
    stdin = sys.stdin.buffer
    header = pickle.load(stdin)
    _die_with_parent(header["parent_pid"])
    sys.path[:] = header["sys_path"]
    status = os.fdopen(header["status_fd"], "w", encoding="utf-8")
    sent = False

    def send(line: str, *, step: bool) -> None:
        nonlocal sent
        if not sent:
            sent = True
            status.write(json.dumps({"step": step, "error": line}) + "\n")
            status.flush()

    spec, proc_id, addresses = pickle.load(stdin)
    stdin.close()
    _worker_signals(spec.kafka is not None and not spec.kafka.stop_at_end)
    report = ErrorReport(lambda line: send(line, step=True))
    code = 0
    try:
        flow = guard_flow(make_flow(spec), report)
        _wait_for_peers_listening(addresses[:proc_id])
        cluster_main(
            flow,
            addresses,
            proc_id,
            epoch_interval=_epoch(spec),
            recovery_config=_recovery(spec),
        )
    except KeyboardInterrupt:
        code = _EXIT_INTERRUPTED
    except BaseException as exc:  # noqa: BLE001 - report any failure to the parent, then exit 1
        code = 1
        if _INTERRUPTED.is_set() and report.first is None:
            code = _EXIT_INTERRUPTED  # a signal, not a failure (Bytewax wrapped it)
        elif report.first is None:
            traceback.print_exc()
            cause = _root_cause(exc)
            with contextlib.suppress(OSError):
                send(" ".join(f"{type(cause).__name__}: {cause}".split())[:2000], step=False)
    with contextlib.suppress(OSError):
        status.close()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # skip interpreter teardown: Bytewax/polars threads may still be winding down


@dataclass
class _Worker:
    index: int
    proc: subprocess.Popen[bytes]
    status_fd: int


def _start_workers(spec: RunSpec, workers: int) -> list[_Worker]:
    addresses = [f"127.0.0.1:{p}" for p in _free_ports(workers)]
    started: list[_Worker] = []
    try:
        for index in range(workers):
            read_fd, write_fd = os.pipe()
            header = {"parent_pid": os.getpid(), "sys_path": list(sys.path), "status_fd": write_fd}
            try:
                proc = subprocess.Popen(
                    [sys.executable, "-c", _CHILD],
                    stdin=subprocess.PIPE,
                    pass_fds=(write_fd,),
                    # own process group: a terminal's Ctrl-C reaches only this process, which
                    # forwards it exactly once (no double signal during a clean stop)
                    process_group=0,
                )
            finally:
                os.close(write_fd)
            started.append(_Worker(index, proc, read_fd))
            assert proc.stdin is not None
            # a worker that died at once (BrokenPipeError) is reported by the supervision loop
            with contextlib.suppress(BrokenPipeError), proc.stdin:
                proc.stdin.write(pickle.dumps(header))
                proc.stdin.write(pickle.dumps((spec, index, addresses)))
    except BaseException:
        _abort(started)
        raise
    return started


def _signal(workers: list[_Worker], sig: signal.Signals) -> None:
    for w in workers:
        if w.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                w.proc.send_signal(sig)


def _abort(workers: list[_Worker], grace_s: float = ABORT_GRACE_S, *, close: bool = True) -> None:
    """SIGINT every live worker, wait up to `grace_s`, SIGKILL the rest; reap all of them and
    close their status pipes. Never raises KeyboardInterrupt half-way (it is deferred)."""
    interrupted = False
    _signal(workers, signal.SIGINT)
    deadline = time.monotonic() + grace_s
    while any(w.proc.poll() is None for w in workers):
        if time.monotonic() >= deadline:
            _signal(workers, signal.SIGKILL)
            break
        try:
            time.sleep(_POLL_S)
        except KeyboardInterrupt:  # a second Ctrl-C: stop waiting
            interrupted = True
            _signal(workers, signal.SIGKILL)
            break
    for w in workers:
        w.proc.wait()
    if close:
        _close_status(workers)
    if interrupted:
        raise KeyboardInterrupt


def _read_status(worker: _Worker) -> tuple[bool, str]:
    """(raised by a step, one-line error) that the worker reported; (False, "") if none."""
    if worker.status_fd < 0:
        return False, ""
    try:
        os.set_blocking(worker.status_fd, False)
        data = os.read(worker.status_fd, 8192)
        found = json.loads(data.decode("utf-8", errors="replace").splitlines()[0])
        return bool(found["step"]), str(found["error"])
    except (OSError, ValueError, IndexError, KeyError, TypeError):
        return False, ""


def _close_status(workers: list[_Worker]) -> None:
    for w in workers:
        with contextlib.suppress(OSError):
            os.close(w.status_fd)
        w.status_fd = -1


def _terminate_on_sigterm() -> Any:
    """In the main thread, make SIGTERM raise KeyboardInterrupt (like SIGINT) while the workers
    run, unless someone (e.g. `learnstream run` in live mode) handles it already. Returns the
    handler to restore, or None."""
    if threading.current_thread() is not threading.main_thread():
        return None
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return None
    return signal.signal(signal.SIGTERM, signal.default_int_handler)


def _run_cluster(spec: RunSpec, workers: int) -> None:
    """Run `workers` processes as one Bytewax cluster on loopback and supervise them.

    - Every worker builds the flow from the same pickled `RunSpec`, so all agree on `run_id`
      and `started_at`.
    - A worker that fails (exit status other than 0) fails the run: the others get SIGINT, then
      SIGKILL after `ABORT_GRACE_S`, and `WorkerFailed` names the worker and its error.
    - A clean-stop request in this process (`flows.pipeline.request_stop()`, what `learnstream
      run` does on the first SIGINT/SIGTERM of a live run) is forwarded as SIGTERM: each worker
      ends its sources and commits. KeyboardInterrupt here (Ctrl-C, SIGTERM of a finite run, a
      second signal) aborts the workers and is re-raised.
    - Every worker is reaped before this returns or raises, and one whose parent dies is killed
      by the kernel.
    """
    from flows.pipeline import stop_requested

    previous = _terminate_on_sigterm()
    procs: list[_Worker] = []
    try:
        procs = _start_workers(spec, workers)
        stop_forwarded = False
        while True:
            if not stop_forwarded and stop_requested():
                _signal(procs, signal.SIGTERM)
                stop_forwarded = True
            codes = [w.proc.poll() for w in procs]
            if any(c is not None and c != 0 for c in codes):
                raise _failure(procs, codes, stopping=stop_forwarded)
            if all(c == 0 for c in codes):
                return
            time.sleep(_POLL_S)
    except KeyboardInterrupt:
        _abort(procs)
        raise
    finally:
        for w in procs:  # normally all reaped already; never leave one behind
            if w.proc.poll() is None:
                w.proc.kill()
            w.proc.wait()
        _close_status(procs)
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _failure(procs: list[_Worker], codes: list[int | None], *, stopping: bool) -> BaseException:
    """Stop the cluster after a worker exited non-zero; the exception that tells why.

    The reported root cause is a step error from any worker (workers that only lost a peer
    fail too, later); otherwise the first worker seen failing. Without a step error, a worker
    ended by a signal, or any failure during a requested stop, means the run was interrupted.
    """
    first = next(w for w, c in zip(procs, codes, strict=True) if c is not None and c != 0)
    _abort(procs, grace_s=ABORT_GRACE_S, close=False)
    reports = {w.index: _read_status(w) for w in procs}
    _close_status(procs)
    culprit = next((w for w in procs if reports[w.index][0]), first)
    code = culprit.proc.returncode
    error = reports[culprit.index][1]
    if not reports[culprit.index][0] and (stopping or code == _EXIT_INTERRUPTED):
        return KeyboardInterrupt()
    return WorkerFailed(culprit.index, len(procs), code, error)


def run_flow(spec: RunSpec, workers: int = 1) -> dict[str, Any]:
    """Run to completion (file source) or until stopped; return the pipeline_runs row.

    `workers > 1` runs that many worker processes as one Bytewax cluster (see `_run_cluster`
    for failure and signal handling). Raises `WorkerFailed` when a worker fails and
    KeyboardInterrupt when interrupted. In both modes SIGTERM interrupts like SIGINT unless the
    caller handles SIGTERM itself (as `learnstream run` does for a clean live stop).
    """
    if workers <= 1:
        previous = _terminate_on_sigterm()
        try:
            run_main(make_flow(spec), epoch_interval=_epoch(spec), recovery_config=_recovery(spec))
        except Exception as exc:
            # Ctrl-C inside a step reaches us as BytewaxRuntimeError caused by KeyboardInterrupt
            if isinstance(_root_cause(exc), KeyboardInterrupt):
                raise KeyboardInterrupt from exc
            raise
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
    else:
        _run_cluster(spec, workers)
    return run_summary(spec.out_dir, spec.run_id)


def run_summary(out_dir: Path, run_id: str) -> dict[str, Any]:
    """The pipeline_runs row of `run_id` as a dict (empty if the run wrote none)."""
    files = list((Path(out_dir) / "parquet" / "pipeline_runs").glob("**/*.parquet"))
    if not files:
        return {}
    runs = pl.scan_parquet(files, hive_partitioning=False).filter(pl.col("run_id") == run_id).collect()
    return runs.row(0, named=True) if len(runs) else {}
