"""Elasticity: heartbeats, silent clients leave the staleness bounds, joins and leaves mid-run."""

import logging
import threading
import time
import weakref

import numpy as np

from gasgd_tf.client import ParameterClient
from gasgd_tf.server import SGD, ParameterStore
from gasgd_tf.server.staleness import StalenessConfig
from gasgd_tf.tensors import FlatLayout, TensorSpec

SPECS = (TensorSpec("w", (3, 2)), TensorSpec("b", (2,)))
SIZE = FlatLayout(SPECS).size


def expired(store: ParameterStore) -> set[str]:
    return {c.client_id for c in store.status().clients if c.expired}


class FakeClock:
    """The store's wall clock, moved by hand: silence is measured without waiting for it."""

    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def said(capsys, caplog) -> str:
    """What the store told the operator: its printed lines and its log records."""
    return capsys.readouterr().out + caplog.text


def test_a_bounded_wait_stops_waiting_for_a_client_that_went_silent(capsys, caplog):
    # The straggler rule would wait a minute; the heartbeat timeout ends it
    # after 5 s of silence (a crashed worker sends no heartbeats).
    caplog.set_level(logging.INFO, logger="gasgd_tf")
    clock = FakeClock()
    store = ParameterStore(
        SGD(learning_rate=1.0),
        clock=clock,
        staleness=StalenessConfig("bounded", bound=0, straggler_secs=60),
        heartbeat_timeout_secs=5.0,
    )
    store.initialize("worker_0", SPECS, np.zeros(SIZE, np.float32))
    store.snapshot("worker_0")  # worker_0 starts a round, then dies.
    admitted = threading.Event()
    waiter = threading.Thread(
        target=lambda: (store.snapshot("worker_1"), admitted.set()), daemon=True
    )
    waiter.start()
    clock.now += 4.0  # Silent for 4 s: still a member, still waited for.
    assert not admitted.wait(timeout=0.6)  # At least one wake-up of the wait saw it.
    assert expired(store) == set()
    clock.now += 2.0  # 6 s > 5 s: worker_0 is expired and worker_1 admitted.
    assert admitted.wait(timeout=30)
    waiter.join(timeout=30)
    assert "worker_0 sent no call or heartbeat for 5s" in said(capsys, caplog)
    assert expired(store) == {"worker_0"}
    # Back from the dead: any call (a heartbeat here) makes it a member again.
    store.heartbeat("worker_0")
    assert expired(store) == set()
    assert "worker_0 is back" in said(capsys, caplog)


def test_dc_asgd_lets_go_of_a_silent_clients_snapshot():
    store = ParameterStore(
        SGD(learning_rate=1.0), staleness=StalenessConfig("dc_asgd"), heartbeat_timeout_secs=0.05
    )
    store.initialize("worker_0", SPECS, np.zeros(SIZE, np.float32))
    old = weakref.ref(store.snapshot("worker_0"))  # dc_asgd keeps what worker_0 fetched.
    store.push("worker_1", 1, 0, np.ones(SIZE, np.float32))
    store.snapshot("worker_1")  # The server's own cache moves on to version 1.
    assert old() is not None  # Pinned for worker_0's delay compensation.
    time.sleep(0.1)
    store.heartbeat("worker_1")
    assert store.expire_silent() == ["worker_0"]
    assert old() is None  # A dead worker does not keep a copy of the model alive.


def test_heartbeats_keep_a_quiet_client_a_member(serve):
    clock = FakeClock()
    store = ParameterStore(SGD(learning_rate=1.0), clock=clock, heartbeat_timeout_secs=5.0)
    store.initialize("init", SPECS, np.zeros(SIZE, np.float32))
    beats = []  # (client id, the clock when its heartbeat arrived)
    beat = store.heartbeat

    def recording_heartbeat(client_id):
        beats.append((client_id, clock.now))
        return beat(client_id)

    store.heartbeat = recording_heartbeat
    server = serve(store)
    with ParameterClient(server.address, "worker_0", timeout_secs=5) as quiet:
        quiet.register(SPECS)
        quiet.start_heartbeats(0.1)  # Computing for long between pushes.
        with ParameterClient(server.address, "worker_1", timeout_secs=5) as silent:
            silent.register(SPECS)  # Then never calls again, no heartbeats.
            clock.now += 60.0  # A minute later, by the server's clock.
            # The event that matters: a heartbeat of worker_0 after the minute
            # (the deadline only guards against a hang).
            deadline = time.monotonic() + 30
            while ("worker_0", clock.now) not in beats:
                assert time.monotonic() < deadline, f"no heartbeat arrived: {beats}"
                time.sleep(0.02)
            assert store.expire_silent() == ["init", "worker_1"]
            assert expired(store) == {"init", "worker_1"}
            status = silent.status()
            assert {c.client_id: c.expired for c in status.clients} == {
                "init": True,
                "worker_0": False,
                "worker_1": True,  # Status names no client: not a sign of life.
            }
    assert {client for client, _ in beats} == {"worker_0"}  # Only start_heartbeats beats.


def test_workers_join_and_leave_mid_run_without_stopping_the_others(serve):
    # SGD with lr 1 and gradients of ones: the parameters count the applied pushes.
    store = ParameterStore(SGD(learning_rate=1.0), heartbeat_timeout_secs=5)
    store.initialize("init", SPECS, np.zeros(SIZE, np.float32))
    server = serve(store)
    acked = {}
    errors = []

    def work(name: str, pushes: int, start_after: int = 0) -> None:
        try:
            while store.version < start_after:  # Joins a run already under way.
                time.sleep(0.01)
            with ParameterClient(server.address, name, timeout_secs=10) as client:
                client.register(SPECS)
                version, _, _ = client.fetch()
                assert version >= start_after
                for step in range(1, pushes + 1):
                    version = client.push(np.ones(SIZE, np.float32), version, step).version
                acked[name] = pushes
                client.leave()  # Leaves while the others go on.
        except Exception as e:  # Reported in the main thread.
            errors.append(e)

    plan = [("worker_0", 200, 0), ("worker_1", 30, 0), ("worker_2", 100, 50)]
    threads = [threading.Thread(target=work, args=p) for p in plan]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors and not any(t.is_alive() for t in threads)
    assert acked == {"worker_0": 200, "worker_1": 30, "worker_2": 100}
    assert store.version == 330
    np.testing.assert_array_equal(store.snapshot().flat, np.full(SIZE, -330, np.float32))
    status = {c.client_id: c for c in store.status().clients}
    assert not any(status[f"worker_{i}"].active for i in range(3))  # All left.
