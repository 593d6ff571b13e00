"""Chaos: kill -9 a random worker or the server every 30-90 s; account for every step.

    .venv/bin/python -m benchmarks.faults --chaos [--minutes=10] [--seed=0] [--config=both]

For each config (``configs/async_diloco.py``, ``configs/diloco.py``: rounds)
a run starts under the launcher, and for ``--minutes`` a random one of
``worker_0``, ``worker_1`` and ``ps_0`` is killed with SIGKILL at random
gaps of ``--min_gap``-``--max_gap`` seconds (the schedule is drawn up front
from ``--seed``, so it is bounded by the window). A run that ends inside the
window is followed by another, sized from the first one's speed, until the
window is used; the figures add up over runs. After the window nothing is
killed and the run must finish within ``--grace_minutes``, else it is
reported as a hang and stopped. Every process started is stopped on the way
out (also on Ctrl-C). One line is printed per kill.

A kill goes to a live process: a worker (also one still starting), or the
server once it serves and has a checkpoint (the launcher fails a run whose
server dies again before it serves, or before its first checkpoint). A kill
time that passes with nothing to kill waits for the next target; the times
then closer than ``--min_gap`` to that kill are dropped, so kills never come
in bursts. The configs
are changed in operations only (``CHAOS_OVERRIDES``): a checkpoint every
2 s, heartbeats every 2 s with a 10 s timeout, a 10 s round deadline,
retries for 180 s, a 600 s connect timeout (the evaluator fails the run
when no worker initializes the server in time), 1,000 restarts allowed, a
log line per step.

What counts (per worker, by step index, from records the run keeps):

- Steps computed: every step a worker process ran, killed ones included:
  each ``step N/M`` line of its log (``worker.log_every_steps=1``), across
  the restarts the launcher appends to the same log.
- A worker killed and started again resumes after its last push the server
  applied (``resuming after step S`` in its log): the steps it had computed
  after S are *redone* (computed twice; the first time is waste).
- A server killed and started again resumes from its last checkpoint. For
  each client: S_kill = the step of its last acknowledged push (server
  Status, read just before the kill), S_ckpt = that client's ``last_step``
  in the checkpoint the new server restores (the newest file at the kill).
  Steps S_ckpt+1..S_kill were acknowledged and are *rolled back*. A push
  built from parameters the restored server lacks is refused (``the server
  was restored to an earlier version`` in the worker's log); the worker
  drops what it computed since its last push (up to the refused push's
  step B) and fetches: steps S_kill+1..B are *refused*.
- Steps in the final parameters: the step indices 1..num_steps whose last
  computation was neither redone, rolled back nor refused (a step index is
  counted once, however many times it was computed).
- Goodput = steps in the final parameters / steps computed.

Acknowledged pushes lost, per server kill: for each client, its
``last_sequence`` in the server's Status just before the kill minus the one
in the checkpoint restored; all are past that checkpoint when the server
restored the newest checkpoint written before the kill (checked: the
restored path against the newest file listed right after the kill). Those
lost *beyond* the last checkpoint are the pushes of the newest checkpoint
the restored state lacks: 0 unless the server fell back to an older file.
For async runs the launcher's ``updates_lost`` (version mark minus the
checkpoint's version) should equal the pushes lost; for rounds it counts
rounds, and summary.json's ``acked_pushes_lost`` (the mark's push count)
counts the open round's pushes too.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence

from gasgd_tf import checkpoints, layout, progress

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = ("async_diloco", "diloco")
NUM_WORKERS = 2
SERVER = layout.shard(0)
TARGETS = (*layout.workers(NUM_WORKERS), SERVER)
MIN_RUN_SECS = 120.0  # No new run is started with less of the window left.
STALL_SECS = 120.0  # The server's version not moving this long while training: said so.

# What the chaos changes in a config: operations only (faster checkpoints,
# failure detection, enough restarts, a log line per step for the accounting).
CHAOS_OVERRIDES = (
    "--config.worker.log_every_steps=1",
    "--config.ps.checkpoint_every_secs=2",
    "--config.client.heartbeat_secs=2",
    "--config.ps.heartbeat_timeout_secs=10",
    "--config.ps.round_timeout_secs=10",
    # A restarted server may take a while to come back on 2 busy cores.
    "--config.client.retry_secs=180",
    # The evaluator gives up (and fails the run) when no worker initializes the
    # server within this: workers killed while starting on busy cores took longer.
    "--config.client.connect_timeout_secs=600",
    "--config.launcher.max_worker_restarts=1000",
    "--config.launcher.max_server_restarts=1000",
    "--config.launcher.log_every_secs=30",
    "--config.eval.every_secs=15",
)

_STEP = re.compile(r"^worker_\d+: step (\d+)/\d+,")
_JOIN = re.compile(r"^worker_\d+: .*joined at version \d+(?:; resuming after step (\d+))?")
_REFUSED = "the server was restored to an earlier version"
_LAST_LOST = "the last push was lost to a server restart"
_RESTORED = re.compile(r"parameter server: restored version (\d+) from (\S+?)(?:[;,]|$)")
_LAUNCHER_RESTART = re.compile(
    r"^ps_0 .* at version (\S+); starting it again .* from its checkpoint at version (\d+)"
    r"(?:; (\d+) update\(s\) after it are lost)?"
)


# -- The pure parts: schedule, log parsing, accounting --------------------------------------


def kill_schedule(
    rng: random.Random, window_secs: float, min_gap: float, max_gap: float
) -> list[float]:
    """The kill times (seconds from the window's start): gaps uniform in [min_gap, max_gap].

    Every time is inside the window, so there are at most window / min_gap.
    """
    if not 0 < min_gap <= max_gap:
        raise ValueError(f"need 0 < min_gap <= max_gap, got {min_gap}, {max_gap}")
    times, t = [], 0.0
    while True:
        t += rng.uniform(min_gap, max_gap)
        if t >= window_secs:
            return times
        times.append(t)


def choose_target(rng: random.Random, live: Sequence[str]) -> str | None:
    """A random one of the roles that can be killed now, or None."""
    return rng.choice(sorted(live)) if live else None


@dataclasses.dataclass(frozen=True)
class Event:
    """One thing in a worker's log, in order: ``kind`` and its value.

    kinds: "start" (a process joined, resuming after step ``value``), "step"
    (step ``value`` done), "refused" (a push lost to a restored server: the
    steps up to its step are dropped; ``value`` 1: the refused push is the
    step about to be logged, 0: the last one logged), "server_kill"
    (server kill number ``value`` happened here).
    """

    kind: str
    value: int = 0


def parse_worker_log(text: str, server_kills: Iterable[tuple[int, int]] = ()) -> list[Event]:
    """The events of a worker's log (all its processes), with the server kills put in place.

    Args:
      text: The log (decoded as latin-1, so that character and byte offsets agree).
      server_kills: (byte offset of the log at the kill, kill number) pairs.
    """
    marks = sorted(server_kills)
    events, offset = [], 0
    for line in text.split("\n"):
        while marks and marks[0][0] <= offset:
            events.append(Event("server_kill", marks.pop(0)[1]))
        offset += len(line) + 1
        if m := _STEP.match(line):
            events.append(Event("step", int(m.group(1))))
        elif m := _JOIN.match(line):
            events.append(Event("start", int(m.group(1) or 0)))
        elif _REFUSED in line:
            events.append(Event("refused", 1))
        elif _LAST_LOST in line:
            events.append(Event("refused", 0))
    events.extend(Event("server_kill", number) for _, number in marks)
    return events


@dataclasses.dataclass
class StepCount:
    """One worker's (or a sum's) steps: computed, and where those not in the final model went."""

    computed: int = 0
    final: int = 0
    redone: int = 0
    rolled_back: int = 0
    refused: int = 0
    unattributed_refusals: int = 0  # A refusal with no server kill before it (not expected).

    def __add__(self, other: StepCount) -> StepCount:
        return StepCount(
            *(getattr(self, f.name) + getattr(other, f.name) for f in dataclasses.fields(self))
        )

    @property
    def goodput(self) -> float:
        return self.final / self.computed if self.computed else math.nan


def account_worker(events: Sequence[Event], rollbacks: dict[int, tuple[int, int]]) -> StepCount:
    """One worker's steps, from its log's events (``parse_worker_log``).

    Args:
      events: In log order.
      rollbacks: Server kill number -> (S_ckpt, S_kill) for this worker: the
        step of its last push in the checkpoint restored, and of its last
        push the server acknowledged before the kill.
    """
    count = StepCount()
    alive: set[int] = set()  # Step indices whose last computation still counts.
    current = 0  # The last step the running process logged (or resumed after).
    drop_through = 0  # Steps up to this one are being dropped (a refused push).
    pending: list[int] = []  # Server kills whose rollback has not been applied.

    def discard(low: int, high: int) -> int:
        gone = {i for i in alive if low < i <= high}
        alive.difference_update(gone)
        return len(gone)

    def roll_back(number: int, through: int | None = None) -> None:
        ckpt, acked = rollbacks.get(number, (0, 0))
        acked = max(acked, ckpt)
        count.rolled_back += discard(ckpt, acked)
        if through is not None and through > acked:
            count.refused += discard(acked, through)

    for event in events:
        if event.kind == "start":
            for number in pending:
                roll_back(number)
            pending.clear()
            count.redone += discard(event.value, math.inf)
            current = drop_through = event.value
        elif event.kind == "step":
            for i in range(current + 1, event.value + 1):
                count.computed += 1
                if i <= drop_through:
                    count.refused += 1
                else:
                    alive.add(i)
            current = max(current, event.value)
        elif event.kind == "server_kill":
            pending.append(event.value)
        elif event.kind == "refused":
            through = current + event.value
            if not pending:
                count.unattributed_refusals += 1
                continue
            for number in pending[:-1]:
                roll_back(number)
            roll_back(pending[-1], through)
            pending.clear()
            drop_through = max(drop_through, through)
    for number in pending:
        roll_back(number)
    count.final = len(alive)
    return count


def acked_lost(before: dict[str, dict], restored: dict[str, dict]) -> int:
    """Pushes acknowledged before a server kill that the restored state lacks (by push sequence).

    Args:
      before: Client id -> {"last_sequence": ...} from the server's Status before the kill.
      restored: The same from the checkpoint it restored (``meta["clients"]``).
    """
    return sum(
        max(0, int(c.get("last_sequence", 0)) - int(restored.get(cid, {}).get("last_sequence", 0)))
        for cid, c in before.items()
    )


def account_run(record: dict) -> dict:
    """A finished run's figures from its record (``_Run.record``): steps and pushes lost."""
    kills = record["kills"]
    server_kills = [k for k in kills if k["target"] == SERVER]
    restored = record.get("restored", [])
    total = StepCount()
    per_worker = {}
    for role in layout.workers(record["num_workers"]):
        marks = [(k["log_sizes"].get(role, 0), k["number"]) for k in server_kills]
        rollbacks = {}
        for k in server_kills:
            ckpt = (k.get("checkpoint_clients") or {}).get(role, {})
            acked = (k.get("status_clients") or {}).get(role, {})
            rollbacks[k["number"]] = (int(ckpt.get("last_step", 0)), int(acked.get("last_step", 0)))
        events = parse_worker_log(record["logs"].get(role, ""), marks)
        steps = account_worker(events, rollbacks)
        per_worker[role] = dataclasses.asdict(steps)
        total = total + steps
    server = []
    for i, k in enumerate(server_kills):
        lost = acked_lost(k.get("status_clients") or {}, k.get("checkpoint_clients") or {})
        came_back = restored[i] if i < len(restored) else None
        newest = k.get("checkpoint_path")
        same = came_back is not None and os.path.basename(came_back["path"]) == os.path.basename(
            newest or ""
        )
        server.append(
            {
                "number": k["number"],
                "at_secs": k["at_secs"],
                "acked_pushes_lost": lost,
                "newest_checkpoint_version": k.get("checkpoint_version"),
                "restored_version": came_back["version"] if came_back else None,
                "restored_newest": same,
                # Lost beyond the last checkpoint: its version minus the one
                # restored when the server fell back to an older file.
                "acked_lost_beyond_checkpoint": 0
                if same
                else (k.get("checkpoint_version") or 0)
                - (came_back["version"] if came_back else 0),
                "launcher_updates_lost": k.get("launcher_updates_lost"),
            }
        )
    summary = record.get("summary") or {}
    return {
        "steps": dataclasses.asdict(total),
        "per_worker": per_worker,
        "server_kills": server,
        "worker_kills": len(kills) - len(server_kills),
        "summary": {
            key: summary.get(key)
            for key in (
                "server_version",
                "test_accuracy",
                "updates_lost",
                "pushes_lost",
                "worker_restarts",
                "server_restarts",
                "wall_secs",
            )
        },
    }


