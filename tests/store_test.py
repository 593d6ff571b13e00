"""Tests for ParameterStore without gRPC: versions, validation, duplicates, concurrency."""

import logging
import subprocess
import sys
import threading

import numpy as np
import pytest

from gasgd_tf.server import (
    SGD,
    AheadOfServerError,
    DivergedError,
    NotInitializedError,
    ParameterStore,
)
from gasgd_tf.tensors import FlatLayout, TensorSpec, ValidationError

SPECS = (TensorSpec("w", (4, 3)), TensorSpec("b", (3,)))
SIZE = FlatLayout(SPECS).size


def make_store(lr=0.5, **kwargs):
    store = ParameterStore(SGD(learning_rate=lr, **kwargs))
    init = np.arange(SIZE, dtype=np.float32)
    assert store.initialize("worker_0", SPECS, init.copy()) == (True, 0)
    return store, init


def test_initialized_once_first_offer_wins():
    store, init = make_store()
    accepted, version = store.initialize("worker_1", SPECS, np.zeros(SIZE, np.float32))
    assert (accepted, version) == (False, 0)
    np.testing.assert_array_equal(store.snapshot().flat, init)


def test_fetch_and_push_before_initialization_fail():
    store = ParameterStore(SGD())
    assert not store.register("worker_0", SPECS).initialized
    with pytest.raises(NotInitializedError):
        store.snapshot()
    with pytest.raises(NotInitializedError):
        store.push("worker_0", 1, 0, np.zeros(SIZE, np.float32))


def test_push_applies_sgd_and_counts_staleness():
    store, init = make_store(lr=0.5)
    grad = np.ones(SIZE, np.float32)
    assert store.push("worker_0", 1, 0, grad).staleness == 0
    result = store.push("worker_1", 1, 0, grad)  # Computed from version 0, applied at 1.
    assert (result.version, result.staleness) == (2, 1)
    np.testing.assert_allclose(store.snapshot().flat, init - 1.0)
    status = store.status()
    assert status.staleness.count == 2 and status.staleness.max == 1
    assert status.staleness.mean == pytest.approx(0.5)
    assert list(status.staleness.histogram[:3]) == [1, 1, 0]
    assert store.drain_staleness() == [0, 1] and store.drain_staleness() == []


def test_retried_push_is_applied_once():
    store, init = make_store(lr=1.0)
    grad = np.ones(SIZE, np.float32)
    first = store.push("worker_0", 1, 0, grad)
    again = store.push("worker_0", 1, 0, grad)
    assert again.duplicate and again.version == first.version == 1
    assert store.version == 1
    np.testing.assert_array_equal(store.snapshot().flat, init - 1.0)
    assert store.status().duplicate_pushes == 1
    # A restarted client learns its last sequence from register and goes on.
    assert store.register("worker_0", SPECS).last_sequence == 1


@pytest.mark.parametrize(
    "client, sequence, base, grad, message",
    [
        ("worker_0", 1, 0, np.full(SIZE, np.nan, np.float32), "'w' has 12 non-finite"),
        ("worker_0", 1, 0, np.r_[np.zeros(SIZE - 1), np.inf].astype(np.float32), "'b' has 1"),
        ("worker_0", 1, 0, np.zeros(SIZE + 1, np.float32), "gradient has shape"),
        ("worker_0", 1, 0, np.zeros(SIZE, np.float64), "dtype float64"),
        ("worker_0", 0, 0, np.zeros(SIZE, np.float32), "sequence must be >= 1"),
        ("", 1, 0, np.zeros(SIZE, np.float32), "client_id is empty"),
    ],
)
def test_bad_push_changes_nothing(client, sequence, base, grad, message):
    store, init = make_store()
    with pytest.raises(ValidationError, match=message):
        store.push(client, sequence, base, grad)
    assert store.version == 0
    np.testing.assert_array_equal(store.snapshot().flat, init)


def test_a_push_from_a_version_the_server_lacks_is_refused_as_ahead():
    # After a restart from a checkpoint, a client's gradient may name a later
    # version: AheadOfServerError (ABORTED on the wire) tells it to fetch.
    store, init = make_store()
    with pytest.raises(AheadOfServerError, match="base_version 5 is ahead"):
        store.push("worker_0", 1, 5, np.zeros(SIZE, np.float32))
    assert store.version == 0 and store.status().pushes_rejected == 1
    np.testing.assert_array_equal(store.snapshot().flat, init)


def test_layout_for_push_checks_the_signature():
    store, _ = make_store()
    assert store.layout_for(SPECS, initialize=False).size == SIZE
    with pytest.raises(ValidationError, match="missing tensor 'b'"):
        store.layout_for(SPECS[:1], initialize=False)
    with pytest.raises(ValidationError, match="no tensors"):
        store.layout_for((), initialize=True)
    with pytest.raises(ValidationError, match=r"'w' has shape \[3, 4\]"):
        store.register("worker_1", (TensorSpec("w", (3, 4)), SPECS[1]))


def test_initialize_rejects_nan():
    store = ParameterStore(SGD())
    bad = np.zeros(SIZE, np.float32)
    bad[0] = np.nan
    with pytest.raises(ValidationError, match="'w' has 1 non-finite"):
        store.initialize("worker_0", SPECS, bad)
    assert not store.initialized


