"""`learnstream broker`: a real Tansu broker on a chosen port, the four topics with the chosen
partition count, a clean stop on SIGINT/SIGTERM (exit 0, no tansu process left), bad arguments
exit 2 with one line."""

from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient

from learnstream.broker import free_port
from learnstream.cli import BROKER_TOPICS, main

ROOT = Path(__file__).resolve().parents[1]


def _children(pid: int) -> dict[int, str]:
    """Live child processes of `pid` as {pid: command name}."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        state, ppid = stat[stat.rindex(")") + 2 :].split()[:2]
        if int(ppid) == pid and state != "Z":
            found[int(entry.name)] = name
    return found


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2 :].split()[0] != "Z"


def _start(port: int, *args: str) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "learnstream.cli", "broker", "--port", str(port), *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)

    threading.Thread(target=read, daemon=True).start()
    try:
        line = lines.get(timeout=60)
    except queue.Empty:
        proc.kill()
        _, err = proc.communicate()
        raise AssertionError(f"no ready line from learnstream broker; stderr: {err}") from None
    return proc, line


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
def test_broker_serves_topics_and_stops_cleanly(stop: signal.Signals) -> None:
    port = free_port()
    proc, ready = _start(port, "--partitions", "4")
    try:
        assert f"bootstrap.servers=127.0.0.1:{port}" in ready, ready
        tansu = [pid for pid, name in _children(proc.pid).items() if name == "tansu"]
        assert len(tansu) == 1, _children(proc.pid)
        metadata = AdminClient({"bootstrap.servers": f"127.0.0.1:{port}"}).list_topics(timeout=10)
        counts = {name: len(metadata.topics[name].partitions) for name in BROKER_TOPICS}
        assert counts == dict.fromkeys(BROKER_TOPICS, 4)
        proc.send_signal(stop)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    deadline = time.monotonic() + 10
    while _alive(tansu[0]):  # reaped by the CLI, so gone once it exited
        assert time.monotonic() < deadline, "tansu still running after learnstream broker exited"
        time.sleep(0.05)
    # and the port is free again
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))


def test_broker_creates_the_topics_asked_for() -> None:
    port = free_port()
    proc, ready = _start(port, "--partitions", "2", "--topics", "a.in,b-out")
    try:
        metadata = AdminClient({"bootstrap.servers": f"127.0.0.1:{port}"}).list_topics(timeout=10)
        assert {"a.in", "b-out"} <= set(metadata.topics)
        assert "learning.events" not in metadata.topics
        assert len(metadata.topics["b-out"].partitions) == 2
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    assert proc.returncode == 0


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--port", "0"], "'0'"),
        (["--port", "65536"], "'65536'"),
        (["--port", "nine"], "'nine'"),
        (["--partitions", "0"], "'0'"),
        (["--topics", ","], "','"),
        (["--topics", "ok,not ok"], "'not ok'"),
        (["--shards", "3"], "--shards"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(
    args: list[str], named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["broker", *args]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and named in lines[0], captured.err
    assert captured.out == ""


def test_port_in_use_exits_2_naming_it(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        pids_before = set(_children(os.getpid()))
        assert main(["broker", "--port", str(port)]) == 2
        assert set(_children(os.getpid())) == pids_before  # nothing was started
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and f"port {port}" in lines[0] and "--port" in lines[0], lines
