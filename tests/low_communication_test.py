"""Low-communication training: parameter-delta pushes (DiLoCo), emulated slow workers."""

import threading

import grpc
import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import assert_refused
from worker_test import small_config

import gasgd_tf
from gasgd_tf import config_base, worker
from gasgd_tf.client import ParameterClient, RequestRejectedError
from gasgd_tf.replica import DeltaTracker
from gasgd_tf.server import SGD, ParameterStore
from gasgd_tf.tensors import TensorSpec

pytestmark = pytest.mark.filterwarnings("ignore:`shuffle=True` was passed:UserWarning")


class Weights:
    specs = (TensorSpec("w", (3,)),)

    def __init__(self):
        self.flat = np.zeros(3, np.float32)

    def read(self):
        return self.flat.copy()

    def assign(self, flat):
        self.flat = np.array(flat, np.float32)


def test_the_pushed_deltas_add_up_to_the_replicas_whole_movement():
    weights = Weights()
    tracker = DeltaTracker(weights)
    with pytest.raises(RuntimeError, match="before any fetch"):
        tracker.take()
    tracker.assign(np.array([1.0, 2.0, 3.0], np.float32))  # Fetched.
    weights.flat -= 0.5  # Local steps.
    np.testing.assert_array_equal(tracker.take(), [0.5, 0.5, 0.5])
    weights.flat -= 0.25  # More local steps, no fetch between: only these count.
    np.testing.assert_array_equal(tracker.take(), [0.25, 0.25, 0.25])
    tracker.assign(np.array([9.0, 9.0, 9.0], np.float32))  # A fetch moves the anchor.
    weights.flat += 1.0
    np.testing.assert_array_equal(tracker.take(), [-1.0, -1.0, -1.0])


def test_a_fetch_between_pushes_keeps_the_local_steps_it_overwrote():
    # n_fetch < n_push, or a background fetch that lands a step after its
    # push: the steps computed since the anchor are still pushed.
    weights = Weights()
    tracker = DeltaTracker(weights)
    tracker.assign(np.zeros(3, np.float32))
    weights.flat -= 1.0  # Local steps 1-2.
    tracker.assign(np.full(3, 5.0, np.float32))  # A fetch overwrites them.
    weights.flat -= 2.0  # Local steps 3-4 from the fetched weights.
    np.testing.assert_array_equal(tracker.take(), [3.0, 3.0, 3.0])  # 1 + 2: all four steps.
    tracker.assign(np.full(3, 7.0, np.float32))  # Right after a push: nothing pending.
    np.testing.assert_array_equal(tracker.take(), [0.0, 0.0, 0.0])


def test_delta_pushes_with_overlap_carry_every_step(serve):
    # The background sync brings the fetched weights a step after their push;
    # the deltas must still add up to every step's movement (once they were
    # all zeros: the fetch reset the anchor before the take).
    from gasgd_tf.replica import ReplicaSession, SyncSchedule

    store = ParameterStore(SGD(learning_rate=1.0), push_kind="delta")
    server = serve(store)
    pushed = []
    original = ParameterClient.push

    def slow_push(client, grad, base_version, client_step=0, **kwargs):
        pushed.append(np.array(grad))
        threading.Event().wait(0.05)  # Slower than a step: the fetch lands late.
        return original(client, grad, base_version, client_step, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ParameterClient, "push", slow_push)
        weights = Weights()
        tracker = DeltaTracker(weights)
        session = ReplicaSession(
            ParameterClient(server.address, "w0"),
            tracker,
            SyncSchedule(1, 1, 6),
            tracker.take,
            overlap=True,
            push_kind="delta",
        )
        session.join(10)
        for step in range(1, 7):
            session.before_step()
            weights.flat -= 1.0  # Each step moves every weight by -1.
            session.after_step(step)
        session.finish()
        session.close()
    assert len(pushed) == 6 and session.stats.pushes == 6
    np.testing.assert_allclose(np.sum(pushed, axis=0), [6.0, 6.0, 6.0])  # Six steps of 1.
    np.testing.assert_allclose(store.snapshot().flat, [-6.0, -6.0, -6.0])


def regression(batches=7, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(batches * 8, 4)).astype(np.float32)
    y = (x @ np.array([[1.0], [-2.0], [0.5], [3.0]], np.float32)).astype(np.float32)
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(8)


def net():
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(8, activation="tanh", name="h"),
            keras.layers.Dense(1, name="o"),
        ],
        name="net",
    )
    model.compile(optimizer=keras.optimizers.AdamW(0.01, weight_decay=0.1), loss="mse")
    return model


def test_delta_pushes_with_outer_sgd_lr_1_equal_plain_local_training(serve):
    # Outer SGD with lr 1.0 and no momentum: theta0 - (theta0 - thetaH) = thetaH,
    # so the replica's trajectory, AdamW state included, is local training's.
    alone = net()
    alone.fit(regression(), epochs=2, verbose=0, shuffle=False)

    store = ParameterStore(SGD(learning_rate=1.0), push_kind="delta")
    server = serve(store)
    model = net()
    sync = gasgd_tf.AsyncSGD(
        server.address, n_push=3, n_fetch=3, push="delta", fetch_on_end=True, verbose=False
    )
    model.fit(regression(), epochs=2, verbose=0, shuffle=False, callbacks=[sync])

    assert sync.pushes == 5 and store.version == 5  # Steps 3, 6, 9, 12 and the last, 14.
    for a, b in zip(alone.get_weights(), model.get_weights()):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        store.snapshot().flat,
        np.concatenate([w.ravel() for w in alone.get_weights()]),
        rtol=1e-5,
        atol=1e-6,
    )


