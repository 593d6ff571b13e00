"""ReplicaSession against a fake client: base versions, recovery, both transports."""

import threading

import grpc
import numpy as np
import pytest

from gasgd_tf.client import PushAck, RequestRejectedError, ServerRestartedError
from gasgd_tf.client.client import Registration
from gasgd_tf.replica import ModelMismatchError, ReplicaSession, SyncSchedule
from gasgd_tf.tensors import TensorSpec

SPECS = (TensorSpec("w", (2,)),)


class FakeClient:
    """A one-tensor server in memory: its version counts the pushes it applied.

    Every call is logged as ("fetch", version) or ("push", client_step,
    base_version); pushes whose 1-based attempt number is in ``lose`` are
    refused as after a server restart.
    """

    client_id, address = "worker_0", "fake:1"

    def __init__(self, lose=(), initialized=True, specs=SPECS, last_step=0, fail_push=None):
        self.version, self.flat, self.log = 0, np.zeros(2, np.float32), []
        self.lose, self.attempts, self.pushed = set(lose), 0, []
        self.initialized, self.specs, self.last_step = initialized, specs, last_step
        self.fail_push = fail_push
        self.register_calls = self.heartbeat_secs = 0
        self.threads = set()
        self.closed = False

    def wait_for_server(self, timeout_secs):
        pass

    def start_heartbeats(self, interval_secs):
        self.heartbeat_secs = interval_secs

    def register(self, specs=()):
        self.register_calls += 1
        if tuple(specs) != self.specs:
            raise RequestRejectedError("tensor 'w' differs", grpc.StatusCode.INVALID_ARGUMENT)
        initialized = self.initialized or self.register_calls > 2
        return Registration(initialized, self.version, self.specs, 0, "s", 1 << 20, self.last_step)

    def initialize(self, specs, flat):
        self.flat, self.initialized = np.array(flat), True
        return True, 0

    def fetch(self, read_only=False):
        self.log.append(("fetch", self.version))
        return self.version, self.specs, self.flat + self.version

    def push(self, grad, base_version, client_step=0, kind="gradient", samples=0):
        self.threads.add(threading.current_thread().name)
        self.attempts += 1
        self.log.append(("push", client_step, base_version))
        if self.fail_push == self.attempts:
            raise RequestRejectedError("non-finite", grpc.StatusCode.INVALID_ARGUMENT)
        if self.attempts in self.lose:
            raise ServerRestartedError("restored to version 0", grpc.StatusCode.ABORTED)
        self.pushed.append(np.array(grad))
        self.version += 1
        return PushAck(self.version, self.version - 1 - base_version, False)

    def leave(self):
        return self.version

    def close(self):
        self.closed = True


class FakeVariables:
    specs = SPECS

    def __init__(self):
        self.flat = np.full(2, -1.0, np.float32)

    def read(self):
        return self.flat.copy()

    def assign(self, flat):
        self.flat = np.array(flat)


class StepCounter:
    """The update is the number of steps computed since the last push."""

    def __init__(self):
        self.steps = 0

    def step(self):
        self.steps += 1

    def take(self):
        taken, self.steps = self.steps, 0
        return np.full(2, taken, np.float32)


def run(client, n_push, n_fetch, num_steps, overlap=False, steps=None, finish=True):
    counter = StepCounter()
    session = ReplicaSession(
        client,
        FakeVariables(),
        SyncSchedule(n_push, n_fetch, num_steps),
        counter.take,
        overlap=overlap,
        say=lambda line: None,
    )
    session.join(10, heartbeat_secs=5)
    for step in range(1, (steps or num_steps) + 1):
        session.before_step()
        counter.step()
        session.after_step(step)
    if finish:
        session.finish()
        session.leave()
    return session


