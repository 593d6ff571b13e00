"""The A-SGD worker: a Keras model replica that trains locally and syncs with the server.

As in Paine et al. (2013) and Downpour SGD: every step the worker computes a
gradient on its own minibatch, applies it to its local copy with its local
optimizer, and adds it to an accumulator. Every ``n_push`` steps it pushes
the accumulated gradient (the sum since the last push) to the parameter
server; every ``n_fetch`` steps it replaces its weights with the server's.
When both fall on one step, it pushes first, so the fetched weights include
its own update.

What to compute (``TrainStep``, ``VariableSync``) is kept apart from when to
sync and log (``train``), after tensorflow/models' orbit.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import time
from collections.abc import Callable, Iterator

import keras
import ml_collections
import numpy as np
import tensorflow as tf

from gasgd_tf import (
    addresses,
    checkpoints,
    cluster,
    config_base,
    devices,
    layout,
    progress,
    reporting,
    security,
)
from gasgd_tf.client import (
    ParameterClient,
    ShardedClient,
    Version,
    make_client,
)
from gasgd_tf.data import pipeline
from gasgd_tf.keras_sync import GradientSums, VariableSync
from gasgd_tf.models import build_model
from gasgd_tf.replica import DeltaTracker, ReplicaSession, SyncSchedule
from gasgd_tf.replica.streaming import FragmentStream, StreamingPlan
from gasgd_tf.summaries import MetricWriter
from gasgd_tf.tensors import TensorSpec

log = logging.getLogger(__name__)


def client_id(task_index: int) -> str:
    """Worker ``task_index``'s client id (``gasgd_tf.layout.worker``)."""
    return layout.worker(task_index)


def connect(
    config: ml_collections.ConfigDict, address: str, name: str
) -> ParameterClient | ShardedClient:
    """A client of the server at ``address`` with the deadlines of ``config.client``.

    ``address`` lists every shard's host:port, separated by commas, when
    ``ps.num_shards`` > 1.

    Raises:
      ValueError: An address is not host:port, or their number is not ``ps.num_shards``.
    """
    listed = [str(a) for a in addresses.parse_list(address)]
    if len(listed) != config.ps.num_shards:
        raise ValueError(
            f"{len(listed)} server addresses ({address}) for ps.num_shards="
            f"{config.ps.num_shards}: give one host:port per shard, separated by commas"
        )
    return make_client(
        listed,
        name,
        split_bytes=config.ps.shard_split_bytes,
        timeout_secs=config.client.timeout_secs,
        retry_secs=config.client.retry_secs,
        chunk_bytes=config.client.chunk_bytes,
        push_dtype=config.client.push_dtype,
        fetch_dtype=config.client.fetch_dtype,
        credentials=security.client_credentials(config.security),
        push_codec=config.client.push_codec,
        codec_block_size=config.client.codec_block_size,
        topk_fraction=config.client.topk_fraction,
    )


def build(config: ml_collections.ConfigDict) -> keras.Model:
    """The config's model, with weights from ``config.seed`` (identical on every worker).

    Under ``worker.precision``'s Keras policy: mixed policies compute in
    float16 or bfloat16 and keep float32 variables, so the flat parameters
    the server holds are float32 either way.
    """
    info = pipeline.dataset_info(config.data)
    keras.mixed_precision.set_global_policy(config.worker.precision)
    keras.utils.set_random_seed(config.seed)
    # Unset fields keep the model's own defaults (its paper's values).
    options = {k: v for k in ("dropout", "width", "lrn") if (v := config.model[k]) is not None}
    return build_model(
        config.model.name, pipeline.input_shape(config.data), info.num_classes, **options
    )


