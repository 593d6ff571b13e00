"""The local launcher: the parameter server (one process per shard), N workers and an evaluator.

It starts the server shards first (each on a free loopback port, which it
reports through a file, so there is no race for ports), then the workers and
the evaluator, prints a progress line every ``launcher.log_every_secs``, and
ends with a summary in ``<workdir>/summary.json``.

Supervision: a worker killed by a signal (kill -9, the OOM killer) is
started again, up to ``launcher.max_worker_restarts`` times (it resumes
after its last applied push); a server shard that dies is started again on
the same port from its last checkpoint, up to ``launcher.max_server_restarts``
times, and the launcher says how many updates the checkpoint missed; when
any other child fails, the launcher stops the others, names the
failed role with the last lines of its log, and exits non-zero. Ctrl-C stops
everything. Children run in their own process group (so Ctrl-C reaches only
the launcher, which stops them in order) and, on Linux, receive SIGTERM if
the launcher dies, so no orphan is left behind.

Children ask for that signal themselves (``die_with_parent_if_asked``, the
first thing ``gasgd_tf.main`` does) rather than through a ``preexec_fn``:
Python code between fork and exec forces a plain fork(), which runs gRPC's
fork handlers in the child and can abort it once the launcher has a gRPC
channel open (seen here: SIGABRT, "epoll_wait error: Bad file descriptor").
"""

from __future__ import annotations

import collections
import ctypes
import dataclasses
import math
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from typing import TextIO

from gasgd_tf import addresses, checkpoints, layout, progress

# Config fields (prefixes) that say how a run is operated, not what it trains:
# resuming with other values is fine (more steps trains longer).
OPERATIONAL_FIELDS = (
    "run_id",
    "restore",
    "num_steps",
    "data.data_dir",
    "data.manual_dir",
    "worker.log_every_steps",
    "worker.overlap",
    "ps.summary_every_secs",
    "ps.checkpoint_",
    "ps.keep_checkpoints",
    "ps.heartbeat_timeout_secs",
    "ps.rpc_threads",
    "ps.max_concurrent_",
    "client.",
    "security.",
    "eval.",
    "launcher.",
)
PS_STOP_GRACE_SECS = 120.0  # SIGTERM to SIGKILL; the server saves its checkpoint meanwhile.
_PR_SET_PDEATHSIG = 1
# Set by the launcher in each child's environment: the launcher's pid.
PARENT_PID_ENV = "GASGD_TF_PARENT_PID"


def die_with_parent_if_asked() -> None:
    """In a launcher's child: arranges SIGTERM for this process when the launcher dies.

    Does nothing unless the launcher set ``GASGD_TF_PARENT_PID``, or off Linux
    (there the launcher's own cleanup is what stops children).
    """
    parent = os.environ.pop(PARENT_PID_ENV, None)  # Not for our own children.
    if not parent or not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        return
    if os.getppid() != int(parent):  # The launcher died before prctl took effect.
        os.kill(os.getpid(), signal.SIGTERM)


def _raise_keyboard_interrupt(*_) -> None:
    raise KeyboardInterrupt


