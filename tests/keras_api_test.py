"""gasgd_tf.AsyncSGD: model.fit as an A-SGD worker, against in-process parameter servers."""

import grpc
import keras
import numpy as np
import pytest
import tensorflow as tf

import gasgd_tf
from gasgd_tf.client import ParameterClient, ServerRestartedError, ServerUnavailableError
from gasgd_tf.server import SGD, ParameterStore
from gasgd_tf.worker import VariableSync

pytestmark = pytest.mark.filterwarnings("ignore:`shuffle=True` was passed:UserWarning")

BATCH = 8


def regression_data(batches: int, seed: int = 0) -> tf.data.Dataset:
    """A learnable problem: y = x @ w + 0.5, with a little noise; no shuffling."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(batches * BATCH, 4)).astype(np.float32)
    w = np.array([[1.0], [-2.0], [0.5], [3.0]], np.float32)
    y = x @ w + 0.5 + 0.01 * rng.normal(size=(len(x), 1)).astype(np.float32)
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(BATCH)


def dense_net(name: str = "net", hidden: int = 8, seed: int = 0) -> keras.Model:
    """Explicit names: the variable paths, which the server checks, do not depend on
    how many layers this process built before."""
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(hidden, activation="tanh", name="hidden"),
            keras.layers.Dense(1, name="out"),
        ],
        name=name,
    )


class Recorder:
    """Records every push (gradient, base version, client step) and fetch of ParameterClient."""

    def __init__(self, monkeypatch, callback=None):
        self.pushes, self.fetch_steps = [], []
        self.callback = callback
        push, fetch = ParameterClient.push, ParameterClient.fetch

        def recording_push(client, grad, base_version, client_step=0, **kwargs):
            self.pushes.append((np.array(grad, copy=True), base_version, client_step))
            return push(client, grad, base_version, client_step, **kwargs)

        def recording_fetch(client, *args, **kwargs):
            self.fetch_steps.append(self.callback.steps if self.callback else None)
            return fetch(client, *args, **kwargs)

        monkeypatch.setattr(ParameterClient, "push", recording_push)
        monkeypatch.setattr(ParameterClient, "fetch", recording_fetch)

    @property
    def gradient_sum(self) -> np.ndarray:
        return np.sum([g for g, _, _ in self.pushes], axis=0)


def flat_gradient(model: keras.Model, loss_fn, x, y) -> np.ndarray:
    with tf.GradientTape() as tape:
        loss = loss_fn(y, model(x, training=True))
    grads = tape.gradient(loss, model.trainable_variables)
    return np.concatenate([g.numpy().ravel() for g in grads])


@pytest.mark.parametrize("local_optimizer", ["sgd", "adam", "loss_scale"])
def test_server_moves_exactly_by_the_pushed_gradients(serve, monkeypatch, local_optimizer):
    store = ParameterStore(SGD(learning_rate=1.0))
    server = serve(store)
    model = dense_net()
    optimizer = {
        "sgd": lambda: keras.optimizers.SGD(0.05),
        "adam": lambda: keras.optimizers.Adam(0.01),
        # The loss is scaled by 2**15 before the gradient: the push must not be.
        "loss_scale": lambda: keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(0.05)),
    }[local_optimizer]()
    model.compile(optimizer=optimizer, loss="mse")
    data = regression_data(6)
    init = VariableSync(model.trainable_variables).read()
    x0, y0 = next(iter(data))
    first_gradient = flat_gradient(model, keras.losses.MeanSquaredError(), x0, y0)

    callback = gasgd_tf.AsyncSGD(server=server.address, n_push=1, n_fetch=1, verbose=False)
    recorder = Recorder(monkeypatch, callback)
    model.fit(data, epochs=1, callbacks=[callback], verbose=0)

    assert len(recorder.pushes) == callback.pushes == store.version == callback.version == 6
    # The first push is the raw gradient of the loss at the initial weights.
    np.testing.assert_allclose(recorder.pushes[0][0], first_gradient, rtol=1e-4, atol=1e-6)
    # Each push is computed from the weights fetched after the previous one.
    assert [base for _, base, _ in recorder.pushes] == list(range(6))
    assert [step for _, _, step in recorder.pushes] == list(range(1, 7))
    assert (callback.staleness, callback.max_staleness, callback.pushes_lost) == (0, 0, 0)
    expected = init - 1.0 * recorder.gradient_sum
    np.testing.assert_allclose(store.snapshot().flat, expected, rtol=1e-5, atol=1e-5)
    # After fit the optimizer and train function are the user's again.
    inner = getattr(model.optimizer, "inner_optimizer", model.optimizer)
    assert "apply" not in vars(inner) and model.train_function is None
    (record,) = store.status().clients
    assert (record.client_id, record.pushes, record.active) == (callback.client_id, 6, False)


class TinyNet(keras.Model):
    """A user-defined subclassed model."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.hidden = keras.layers.Dense(8, activation="relu", name="hidden")
        self.out = keras.layers.Dense(1, name="out")

    def call(self, x):
        return self.out(self.hidden(x))


