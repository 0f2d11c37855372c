"""Cost of crash recovery on the 1M-event file run, and time to resume after a kill.

    .venv/bin/python benchmarks/bench_recovery.py [--users 10000] [--days 30] [--runs 3] [--intervals 10s,2s]
                                                  [--resume-interval 2s] [--kill-at 0.5]

1. Throughput: for each of `--intervals` (default 10 s, the `snapshot_interval` default, and
   2 s), alternates `--runs` times a file run without recovery and the same run with a recovery
   directory (Bytewax snapshots every interval; the table sinks commit at the same interval in
   both modes, so the difference is the snapshotting itself). Each run is a child process with
   a fresh output (and recovery) directory; the timer covers `run_flow` only, not interpreter
   start-up (as in bench_file_run.py). Prints every run, the medians and the slowdown in wall
   time and in CPU time (user + system of the child, less disturbed by other load on a shared
   machine); the target is recovery at most 10% slower at the default interval.
2. Resume: at `--resume-interval` (default 2 s, so that a run of ~10 s has snapshots to resume
   from), a recovery run is killed with SIGKILL at `--kill-at` of an uninterrupted run's time (but
   only after its first snapshot is stored), then restarted with the same arguments. Prints,
   from the restart: when the interpreter and flow were up, when the source partition was rebuilt
   from its snapshot, when the first micro-batch was read again (processing resumed), when the
   first new snapshot was stored, and when the run finished; the work replayed (time since the
   last stored snapshot at the kill); and checks that the resumed run's counts equal the
   uninterrupted run's.

Machines here are shared and noisy: compare the ratio, not absolute numbers, across machines.
"""

from __future__ import annotations

import argparse
import calendar
import json
import os
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a plain script: the crash harness lives in tests/

from tests.crash import recovery_progress as recovery_state  # noqa: E402

SECRET = "bench-secret"
COUNTS = ("records_in", "accepted", "rejected", "duplicates", "late", "alerts")

# The child prints "@<label> <unix time>" lines on stderr for the resume timeline, then one JSON
# line on stdout with the run's duration and counts. Times are wall clock (time.time()), so that
# parent and child compare.
CHILD = """
import json, resource, sys, time
print(f"@started {time.time()}", file=sys.stderr, flush=True)
from pathlib import Path
from learnstream.config import load_settings
from learnstream.runner import RunSpec, run_flow
import sources.files as files

events, out = Path(sys.argv[1]), Path(sys.argv[2])
recovery = Path(sys.argv[3]) if len(sys.argv) > 3 else None

build_part = files.FileSource.build_part
def traced_build_part(self, step_id, for_part, resume_state):
    state = "resumed" if resume_state is not None else "fresh"
    print(f"@source_built {time.time()} {state} {resume_state}", file=sys.stderr, flush=True)
    return build_part(self, step_id, for_part, resume_state)
files.FileSource.build_part = traced_build_part
next_batch = files._FilePartition.next_batch
first = []
def traced_next_batch(self):
    batch = next_batch(self)
    if not first and any(b.lines for b in batch):  # not the empty batch announcing the partition
        first.append(1)
        print(f"@first_batch {time.time()}", file=sys.stderr, flush=True)
    return batch
files._FilePartition.next_batch = traced_next_batch

if recovery is not None and not any(recovery.glob("part-*.sqlite3")):
    from bytewax.recovery import init_db_dir
    recovery.mkdir(parents=True, exist_ok=True)
    init_db_dir(recovery, 1)
spec = RunSpec(settings=load_settings(), out_dir=out, secret=b"bench-secret", paths=[events],
               recovery_dir=recovery, run_id="bench-run")
print(f"@flow_starting {time.time()}", file=sys.stderr, flush=True)
def cpu():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime
start, cpu_start = time.perf_counter(), cpu()
summary = run_flow(spec)
elapsed, cpu_s = time.perf_counter() - start, cpu() - cpu_start
print(f"@finished {time.time()}", file=sys.stderr, flush=True)
counts = ("records_in", "accepted", "rejected", "duplicates", "late", "alerts")
print(json.dumps({"seconds": elapsed, "cpu_s": cpu_s, **{k: summary.get(k) for k in counts}}))
"""


