"""Keras-native A-SGD: train any compiled Keras model with ``fit`` against a parameter server.

Usage::

    model.compile(optimizer="sgd", loss=..., metrics=[...])
    sync = gasgd_tf.AsyncSGD(server="ps-host:50051", n_push=10, n_fetch=10)
    model.fit(dataset, epochs=3, callbacks=[sync])
    print(sync.pushes, sync.fetches, sync.version)

The callback makes ``fit`` one A-SGD worker with the semantics of the
command-line worker (``gasgd_tf/worker.py``): every step the model computes
a gradient on its batch and the user's own optimizer applies it locally;
the callback adds the same gradient to an accumulator. Every ``n_push``
steps it pushes the accumulated sum to the parameter server, naming the
version the oldest gradient in it was computed from; every ``n_fetch``
steps it replaces the model's weights with the server's. When both fall on
one step it pushes first. At the end of ``fit`` it pushes what is left and
leaves. The loss, metrics, optimizer and ``train_step`` are the user's.
Steps count across epochs; with ``steps_per_execution`` > 1 the callback
runs once per execution, so a push or fetch falls at the end of the
execution that contains its step.

How the gradient is captured: a Keras 3 callback never sees gradients, so
for the duration of ``fit`` the callback wraps the ``apply`` method of the
model's optimizer (of the inner optimizer of a ``LossScaleOptimizer``). Both
``apply_gradients`` and a custom ``train_step``'s ``optimizer.apply`` end
there, inside the compiled train step, so the accumulation is a few
``assign_add`` ops in the same graph (no host round trip per step). What is
accumulated is the gradient the optimizer was given, unscaled: divided by
``loss_scale_factor`` when set; under ``LossScaleOptimizer`` the inner
optimizer receives unscaled gradients, and steps it skips (non-finite
gradients) add nothing. It is taken before the optimizer's clipping, weight
decay and ``gradient_accumulation_steps`` averaging: those shape the local
updates only, and the server receives the sum of every batch's gradient, as
from a command-line worker. The callback retraces ``fit``'s train function
with the wrapper at the start and drops it at the end, so later ``fit`` or
``evaluate`` calls run the user's model untouched.

Not supported, refused with an error at the start of ``fit``: backends other
than TensorFlow; models not compiled with an optimizer; distribution
strategies with more than one replica; trainable variables that are not
float32 (mixed precision policies keep float32 variables and are fine);
variables whose optimizer overwrites them with their gradient (float8
training). A ``train_step`` that never calls the optimizer's ``apply`` or
``apply_gradients`` is refused after the first step.

Several workers: start the server once, ``python -m gasgd_tf.main
--role=ps`` (or ``AsyncSGD(server=None, keep_server=True)`` in one process,
whose ``.address`` the others use), and give every worker process its
address and its own ``client_id``.
"""

from __future__ import annotations

import logging
import os
import weakref

import grpc
import keras
import numpy as np
import tensorflow as tf

from gasgd_tf import sharding
from gasgd_tf.client import (
    ParameterClient,
    RequestRejectedError,
    ServerRestartedError,
    ShardedClient,
    Version,
    make_client,
    version_number,
)
from gasgd_tf.security import Credentials
from gasgd_tf.server import ParameterServer, ParameterStore, make_optimizer
from gasgd_tf.tensors import WIRE_DTYPES, ValidationError, check_same_specs
from gasgd_tf.worker import VariableSync

log = logging.getLogger(__name__)

LOCAL = "local"
# The command-line parameter server's default learning rate (config.ps.learning_rate).
DEFAULT_SERVER_LEARNING_RATE = 0.05


class ModelMismatchError(ValueError):
    """The model's trainable variables differ from the parameters the server holds."""