class TrainStep:
    """One compiled training step that also accumulates gradients for the next push.

    Args:
      model: The local replica.
      optimizer: The local optimizer, applied every step.
      jit_compile: Compile the step with XLA.
      accumulate: Sum the gradients for the next push; False for a replica
        that never pushes (local training), which then skips that work.
      return_gradient: Each call returns that step's gradient, flat, instead
        of summing it (for ``n_push = 1``: one compiled call per step instead
        of two, and no accumulator to add to and clear).
    """

    def __init__(
        self,
        model: keras.Model,
        optimizer: keras.Optimizer,
        jit_compile: bool = False,
        accumulate: bool = True,
        return_gradient: bool = False,
    ):
        self.model = model
        self.optimizer = optimizer
        variables = model.trainable_variables
        optimizer.build(variables)
        # mixed_float16: the loss is scaled before the gradient and the
        # optimizer unscales (and skips steps whose gradients overflowed). The
        # accumulator and the pushes get the unscaled gradient, and nothing of
        # a skipped step.
        scaled = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
        self.loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        self.sums = GradientSums(variables)
        # Running sums for the train/* metrics, read and reset when logging.
        self.loss_sum = tf.Variable(0.0, trainable=False)
        self.correct = tf.Variable(0.0, trainable=False)
        self.count = tf.Variable(0.0, trainable=False)

        @tf.function(jit_compile=jit_compile)
        def step(images, labels):
            with tf.GradientTape() as tape:
                logits = model(images, training=True)
                loss = self.loss_fn(labels, logits)
                if model.losses:
                    loss += tf.add_n(model.losses)
                target = optimizer.scale_loss(loss) if scaled else loss
            grads = tape.gradient(target, variables)
            if scaled:
                scale = tf.identity(optimizer.dynamic_scale)  # Before apply changes it.
            optimizer.apply_gradients(zip(grads, variables))
            if scaled:
                finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g in grads])
                grads = [tf.where(finite, g / scale, tf.zeros_like(g)) for g in grads]
            if accumulate and not return_gradient:
                self.sums.add_all(grads)
            n = tf.cast(tf.shape(labels)[0], tf.float32)
            self.loss_sum.assign_add(loss * n)
            hits = tf.equal(tf.argmax(logits, -1, output_type=labels.dtype), labels)
            self.correct.assign_add(tf.reduce_sum(tf.cast(hits, tf.float32)))
            self.count.assign_add(n)
            if return_gradient:
                return tf.concat([tf.reshape(g, [-1]) for g in grads], axis=0)
            return None

        self._step = step
        self.return_gradient = return_gradient
        self._last_gradient: np.ndarray | None = None

    def __call__(self, images: tf.Tensor, labels: tf.Tensor) -> np.ndarray | None:
        """One step; with ``return_gradient``, its flat gradient."""
        grad = self._step(images, labels)
        if not self.return_gradient:
            return None
        self._last_gradient = grad.numpy()
        return self._last_gradient

    def warm_up(self, images: tf.Tensor, labels: tf.Tensor) -> None:
        """Runs one step, then puts every variable back as it was.

        The first run of a tf.function traces and optimizes its graph, which
        takes a second or more; doing it before fetching the server's weights
        keeps that delay out of the first push's staleness. Weights, optimizer
        slots and counters are restored, and the gradient and metrics dropped,
        so the run starts exactly as if the step had never happened.
        """
        variables = [*self.model.variables, *self.optimizer.variables]
        saved = [v.numpy() for v in variables]
        self._step(images, labels)
        for v, value in zip(variables, saved):
            v.assign(value)
        if not self.return_gradient:
            self.take_gradient()
        self.take_metrics()

    def take_gradient(self) -> np.ndarray:
        """The gradient accumulated since the last call, flat; resets the accumulator."""
        return self.sums.take()

    def take_update(self) -> np.ndarray:
        """What the next push carries: the last step's gradient with ``return_gradient``
        (``n_push`` = 1), else the sum since the last push."""
        if self.return_gradient:
            grad, self._last_gradient = self._last_gradient, None
            return grad
        return self.take_gradient()

    def take_metrics(self) -> tuple[float, float]:
        """Mean loss and accuracy since the last call; resets them."""
        count = max(float(self.count.numpy()), 1.0)
        loss, acc = float(self.loss_sum.numpy()) / count, float(self.correct.numpy()) / count
        for v in (self.loss_sum, self.correct, self.count):
            v.assign(0.0)
        return loss, acc


@dataclasses.dataclass
class WorkerResult:
    steps: int
    pushes: int
    fetches: int
    final_version: int
    loss: float
    accuracy: float
    images_per_sec: float
    wall_secs: float
    # Pushes the server refused because it was restored from a checkpoint
    # to an earlier version meanwhile (their updates are lost).
    pushes_lost: int = 0
    # The step this run started after: > 0 when it resumed a run (or was
    # restarted) and the server had its pushes up to that step.
    resumed_from_step: int = 0
    # Emulated slowdown (worker.step_delay_secs): seconds slept after each step.
    emulated_step_delay_secs: float = 0.0
    # Payload bytes this worker's client sent and received (ParameterClient.bytes_*).
    bytes_sent: int = 0
    bytes_received: int = 0
    # The last H the server planned (worker.local_steps=adaptive; 0: fixed).
    local_steps: int = 0


def join(
    client: ParameterClient | ShardedClient,
    sync: VariableSync,
    timeout_secs: float,
    initial: Callable[[], np.ndarray] | None = None,
) -> tuple[Version, int]:
    """Registers, offers initial weights if the server has none, and fetches (one-off).

    ``ReplicaSession.join`` for a caller that wants no session: returns the
    version of the fetched parameters and the step of this client id's last
    push the server applied (0 for a new client).
    """
    session = ReplicaSession(client, sync, SyncSchedule(1, 1))
    last_step = session.join(timeout_secs, initial=initial)
    return session.weights_version, last_step


