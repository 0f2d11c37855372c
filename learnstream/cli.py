"""`learnstream` command line (SPEC §8).

Exit status: 0 on success; 2 with a one-line message naming the bad value (and the fix) on bad
arguments or configuration.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from learnstream.config import ConfigError, Settings, load_settings

DEMO_USERS = 400
DEMO_DAYS = 30


class UsageError(Exception):
    """Bad arguments: printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message} (see '{self.prog} --help')")


def _positive(name: str) -> Any:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a whole number, got {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{name} must be > 0, got {text!r}")
        return value

    return parse


BROKER_TOPICS = ("learning.events", "learning.alerts", "learning.metrics", "learning.events.dlq")
_TOPIC = re.compile(r"^[A-Za-z0-9._-]{1,249}$")


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--port must be a whole number, got {text!r}") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"--port must be in 1..65535, got {text!r}")
    return value


def _topics(text: str) -> list[str]:
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"--topics needs at least one topic name, got {text!r}")
    for name in names:
        if not _TOPIC.match(name) or name in (".", ".."):
            raise argparse.ArgumentTypeError(
                f"bad topic name {name!r} in --topics: use 1-249 of [A-Za-z0-9._-]"
            )
    return names


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="learnstream", description=__doc__.splitlines()[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="run the pipeline on files (finite) or Kafka (live)")
    run.add_argument("--source", required=True, help="file:PATH[,PATH...] or kafka")
    run.add_argument("--out", required=True, type=Path, help="output directory")
    run.add_argument("--bootstrap", help="Kafka bootstrap HOST:PORT (with --source kafka)")
    run.add_argument("--events-topic", default="learning.events")
    run.add_argument("--alerts-topic", default="learning.alerts")
    run.add_argument("--metrics-topic", default="learning.metrics")
    run.add_argument("--dlq-topic", default="learning.events.dlq")
    run.add_argument("--kafka-config", type=Path, help="librdkafka settings (JSON object or key=value lines)")
    run.add_argument("--workers", type=_positive("--workers"), default=1, help="worker processes")
    run.add_argument("--recovery-dir", type=Path, help="crash recovery directory")
    run.add_argument("--config", type=Path, help="thresholds file (JSON or TOML)")
    run.add_argument("--stop-at-end", action="store_true", help="Kafka: stop at the end of the topic")

    gen = sub.add_parser("generate", help="write reproducible synthetic events as JSONL")
    gen.add_argument("--users", type=_positive("--users"), required=True)
    gen.add_argument("--days", type=_positive("--days"), required=True)
    gen.add_argument("--seed", type=int, default=7)
    gen.add_argument("--out", type=Path, required=True, help="output JSONL file")
    gen.add_argument("--bad-fraction", type=_fraction, default=0.0)
    gen.add_argument("--duplicate-fraction", type=_fraction, default=0.0)

    demo = sub.add_parser("demo", help="generate events, run the flow, print a summary")
    demo.add_argument("--out", type=Path, default=Path("out"))
    demo.add_argument("--users", type=_positive("--users"), default=DEMO_USERS)
    demo.add_argument("--days", type=_positive("--days"), default=DEMO_DAYS)
    demo.add_argument("--seed", type=int, default=7)
    demo.add_argument("--no-broker", action="store_true", help="skip the local-broker part")

    sub.add_parser("schema", help="print the JSON Schema of every message and table")

    query = sub.add_parser("query", help="run SQL with DuckDB over an output directory")
    query.add_argument("--out", type=Path, default=Path("out"))
    query.add_argument("sql", help="SQL; tables: the DuckDB tables, or parquet views pq_<table>")

    broker = sub.add_parser(
        "broker", help="start a local Kafka-compatible broker (Tansu, in memory) for development"
    )
    broker.add_argument("--port", type=_port, default=9092, help="loopback port to listen on")
    broker.add_argument("--partitions", type=_positive("--partitions"), default=3,
                        help="partitions per topic (a multiple of the worker count)")
    broker.add_argument("--topics", type=_topics, default=list(BROKER_TOPICS),
                        help="comma-separated topics to create (default: the four of SPEC §7)")
    erase = sub.add_parser("erase", help="remove learners from every table; writes an audit record")
    erase.add_argument("--out", type=Path, required=True, help="output directory of a run")
    erase.add_argument("--user-id", action="append", default=[], metavar="ID",
                       help="raw user_id to erase (repeatable)")
    erase.add_argument("--user-id-file", type=Path, metavar="FILE",
                       help="one user_id per line ('-' = stdin): keeps ids out of shell history and ps")
    erase.add_argument("--config", type=Path, help="settings file (JSON or TOML), as for run")
    erase.add_argument("--no-compact", action="store_true",
                       help="skip rewriting learnstream.duckdb (deleted rows then stay in the file)")

    retention = sub.add_parser("retention", help="drop date partitions older than N days; writes an audit record")
    retention.add_argument("--out", type=Path, required=True, help="output directory of a run")
    retention.add_argument("--retention-days", type=_positive("--retention-days"), required=True, metavar="N",
                           help="keep the last N days before today (UTC); older partitions go")
    retention.add_argument("--no-compact", action="store_true",
                           help="skip rewriting learnstream.duckdb (deleted rows then stay in the file)")
    return parser


