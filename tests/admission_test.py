"""The servicer's admission gates and gradient buffer pool, without gRPC."""

import threading

import numpy as np

from gasgd_tf.server import admission
from gasgd_tf.server.buffer_pool import BufferPool


def test_a_gate_counts_holders_waiters_and_refusals():
    gate = admission.Gate(1)
    since = gate.acquire(timeout=1)
    assert since is not None and gate.held == 1
    assert gate.acquire(timeout=0) is None  # Full: refused at once.
    assert (gate.refused, gate.held, gate.waiting) == (1, 1, 0)
    got = []
    waiter = threading.Thread(target=lambda: got.append(gate.acquire(timeout=60)))
    waiter.start()
    while gate.waiting != 1:  # The waiter is in line (it cannot get the place yet).
        threading.Event().wait(0.01)
    gate.release(since)
    waiter.join(60)
    assert got[0] is not None and (gate.held, gate.waiting, gate.refused) == (1, 0, 1)
    gate.release(got[0])
    assert gate.held == 0


def test_the_retry_hint_grows_with_the_queue_and_stays_in_bounds():
    gate = admission.Gate(2, initial_hold_secs=0.2)
    assert gate.retry_after_ms() == 100  # 0.2 s x (0 waiting + 1) / 2 places.
    slow = admission.Gate(1, initial_hold_secs=100.0)
    assert slow.retry_after_ms() == admission.RETRY_AFTER_MAX_MS
    fast = admission.Gate(8, initial_hold_secs=0.0)
    assert fast.retry_after_ms() == admission.RETRY_AFTER_MIN_MS


def test_the_buffer_pool_reuses_buffers_by_size():
    pool = BufferPool()
    a = pool.take(10)
    assert a.dtype == np.float32 and a.size == 10 and len(pool) == 0
    pool.give_back(a)
    assert pool.take(20) is not a  # Another size: a new buffer.
    assert pool.take(10) is a and len(pool) == 0  # The same one again, once.
    assert pool.take(10) is not a