def data_seed(config: ml_collections.ConfigDict, task_index: int, start_step: int) -> int:
    """The seed of a worker's data order; a resumed worker's differs, so it sees new batches."""
    seed = config.seed * 1000 + task_index
    if start_step:
        seed = (seed * 1_000_003 + start_step) % (2**31 - 1)
    return seed


def warm_start_weights(path: str, specs: tuple[TensorSpec, ...], name: str) -> np.ndarray:
    """The checkpoint ``path`` names (file or run folder), flat in the order of ``specs``.

    Raises:
      FileNotFoundError: No checkpoint there.
      ValueError: The checkpoint does not match the model (names the tensor).
    """
    checkpoint = checkpoints.load(path)
    flat = checkpoints.flatten_for(checkpoint, specs)
    print(
        f"{name}: warm start from {checkpoint.path} (saved at version {checkpoint.version})",
        flush=True,
    )
    return flat


def _local_optimizer(config: ml_collections.ConfigDict) -> keras.Optimizer:
    """The worker's own optimizer (``worker.optimizer``), loss-scaled under mixed_float16."""
    w = config.worker
    if w.optimizer == "adamw":
        optimizer = keras.optimizers.AdamW(
            learning_rate=w.learning_rate, weight_decay=w.weight_decay
        )
    else:
        optimizer = keras.optimizers.SGD(learning_rate=w.learning_rate, momentum=w.momentum)
    if config.worker.precision == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