def _settings(config: Path | None) -> Settings:
    """Settings of `--config` and the environment; an unknown `LEARNSTREAM_*` variable (a typo
    such as LEARNSTREAM_BATCHSIZE) is an error, as under `python -m bytewax.run`."""
    from flows.environment import check_unknown

    check_unknown(dict(os.environ))
    return load_settings(config)


def _parse_source(text: str) -> tuple[str, list[Path]]:
    if text == "kafka":
        return "kafka", []
    if not text.startswith("file:") or len(text) <= len("file:"):
        raise UsageError(f"learnstream run: bad --source {text!r}: use file:PATH[,PATH...] or kafka")
    paths = [Path(p) for p in text[len("file:") :].split(",") if p]
    for path in paths:
        if not path.is_file() or not os.access(path, os.R_OK):
            raise UsageError(f"learnstream run: cannot read input file {str(path)!r}: check the path in --source")
    return "file", paths


def _kafka_config(path: Path | None) -> dict[str, str]:
    if path is None:
        return {}
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"learnstream run: cannot read --kafka-config {str(path)!r}: {exc.strerror}") from exc
    try:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError
        return {str(k): str(v) for k, v in data.items()}
    except ValueError:
        pairs = {}
        for line in text.splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if "=" not in line:
                raise UsageError(
                    f"learnstream run: bad line {line!r} in --kafka-config {str(path)!r}: use key=value"
                ) from None
            key, value = line.split("=", 1)
            pairs[key.strip()] = value.strip()
        return pairs


def cmd_run(args: argparse.Namespace) -> int:
    from learnstream.runner import KafkaSpec, RunSpec, run_flow

    kind, paths = _parse_source(args.source)
    settings = _settings(args.config)
    secret = settings.key_bytes()
    kafka = None
    if kind == "kafka":
        if not args.bootstrap:
            raise UsageError("learnstream run: --source kafka needs --bootstrap HOST:PORT")
        kafka = KafkaSpec(
            bootstrap=args.bootstrap,
            events_topic=args.events_topic,
            alerts_topic=args.alerts_topic,
            metrics_topic=args.metrics_topic,
            dlq_topic=args.dlq_topic,
            config=_kafka_config(args.kafka_config),
            stop_at_end=args.stop_at_end,
        )
    spec = RunSpec(settings=settings, out_dir=args.out, secret=secret, paths=paths, kafka=kafka,
                   recovery_dir=args.recovery_dir)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.recovery_dir is not None:
        _prepare_recovery(args.recovery_dir, args.workers)
        # a restarted run is the same run: one pipeline_runs row, started when it first started
        spec.run_id, spec.started_at_us = _run_identity(
            args.recovery_dir, spec.run_id, spec.started_at_us, settings.shards
        )
    if args.workers > settings.shards:
        print(
            f"learnstream run: note: --workers {args.workers} > shards {settings.shards}: only "
            f"{settings.shards} worker(s) run the per-user step; for a new output directory set "
            f"LEARNSTREAM_SHARDS={args.workers} (or a multiple)",
            file=sys.stderr,
        )
    previous = _stop_on_signals() if kind == "kafka" else None
    try:
        summary = run_flow(spec, workers=args.workers)
    except KeyboardInterrupt:
        from learnstream.runner import run_summary

        summary = run_summary(spec.out_dir, spec.run_id)
    except Exception as exc:
        from learnstream.runner import WorkerFailed

        if isinstance(exc, WorkerFailed):
            print(f"learnstream run: {exc}", file=sys.stderr)
            return 1
        delivery = _delivery_error(exc)
        if delivery is None:
            raise
        print(f"learnstream run: {delivery}; the run stopped, outputs since the last snapshot "
              "are not all published", file=sys.stderr)
        return 1
    finally:
        if previous is not None:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    _print_counts(summary)
    return 0