def pseudo_huber(y_true, y_pred):
    """The user's own loss."""
    return keras.ops.mean(keras.ops.sqrt(1.0 + keras.ops.square(y_true - y_pred)) - 1.0, axis=-1)


class MaxAbsError(keras.metrics.Metric):
    """The user's own metric."""

    def __init__(self, name="max_abs_error", **kwargs):
        super().__init__(name=name, **kwargs)
        self.max = self.add_variable(shape=(), initializer="zeros", name="max")

    def update_state(self, y_true, y_pred, sample_weight=None):
        self.max.assign(keras.ops.maximum(self.max, keras.ops.max(keras.ops.abs(y_true - y_pred))))

    def result(self):
        return self.max


def test_subclassed_model_with_own_loss_and_metric_follows_the_schedule(serve, monkeypatch):
    store = ParameterStore(SGD(learning_rate=0.01))
    server = serve(store)
    keras.utils.set_random_seed(1)
    model = TinyNet(name="tiny")
    model(np.zeros((1, 4), np.float32))  # Builds the layers.
    init = VariableSync(model.trainable_variables).read()
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss=pseudo_huber, metrics=[MaxAbsError()])
    callback = gasgd_tf.AsyncSGD(
        server.address, n_push=5, n_fetch=10, client_id="keras_tiny", verbose=False
    )
    recorder = Recorder(monkeypatch, callback)
    history = model.fit(regression_data(10), epochs=2, callbacks=[callback], verbose=0)

    # 20 steps over 2 epochs: pushes at 5, 10, 15, 20; a fetch when joining
    # (step 0) and at 10, none at the last step 20.
    assert [step for _, _, step in recorder.pushes] == [5, 10, 15, 20]
    assert recorder.fetch_steps == [0, 10]
    # A push names the version its oldest gradient was computed from.
    assert [base for _, base, _ in recorder.pushes] == [0, 0, 2, 2]
    assert callback.stats == {
        "steps": 20,
        "pushes": 4,
        "fetches": 1,
        "pushes_lost": 0,
        "version": 4,
        "staleness": 1,
        "max_staleness": 1,
    }
    assert set(history.history) == {"loss", "max_abs_error"}
    assert len(history.history["max_abs_error"]) == 2
    np.testing.assert_allclose(
        store.snapshot().flat,
        init - 0.01 * recorder.gradient_sum,
        rtol=1e-5,
        atol=1e-6,
    )


class CustomStepNet(TinyNet):
    """A custom train_step that applies its gradients through self.optimizer.apply."""

    def train_step(self, data):
        x, y = data
        with tf.GradientTape() as tape:
            loss = keras.ops.mean(keras.ops.square(y - self(x, training=True)))
        grads = tape.gradient(loss, self.trainable_variables)
        self.optimizer.apply(grads, self.trainable_variables)
        return {"loss": loss}


