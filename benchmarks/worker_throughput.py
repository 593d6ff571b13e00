"""Worker throughput through the parameter server: overhead (B3), scaling (B4), ours for B6.

What is measured: images/s of training workers (``gasgd_tf.worker.train``,
the same loop a real run uses) on the synthetic CIFAR-10 data set
(``synthetic_cifar10``: 4,096 random 32x32x3 images through the real tfds
input pipeline: cache, shuffle, batch, prefetch), for two models:

* the CIFAR-10 net, ``cifar10_18pct`` (89,578 parameters, 0.36 MB of float32);
* the 7.7M net, ``cifar10_80sec`` with ``model.width=7.35`` (7,700,020
  parameters, 30.8 MB): the same kind of net, wide enough that every push and
  fetch moves 30.8 MB.

How:

* Every cell (one setting, measured once) runs in fresh processes: the
  parameter server (``python -m gasgd_tf.main --role=ps``, on a free loopback
  port that it writes to a port file, checkpoints off; one per shard) and one
  process per worker (``python -m benchmarks.worker_throughput --worker ...``,
  which calls ``worker.train``). The *local* baseline is the same worker
  process with ``address=None``: the same model, optimizer, input pipeline
  and threads, with no server, no pushes or fetches and no gradient sums.
  Workers of one cell run at the same time. A worker's numbers are read from
  the files it writes (its final progress file, with the ``WorkerResult``
  fields, and its TensorBoard events); once its progress file says done the
  worker is stopped, since ``train`` can take 5-20 s more to return.
* Threads: ``worker.cpu_threads`` sets TensorFlow's intra- and inter-op
  threads (0: TensorFlow's default, both cores here). With ``pin_cores``, worker
  i pins itself to core ``i % os.cpu_count()`` (``os.sched_setaffinity``,
  before TensorFlow is imported, so that TensorFlow and tf.data size their
  thread pools to it) and uses one thread. The server is never pinned.
* Timing: each worker first runs ``warmup_steps`` steps (the first epoch fills
  the tf.data cache; connections and TensorFlow's kernels warm up), then
  ``steps`` timed steps (``STEPS``). With ``worker.log_every_steps = warmup_steps`` the
  worker writes one ``train/images_per_sec`` point per window to TensorBoard;
  a worker's images/s is its timed images over the summed durations of the
  windows after the first, read back from those events. So it counts the
  training steps and every push and fetch they wait for (at the last step the
  worker always pushes), and excludes process start, TensorFlow import,
  graph tracing, joining the server and the warm-up steps. With
  ``warmup_steps=0`` it is ``WorkerResult.images_per_sec`` instead: the whole
  loop after joining. With ``worker.overlap`` the last background push ends
  after the last window (it is one push in many).
* Aggregate images/s of several workers = the sum of their images/s. The
  report also gives a stricter figure: all workers' timed images over the
  span from the first worker's timed start to the last one's end.
* Compared cells are interleaved (local, n_sync 1, 10, ..., then again), so
  drift of the machine's load hits them alike; each row is reported as median
  [min-max] over its repeats, and ratios are ratios of medians.

The benchmarks:

* **B3 worker overhead**: one worker, TensorFlow's default threads, through
  the server at n_sync 1, 10, 100 and at n_sync 1 with ``worker.overlap``,
  against local training. Targets: 0.92 of local at n_sync 1 and 0.98 at
  n_sync 10 on the CIFAR-10 net, 0.90 at n_sync 1 on the 7.7M net.
* **B4 scaling**: one worker against two, each pinned to its own core with one
  thread, n_sync 1: aggregate images/s. Target: two at least 1.8x one.
* **B6, our side**: the cells that ``benchmarks/tf_ps.py`` measures with
  ``tf.distribute.ParameterServerStrategy`` (same models, batch sizes and
  worker counts), trained through our server, unpinned, with TensorFlow's
  default threads in every worker, as ``tf_ps`` runs. (Two workers of the
  CIFAR-10 net at n_sync 1 ran 15-30% faster this way than with one thread
  each, in two interleaved pairs on this 2-core machine, under other load.)
  One repeat by default. ``b6_ours`` is what the combined report calls.

Cells with equal settings are measured once per invocation and shared
between the benchmarks (the single-worker n_sync 1 cells of B3 and B6).

Usage:

  .venv/bin/python -m benchmarks.worker_throughput [--quick] [--only=b3,b4,b6]

writes ``benchmarks/results/worker_throughput.json`` and prints the tables.
The default run measures 28 cells in about 5-6 minutes on this 2-core
machine; ``--quick`` (fewer steps, one repeat: a smoke test of the harness,
not a measurement) about 2.5. Logs of a failed cell stay in
``runs/benchmarks/worker_throughput/cells``.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import functools
import inspect
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import ml_collections

from benchmarks import common
from gasgd_tf import launch, layout, progress  # None imports TensorFlow.
from gasgd_tf.experiments import events

NAME = "worker_throughput"
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Under runs/, which git ignores. The data set is built once and reused.
WORK_DIR = os.path.join(REPO_ROOT, "runs", "benchmarks", NAME)
DATA_DIR = os.path.join(WORK_DIR, "data")
CELLS_DIR = os.path.join(WORK_DIR, "cells")

CIFAR_NET = {"model": "cifar10_18pct", "width": None}  # 89,578 parameters.
BIG_NET = {"model": "cifar10_80sec", "width": 7.35}  # 7,700,020 parameters.
PARAMS = {("cifar10_18pct", None): 89_578, ("cifar10_80sec", 7.35): 7_700_020}

LEARNING_RATE = 0.01  # Small, so that random labels do not drive the weights to NaN.
STOP_GRACE_SECS = 30.0  # SIGTERM to SIGKILL for the server and for workers left over.
_IMAGES_TAG = "train/images_per_sec"
# The WorkerResult fields of a worker's final progress file that a cell reports.
RESULT_FIELDS = (
    "steps",
    "pushes",
    "fetches",
    "final_version",
    "loss",
    "accuracy",
    "images_per_sec",
    "wall_secs",
)


# -- One cell ------------------------------------------------------------------


class CellFailed(RuntimeError):
    """A process of a cell failed or timed out; the message ends with its log."""


def _log_tail(path: str, lines: int = 25) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(collections.deque(f, maxlen=lines))
    except FileNotFoundError:
        return "(no log)\n"


@functools.cache  # Once per process.
def prepare_data() -> None:
    """Builds ``synthetic_cifar10`` in ``DATA_DIR`` (in a child: no TensorFlow here)."""
    from gasgd_tf import config_base

    config = config_base.get_base_config()
    config.data.name = "synthetic_cifar10"
    config.data.data_dir = DATA_DIR
    os.makedirs(WORK_DIR, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", suffix=".json", dir=WORK_DIR, delete=False) as f:
        f.write(config_base.to_json(config_base.finalize(config)))
    try:
        subprocess.run(
            [sys.executable, "-m", "gasgd_tf.main", "--role=prepare", f"--config_json={f.name}"],
            cwd=REPO_ROOT,
            env=_child_env(),
            check=True,
            capture_output=True,
            timeout=600,
        )
    except subprocess.CalledProcessError as e:
        raise CellFailed(f"preparing {DATA_DIR} failed:\n{e.stdout}{e.stderr}") from None
    finally:
        os.remove(f.name)


def _child_env() -> dict[str, str]:
    return dict(os.environ, PYTHONUNBUFFERED="1", TF_CPP_MIN_LOG_LEVEL="2")


def make_config(
    *,
    model: str,
    width: float | None,
    num_workers: int,
    batch_size: int,
    n_sync: int,
    num_steps: int,
    log_every_steps: int,
    overlap: bool,
    cpu_threads: int,
    num_shards: int,
    extra: dict | None,
) -> ml_collections.ConfigDict:
    """The finalized run config of one cell (``extra``: flat overrides, {"ps.rpc_threads": 8})."""
    from gasgd_tf import config_base

    c = config_base.get_base_config()
    c.name = NAME
    c.num_workers = num_workers
    c.num_steps = num_steps
    c.batch_size = batch_size
    c.n_sync = n_sync
    c.data.name = "synthetic_cifar10"
    c.data.data_dir = DATA_DIR
    c.model.name = model
    c.model.width = width
    c.worker.learning_rate = LEARNING_RATE
    c.worker.cpu_threads = cpu_threads
    c.worker.overlap = overlap
    c.worker.log_every_steps = log_every_steps
    c.ps.learning_rate = LEARNING_RATE
    c.ps.save_checkpoint = False  # Nothing to keep, and no write at shutdown.
    if "num_shards" in c.ps:  # Parameter sharding, where this version has it.
        c.ps.num_shards = num_shards
    elif num_shards != 1:
        raise ValueError("num_shards > 1, but this version's config has no ps.num_shards")
    for key, value in (extra or {}).items():
        *path, field = key.split(".")
        node = c
        for part in path:
            node = node[part]
        node[field] = value
    return config_base.finalize(c)


@dataclasses.dataclass
class _Child:
    """A process of a cell, its output in ``<workdir>/<role>.log``."""

    role: str
    process: subprocess.Popen
    log: str
    started: float  # time.time() at the start.

    @classmethod
    def start(cls, role: str, args: list[str], workdir: str) -> _Child:
        """Starts ``python *args`` in the repository root."""
        log = os.path.join(workdir, f"{role}.log")
        started = time.time()
        with open(log, "ab") as f:
            process = subprocess.Popen(
                [sys.executable, *args],
                cwd=REPO_ROOT,
                env=_child_env(),
                stdout=f,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        return cls(role, process, log, started)

    def failure(self, what: str) -> str:
        """A failure message: the role, ``what`` happened, and the end of its log."""
        return f"{self.role} {what} (log: {self.log}):\n{_log_tail(self.log)}"


def _stop(processes: list[subprocess.Popen]) -> None:
    """SIGTERM to every live process, SIGKILL to any still alive after ``STOP_GRACE_SECS``."""
    launch.stop_processes(processes, STOP_GRACE_SECS)


def _wait_for_port(ps: _Child, port_file: str, deadline: float) -> str:
    """The server's host:port, once it has written its port file."""
    while not os.path.exists(port_file):
        if ps.process.poll() is not None:
            raise CellFailed(ps.failure(f"exited with code {ps.process.returncode}"))
        if time.monotonic() > deadline:
            raise CellFailed(ps.failure("did not start serving in time"))
        time.sleep(0.05)
    with open(port_file) as f:
        return f"127.0.0.1:{f.read().strip()}"