def aggregate(name: str, runs: Sequence[dict], window_secs: float) -> dict:
    """One config's figures over its runs (``account_run`` each).

    Steps count over the runs that finished: one stopped (failed, hung) has
    no final parameters; its steps computed are listed apart.
    """
    steps = StepCount()
    for r in runs:
        if r["outcome"] == "done":
            steps = steps + StepCount(**r["figures"]["steps"])
    server_kills = [k for r in runs for k in r["figures"]["server_kills"]]
    accuracies = [r["figures"]["summary"]["test_accuracy"] for r in runs]
    return {
        "config": name,
        "window_secs": window_secs,
        "runs": len(runs),
        "completed_runs": sum(1 for r in runs if r["outcome"] == "done"),
        "worker_kills": sum(r["figures"]["worker_kills"] for r in runs),
        "server_kills": len(server_kills),
        "steps": dataclasses.asdict(steps),
        "goodput": steps.goodput if steps.computed else None,  # None: JSON has no NaN.
        "acked_pushes_lost": sum(k["acked_pushes_lost"] for k in server_kills),
        "acked_lost_beyond_checkpoint": sum(
            k["acked_lost_beyond_checkpoint"] for k in server_kills
        ),
        "restored_newest_checkpoint": all(k["restored_newest"] for k in server_kills),
        "test_accuracy": accuracies,
        "outcomes": [r["outcome"] for r in runs],
        "steps_computed_in_unfinished_runs": sum(
            r["figures"]["steps"]["computed"] for r in runs if r["outcome"] != "done"
        ),
        "longest_stall_secs": max((r.get("longest_stall_secs", 0.0) for r in runs), default=0.0),
    }


