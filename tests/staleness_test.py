"""Staleness policies: their arithmetic, and each one's defining behaviour with several workers."""

import threading
import time

import numpy as np
import pytest

from gasgd_tf.client import ParameterClient
from gasgd_tf.server import SGD, ParameterStore
from gasgd_tf.server.staleness import (
    BoundedAdmission,
    StalenessConfig,
    dc_compensate,
    lr_scale,
)
from gasgd_tf.tensors import FlatLayout, TensorSpec

SPECS = (TensorSpec("w", (3, 2)), TensorSpec("b", (2,)))
SIZE = FlatLayout(SPECS).size


def make_store(policy="none", lr=1.0, **kwargs):
    store = ParameterStore(SGD(learning_rate=lr), staleness=StalenessConfig(policy, **kwargs))
    store.initialize("worker_0", SPECS, np.zeros(SIZE, np.float32))
    return store


def test_lr_scale_divides_by_staleness_but_never_multiplies():
    assert [lr_scale(s) for s in (0, 1, 2, 4)] == [1.0, 1.0, 0.5, 0.25]


def test_lr_scale_policy_shrinks_stale_steps():
    store = make_store("lr_scale", lr=1.0)
    ones = np.ones(SIZE, np.float32)
    for i in range(3):  # Three fresh pushes: version 3.
        store.push("worker_0", i + 1, i, ones)
    result = store.push("worker_1", 1, 0, ones)  # Computed at version 0: staleness 3.
    assert result.staleness == 3
    np.testing.assert_allclose(store.snapshot().flat, -3.0 - 1.0 / 3.0, rtol=1e-6)


def test_dc_compensation_formula():
    rng = np.random.default_rng(0)
    g, w, w0 = (rng.normal(size=10).astype(np.float32) for _ in range(3))
    out = np.empty(10, np.float32)
    np.testing.assert_allclose(
        dc_compensate(g, w, w0, 0.5, out), g + 0.5 * g * g * (w - w0), rtol=1e-6
    )


def test_dc_asgd_compensates_towards_the_parameters_now():
    store = make_store("dc_asgd", lr=1.0, dc_lambda=0.5)
    store.snapshot("worker_1")  # worker_1 computes from version 0 (all zeros).
    store.snapshot("worker_0")
    store.push("worker_0", 1, 0, np.full(SIZE, 2.0, np.float32))  # Parameters now -2.
    g = np.full(SIZE, 3.0, np.float32)
    store.push("worker_1", 1, 0, g)
    # Compensated: 3 + 0.5 * 9 * (-2 - 0) = -6; the step subtracts it: -2 + 6.
    np.testing.assert_allclose(store.snapshot().flat, 4.0)


def test_bounded_admission_rules():
    a = BoundedAdmission(bound=2)
    assert a.admissible("w0", 0)
    a.start("w0", 0, now=0.0)
    assert a.admissible("w1", 0)  # w0's worst case: 0 + 1 other.
    a.start("w1", 0, now=0.0)
    assert a.admissible("w2", 0)  # 0 + 2 others.
    a.start("w2", 0, now=0.0)
    assert not a.admissible("w3", 0)  # A fourth could make three pushes precede w0's.
    a.finish("w1")  # w1 pushed: version 1.
    assert not a.admissible("w3", 1)  # w0: 1 behind + 2 others = 3 > 2.
    a.finish("w2")
    assert not a.admissible("w3", 2)  # w0: 2 behind + 1 other (w3) = 3 > 2.
    a.finish("w0")
    assert a.admissible("w3", 3)  # Nobody is computing: always admitted.


def test_bounded_zero_runs_one_worker_at_a_time():
    a = BoundedAdmission(bound=0)
    a.start("w0", 0, now=0.0)
    assert not a.admissible("w1", 0)
    a.finish("w0")
    assert a.admissible("w1", 1)


def test_bounded_admission_is_first_come_first_served():
    a = BoundedAdmission(bound=1)
    a.start("w0", 0, now=0.0)
    a.start("w1", 0, now=0.0)
    a.queue.extend(["slow", "fast"])
    a.finish("w0")
    a.finish("w1")
    assert not a.admissible("fast", 2)  # "slow" asked first.
    assert a.admissible("slow", 2)


def test_stragglers_are_dropped_after_their_time():
    a = BoundedAdmission(bound=0)
    a.start("dead", 0, now=0.0)
    assert a.drop_stragglers(now=5.0, straggler_secs=10.0) == []
    assert a.drop_stragglers(now=11.0, straggler_secs=10.0) == ["dead"]
    assert a.admissible("w1", 0)


def bounded_store(bound=0, straggler_secs=10.0):
    store = ParameterStore(
        SGD(learning_rate=1.0),
        staleness=StalenessConfig("bounded", bound=bound, straggler_secs=straggler_secs),
    )
    store.initialize("worker_0", SPECS, np.zeros(SIZE, np.float32))
    return store


