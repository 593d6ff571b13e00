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

import keras
import numpy as np
import tensorflow as tf

from gasgd_tf import addresses, codecs, config_base
from gasgd_tf.client import make_client
from gasgd_tf.keras_sync import GradientSums, VariableSync
from gasgd_tf.replica import (
    DeltaTracker,
    ModelMismatchError,
    ReplicaSession,
    SessionStats,
    SyncSchedule,
)
from gasgd_tf.replica.streaming import FragmentStream, StreamingPlan
from gasgd_tf.security import Credentials
from gasgd_tf.server import ParameterServer, ParameterStore, make_optimizer
from gasgd_tf.server.rounds import RoundState
from gasgd_tf.tensors import WIRE_DTYPES

log = logging.getLogger(__name__)

LOCAL = "local"
# The command-line defaults (deadlines, dtypes, the server's learning rate):
# one source for both ways of running a worker.
_DEFAULT = config_base.defaults()


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


def _check_remote(server: object, **local_only) -> None:
    """Refuses a remote ``server`` address without a port, or with local-server options."""
    if not isinstance(server, str) or not server.strip():
        raise ValueError(f"server must be 'host:port', None or 'local', got {server!r}")
    addresses.parse_list(server, where="server")  # The CLI's rule: names what is wrong.
    given = [name for name, value in local_only.items() if value is not None]
    if given:
        raise ValueError(
            f"{', '.join(given)} configure a local server (server=None); the server at "
            f"{server} has its own (set with --config.ps.* when starting it)"
        )


def _one_of(name: str, value: str | None, choices: tuple[str, ...]) -> str:
    """``value`` if it is one of ``choices``; None: the first (the default)."""
    if value is None:
        return choices[0]
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


def _server_modes(
    aggregation: str | None, local_steps: str | None, n_push: int, n_fetch: int
) -> tuple[str, str]:
    """The local server's aggregation and local-steps modes, checked (None: the defaults)."""
    aggregation = _one_of("aggregation", aggregation, config_base.AGGREGATIONS)
    local_steps = _one_of("local_steps", local_steps, config_base.LOCAL_STEPS)
    if aggregation == "round" and n_push != n_fetch:
        raise ValueError("aggregation='round' needs n_push == n_fetch (a round is both)")
    return aggregation, local_steps


def _client_arguments(
    timeout_secs, retry_secs, push_dtype, fetch_dtype, split_bytes, credentials, push_codec
) -> dict:
    """``make_client``'s keyword arguments, checked."""
    for name, dtype in (("push_dtype", push_dtype), ("fetch_dtype", fetch_dtype)):
        if dtype not in WIRE_DTYPES:
            raise ValueError(f"{name} must be one of {WIRE_DTYPES}, got {dtype!r}")
    _one_of("push_codec", push_codec, codecs.CODECS)
    if push_codec != "none" and push_dtype != "float32":
        raise ValueError(f"push_codec={push_codec!r} needs push_dtype='float32'")
    return dict(
        push_codec=push_codec,
        split_bytes=split_bytes,
        timeout_secs=_positive_float("timeout_secs", timeout_secs),
        retry_secs=_positive_float("retry_secs", retry_secs),
        push_dtype=push_dtype,
        fetch_dtype=fetch_dtype,
        credentials=credentials,
    )


def _innermost(optimizer: keras.optimizers.Optimizer) -> keras.optimizers.Optimizer:
    """The optimizer that receives unscaled gradients (unwraps LossScaleOptimizer)."""
    while isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        optimizer = optimizer.inner_optimizer
    return optimizer


