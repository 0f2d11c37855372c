"""Build a flow from `LEARNSTREAM_*` environment variables (for `python -m bytewax.run`).

`python -m bytewax.run flows.file:flow` and `flows.kafka:flow` import a module that calls
`flow_from_env`; the run's settings come from the environment instead of flags:

| variable | meaning |
|---|---|
| `LEARNSTREAM_SOURCE` | `file:PATH[,PATH...]` (file flow, required) |
| `LEARNSTREAM_BOOTSTRAP` | Kafka `HOST:PORT` (Kafka flow, required) |
| `LEARNSTREAM_OUT` | output directory (required) |
| `LEARNSTREAM_PSEUDONYM_KEY` | the pseudonymisation secret (required) |
| `LEARNSTREAM_CONFIG` | thresholds file (JSON or TOML), like `--config` |
| `LEARNSTREAM_RUN_ID` | the `pipeline_runs` key; default: a fresh id per process |
| `LEARNSTREAM_EVENTS_TOPIC`, `..._ALERTS_TOPIC`, `..._METRICS_TOPIC`, `..._DLQ_TOPIC` | topics |
| `LEARNSTREAM_KAFKA_CONFIG` | librdkafka settings file, like `--kafka-config` |
| `LEARNSTREAM_LOG_LEVEL` | `DEBUG`, `INFO` (default, with `learnstream`), `WARNING` or `ERROR` |
| `LEARNSTREAM_<SETTING>` | any threshold of `learnstream.config.Settings` |

Any other `LEARNSTREAM_*` variable is an error (a typo would otherwise be ignored silently).
Under `python -m bytewax.run`, a bad value exits with status 2 and one line naming it (SPEC §8).

Sharp edges:

- The run id only matters to the one worker that writes the `pipeline_runs` row, so processes
  of an `-i/-a` cluster need not agree on it; set `LEARNSTREAM_RUN_ID` to name the run (a live
  deployment that restarts with recovery then keeps updating one row).
- Bytewax 0.21.1 loses a step's exception in multi-process mode (every process reports only
  "Send thread panic"); the flow is therefore wrapped by `learnstream.runner.guard_flow`, which
  prints `learnstream: worker error in step '<id>': ...` and the traceback when it is raised.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import uuid
from pathlib import Path

from bytewax.dataflow import Dataflow

from learnstream.config import ConfigError, Settings, load_settings

#: run settings read here (besides the Settings fields, read by `load_settings`)
RUN_VARIABLES = (
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
    "LEARNSTREAM_LOG_LEVEL",
)
_PREFIX = "LEARNSTREAM_"


def known_variables() -> frozenset[str]:
    """Every `LEARNSTREAM_*` variable a flow module reads: the run settings above and one per
    `Settings` field (e.g. `LEARNSTREAM_BATCH_SIZE`)."""
    fields = {f"{_PREFIX}{name.upper()}" for name in Settings.model_fields}
    return frozenset(RUN_VARIABLES) | fields


def check_unknown(environ: dict[str, str]) -> None:
    """Raise ConfigError naming the first `LEARNSTREAM_*` variable no part of learnstream reads."""
    known = known_variables()
    unknown = sorted(k for k in environ if k.upper().startswith(_PREFIX) and k.upper() not in known)
    if unknown:
        raise ConfigError(
            f"unknown setting {unknown[0]} in the environment; known: {', '.join(sorted(known))}"
        )


def _need(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise ConfigError(f"{name} is not set: the flow module reads its run settings from the environment")
    return value


def _paths(text: str) -> list[Path]:
    if not text.startswith("file:") or len(text) <= len("file:"):
        raise ConfigError(f"bad LEARNSTREAM_SOURCE={text!r}: use file:PATH[,PATH...]")
    paths = [Path(p) for p in text[len("file:") :].split(",") if p]
    for path in paths:
        if not path.is_file() or not os.access(path, os.R_OK):
            raise ConfigError(f"cannot read input file {str(path)!r} named in LEARNSTREAM_SOURCE")
    return paths


def _under_bytewax_run() -> bool:
    """True when this process is `python -m bytewax.run` (or `bytewax.testing`)."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return getattr(spec, "name", None) in ("bytewax.run", "bytewax.testing")