class FrozenClock:
    """A store clock that moves only when told: no straggler is ever given up on by itself."""

    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def frozen_bounded_store(bound=0, straggler_secs=10.0):
    """A bounded store whose clock stands still: a waiting fetch ends only by admission."""
    clock = FrozenClock()
    store = ParameterStore(
        SGD(learning_rate=1.0),
        clock=clock,
        staleness=StalenessConfig("bounded", bound=bound, straggler_secs=straggler_secs),
    )
    store.initialize("worker_0", SPECS, np.zeros(SIZE, np.float32))
    return store, clock


def fetch_in_thread(store, client_id, **kwargs):
    """Starts ``store.snapshot(client_id)`` on a thread; returns (thread, results list)."""
    results = []
    thread = threading.Thread(
        target=lambda: results.append(store.snapshot(client_id, **kwargs)), daemon=True
    )
    thread.start()
    return thread, results


def said(capsys, caplog) -> str:
    """What the store told the operator: its printed lines and its log records."""
    return capsys.readouterr().out + caplog.text


def wait_until(predicate, timeout=30.0):
    """Polls ``predicate``; the deadline only guards against a hang."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def test_read_only_fetches_never_wait():
    # The clock stands still, so a fetch that waited would wait forever: only
    # a fetch that never waits returns while worker_0's round is still open.
    store, _ = frozen_bounded_store(bound=0)
    store.snapshot("worker_0")  # worker_0 computes; with s = 0 nobody else may start.
    thread, results = fetch_in_thread(store, "eval", read_only=True)
    thread.join(timeout=30)
    assert not thread.is_alive() and results[0].version == 0
    assert list(store._admission.outstanding) == ["worker_0"]  # Its round is still open.
    assert "eval" not in store._admission.queue


def test_a_wait_ends_before_the_callers_deadline(capsys, caplog, monkeypatch):
    from gasgd_tf.server import store as store_lib

    # A 30 s margin: a loaded machine cannot make the wait overrun the deadline
    # by accident, only a wait that ignores it can.
    monkeypatch.setattr(store_lib, "DEADLINE_MARGIN_SECS", 30.0)
    # Frozen clock: nothing but the deadline can end this wait (worker_0 never pushes).
    store, _ = frozen_bounded_store(bound=0)
    store.snapshot("worker_0")
    time_left = 31.0  # The wait may last 1 s, then must give up.
    start = time.monotonic()
    store.snapshot("worker_1", time_left=time_left)
    elapsed = time.monotonic() - start
    # It waited its full second (not less: the bound held until then) and
    # ended before the caller's deadline.
    assert 1.0 <= elapsed < time_left
    assert "admitted worker_1 past the bound" in said(capsys, caplog)


def test_a_cancelled_wait_leaves_no_trace():
    from gasgd_tf.server.store import WaitAbandoned

    store = bounded_store(bound=0)
    store.snapshot("worker_0")
    with pytest.raises(WaitAbandoned):
        store.snapshot("worker_1", is_active=lambda: False)
    assert store._admission.queue == [] and list(store._admission.outstanding) == ["worker_0"]


def test_a_leave_ends_the_round_of_the_leaver():
    store, _ = frozen_bounded_store(bound=0)  # Frozen clock: no straggler timeout either.
    store.snapshot("worker_0")
    thread, results = fetch_in_thread(store, "worker_1")
    wait_until(lambda: "worker_1" in store._admission.queue)
    thread.join(timeout=0.6)  # A wait cycle or so: it must still be waiting for worker_0.
    assert thread.is_alive() and not results
    store.leave("worker_0")  # Its last round: pushed, then left without pushing again.
    thread.join(timeout=30)
    assert not thread.is_alive() and results[0].version == 0
    assert list(store._admission.outstanding) == ["worker_1"]


def test_the_schedule_sets_each_steps_rate_by_version():
    store = ParameterStore(SGD(learning_rate=1.0), schedule=lambda v: 1.0 if v == 0 else 0.25)
    store.initialize("worker_0", SPECS, np.zeros(SIZE, np.float32))
    ones = np.ones(SIZE, np.float32)
    store.push("worker_0", 1, 0, ones)  # At version 0: rate 1.
    store.push("worker_0", 2, 1, ones)  # At version 1: rate 0.25.
    np.testing.assert_allclose(store.snapshot().flat, -1.25)


def test_a_waiting_fetch_gives_up_on_a_silent_worker(capsys, caplog):
    store, clock = frozen_bounded_store(bound=0, straggler_secs=30.0)
    store.snapshot("worker_0")  # worker_0 starts a round and never pushes.
    thread, results = fetch_in_thread(store, "worker_1")
    wait_until(lambda: "worker_1" in store._admission.queue)
    clock.now += 29.0  # Not yet its time: worker_1 keeps waiting.
    thread.join(timeout=0.6)
    assert thread.is_alive() and not results
    clock.now += 2.0  # 31 s after worker_0's fetch: given up on.
    thread.join(timeout=30)
    assert not thread.is_alive() and results[0].version == 0
    assert "no longer waiting for worker_0" in said(capsys, caplog)
    store.snapshot("eval", read_only=True)  # Read-only fetches never wait.


def run_workers(address, delays, steps, store, patience):
    """Workers that fetch, "compute" for their delay, and push, like worker.train with n_sync=1.

    The last worker is the straggler: its first step computes until the
    others have pushed 3 times since its fetch, or ``patience`` seconds have
    passed, whichever comes first. Without a bound that makes its first push
    at least 3 versions stale, whatever the machine's load; a bound of 2
    must keep the others from getting that far ahead.
    """
    results = {}
    straggler = f"worker_{len(delays) - 1}"

    def work(name, delay):
        with ParameterClient(address, name, timeout_secs=30, retry_secs=5) as client:
            client.register(SPECS)
            staleness = []
            for step in range(1, steps + 1):
                version, _, _ = client.fetch()
                if name == straggler and step == 1:
                    deadline = time.monotonic() + patience
                    while store.version < version + 3 and time.monotonic() < deadline:
                        time.sleep(0.005)
                time.sleep(delay)
                ack = client.push(np.full(SIZE, 1e-3, np.float32), version, client_step=step)
                staleness.append(ack.staleness)
            client.leave()
            results[name] = staleness

    threads = [threading.Thread(target=work, args=(f"worker_{i}", d)) for i, d in enumerate(delays)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return results


def test_bounded_keeps_every_push_within_the_bound_and_does_not_starve_the_slow(serve):
    store = ParameterStore(SGD(learning_rate=0.1), staleness=StalenessConfig("bounded", bound=2))
    store.initialize("worker_0", SPECS, np.zeros(SIZE, np.float32))
    server = serve(store)
    # Four workers; worker_3 is ten times slower than the others.
    # The straggler tries for 1 s to fall 3 versions behind; the bound must not let it.
    results = run_workers(server.address, [0.002, 0.002, 0.002, 0.02], 40, store, patience=1.0)
    assert sorted(results) == [f"worker_{i}" for i in range(4)]
    assert all(len(s) == 40 for s in results.values())  # Everyone finished, the slow one too.
    assert max(max(s) for s in results.values()) <= 2
    status = store.status()
    assert status.staleness.max <= 2 and status.updates_applied == 160


def test_without_a_bound_the_same_workers_get_staler_pushes(serve):
    # The control for the test above: the bound is what keeps staleness low.
    store = ParameterStore(SGD(learning_rate=0.1))
    store.initialize("worker_0", SPECS, np.zeros(SIZE, np.float32))
    server = serve(store)
    # The same straggler, given all the time it needs: without the bound the
    # others run 3 versions ahead of it (this is what the test above rules out).
    results = run_workers(server.address, [0.002, 0.002, 0.002, 0.02], 40, store, patience=60.0)
    assert all(len(s) == 40 for s in results.values())
    assert max(results["worker_3"]) > 2


@pytest.mark.parametrize("bad", [dict(policy="sometimes"), dict(bound=-1), dict(dc_lambda=-1)])
def test_bad_policies_are_refused(bad):
    with pytest.raises(ValueError):
        StalenessConfig(**bad)


@pytest.mark.slow
def test_every_policy_and_adagrad_run_from_the_command_line(digits_data_dir, tmp_path):
    import json
    import os

    from conftest import run_experiment
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    workdir = str(tmp_path / "exp4")
    result = run_experiment(
        "--experiment=exp4",
        "--config.smoke=True",
        "--config.sweep.smoke_steps=20",
        "--config.sweep.clients=(2,)",
        f"--config.data.data_dir={digits_data_dir}",
        f"--workdir={workdir}",
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for variant, field, value in [
        ("none", "staleness", "none"),
        ("lr_scale", "staleness", "lr_scale"),
        ("bounded", "staleness", "bounded"),
        ("dc_asgd", "staleness", "dc_asgd"),
        ("adagrad", "optimizer", "adagrad"),
    ]:
        folder = os.path.join(workdir, f"{variant}_clients2_nsync1_seed0")
        with open(os.path.join(folder, "config.json")) as f:
            assert json.load(f)["ps"][field] == value
        with open(os.path.join(folder, "summary.json")) as f:
            summary = json.load(f)
        assert summary["updates_applied"] == 40
        assert set(summary["staleness_by_client"]) == {"worker_0", "worker_1"}
        if variant == "bounded":
            assert summary["staleness_max"] <= 2
        events = EventAccumulator(
            os.path.join(folder, "tb", "ps_0"), size_guidance={"histograms": 0}
        )
        events.Reload()
        tags = set(events.Tags()["histograms"])
        assert {"ps/staleness", "ps/staleness/worker_0", "ps/staleness/worker_1"} <= tags
    assert "| bounded_clients2_nsync1 |" in open(os.path.join(workdir, "summary.md")).read()