def _streaming_plan(
    fragments, overlap_steps, mix_alpha, push: str, n_push: int, n_fetch: int, overlap: bool
) -> StreamingPlan | None:
    """The callback's streaming plan (None: whole-model syncs); ValueError naming what is wrong."""
    if fragments == 1:
        return None
    if push != "delta" or n_push != n_fetch or overlap:
        raise ValueError(
            f"fragments={fragments} needs push='delta', n_push == n_fetch and overlap=False, "
            f"got push={push!r}, n_push={n_push}, n_fetch={n_fetch}, overlap={overlap}"
        )
    return StreamingPlan(fragments, n_push, overlap_steps, mix_alpha)


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
      overlap: Push and fetch on a background thread while the next steps
        compute, as the command-line worker's ``worker.overlap`` (fetched
        weights arrive a step or two later).
      push: ``"gradient"`` (the raw gradients' sum, captured at the
        optimizer) or ``"delta"``: the parameter delta after ``n_push``
        steps of the compiled optimizer (the inner one, as in DiLoCo),
        which the server's optimizer applies as a gradient (the outer
        step); the server must be set to the same kind.
      connect_timeout_secs: How long to wait for the server to accept
        connections at the start of ``fit``.
      timeout_secs: Deadline of each attempt of each call.
      retry_secs: How long unreachable-server failures are retried.
      heartbeat_secs: Heartbeat interval, so that a worker computing for
        long between pushes is not expired.
      push_dtype: The dtype gradients travel in: float32, bfloat16 or float16.
      fetch_dtype: The dtype parameters travel in (the same choices).
      push_codec: ``"none"``, ``"int8"``, ``"int4"`` or ``"topk"``: pushes
        travel encoded, with error feedback (``client.push_codec``; the
        block size and top-k share are the config's defaults).
      fragments: Streaming fragment sync (``sync.fragments``; Streaming
        DiLoCo): above 1, the model is cut into this many fragments and
        fragment f syncs alone every ``n_push`` steps at offset
        f * n_push / fragments. Needs ``push="delta"``, ``n_push ==
        n_fetch`` and no ``overlap``.
      overlap_steps: With fragments: local steps a fragment's fetch
        overlaps before it is merged (``sync.overlap_steps``, < n_push).
      mix_alpha: With fragments: the merge keeps ``mix_alpha`` of the
        local values (``sync.mix_alpha``).
      shard_split_bytes: For a sharded server: the ``ps.shard_split_bytes``
        every other worker uses.
      server_optimizer: Local server only: its optimizer, ``"sgd"``,
        ``"adagrad"``, ``"adadelta"``, ``"rmsprop"`` or ``"adam"``.
      server_learning_rate: Local server only: its learning rate (default
        0.05, the command-line server's).
      server_options: Local server only: more hyperparameters of its
        optimizer, for example ``{"momentum": 0.9}``. DiLoCo's outer
        optimizer: ``server_optimizer="sgd"``, learning rate 0.7,
        ``{"momentum": 0.9, "nesterov": True}``; asynchronous DiLoCo's:
        ``server_optimizer="delayed_nesterov"`` with ``{"momentum": 0.9,
        "dn_period": <workers>}``.
      aggregation: Local server only: ``"each"`` (default: every push is an
        update) or ``"round"`` (synchronous rounds, ``ps.aggregation``; needs
        ``n_push == n_fetch``).
      local_steps: Local server only: ``"fixed"`` (default) or
        ``"adaptive"``: the server tells each worker its H from its speed
        (``worker.local_steps``), ``n_push`` for the fastest. A callback
        joining a remote server follows the H that server plans, if any.
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
        overlap: bool = False,
        push: str = "gradient",
        connect_timeout_secs: float = _DEFAULT.client.connect_timeout_secs,
        timeout_secs: float = _DEFAULT.client.timeout_secs,
        retry_secs: float = _DEFAULT.client.retry_secs,
        heartbeat_secs: float = _DEFAULT.client.heartbeat_secs,
        push_dtype: str = _DEFAULT.client.push_dtype,
        fetch_dtype: str = _DEFAULT.client.fetch_dtype,
        push_codec: str = _DEFAULT.client.push_codec,
        fragments: int = _DEFAULT.sync.fragments,
        overlap_steps: int = _DEFAULT.sync.overlap_steps,
        mix_alpha: float = _DEFAULT.sync.mix_alpha,
        shard_split_bytes: int = _DEFAULT.ps.shard_split_bytes,
        server_optimizer: str | None = None,
        server_learning_rate: float | None = None,
        server_options: dict | None = None,
        aggregation: str | None = None,
        local_steps: str | None = None,
        listen: str | None = None,
        keep_server: bool | None = None,
        verbose: bool = True,
    ):
        super().__init__()
        self.n_push = _positive_int("n_push", n_push, "push every n_push steps")
        self.n_fetch = _positive_int("n_fetch", n_fetch, "fetch every n_fetch steps")
        self.local = server is None or server == LOCAL
        if not self.local:
            _check_remote(
                server,
                server_optimizer=server_optimizer,
                server_learning_rate=server_learning_rate,
                server_options=server_options,
                aggregation=aggregation,
                local_steps=local_steps,
                listen=listen,
                keep_server=keep_server,
            )
        self.client_id = client_id or f"keras_{os.getpid()}"
        self.credentials = credentials
        self.fetch_on_end = bool(fetch_on_end)
        self.connect_timeout_secs = _positive_float("connect_timeout_secs", connect_timeout_secs)
        self.heartbeat_secs = _positive_float("heartbeat_secs", heartbeat_secs)
        self.overlap = bool(overlap)
        if push not in config_base.PUSH_KINDS:
            raise ValueError(f"push must be one of {config_base.PUSH_KINDS}, got {push!r}")
        self.push = push
        self._streaming = _streaming_plan(
            fragments, overlap_steps, mix_alpha, push, self.n_push, self.n_fetch, self.overlap
        )
        self._client_args = _client_arguments(
            timeout_secs,
            retry_secs,
            push_dtype,
            fetch_dtype,
            shard_split_bytes,
            credentials,
            push_codec,
        )
        self.verbose = verbose
        self._server_optimizer = server_optimizer or "sgd"
        self._server_hparams = {
            "learning_rate": _DEFAULT.ps.learning_rate
            if server_learning_rate is None
            else server_learning_rate,
            **(server_options or {}),
        }
        self._aggregation, self._local_steps = _server_modes(
            aggregation, local_steps, self.n_push, self.n_fetch
        )
        if self.local:
            make_optimizer(self._server_optimizer, **self._server_hparams)  # Fails early.
        self._listen = listen or "127.0.0.1:0"
        self.keep_server = bool(keep_server)
        self._address = None if self.local else server.strip()
        self.server: ParameterServer | None = None
        self._stop_finalizer: weakref.finalize | None = None
        if self.local:
            self.start_server()

        self._session: ReplicaSession | None = None
        self._sums: GradientSums | None = None
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
            optimizer = make_optimizer(self._server_optimizer, **self._server_hparams)
            rounds = None
            if self._aggregation == "round":
                rounds = RoundState(_DEFAULT.ps.round_quorum, _DEFAULT.ps.round_timeout_secs)
            store = ParameterStore(
                optimizer,
                push_kind=self.push,
                rounds=rounds,
                max_local_steps=self.n_push if self._local_steps == "adaptive" else None,
            )
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
        self._stats = SessionStats()
        self._epoch_base = 0
        self._first_epoch: int | None = None
        self._hook_traced = False

    # The counters of the last fit, from its session (they outlive it).
    pushes = property(lambda self: self._stats.pushes, doc="Pushes the server applied.")
    fetches = property(lambda self: self._stats.fetches, doc="Fetches after the join.")
    pushes_lost = property(
        lambda self: self._stats.pushes_lost, doc="Pushes lost to server restarts."
    )
    version = property(lambda self: self._stats.version, doc="The server version last seen.")
    staleness = property(lambda self: self._stats.staleness, doc="The last push's staleness.")
    max_staleness = property(
        lambda self: self._stats.max_staleness, doc="The largest staleness of a push."
    )

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
        sums = self._sums

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
                if grad is not None and i is not None:  # Else not one of the model's.
                    sums.add(i, grad, scale)
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

    def _open_session(self, variables: list) -> ReplicaSession:
        """Connects, joins (register, offer the weights, fetch) and starts heartbeats."""
        weights = VariableSync(variables)
        client = make_client(self._address, self.client_id, **self._client_args)
        stream = None
        if self._streaming is not None:  # Each fragment's delta, on its own schedule.
            stream, take_update = FragmentStream(client, weights, self._streaming), None
        elif self.push == "delta":  # The model's own optimizer is the inner one.
            weights = DeltaTracker(weights)
            take_update = weights.take
        else:
            self._sums = GradientSums(variables)
            take_update = self._sums.take
        session = ReplicaSession(
            client,
            weights,
            SyncSchedule(self.n_push, self.n_fetch),
            take_update,
            overlap=self.overlap,
            push_kind=self.push,
            model_name=f"model {self.model.name!r}",
            stream=stream,
        )
        self._session, self._stats = session, session.stats
        # client_step goes on from an earlier fit, whose steps counted from 0 too.
        session.step_offset = session.join(
            self.connect_timeout_secs, heartbeat_secs=self.heartbeat_secs
        )
        return session

    def _close_session(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None

    def _teardown(self) -> None:
        """Restores the optimizer, closes the client and stops a local server not kept."""
        self._remove_hook()
        self._close_session()
        self._sums = None
        if self.local and not self.keep_server:
            self.stop_server()

    def close(self) -> None:
        """Releases everything, the local server included (also after a failed ``fit``).

        Keras skips ``on_train_end`` when ``fit`` raises (a data error,
        Ctrl-C): then the optimizer stays hooked and the connection open
        until this is called. ``with AsyncSGD(...) as sync:`` calls it.
        """
        if self._session is not None:  # fit failed before on_train_end: leave, briefly.
            self._session.transport.close()  # No push in flight lands after the Leave.
            client = self._session.client
            for c in getattr(client, "clients", [client]):
                c.retry_secs, c.timeout_secs = min(c.retry_secs, 1.0), min(c.timeout_secs, 5.0)
            try:
                self._session.leave()
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
            self._open_session(variables)
            if self.push == "gradient":
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
        self._close_session()

    def on_epoch_begin(self, epoch: int, logs=None) -> None:
        if self._first_epoch is None:
            self._first_epoch = epoch
            if self._session is not None:  # Now fit's length is known: no fetch at its end.
                schedule = self._session.schedule
                self._session.schedule = schedule.with_num_steps(self._total_steps())
        self._epoch_base = self.steps

    def on_train_batch_begin(self, batch: int, logs=None) -> None:
        if self._session is not None:
            self._guarded(self._session.before_step)

    def on_train_batch_end(self, batch: int, logs=None) -> None:
        if self._session is None:
            return
        # ``batch`` is the last step of this execution within the epoch
        # (several with steps_per_execution > 1); the schedule counts the
        # multiples of n_push and n_fetch the step count crosses.
        steps = (self.params or {}).get("steps")
        if steps:  # Keras reports the execution's nominal last step, even past the epoch's end.
            batch = min(batch, steps - 1)
        step = self._epoch_base + batch + 1
        if step <= self.steps:
            return
        if self.push == "gradient" and not self._hook_traced and not self.model.run_eagerly:
            self._teardown()
            raise RuntimeError(
                f"the train step of model {self.model.name!r} never called its optimizer's "
                "apply or apply_gradients, so AsyncSGD saw no gradient: a custom train_step "
                "must apply its gradients through self.optimizer"
            )
        self.steps = step
        self._guarded(self._session.after_step, step)

    def _guarded(self, call, *args) -> None:
        """Runs ``call``; on any error, tears down (Keras skips on_train_end) and re-raises."""
        try:
            call(*args)
        except BaseException:
            self._teardown()
            raise

    def on_train_end(self, logs=None) -> None:
        session = self._session
        if session is None:
            return
        try:
            session.finish()  # Pushes what the last steps computed, if not pushed yet.
            if self.fetch_on_end:
                session.fetch()
            session.leave()
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