def measure(
    *,
    model: str,
    width: float | None,
    num_workers: int,
    batch_size: int,
    n_sync: int,
    steps: int,
    server: bool,
    warmup_steps: int = 0,
    overlap: bool = False,
    cpu_threads: int = 0,
    pin_cores: bool = False,
    num_shards: int = 1,
    extra: dict | None = None,
    timeout_secs: float = 900.0,
) -> dict:
    """Trains ``num_workers`` workers at once, in fresh processes; returns their images/s.

    Args:
      model, width: ``model.name`` and ``model.width`` (None: the model's own).
      num_workers: Workers, run concurrently (each its own process).
      batch_size: Per worker.
      n_sync: Steps between pushes and between fetches (ignored without a server).
      steps: Timed steps per worker, after ``warmup_steps`` untimed ones.
      server: Through a parameter server; False: local training, no server.
      warmup_steps: Untimed steps first (see the module docstring); 0 times
        the whole loop after joining (``WorkerResult.images_per_sec``).
      overlap: ``worker.overlap``: push and fetch on a background thread.
      cpu_threads: ``worker.cpu_threads`` (0: TensorFlow's default).
      pin_cores: Pin worker i to core i % cpu_count, with one thread.
      num_shards: ``ps.num_shards``: one server process per shard (needs a
        version whose config has the field).
      extra: Flat config overrides applied last, e.g. {"client.chunk_bytes": 1 << 21}.
      timeout_secs: The whole cell's limit.

    Returns:
      The cell's settings, ``workers`` (per worker: the ``WorkerResult``
      fields, with its ``images_per_sec`` as ``whole_loop_images_per_sec``;
      ``images_per_sec`` of the timed steps; ``timed_start`` and
      ``timed_end``, Unix times; ``secs_before_timed`` since its process
      started; ``core``), ``images_per_sec`` (their sum),
      ``images_per_sec_span`` (timed images over the span of all timed
      windows) and ``cell_secs`` (wall time of the cell, processes included).

    Raises:
      CellFailed: A process failed or the cell ran out of time (with the log's end).
    """
    if pin_cores:
        if cpu_threads not in (0, 1):
            raise ValueError("pin_cores runs one thread per worker; leave cpu_threads at 0 or 1")
        cpu_threads = 1
    settings = dict(
        model=model,
        width=width,
        num_workers=num_workers,
        batch_size=batch_size,
        n_sync=n_sync if server else None,
        server=server,
        warmup_steps=warmup_steps,
        steps=steps,
        overlap=overlap and server,
        cpu_threads=cpu_threads,
        pin_cores=pin_cores,
        num_shards=num_shards if server else None,
        extra=extra or {},
    )
    prepare_data()
    workdir, config_json = _write_config(settings, n_sync, num_shards)
    start = time.monotonic()
    deadline = start + timeout_secs
    servers: list[_Child] = []
    workers: list[_Child] = []
    try:
        address = "none"
        if server:
            address = _start_servers(servers, num_shards, config_json, workdir, deadline)
        _start_workers(workers, num_workers, config_json, workdir, address, pin_cores)
        results = _wait_for_workers(workers, servers, workdir, settings, deadline, timeout_secs)
    finally:
        _stop([c.process for c in workers + servers])
    cell_secs = time.monotonic() - start
    shutil.rmtree(workdir, ignore_errors=True)  # Kept, with its logs, when the cell failed.
    return _cell_result(settings, results, cell_secs)