def child_command(events: Path, out: Path, recovery: Path | None) -> list[str]:
    cmd = [sys.executable, "-c", CHILD, str(events), str(out)]
    return cmd + [str(recovery)] if recovery is not None else cmd


def child_env(snapshot_interval: str) -> dict[str, str]:
    return {
        **os.environ,
        "LEARNSTREAM_PSEUDONYM_KEY": SECRET,
        "LEARNSTREAM_SNAPSHOT_INTERVAL": snapshot_interval,
    }


def timeline(stderr: str) -> dict[str, float]:
    marks: dict[str, float] = {}
    for line in stderr.splitlines():
        if line.startswith("@"):
            label, stamp, *_ = line[1:].split()
            marks.setdefault(label, float(stamp))
    return marks


def run_once(events: Path, work: Path, recovery: bool, interval: str) -> dict[str, Any]:
    out, rec = work / "out", work / "recovery"
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(rec, ignore_errors=True)
    done = subprocess.run(child_command(events, out, rec if recovery else None),
                          env=child_env(interval), cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"run failed: {done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    if recovery:
        result["recovery_bytes"] = sum(p.stat().st_size for p in rec.glob("*") if p.is_file())
        result["epochs"] = recovery_state(rec)[0]
    return result


def last_commit_time(recovery: Path) -> float | None:
    """Wall-clock time the newest snapshot commit was stored (sqlite's CURRENT_TIMESTAMP, 1 s)."""
    path = recovery / "part-0.sqlite3"
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        row = con.execute("SELECT max(created_at) FROM snaps").fetchone()
    finally:
        con.close()
    if not row or row[0] is None:
        return None
    return float(calendar.timegm(time.strptime(row[0], "%Y-%m-%d %H:%M:%S")))


def kill_and_resume(events: Path, work: Path, kill_after_s: float, interval: str) -> dict[str, Any]:
    out, rec = work / "out", work / "recovery"
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(rec, ignore_errors=True)
    cmd = child_command(events, out, rec)
    env = child_env(interval)
    started = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    while proc.poll() is None:
        elapsed = time.monotonic() - started
        if elapsed >= kill_after_s and recovery_state(rec)[0] > 0:
            break
        time.sleep(0.05)
    if proc.poll() is not None:
        raise RuntimeError("the run finished before the kill; lower --kill-at")
    epoch_at_kill = recovery_state(rec)[0]
    snap_wall = last_commit_time(rec)
    proc.send_signal(signal.SIGKILL)
    killed_wall = time.time()
    proc.communicate()
    killed_after = time.monotonic() - started

    restart_wall = time.time()
    resumed = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    first_snapshot: float | None = None
    while resumed.poll() is None:
        if first_snapshot is None and recovery_state(rec)[0] > epoch_at_kill:
            first_snapshot = time.time() - restart_wall
        time.sleep(0.05)
    stdout, stderr = resumed.communicate()
    if resumed.returncode != 0:
        raise RuntimeError(f"resumed run failed: {stderr[-3000:]}")
    marks = {k: v - restart_wall for k, v in timeline(stderr).items()}
    if first_snapshot is not None:
        marks["first_snapshot"] = first_snapshot
    result: dict[str, Any] = json.loads(stdout.strip().splitlines()[-1])
    resumed_line = next((ln for ln in stderr.splitlines() if ln.startswith("@source_built")), "")
    return {
        "killed_after_s": killed_after,
        "epoch_at_kill": epoch_at_kill,
        "replayed_s": (killed_wall - snap_wall) if snap_wall is not None else float("nan"),
        "resumed_from": " ".join(resumed_line.split()[2:]),
        "marks": marks,
        "resumed_total_s": time.time() - restart_wall,
        "executions": recovery_state(rec)[1],
        "counts": {k: result.get(k) for k in COUNTS},
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--intervals", default="10s,2s",
                        help="snapshot intervals to compare on vs off at (the first is the default)")
    parser.add_argument("--resume-interval", default="2s",
                        help="snapshot interval of the kill-and-resume run (several snapshots per run)")
    parser.add_argument("--kill-at", type=float, default=0.5, help="fraction of a run to kill at")
    args = parser.parse_args()

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_file_run import cached_events

    events = cached_events(args.users, args.days, args.seed)
    n = sum(1 for _ in events.open("rb"))
    print(f"input: {n} events, {events.stat().st_size / 1e6:.0f} MB; {os.cpu_count()} CPUs; "
          f"default batch size; {args.runs} runs per mode, alternating")

    with tempfile.TemporaryDirectory(prefix="bench-recovery-", dir=events.parent) as tmp:
        work = Path(tmp)
        for interval in args.intervals.split(","):
            off: list[dict[str, Any]] = []
            on: list[dict[str, Any]] = []
            print(f"-- snapshot interval {interval} (also the table commit interval, on and off)")
            for i in range(args.runs):
                off.append(run_once(events, work, False, interval))
                on.append(run_once(events, work, True, interval))
                a, b = off[-1], on[-1]
                print(
                    f"run {i + 1}: recovery off {n / a['seconds']:,.0f} ev/s ({a['seconds']:.2f} s, "
                    f"CPU {a['cpu_s']:.2f} s) | on {n / b['seconds']:,.0f} ev/s ({b['seconds']:.2f} s, "
                    f"CPU {b['cpu_s']:.2f} s), {b['epochs']} snapshots, "
                    f"recovery store {b['recovery_bytes'] / 2**20:.1f} MiB"
                )
                if {k: a[k] for k in COUNTS} != {k: b[k] for k in COUNTS}:
                    print(f"  COUNTS DIFFER: off {a} on {b}")
            med_off = statistics.median(r["seconds"] for r in off)
            med_on = statistics.median(r["seconds"] for r in on)
            print(f"median recovery off: {n / med_off:,.0f} events/s ({med_off:.2f} s)")
            print(f"median recovery on:  {n / med_on:,.0f} events/s ({med_on:.2f} s)")
            cpu_off = statistics.median(r["cpu_s"] for r in off)
            cpu_on = statistics.median(r["cpu_s"] for r in on)
            print(f"recovery costs {100 * (med_on / med_off - 1):+.1f}% wall time (target <= +10%), "
                  f"{100 * (cpu_on / cpu_off - 1):+.1f}% CPU time (median CPU {cpu_off:.2f} s off, "
                  f"{cpu_on:.2f} s on; CPU time suffers less from other load on the machine)")

        interval = args.resume_interval
        print(f"-- kill and resume, snapshot interval {interval}")
        reference = run_once(events, work, True, interval)
        kill_after = args.kill_at * reference["seconds"] + 2.0  # + interpreter start-up
        resume = kill_and_resume(events, work, kill_after, interval)
        marks = resume["marks"]
        print(
            f"killed (SIGKILL) {resume['killed_after_s']:.1f} s after start (an uninterrupted run "
            f"takes {reference['seconds']:.1f} s + start-up), at snapshot epoch "
            f"{resume['epoch_at_kill']}; about {resume['replayed_s']:.0f} s of work since the "
            f"last stored snapshot is replayed (sqlite timestamps, 1 s resolution)"
        )
        print(f"restart: source {resume['resumed_from']}")

        def at(label: str) -> str:
            return f"{marks[label]:.2f} s" if label in marks else "n/a"

        print(
            "time from restart: interpreter and imports up "
            f"{at('flow_starting')}, source rebuilt from snapshot {at('source_built')}, "
            f"first batch read (processing resumed) {at('first_batch')}, "
            f"first new snapshot stored {at('first_snapshot')}, run finished {at('finished')} "
            f"(process exit {resume['resumed_total_s']:.2f} s)"
        )
        print(f"executions (number, resume epoch): {resume['executions']}")
        same = resume["counts"] == {k: reference[k] for k in COUNTS}
        print(f"resumed run counts {'equal' if same else 'DIFFER from'} the uninterrupted run's: "
              f"{resume['counts']}")


if __name__ == "__main__":
    main()