class _WorkerRun:
    """One worker's run: what ``train`` sets up, steps through and closes.

    The step (``TrainStep``) says what to compute; the session
    (``ReplicaSession``) when and how to sync; the reporter where the
    train/* numbers go. This class only wires them together.
    """

    def __init__(self, config, task_index: int, address: str | None, workdir: str):
        self.config = config
        self.task_index = task_index
        self.device = devices.configure(
            cluster.local_rank(os.environ, default=task_index),
            config.worker.cpu_threads,
            share_gpus=config.worker.share_gpus,
        )
        self.name = client_id(task_index)
        self.model = build(config)
        # Each replica sees its own dropout masks and data order.
        keras.utils.set_random_seed(config.seed * 1000 + task_index + 1)
        # Gradient pushes sum the steps' gradients (with n_push = 1 each step's
        # is pushed as it is, no accumulator); delta pushes need no sums.
        gradients = address is not None and config.worker.push == "gradient"
        self.step_fn = TrainStep(
            self.model,
            _local_optimizer(config),
            jit_compile=config.worker.jit_compile,
            accumulate=gradients,
            return_gradient=gradients and config.n_push == 1,
        )
        self.sync = VariableSync(self.model.trainable_variables)
        self.writer = MetricWriter(layout.tensorboard_dir(workdir, self.name))
        self.progress_file = layout.progress_path(workdir, self.name)
        self.step_delay = config_base.step_delay_secs(config, task_index)
        self.reporter = self._reporter()
        self.session = None if address is None else self._session(address)
        self.start_step = 0
        self.data = self._batches(0)

    def _reporter(self) -> reporting.Reporter:
        """Where the train/* numbers go: TensorBoard, the console, the progress file."""
        config, note, extra = self.config, "", {}
        if self.step_delay:  # Its images/s are not this hardware's: say so everywhere.
            note = f" (EMULATED +{self.step_delay:g} s per step)"
            extra = {"emulated_step_delay_secs": self.step_delay}
        return reporting.Reporter(
            config.worker.log_every_steps,
            config.num_steps,
            config.batch_size,
            [
                reporting.tensorboard(self.writer),
                reporting.console(self.name, note),
                reporting.progress_file(self.progress_file, extra),
            ],
        )

    def _session(self, address: str) -> ReplicaSession:
        config = self.config
        client = connect(config, address, self.name)
        variables, take_update, stream = self.sync, self.step_fn.take_update, None
        if config.sync.fragments > 1:  # Streaming: each fragment's delta, on its own schedule.
            take_update = None
            plan = StreamingPlan(
                config.sync.fragments,
                config.n_push,
                config.sync.overlap_steps,
                config.sync.mix_alpha,
            )
            stream = FragmentStream(client, self.sync, plan, config.batch_size)
        elif config.worker.push == "delta":  # theta_fetched - theta_local after the local steps.
            variables = DeltaTracker(self.sync)
            take_update = variables.take
        return ReplicaSession(
            client,
            variables,
            SyncSchedule(config.n_push, config.n_fetch, config.num_steps),
            take_update,
            overlap=config.worker.overlap,
            push_kind=config.worker.push,
            batch_size=config.batch_size,
            model_name=self.model.name,
            say=lambda line: print(line, flush=True),
            stream=stream,
        )

    def _batches(self, start_step: int) -> Iterator:
        seed = data_seed(self.config, self.task_index, start_step)
        return iter(pipeline.train_dataset(self.config.data, self.config.batch_size, seed=seed))

    def join(self) -> None:
        """Warms the step up, then joins the server (or takes the warm start alone)."""
        config = self.config
        self.step_fn.warm_up(*next(self.data))
        initial = None
        if config.warm_start:
            initial = functools.partial(
                warm_start_weights, config.warm_start, self.sync.specs, self.name
            )
        if self.session is not None:
            last_step = self.session.join(
                config.client.connect_timeout_secs,
                initial=initial,
                heartbeat_secs=config.client.heartbeat_secs,
            )
            self.start_step = min(last_step, config.num_steps)
            self.session.resume_at(self.start_step)
        elif initial is not None:
            self.sync.assign(initial())
        if self.start_step:
            self.data = self._batches(self.start_step)  # Not the first start's batches again.
        version = self.session.stats.version if self.session else 0
        resumed = f"; resuming after step {self.start_step}" if self.start_step else ""
        slow = (
            f"; EMULATED slowdown: +{self.step_delay:g} s per step (worker.step_delay_secs)"
            if self.step_delay
            else ""
        )
        print(
            f"{self.name}: {self.model.count_params():,} parameters on {self.device}; "
            f"joined at version {version}{resumed}{slow}",
            flush=True,
        )

    def comm(self) -> reporting.Comm:
        """The client's byte counters and the last planned H (zeros without a server)."""
        if self.session is None:
            return reporting.Comm()
        client = self.session.client
        return reporting.Comm(
            client.bytes_sent, client.bytes_received, self.session.stats.local_steps
        )

    def loop(self) -> int:
        """Runs the steps after ``start_step``; returns the last step."""
        session, step = self.session, self.start_step
        self.reporter.start()
        for step in range(self.start_step + 1, self.config.num_steps + 1):
            if session is not None:
                session.before_step()
            self.step_fn(*next(self.data))
            if self.step_delay:  # Emulated slow hardware, named in every report.
                time.sleep(self.step_delay)
            if session is not None:
                session.after_step(step)
            if self.reporter.due(step):
                loss, accuracy = self.step_fn.take_metrics()
                stats = session.stats if session is not None else None
                self.reporter.report(
                    step,
                    loss,
                    accuracy,
                    server_version=stats.version if stats else 0,
                    staleness=stats.staleness if stats else 0,
                    comm=self.comm(),
                )
        return step

    def finish(self, last_step: int, start: float) -> WorkerResult:
        """Lands the last push, leaves, writes the final progress file and line.

        Args:
          last_step: The last step the loop ran.
          start: ``time.perf_counter()`` when the loop started: the run's
            time includes landing the last push and leaving.
        """
        config, session = self.config, self.session
        final_version = 0
        if session is not None:
            session.finish()  # The last push lands before Leave.
            final_version = session.leave()
            session.close()
        wall_secs = time.perf_counter() - start
        stats = session.stats if session is not None else None
        report = self.reporter.last
        steps = config.num_steps - self.start_step
        result = WorkerResult(
            steps=steps,
            pushes=stats.pushes if stats else 0,
            fetches=stats.fetches if stats else 0,
            final_version=final_version,
            loss=report.loss if report else float("nan"),
            accuracy=report.accuracy if report else float("nan"),
            images_per_sec=steps * config.batch_size / wall_secs,
            wall_secs=wall_secs,
            pushes_lost=stats.pushes_lost if stats else 0,
            resumed_from_step=self.start_step,
            emulated_step_delay_secs=self.step_delay,
            **dataclasses.asdict(self.comm()),
        )
        progress.write_json(
            self.progress_file,
            {
                **dataclasses.asdict(result),
                "step": last_step,
                "num_steps": config.num_steps,
                "done": True,
            },
        )
        self.writer.close()
        print(
            f"{self.name}: done, {result.steps} steps, {result.pushes} pushes "
            f"({result.pushes_lost} lost to server restarts), {result.fetches} fetches, "
            f"loss {result.loss:.4f}, {result.images_per_sec:.0f} images/s"
            + (f" (EMULATED +{self.step_delay:g} s per step)" if self.step_delay else ""),
            flush=True,
        )
        return result


def train(
    config: ml_collections.ConfigDict, task_index: int, address: str | None, workdir: str
) -> WorkerResult:
    """Runs worker ``task_index`` against the server at ``address`` for ``config.num_steps``.

    With ``address=None`` the same loop trains the local replica alone, with
    no server, pushes or fetches: the no-communication baseline of the
    benchmarks (the paper's single GPU).

    Raises:
      ServerUnavailableError: The server stopped answering (names the address).
      RequestRejectedError: The server refused a push (for example NaN values).
    """
    run = _WorkerRun(config, task_index, address, workdir)
    run.join()
    start = time.perf_counter()
    last_step = run.loop()
    return run.finish(last_step, start)