def _cell_result(settings: dict, results: list[dict], cell_secs: float) -> dict:
    """``measure``'s answer: the settings, each worker's result and their images/s."""
    timed_images = settings["num_workers"] * settings["steps"] * settings["batch_size"]
    span = max(r["timed_end"] for r in results) - min(r["timed_start"] for r in results)
    return {
        **settings,
        "workers": results,
        "images_per_sec": sum(r["images_per_sec"] for r in results),
        "images_per_sec_span": timed_images / span if span > 0 else float("nan"),
        "cell_secs": cell_secs,
    }


def _write_config(settings: dict, n_sync: int, num_shards: int) -> tuple[str, str]:
    """A fresh folder for the cell under ``CELLS_DIR``, and its config.json: (folder, file)."""
    from gasgd_tf import config_base

    warmup_steps, steps = settings["warmup_steps"], settings["steps"]
    config = make_config(
        model=settings["model"],
        width=settings["width"],
        num_workers=settings["num_workers"],
        batch_size=settings["batch_size"],
        n_sync=n_sync,
        num_steps=warmup_steps + steps,
        # One point per warm-up-sized window; without warm-up, one at the end.
        log_every_steps=warmup_steps or warmup_steps + steps,
        overlap=settings["overlap"],
        cpu_threads=settings["cpu_threads"],
        num_shards=num_shards,
        extra=settings["extra"],
    )
    os.makedirs(CELLS_DIR, exist_ok=True)
    workdir = tempfile.mkdtemp(
        prefix=f"{settings['model']}_w{settings['num_workers']}_", dir=CELLS_DIR
    )
    config_json = layout.config_path(workdir)
    with open(config_json, "w") as f:
        f.write(config_base.to_json(config))
    return workdir, config_json


