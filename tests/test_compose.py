"""docker-compose.yml and the Dockerfile, checked without Docker (CI has no engine).

- Every `learnstream ...` command parses with the CLI's own parser.
- Every `python -m bytewax.run MODULE:ATTR ...` has flags bytewax.run accepts (its own parser
  and checks) and MODULE:ATTR resolves, under the service's environment, to a Dataflow (as
  bytewax.run resolves it), against a real broker for the Kafka flow.
- Every `python -m bytewax.recovery DIR N` parses, and DIR is the workers' `-r` directory.
- The workers form one cluster: the same `-a` list, process ids 0..N-1, one service per address;
  the events topic has a multiple of N partitions (bytewax #556).
- Every environment variable of a learnstream service is one `flows/environment.py` reads.
- The Dockerfile copies every package of pyproject's `[tool.setuptools] packages`.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from flows.environment import known_variables
from learnstream.broker import LocalBroker
from learnstream.cli import UsageError, build_parser

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
SHELLS = ("sh", "/bin/sh", "bash", "/bin/bash")


def _argv(value: Any) -> list[str]:
    if value is None:
        return []
    return shlex.split(value) if isinstance(value, str) else [str(v) for v in value]


def _simple(tokens: list[str]) -> list[str]:
    """A shell command's words without redirections (`< file`, `>file`, `2>&1`)."""
    words: list[str] = []
    skip = False
    for word in tokens:
        if skip:
            skip = False
        elif word in ("<", ">", ">>", "2>"):
            skip = True
        elif not word.startswith(("<", ">", "2>")):
            words.append(word)
    while words and words[0] in ("do", "then", "else"):
        words = words[1:]
    return words


def _commands(service: dict[str, Any]) -> list[list[str]]:
    """The simple commands a service runs: entrypoint + command, or each command of a
    `sh -c` script (split at ;, &&, ||, | and newlines; loop headers and redirections dropped)."""
    argv = _argv(service.get("entrypoint")) + _argv(service.get("command"))
    if len(argv) >= 3 and argv[0] in SHELLS and argv[1] == "-c":
        script = " ".join(argv[2:]).replace("$$", "$")
        commands = []
        for part in re.split(r"\|\||&&|;|\||\n", script):
            words = _simple(shlex.split(part))
            if words and words[0] not in ("for", "done", "exit", "fi", "test", "["):
                commands.append(words)
        return commands
    return [argv] if argv else []


def _is_learnstream(service: dict[str, Any]) -> bool:
    return service.get("image") == "learnstream:local" or "build" in service


def _python_module(argv: list[str], module: str) -> list[str] | None:
    """The arguments after `python -m <module>`, or None if argv runs something else."""
    if len(argv) >= 3 and Path(argv[0]).name.startswith("python") and argv[1:3] == ["-m", module]:
        return argv[3:]
    return None


def _all_commands() -> list[tuple[str, list[str]]]:
    return [(name, cmd) for name, svc in SERVICES.items() for cmd in _commands(svc)]


def _bytewax_run_args(args: list[str]) -> Any:
    """bytewax.run's own argument parsing (including its recovery checks)."""
    from bytewax.run import _parse_args

    saved = sys.argv
    sys.argv = ["python -m bytewax.run", *args]
    try:
        return _parse_args()
    except SystemExit as exc:  # argparse printed why on stderr
        raise AssertionError(f"bytewax.run refuses {shlex.join(args)} (exit status {exc.code})") from None
    finally:
        sys.argv = saved


def _workers() -> dict[str, Any]:
    found = {}
    for name, cmd in _all_commands():
        args = _python_module(cmd, "bytewax.run")
        if args is not None:
            found[name] = _bytewax_run_args(args)
    return found


def test_the_compose_file_runs_learnstream_and_bytewax_commands() -> None:
    kinds = {name for name, cmd in _all_commands() if cmd[0] == "learnstream" or _python_module(cmd, "bytewax.run") is not None}
    assert {"worker-0", "worker-1", "query", "sample-events"} <= kinds
    # the splitter finds the commands inside sh -c scripts too
    assert ["python", "-m", "bytewax.recovery", "/data/recovery", "2"] in _commands(SERVICES["init-recovery"])
    assert any(c[0].endswith("kafka-topics.sh") for c in _commands(SERVICES["topics"]))


def test_learnstream_commands_parse_with_the_cli() -> None:
    parser = build_parser()
    seen = 0
    for name, cmd in _all_commands():
        if cmd[0] != "learnstream":
            continue
        seen += 1
        try:
            parser.parse_args(cmd[1:])
        except UsageError as exc:
            pytest.fail(f"service {name}: {shlex.join(cmd)}: {exc}")
    assert seen >= 2


def test_bad_learnstream_command_would_be_caught() -> None:
    """The check above can fail: a flag the CLI does not have is a UsageError."""
    with pytest.raises(UsageError):
        build_parser().parse_args(["query", "--output", "/data/out", "SELECT 1"])


def test_bytewax_run_flags_are_valid() -> None:
    workers = _workers()
    assert set(workers) == {"worker-0", "worker-1"}
    for name, args in workers.items():
        assert args.import_str == "flows.kafka:flow", name
        # recovery needs -s and -b (bytewax.run's own check, done by _parse_args above)
        assert args.recovery_directory == Path("/data/recovery"), name
        assert args.snapshot_interval is not None and args.backup_interval is not None, name