# n_push=2, n_fetch=3, 7 steps: pushes at 2, 4, 6 and the last step; fetches
# at the join, 3 and 6. A push names the version its oldest step computed
# with: steps 3-4 ran on the join's weights (version 0), steps 5-6 on those
# fetched at 3 (version 1), step 7 on those fetched at 6 (version 3).
EXPECTED_LOG = [
    ("fetch", 0),
    ("push", 2, 0),
    ("fetch", 1),
    ("push", 4, 0),
    ("push", 6, 1),
    ("fetch", 3),
    ("push", 7, 3),
]


@pytest.mark.parametrize("overlap", [False, True])
def test_pushes_name_the_version_their_oldest_gradient_was_computed_from(overlap):
    client = FakeClient()
    session = run(client, 2, 3, 7, overlap=overlap)
    assert client.log == EXPECTED_LOG
    assert [int(g[0]) for g in client.pushed] == [2, 2, 2, 1]  # Every step pushed once.
    stats = session.stats
    assert (stats.pushes, stats.fetches, stats.pushes_lost, stats.version) == (4, 2, 0, 4)
    assert client.heartbeat_secs == 5
    expected_thread = "gasgd-sync" if overlap else threading.current_thread().name
    assert client.threads == {expected_thread}


def test_a_lost_push_refetches_and_the_next_push_starts_from_the_new_weights():
    client = FakeClient(lose={2})  # The push of step 4.
    session = run(client, 2, 3, 7)
    assert client.log == [
        ("fetch", 0),
        ("push", 2, 0),
        ("fetch", 1),
        ("push", 4, 0),  # Lost.
        ("fetch", 1),  # The recovery; the session goes on from version 1.
        ("push", 6, 1),
        ("fetch", 2),
        ("push", 7, 2),
    ]
    assert [int(g[0]) for g in client.pushed] == [2, 2, 1]
    stats = session.stats
    assert (stats.pushes, stats.pushes_lost, stats.fetches) == (3, 1, 2)


def test_with_overlap_a_lost_push_loses_what_was_computed_from_the_same_weights():
    # n_push = n_fetch = 1: the loss of step 2's push is found when step 3
    # hands over its own (computed from the same lost weights): both are lost.
    client = FakeClient(lose={2})
    gate = threading.Event()
    original = client.push

    def push_then_wait(grad, base_version, client_step=0, **kwargs):
        try:
            return original(grad, base_version, client_step, **kwargs)
        finally:
            if client_step == 2:
                gate.wait(10)  # Still in flight when step 3 starts: found at the hand-over.

    client.push = push_then_wait
    counter = StepCounter()
    session = ReplicaSession(
        client, FakeVariables(), SyncSchedule(1, 1, 5), counter.take, overlap=True
    )
    session.join(10)
    for step in range(1, 6):
        session.before_step()
        counter.step()
        if step == 3:
            gate.set()
        session.after_step(step)
    session.finish()
    pushes = [entry for entry in client.log if entry[0] == "push"]
    assert [p[1] for p in pushes] == [1, 2, 4, 5]  # Step 3's push was never sent.
    assert (session.stats.pushes, session.stats.pushes_lost) == (3, 2)
    assert session.stats.pushes + session.stats.pushes_lost == 5  # Every push accounted for.


def test_finish_pushes_what_an_open_ended_run_computed_since_the_last_push():
    client = FakeClient()
    session = run(client, 4, 100, None, steps=6)
    assert [e for e in client.log if e[0] == "push"] == [("push", 4, 0), ("push", 6, 0)]
    assert [int(g[0]) for g in client.pushed] == [4, 2]
    assert session.stats.pushes == 2


def test_a_resumed_session_counts_steps_and_client_steps_from_where_it_left():
    client = FakeClient(last_step=4)
    counter = StepCounter()
    session = ReplicaSession(client, FakeVariables(), SyncSchedule(2, 2, 8), counter.take)
    assert session.join(10) == 4
    session.resume_at(4)
    for step in range(5, 9):
        session.before_step()
        counter.step()
        session.after_step(step)
    assert [e[1] for e in client.log if e[0] == "push"] == [6, 8]
    # A Keras callback restarts its steps at 0 and offsets the client steps instead.
    client2 = FakeClient(last_step=4)
    session2 = ReplicaSession(client2, FakeVariables(), SyncSchedule(2, 2), StepCounter().take)
    session2.step_offset = session2.join(10)
    session2.before_step()
    session2.after_step(2)
    assert [e[1] for e in client2.log if e[0] == "push"] == [6]