# -- The processes ---------------------------------------------------------------------------


def _own_pids(workdir: str) -> dict[int, str]:
    """pid -> command line of every process of this run (its command names ``workdir``)."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if f"--workdir={workdir}".encode() in argv:
            found[int(entry)] = " ".join(a.decode(errors="replace") for a in argv)
    return found


def role_pid(workdir: str, role: str) -> int | None:
    """The pid of ``role``'s live process in the run in ``workdir``, or None."""
    kind, _, index = role.partition("_")
    want = (f"--role={kind} ", f" --task_index={index}")
    for pid, command in _own_pids(workdir).items():
        if all(w in command + " " for w in want):
            try:
                with open(f"/proc/{pid}/stat") as f:
                    if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                        continue
            except OSError:
                continue
            return pid
    return None


class _Run:
    """One launcher run under chaos: starts it, kills in it, records what the accounting needs."""

    def __init__(self, config: str, workdir: str, num_steps: int, number: int, t0: float):
        self.config, self.workdir, self.num_steps, self.number = config, workdir, num_steps, number
        self.t0 = t0
        self.kills: list[dict] = []
        self.out_path = os.path.join(workdir, "launcher.out")
        os.makedirs(workdir, exist_ok=True)
        command = [
            sys.executable,
            "-m",
            "gasgd_tf.main",
            f"--config=configs/{config}.py",
            f"--workdir={workdir}",
            f"--config.num_steps={num_steps}",
            *CHAOS_OVERRIDES,
        ]
        self.command = command
        with open(self.out_path, "ab") as out:
            self.launcher = subprocess.Popen(
                command,
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.started = time.monotonic()
        self._client = None
        self.last_version: int | None = None
        self.version_moved = time.monotonic()
        self.longest_stall = 0.0
        self._next_watch = 0.0

    # Server status ----------------------------------------------------------------------

    def _status(self):
        """The server's Status with the workers' records, or None (not serving)."""
        port_file = layout.port_path(self.workdir, SERVER)
        if not os.path.exists(port_file):
            return None
        if self._client is None:
            with open(port_file) as f:
                port = f.read().strip()
            if not port:
                return None
            from gasgd_tf.client import make_client

            self._client = make_client(f"127.0.0.1:{port}", "chaos", timeout_secs=3, retry_secs=0.5)
        from gasgd_tf.client import RequestRejectedError, ServerUnavailableError

        try:
            return self._client.status(layout.workers(NUM_WORKERS))
        except (ServerUnavailableError, RequestRejectedError):
            return None

    def watch(self) -> None:
        """Polls the server's version: the longest time it did not move while workers trained."""
        now = time.monotonic()
        if now < self._next_watch:
            return
        self._next_watch = now + 2.0
        status = self._status()
        if status is None or status.version != self.last_version:
            if status is not None:
                self.last_version = status.version
            self.version_moved = now
            return
        if any(role_pid(self.workdir, w) for w in layout.workers(NUM_WORKERS)):
            stall = now - self.version_moved
            if stall > self.longest_stall:
                if stall >= STALL_SECS and self.longest_stall < STALL_SECS:
                    print(
                        f"  {self.config} run {self.number}: server version {self.last_version} "
                        f"has not moved for {stall:.0f}s",
                        flush=True,
                    )
                self.longest_stall = stall
        else:
            self.version_moved = now

    def _checkpoints(self) -> list[str]:
        run_id = (progress.read_json(layout.config_path(self.workdir)) or {}).get("run_id")
        if not run_id:
            return []
        return checkpoints.restore_candidates(layout.checkpoint_dir(self.workdir), None, run_id)

    # Killing ----------------------------------------------------------------------------

    def live_targets(self) -> list[str]:
        """The roles that may be killed now: live workers; the server when serving, checkpointed."""
        live = [w for w in layout.workers(NUM_WORKERS) if role_pid(self.workdir, w)]
        if (
            role_pid(self.workdir, SERVER)
            and os.path.exists(layout.port_path(self.workdir, SERVER))
            and self._checkpoints()
        ):
            live.append(SERVER)
        return live

    def _log_sizes(self) -> dict[str, int]:
        sizes = {}
        for role in layout.workers(NUM_WORKERS):
            try:
                sizes[role] = os.path.getsize(layout.log_path(self.workdir, role))
            except OSError:
                sizes[role] = 0
        return sizes

    def kill(self, role: str, number: int) -> dict | None:
        """kill -9 ``role``; returns what was recorded, or None if it was not there."""
        status = self._status() if role == SERVER else None
        if role == SERVER and status is None:
            return None
        pid = role_pid(self.workdir, role)
        if pid is None:
            return None
        sizes = self._log_sizes()
        os.kill(pid, signal.SIGKILL)
        record = {
            "number": number,
            "target": role,
            "pid": pid,
            "at_secs": round(time.monotonic() - self.t0, 1),
            "log_sizes": sizes,
        }
        if role == SERVER:
            record["version"] = status.version
            record["status_clients"] = {
                c.client_id: {"last_sequence": c.last_sequence, "last_step": c.last_step}
                for c in status.clients
            }
            found = self._checkpoints()  # Listed now: before the new server can write any.
            if found:
                meta = checkpoints.load_meta(found[0])
                record["checkpoint_path"] = found[0]
                record["checkpoint_version"] = meta.version
                record["checkpoint_clients"] = {
                    cid: {
                        "last_sequence": c.get("last_sequence", 0),
                        "last_step": c.get("last_step", 0),
                    }
                    for cid, c in (meta.meta.get("clients") or {}).items()
                }
            self._client = None  # A new connection to the restarted server.
        else:
            record["step"] = last_step(layout.log_path(self.workdir, role))
        self.kills.append(record)
        return record

    # Ending -----------------------------------------------------------------------------

    def done(self) -> bool:
        return self.launcher.poll() is not None

    def stop(self, grace_secs: float = 150.0) -> None:
        """Stops the launcher (it stops its children), then kills anything of this run left."""
        if self._client is not None:
            try:
                self._client.close()
            except Exception:  # noqa: BLE001 - closing must never stop the cleanup.
                pass
            self._client = None
        if self.launcher.poll() is None:
            self.launcher.send_signal(signal.SIGTERM)  # Like Ctrl-C: it stops its children.
            try:
                self.launcher.wait(timeout=grace_secs)
            except subprocess.TimeoutExpired:
                self.launcher.kill()
                self.launcher.wait()
        for pid in _own_pids(self.workdir):  # The children are in sessions of their own.
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def record(self, outcome: str) -> dict:
        """Everything ``account_run`` reads, from the run's files."""
        logs = {}
        for role in layout.workers(NUM_WORKERS):
            try:
                with open(layout.log_path(self.workdir, role), encoding="latin-1") as f:
                    logs[role] = f.read()
            except FileNotFoundError:
                logs[role] = ""
        restored = []
        try:
            with open(layout.log_path(self.workdir, SERVER), encoding="latin-1") as f:
                for line in f:
                    if m := _RESTORED.search(line):
                        restored.append({"version": int(m.group(1)), "path": m.group(2)})
        except FileNotFoundError:
            pass
        launcher_lost = []
        with open(self.out_path, encoding="latin-1") as f:
            for line in f:
                if m := _LAUNCHER_RESTART.match(line):
                    launcher_lost.append(int(m.group(3)) if m.group(3) else None)
        server_kills = [k for k in self.kills if k["target"] == SERVER]
        for k, lost in zip(server_kills, launcher_lost):
            k["launcher_updates_lost"] = lost
        return {
            "config": self.config,
            "number": self.number,
            "workdir": self.workdir,
            "num_steps": self.num_steps,
            "num_workers": NUM_WORKERS,
            "command": " ".join(self.command[1:]),
            "outcome": outcome,
            "kills": self.kills,
            "restored": restored,
            "logs": logs,
            "summary": progress.read_json(layout.summary_path(self.workdir)),
            "wall_secs": round(time.monotonic() - self.started, 1),
            "longest_stall_secs": round(self.longest_stall, 1),
        }


def last_step(log_path: str, tail_bytes: int = 16384) -> int | None:
    """The last step the newest process in a worker's log logged; None: it logged none yet."""
    try:
        with open(log_path, "rb") as f:
            f.seek(max(os.path.getsize(log_path) - tail_bytes, 0))
            text = f.read().decode("latin-1")
    except OSError:
        return None
    step = None
    for line in text.split("\n"):
        if line.startswith("====="):
            step = None
        elif m := _STEP.match(line):
            step = int(m.group(1))
    return step


def _tail(path: str, lines: int = 15) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except FileNotFoundError:
        return ""


def _kill_next(
    current: _Run,
    schedule: list[float],
    rng: random.Random,
    runs: list[dict],
    elapsed: float,
    min_gap: float,
) -> None:
    """Kills a random live target of ``current`` (if any) and says so; drops the times too close."""
    target = choose_target(rng, current.live_targets())
    if target is None:
        return
    kill_number = sum(len(r["kills"]) for r in runs) + len(current.kills) + 1
    record = current.kill(target, kill_number)
    if record is None:
        return
    # One kill at a time: times that passed while nothing could be killed
    # go, and so do those closer than min_gap to this one.
    while schedule and schedule[0] < elapsed + min_gap:
        schedule.pop(0)
    if target == SERVER:
        where = (
            f"at version {record['version']} (newest checkpoint {record.get('checkpoint_version')})"
        )
    elif record.get("step") is not None:
        where = f"at step {record['step']}"
    else:
        where = "before its first step"
    following = f"next in {schedule[0] - elapsed:.0f}s" if schedule else "last"
    print(
        f"  [{elapsed:5.0f}s] {current.config} run {current.number}: kill -9 {target} "
        f"(pid {record['pid']}) {where}; kill {kill_number}, {following}",
        flush=True,
    )


def chaos_config(
    config: str,
    minutes: float,
    rng: random.Random,
    base: str,
    min_gap: float = 30.0,
    max_gap: float = 90.0,
    num_steps: int | None = None,
    grace_minutes: float = 10.0,
) -> dict:
    """Chaos under one config for ``minutes``; returns its runs and figures."""
    window = minutes * 60.0
    schedule = kill_schedule(rng, window, min_gap, max_gap)
    t0 = time.monotonic()
    print(
        f"{config}: {len(schedule)} kills planned in {minutes:g} min "
        f"(gaps {min_gap:g}-{max_gap:g} s); runs in {base}",
        flush=True,
    )
    runs, steps = [], num_steps or max(int(window * 8), 500)
    current: _Run | None = None
    number = 0
    try:
        while True:
            elapsed = time.monotonic() - t0
            if current is not None and current.done():
                outcome = "done" if current.launcher.returncode == 0 else "failed"
                if outcome == "failed":
                    print(f"  run {current.number} FAILED:\n{_tail(current.out_path)}", flush=True)
                current.stop()
                runs.append(current.record(outcome))
                rate = num_steps_rate(runs[-1])
                current = None
                left = window - elapsed
                if outcome != "done" or left < MIN_RUN_SECS:
                    break
                steps = max(500, int(rate * left * 0.9))
            if current is None:
                if elapsed >= window:
                    break
                number += 1
                workdir = os.path.join(base, f"{config}_run{number}")
                print(
                    f"  [{elapsed:5.0f}s] {config} run {number}: {steps} steps x 2 workers",
                    flush=True,
                )
                current = _Run(config, workdir, steps, number, t0)
            if elapsed >= window + grace_minutes * 60:
                print(
                    f"  [{elapsed:5.0f}s] {config} run {current.number}: HANG, stopping it",
                    flush=True,
                )
                print(_tail(current.out_path), flush=True)
                current.stop()
                runs.append(current.record("hang"))
                current = None
                break
            if schedule and elapsed >= schedule[0]:
                _kill_next(current, schedule, rng, runs, elapsed, min_gap)
            current.watch()
            time.sleep(0.5)
    finally:
        if current is not None:  # Ctrl-C, or an error here: stop everything it started.
            current.stop()
    for r in runs:
        r["figures"] = account_run(r)
    return {"aggregate": aggregate(config, runs, window), "runs": [_light(r) for r in runs]}


def num_steps_rate(record: dict) -> float:
    """Steps per worker per second of a finished run (for sizing the next)."""
    return record["num_steps"] / max(record["wall_secs"], 1.0)


def _light(record: dict) -> dict:
    """A run's record without its logs (they stay in its workdir)."""
    return {k: v for k, v in record.items() if k != "logs"}


def run(
    configs: Sequence[str],
    minutes: float = 10.0,
    seed: int = 0,
    min_gap: float = 30.0,
    max_gap: float = 90.0,
    num_steps: int | None = None,
    grace_minutes: float = 10.0,
    workdir: str | None = None,
) -> dict:
    """The chaos run of every config in ``configs``; returns the report."""
    from benchmarks import common

    base = workdir or tempfile.mkdtemp(prefix="chaos_")
    rng = random.Random(seed)
    previous = signal.signal(signal.SIGTERM, _interrupt)
    report = {
        "machine": common.machine_info(),
        "command": "python -m benchmarks.faults --chaos "
        f"--minutes={minutes:g} --seed={seed} --config={','.join(configs)}",
        "workdir": base,
        "overrides": list(CHAOS_OVERRIDES),
        "results": [],
    }
    try:
        for config in configs:
            load = os.getloadavg()
            result = chaos_config(
                config, minutes, rng, base, min_gap, max_gap, num_steps, grace_minutes
            )
            # The machine's load (1-minute average) as the config began and ended:
            # other work on the same cores slows every restart.
            result["loadavg_start_end"] = [round(load[0], 1), round(os.getloadavg()[0], 1)]
            report["results"].append(result)
            with open(os.path.join(base, "chaos.json"), "w") as f:  # Kept if a later one fails.
                json.dump(report, f, indent=1)
    finally:
        signal.signal(signal.SIGTERM, previous)
    return report


def _interrupt(*_) -> None:
    raise KeyboardInterrupt


def _percent(value: float) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.1%}"


def markdown(report: dict) -> str:
    """The tables RELIABILITY.md quotes: one row per config."""
    rows = [
        "| config | runs | kills (workers / server) | steps computed | steps in the final "
        "parameters | goodput | acked pushes lost (all after the last checkpoint) | acked lost "
        "beyond it | final test accuracy |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for result in report["results"]:
        a = result["aggregate"]
        s = a["steps"]
        accuracy = ", ".join(f"{x:.4f}" for x in a["test_accuracy"] if x is not None)
        rows.append(
            f"| {a['config']} | {a['runs']} ({', '.join(a['outcomes'])}) | "
            f"{a['worker_kills']} / {a['server_kills']} | {s['computed']:,} | {s['final']:,} | "
            f"{_percent(a['goodput'])} | {a['acked_pushes_lost']} | "
            f"{a['acked_lost_beyond_checkpoint']} | {accuracy} |"
        )
    return "\n".join(rows)
