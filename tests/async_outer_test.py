"""Asynchronous outer steps: Delayed Nesterov, adaptive local steps (DyLU), their configs."""

import numpy as np
import pytest
from conftest import assert_refused
from replica_session_test import FakeClient, FakeVariables, StepCounter

from gasgd_tf import config_base, recipes
from gasgd_tf.client import ParameterClient, PushAck
from gasgd_tf.replica import ReplicaSession, SyncSchedule
from gasgd_tf.server import SGD, ParameterStore, server_config
from gasgd_tf.server.local_steps import LocalStepsPlanner
from gasgd_tf.server.optimizers import DelayedNesterov
from gasgd_tf.tensors import TensorSpec

RNG = np.random.default_rng(0)


def gradients(count, size=6):
    return [RNG.standard_normal(size).astype(np.float32) for _ in range(count)]


def test_delayed_nesterov_with_period_1_is_keras_nesterov_sgd():
    dn, sgd = DelayedNesterov(0.1, 0.9, dn_period=1), SGD(0.1, momentum=0.9, nesterov=True)
    p, q = np.ones(6, np.float32), np.ones(6, np.float32)
    dn_slots, sgd_slots = dn.init_slots(6), sgd.init_slots(6)
    for g in gradients(30):
        dn.apply(p, g, dn_slots)
        sgd.apply(q, g, sgd_slots)
    np.testing.assert_allclose(p, q, rtol=0, atol=2e-6)  # Two spellings, a few ulps apart.


@pytest.mark.parametrize("c", [0.0, 0.5])
def test_delayed_nesterov_folds_the_average_of_each_period_into_the_momentum(c):
    lr, beta, period = 0.1, 0.9, 3
    dn = DelayedNesterov(lr, beta, dn_period=period, dn_c=c)
    params = np.zeros(6, np.float32)
    slots = dn.init_slots(6)
    w, m, buffer = np.zeros(6), np.zeros(6), np.zeros(6)  # The paper's update, in float64.
    for t, g in enumerate(gradients(9), start=1):
        dn.apply(params, g, slots)
        buffer += g
        if t % period == 0:
            m = beta * m + buffer / period
            w -= lr * (1 - c * period + c) * beta * m
            buffer[:] = 0
        else:
            w -= lr * c * beta * m
        w -= lr * g / period
    np.testing.assert_allclose(params, w, atol=1e-5)
    assert int(slots["iterations"][0]) == 9


def test_delayed_nesterov_resumes_exactly_from_its_slots():
    grads = gradients(7)
    whole, half = DelayedNesterov(0.1, 0.9, dn_period=3), DelayedNesterov(0.1, 0.9, dn_period=3)
    p, q = np.zeros(6, np.float32), np.zeros(6, np.float32)
    slots = whole.init_slots(6)
    for g in grads:
        whole.apply(p, g, slots)
    saved = half.init_slots(6)
    for g in grads[:4]:
        half.apply(q, g, saved)
    resumed = DelayedNesterov(0.1, 0.9, dn_period=3)  # A restarted server, the slots restored.
    copies = {k: v.copy() for k, v in saved.items()}
    for g in grads[4:]:
        resumed.apply(q, g, copies)
    np.testing.assert_array_equal(p, q)


def test_the_staleness_policy_builds_delayed_nesterov_from_the_servers_sgd():
    config = recipes.async_diloco(recipes.default_run())
    config = config_base.finalize(config)
    optimizer = server_config.build_optimizer(config.ps)
    assert isinstance(optimizer, DelayedNesterov)
    assert (optimizer.learning_rate, optimizer.momentum) == (0.7, 0.9)
    assert optimizer.dn_period == config.num_workers == 2  # dn_period 0: the workers.


def test_the_planner_gives_a_slower_worker_proportionally_fewer_local_steps():
    planner = LocalStepsPlanner(50)
    assert planner.observe("fast", 0, 0.0) == 50  # Not measured yet: n_push.
    planner.observe("slow", 0, 0.0)
    assert planner.observe("fast", 50, 1.0) == 50  # 50 steps/s.
    assert planner.observe("slow", 50, 3.0) == 17  # 16.7 steps/s: 50 / 3, rounded.
    planner.forget("fast")  # Gone: the slow one is now the fastest there is.
    assert planner.local_steps("slow") == 50


def test_planned_local_steps_are_checkpointed():
    planner = LocalStepsPlanner(50)
    planner.observe("a", 0, 0.0)
    planner.observe("a", 10, 1.0)
    restored = LocalStepsPlanner(50)
    restored.restore(planner.export())
    assert restored.workers["a"].steps_per_sec == 10.0
    assert restored.workers["a"].local_steps == 50


def test_the_store_answers_each_push_with_the_pushers_next_local_steps():
    clock = [0.0]
    store = ParameterStore(SGD(learning_rate=0.1), clock=lambda: clock[0], max_local_steps=20)
    specs = (TensorSpec("w", (2,)),)
    store.initialize("fast", specs, np.zeros(2, np.float32))
    grad = np.zeros(2, np.float32)
    store.push("fast", 1, 0, grad, client_step=20)
    store.push("slow", 1, 0, grad, client_step=5)
    clock[0] = 1.0
    assert store.push("fast", 2, 0, grad, client_step=40).local_steps == 20
    assert store.push("slow", 2, 0, grad, client_step=10).local_steps == 5
    state = store.export_state()
    assert state.meta["local_steps"]["slow"]["local_steps"] == 5