def test_custom_train_step_pushes_its_gradients(serve, monkeypatch):
    store = ParameterStore(SGD(learning_rate=0.1))
    server = serve(store)
    keras.utils.set_random_seed(2)
    model = CustomStepNet(name="custom")
    model.compile(optimizer=keras.optimizers.SGD(0.05))
    model(np.zeros((1, 4), np.float32))  # Builds the layers.
    init = VariableSync(model.trainable_variables).read()
    callback = gasgd_tf.AsyncSGD(server.address, n_push=3, n_fetch=100, verbose=False)
    recorder = Recorder(monkeypatch, callback)
    model.fit(regression_data(7), epochs=1, callbacks=[callback], verbose=0)
    # Pushes at 3, 6 and the rest (step 7) at the end of fit.
    assert [step for _, _, step in recorder.pushes] == [3, 6, 7]
    # Never fetched: the local SGD(0.05) weights moved by 0.05 * every gradient.
    local = VariableSync(model.trainable_variables).read()
    np.testing.assert_allclose(local, init - 0.05 * recorder.gradient_sum, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        store.snapshot().flat, init - 0.1 * recorder.gradient_sum, rtol=1e-5, atol=1e-6
    )


def test_a_push_lost_to_a_server_restart_refetches_and_goes_on(serve, monkeypatch):
    store = ParameterStore(SGD(learning_rate=0.1))
    server = serve(store)
    model = dense_net()
    model.compile(optimizer="sgd", loss="mse")
    callback = gasgd_tf.AsyncSGD(
        server.address, n_push=1, n_fetch=100, fetch_on_end=True, verbose=False
    )
    recorder = Recorder(monkeypatch, callback)
    recorded_push = ParameterClient.push
    calls = []

    def push_refused_once(client, grad, base_version, client_step=0, **kwargs):
        calls.append((base_version, client_step))
        if len(calls) == 2:  # As a server restored from an older checkpoint answers.
            raise ServerRestartedError("restored to version 1", grpc.StatusCode.ABORTED)
        return recorded_push(client, grad, base_version, client_step, **kwargs)

    monkeypatch.setattr(ParameterClient, "push", push_refused_once)
    model.fit(regression_data(4), callbacks=[callback], verbose=0)

    # Step 2's push is lost; the worker refetches (version 1) and goes on from it.
    assert calls == [(0, 1), (0, 2), (1, 3), (1, 4)]
    assert recorder.fetch_steps == [0, 2, 4]  # Join, recovery, fetch_on_end.
    assert (callback.pushes, callback.pushes_lost, callback.fetches) == (3, 1, 1)
    assert store.version == callback.version == 3
    # fetch_on_end: the model holds the server's parameters after fit.
    np.testing.assert_array_equal(
        VariableSync(model.trainable_variables).read(), store.snapshot().flat
    )


def test_local_server_learns_and_is_reachable_by_other_workers():
    model = dense_net("linear", seed=3)
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    callback = gasgd_tf.AsyncSGD(
        None, n_push=2, n_fetch=4, server_learning_rate=0.05, keep_server=True, verbose=False
    )
    address = callback.address
    assert address.startswith("127.0.0.1:") and callback.server is not None
    try:
        history = model.fit(regression_data(20), epochs=3, callbacks=[callback], verbose=0)
        losses = history.history["loss"]
        assert losses[-1] < 0.5 * losses[0], losses
        assert (callback.pushes, callback.version) == (30, 30)

        # A second worker joins the kept server and starts from its weights.
        other = dense_net("linear", seed=4)
        other.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
        joiner = gasgd_tf.AsyncSGD(address, n_push=2, n_fetch=2, client_id="w2", verbose=False)
        other.fit(regression_data(2), epochs=1, callbacks=[joiner], verbose=0)
        assert (joiner.pushes, joiner.version) == (1, 31)
    finally:
        callback.stop_server()
    assert callback.server is None

    # Without keep_server the local server stops with fit.
    transient = gasgd_tf.AsyncSGD("local", n_push=1, n_fetch=1, verbose=False)
    model.fit(regression_data(2), epochs=1, callbacks=[transient], verbose=0)
    assert transient.server is None and transient.version == 2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_push": 0}, "n_push must be a positive integer"),
        ({"n_push": 2.5}, "n_push must be a positive integer"),
        ({"n_fetch": -1}, "n_fetch must be a positive integer"),
        ({"n_fetch": True}, "n_fetch must be a positive integer"),
        ({"server": "somehost"}, "server=somehost: no port"),
        ({"server": "h:1", "server_learning_rate": 0.1}, "configure a local server"),
        ({"push_dtype": "int8"}, "push_dtype must be one of"),
        ({"server_optimizer": "lbfgs"}, "unknown server optimizer"),
    ],
)
def test_bad_arguments_are_refused(kwargs, message):
    kwargs = {"server": "h:1", **kwargs}
    if "server_optimizer" in kwargs:
        kwargs["server"] = None
    with pytest.raises(ValueError, match=message):
        gasgd_tf.AsyncSGD(**kwargs)