def test_a_server_for_gradients_refuses_a_delta_push_and_changes_nothing(serve):
    store = ParameterStore(SGD(learning_rate=0.1))  # push_kind="gradient", the default.
    server = serve(store)
    specs = (TensorSpec("w", (4,)),)
    with ParameterClient(server.address, "w0") as client:
        client.register(specs)
        client.initialize(specs, np.ones(4, np.float32))
        assert list(client.register(specs).specs) == list(specs)
        with pytest.raises(RequestRejectedError, match="applies gradient pushes, not delta") as e:
            client.push(np.ones(4, np.float32), 0, kind="delta", samples=32)
        assert e.value.code == grpc.StatusCode.FAILED_PRECONDITION
        assert client.status().pushes_rejected == 1
    assert store.version == 0
    np.testing.assert_array_equal(store.snapshot().flat, np.ones(4, np.float32))


def test_the_cli_worker_pushes_deltas_with_their_samples(
    serve, digits_data_dir, tmp_path, monkeypatch
):
    pushes = []
    original = ParameterClient.push

    def recording(client, grad, base_version, client_step=0, **kwargs):
        pushes.append((client_step, kwargs))
        return original(client, grad, base_version, client_step, **kwargs)

    monkeypatch.setattr(ParameterClient, "push", recording)
    store = ParameterStore(SGD(learning_rate=1.0), push_kind="delta")
    server = serve(store)
    config = small_config(
        digits_data_dir,
        n_sync=3,
        **{"worker.push": "delta", "worker.optimizer": "adamw", "worker.learning_rate": 0.001},
    )
    result = worker.train(config, 0, server.address, str(tmp_path))
    assert [(s, k["kind"], k["samples"]) for s, k in pushes] == [
        (3, "delta", 48),
        (6, "delta", 48),
        (7, "delta", 16),
    ]
    assert result.pushes == 3 == store.version
    assert np.isfinite(result.loss)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"worker.push": "weights"}, "worker.push 'weights' is not one of"),
        ({"worker.optimizer": "adam"}, "worker.optimizer 'adam' is not one of"),
        ({"worker.weight_decay": -1.0}, "worker.weight_decay must be"),
        ({"worker.push": "delta", "ps.staleness": "dc_asgd"}, "dc_asgd' needs worker.push"),
    ],
)
def test_bad_push_settings_are_refused_naming_the_field(overrides, message):
    assert_refused(overrides, message)


def test_the_callback_refuses_an_unknown_push_kind():
    with pytest.raises(ValueError, match="push must be one of"):
        gasgd_tf.AsyncSGD("127.0.0.1:1", push="weights")


def test_capabilities_name_the_one_push_kind_a_server_applies(serve):
    from gasgd_tf import wire
    from gasgd_tf.proto import parameter_service_pb2 as pb
    from gasgd_tf.proto import parameter_service_pb2_grpc as pb_grpc

    assert set(wire.PUSH_KINDS) == set(config_base.PUSH_KINDS)
    assert wire.push_kind_name(pb.PUSH_KIND_DELTA) == "delta"
    assert wire.push_kind_name(7) == "kind 7"  # From a newer client: named, then refused.
    for kind in config_base.PUSH_KINDS:
        server = serve(ParameterStore(SGD(learning_rate=0.1), push_kind=kind))
        with grpc.insecure_channel(server.address) as channel:
            reply = pb_grpc.ParameterServiceStub(channel).Register(
                pb.RegisterRequest(client_id="probe"), timeout=10
            )
        assert list(reply.capabilities.push_kinds) == [wire.PUSH_KINDS[kind]]


def test_an_emulated_slow_worker_sleeps_and_says_so(digits_data_dir, tmp_path, capsys):
    from gasgd_tf import progress

    config = small_config(digits_data_dir, num_steps=4, **{"worker.step_delay_secs": (0.25,)})
    assert config_base.step_delay_secs(config, 0) == 0.25
    result = worker.train(config, 0, None, str(tmp_path))
    assert result.wall_secs >= 4 * 0.25 and result.emulated_step_delay_secs == 0.25
    out = capsys.readouterr().out
    assert "EMULATED slowdown: +0.25 s per step" in out
    assert "(EMULATED +0.25 s per step)" in out.splitlines()[-1]
    final = progress.read_json(progress.progress_path(str(tmp_path), "worker_0"))
    assert final["emulated_step_delay_secs"] == 0.25


@pytest.mark.parametrize(
    "delays, workers, expected",
    [((), 2, [0.0, 0.0]), ((0.1,), 3, [0.1, 0.1, 0.1]), ((0.0, 0.3), 2, [0.0, 0.3])],
)
def test_step_delays_are_per_worker_or_for_all(delays, workers, expected):
    config = config_base.get_base_config()
    config.num_workers = workers
    config.worker.step_delay_secs = delays
    config = config_base.finalize(config)
    assert [config_base.step_delay_secs(config, i) for i in range(workers)] == expected


@pytest.mark.parametrize("delays", [(0.1, 0.2, 0.3), (-1.0,), (float("nan"),)])
def test_bad_step_delays_are_refused(delays):
    config = config_base.get_base_config()
    config.worker.step_delay_secs = delays
    with pytest.raises(ValueError, match="worker.step_delay_secs must be"):
        config_base.finalize(config)