def _positive_int(name: str, value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer ({what}), got {value!r}")
    return int(value)


def _positive_float(name: str, value: object) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number of seconds, got {value!r}") from None
    if not number > 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    return number


def _innermost(optimizer: keras.optimizers.Optimizer) -> keras.optimizers.Optimizer:
    """The optimizer that receives unscaled gradients (unwraps LossScaleOptimizer)."""
    while isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        optimizer = optimizer.inner_optimizer
    return optimizer


class AsyncSGD(keras.callbacks.Callback):
    """Makes ``model.fit`` an asynchronous SGD worker of a parameter server.

    Args:
      server: ``host:port`` of the parameter server (several separated by
        commas for a sharded one, in shard order); None or ``"local"``:
        start one in this process, listening on ``listen``, at ``.address``.
      n_push: Push the accumulated gradient every ``n_push`` steps.
      n_fetch: Replace the model's weights with the server's every
        ``n_fetch`` steps (not at the last step, when ``fit`` says which it
        is: nothing would use it).
      client_id: This worker's identity on the server, unique per worker
        process; default ``"keras_<pid>"``.
      credentials: Bearer token and/or TLS for a remote server
        (``gasgd_tf.security.Credentials``); None: plaintext, no token.
      fetch_on_end: After the last push, fetch the server's weights into the
        model, so that the model after ``fit`` holds the shared parameters
        (the command-line worker keeps its local ones: False).
      connect_timeout_secs: How long to wait for the server to accept
        connections at the start of ``fit``.
      timeout_secs: Deadline of each attempt of each call.
      retry_secs: How long unreachable-server failures are retried.
      heartbeat_secs: Heartbeat interval, so that a worker computing for
        long between pushes is not expired.
      push_dtype: The dtype gradients travel in: float32, bfloat16 or float16.
      fetch_dtype: The dtype parameters travel in (the same choices).
      shard_split_bytes: For a sharded server: the ``ps.shard_split_bytes``
        every other worker uses.
      server_optimizer: Local server only: its optimizer, ``"sgd"``,
        ``"adagrad"``, ``"adadelta"``, ``"rmsprop"`` or ``"adam"``.
      server_learning_rate: Local server only: its learning rate (default
        0.05, the command-line server's).
      server_options: Local server only: more hyperparameters of its
        optimizer, for example ``{"momentum": 0.9}``.
      listen: Local server only: where it listens (``"0.0.0.0:0"`` to be
        reachable from other machines; port 0 picks a free port).
      keep_server: Local server only: keep serving after ``fit`` (for other
        workers, or a later ``fit``); stop it with ``stop_server()``.
      verbose: Print a line when joining and when done.

    Attributes (counters of the last ``fit``, readable after it):
      steps: Training steps seen.
      pushes: Pushes the server applied.
      fetches: Fetches of the server's weights (not counting the one when
        joining).
      pushes_lost: Pushes refused because the server was restored from a
        checkpoint to an earlier version meanwhile; the worker fetched the
        current weights and went on.
      version: The server's version last seen (after the last push, fetch
        or the leave at the end).
      staleness: The staleness of the last push (server updates between the
        version it was computed from and its own).
      max_staleness: The largest staleness of a push.

    Raises:
      ValueError: Bad arguments (named), at construction.

    ``fit`` raises, at its start: ``ServerUnavailableError`` naming the
    address when the server does not answer within ``connect_timeout_secs``;
    ``ModelMismatchError`` naming a tensor when the model's variables differ
    from the server's; ``ValueError`` or ``RuntimeError`` for what is not
    supported (see the module docstring). During training:
    ``ServerUnavailableError`` or ``RequestRejectedError`` (a non-finite
    gradient, say). Either way the optimizer is restored and the connection
    closed; ``close()`` also stops a local server.
    """

    def __init__(
        self,
        server: str | None = None,
        n_push: int = 1,
        n_fetch: int = 1,
        *,
        client_id: str | None = None,
        credentials: Credentials | None = None,
        fetch_on_end: bool = False,
        connect_timeout_secs: float = 60.0,
        timeout_secs: float = 60.0,
        retry_secs: float = 30.0,
        heartbeat_secs: float = 10.0,
        push_dtype: str = "float32",
        fetch_dtype: str = "float32",
        shard_split_bytes: int = sharding.DEFAULT_SPLIT_BYTES,
        server_optimizer: str | None = None,
        server_learning_rate: float | None = None,
        server_options: dict | None = None,
        listen: str | None = None,
        keep_server: bool | None = None,
        verbose: bool = True,
    ):
        super().__init__()
        self.n_push = _positive_int("n_push", n_push, "push every n_push steps")
        self.n_fetch = _positive_int("n_fetch", n_fetch, "fetch every n_fetch steps")
        self.local = server is None or server == LOCAL
        local_only = {
            "server_optimizer": server_optimizer,
            "server_learning_rate": server_learning_rate,
            "server_options": server_options,
            "listen": listen,
            "keep_server": keep_server,
        }
        if not self.local:
            if not isinstance(server, str) or not server.strip():
                raise ValueError(f"server must be 'host:port', None or 'local', got {server!r}")
            for part in server.split(","):
                if ":" not in part.strip():
                    raise ValueError(
                        f"server address {part.strip()!r} has no port: give host:port "
                        f"(got server={server!r})"
                    )
            given = [name for name, value in local_only.items() if value is not None]
            if given:
                raise ValueError(
                    f"{', '.join(given)} configure a local server (server=None); the server at "
                    f"{server} has its own (set with --config.ps.* when starting it)"
                )
        self.client_id = client_id or f"keras_{os.getpid()}"
        self.credentials = credentials
        self.fetch_on_end = bool(fetch_on_end)
        self.connect_timeout_secs = _positive_float("connect_timeout_secs", connect_timeout_secs)
        self.heartbeat_secs = _positive_float("heartbeat_secs", heartbeat_secs)
        self._client_args = dict(
            split_bytes=shard_split_bytes,
            timeout_secs=_positive_float("timeout_secs", timeout_secs),
            retry_secs=_positive_float("retry_secs", retry_secs),
            push_dtype=push_dtype,
            fetch_dtype=fetch_dtype,
            credentials=credentials,
        )
        for name, dtype in (("push_dtype", push_dtype), ("fetch_dtype", fetch_dtype)):
            if dtype not in WIRE_DTYPES:
                raise ValueError(f"{name} must be one of {WIRE_DTYPES}, got {dtype!r}")
        self.verbose = verbose
        self._server_optimizer = server_optimizer or "sgd"
        self._server_hparams = {
            "learning_rate": DEFAULT_SERVER_LEARNING_RATE
            if server_learning_rate is None
            else server_learning_rate,
            **(server_options or {}),
        }
        if self.local:
            make_optimizer(self._server_optimizer, **self._server_hparams)  # Fails early.
        self._listen = listen or "127.0.0.1:0"
        self.keep_server = bool(keep_server)
        self._address = None if self.local else server.strip()
        self.server: ParameterServer | None = None
        self._stop_finalizer: weakref.finalize | None = None
        if self.local:
            self.start_server()

        self._client: ParameterClient | ShardedClient | None = None
        self._sync: VariableSync | None = None
        self._hooked: keras.optimizers.Optimizer | None = None
        self._reset_counters()

    # -- The local server ----------------------------------------------------

    @property
    def address(self) -> str:
        """The server's host:port (comma-separated shards): what other workers connect to."""
        return self._address

    def start_server(self) -> str:
        """Starts the local parameter server if it is not running; returns its address.

        Raises:
          RuntimeError: This callback joins a remote server.
          OSError: It cannot listen on ``listen``.
        """
        if not self.local:
            raise RuntimeError(f"this AsyncSGD joins the server at {self._address}: none to start")
        if self.server is None:
            store = ParameterStore(make_optimizer(self._server_optimizer, **self._server_hparams))
            self.server = ParameterServer(store, self._listen).start()
            self._address = self.server.address
            # Stopped at interpreter exit if nobody stops it before.
            self._stop_finalizer = weakref.finalize(self, self.server.stop, None)
            log.info("local parameter server listening on %s", self._address)
        return self._address

    def stop_server(self) -> None:
        """Stops the local parameter server (if running); a later ``fit`` starts a fresh one."""
        if self._stop_finalizer is not None:
            self._stop_finalizer()  # Calls server.stop once.
            self._stop_finalizer = None
        self.server = None

    # -- Counters --------------------------------------------------------------

    def _reset_counters(self) -> None:
        self.steps = 0
        self.pushes = 0
        self.fetches = 0
        self.pushes_lost = 0
        self.version = 0
        self.staleness = 0
        self.max_staleness = 0
        self._base_version: Version = 0  # Of the weights the model computes with.
        self._push_base: Version = 0  # Of the oldest gradient in the accumulator.
        self._unpushed = 0  # Steps accumulated since the last push.
        self._epoch_base = 0
        self._first_epoch: int | None = None
        self._step_offset = 0
        self._hook_traced = False

    @property
    def stats(self) -> dict[str, int]:
        """The counters as a dict."""
        names = ("steps", "pushes", "fetches", "pushes_lost", "version", "staleness")
        return {name: getattr(self, name) for name in (*names, "max_staleness")}

    # -- Checks and the gradient hook -----------------------------------------

    def _check_model(self, model: keras.Model) -> list:
        if keras.backend.backend() != "tensorflow":
            raise RuntimeError(
                f"AsyncSGD needs the TensorFlow backend of Keras, not {keras.backend.backend()!r} "
                "(set KERAS_BACKEND=tensorflow)"
            )
        if getattr(model, "optimizer", None) is None:
            raise ValueError(
                f"model {model.name!r} has no optimizer: compile it with one before fit"
            )
        strategy = getattr(model, "distribute_strategy", None) or tf.distribute.get_strategy()
        replicas = strategy.num_replicas_in_sync
        if replicas > 1:
            raise ValueError(
                f"AsyncSGD does not support distribution strategies with several replicas "
                f"(this one has {replicas}): run one worker process per device instead"
            )
        variables = list(model.trainable_variables)
        if not variables:
            raise ValueError(f"model {model.name!r} has no trainable variables to train")
        paths = set()
        for v in variables:
            dtype = keras.backend.standardize_dtype(v.dtype)
            if dtype != "float32":
                raise ValueError(
                    f"trainable variable {v.path!r} is {dtype}: AsyncSGD syncs float32 variables "
                    "only (a mixed precision policy such as 'mixed_float16' keeps them float32)"
                )
            if getattr(v, "overwrite_with_gradient", False):
                raise ValueError(
                    f"trainable variable {v.path!r} is overwritten with its gradient "
                    "(overwrite_with_gradient, float8 training): AsyncSGD cannot sync it"
                )
            if v.path in paths:
                raise ValueError(f"two trainable variables are named {v.path!r}")
            paths.add(v.path)
        return variables

    def _install_hook(self, variables: list) -> None:
        """Wraps the optimizer's ``apply`` to add every gradient to the accumulators."""
        optimizer = _innermost(self.model.optimizer)
        if "apply" in vars(optimizer):  # Left by a fit that ended with an exception.
            del optimizer.apply
        original = optimizer.apply
        index = {id(v): i for i, v in enumerate(variables)}
        by_path = {v.path: i for i, v in enumerate(variables)}
        accumulators = self._accumulators

        def apply(grads, trainable_variables=None):
            self._hook_traced = True
            grads = list(grads)
            targets = (
                optimizer._trainable_variables
                if trainable_variables is None
                else list(trainable_variables)
            )
            scale = optimizer.loss_scale_factor
            for grad, var in zip(grads, targets):
                i = index.get(id(var), by_path.get(getattr(var, "path", None)))
                if grad is None or i is None:  # No gradient, or not one of the model's.
                    continue
                if isinstance(grad, tf.IndexedSlices):  # Embeddings: add the rows only.
                    values = tf.cast(grad.values, tf.float32)
                    if scale is not None:
                        values = values / scale
                    accumulators[i].scatter_add(
                        tf.IndexedSlices(values, grad.indices, grad.dense_shape)
                    )
                else:
                    grad = tf.cast(grad, tf.float32)
                    if scale is not None:
                        grad = grad / scale
                    accumulators[i].assign_add(grad)
            return original(grads, trainable_variables)

        optimizer.apply = apply
        self._hooked = optimizer
        # fit made its train function before on_train_begin; trace a new one
        # that runs the wrapper (fit calls model.train_function every step).
        self.model.make_train_function(force=True)

    def _remove_hook(self) -> None:
        if self._hooked is not None:
            if "apply" in vars(self._hooked):
                del self._hooked.apply
            self._hooked = None
            # The next fit traces its train function again, without the wrapper.
            self.model.train_function = None

    # -- Talking to the server ----------------------------------------------

    def _join(self, sync: VariableSync) -> None:
        """Registers, offers the model's weights if the server has none, fetches them."""
        client, address = self._client, self._address
        client.wait_for_server(self.connect_timeout_secs)
        try:
            reg = client.register(sync.specs)
        except RequestRejectedError as e:
            if e.code == grpc.StatusCode.INVALID_ARGUMENT:
                raise ModelMismatchError(
                    f"model {self.model.name!r} does not match the parameters on the server at "
                    f"{address} ({e}); every worker must build the same model: the same "
                    "variable names (Keras paths), shapes and order"
                ) from None
            raise
        self._step_offset = reg.last_step  # client_step goes on from an earlier fit.
        if not reg.initialized:
            accepted, _ = client.initialize(sync.specs, sync.read())
            log.info(
                "%s: initialization offer %s", self.client_id, "accepted" if accepted else "lost"
            )
        version, specs, flat = client.fetch()
        try:  # Another worker may have initialized the server first, with another model.
            check_same_specs(specs, sync.specs)
        except ValidationError as e:
            raise ModelMismatchError(
                f"model {self.model.name!r} does not match the parameters on the server at "
                f"{address}: {e}"
            ) from None
        sync.assign(flat)
        self._base_version = self._push_base = version
        self.version = version_number(version)

    def _fetch(self, count: bool = True) -> None:
        version, _, flat = self._client.fetch()
        self._sync.assign(flat)
        self._base_version = version
        self.version = version_number(version)
        self.fetches += int(count)

    def _push(self, step: int) -> bool:
        """Pushes the accumulated gradient; False if the server had lost its base (refetched)."""
        grad = self._take_gradient().numpy()
        self._unpushed = 0
        try:
            ack = self._client.push(grad, self._push_base, client_step=self._step_offset + step)
        except ServerRestartedError as e:
            self.pushes_lost += 1
            self._fetch(count=False)
            log.warning(
                "%s: the server was restored to an earlier version (%s); this push is lost; "
                "fetched version %d and going on",
                self.client_id,
                e,
                self.version,
            )
            return False
        self.pushes += 1
        self.version, self.staleness = ack.version, ack.staleness
        self.max_staleness = max(self.max_staleness, ack.staleness)
        return True

    def _close_client(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def _teardown(self) -> None:
        """Restores the optimizer, closes the client and stops a local server not kept."""
        self._remove_hook()
        self._close_client()
        self._accumulators = None
        self._sync = None
        if self.local and not self.keep_server:
            self.stop_server()

    def close(self) -> None:
        """Releases everything, the local server included (also after a failed ``fit``).

        Keras skips ``on_train_end`` when ``fit`` raises (a data error,
        Ctrl-C): then the optimizer stays hooked and the connection open
        until this is called. ``with AsyncSGD(...) as sync:`` calls it.
        """
        if self._client is not None:  # fit failed before on_train_end: leave, briefly.
            clients = getattr(self._client, "clients", [self._client])
            for c in clients:
                c.retry_secs, c.timeout_secs = min(c.retry_secs, 1.0), min(c.timeout_secs, 5.0)
            try:
                self._client.leave()
            except Exception as e:  # A dead server: it expires this client anyway.
                log.warning("%s: could not leave the server: %s", self.client_id, e)
        self._teardown()
        self.stop_server()

    def __enter__(self) -> AsyncSGD:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _total_steps(self) -> int | None:
        params = self.params or {}
        steps, epochs = params.get("steps"), params.get("epochs")
        if steps is None or epochs is None or self._first_epoch is None:
            return None
        return steps * (epochs - self._first_epoch)

    # -- Callback methods ------------------------------------------------------

    def on_train_begin(self, logs=None) -> None:
        self._teardown_leftovers()
        self._reset_counters()
        model = self.model
        variables = self._check_model(model)
        if self.local:
            self.start_server()
        try:
            self._sync = VariableSync(variables)
            self._accumulators = [
                tf.Variable(tf.zeros(v.shape, tf.float32), trainable=False) for v in variables
            ]
            accumulators = self._accumulators

            @tf.function
            def take_gradient():
                flat = tf.concat([tf.reshape(a, [-1]) for a in accumulators], axis=0)
                with tf.control_dependencies([flat]):
                    for a in accumulators:
                        a.assign(tf.zeros_like(a))
                return flat

            self._take_gradient = take_gradient
            self._client = make_client(self._address, self.client_id, **self._client_args)
            self._join(self._sync)
            self._client.start_heartbeats(self.heartbeat_secs)
            self._install_hook(variables)
        except BaseException:
            self._teardown()
            raise
        if self.verbose:
            print(
                f"{self.client_id}: joined the parameter server at {self._address} at version "
                f"{self.version} ({model.count_params():,} parameters; push every "
                f"{self.n_push}, fetch every {self.n_fetch} steps)",
                flush=True,
            )

    def _teardown_leftovers(self) -> None:
        """What an earlier fit that raised left behind: the hook and the client."""
        self._remove_hook()
        self._close_client()

    def on_epoch_begin(self, epoch: int, logs=None) -> None:
        if self._first_epoch is None:
            self._first_epoch = epoch
        self._epoch_base = self.steps

    def on_train_batch_end(self, batch: int, logs=None) -> None:
        if self._client is None:
            return
        # ``batch`` is the last step of this execution within the epoch
        # (several with steps_per_execution > 1): a push or fetch falls due
        # when the step count crosses a multiple of n_push or n_fetch.
        steps = (self.params or {}).get("steps")
        if steps:  # Keras reports the execution's nominal last step, even past the epoch's end.
            batch = min(batch, steps - 1)
        step = self._epoch_base + batch + 1
        previous = self.steps
        if step <= previous:
            return
        try:
            if not self._hook_traced and not self.model.run_eagerly:
                raise RuntimeError(
                    f"the train step of model {self.model.name!r} never called its optimizer's "
                    "apply or apply_gradients, so AsyncSGD saw no gradient: a custom train_step "
                    "must apply its gradients through self.optimizer"
                )
            self.steps = step
            self._unpushed += step - previous
            push_due = step // self.n_push > previous // self.n_push
            fetch_due = step // self.n_fetch > previous // self.n_fetch
            if step == self._total_steps():
                fetch_due = False  # Nothing would use it; on_train_end pushes.
            if push_due and not self._push(step):
                fetch_due = False  # The lost push already refetched.
            if fetch_due:
                self._fetch()
            if push_due:  # The next gradient is computed from these weights.
                self._push_base = self._base_version
        except BaseException:
            self._teardown()
            raise

    def on_train_end(self, logs=None) -> None:
        if self._client is None:
            return
        try:
            if self._unpushed:
                self._push(self.steps)
            if self.fetch_on_end:
                self._fetch()
            self.version = version_number(self._client.leave())
        finally:
            self._teardown()
        if self.verbose:
            print(
                f"{self.client_id}: done, {self.steps} steps, {self.pushes} pushes "
                f"({self.pushes_lost} lost to server restarts), {self.fetches} fetches, "
                f"server version {self.version}",
                flush=True,
            )

    def __repr__(self) -> str:
        where = f"local server at {self._address}" if self.local else f"server at {self._address}"
        return f"AsyncSGD({where}, n_push={self.n_push}, n_fetch={self.n_fetch})"


__all__ = ["AsyncSGD", "ModelMismatchError"]
