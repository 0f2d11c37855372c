"""Build a flow from `LEARNSTREAM_*` environment variables (for `python -m bytewax.run`)."""

from __future__ import annotations

import os
from pathlib import Path

from bytewax.dataflow import Dataflow

from learnstream.config import ConfigError, load_settings

_RUN_KEYS = (
    "LEARNSTREAM_SOURCE",
    "LEARNSTREAM_OUT",
    "LEARNSTREAM_CONFIG",
    "LEARNSTREAM_RUN_ID",
    "LEARNSTREAM_BOOTSTRAP",
    "LEARNSTREAM_EVENTS_TOPIC",
    "LEARNSTREAM_ALERTS_TOPIC",
    "LEARNSTREAM_METRICS_TOPIC",
    "LEARNSTREAM_DLQ_TOPIC",
    "LEARNSTREAM_KAFKA_CONFIG",
)


def _need(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise ConfigError(f"{name} is not set: the flow module reads its run settings from the environment")
    return value


def flow_from_env(kind: str) -> Dataflow:
    from learnstream.cli import _kafka_config, _parse_source
    from learnstream.runner import KafkaSpec, RunSpec, make_flow

    settings = load_settings(os.environ.get("LEARNSTREAM_CONFIG"))
    secret = settings.key_bytes()
    out = Path(_need("LEARNSTREAM_OUT"))
    out.mkdir(parents=True, exist_ok=True)
    run_id = os.environ.get("LEARNSTREAM_RUN_ID") or "bytewax-run"
    if kind == "file":
        _, paths = _parse_source(_need("LEARNSTREAM_SOURCE"))
        return make_flow(RunSpec(settings=settings, out_dir=out, secret=secret, paths=paths, run_id=run_id))
    config_file = os.environ.get("LEARNSTREAM_KAFKA_CONFIG")
    kafka = KafkaSpec(
        bootstrap=_need("LEARNSTREAM_BOOTSTRAP"),
        events_topic=os.environ.get("LEARNSTREAM_EVENTS_TOPIC", "learning.events"),
        alerts_topic=os.environ.get("LEARNSTREAM_ALERTS_TOPIC", "learning.alerts"),
        metrics_topic=os.environ.get("LEARNSTREAM_METRICS_TOPIC", "learning.metrics"),
        dlq_topic=os.environ.get("LEARNSTREAM_DLQ_TOPIC", "learning.events.dlq"),
        config=_kafka_config(Path(config_file) if config_file else None),
    )
    return make_flow(RunSpec(settings=settings, out_dir=out, secret=secret, kafka=kafka, run_id=run_id))