def test_an_error_of_a_background_push_is_raised_in_the_training_thread():
    client = FakeClient(fail_push=1)
    counter = StepCounter()
    session = ReplicaSession(
        client, FakeVariables(), SyncSchedule(1, 1, 5), counter.take, overlap=True
    )
    session.join(10)
    # Raised by the first call after the background push failed: after_step's
    # poll if the push was already done, else finish's wait.
    with pytest.raises(RequestRejectedError, match="non-finite"):
        session.before_step()
        counter.step()
        session.after_step(1)
        session.finish()
    assert client.threads == {"gasgd-sync"}


def test_the_join_offers_the_weights_only_to_an_uninitialized_server():
    client = FakeClient(initialized=False)
    variables = FakeVariables()
    ReplicaSession(client, variables, SyncSchedule(1, 1)).join(10)
    np.testing.assert_array_equal(client.flat, [-1.0, -1.0])  # The offer.
    np.testing.assert_array_equal(variables.flat, [-1.0, -1.0])  # Fetched back, version 0.
    offered = FakeClient(initialized=False)
    ReplicaSession(offered, FakeVariables(), SyncSchedule(1, 1)).join(
        10, initial=lambda: np.array([7.0, 8.0], np.float32)
    )
    np.testing.assert_array_equal(offered.flat, [7.0, 8.0])


def test_a_model_that_differs_from_the_servers_is_refused_naming_the_tensor():
    other = (TensorSpec("w", (3,)),)
    with pytest.raises(ModelMismatchError, match="tensor 'w' differs"):
        ReplicaSession(FakeClient(specs=other), FakeVariables(), SyncSchedule(1, 1)).join(10)

    class Accepting(FakeClient):  # Registers anything, then serves another model.
        def register(self, specs=()):
            return Registration(True, 0, self.specs, 0, "s", 1 << 20, 0)

    with pytest.raises(ModelMismatchError, match="does not match"):
        ReplicaSession(Accepting(specs=other), FakeVariables(), SyncSchedule(1, 1)).join(10)


def test_a_read_only_replica_waits_for_a_worker_to_initialize_the_server():
    client = FakeClient(initialized=False)
    session = ReplicaSession(client, FakeVariables(), SyncSchedule(1, 1))
    session.join_read_only(10, heartbeat_secs=3)
    assert client.register_calls == 3 and client.heartbeat_secs == 3
    assert not client.initialized  # It never offered weights.
    session.fetch(read_only=True)
    assert session.stats.fetches == 1


def test_a_read_only_replica_names_the_server_nobody_initialized():
    from gasgd_tf.client import ServerUnavailableError

    class Never(FakeClient):
        def register(self, specs=()):
            return Registration(False, 0, (), 0, "s", 1 << 20, 0)

    session = ReplicaSession(Never(), FakeVariables(), SyncSchedule(1, 1))
    with pytest.raises(ServerUnavailableError, match="fake:1 was not initialized"):
        session.join_read_only(0.3, heartbeat_secs=None)


def test_a_read_only_replica_waits_for_initialization_as_long_as_it_is_told():
    # A worker may take minutes to start TensorFlow: the evaluator's wait for
    # it (eval.init_timeout_secs) is its own, not the connect timeout.
    client = FakeClient(initialized=False)
    session = ReplicaSession(client, FakeVariables(), SyncSchedule(1, 1))
    session.join_read_only(0.0, heartbeat_secs=None, init_timeout_secs=10)
    assert client.register_calls == 3