def _start_servers(
    servers: list[_Child], num_shards: int, config_json: str, workdir: str, deadline: float
) -> str:
    """Starts one plain server per shard into ``servers``; returns their comma-separated addresses.

    The clients split the parameters over the shards themselves. ``servers``
    is the caller's list, so that it stops the ones started when one fails.
    """
    for k in range(num_shards):
        shard_dir = os.path.join(workdir, layout.shard(k))
        os.makedirs(shard_dir)
        args = [
            "-m",
            "gasgd_tf.main",
            "--role=ps",
            f"--config_json={config_json}",
            f"--workdir={shard_dir}",
            "--ps_address=127.0.0.1:0",
            f"--port_file={os.path.join(shard_dir, 'port')}",
        ]
        servers.append(_Child.start(layout.shard(k), args, workdir))
    return ",".join(
        _wait_for_port(ps, os.path.join(workdir, ps.role, "port"), deadline) for ps in servers
    )


def _start_workers(
    workers: list[_Child],
    num_workers: int,
    config_json: str,
    workdir: str,
    address: str,
    pin_cores: bool,
) -> None:
    """Starts the cell's worker processes into ``workers`` (the caller's list, to stop them)."""
    for i in range(num_workers):
        argv = [
            "-m",
            "benchmarks.worker_throughput",
            "--worker",
            f"--config_json={config_json}",
            f"--workdir={workdir}",
            f"--task_index={i}",
            f"--address={address}",
        ]
        if pin_cores:
            argv.append(f"--core={i % os.cpu_count()}")
        workers.append(_Child.start(layout.worker(i), argv, workdir))