def test_a_model_that_differs_from_the_servers_is_refused_naming_a_tensor(serve):
    server = serve(ParameterStore(SGD(learning_rate=0.1)))
    first = dense_net(hidden=8)
    first.compile(optimizer="sgd", loss="mse")
    first.fit(regression_data(1), callbacks=[gasgd_tf.AsyncSGD(server.address, verbose=False)])

    wider = dense_net(hidden=16)  # Same names, other shapes.
    wider.compile(optimizer="sgd", loss="mse")
    with pytest.raises(gasgd_tf.ModelMismatchError, match=r"net/hidden/kernel.*shape") as error:
        wider.fit(regression_data(1), callbacks=[gasgd_tf.AsyncSGD(server.address, verbose=False)])
    assert server.address in str(error.value)
    assert "apply" not in vars(wider.optimizer)  # Nothing left behind.


def test_an_unreachable_server_is_named():
    model = dense_net()
    model.compile(optimizer="sgd", loss="mse")
    callback = gasgd_tf.AsyncSGD("127.0.0.1:1", connect_timeout_secs=0.2, verbose=False)
    with pytest.raises(ServerUnavailableError, match="127.0.0.1:1"):
        model.fit(regression_data(1), callbacks=[callback], verbose=0)


def test_a_train_step_that_bypasses_the_optimizer_is_refused(serve):
    class Bypass(TinyNet):
        def train_step(self, data):
            x, y = data
            with tf.GradientTape() as tape:
                loss = keras.ops.mean(keras.ops.square(y - self(x, training=True)))
            for v, g in zip(
                self.trainable_variables, tape.gradient(loss, self.trainable_variables)
            ):
                v.assign_sub(0.01 * g)
            return {"loss": loss}

    server = serve(ParameterStore(SGD(learning_rate=0.1)))
    model = Bypass(name="bypass")
    model.compile(optimizer="sgd")
    model(np.zeros((1, 4), np.float32))  # Builds the layers.
    with pytest.raises(RuntimeError, match="never called its optimizer"):
        model.fit(regression_data(2), callbacks=[gasgd_tf.AsyncSGD(server.address, verbose=False)])


def test_steps_per_execution_counts_only_real_steps(serve):
    # 8 steps an epoch in executions of 3: Keras reports the last execution
    # as ending at step 9; the callback must count 8 per epoch.
    store = ParameterStore(SGD(learning_rate=0.01))
    server = serve(store)
    model = dense_net()
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse", steps_per_execution=3)
    sync = gasgd_tf.AsyncSGD(server=server.address, n_push=4, n_fetch=4)
    model.fit(regression_data(8), epochs=2, callbacks=[sync], verbose=0)
    assert sync.steps == 16 and sync.pushes == 4 == store.version


def test_a_failed_fit_is_cleaned_up_by_the_context_manager(serve):
    store = ParameterStore(SGD(learning_rate=0.01))
    server = serve(store)
    model = dense_net()
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")

    def broken():
        yield from regression_data(2)
        raise ValueError("bad record")

    data = tf.data.Dataset.from_generator(
        broken,
        output_signature=(
            tf.TensorSpec((None, 4), tf.float32),
            tf.TensorSpec((None, 1), tf.float32),
        ),
    )
    with pytest.raises(Exception, match="bad record"):
        with gasgd_tf.AsyncSGD(server=server.address, n_push=1, n_fetch=1) as sync:
            model.fit(data, callbacks=[sync], verbose=0)
    assert "apply" not in vars(model.optimizer)  # Unhooked although on_train_end never ran.
    (record,) = [c for c in store.status().clients if c.client_id == sync.client_id]
    assert not record.active  # It left the server.