def test_a_push_reply_carries_the_local_steps_over_grpc(serve):
    store = ParameterStore(SGD(learning_rate=0.1), max_local_steps=20)
    server = serve(store)
    client = ParameterClient(server.address, "w0", timeout_secs=10, retry_secs=5)
    try:
        specs = (TensorSpec("w", (2,)),)
        client.register(specs)
        client.initialize(specs, np.zeros(2, np.float32))
        ack = client.push(np.ones(2, np.float32), 0, client_step=20)
        assert ack.local_steps == 20
    finally:
        client.close()


def test_a_replanned_schedule_counts_multiples_of_the_new_h_from_the_push():
    schedule = SyncSchedule(10, 10, num_steps=100).replanned(4, at=10)
    pushes = [s for s in range(11, 101) if schedule.due(s, s - 1).push]
    assert pushes[:3] == [14, 18, 22] and pushes[-1] == 100
    assert schedule.due(100, 99).fetch is False  # Never a fetch at the last step.


class PlanningClient(FakeClient):
    """Answers every push with H = 3."""

    def push(self, grad, base_version, client_step=0, kind="gradient", samples=0):
        ack = super().push(grad, base_version, client_step, kind, samples)
        return PushAck(ack.version, ack.staleness, ack.duplicate, local_steps=3)


@pytest.mark.parametrize("overlap", [False, True])
def test_the_session_follows_the_local_steps_the_server_plans(overlap):
    client, counter = PlanningClient(), StepCounter()
    session = ReplicaSession(
        client, FakeVariables(), SyncSchedule(5, 5, 20), counter.take, overlap=overlap
    )
    session.join(10)
    for step in range(1, 21):
        session.before_step()
        counter.step()
        session.after_step(step)
    session.finish()
    pushed_at = [entry[1] for entry in client.log if entry[0] == "push"]
    # 5 until the first answer lands, then every 3 steps from there; the last step.
    assert pushed_at == [5, 8, 11, 14, 17, 20]
    assert [int(g[0]) for g in client.pushed] == [5, 3, 3, 3, 3, 3]
    assert session.stats.local_steps == 3


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"ps.aggregation": "rounds"}, "ps.aggregation 'rounds' is not one of"),
        ({"worker.local_steps": "dynamic"}, "worker.local_steps 'dynamic' is not one of"),
        ({"ps.aggregation": "round", "n_fetch": 2}, "'round' needs n_push == n_fetch"),
        ({"worker.local_steps": "adaptive", "n_push": 4}, "'adaptive' needs n_push == n_fetch"),
        ({"ps.aggregation": "round", "ps.staleness": "bounded"}, "needs ps.staleness='none'"),
        (
            {"ps.aggregation": "round", "worker.local_steps": "adaptive"},
            "needs worker.local_steps='fixed'",
        ),
        ({"ps.aggregation": "round", "ps.round_timeout_secs": 90.0}, "must be below"),
        ({"ps.round_quorum": 0.0}, "ps.round_quorum must be a fraction"),
        ({"ps.staleness": "delayed_nesterov"}, "needs ps.optimizer='sgd' with ps.momentum > 0"),
        ({"ps.dn_c": 2.0}, "ps.dn_c must be in"),
    ],
)
def test_bad_low_communication_settings_are_refused_naming_the_field(overrides, message):
    assert_refused(overrides, message)


def test_a_restarted_store_keeps_each_workers_planned_local_steps():
    clock = [0.0]
    store = ParameterStore(SGD(learning_rate=0.1), clock=lambda: clock[0], max_local_steps=20)
    specs = (TensorSpec("w", (2,)),)
    store.initialize("slow", specs, np.zeros(2, np.float32))
    grad = np.zeros(2, np.float32)
    for sequence, step in ((1, 0), (2, 10)):
        store.push("fast", sequence, 0, grad, client_step=2 * step)
        store.push("slow", sequence, 0, grad, client_step=step)
        clock[0] += 1.0
    restarted = ParameterStore(SGD(learning_rate=0.1), max_local_steps=20)
    restarted.restore_state(store.export_state())
    # The plan survives; so does the once-only rule for a retried push.
    assert restarted.push("slow", 2, 0, grad, client_step=10).duplicate
    assert restarted.export_state().meta["local_steps"]["slow"]["local_steps"] == 10


def test_a_retried_delta_is_applied_once():
    store = ParameterStore(SGD(learning_rate=1.0), push_kind="delta")
    store.initialize("w", (TensorSpec("w", (2,)),), np.zeros(2, np.float32))
    delta = np.ones(2, np.float32)
    store.push("w", 1, 0, delta, kind="delta")
    assert store.push("w", 1, 0, delta, kind="delta").duplicate
    np.testing.assert_array_equal(store.snapshot().flat, -delta)