def _stop_on_signals() -> dict[int, Any]:
    """SIGINT/SIGTERM end a live run cleanly: the sources stop, every sink flushes and commits,
    exit status 0. A second signal interrupts at once (KeyboardInterrupt). Returns the previous
    handlers."""
    from flows.pipeline import request_stop, reset_stop, stop_requested

    reset_stop()

    def handler(signum: int, frame: object) -> None:
        if stop_requested():
            raise KeyboardInterrupt
        print(f"learnstream run: {signal.Signals(signum).name}: stopping (committing outputs)",
              file=sys.stderr, flush=True)
        request_stop()

    return {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}


def _delivery_error(exc: BaseException) -> BaseException | None:
    """The `sinks.kafka.DeliveryError` in an exception's chain (Bytewax wraps sink errors)."""
    from sinks.kafka import DeliveryError

    seen: set[int] = set()
    error: BaseException | None = exc
    while error is not None and id(error) not in seen:
        if isinstance(error, DeliveryError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def _run_identity(
    directory: Path, run_id: str, started_at_us: int, shards: int
) -> tuple[str, int]:
    """The run id and start time kept in the recovery directory (written on first use), with the
    shard count: state is kept per shard, so a restart with another count is refused."""
    path = directory / "learnstream-run.json"
    if path.exists():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            kept = (str(data["run_id"]), int(data["started_at_us"]))
        except (OSError, ValueError, KeyError) as exc:
            raise UsageError(
                f"learnstream run: unreadable {str(path)!r} in --recovery-dir: {exc}; "
                "use a new recovery directory"
            ) from exc
        recorded = data.get("shards")
        if recorded is not None and int(recorded) != shards:
            raise UsageError(
                f"learnstream run: shards={shards} but --recovery-dir {str(directory)!r} holds state "
                f"for shards={recorded}; set LEARNSTREAM_SHARDS={recorded} or use a new recovery directory"
            )
        return kept
    tmp = path.with_suffix(".tmp")
    tmp.write_text(
        json.dumps({"run_id": run_id, "started_at_us": started_at_us, "shards": shards}),
        encoding="utf-8",
    )
    os.replace(tmp, path)
    return run_id, started_at_us


def _prepare_recovery(directory: Path, workers: int) -> None:
    """Create the recovery partitions on first use (Bytewax needs them before the run)."""
    directory.mkdir(parents=True, exist_ok=True)
    if any(directory.glob("part-*.sqlite3")):
        return
    from bytewax.recovery import init_db_dir

    init_db_dir(directory, max(1, workers))


def _print_counts(summary: dict[str, Any]) -> None:
    if not summary:
        print("run finished; no pipeline_runs row was written")
        return
    keys = ("records_in", "accepted", "rejected", "duplicates", "late", "alerts")
    print("  ".join(f"{k}={summary.get(k)}" for k in keys) + f"  watermark={summary.get('watermark')}")


def cmd_generate(args: argparse.Namespace) -> int:
    from sources.generator import write_events

    args.out.parent.mkdir(parents=True, exist_ok=True)
    stats = write_events(
        args.out,
        users=args.users,
        days=args.days,
        seed=args.seed,
        bad_fraction=args.bad_fraction,
        duplicate_fraction=args.duplicate_fraction,
    )
    print(f"wrote {stats.events} events ({stats.bad} bad) for {stats.users} users to {stats.path}")
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    from schemas.jsonschema import render

    print(render())
    return 0


def cmd_query(args: argparse.Namespace) -> int:
    import duckdb

    from learnstream.query import run_query

    if not args.out.is_dir():
        raise UsageError(f"learnstream query: no output directory {str(args.out)!r}: pass --out DIR of a run")
    try:
        print(run_query(args.out, args.sql))
    except duckdb.Error as exc:
        first = str(exc).strip().splitlines()[0]
        raise UsageError(f"learnstream query: {first} (tables: {', '.join(_tables())})") from exc
    return 0


def _tables() -> list[str]:
    from schemas.tables import TABLES

    return sorted(TABLES)


def _port_in_use(port: int) -> bool:
    """True when something listens on 127.0.0.1:`port` (SO_REUSEADDR, as the broker binds:
    a port only in TIME_WAIT is free)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def cmd_broker(args: argparse.Namespace) -> int:
    """Run Tansu on 127.0.0.1:PORT until SIGINT/SIGTERM (exit 0); its process is always reaped.

    Prints one line when ready: `learnstream broker: ready, bootstrap.servers=127.0.0.1:PORT ...`.
    A port already in use exits 2 naming it; a broker that cannot start or dies exits 1.
    """
    from learnstream.broker import BrokerError, LocalBroker

    if _port_in_use(args.port):
        raise UsageError(f"learnstream broker: port {args.port} on 127.0.0.1 is in use: choose another with --port")

    def stop(signum: int, frame: object) -> None:
        # once: the broker is being stopped (bounded: SIGKILL after a grace), don't interrupt that
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with LocalBroker(port=args.port) as broker:
            broker.create_topics(args.topics, partitions=args.partitions)
            print(
                f"learnstream broker: ready, bootstrap.servers={broker.bootstrap} (Tansu, in-memory "
                f"storage); topics {', '.join(args.topics)} with {args.partitions} partition(s) each; "
                "Ctrl-C or SIGTERM stops it",
                flush=True,
            )
            while broker.running:
                time.sleep(0.2)
            raise BrokerError(f"the broker on {broker.bootstrap} exited unexpectedly")
    except KeyboardInterrupt:
        print("learnstream broker: stopped", flush=True)
        return 0
    except BrokerError as exc:
        print(f"learnstream broker: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def cmd_demo(args: argparse.Namespace) -> int:
    from learnstream.demo import run_demo

    return run_demo(args.out, users=args.users, days=args.days, seed=args.seed, broker=not args.no_broker)


def _read_user_ids(path: Path) -> list[str]:
    """One id per line; only the line ending is stripped (spaces belong to the id); blank lines skipped."""
    try:
        text = sys.stdin.read() if str(path) == "-" else path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"learnstream erase: cannot read --user-id-file {str(path)!r}: {exc}") from exc
    return [line for line in text.splitlines() if line != ""]


def cmd_erase(args: argparse.Namespace) -> int:
    from learnstream.erase import OutputBusyError, erase_users

    ids = list(args.user_id)
    if args.user_id_file is not None:
        ids += _read_user_ids(args.user_id_file)
    if not ids:
        raise UsageError("learnstream erase: give --user-id ID (repeatable) or --user-id-file FILE")
    if "" in ids:
        raise UsageError("learnstream erase: bad --user-id '': a user_id is 1-256 characters")
    secret = _settings(args.config).key_bytes()  # ConfigError (exit 2) without the secret
    try:
        report = erase_users(args.out, ids, secret, compact=not args.no_compact)
    except FileNotFoundError as exc:
        raise UsageError(f"learnstream erase: {exc}: pass --out DIR of a run") from exc
    except OutputBusyError as exc:
        print(f"learnstream erase: {exc}", file=sys.stderr)
        return 1
    counts = " ".join(f"{t}={n}" for t, n in report.rows.items())
    print(f"erased {len(report.user_keys)} user(s): {report.rows_removed} rows ({counts}); "
          f"audit {report.audit_id} in {report.audit_path}")
    if report.rows_removed == 0:
        print("no rows matched: check that LEARNSTREAM_PSEUDONYM_KEY is the secret of the run", file=sys.stderr)
    return 0


def cmd_retention(args: argparse.Namespace) -> int:
    from learnstream.erase import OutputBusyError, apply_retention

    try:
        report = apply_retention(args.out, args.retention_days, compact=not args.no_compact)
    except FileNotFoundError as exc:
        raise UsageError(f"learnstream retention: {exc}: pass --out DIR of a run") from exc
    except OutputBusyError as exc:
        print(f"learnstream retention: {exc}", file=sys.stderr)
        return 1
    dropped = sum(len(v) for v in report.partitions.values())
    print(f"dropped {dropped} partitions before {report.cutoff} ({report.rows_removed} rows); "
          f"audit {report.audit_id} in {report.audit_path}")
    return 0


COMMANDS = {
    "run": cmd_run,
    "generate": cmd_generate,
    "schema": cmd_schema,
    "query": cmd_query,
    "broker": cmd_broker,
    "demo": cmd_demo,
    "erase": cmd_erase,
    "retention": cmd_retention,
}


def dev_key() -> str:
    """A throwaway pseudonymisation key for `demo` (never for real data)."""
    return secrets.token_hex(32)


_LOG_LEVELS = {"DEBUG": 10, "INFO": 20, "WARNING": 30, "ERROR": 40}


def _configure_logging() -> None:
    """Log at `LEARNSTREAM_LOG_LEVEL` (default INFO; DEBUG adds e.g. every table commit)."""
    import structlog

    name = os.environ.get("LEARNSTREAM_LOG_LEVEL", "INFO").upper()
    if name not in _LOG_LEVELS:
        raise ConfigError(f"bad LEARNSTREAM_LOG_LEVEL={name!r}: use one of {', '.join(_LOG_LEVELS)}")
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(_LOG_LEVELS[name]))


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        _configure_logging()
        args = parser.parse_args(argv)
        return COMMANDS[args.command](args)
    except (UsageError, ConfigError) as exc:
        message = str(exc)
        if isinstance(exc, ConfigError) and not message.startswith("learnstream"):
            message = f"learnstream: {message}"
        print(message, file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
