"""Synchronous rounds (gasgd_tf/server/rounds.py) through the store: averages, waits, faults."""

import threading

import numpy as np
import pytest

from gasgd_tf.server import SGD, ParameterStore, checkpointing
from gasgd_tf.server.rounds import TOTAL_SLOT, RoundState
from gasgd_tf.tensors import TensorSpec

SPECS = (TensorSpec("w", (3,)),)


class Clock:
    """A wall clock the test moves."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def make_store(workers=("a", "b"), lr=1.0, quorum=0.5, timeout=10.0, clock=None, **kwargs):
    """A round store with ``workers`` joined (each fetched once, so each is expected)."""
    clock = clock or Clock()
    store = ParameterStore(
        SGD(learning_rate=lr, **kwargs),
        clock=clock,
        rounds=RoundState(quorum, timeout),
        heartbeat_timeout_secs=60.0,
    )
    store.initialize(workers[0], SPECS, np.zeros(3, np.float32))
    for w in workers:
        store.snapshot(w)
    return store, clock


def ones(value):
    return np.full(3, value, np.float32)


def fetch_in_thread(store, client_id, **kwargs):
    """Starts ``store.snapshot(client_id)`` on a thread; returns (thread, results)."""
    out = []
    thread = threading.Thread(target=lambda: out.append(store.snapshot(client_id, **kwargs)))
    thread.start()
    return thread, out


def test_a_round_applies_the_sample_weighted_average_of_one_push_per_worker_as_one_update():
    store, _ = make_store()
    assert store.push("a", 1, 0, ones(1.0), samples=10).version == 0  # Waits for b.
    assert store.version == 0
    result = store.push("b", 1, 0, ones(3.0), samples=30)
    assert (result.version, store.version) == (1, 1)
    # SGD lr 1: w = 0 - (10 * 1 + 30 * 3) / 40.
    np.testing.assert_allclose(store.snapshot().flat, ones(-2.5))
    assert store.status().updates_applied == 1


def test_with_h1_gradient_pushes_a_round_is_synchronous_sgd_on_the_global_batch():
    store, _ = make_store(lr=0.1)
    grads = [np.array([1.0, -2.0, 0.5], np.float32), np.array([3.0, 0.0, -1.5], np.float32)]
    store.push("a", 1, 0, grads[0], samples=32)
    store.push("b", 1, 0, grads[1], samples=32)
    # One SGD step on the mean gradient of the two equal batches.
    np.testing.assert_allclose(store.snapshot().flat, -0.1 * (grads[0] + grads[1]) / 2, rtol=1e-6)


def test_pushes_without_a_sample_count_weigh_one_each():
    store, _ = make_store()
    store.push("a", 1, 0, ones(1.0))
    store.push("b", 1, 0, ones(2.0))
    np.testing.assert_allclose(store.snapshot().flat, ones(-1.5))


def test_a_workers_fetch_after_its_push_waits_for_the_round_then_gets_its_result():
    store, _ = make_store()
    store.push("a", 1, 0, ones(1.0))
    thread, out = fetch_in_thread(store, "a")
    thread.join(timeout=0.3)
    assert thread.is_alive() and not out  # The round still waits for b.
    store.push("b", 1, 0, ones(1.0))
    thread.join(timeout=10)
    assert out[0].version == 1
    np.testing.assert_allclose(out[0].flat, ones(-1.0))


def test_a_read_only_fetch_and_one_that_has_not_pushed_do_not_wait():
    store, _ = make_store()
    store.push("a", 1, 0, ones(1.0))
    assert store.snapshot("eval", read_only=True).version == 0
    assert store.snapshot("b").version == 0


def test_a_retried_push_counts_once_in_its_round():
    store, _ = make_store()
    store.push("a", 1, 0, ones(1.0))
    assert store.push("a", 1, 0, ones(1.0)).duplicate
    store.push("b", 1, 0, ones(3.0))
    np.testing.assert_allclose(store.snapshot().flat, ones(-2.0))  # Not (1 + 1 + 3) / 3.


def test_a_round_past_its_deadline_without_a_quorum_waits_for_more_pushes():
    store, clock = make_store(workers=("a", "b", "c"), quorum=0.6, timeout=10.0)
    store.push("a", 1, 0, ones(1.0))
    clock.now += 11
    assert not store.close_due_round()  # 1 of 3 is below the quorum of 60%.
    store.push("b", 1, 0, ones(3.0))  # Now 2 of 3, past the deadline: it closes.
    assert store.version == 1


def test_a_round_closes_at_its_deadline_once_the_quorum_has_pushed():
    store, clock = make_store(workers=("a", "b", "c"), quorum=0.6, timeout=10.0)
    store.push("a", 1, 0, ones(1.0))
    clock.now += 5
    store.push("b", 1, 0, ones(3.0))
    assert store.version == 0  # 2 of 3 reach the quorum, but c may still come in time.
    assert not store.close_due_round()
    clock.now += 6  # The deadline counts from the round's first push.
    assert store.close_due_round()
    assert store.version == 1
    np.testing.assert_allclose(store.snapshot().flat, ones(-2.0))


def test_a_late_push_counts_in_the_round_open_when_it_arrives():
    store, clock = make_store(workers=("a", "b", "c"), quorum=0.6, timeout=10.0)
    store.push("a", 1, 0, ones(1.0))
    store.push("b", 1, 0, ones(1.0))
    clock.now += 11
    assert store.close_due_round()  # Without c.
    late = store.push("c", 1, 0, ones(4.0))
    assert late.staleness == 1  # Computed from version 0, counted in round 2.
    store.push("a", 2, 1, ones(4.0))
    store.push("b", 2, 1, ones(4.0))
    assert store.version == 2
    np.testing.assert_allclose(store.snapshot().flat, ones(-5.0))


def test_a_worker_that_dies_mid_round_stops_holding_it_when_it_expires():
    store, clock = make_store()
    store.push("a", 1, 0, ones(1.0))
    thread, out = fetch_in_thread(store, "a")
    thread.join(timeout=0.3)
    assert thread.is_alive()
    clock.now += 61  # b: no call or heartbeat for the heartbeat timeout.
    store.heartbeat("a")  # a is alive (it waits in its fetch).
    thread.join(timeout=10)
    assert out and out[0].version == 1  # The wait expired b and closed the round.


def test_the_last_leave_closes_a_round_that_waited_for_the_leaver():
    store, _ = make_store()
    store.push("a", 1, 0, ones(2.0))
    store.leave("a")
    assert store.version == 0  # b is still expected.
    store.leave("b")  # Finished without another push: the round closes with a's alone.
    assert store.version == 1
    np.testing.assert_allclose(store.snapshot().flat, ones(-2.0))


def test_a_fetch_that_would_outlast_its_deadline_returns_before_the_round_closes():
    store, _ = make_store()
    store.push("a", 1, 0, ones(1.0))
    snapshot = store.snapshot("a", time_left=2.1)  # The wait keeps a 2 s margin.
    assert snapshot.version == 0


def test_an_open_round_survives_a_checkpoint_and_resumes_in_a_restarted_server(tmp_path):
    store, _ = make_store(momentum=0.9)
    store.push("a", 1, 0, ones(1.0), samples=10)
    checkpointing.save_checkpoint(store, str(tmp_path), run_id="r", quiet=True)

    restarted = ParameterStore(SGD(learning_rate=1.0, momentum=0.9), rounds=RoundState(0.5, 10.0))
    assert checkpointing.restore_at_start(restarted, str(tmp_path), None, "r", True)
    assert restarted.push("a", 1, 0, ones(1.0)).duplicate  # Its push is in the saved round.
    restarted.push("b", 1, 0, ones(3.0), samples=30)
    store.push("b", 1, 0, ones(3.0), samples=30)  # The same round, never interrupted.
    assert restarted.version == store.version == 1
    np.testing.assert_array_equal(restarted.snapshot().flat, store.snapshot().flat)
    np.testing.assert_array_equal(
        restarted.export_state().slots["momentum"], store.export_state().slots["momentum"]
    )


def test_a_saved_round_of_another_size_is_refused():
    store, _ = make_store()
    state = store.export_state()
    bad = dict(state.slots, **{TOTAL_SLOT: np.zeros(5, np.float32)})
    fresh = ParameterStore(SGD(learning_rate=1.0), rounds=RoundState(0.5, 10.0))
    with pytest.raises(ValueError, match="saved round has 5 values"):
        fresh.restore_state(type(state)(state.version, state.specs, state.params, bad, state.meta))


@pytest.mark.parametrize(
    "quorum, timeout, message",
    [(0.0, 1.0, "quorum"), (1.5, 1.0, "quorum"), (0.5, 0.0, "timeout")],
)
def test_bad_round_settings_are_refused_with_their_name(quorum, timeout, message):
    with pytest.raises(ValueError, match=message):
        RoundState(quorum, timeout)
