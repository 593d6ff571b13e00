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


def test_read_only_fetches_never_wait():
    store = bounded_store(bound=0)
    store.snapshot("worker_0")  # worker_0 computes; with s = 0 nobody else may start.
    start = time.monotonic()
    store.snapshot("eval", read_only=True)
    assert time.monotonic() - start < 0.2
    assert "eval" not in store._admission.outstanding


def test_a_wait_ends_before_the_callers_deadline(capsys):
    store = bounded_store(bound=0)
    store.snapshot("worker_0")
    start = time.monotonic()
    store.snapshot("worker_1", time_left=2.5)  # Deadline margin 2 s: admitted after ~0.5 s.
    assert 0.4 <= time.monotonic() - start < 2.0
    assert "admitted worker_1 past the bound" in capsys.readouterr().out


def test_a_cancelled_wait_leaves_no_trace():
    from gasgd_tf.server.store import WaitAbandoned

    store = bounded_store(bound=0)
    store.snapshot("worker_0")
    with pytest.raises(WaitAbandoned):
        store.snapshot("worker_1", is_active=lambda: False)
    assert store._admission.queue == [] and list(store._admission.outstanding) == ["worker_0"]


def test_a_leave_ends_the_round_of_the_leaver():
    store = bounded_store(bound=0)
    store.snapshot("worker_0")
    store.leave("worker_0")  # Its last round: pushed, then left without pushing again.
    start = time.monotonic()
    store.snapshot("worker_1")
    assert time.monotonic() - start < 0.2


def test_the_schedule_sets_each_steps_rate_by_version():
    store = ParameterStore(SGD(learning_rate=1.0), schedule=lambda v: 1.0 if v == 0 else 0.25)
    store.initialize("worker_0", SPECS, np.zeros(SIZE, np.float32))
    ones = np.ones(SIZE, np.float32)
    store.push("worker_0", 1, 0, ones)  # At version 0: rate 1.
    store.push("worker_0", 2, 1, ones)  # At version 1: rate 0.25.
    np.testing.assert_allclose(store.snapshot().flat, -1.25)


def test_a_waiting_fetch_gives_up_on_a_silent_worker(capsys):
    store = ParameterStore(
        SGD(learning_rate=1.0), staleness=StalenessConfig("bounded", bound=0, straggler_secs=0.3)
    )
    store.initialize("worker_0", SPECS, np.zeros(SIZE, np.float32))
    store.snapshot("worker_0")  # worker_0 starts a round and never pushes.
    start = time.monotonic()
    store.snapshot("worker_1")
    assert 0.3 <= time.monotonic() - start < 5
    assert "no longer waiting for worker_0" in capsys.readouterr().out
    store.snapshot("eval", read_only=True)  # Read-only fetches never wait.


def run_workers(address, delays, steps):
    """Workers that fetch, "compute" for their delay, and push, like worker.train with n_sync=1."""
    results = {}

    def work(name, delay):
        with ParameterClient(address, name, timeout_secs=30, retry_secs=5) as client:
            client.register(SPECS)
            staleness = []
            for step in range(1, steps + 1):
                version, _, _ = client.fetch()
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
    results = run_workers(server.address, [0.002, 0.002, 0.002, 0.02], steps=40)
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
    results = run_workers(server.address, [0.002, 0.002, 0.002, 0.02], steps=40)
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
