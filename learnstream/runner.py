"""Run the learnstream flow: one worker in this process, or N worker processes as one cluster.

`run_flow` is what `learnstream run` and `learnstream demo` call. Worker processes talk over
loopback (Bytewax's `-i/-a` cluster protocol); each builds the same flow from a picklable `RunSpec`.
"""

from __future__ import annotations

import multiprocessing
import socket
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import polars as pl
from bytewax.dataflow import Dataflow
from bytewax.recovery import RecoveryConfig
from bytewax.testing import cluster_main, run_main

from flows.pipeline import FlowConfig, Publish, build_flow, now_us
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


def make_flow(spec: RunSpec) -> Dataflow:
    """Build the Dataflow of a run (file or Kafka source, tables, and topics in Kafka mode)."""
    cfg = FlowConfig(
        settings=spec.settings,
        out_dir=spec.out_dir,
        run_id=spec.run_id,
        secret=spec.secret,
        started_at_us=spec.started_at_us,
        live=spec.kafka is not None and not spec.kafka.stop_at_end,
    )
    if spec.kafka is None:
        return build_flow(FileSource(spec.paths, spec.settings.batch_size), cfg)
    from sinks.kafka import KafkaTopicsSink
    from sources.kafka import KafkaBatchSource

    kafka = spec.kafka
    cfg.publish = Publish(alerts=kafka.alerts_topic, metrics=kafka.metrics_topic, dlq=kafka.dlq_topic)
    source = KafkaBatchSource(
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


def _recovery(spec: RunSpec) -> RecoveryConfig | None:
    if spec.recovery_dir is None:
        return None
    return RecoveryConfig(str(spec.recovery_dir))


def _epoch(spec: RunSpec) -> timedelta:
    return spec.settings.snapshot_interval


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _worker(spec: RunSpec, proc_id: int, addresses: list[str]) -> None:
    cluster_main(
        make_flow(spec),
        addresses,
        proc_id,
        epoch_interval=_epoch(spec),
        recovery_config=_recovery(spec),
    )


def run_flow(spec: RunSpec, workers: int = 1) -> dict[str, Any]:
    """Run to completion (file source) or until interrupted; return the pipeline_runs row."""
    if workers <= 1:
        run_main(make_flow(spec), epoch_interval=_epoch(spec), recovery_config=_recovery(spec))
    else:
        addresses = [f"127.0.0.1:{p}" for p in _free_ports(workers)]
        ctx = multiprocessing.get_context("spawn")
        procs = [ctx.Process(target=_worker, args=(spec, i, addresses)) for i in range(workers)]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        failed = [p.exitcode for p in procs if p.exitcode != 0]
        if failed:
            raise RuntimeError(f"worker processes failed with exit codes {failed}")
    return run_summary(spec.out_dir, spec.run_id)


def run_summary(out_dir: Path, run_id: str) -> dict[str, Any]:
    """The pipeline_runs row of `run_id` as a dict (empty if the run wrote none)."""
    files = list((Path(out_dir) / "parquet" / "pipeline_runs").glob("**/*.parquet"))
    if not files:
        return {}
    runs = pl.scan_parquet(files, hive_partitioning=False).filter(pl.col("run_id") == run_id).collect()
    return runs.row(0, named=True) if len(runs) else {}
