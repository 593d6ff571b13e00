"""Every client role starts its own heartbeats: the worker, the evaluator and the Keras callback.

README: "each sends a heartbeat every client.heartbeat_secs". A role that
forgot to call ``start_heartbeats`` would be expired by the server while it
computes for long between calls. Here each role's next call is held at the
server until a Heartbeat of that role has arrived: the role keeps running
only if it sends heartbeats by itself (the deadlines guard against hangs
only, so a loaded machine cannot break the tests).
"""

import collections
import threading

import numpy as np
import pytest
from worker_test import small_config

from gasgd_tf import evaluation, worker
from gasgd_tf.server import SGD, ParameterStore

HEARTBEAT_SECS = 0.2
PATIENCE_SECS = 30.0  # How long a held call waits for the heartbeat: only against hangs.


class HeldUntilHeartbeat:
    """Holds ``store.<method>`` calls of ``client_id`` until the server got a heartbeat from it.

    Also counts every Heartbeat call by client id (``beats``). A heartbeat
    that comes before the first such call lets every call through at once.
    """

    def __init__(self, store: ParameterStore, client_id: str, method: str):
        self.client_id = client_id
        self.beats: collections.Counter[str] = collections.Counter()
        self.seen = threading.Event()
        self.gave_up = False
        heartbeat = store.heartbeat
        held_method = getattr(store, method)

        def counting_heartbeat(client_id, *args, **kwargs):
            self.beats[client_id] += 1
            if client_id == self.client_id:
                self.seen.set()
            return heartbeat(client_id, *args, **kwargs)

        def held_call(client_id, *args, **kwargs):
            if client_id == self.client_id and not self.seen.is_set():
                if not self.seen.wait(PATIENCE_SECS):
                    self.gave_up = True
            return held_method(client_id, *args, **kwargs)

        store.heartbeat = counting_heartbeat
        setattr(store, method, held_call)

    def check(self) -> None:
        assert not self.gave_up, f"{self.client_id} sent no heartbeat in {PATIENCE_SECS:.0f}s"
        assert self.beats[self.client_id] >= 1, dict(self.beats)


def role_config(data_dir, **overrides):
    """worker_test's small config, with fast heartbeats and a quick evaluator."""
    settings = {
        "num_steps": 3,
        "worker.log_every_steps": 1,
        "client.heartbeat_secs": HEARTBEAT_SECS,
        "ps.heartbeat_timeout_secs": 0.0,  # The policy is not under test here.
        "eval.every_secs": 0.1,
        "eval.save_model": False,
    }
    return small_config(data_dir, **{**settings, **overrides})


def test_the_worker_sends_heartbeats_by_itself(serve, digits_data_dir, tmp_path):
    store = ParameterStore(SGD(learning_rate=0.05))
    gate = HeldUntilHeartbeat(store, "worker_0", "push")  # Its first push waits for one.
    server = serve(store)
    result = worker.train(role_config(digits_data_dir), 0, server.address, str(tmp_path))
    gate.check()
    assert result.pushes == 3 and store.version == 3  # Every push went through after it.


def test_the_evaluator_sends_heartbeats_by_itself(serve, digits_data_dir, tmp_path):
    store = ParameterStore(SGD(learning_rate=0.05))
    server = serve(store)
    config = role_config(digits_data_dir, num_steps=2)
    worker.train(config, 0, server.address, str(tmp_path / "worker"))  # Initializes, leaves.
    gate = HeldUntilHeartbeat(store, "eval", "snapshot")  # Its fetch waits.
    result = evaluation.run(config, server.address, str(tmp_path / "eval"))
    gate.check()
    assert result.version == 2 and 0.0 <= result.accuracy <= 1.0
    assert set(gate.beats) == {"eval"}  # The worker had left: none of its.


@pytest.mark.filterwarnings("ignore:`shuffle=True` was passed:UserWarning")
def test_the_keras_callback_sends_heartbeats_by_itself(serve):
    import keras
    import tensorflow as tf

    import gasgd_tf

    store = ParameterStore(SGD(learning_rate=0.01))
    gate = HeldUntilHeartbeat(store, "keras_hb", "push")
    server = serve(store)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1, name="out")], name="hb")
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
    x = np.random.default_rng(0).normal(size=(32, 4)).astype(np.float32)
    data = tf.data.Dataset.from_tensor_slices((x, x.sum(axis=1, keepdims=True))).batch(8)
    sync = gasgd_tf.AsyncSGD(
        server.address,
        n_push=2,
        n_fetch=2,
        client_id="keras_hb",
        heartbeat_secs=HEARTBEAT_SECS,
        verbose=False,
    )
    model.fit(data, epochs=1, callbacks=[sync], verbose=0)
    gate.check()
    assert sync.pushes == 2 and store.version == 2