def _wait_for_workers(
    workers: list[_Child],
    servers: list[_Child],
    workdir: str,
    settings: dict,
    deadline: float,
    timeout_secs: float,
) -> list[dict]:
    """Every worker's result, in task order, once all are done.

    Raises:
      CellFailed: A worker exited before it was done, a server exited, or the
        deadline passed.
    """
    results: dict[int, dict] = {}
    pin_cores = settings["pin_cores"]
    while len(results) < len(workers):
        for i, w in enumerate(workers):
            if i in results:
                continue
            code = w.process.poll()  # Before reading progress: see _worker_result.
            result = _worker_result(w, workdir, i, settings["warmup_steps"], settings["batch_size"])
            if result is not None:
                results[i] = {**result, "core": i % os.cpu_count() if pin_cores else None}
                # Done: its numbers are on disk. train() can take 5-20 s more
                # to return (tearing down TensorFlow objects), so stop it now.
                w.process.kill()
            elif code is not None:
                raise CellFailed(w.failure(f"exited with code {code} before it was done"))
        for ps in servers:
            if ps.process.poll() is not None:
                raise CellFailed(ps.failure(f"exited with code {ps.process.returncode}"))
        if time.monotonic() > deadline:
            raise CellFailed(
                "".join(c.failure(f"timed out after {timeout_secs:.0f} s") for c in workers)
            )
        time.sleep(0.1)
    return [results[i] for i in range(len(workers))]


# -- The worker processes --------------------------------------------------------


def worker_main(args: argparse.Namespace) -> None:
    """One worker of a cell: pins itself to its core, if given one, and trains."""
    if args.core is not None:
        # Before TensorFlow is imported: its thread pools and tf.data's size
        # themselves to the cores this process may use.
        os.sched_setaffinity(0, {args.core})
    from gasgd_tf import config_base, worker

    with open(args.config_json) as f:
        config = config_base.from_json(f.read())
    address = None if args.address == "none" else args.address
    worker.train(config, args.task_index, address, args.workdir)


def _worker_result(
    child: _Child, workdir: str, task_index: int, warmup_steps: int, batch_size: int
) -> dict | None:
    """Worker ``task_index``'s result once it is done (else None), read from its files.

    ``worker.train`` writes its progress file with ``done`` and the
    ``WorkerResult`` fields after its last TensorBoard point, so once the file
    says done, everything below is on disk. (Callers poll the process first:
    a worker seen to have exited and not done here has failed.)
    """
    name = layout.worker(task_index)
    done = progress.read_json(progress.progress_path(workdir, name))
    if not done or not done.get("done"):
        return None
    result = {key: done[key] for key in RESULT_FIELDS}
    result["whole_loop_images_per_sec"] = result.pop("images_per_sec")
    if warmup_steps:
        logdir = layout.tensorboard_dir(workdir, name)
        rate, timed_start, timed_end = _timed_rate(logdir, warmup_steps, batch_size)
    else:  # The whole loop after joining.
        rate = result["whole_loop_images_per_sec"]
        timed_end = os.path.getmtime(progress.progress_path(workdir, name))
        timed_start = timed_end - result["wall_secs"]
    return {
        **result,
        "images_per_sec": rate,
        "timed_start": timed_start,
        "timed_end": timed_end,
        # Process start, imports, model, tracing, joining and warm-up steps.
        "secs_before_timed": timed_start - child.started,
    }


def _timed_rate(logdir: str, warmup_steps: int, batch_size: int) -> tuple[float, float, float]:
    """(images/s, start, end) of the windows after the first, from the worker's events."""
    points = events.read_scalars(logdir)[_IMAGES_TAG]
    images = seconds = 0.0
    prev = points[0]
    if prev.step != warmup_steps:
        raise RuntimeError(f"first {_IMAGES_TAG} point at step {prev.step}, not {warmup_steps}")
    for p in points[1:]:
        # Each point is the rate of the window since the previous point (perf_counter).
        window_images = (p.step - prev.step) * batch_size
        images += window_images
        seconds += window_images / p.value
        prev = p
    return images / seconds, points[0].wall_time, points[-1].wall_time


# -- The benchmarks ------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Steps:
    """Warm-up and timed steps of a (model, batch size), full and ``--quick``."""

    warmup: int
    timed: int
    quick_warmup: int
    quick_timed: int

    def get(self, quick: bool) -> dict:
        if quick:
            return {"warmup_steps": self.quick_warmup, "steps": self.quick_timed}
        return {"warmup_steps": self.warmup, "steps": self.timed}