def test_bytewax_run_rejects_what_bytewax_rejects() -> None:
    """The check can fail: -r without -b is refused by bytewax.run's parser."""
    with pytest.raises(AssertionError, match="bytewax.run refuses"):
        _bytewax_run_args(["flows.kafka:flow", "-r", "/data/recovery", "-s", "10"])


def test_workers_form_one_cluster() -> None:
    workers = _workers()
    addresses = {args.addresses for args in workers.values()}
    assert len(addresses) == 1, "every process needs the same -a list"
    hosts = [a.rsplit(":", 1)[0] for a in addresses.pop().split(";")]
    ids = sorted(args.process_id for args in workers.values())
    assert ids == list(range(len(hosts)))
    for name, args in workers.items():
        assert hosts[args.process_id] == name, f"{name} has -i {args.process_id}, which is {hosts[args.process_id]}"
    # the events topic: partitions a multiple of the worker count
    script = " ".join(_argv(SERVICES["topics"]["command"]))
    partitions = int(re.search(r"--partitions (\d+)", script).group(1))  # type: ignore[union-attr]
    assert "learning.events" in script
    assert partitions % len(hosts) == 0


def test_recovery_init_matches_the_workers() -> None:
    from bytewax.recovery import _parse_args

    inits = [args for _, cmd in _all_commands() if (args := _python_module(cmd, "bytewax.recovery")) is not None]
    assert len(inits) == 1
    saved = sys.argv
    sys.argv = ["python -m bytewax.recovery", *inits[0]]
    try:
        parsed = _parse_args()
    finally:
        sys.argv = saved
    assert parsed.part_count >= 1
    for args in _workers().values():
        assert parsed.db_dir == args.recovery_directory
    # the workers wait for it
    for name in _workers():
        assert SERVICES[name]["depends_on"]["init-recovery"]["condition"] == "service_completed_successfully"


def test_environment_variables_are_ones_the_flow_reads() -> None:
    known = known_variables()
    checked = 0
    for name, service in SERVICES.items():
        if not _is_learnstream(service):
            continue
        env = service.get("environment") or {}
        if isinstance(env, list):
            env = dict(item.split("=", 1) for item in env)
        for key in env:
            checked += 1
            assert key in known, f"service {name} sets {key}, which learnstream does not read"
    assert checked >= 4


def _expand(value: str) -> str:
    """Compose's `${VAR:?message}` / `${VAR:-default}` / `${VAR}` with this test's values."""
    return re.sub(r"\$\{([A-Z_]+)(?::[?-][^}]*)?\}", lambda m: {"LEARNSTREAM_PSEUDONYM_KEY": "compose-test"}.get(m.group(1), ""), value)


def _service_env(name: str) -> dict[str, str]:
    env = SERVICES[name].get("environment") or {}
    return {k: _expand(str(v)) for k, v in env.items()}


def test_flow_modules_resolve_under_the_service_environment(
    broker: LocalBroker, topic_names: Callable[[str], str], tmp_path: Path
) -> None:
    """What `python -m bytewax.run flows.kafka:flow` resolves in each worker container, with
    kafka:9092 replaced by a real broker and /data/out by a temporary directory."""
    events = topic_names("events")
    broker.create_topics([events], partitions=4)
    probe = (
        "import json, sys\n"
        "from bytewax.dataflow import Dataflow\n"
        "from bytewax.run import _locate_dataflow, _prepare_import\n"
        "module, attr = _prepare_import(sys.argv[1])\n"
        "flow = _locate_dataflow(module, attr)\n"
        "print(json.dumps({'dataflow': isinstance(flow, Dataflow), 'id': flow.flow_id}))\n"
    )
    for name, args in _workers().items():
        env = {k: v for k, v in os.environ.items() if not k.startswith("LEARNSTREAM_")}
        env.update(_service_env(name))
        assert env["LEARNSTREAM_BOOTSTRAP"] == "kafka:9092" and env["LEARNSTREAM_OUT"] == "/data/out"
        env.update(LEARNSTREAM_BOOTSTRAP=broker.bootstrap, LEARNSTREAM_OUT=str(tmp_path / name),
                   LEARNSTREAM_EVENTS_TOPIC=events)
        done = subprocess.run([sys.executable, "-c", probe, args.import_str], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-3000:]
        assert json.loads(done.stdout.strip().splitlines()[-1]) == {"dataflow": True, "id": "learnstream"}


def test_dockerfile_copies_every_package() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    packages = pyproject["tool"]["setuptools"]["packages"]
    copied: set[str] = set()
    for line in (ROOT / "Dockerfile").read_text(encoding="utf-8").splitlines():
        words = line.split()
        if words and words[0].upper() == "COPY" and not any(w.startswith("--from") for w in words):
            copied.update(w.rstrip("/").removeprefix("./") for w in words[1:-1])
    missing = [p for p in packages if p not in copied]
    assert not missing, f"the Dockerfile does not copy {missing}"
    # pip install . needs pyproject.toml and the README it names
    assert {"pyproject.toml", pyproject["project"]["readme"]} <= copied
    for name, service in SERVICES.items():
        if _is_learnstream(service):
            assert service.get("build") == "." and service.get("image") == "learnstream:local", name