# Two logical CPUs must be configured before TensorFlow sets up its devices,
# which this (pytest's) process did long ago: a fresh process does it.
MIRRORED_FIT = """
import sys
import tensorflow as tf
(cpu,) = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras, numpy as np
import gasgd_tf
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
print("replicas", strategy.num_replicas_in_sync, flush=True)
with strategy.scope():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1, name="out")], name="m")
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
x = np.zeros((32, 4), np.float32)
sync = gasgd_tf.AsyncSGD(sys.argv[1], client_id="mirrored", verbose=False)
try:
    model.fit(x, x[:, :1], batch_size=8, callbacks=[sync], verbose=0)
except ValueError as e:
    print("refused:", e, flush=True)
else:
    print("trained", sync.stats, flush=True)
print("unhooked", "apply" not in vars(model.optimizer), flush=True)
"""


def test_a_multi_replica_distribution_strategy_is_refused(serve):
    import subprocess
    import sys

    from conftest import REPO_ROOT

    store = ParameterStore(SGD(learning_rate=0.1))
    server = serve(store)
    result = subprocess.run(
        [sys.executable, "-c", MIRRORED_FIT, server.address],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert lines[0] == "replicas 2"  # Really a multi-replica strategy.
    assert lines[1].startswith("refused: AsyncSGD does not support distribution strategies")
    assert lines[2] == "unhooked True"
    # Refused before it joined: the server never saw it, nothing was pushed.
    assert not store.initialized and store.version == 0
    assert store.status().clients == ()


@pytest.mark.parametrize("dtype", ["float64", "float16"])
def test_non_float32_trainable_variables_are_refused(serve, dtype):
    store = ParameterStore(SGD(learning_rate=0.1))
    server = serve(store)
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(1, name="out", dtype=dtype)], name="wide"
    )
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
    sync = gasgd_tf.AsyncSGD(server.address, verbose=False)
    with pytest.raises(
        ValueError, match=rf"'wide/out/kernel' is {dtype}: .*float32 variables only"
    ):
        model.fit(regression_data(2), callbacks=[sync], verbose=0)
    assert "apply" not in vars(model.optimizer)  # Nothing left hooked.
    assert not store.initialized and store.status().clients == ()  # Never joined.


def test_a_local_server_with_adam_applies_the_pushed_gradients_with_adam(monkeypatch):
    # server_optimizer: the in-process server's own optimizer, not SGD.
    initialized = []
    initialize = ParameterClient.initialize

    def recording_initialize(client, specs, flat):
        initialized.append(np.array(flat, np.float32, copy=True))
        return initialize(client, specs, flat)

    monkeypatch.setattr(ParameterClient, "initialize", recording_initialize)
    recorder = Recorder(monkeypatch)
    model = dense_net("adam_net", seed=5)
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    sync = gasgd_tf.AsyncSGD(
        None,
        n_push=1,
        n_fetch=1000,  # The server's parameters then follow from the pushes alone.
        server_optimizer="adam",
        server_learning_rate=0.01,
        keep_server=True,
        verbose=False,
    )
    try:
        model.fit(regression_data(6), epochs=1, callbacks=[sync], verbose=0)
        with ParameterClient(sync.address, "probe", timeout_secs=10) as probe:
            version, _, served = probe.fetch(read_only=True)
    finally:
        sync.stop_server()
    (init,) = initialized
    assert version == len(recorder.pushes) == 6
    # What keras.optimizers.Adam does with the same gradients, in the same order.
    expected = keras.Variable(init)
    adam = keras.optimizers.Adam(learning_rate=0.01)
    for grad, _, _ in recorder.pushes:
        adam.apply_gradients([(tf.constant(grad), expected)])
    np.testing.assert_allclose(served, expected.numpy(), rtol=1e-5, atol=1e-6)
    # Not what SGD would have made of them.
    sgd = init - 0.01 * recorder.gradient_sum
    assert np.abs(served - sgd).max() > 1e-3