# Full-size timed steps are a multiple of every n_sync in the grid, so each
# timed window holds as many syncs per step as a long run (plus the push every
# worker makes at its last step). The CIFAR-10 net's 40 warm-up steps at batch
# 128 cover the first epoch (32 batches), which fills the tf.data cache. Step
# times are on this 2-core machine with no other load; full-size cells take
# about 5-15 s of training after 7-10 s of process start. --quick is a smoke
# test of the harness: too few steps for n_sync=100, one repeat.
STEPS = {
    ("cifar10_18pct", 128): Steps(40, 100, 16, 50),  # ~41 ms/step
    ("cifar10_80sec", 128): Steps(2, 10, 1, 3),  # ~0.9-1.3 s/step
    ("cifar10_80sec", 8): Steps(10, 60, 5, 20),  # ~60 ms/step + syncs of 30.8 MB
}


def _repeats(quick: bool) -> int:
    # Three: the CIFAR-10 net's n_sync=1 ratio sits near its target, and two
    # samples could not tell one noisy sample from the truth.
    return 1 if quick else 3


class Cells:
    """Measured cells by their settings, so that equal cells are measured once per run."""

    def __init__(self):
        self.samples: dict[str, list[dict]] = {}

    def get(self, repeat: int, label: str, **kwargs) -> dict:
        """Sample number ``repeat`` of the cell ``kwargs``, measuring it if it is new."""
        # Defaults filled in, so that equal settings match however they were spelled.
        settings = inspect.signature(measure).bind(**kwargs)
        settings.apply_defaults()
        samples = self.samples.setdefault(json.dumps(settings.arguments, sort_keys=True), [])
        if len(samples) <= repeat:
            cell = measure(**kwargs)
            samples.append(cell)
            print(
                f"  {label} [{repeat + 1}]: {cell['images_per_sec']:.1f} images/s "
                f"(cell {cell['cell_secs']:.0f} s)",
                flush=True,
            )
        else:
            print(f"  {label} [{repeat + 1}]: the same cell as measured above", flush=True)
        return samples[repeat]


def _rows(cells: Cells, title: str, rows: list[tuple[str, dict]], repeats: int) -> list[dict]:
    """Measures the rows ``repeats`` times, in turn (a b c, a b c, ...); one dict per row."""
    print(f"{title}:", flush=True)
    samples: list[list[dict]] = [[] for _ in rows]
    for r in range(repeats):
        for (label, kwargs), out in zip(rows, samples):
            out.append(cells.get(r, label, **kwargs))
    return [
        {
            "label": label,
            "settings": kwargs,
            "images_per_sec": common.stats([c["images_per_sec"] for c in s]),
            "images_per_sec_span": common.stats([c["images_per_sec_span"] for c in s]),
            "cells": s,
        }
        for (label, kwargs), s in zip(rows, samples)
    ]


def _net_name(net: dict) -> str:
    return net["model"] + (f" width {net['width']}" if net["width"] else "")


def _net_title(net: dict, batch_size: int) -> str:
    params = PARAMS[(net["model"], net["width"])]
    return f"{_net_name(net)} ({params:,} parameters), batch {batch_size}"


def b3(cells: Cells, quick: bool) -> dict:
    """B3: one worker through the server against the same worker training locally."""
    repeats = _repeats(quick)
    groups = []
    # (net, batch size, [(label, n_sync or None for local, overlap, target)])
    grid = [
        (
            CIFAR_NET,
            128,
            [
                ("local (no server)", None, False, None),
                ("n_sync=1", 1, False, 0.92),
                ("n_sync=10", 10, False, 0.98),
                ("n_sync=100", 100, False, None),
                ("n_sync=1, overlap", 1, True, 0.92),
            ],
        ),
        (
            BIG_NET,
            128,
            [
                ("local (no server)", None, False, None),
                ("n_sync=1", 1, False, 0.90),
                ("n_sync=1, overlap", 1, True, 0.90),
                ("n_sync=10", 10, False, None),
            ],
        ),
    ]
    for net, batch, settings in grid:
        steps = STEPS[(net["model"], batch)].get(quick)
        rows = [
            (
                label,
                dict(
                    **net,
                    num_workers=1,
                    batch_size=batch,
                    n_sync=n_sync or 1,
                    server=n_sync is not None,
                    overlap=overlap,
                    **steps,
                ),
            )
            for label, n_sync, overlap, _ in settings
        ]
        title = _net_title(net, batch)
        measured = _rows(cells, f"B3 {title}", rows, repeats)
        local = measured[0]["images_per_sec"]["median"]
        for row, (_, _, _, target) in zip(measured, settings):
            row["ratio"] = row["images_per_sec"]["median"] / local
            row["target"] = target
        groups.append({"title": title, "repeats": repeats, **steps, "rows": measured})
    return {"groups": groups}


