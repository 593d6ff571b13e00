"""TensorFlow's own answer: ``tf.distribute.ParameterServerStrategy`` throughput.

The baseline a TensorFlow user would otherwise pick for asynchronous
data-parallel SGD: ``ParameterServerStrategy`` (PSS) driven by a
``ClusterCoordinator`` with a custom training loop (Keras 3's ``model.fit``
does not support PSS). One *cell* is (model, width, workers, batch size):

* an in-process loopback cluster (the TF tutorial's
  ``create_in_process_cluster``): ``num_workers`` worker and 1 ps
  ``tf.distribute.Server`` on 127.0.0.1, ``protocol="grpc"``, with this
  process as the coordinator;
* the model from ``gasgd_tf.models.build_model`` (32x32x3 input, 10 classes),
  plain ``keras.optimizers.SGD`` and sparse softmax cross-entropy on logits;
* a per-worker dataset of endless batches from 1024 random images held in
  memory, so the input pipeline is never the bottleneck;
* ``warmup_steps`` scheduled steps and ``join()`` (tracing, first transfers),
  then ``repeats`` times: ``steps`` scheduled steps + ``join()``, timed.

images/s = steps * batch_size / seconds, aggregated over all workers (each
scheduled step is one worker-step of ``batch_size`` images), median [min-max]
over the timed runs; s/step = seconds / steps, i.e. wall time per worker-step
of the whole cluster (each worker's own step takes ``num_workers`` times
that). Each timed run ends with ``join()``, so its tail, where fewer workers
are busy, is counted. The last step's loss is recorded and checked to be
finite; the ps-side optimizer step counter is recorded too.

Every cell runs in a fresh subprocess (``python -m benchmarks.tf_ps
--cell=<json>``): in-process ``tf.distribute.Server``s cannot be shut down,
and a second cluster in the same process is unreliable.

What Keras 3 + PSS needed (TF 2.21, Keras 3.15): nothing beyond creating the
model *and the optimizer* under ``strategy.scope()`` (Keras 3 on the TF
backend creates plain ``tf.Variable``s, which PSS's variable creator places
on the ps; the Keras TF optimizer picks up the strategy at construction), and
building the optimizer (``optimizer.build``) in scope before the first step,
since its ``iterations``/learning-rate variables would otherwise be created
lazily inside the remote ``tf.function``, where variable creation is not
allowed. Surprise: with more than one worker the optimizer's ``iterations``
ends below the number of steps run, because Keras 3's ``Variable.assign_add``
is a read followed by an assign, and concurrent increments from two workers
get lost; the weights themselves are updated by ``tf.Variable.assign_sub``
(one op on the ps) and are not affected.

Limitations: all tasks share this machine's cores (and one process), so more
workers compete for the same CPUs; free ports are picked by binding port 0
and closing, which can race with other programs. Other load on the machine
slows cells down: ``cores_busy`` (CPU time / wall time while timed) and
``load_before`` (1-minute load average) are recorded to spot it.

Training mode (``train_to_accuracy``, for B7 in ``benchmarks/slow_link.py``):
the same strategy *trains* a gasgd_tf config's model on its offline data
set, as the gasgd_tf run would: the config's model and initial weights
(``gasgd_tf.worker.build``, seeded by ``config.seed``), its input pipeline
(``gasgd_tf.data.pipeline.train_dataset``, each worker shuffling with its own
seed, taken from the clock because PSS gives ``dataset_fn`` no worker
index), ``num_workers`` workers, ``batch_size`` per step, ``num_workers x
num_steps`` steps in all, and Keras SGD with the config's *server* learning
rate, momentum and Nesterov flag: at ``n_sync = 1`` that is the update
Downpour's server applies to each pushed gradient, here applied to the
variables on the ps. Every ``eval_every_steps`` scheduled steps the
coordinator ``join()``s, reads the variables from the ps and evaluates the
whole test split; that pause is *excluded* from the training clock (the
drain before it is counted). One step per worker runs first, untimed (it
traces the step and makes the first transfers). The ps and the workers
listen on fixed ports, so that a shaped namespace (``benchmarks/network.py``)
can filter the ps's port; ``command_prefix`` runs the child inside it.

Usage:

  .venv/bin/python -m benchmarks.tf_ps [--quick]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time

from benchmarks import common
from benchmarks.common import fmt, machine_info, stats, timed

_RESULT_TAG = "TF_PS_RESULT "
_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_IMAGE_SHAPE = (32, 32, 3)
_NUM_CLASSES = 10
_POOL_IMAGES = 1024

# (model, width, batch size, steps per timed run, quick steps); each with 1 and
# 2 workers, 3 timed runs (1 with --quick). ~10-20 s of timed work per cell on
# a quiet 2-core machine (~5 s quick), besides ~5 s of start-up.
GRID = (
    ("cifar10_18pct", None, 128, 100, 80),  # ~90k params, compute-bound
    ("cifar10_80sec", 7.35, 128, 7, 6),  # 7.7M params ("7.7M net")
    ("cifar10_80sec", 7.35, 8, 60, 60),  # same net, communication-bound
)
REPEATS = 3
WORKERS = (1, 2)


def measure(
    model: str,
    width: float | None,
    num_workers: int,
    batch_size: int,
    steps: int,
    warmup_steps: int,
    learning_rate: float = 0.01,
    repeats: int = 1,
    cpu_threads: int = 0,
    timeout_s: float = 600.0,
) -> dict:
    """Measures one cell in a fresh subprocess; returns its result dict.

    Args:
      model, width: ``build_model`` name and width multiplier (None: default).
      num_workers: Worker tasks of the cluster (plus 1 ps).
      batch_size: Images per worker-step.
      steps: Steps scheduled (over all workers) per timed run.
      warmup_steps: Untimed steps first (tracing, first transfers).
      learning_rate: Plain SGD's learning rate.
      repeats: Timed runs; images/s is their median.
      cpu_threads: TF intra/inter-op threads; 0 = TF's default.
      timeout_s: Hard limit for the subprocess.

    Returns:
      The cell's config plus ``params``, ``images_per_s`` (+ ``_stats``),
      ``s_per_step``, ``seconds_stats``, ``final_loss``, ``loss_finite``,
      ``optimizer_iterations``, ``cores_busy``, ``setup_s``, ``load_before``.

    Raises:
      RuntimeError: The subprocess failed, timed out or printed no result.
    """
    cell = dict(
        model=model,
        width=width,
        num_workers=num_workers,
        batch_size=batch_size,
        steps=steps,
        warmup_steps=warmup_steps,
        learning_rate=learning_rate,
        repeats=repeats,
        cpu_threads=cpu_threads,
    )
    # GRPC_FAIL_FAST as in the TF tutorial: let the coordinator, not gRPC,
    # decide what to do when a task is unreachable.
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", GRPC_FAIL_FAST="use_caller")
    cmd = [sys.executable, "-m", "benchmarks.tf_ps", "--cell=" + json.dumps(cell)]
    load_before = os.getloadavg()[0]  # other load on the box skews the numbers
    try:
        proc = subprocess.run(
            cmd, cwd=_REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout_s
        )
    except subprocess.TimeoutExpired as e:
        tail = _tail(e.stderr)
        raise RuntimeError(f"tf_ps cell {cell} timed out after {timeout_s} s:\n{tail}") from e
    for line in reversed(proc.stdout.splitlines()):
        if proc.returncode == 0 and line.startswith(_RESULT_TAG):
            return dict(json.loads(line[len(_RESULT_TAG) :]), load_before=load_before)
    raise RuntimeError(f"tf_ps cell {cell} failed (exit {proc.returncode}):\n{_tail(proc.stderr)}")


def _tail(text: str | bytes | None, lines: int = 30) -> str:
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    return "\n".join((text or "").splitlines()[-lines:])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_cluster(
    num_workers: int, threads: int, ps_port: int | None = None, worker_ports: list | None = None
):
    """In-process servers of 1 ps and ``num_workers`` workers; returns (strategy, coordinator).

    Ports: the given ones (a shaped namespace filters the ps's), else free ones.
    """
    import tensorflow as tf

    worker_ports = worker_ports or [_free_port() for _ in range(num_workers)]
    cluster = tf.train.ClusterSpec(
        {
            "worker": [f"127.0.0.1:{port}" for port in worker_ports],
            "ps": [f"127.0.0.1:{ps_port or _free_port()}"],
        }
    )
    worker_config = tf.compat.v1.ConfigProto(
        intra_op_parallelism_threads=threads, inter_op_parallelism_threads=threads
    )
    # As in the TF tutorial: with fewer cores than tasks, the workers' default
    # inter-op pool is too small for the coordinator's concurrent functions
    # and can deadlock.
    if (os.cpu_count() or 1) < num_workers + 1:
        worker_config.inter_op_parallelism_threads = max(threads, num_workers + 1)
    for i in range(num_workers):
        tf.distribute.Server(
            cluster, job_name="worker", task_index=i, config=worker_config, protocol="grpc"
        )
    tf.distribute.Server(cluster, job_name="ps", task_index=0, protocol="grpc")
    resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(cluster, rpc_layer="grpc")
    strategy = tf.distribute.ParameterServerStrategy(resolver)
    return strategy, tf.distribute.coordinator.ClusterCoordinator(strategy)


def _train_step(strategy, coordinator, model, optimizer, batch_size: int, dataset_fn=None):
    """The per-worker dataset's iterator and the step to schedule on it: (step, iterator).

    ``dataset_fn``: makes each worker's endless batches; None: random images.
    """
    import keras
    import tensorflow as tf

    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def random_images() -> tf.data.Dataset:
        # Runs on each worker: a fixed pool of random images, repeated forever.
        images = tf.random.stateless_uniform((_POOL_IMAGES, *_IMAGE_SHAPE), seed=(1, 2))
        labels = tf.random.stateless_uniform(
            (_POOL_IMAGES,), seed=(3, 4), minval=0, maxval=_NUM_CLASSES, dtype=tf.int32
        )
        return (
            tf.data.Dataset.from_tensor_slices((images, labels))
            .repeat()
            .batch(batch_size, drop_remainder=True)
            .prefetch(tf.data.AUTOTUNE)
        )

    iterator = iter(coordinator.create_per_worker_dataset(dataset_fn or random_images))

    @tf.function
    def step(iterator):
        def replica_fn(batch):
            images, labels = batch
            with tf.GradientTape() as tape:
                loss = loss_fn(labels, model(images, training=True))
            grads = tape.gradient(loss, model.trainable_variables)
            optimizer.apply_gradients(zip(grads, model.trainable_variables))
            return loss

        # One replica per worker, so the per-replica value is a plain tensor.
        return strategy.run(replica_fn, args=(next(iterator),))

    return step, iterator


def _run_cell(cell: dict) -> dict:
    """The subprocess side: builds the cluster, trains, times. Once per process."""
    import tensorflow as tf

    # Thread pools are fixed at the first op, so before anything else.
    threads = int(cell.get("cpu_threads", 0))
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)

    import keras

    from gasgd_tf.models import build_model

    setup_start = time.perf_counter()
    strategy, coordinator = _start_cluster(cell["num_workers"], threads)
    width = cell["width"]
    with strategy.scope():
        # Variables (model's and optimizer's) must be created here, so that
        # PSS places them on the ps; see the module docstring.
        model = build_model(
            cell["model"], _IMAGE_SHAPE, _NUM_CLASSES, **({"width": width} if width else {})
        )
        optimizer = keras.optimizers.SGD(cell["learning_rate"])
        optimizer.build(model.trainable_variables)
    batch_size = cell["batch_size"]
    step, iterator = _train_step(strategy, coordinator, model, optimizer, batch_size)

    last: list = []  # the latest scheduled step's RemoteValue, for the final loss

    def run_steps(n: int) -> None:
        for _ in range(n):
            last[:] = [coordinator.schedule(step, args=(iterator,))]
        coordinator.join()

    run_steps(cell["warmup_steps"])
    setup_s = time.perf_counter() - setup_start
    cpu_start = os.times()
    seconds = [timed(lambda: run_steps(cell["steps"])) for _ in range(cell["repeats"])]
    cpu_end = os.times()
    # Cores this process (all tasks) kept busy while timed: near the core
    # count means CPU-bound; well below it, waiting (or other load on the box).
    cores_busy = (cpu_end.user + cpu_end.system - cpu_start.user - cpu_start.system) / sum(seconds)
    final_loss = float(last[0].fetch())
    rates = [cell["steps"] * batch_size / s for s in seconds]
    return dict(
        cell,
        params=int(model.count_params()),
        images_per_s=stats(rates)["median"],
        images_per_s_stats=stats(rates),
        s_per_step=stats([s / cell["steps"] for s in seconds])["median"],
        seconds_stats=stats(seconds),
        setup_s=setup_s,
        cores_busy=cores_busy,
        final_loss=final_loss,
        loss_finite=math.isfinite(final_loss),
        # Fewer than the steps scheduled with >1 worker: Keras 3's
        # Variable.assign_add is a read then an assign, so concurrent
        # increments get lost. Weight updates use tf.Variable.assign_sub
        # (one op on the ps) and are not affected.
        optimizer_iterations=int(optimizer.iterations.numpy()),
        variables_on=model.trainable_variables[0].value.device,
        tensorflow=tf.__version__,
        keras=keras.__version__,
    )


# -- Training mode: test accuracy over wall-clock time (B7) -------------------------


def train_to_accuracy(
    config_json: str,
    *,
    ps_port: int,
    worker_ports: list[int],
    eval_every_steps: int,
    deadline_s: float,
    command_prefix: list[str] | tuple[str, ...] = (),
    say=print,
) -> dict:
    """Trains the config's model with PSS in a fresh subprocess; returns accuracy over time.

    Args:
      config_json: A resolved gasgd_tf config (``config_base.to_json``).
      ps_port: The ps task's port on 127.0.0.1 (the one a shaped link filters).
      worker_ports: One port per worker task.
      eval_every_steps: Scheduled steps (over all workers) between evaluations.
      deadline_s: Training stops after this many seconds of training clock
        plus pauses (the result says ``timed_out``); the child is killed 120 s later.
      command_prefix: Runs the child inside it (``Namespace.command([])``).
      say: Where the child's progress lines go.

    Returns:
      ``_run_training``'s result: ``params``, ``series`` (dicts of ``t``, the
      training clock in s; ``steps``; ``accuracy``; ``loss``), ``final_accuracy``,
      ``steps_done``, ``train_s``, ``eval_pause_s``, ``setup_s``, ``timed_out``.

    Raises:
      RuntimeError: The child failed, or printed no result.
    """
    spec = dict(
        config_json=config_json,
        ps_port=ps_port,
        worker_ports=list(worker_ports),
        eval_every_steps=eval_every_steps,
        deadline_s=deadline_s,
    )
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", GRPC_FAIL_FAST="use_caller")
    env["PYTHONUNBUFFERED"] = "1"
    cmd = [*command_prefix, sys.executable, "-m", "benchmarks.tf_ps", "--train=" + json.dumps(spec)]
    proc = subprocess.Popen(
        cmd,
        cwd=_REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        start_new_session=True,  # Its own group: a timeout kills all of it.
    )
    lines: list[str] = []
    reader = threading.Thread(target=_forward, args=(proc, lines, say), daemon=True)
    reader.start()
    try:
        proc.wait(timeout=deadline_s + 120.0)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    reader.join(timeout=10)
    for line in reversed(lines):
        if proc.returncode == 0 and line.startswith(_RESULT_TAG):
            return json.loads(line[len(_RESULT_TAG) :])
    tail = "\n".join(lines[-30:])
    raise RuntimeError(f"tf_ps training failed (exit {proc.returncode}):\n{tail}")


def _forward(proc: subprocess.Popen, lines: list[str], say) -> None:
    for line in proc.stdout:
        lines.append(line.rstrip("\n"))
        if not line.startswith(_RESULT_TAG):
            say(line.rstrip("\n"))


def _config_dataset_fn(config):
    """``dataset_fn`` of the config's training data, as a gasgd_tf worker reads it.

    PSS calls it on every worker with no worker index, so it cannot seed
    each worker's shuffle as gasgd_tf does (``seed * 1000 + index``). With
    no seed (and no global seed: ``_run_training`` clears it) every
    worker's iterator shuffles in its own random order instead.

    Raises:
      ValueError: The config augments its images (that needs an integer seed).
    """
    from gasgd_tf.data import pipeline

    if any(config.data[key] for key in ("resize", "pad", "crop", "flip")):
        raise ValueError("tf_ps training: data augmentation needs a per-worker seed; PSS has none")

    import tensorflow as tf

    @tf.autograph.experimental.do_not_convert  # Plain tf.data calls; spares AutoGraph's warnings.
    def dataset_fn():
        return pipeline.train_dataset(config.data, config.batch_size, seed=None)

    return dataset_fn


def _run_training(spec: dict) -> dict:
    """The subprocess side of ``train_to_accuracy``: builds the cluster, trains, evaluates."""
    import tensorflow as tf

    from gasgd_tf import config_base

    with open(spec["config_json"]) as f:
        config = config_base.from_json(f.read())
    threads = int(config.worker.cpu_threads)
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)

    import keras

    from gasgd_tf import evaluation, worker
    from gasgd_tf.data import pipeline

    setup_start = time.perf_counter()
    strategy, coordinator = _start_cluster(
        config.num_workers, threads, spec["ps_port"], spec["worker_ports"]
    )
    with strategy.scope():  # On the ps, as the module docstring says.
        model = worker.build(config)
        ps = config.ps
        optimizer = keras.optimizers.SGD(
            ps.learning_rate, momentum=ps.momentum, nesterov=ps.nesterov
        )
        optimizer.build(model.trainable_variables)
    local = worker.build(config)  # The coordinator's copy, for evaluation.
    tf.random.set_seed(None)  # worker.build set it; see _config_dataset_fn.
    evaluate = evaluation.Evaluator(
        local, pipeline.eval_dataset(config.data, config.eval.batch_size)
    )
    step, iterator = _train_step(
        strategy, coordinator, model, optimizer, config.batch_size, _config_dataset_fn(config)
    )

    def run_steps(n: int) -> None:
        for _ in range(n):
            coordinator.schedule(step, args=(iterator,))
        coordinator.join()

    total = config.num_workers * config.num_steps
    run_steps(config.num_workers)  # Untimed: traces the step, first transfers.
    setup_s = time.perf_counter() - setup_start
    clock = paused = 0.0
    series: list[dict] = []

    def evaluate_now(done: int) -> float:
        start = time.perf_counter()
        for mine, theirs in zip(local.trainable_variables, model.trainable_variables):
            mine.assign(theirs.numpy())  # Read from the ps.
        accuracy, loss, _, _ = evaluate()
        series.append(dict(t=clock, steps=done, accuracy=accuracy, loss=loss))
        print(f"tf: step {done}/{total}, {clock:.1f} s, test accuracy {accuracy:.4f}", flush=True)
        return time.perf_counter() - start

    done = config.num_workers
    paused += evaluate_now(done)
    timed_out = False
    while done < total:
        n = min(spec["eval_every_steps"], total - done)
        clock += timed(lambda n=n: run_steps(n))
        done += n
        paused += evaluate_now(done)
        if clock + paused > spec["deadline_s"]:
            timed_out = done < total
            break
    return dict(
        params=int(model.count_params()),
        series=series,
        final_accuracy=series[-1]["accuracy"],
        steps_done=done,
        steps_total=total,
        train_s=clock,
        eval_pause_s=paused,
        setup_s=setup_s,
        timed_out=timed_out,
        variables_on=model.trainable_variables[0].value.device,
        tensorflow=tf.__version__,
        keras=keras.__version__,
    )


def run(quick: bool = False) -> dict:
    """Measures the default grid (each cell in its own subprocess); returns the report."""
    start = time.perf_counter()
    cells = []
    for model, width, batch, steps, quick_steps in GRID:
        for workers in WORKERS:
            n = quick_steps if quick else steps
            cell = measure(
                model, width, workers, batch, n, max(2, n // 5), repeats=1 if quick else REPEATS
            )
            print(
                f"{model} width={width} workers={workers} batch={batch}: "
                f"{cell['images_per_s']:.1f} images/s, {cell['s_per_step'] * 1e3:.1f} ms/step, "
                f"loss {cell['final_loss']:.3f}",
                flush=True,
            )
            cells.append(cell)
    return dict(
        machine=machine_info(),
        command="python -m benchmarks.tf_ps" + (" --quick" if quick else ""),
        total_s=time.perf_counter() - start,
        cells=cells,
    )


def markdown(report: dict) -> str:
    """The report as a Markdown table."""
    lines = [
        "| model | params | workers | batch | runs x steps | images/s | s/step |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for c in report["cells"]:
        name = c["model"] + (f" (width {c['width']})" if c["width"] else "")
        lines.append(
            f"| {name} | {c['params']:,} | {c['num_workers']} | {c['batch_size']} "
            f"| {c['repeats']}x{c['steps']} | {fmt(c['images_per_s_stats'], digits=4)} "
            f"| {c['s_per_step']:.4f} |"
        )
    return "\n".join(lines) + "\n"


def _cell_or_run(quick: bool, cell: str | None, train: str | None) -> dict | None:
    if cell is None and train is None:
        return run(quick=quick)
    result = _run_cell(json.loads(cell)) if cell else _run_training(json.loads(train))
    print(_RESULT_TAG + json.dumps(result), flush=True)
    # The servers' and coordinator's threads may keep a normal exit
    # waiting forever; the result is out, so leave at once.
    os._exit(0)


def _flags(parser: argparse.ArgumentParser) -> None:
    # One cell in this process, started by ``measure``; internal.
    parser.add_argument("--cell", metavar="JSON", help=argparse.SUPPRESS)
    # One training run in this process, started by ``train_to_accuracy``; internal.
    parser.add_argument("--train", metavar="JSON", help=argparse.SUPPRESS)


def main(argv: list[str] | None = None) -> None:
    """``python -m benchmarks.tf_ps [--quick] [--out=PATH]``."""
    common.main(
        "tf_ps",
        _cell_or_run,
        doc=__doc__,
        markdown=markdown,
        quick="~5 s per cell instead of ~15 s",
        flags=_flags,
        argv=argv,
    )


if __name__ == "__main__":
    main()