@pytest.mark.parametrize(
    "mode",
    [
        # DiLoCo: rounds, deltas of the compiled (inner) AdamW, outer Nesterov.
        dict(
            aggregation="round",
            server_optimizer="sgd",
            server_options={"momentum": 0.9, "nesterov": True},
        ),
        # Asynchronous DiLoCo: Delayed Nesterov, adaptive local steps.
        dict(
            local_steps="adaptive",
            server_optimizer="delayed_nesterov",
            server_options={"momentum": 0.9, "dn_period": 1},
        ),
    ],
)
def test_the_callback_offers_the_low_communication_modes_with_its_optimizer_inner(mode):
    model = dense_net("diloco_net", seed=6)
    model.compile(optimizer=keras.optimizers.AdamW(0.01), loss="mse")
    sync = gasgd_tf.AsyncSGD(
        None,
        n_push=5,
        n_fetch=5,
        push="delta",
        server_learning_rate=0.7,
        keep_server=True,
        verbose=False,
        **mode,
    )
    try:
        history = model.fit(regression_data(20), epochs=3, callbacks=[sync], verbose=0)
        store = sync.server.store
        assert store.aggregation == mode.get("aggregation", "each")
        assert type(store.optimizer).__name__ == {"sgd": "SGD"}.get(
            mode["server_optimizer"], "DelayedNesterov"
        )
    finally:
        sync.stop_server()
    losses = history.history["loss"]
    assert losses[-1] < 0.5 * losses[0], losses
    assert (sync.pushes, sync.version) == (12, 12)  # 60 steps / H = 5: one update per push.


def test_the_callback_refuses_unknown_modes_and_rounds_with_uneven_syncs():
    with pytest.raises(ValueError, match="aggregation must be one of"):
        gasgd_tf.AsyncSGD(None, aggregation="rounds")
    with pytest.raises(ValueError, match="local_steps must be one of"):
        gasgd_tf.AsyncSGD(None, local_steps="dynamic")
    with pytest.raises(ValueError, match="needs n_push == n_fetch"):
        gasgd_tf.AsyncSGD(None, n_push=2, n_fetch=4, aggregation="round")
    with pytest.raises(ValueError, match="configure a local server"):
        gasgd_tf.AsyncSGD("h:1", aggregation="round")


def test_the_callback_pushes_int8_with_error_feedback(serve):
    store = ParameterStore(SGD(learning_rate=0.05))
    server = serve(store)
    model = dense_net("int8_net", seed=7)
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    sync = gasgd_tf.AsyncSGD(server.address, n_push=2, n_fetch=2, push_codec="int8", verbose=False)
    history = model.fit(regression_data(20), epochs=2, callbacks=[sync], verbose=0)
    losses = history.history["loss"]
    assert losses[-1] < 0.5 * losses[0], losses
    assert sync.pushes == store.version == 20
    with pytest.raises(ValueError, match="push_codec must be one of"):
        gasgd_tf.AsyncSGD(server.address, push_codec="zip")


def test_the_callback_streams_fragments_and_loses_no_local_step(serve):
    # One worker, outer SGD with learning rate 1: the server's fragment
    # becomes anchor - (anchor - local) = local at every push, so after the
    # last pushes of every fragment the server holds exactly the model's
    # weights, whatever the merges did in between.
    store = ParameterStore(SGD(learning_rate=1.0), push_kind="delta")
    server = serve(store)
    model = dense_net("stream_net", seed=7)
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    sync = gasgd_tf.AsyncSGD(
        server.address,
        n_push=4,
        n_fetch=4,
        push="delta",
        fragments=2,
        overlap_steps=1,
        verbose=False,
    )
    history = model.fit(regression_data(20), epochs=2, callbacks=[sync], verbose=0)
    losses = history.history["loss"]
    assert losses[-1] < 0.5 * losses[0], losses
    # 40 steps, 2 fragments every 4 steps: about 20 fragment syncs, each one version.
    assert sync.pushes == store.version >= 18
    flat = np.concatenate([w.numpy().ravel() for w in model.trainable_variables])
    np.testing.assert_allclose(store.snapshot().flat, flat, atol=1e-6)


def test_the_callback_refuses_fragments_without_delta_pushes(serve):
    server = serve(ParameterStore(SGD(learning_rate=1.0)))
    with pytest.raises(ValueError, match="fragments=2 needs push='delta'"):
        gasgd_tf.AsyncSGD(server.address, n_push=4, n_fetch=4, fragments=2)
    with pytest.raises(ValueError, match="overlap_steps must be in"):
        gasgd_tf.AsyncSGD(
            server.address, n_push=4, n_fetch=4, push="delta", fragments=2, overlap_steps=4
        )
