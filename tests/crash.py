"""Kill a `learnstream run --recovery-dir` child at planned moments and restart it until it finishes.

Shared by the file and Kafka crash tests. Progress is read from Bytewax 0.21's recovery partition
(`part-0.sqlite3`, tables `commits` and `exs`), read-only; another Bytewax version may lay it out
differently.
"""

from __future__ import annotations

import random
import signal
import sqlite3
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: (seconds into the attempt, committed epoch) -> name of the moment to kill at, or None
Trigger = Callable[[float, int], str | None]
POLL_S = 0.002  # file-system checks; the recovery store is read at most every EPOCH_POLL_S
EPOCH_POLL_S = 0.05
FINAL_ROW = "final row written"


def recovery_progress(recovery: Path) -> tuple[int, list[tuple[int, int]]]:
    """(committed epoch, [(execution, resume epoch)]) from Bytewax's recovery partition.

    Read-only and closed at once, so the running flow is never blocked (the store is in WAL mode).
    """
    path = recovery / "part-0.sqlite3"
    if not path.exists():
        return 0, []
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        commits = con.execute("SELECT max(commit_epoch) FROM commits").fetchone()
        executions = con.execute("SELECT ex_num, resume_epoch FROM exs ORDER BY ex_num").fetchall()
    except sqlite3.OperationalError:  # tables not created yet
        return 0, []
    finally:
        con.close()
    return int(commits[0] or 0) if commits else 0, [(int(a), int(b)) for a, b in executions]


def staging_busy(out: Path) -> bool:
    """A table commit has files in `<out>/.staging` right now."""
    staging = out / ".staging"
    try:
        return staging.is_dir() and any(staging.iterdir())
    except FileNotFoundError:  # a commit directory vanished while listing
        return False


@dataclass
class Attempt:
    #: the moment the attempt was killed at, or None when it finished
    killed_at: str | None
    seconds: float
    epoch: int
    stdout: str


def run_attempt(
    cmd: list[str], env: dict[str, str], trigger: Trigger, recovery: Path, timeout_s: float
) -> Attempt:
    """Start an attempt; SIGKILL it as soon as `trigger` names a moment."""
    started = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    epoch, epoch_read = 0, -1.0
    try:
        while proc.poll() is None:
            elapsed = time.monotonic() - started
            if elapsed - epoch_read >= EPOCH_POLL_S:
                epoch, epoch_read = recovery_progress(recovery)[0], elapsed
            moment = trigger(elapsed, epoch)
            if moment is not None:
                proc.send_signal(signal.SIGKILL)
                out, err = proc.communicate(timeout=60)
                assert proc.returncode == -signal.SIGKILL, (proc.returncode, err[-3000:])
                return Attempt(moment, elapsed, epoch, out)
            assert elapsed < timeout_s, "attempt did not finish"
            time.sleep(POLL_S)
        out, err = proc.communicate()
    except BaseException:
        proc.kill()
        proc.communicate()
        raise
    assert proc.returncode == 0, err[-3000:]
    return Attempt(None, time.monotonic() - started, recovery_progress(recovery)[0], out)


@dataclass
class Crashes:
    #: (moment, seconds into the attempt, committed epoch when killed)
    kills: list[tuple[str, float, int]] = field(default_factory=list)
    #: (Bytewax execution, resume epoch)
    executions: list[tuple[int, int]] = field(default_factory=list)
    #: highest committed epoch (one snapshot per epoch)
    epochs: int = 0
    first_kill_at: datetime | None = None
    #: stdout of the attempt that finished
    stdout: str = ""


def kill_until_done(
    cmd: list[str],
    env: dict[str, str],
    out: Path,
    recovery: Path,
    *,
    full_run_s: float,
    rng: random.Random,
    plan: Sequence[str],
    timeout_s: float,
    max_kills: int,
) -> Crashes:
    """Run `cmd` until it exits 0, killing attempts at the planned moments.

    `plan` names one kill per attempt, in order: "timed" (20-80% of `full_run_s` into the
    attempt) or "mid-commit" (while a table commit is staging files); each only once the attempt
    has committed a snapshot of its own, so every restart resumes from a later snapshot. Until it
    has happened, every attempt is also killed the moment the final `pipeline_runs` row reaches
    Parquet (before Bytewax stores its last snapshot), however fast the others go.
    """

    def planned(kind: str) -> Trigger:
        start_epoch = recovery_progress(recovery)[0]
        fraction = rng.uniform(0.2, 0.8) if kind == "timed" else 0.0

        def trigger(elapsed: float, epoch: int) -> str | None:
            if epoch <= start_epoch:
                return None
            if kind == "timed":
                return kind if elapsed >= fraction * full_run_s else None
            return kind if staging_busy(out) else None

        return trigger

    def never(elapsed: float, epoch: int) -> str | None:
        return None

    def or_final_row(then: Trigger) -> Trigger:
        def trigger(elapsed: float, epoch: int) -> str | None:
            if any((out / "parquet" / "pipeline_runs").glob("date=*/*.parquet")):  # not the empty-table file
                return FINAL_ROW
            return then(elapsed, epoch)

        return trigger

    crashes = Crashes()
    pending = list(plan)
    final_pending = True
    while True:
        trigger = planned(pending.pop(0)) if pending else never
        attempt = run_attempt(cmd, env, or_final_row(trigger) if final_pending else trigger,
                              recovery, timeout_s)
        if attempt.killed_at is None:
            crashes.stdout = attempt.stdout
            break
        final_pending = final_pending and attempt.killed_at != FINAL_ROW
        crashes.kills.append((attempt.killed_at, round(attempt.seconds, 2), attempt.epoch))
        if crashes.first_kill_at is None:
            crashes.first_kill_at = datetime.now(UTC)
        assert len(crashes.kills) <= max_kills, crashes.kills
    crashes.epochs, crashes.executions = recovery_progress(recovery)
    return crashes
