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
import threading
import time
from collections.abc import Callable

import keras
import ml_collections
import numpy as np
import tensorflow as tf

from gasgd_tf import checkpoints, cluster, devices, progress, security
from gasgd_tf.client import (
    ParameterClient,
    ServerRestartedError,
    ShardedClient,
    Version,
    make_client,
    version_number,
)
from gasgd_tf.data import pipeline
from gasgd_tf.models import build_model
from gasgd_tf.summaries import MetricWriter
from gasgd_tf.tensors import TensorSpec

log = logging.getLogger(__name__)


def client_id(task_index: int) -> str:
    return f"worker_{task_index}"


def connect(
    config: ml_collections.ConfigDict, address: str, name: str
) -> ParameterClient | ShardedClient:
    """A client of the server at ``address`` with the deadlines of ``config.client``.

    ``address`` lists every shard's host:port, separated by commas, when
    ``ps.num_shards`` > 1.

    Raises:
      ValueError: The number of addresses is not ``ps.num_shards``.
    """
    addresses = [a for a in address.split(",") if a.strip()]
    if len(addresses) != config.ps.num_shards:
        raise ValueError(
            f"{len(addresses)} server addresses ({address}) for ps.num_shards="
            f"{config.ps.num_shards}: give one host:port per shard, separated by commas"
        )
    return make_client(
        addresses,
        name,
        split_bytes=config.ps.shard_split_bytes,
        timeout_secs=config.client.timeout_secs,
        retry_secs=config.client.retry_secs,
        chunk_bytes=config.client.chunk_bytes,
        push_dtype=config.client.push_dtype,
        fetch_dtype=config.client.fetch_dtype,
        credentials=security.client_credentials(config.security),
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


class VariableSync:
    """Moves a list of variables to and from one flat float32 buffer.

    The tensor names are the Keras variable paths, so every replica of a
    model has the same signature.
    """

    def __init__(self, variables: list[tf.Variable]):
        self.variables = list(variables)
        self.specs = tuple(TensorSpec(v.path, tuple(v.shape), "float32") for v in self.variables)
        self._sizes = [int(np.prod(v.shape)) for v in self.variables]
        size = sum(self._sizes)

        @tf.function(input_signature=[tf.TensorSpec([size], tf.float32)])
        def assign(flat):
            for v, part in zip(self.variables, tf.split(flat, self._sizes)):
                v.assign(tf.reshape(part, v.shape))

        @tf.function
        def read():
            return tf.concat([tf.reshape(v, [-1]) for v in self.variables], axis=0)

        self._assign = assign
        self._read = read

    def read(self) -> np.ndarray:
        return self._read().numpy()

    def assign(self, flat: np.ndarray) -> None:
        self._assign(flat)


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
        self.accumulators = [
            tf.Variable(tf.zeros(v.shape, tf.float32), trainable=False) for v in variables
        ]
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
                for acc, g in zip(self.accumulators, grads):
                    acc.assign_add(g)
            n = tf.cast(tf.shape(labels)[0], tf.float32)
            self.loss_sum.assign_add(loss * n)
            hits = tf.equal(tf.argmax(logits, -1, output_type=labels.dtype), labels)
            self.correct.assign_add(tf.reduce_sum(tf.cast(hits, tf.float32)))
            self.count.assign_add(n)
            if return_gradient:
                return tf.concat([tf.reshape(g, [-1]) for g in grads], axis=0)
            return None

        @tf.function
        def take_gradient():
            flat = tf.concat([tf.reshape(a, [-1]) for a in self.accumulators], axis=0)
            with tf.control_dependencies([flat]):
                for a in self.accumulators:
                    a.assign(tf.zeros_like(a))
            return flat

        self._step = step
        self._take_gradient = take_gradient
        self.return_gradient = return_gradient

    def __call__(self, images: tf.Tensor, labels: tf.Tensor) -> np.ndarray | None:
        """One step; with ``return_gradient``, its flat gradient."""
        grad = self._step(images, labels)
        return grad.numpy() if self.return_gradient else None

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
        return self._take_gradient().numpy()

    def take_metrics(self) -> tuple[float, float]:
        """Mean loss and accuracy since the last call; resets them."""
        count = max(float(self.count.numpy()), 1.0)
        loss, acc = float(self.loss_sum.numpy()) / count, float(self.correct.numpy()) / count
        for v in (self.loss_sum, self.correct, self.count):
            v.assign(0.0)
        return loss, acc


class BackgroundSync:
    """Pushes and fetches on a background thread while the worker computes (``worker.overlap``).

    DistBelief ran fetch, compute and push in loosely coupled threads. Here
    the training thread hands each push (and the fetch due at the same
    step) to this helper and goes on with the next minibatch. At most one
    request is in flight: handing over the next one first waits for the
    previous one, so pushes stay in order and memory stays bounded. Fetched
    parameters are assigned by the training thread at its next step
    boundary (``take_fetched``), so with overlap the weights a step computes
    with may be one or two steps older than without it; the pushes still
    name the version their oldest gradient was computed from. Errors of the
    background calls surface in the training thread, at the next hand-over
    or at ``wait``. The fetch due at the last step is skipped (nothing would
    use it), and the ack logged at a step is the previous push's. Not with
    the ``bounded`` or ``dc_asgd`` staleness policies (the config refuses
    it): both take the moment of a Fetch as the moment the worker starts
    computing from it.
    """

    def __init__(self, client: ParameterClient | ShardedClient):
        self._client = client
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._fetched: tuple[int, tuple[TensorSpec, ...], np.ndarray] | None = None
        self._lock = threading.Lock()  # Guards _fetched between the two threads.
        self.ack = None

    def submit(
        self, grad: np.ndarray | None, base_version: Version, step: int, fetch: bool
    ) -> None:
        """Starts a push of ``grad`` (if any), then a fetch (if ``fetch``), in the background."""
        self.wait()

        def run():
            try:
                if grad is not None:
                    self.ack = self._client.push(grad, base_version, client_step=step)
                if fetch:
                    fetched = self._client.fetch()
                    with self._lock:
                        self._fetched = fetched
            except BaseException as e:  # Re-raised in the training thread.
                self._error = e

        self._thread = threading.Thread(target=run, name="gasgd-sync", daemon=True)
        self._thread.start()

    def take_fetched(self) -> tuple[int, tuple[TensorSpec, ...], np.ndarray] | None:
        """The parameters fetched since the last call, if any (does not wait)."""
        with self._lock:
            fetched, self._fetched = self._fetched, None
        return fetched

    def wait(self) -> None:
        """Waits for the request in flight; raises its error, if it failed."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error


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


def join(
    client: ParameterClient | ShardedClient,
    sync: VariableSync,
    timeout_secs: float,
    initial: Callable[[], np.ndarray] | None = None,
) -> tuple[Version, int]:
    """Registers, offers initial weights if the server has none, and fetches.

    Args:
      client: A client of the server.
      sync: The replica's variables, which receive the fetched parameters.
      timeout_secs: How long to wait for the server to accept connections.
      initial: Returns the flat weights to offer (called only when the
        server needs them); default: the variables' current values.

    Returns:
      The version of the fetched parameters, and the step of this client
      id's last push the server has applied (0 for a new client; more when
      this worker resumes a run or was restarted).
    """
    client.wait_for_server(timeout_secs)
    reg = client.register(sync.specs)
    if not reg.initialized:
        offer = sync.read() if initial is None else initial()
        accepted, _ = client.initialize(sync.specs, offer)
        log.info("%s initialization offer %s", client.client_id, "accepted" if accepted else "lost")
    version, _, flat = client.fetch()
    sync.assign(flat)
    return version, reg.last_step


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
    device = devices.configure(
        cluster.local_rank(os.environ, default=task_index),
        config.worker.cpu_threads,
        share_gpus=config.worker.share_gpus,
    )
    name = client_id(task_index)
    model = build(config)
    # Each replica sees its own dropout masks and data order.
    keras.utils.set_random_seed(config.seed * 1000 + task_index + 1)
    optimizer = keras.optimizers.SGD(
        learning_rate=config.worker.learning_rate, momentum=config.worker.momentum
    )
    if config.worker.precision == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    # n_push = 1: every step's gradient is pushed as it is; no accumulator.
    direct = address is not None and config.n_push == 1
    step_fn = TrainStep(
        model,
        optimizer,
        jit_compile=config.worker.jit_compile,
        accumulate=address is not None,
        return_gradient=direct,
    )
    sync = VariableSync(model.trainable_variables)
    writer = MetricWriter(os.path.join(workdir, "tb", name))
    progress_file = progress.progress_path(workdir, name)

    def batches(start_step: int):
        return iter(
            pipeline.train_dataset(
                config.data, config.batch_size, seed=data_seed(config, task_index, start_step)
            )
        )

    data = batches(0)
    client = connect(config, address, name) if address is not None else None
    step_fn.warm_up(*next(data))
    initial = None
    if config.warm_start:
        initial = functools.partial(warm_start_weights, config.warm_start, sync.specs, name)
    start_step = 0
    if client is not None:
        base_version, start_step = join(client, sync, config.client.connect_timeout_secs, initial)
        start_step = min(start_step, config.num_steps)
        client.start_heartbeats(config.client.heartbeat_secs)
    else:
        base_version = 0
        if initial is not None:
            sync.assign(initial())
    if start_step:
        data = batches(start_step)  # Not the batches of the first start again.
    resumed = f"; resuming after step {start_step}" if start_step else ""
    print(
        f"{name}: {model.count_params():,} parameters on {device}; "
        f"joined at version {version_number(base_version)}{resumed}",
        flush=True,
    )

    def recover(error: ServerRestartedError) -> Version:
        """After a server restart: the current parameters, dropping what was computed before."""
        version, _, flat = client.fetch()
        sync.assign(flat)
        print(
            f"{name}: the server was restored to an earlier version ({error}); this push is "
            f"lost; fetched version {version_number(version)} and going on",
            flush=True,
        )
        return version

    pushes = fetches = pushes_lost = 0
    ack = None
    # The version the oldest gradient in the accumulator was computed from:
    # with n_fetch < n_push a fetch lands between pushes, and the push must
    # not claim the newer version for gradients computed before it.
    push_base = base_version  # Set again at the first step of every push window.
    start = window_start = time.perf_counter()
    window_images = 0
    loss = accuracy = images_per_sec = float("nan")
    background = BackgroundSync(client) if config.worker.overlap and client else None
    # True when the accumulator is empty: the next step's gradient is the
    # oldest of the next push, so that push's base is the version the
    # weights have at that step (with overlap, fetched weights arrive at a
    # later step boundary than the fetch was asked for).
    fresh = True
    step = start_step
    for step in range(start_step + 1, config.num_steps + 1):
        if background is not None and (fetched := background.take_fetched()) is not None:
            base_version, _, flat = fetched
            sync.assign(flat)
        if fresh:
            push_base, fresh = base_version, False
        images, labels = next(data)
        step_grad = step_fn(images, labels)
        window_images += config.batch_size
        last = step == config.num_steps
        pushed = client is not None and (step % config.n_push == 0 or last)
        # Nothing would use a fetch at the last step (with or without overlap).
        fetch_due = client is not None and step % config.n_fetch == 0 and not last
        if background is not None:
            if pushed or fetch_due:
                grad = (step_grad if direct else step_fn.take_gradient()) if pushed else None
                try:
                    background.submit(grad, push_base, step, fetch=fetch_due)
                    pushes += int(pushed)
                    fetches += int(fetch_due)
                    ack = background.ack or ack
                except ServerRestartedError as e:  # The previous push, refused.
                    # What was computed since came from the same lost weights: drop it too.
                    if not pushed and not direct:
                        step_fn.take_gradient()
                    pushes -= 1
                    pushes_lost += 1 + int(pushed)
                    base_version, fresh = recover(e), True
        else:
            if pushed:
                grad = step_grad if direct else step_fn.take_gradient()
                try:
                    ack = client.push(grad, push_base, client_step=step)
                    pushes += 1
                except ServerRestartedError as e:
                    pushes_lost += 1
                    base_version, fresh, fetch_due = recover(e), True, False
            if fetch_due:
                base_version, _, flat = client.fetch()
                sync.assign(flat)
                fetches += 1
        if pushed:
            fresh = True
        if step % config.worker.log_every_steps == 0 or last:
            loss, accuracy = step_fn.take_metrics()
            now = time.perf_counter()
            images_per_sec = window_images / max(now - window_start, 1e-9)
            window_start, window_images = now, 0
            server_version = ack.version if ack else version_number(base_version)
            writer.scalars(
                {
                    "train/loss": loss,
                    "train/accuracy": accuracy,
                    "train/images_per_sec": images_per_sec,
                    "train/server_version": server_version,
                    "train/staleness": ack.staleness if ack else 0,
                },
                step,
            )
            print(
                f"{name}: step {step}/{config.num_steps}, loss {loss:.4f}, "
                f"accuracy {accuracy:.4f}, {images_per_sec:.0f} images/s, "
                f"server version {server_version}",
                flush=True,
            )
            progress.write_json(
                progress_file,
                {
                    "step": step,
                    "num_steps": config.num_steps,
                    "loss": loss,
                    "accuracy": accuracy,
                    "images_per_sec": images_per_sec,
                    "server_version": server_version,
                    "done": False,
                },
            )
    if background is not None:
        try:
            background.wait()  # The last push lands before Leave.
        except ServerRestartedError as e:
            pushes, pushes_lost = pushes - 1, pushes_lost + 1
            print(f"{name}: the last push was lost to a server restart ({e})", flush=True)
        ack = background.ack or ack
    final_version = base_version
    if client is not None:
        final_version = client.leave()
        client.close()
    wall = time.perf_counter() - start
    result = WorkerResult(
        steps=config.num_steps - start_step,
        pushes=pushes,
        fetches=fetches,
        final_version=final_version,
        loss=loss,
        accuracy=accuracy,
        images_per_sec=(config.num_steps - start_step) * config.batch_size / wall,
        wall_secs=wall,
        pushes_lost=pushes_lost,
        resumed_from_step=start_step,
    )
    progress.write_json(
        progress_file,
        {**dataclasses.asdict(result), "step": step, "num_steps": config.num_steps, "done": True},
    )
    writer.close()
    print(
        f"{name}: done, {result.steps} steps, {pushes} pushes ({pushes_lost} lost to server "
        f"restarts), {fetches} fetches, "
        f"loss {loss:.4f}, {result.images_per_sec:.0f} images/s",
        flush=True,
    )
    return result