def test_snapshot_is_read_only_and_cached_per_version():
    store, _ = make_store()
    snap = store.snapshot("eval")
    assert store.snapshot() is snap
    with pytest.raises(ValueError):
        snap.flat[0] = 1.0
    store.push("worker_0", 1, 0, np.ones(SIZE, np.float32))
    assert store.snapshot().version == 1 and snap.version == 0
    assert snap.flat[0] == 0.0  # The old snapshot stays as it was.


def test_concurrent_pushes_are_all_applied():
    # Plain SGD is linear, so the result does not depend on the order of pushes.
    store, init = make_store(lr=0.25)
    threads, pushes = 8, 50
    rng = np.random.default_rng(0)
    grads = rng.integers(-4, 5, size=(threads, pushes, SIZE)).astype(np.float32)

    def run(t):
        for i in range(pushes):
            store.push(f"worker_{t}", i + 1, store.version, grads[t, i])
            store.snapshot()

    workers = [threading.Thread(target=run, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert store.version == threads * pushes
    np.testing.assert_allclose(store.snapshot().flat, init - 0.25 * grads.sum(axis=(0, 1)))
    status = store.status()
    assert sorted(c.pushes for c in status.clients) == [pushes] * threads


def test_leave_marks_the_client_inactive():
    store, _ = make_store()
    store.register("worker_1", SPECS)
    assert store.leave("worker_1") == 0
    by_id = {c.client_id: c for c in store.status().clients}
    assert not by_id["worker_1"].active and by_id["worker_0"].active


def test_initialize_checks_the_buffer_against_the_signature():
    store = ParameterStore(SGD())
    with pytest.raises(ValidationError, match=r"initial values have shape \(3,\)"):
        store.initialize("worker_0", SPECS, np.zeros(3, np.float32))
    with pytest.raises(ValidationError, match="exceed the limit"):
        ParameterStore(SGD(), max_parameter_bytes=16).initialize(
            "worker_0", SPECS, np.zeros(SIZE, np.float32)
        )
    assert not store.initialized


def test_client_ids_are_bounded():
    store, _ = make_store()
    with pytest.raises(ValidationError, match="at most 128 printable characters"):
        store.register("x" * 129, None)
    with pytest.raises(ValidationError, match="printable"):
        store.register("worker\n0", None)
    assert store.register("w" * 128, None).initialized


def test_update_that_overflows_the_parameters_stops_the_store():
    # Finite gradients, but lr * g overflows float32: refuse to serve Inf.
    store, init = make_store(lr=1.0)
    big = np.full(SIZE, 3e38, np.float32)
    store.push("worker_0", 1, 0, big)
    with pytest.raises(DivergedError, match="non-finite .* at version 2, applying push 2 of 'w"):
        store.push("worker_0", 2, 1, big)
    with pytest.raises(DivergedError):
        store.snapshot()
    with pytest.raises(DivergedError):
        store.push("worker_1", 1, 2, np.zeros(SIZE, np.float32))
    # The overflowing update was applied and is counted as such.
    assert store.version == store.status().updates_applied == 2


def test_the_store_reports_through_logging(caplog, capsys):
    clock = [100.0]
    store = ParameterStore(SGD(), clock=lambda: clock[0], heartbeat_timeout_secs=5)
    store.initialize("worker_0", SPECS, np.zeros(SIZE, np.float32))
    clock[0] += 10
    with caplog.at_level(logging.INFO, logger="gasgd_tf.server.store"):
        assert store.expire_silent() == ["worker_0"]
        store.heartbeat("worker_0")
    messages = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert (
        logging.WARNING,
        "parameter server: worker_0 sent no call or heartbeat for 5s: "
        "dropped from the staleness bounds until it calls again",
    ) in messages
    assert (logging.INFO, "parameter server: worker_0 is back after it expired") in messages
    assert capsys.readouterr().out == ""  # Nothing printed behind logging's back.


_CONSOLE = """
import sys
import numpy as np
from gasgd_tf.server import SGD, ParameterStore
from gasgd_tf.server.server import log_to_console
from gasgd_tf.tensors import TensorSpec

def main(argv=()):
    log_to_console()  # As the ps role does (gasgd_tf/server/server.py run()).
    clock = [100.0]
    store = ParameterStore(SGD(), clock=lambda: clock[0], heartbeat_timeout_secs=5)
    store.initialize("worker_0", (TensorSpec("w", (2,)),), np.zeros(2, np.float32))
    clock[0] += 10
    store.expire_silent()
    store.heartbeat("worker_0")

if sys.argv[1] == "absl":  # The ps role runs under absl's app.run (gasgd_tf/main.py).
    from absl import app
    app.run(main, argv=sys.argv[:1])
else:
    main()
"""


@pytest.mark.parametrize("runner", ["absl", "plain"])
def test_the_server_process_shows_the_stores_lines_on_its_console(runner):
    result = subprocess.run(
        [sys.executable, "-c", _CONSOLE, runner], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    console = result.stdout + result.stderr
    assert "worker_0 sent no call or heartbeat for 5s" in console
    assert "worker_0 is back after it expired" in console  # INFO lines too.
