"""Exactly-once pushes under lost answers and under load (32 concurrent clients on loopback)."""

import threading
import time

import grpc
import numpy as np
import pytest

from gasgd_tf.client import ParameterClient
from gasgd_tf.server import SGD, ParameterServer, ParameterStore
from gasgd_tf.tensors import TensorSpec

SPECS = (TensorSpec("w", (1000,)), TensorSpec("b", (10,)))
SIZE = 1010


class _LostAnswer(grpc.RpcError):
    """What a client sees when the connection drops after the server applied its push."""

    def code(self):
        return grpc.StatusCode.UNAVAILABLE

    def details(self):
        return "connection reset after the push was applied (simulated)"


def test_a_push_whose_answer_was_lost_is_applied_once(serve):
    store = ParameterStore(SGD(learning_rate=1.0))
    server = serve(store)
    with ParameterClient(server.address, "worker_0", timeout_secs=10) as client:
        client.register(SPECS)
        client.initialize(SPECS, np.zeros(SIZE, np.float32))
        real_push = client._push
        lost = []

        def push_then_lose_answer(stream, **kwargs):
            response = real_push(stream, **kwargs)  # The server applies it...
            if not lost:
                lost.append(response)
                raise _LostAnswer()  # ...but the answer never arrives.
            return response

        client._push = push_then_lose_answer
        ack = client.push(np.ones(SIZE, np.float32), 0)
    assert lost and ack.duplicate and ack.version == 1  # The retry was recognised.
    assert store.version == 1
    np.testing.assert_array_equal(store.snapshot().flat, -np.ones(SIZE, np.float32))


@pytest.mark.slow
def test_32_clients_lose_and_duplicate_no_push():
    # SGD with lr 1 and gradients of ones: every applied push lowers every
    # parameter by exactly 1 (integers stay exact in float32), so the final
    # parameters count the applied pushes and must equal the acknowledged ones.
    store = ParameterStore(SGD(learning_rate=1.0))
    store.initialize("init", SPECS, np.zeros(SIZE, np.float32))
    server = ParameterServer(store, max_workers=40).start()
    stop = threading.Event()
    acked = [0] * 32
    errors = []

    def client_loop(i):
        try:
            with ParameterClient(server.address, f"worker_{i}", timeout_secs=30) as client:
                client.register(SPECS)
                version, _, _ = client.fetch()
                while not stop.is_set():
                    ack = client.push(np.ones(SIZE, np.float32), version)
                    assert not ack.duplicate
                    acked[i] += 1
                    version, _, _ = client.fetch()
        except BaseException as e:  # Reported below, in the test's thread.
            errors.append(e)

    threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(32)]
    for t in threads:
        t.start()
    time.sleep(8)
    stop.set()
    for t in threads:
        t.join(60)
    alive = [t.name for t in threads if t.is_alive()]
    server.stop(grace=None)
    assert not alive, f"client threads still running after 60 s: {alive}"
    assert not errors, errors[:3]
    total = sum(acked)
    print(f"32 clients, 8 s: {total} pushes acknowledged and applied")
    assert total > 32 and all(acked)  # Every client got through, many times.
    status = store.status()
    assert status.version == status.updates_applied == total
    assert status.duplicate_pushes == 0 and status.pushes_rejected == 0
    np.testing.assert_array_equal(store.snapshot().flat, np.full(SIZE, -total, np.float32))