def _build(kind: str) -> Dataflow:
    from learnstream.cli import UsageError, _kafka_config
    from learnstream.runner import ErrorReport, KafkaSpec, RunSpec, guard_flow, make_flow

    check_unknown(dict(os.environ))
    settings = load_settings(os.environ.get("LEARNSTREAM_CONFIG"))
    secret = settings.key_bytes()
    out = Path(_need("LEARNSTREAM_OUT"))
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create LEARNSTREAM_OUT={str(out)!r}: {exc.strerror}") from exc
    run_id = os.environ.get("LEARNSTREAM_RUN_ID") or uuid.uuid4().hex
    if kind == "file":
        paths = _paths(_need("LEARNSTREAM_SOURCE"))
        spec = RunSpec(settings=settings, out_dir=out, secret=secret, paths=paths, run_id=run_id,
                       external_recovery=True)
    else:
        config_file = os.environ.get("LEARNSTREAM_KAFKA_CONFIG")
        try:
            config = _kafka_config(Path(config_file) if config_file else None)
        except UsageError as exc:
            raise ConfigError(str(exc).replace("--kafka-config", "LEARNSTREAM_KAFKA_CONFIG")) from exc
        kafka = KafkaSpec(
            bootstrap=_need("LEARNSTREAM_BOOTSTRAP"),
            events_topic=os.environ.get("LEARNSTREAM_EVENTS_TOPIC", "learning.events"),
            alerts_topic=os.environ.get("LEARNSTREAM_ALERTS_TOPIC", "learning.alerts"),
            metrics_topic=os.environ.get("LEARNSTREAM_METRICS_TOPIC", "learning.metrics"),
            dlq_topic=os.environ.get("LEARNSTREAM_DLQ_TOPIC", "learning.events.dlq"),
            config=config,
        )
        spec = RunSpec(settings=settings, out_dir=out, secret=secret, kafka=kafka, run_id=run_id,
                       external_recovery=True)

    def report(line: str) -> None:
        print(f"learnstream: worker error in {line}", file=sys.stderr, flush=True)

    return guard_flow(make_flow(spec), ErrorReport(report))


def _stop_cleanly_on_signals() -> None:
    """Live Kafka flow under bytewax.run: the first SIGINT/SIGTERM ends the sources so that every
    sink flushes and commits (as `learnstream run` does); a second one aborts at once."""
    from flows.pipeline import request_stop, stop_requested

    def handler(signum: int, frame: object) -> None:
        if stop_requested():
            raise KeyboardInterrupt
        print(f"learnstream: {signal.Signals(signum).name}: stopping (committing outputs)",
              file=sys.stderr, flush=True)
        request_stop()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, handler)


def flow_from_env(kind: str) -> Dataflow:
    """The file (`kind="file"`) or Kafka (`"kafka"`) flow configured by the environment.

    Raises ConfigError naming the bad variable; under `python -m bytewax.run` prints that one
    line and exits with status 2 instead of a traceback. Under `python -m bytewax.run`, the Kafka
    flow also installs SIGINT/SIGTERM handlers for a clean stop (see `_stop_cleanly_on_signals`).
    """
    if kind not in ("file", "kafka"):
        raise ValueError(f"kind must be 'file' or 'kafka', got {kind!r}")
    under_run = _under_bytewax_run()
    try:
        flow = _build(kind)
    except ConfigError as exc:
        if not under_run:
            raise
        message = str(exc)
        if not message.startswith("learnstream"):
            message = f"learnstream: {message}"
        print(message, file=sys.stderr)
        raise SystemExit(2) from None
    if under_run and kind == "kafka" and threading.current_thread() is threading.main_thread():
        _stop_cleanly_on_signals()
    return flow