def b4(cells: Cells, quick: bool) -> dict:
    """B4: one worker against two, each pinned to its own core with one thread, n_sync=1."""
    repeats = _repeats(quick)
    batch = 128
    steps = STEPS[(CIFAR_NET["model"], batch)].get(quick)
    common_kwargs = dict(
        **CIFAR_NET, batch_size=batch, n_sync=1, server=True, pin_cores=True, **steps
    )
    rows = [
        ("1 worker, 1 core", dict(num_workers=1, **common_kwargs)),
        ("2 workers, 1 core each", dict(num_workers=2, **common_kwargs)),
    ]
    measured = _rows(cells, f"B4 {_net_title(CIFAR_NET, batch)}", rows, repeats)
    ratio = measured[1]["images_per_sec"]["median"] / measured[0]["images_per_sec"]["median"]
    return {
        "title": _net_title(CIFAR_NET, batch),
        "repeats": repeats,
        **steps,
        "rows": measured,
        "ratio": ratio,
        "target": 1.8,
    }


# (net, batch size, n_sync values): each with 1 and 2 workers; the cells of tf_ps.GRID.
B6_GRID = (
    (CIFAR_NET, 128, (1,)),
    (BIG_NET, 128, (1,)),
    (BIG_NET, 8, (1, 10)),  # Communication-bound: 30.8 MB each way per sync.
)


def b6_kwargs(net: dict, batch_size: int, num_workers: int, n_sync: int, quick: bool) -> dict:
    """``measure`` arguments of one B6 cell: our server, as compared with tf_ps."""
    return dict(
        **net,
        num_workers=num_workers,
        batch_size=batch_size,
        n_sync=n_sync,
        server=True,
        # TensorFlow's default threads, as tf_ps runs: with two workers on two
        # cores this was faster than one thread each (see the module docstring).
        cpu_threads=0,
        **STEPS[(net["model"], batch_size)].get(quick),
    )


def b6_ours(quick: bool = False, cells: Cells | None = None, repeats: int = 1) -> dict:
    """Our side of B6: aggregate images/s of 1 and 2 workers on the cells of tf_ps.

    Args:
      quick: Fewer steps (``STEPS``).
      cells: Cells measured already in this run, reused where the settings match.
      repeats: Measurements of each cell, interleaved within each model's group.
    """
    cells = cells or Cells()
    groups = []
    for net, batch, n_syncs in B6_GRID:
        rows = [
            (
                f"{workers} worker{'s' if workers > 1 else ''}, n_sync={n_sync}",
                b6_kwargs(net, batch, workers, n_sync, quick),
            )
            for n_sync in n_syncs
            for workers in (1, 2)
        ]
        title = _net_title(net, batch)
        groups.append(
            {
                "title": title,
                "model": _net_name(net),
                "repeats": repeats,
                "rows": _rows(cells, f"B6 {title}", rows, repeats),
            }
        )
    return {"groups": groups}


BENCHMARKS = {"b3": b3, "b4": b4, "b6": lambda cells, quick: b6_ours(quick, cells)}


# What ``make bench`` measures here: B6 runs in benchmarks/versus_tf.py, side by
# side with TensorFlow's numbers (``--only=b6`` measures our side alone).
DEFAULT_ONLY = ("b3", "b4")


def run(quick: bool = False, only: tuple[str, ...] = DEFAULT_ONLY) -> dict:
    """Measures B3 and B4 (or those in ``only``: b3, b4, b6); returns the report."""
    start = time.perf_counter()
    cells = Cells()
    report = {
        "machine": common.machine_info(),
        "command": "python -m benchmarks.worker_throughput"
        + (" --quick" if quick else "")
        + ("" if tuple(only) == DEFAULT_ONLY else f" --only={','.join(only)}"),
        "quick": quick,
    }
    for name in only:
        report[name] = BENCHMARKS[name](cells, quick)
    report["total_seconds"] = time.perf_counter() - start
    return report