@dataclasses.dataclass
class Child:
    """One supervised process."""

    role: str
    argv: list[str]
    log_path: str
    process: subprocess.Popen | None = None

    def start(self, env: dict[str, str], why: str = "") -> None:
        os.makedirs(os.path.dirname(self.log_path), exist_ok=True)
        with open(self.log_path, "ab") as log_file:
            if why:  # A restart, or a resumed run: the log goes on below a line saying so.
                stamp = time.strftime("%Y-%m-%d %H:%M:%S")
                line = f"\n===== {self.role} started again at {stamp}: {why} =====\n"
                log_file.write(line.encode())
                log_file.flush()
            self.process = subprocess.Popen(
                self.argv,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**env, PARENT_PID_ENV: str(os.getpid())},
                start_new_session=True,
            )

    def poll(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def tail(self, lines: int = 20) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(collections.deque(f, maxlen=lines))
        except FileNotFoundError:
            return "(no log)\n"


def _tensorboard_command() -> str:
    """The tensorboard script installed beside this Python (in .venv/bin), else the bare name."""
    beside = os.path.join(os.path.dirname(sys.executable), "tensorboard")
    return os.path.relpath(beside) if os.path.exists(beside) else "tensorboard"


class ChildFailed(RuntimeError):
    def __init__(self, child: Child, code: int | None, reason: str):
        super().__init__(f"{child.role} {reason}")
        self.child = child
        self.code = code


def stop_processes(
    processes: Sequence[subprocess.Popen], grace_secs: float, sig: int = signal.SIGTERM
) -> None:
    """Sends ``sig`` to every live process, SIGKILL to any still alive after ``grace_secs``."""
    live = [p for p in processes if p.poll() is None]
    for p in live:
        p.send_signal(sig)
    deadline = time.monotonic() + grace_secs
    for p in live:
        try:
            p.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def stop_all(children: Sequence[Child], grace_secs: float = 5.0) -> None:
    """SIGTERM to every live child, SIGKILL to any still alive after ``grace_secs``."""
    stop_processes([c.process for c in children if c.process is not None], grace_secs)


def child_argv(role: str, config_json: str, workdir: str, **flags: object) -> list[str]:
    """The command line of one role of this run."""
    argv = [
        sys.executable,
        "-m",
        "gasgd_tf.main",
        f"--role={role}",
        f"--config_json={config_json}",
        f"--workdir={workdir}",
    ]
    return argv + [f"--{k}={v}" for k, v in flags.items()]


def choose_run(config, workdir: str) -> str | None:
    """Sets ``config.run_id``: the run this launch resumes, or a new one.

    Unless ``config.restore`` is False, the run of the newest checkpoint in
    ``<workdir>/checkpoints`` (of this shard layout) is resumed: its server
    restores it, and its workers go on after their last applied push (a
    finished run finishes again at once). An id set in the config is kept.
    A resumed run sets ``config.restore`` to True, so that every server
    shard must find its part. Resuming with another config than the run's
    (the workdir's config.json) needs ``--restore``.

    Returns:
      The checkpoint file the run resumes from, or None for a new run.

    Raises:
      ValueError: ``config.restore`` is True and there is nothing to resume;
        False while the configured run id has checkpoints (they would be
        overwritten); or None and the config differs from the run's.
    """
    from gasgd_tf.server import checkpointing  # numpy only

    directory = layout.checkpoint_dir(workdir)
    if config.run_id:
        files = checkpoints.restore_candidates(directory, _shard0(config), config.run_id)
        found = (config.run_id, files[0]) if files else None
        if config.restore is False:
            # The server's own rule, asked before any process starts.
            refusal = checkpointing.fresh_start_refusal(
                directory, _shard0(config), config.run_id, files
            )
            if refusal:
                raise ValueError(refusal)
    elif config.restore is False:
        found = None
    else:
        found = checkpoints.latest_run_id(directory, config.ps.num_shards)
    if found is None and config.restore:
        raise ValueError(
            f"--restore: {directory} has no checkpoint to resume (of a run with "
            f"ps.num_shards={config.ps.num_shards})"
        )
    if found is None:
        with config.unlocked():
            config.run_id = config.run_id or uuid.uuid4().hex[:12]
        if config.restore is False and checkpoints.shard_files(directory, _shard0(config)):
            print(
                f"not resuming (--norestore): new run {config.run_id}; the checkpoints in "
                f"{directory} are kept",
                flush=True,
            )
        return None
    changed = _changed_fields(config, workdir)
    if changed and config.restore is None:
        raise ValueError(
            f"{workdir} holds run {found[0]}, started with another config (differs in: "
            f"{', '.join(changed[:8])}): pass --restore to resume it with this config, "
            "--norestore to start a new run beside it, or another --workdir"
        )
    with config.unlocked():
        config.run_id = found[0]
        config.restore = True  # Every shard must find its part: none may start empty.
    version = checkpoints.file_version(found[1])
    print(
        f"resuming run {config.run_id} from {found[1]} (version {version}); "
        "--norestore starts a new run instead",
        flush=True,
    )
    return found[1]


def _changed_fields(config, workdir: str) -> list[str]:
    """The config fields that differ from the workdir's config.json (how a run starts aside)."""
    from gasgd_tf import config_base

    previous = progress.read_json(layout.config_path(workdir))
    if previous is None:
        return []
    return config_base.differences(previous, config.to_dict(), ignore=OPERATIONAL_FIELDS)


def _pushes_taken(path: str) -> int | None:
    """A checkpoint's count of pushes taken (its metadata only), or None if unreadable."""
    try:
        return checkpoints.read_file(path, with_arrays=False).meta.get("pushes_taken")
    except checkpoints.CheckpointError:
        return None


def _shard0(config) -> tuple[int, int] | None:
    return layout.shard_of(0, config.ps.num_shards)


def prepare_workdir(workdir: str, resuming: bool = False) -> None:
    """Creates ``workdir`` and removes a previous run's outputs from it.

    When ``resuming`` that run, its TensorBoard events and logs are kept.
    """
    os.makedirs(workdir, exist_ok=True)
    removed = []
    for name in layout.RUN_OUTPUTS:
        if resuming and name in layout.RESUMED_OUTPUTS:
            continue
        path = os.path.join(workdir, name)
        if os.path.isdir(path):
            shutil.rmtree(path)
            removed.append(name)
        elif os.path.exists(path):
            os.remove(path)
            removed.append(name)
    if removed:
        print(f"cleared the previous run's {', '.join(removed)} in {workdir}", flush=True)


class LocalLauncher:
    """Runs one training job on this machine.

    Args:
      config: The resolved config.
      workdir: Run folder (config.json must already be written there).
      out: Where progress lines go.
      resumed_from: The checkpoint this run resumes from (``choose_run``), if any.
    """

    def __init__(
        self, config, workdir: str, out: TextIO = sys.stdout, resumed_from: str | None = None
    ):
        self.config = config
        self.workdir = workdir
        self.out = out
        self.resumed_from = resumed_from
        self.config_json = layout.config_path(workdir)
        self.children: list[Child] = []
        self.env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.env.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
        self._start = time.monotonic()
        self._status_client = None
        self.restarts: dict[str, int] = {}  # Worker role: times started again.
        self.server_restarts: dict[str, int] = {}  # Server role: times started again.
        self.updates_lost = 0  # Applied after the last checkpoint of a server that died.
        # Acknowledged pushes after it (with rounds, an open round's too).
        self.acked_pushes_lost = 0
        self._server_ports: dict[str, str] = {}  # Server role: the port it must come back on.

    def _say(self, line: str) -> None:
        print(line, file=self.out, flush=True)

    def _child(self, role: str, **flags: object) -> Child:
        child = Child(
            role,
            child_argv(role.split("_")[0], self.config_json, self.workdir, **flags),
            layout.log_path(self.workdir, role),
        )
        child.start(self.env, why="the run resumes" if self.resumed_from else "")
        self.children.append(child)
        return child

    def _check_children(self) -> None:
        """Fails the run for a worker or evaluator that failed (restarting workers it may)."""
        for c in self.children:
            code = c.poll()
            if code is None or code == 0 or layout.is_shard(c.role):  # Servers: run().
                continue
            if self._may_restart(c, code):
                continue
            raise ChildFailed(c, code, f"failed with exit code {code}")

    def _may_restart(self, child: Child, code: int) -> bool:
        """Starts a worker killed by a signal again, within ``launcher.max_worker_restarts``.

        The restarted worker registers under its own client id (its push
        sequence continues), fetches the current parameters and trains the
        steps after its last applied push (none, if it was killed after its
        last one); the others never stop.
        """
        if not layout.is_worker(child.role) or code >= 0:
            return False  # Exit codes are reported errors: a restart would repeat them.
        done = self.restarts.get(child.role, 0)
        limit = self.config.launcher.max_worker_restarts
        if done >= limit:
            return False
        self.restarts[child.role] = done + 1
        self._say(
            f"{child.role} was killed by signal {-code}; starting it again "
            f"({done + 1} of at most {limit}; log: {child.log_path})"
        )
        child.start(self.env, why=f"killed by signal {-code}")
        return True

    def _restart_server(self, shard: int, child: Child, code: int) -> None:
        """Starts a dead server shard again on its port, from its last checkpoint.

        Its clients retry for ``client.retry_secs`` meanwhile; a push computed
        from a version the restored server does not have is refused (ABORTED)
        and its worker fetches and goes on.

        Raises:
          ChildFailed: No checkpoints are written (a restarted server would
            be empty), or the shard used up ``launcher.max_server_restarts``.
        """
        from gasgd_tf.server import checkpointing  # numpy only

        how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
        done = self.server_restarts.get(child.role, 0)
        limit = self.config.launcher.max_server_restarts
        if not self.config.ps.save_checkpoint:
            raise ChildFailed(child, code, f"{how} (no restart: ps.save_checkpoint is off)")
        if done >= limit:
            raise ChildFailed(child, code, f"{how} (restarted {done} times already)")
        num_shards = self.config.ps.num_shards
        shard_of = layout.shard_of(shard, num_shards)
        directory = layout.checkpoint_dir(self.workdir)
        found = checkpoints.restore_candidates(directory, shard_of, self.config.run_id)
        if not found:
            # It had no parameters yet, or lost them all: an empty server
            # would refuse every push, and the workers have moved on.
            raise ChildFailed(child, code, f"{how} before its first checkpoint (no restart)")
        saved = checkpoints.file_version(found[0])
        # The count the restarted server will print too (it may fall back to
        # an older file if this one turns out damaged, and then says so).
        missed = checkpointing.lost_updates(
            directory, self.config.run_id, shard_of, saved, _pushes_taken(found[0])
        )
        reached = missed.reached
        if missed.lost is not None:
            self.updates_lost += missed.lost
        if missed.pushes_lost is not None:
            self.acked_pushes_lost += missed.pushes_lost
        lost = f"from its checkpoint at version {saved}" + (
            f"; {missed.lost} update(s) after it are lost" if missed.lost is not None else ""
        )
        self.server_restarts[child.role] = done + 1
        port = self._server_ports[child.role]
        port_file = layout.port_path(self.workdir, child.role)
        if os.path.exists(port_file):
            os.remove(port_file)
        self._say(
            f"{child.role} {how} at version {reached if reached is not None else '?'}; "
            f"starting it again on port {port} ({done + 1} of at most {limit}), {lost}"
        )
        child.argv = child_argv(
            "ps",
            self.config_json,
            self.workdir,
            task_index=shard,
            ps_address=addresses.format_address("127.0.0.1", int(port)),
            port_file=port_file,
            restore=True,  # It must resume its checkpoint: never start empty.
        )
        child.start(self.env, why=how)
        self._wait_for(
            child,
            lambda: os.path.exists(port_file) or child.poll() is not None,
            "serving again",
            self.config.launcher.startup_timeout_secs,
        )
        code = child.poll()
        if code is not None and not os.path.exists(port_file):
            if code >= 0:  # An error it would make again: not restarted.
                raise ChildFailed(child, code, f"exited with code {code} before serving again")
            self._restart_server(shard, child, code)  # Killed again while starting: once more.

    def _stop_everything(self) -> None:
        """Workers and the evaluator first, then the servers, given time to save a checkpoint."""
        stop_all([c for c in self.children if not layout.is_shard(c.role)])
        stop_all(self.children, grace_secs=PS_STOP_GRACE_SECS)

    def _wait_for(self, child: Child, done, what: str, timeout_secs: float) -> None:
        """Polls until ``done()``; fails if ``child`` exits first or time runs out."""
        deadline = time.monotonic() + timeout_secs
        while not done():
            code = child.poll()
            if code is not None:
                raise ChildFailed(child, code, f"exited with code {code} before {what}")
            if time.monotonic() > deadline:
                raise ChildFailed(child, None, f"did not finish {what} in time")
            time.sleep(0.05)

    def _prepare_data(self) -> None:
        """Builds the dataset once, in a child process, before any worker reads it."""
        self._say(
            f"preparing data {self.config.data.name!r} (log: {self.workdir}/logs/prepare.log)"
        )
        prep = self._child("prepare")
        self._wait_for(
            prep,
            lambda: prep.poll() == 0,
            "preparing the data",
            self.config.launcher.prepare_timeout_secs,
        )
        self.children.remove(prep)

    def _start_servers(self) -> tuple[list[Child], str]:
        """Starts every shard; returns them and the workers' --ps_address (comma-separated)."""
        shards = []
        for k in range(self.config.ps.num_shards):
            port_file = layout.port_path(self.workdir, layout.shard(k))
            os.makedirs(os.path.dirname(port_file), exist_ok=True)
            shards.append(
                (
                    self._child(
                        layout.shard(k), task_index=k, ps_address="127.0.0.1:0", port_file=port_file
                    ),
                    port_file,
                )
            )
        listed = []
        for ps, port_file in shards:  # They start in parallel; wait for each in turn.
            self._wait_for(
                ps,
                lambda f=port_file: os.path.exists(f),
                "serving",
                self.config.launcher.startup_timeout_secs,
            )
            address = self._served_address(ps, port_file)
            self._server_ports[ps.role] = str(address.port)
            listed.append(address)
        return [ps for ps, _ in shards], addresses.join(listed)

    @staticmethod
    def _served_address(ps: Child, port_file: str) -> addresses.Address:
        """The loopback address a started shard reported in ``port_file``, checked."""
        with open(port_file) as f:
            port = f.read().strip()
        try:
            return addresses.parse(f"127.0.0.1:{port}", where=f"{ps.role}'s port file")
        except addresses.AddressError as e:
            raise ChildFailed(ps, ps.poll(), f"reported no usable port: {e}") from None

    def run(self) -> int:
        """Runs the job; returns the process exit code (0 on success)."""
        cfg = self.config
        # A polite kill (SIGTERM) of the launcher stops the run like Ctrl-C does.
        previous_term = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
        previous_int = signal.getsignal(signal.SIGINT)
        # Also when started with SIGINT ignored (a background job of a
        # script, nohup): an explicit SIGINT must still stop the run.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            self._prepare_data()
            servers, address = self._start_servers()
            what = "parameter server" if len(servers) == 1 else f"{len(servers)} server shards"
            self._say(
                f"{what} on {address} (loopback only); starting {cfg.num_workers} "
                f"workers x {cfg.num_steps} steps and an evaluator; logs in {self.workdir}/logs"
            )
            workers = []
            for i in range(cfg.num_workers):
                # All on this machine: worker i takes GPU i (an error past the last GPU).
                self.env["LOCAL_RANK"] = str(i)
                workers.append(self._child(layout.worker(i), task_index=i, ps_address=address))
            self.env.pop("LOCAL_RANK")
            evaluator = self._child(layout.EVAL, ps_address=address)
            # Only now, with every child started: see the module docstring on fork.
            from gasgd_tf.client import make_client  # grpc only; no TensorFlow.
            from gasgd_tf.security import client_credentials

            # Progress lines must not stall the loop: short deadlines, few retries.
            self._status_client = make_client(
                address,
                "launcher",
                timeout_secs=5,
                retry_secs=1,
                credentials=client_credentials(cfg.security),
            )
            next_line = time.monotonic() + cfg.launcher.log_every_secs
            while not (all(w.poll() == 0 for w in workers) and evaluator.poll() == 0):
                for shard, ps in enumerate(servers):
                    if ps.poll() is not None:
                        self._restart_server(shard, ps, ps.poll())
                self._check_children()
                if time.monotonic() >= next_line:
                    self._say(self.progress_line())
                    next_line += cfg.launcher.log_every_secs
                time.sleep(0.1)
            summary = self.finish(servers)
        except ChildFailed as e:
            self._stop_everything()
            self._say(f"error: {e}; last lines of {e.child.log_path}:\n{e.child.tail()}")
            return 1
        except KeyboardInterrupt:
            # A second Ctrl-C must not cut the cleanup short.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            self._stop_everything()
            self._say("interrupted: stopped all processes")
            return 130
        finally:
            self._stop_everything()
            if self._status_client is not None:
                self._status_client.close()
            signal.signal(signal.SIGTERM, previous_term)
            signal.signal(signal.SIGINT, previous_int)
        self._say(
            f"done in {summary['wall_secs']:.1f}s: test accuracy {summary['test_accuracy']:.4f}, "
            f"loss {summary['test_loss']:.4f} at version {summary['server_version']}; "
            f"{self._work_done(summary)}; staleness mean "
            f"{summary['staleness_mean']:.2f}, max {summary['staleness_max']}\n"
            # A run that ended at chance must not read like a success.
            + (f"WARNING: {summary['warning']}\n" if summary.get("warning") else "")
            + f"summary: {layout.summary_path(self.workdir)}\n"
            f"TensorBoard: {_tensorboard_command()} --logdir {os.path.join(self.workdir, 'tb')}"
        )
        return 0

    def _work_done(self, summary: dict) -> str:
        cfg = self.config
        trained = summary["steps_per_worker"]
        if self.resumed_from and not any(trained):
            return f"nothing left to train: {cfg.num_workers} workers x {cfg.num_steps} steps done"
        steps = f"{cfg.num_workers} workers x {cfg.num_steps} steps"
        if self.resumed_from or self.restarts:  # Some steps were trained by an earlier process.
            steps += f" ({sum(trained)} trained by this launch)"
        return f"{steps}, {summary['images_per_sec']:.0f} images/s"

    def _read_progress(self) -> tuple[list[dict], dict | None]:
        workers = [
            progress.read_json(layout.progress_path(self.workdir, layout.worker(i))) or {}
            for i in range(self.config.num_workers)
        ]
        return workers, progress.read_json(layout.progress_path(self.workdir, layout.EVAL))

    def progress_line(self) -> str:
        workers, ev = self._read_progress()
        steps = " ".join(str(w.get("step", 0)) for w in workers)
        losses = [w["loss"] for w in workers if math.isfinite(w.get("loss", math.nan))]
        speed = sum(w.get("images_per_sec", 0.0) for w in workers)
        from gasgd_tf.client import RequestRejectedError, ServerUnavailableError

        try:
            version = self._status_client.status().version
        except (ServerUnavailableError, RequestRejectedError):
            version = "?"  # A progress line must not fail the run; the loop checks the ps.
        elapsed = time.monotonic() - self._start
        line = f"[{elapsed:6.1f}s] version {version} | steps {steps} of {self.config.num_steps}"
        if losses:
            line += f" | loss {sum(losses) / len(losses):.4f} | {speed:.0f} images/s"
        if ev:
            line += f" | test accuracy {ev['accuracy']:.4f} (version {ev['version']})"
            if ev.get("warning"):  # The evaluator's not-learning rule fired (learning_check).
                line += f" | WARNING: {ev.get('warning_short') or ev['warning']}"
        return line

    def _checkpoint_of(self, status) -> str | None:
        """The checkpoint this run's server wrote as it stopped, or None.

        Older runs' checkpoints stay in the workdir; only a file with this
        server's id and final version is this run's.
        """
        try:
            checkpoint = checkpoints.load_meta(self.workdir)
        except (FileNotFoundError, checkpoints.CheckpointError):
            return None
        if (checkpoint.meta.get("server_id"), checkpoint.version) != (
            status.server_id,
            status.version,
        ):
            return None
        return checkpoint.path

    def finish(self, servers: list[Child]) -> dict:
        """Collects the final numbers, stops the server shards and writes summary.json."""
        from gasgd_tf.client import RequestRejectedError, ServerUnavailableError

        ps = servers[0]
        try:
            status = self._status_client.status(layout.workers(self.config.num_workers))
        except (ServerUnavailableError, RequestRejectedError) as e:
            raise ChildFailed(ps, ps.poll(), f"did not answer the final Status call: {e}") from None
        workers, ev = self._read_progress()
        wall = time.monotonic() - self._start
        summary = {
            "config_name": self.config.name,
            "test_accuracy": ev["accuracy"],
            "test_loss": ev["loss"],
            "eval_version": ev["version"],
            "test_examples": ev["examples"],
            "server_version": status.version,
            "updates_applied": status.updates_applied,
            "pushes_rejected": status.pushes_rejected,
            "staleness_mean": status.staleness.mean,
            "staleness_max": status.staleness.max,
            "staleness_by_client": {
                c.client_id: {"mean": c.staleness.mean, "max": c.staleness.max}
                for c in status.clients
                if c.pushes
            },
            "steps_per_worker": [w.get("steps", 0) for w in workers],
            "worker_images_per_sec": [w.get("images_per_sec", 0.0) for w in workers],
            # Counted in each worker's client (ParameterClient.bytes_*): payload streams.
            "bytes_sent_per_worker": [w.get("bytes_sent", 0) for w in workers],
            "bytes_received_per_worker": [w.get("bytes_received", 0) for w in workers],
            # worker.local_steps=adaptive: the last H the server planned (0: fixed).
            "local_steps_per_worker": [w.get("local_steps", 0) for w in workers],
            # Workers train side by side, so their own rates add up.
            "images_per_sec": sum(w.get("images_per_sec", 0.0) for w in workers),
            "wall_secs": wall,
        }
        if ev.get("model"):
            summary["model"] = ev["model"]
        if ev.get("warning"):
            summary["warning"] = ev["warning"]
        if self.resumed_from:
            summary["resumed_from"] = self.resumed_from
        if self.restarts:
            summary["worker_restarts"] = dict(self.restarts)
        if self.server_restarts:
            summary["server_restarts"] = dict(self.server_restarts)
            summary["updates_lost"] = self.updates_lost
            summary["acked_pushes_lost"] = self.acked_pushes_lost
        lost = sum(w.get("pushes_lost", 0) for w in workers)
        if lost:
            # Refused by a restored server: computed from versions it lost.
            summary["pushes_lost"] = lost
        if ev.get("accuracy_multi_crop") is not None:
            summary["test_accuracy_multi_crop"] = ev["accuracy_multi_crop"]
        if len(servers) > 1:
            summary["num_shards"] = len(servers)
        # The server writes its checkpoint as it stops: give it time for a large model.
        stop_all(servers, grace_secs=PS_STOP_GRACE_SECS)
        stop_all(self.children)
        if self.config.ps.save_checkpoint:
            summary["checkpoint"] = self._checkpoint_of(status)
            if summary["checkpoint"] is None:
                self._say(f"warning: the server wrote no checkpoint; see {ps.log_path}")
        progress.write_json(layout.summary_path(self.workdir), summary)
        return summary