# -- Report ------------------------------------------------------------------------------


def _steps_note(s: dict) -> str:
    return f"{s['warmup_steps']} warm-up + {s['steps']} timed steps per worker"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _images(s: dict) -> str:
    return common.fmt(s, digits=4)


def markdown(report: dict) -> str:
    """The report's tables (images/s: median [min-max] over the repeats)."""
    out = [
        "images/s: the timed steps after the warm-up (pushes and fetches included, "
        "start-up excluded), summed over the workers of a cell; median [min-max] over "
        "the repeats.\n"
    ]
    if "b3" in report:
        out.append("### B3: worker overhead (one worker, server against local)\n")
        for g in report["b3"]["groups"]:
            out.append(
                f"{g['title']}; TensorFlow's default threads; {_steps_note(g)}; "
                f"{_count(g['repeats'], 'repeat')}.\n"
            )
            out.append("| setting | images/s | ratio to local | target | verdict |")
            out.append("|---|---:|---:|---:|---|")
            for row in g["rows"]:
                target = row["target"]
                out.append(
                    f"| {row['label']} | {_images(row['images_per_sec'])} "
                    f"| {row['ratio']:.3f} | {target or ''} "
                    f"| {common.verdict(row['ratio'], target) if target else ''} |"
                )
            out.append("")
    if "b4" in report:
        b = report["b4"]
        out.append("### B4: scaling (each worker pinned to its own core, one thread; n_sync=1)\n")
        out.append(f"{b['title']}; {_steps_note(b)}; {_count(b['repeats'], 'repeat')}.\n")
        out.append("| setting | aggregate images/s | over the timed span | ratio to 1 worker |")
        out.append("|---|---:|---:|---:|")
        base = b["rows"][0]["images_per_sec"]["median"]
        for row in b["rows"]:
            out.append(
                f"| {row['label']} | {_images(row['images_per_sec'])} "
                f"| {_images(row['images_per_sec_span'])} "
                f"| {row['images_per_sec']['median'] / base:.3f} |"
            )
        out.append(
            f"\nTwo workers against one: {b['ratio']:.2f}x (target {b['target']}x: "
            f"{common.verdict(b['ratio'], b['target'])}).\n"
        )
    if "b6" in report:
        out.append(
            "### B6, our side: aggregate images/s through our server\n\n"
            "Unpinned workers with TensorFlow's default threads.\n"
        )
        out.append(
            "| model | batch | workers | n_sync | warm-up + timed steps | repeats | images/s |"
        )
        out.append("|---|---:|---:|---:|---|---:|---:|")
        for g in report["b6"]["groups"]:
            for row in g["rows"]:
                cell = row["cells"][0]
                out.append(
                    f"| {g['model']} | {cell['batch_size']} | {cell['num_workers']} "
                    f"| {cell['n_sync']} | {cell['warmup_steps']} + {cell['steps']} "
                    f"| {len(row['cells'])} | {_images(row['images_per_sec'])} |"
                )
        out.append("")
    machine = report["machine"]
    out.append(
        f"Machine: {machine.get('cpu_model', machine['processor'])}, {machine['cpu_count']} "
        f"cores; `{report['command']}` took {report['total_seconds']:.0f} s."
    )
    return "\n".join(out) + "\n"


def _flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--only",
        type=common.comma_list(choices=tuple(BENCHMARKS)),
        default=list(DEFAULT_ONLY),
        metavar="b3,b4,b6",
        help="the benchmarks to measure (default b3,b4)",
    )
    # One worker of a cell, started by ``measure``; internal.
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--config_json", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    parser.add_argument("--task_index", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--address", help=argparse.SUPPRESS)
    parser.add_argument("--core", type=int, help=argparse.SUPPRESS)


def _worker_or_run(quick: bool, only: list[str], worker: bool, **worker_args) -> dict | None:
    if worker:
        worker_main(argparse.Namespace(**worker_args))
        return None
    return run(quick=quick, only=tuple(only))


def main(argv: list[str] | None = None) -> None:
    """``python -m benchmarks.worker_throughput [--quick] [--only=b3,b4,b6] [--out=PATH]``."""
    common.main(
        NAME,
        _worker_or_run,
        doc=__doc__,
        markdown=markdown,
        quick="fewer steps, one repeat (about 2.5 minutes): a smoke test, not a measurement",
        flags=_flags,
        argv=argv,
    )


if __name__ == "__main__":
    main()
