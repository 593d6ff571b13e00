"""Streaming fragment sync (gasgd_tf/replica/streaming.py): the schedule, the stream against a
fake client, a ReplicaSession over a real server, the config's refusals and a CLI run."""

import threading

import grpc
import numpy as np
import pytest
from conftest import assert_refused

from gasgd_tf import config_base, fragments
from gasgd_tf.client import ParameterClient, PushAck, ServerRestartedError
from gasgd_tf.client.client import Registration
from gasgd_tf.replica import ReplicaSession, SyncSchedule
from gasgd_tf.replica.streaming import FragmentStream, StreamingPlan
from gasgd_tf.server import SGD, ParameterStore
from gasgd_tf.server.rounds import RoundState
from gasgd_tf.tensors import FlatLayout, TensorSpec

SPECS = (
    TensorSpec("conv/kernel", (3, 3, 1, 4)),
    TensorSpec("conv/bias", (4,)),
    TensorSpec("dense/kernel", (40, 10)),
    TensorSpec("dense/bias", (10,)),
)
SIZE = FlatLayout(SPECS).size


# -- The schedule --------------------------------------------------------------


def test_fragment_f_syncs_at_offset_f_h_over_f_of_every_period():
    plan = StreamingPlan(fragments=4, period=20)
    assert [plan.offset(f) for f in range(4)] == [0, 5, 10, 15]
    due = {f: [] for f in range(4)}
    for step in range(1, 101):
        for f in plan.due(step, step - 1):
            due[f].append(step)
    # Once per period at its offset, the first a whole period in (never at step <= offset).
    assert due == {
        0: [20, 40, 60, 80, 100],
        1: [25, 45, 65, 85],
        2: [30, 50, 70, 90],
        3: [35, 55, 75, 95],
    }


def test_uneven_offsets_round_down():
    plan = StreamingPlan(fragments=3, period=10)
    assert [plan.offset(f) for f in range(3)] == [0, 3, 6]
    firsts = {f: min(s for s in range(1, 30) if f in plan.due(s, s - 1)) for f in range(3)}
    assert firsts == {0: 10, 1: 13, 2: 16}


def test_a_jump_over_several_steps_makes_each_fragment_due_at_most_once():
    plan = StreamingPlan(fragments=4, period=20)
    assert plan.due(50, 0) == [0, 1, 2, 3]  # Two periods of fragment 0 passed: one sync.
    assert plan.due(24, 16) == [0]
    assert plan.due(26, 24) == [1]
    assert plan.due(5, 5) == [] and plan.due(4, 0) == []


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"fragments": 1, "period": 10}, "1 < fragments <= period, got 1 fragments"),
        ({"fragments": 11, "period": 10}, "got 11 fragments for a period of 10"),
        ({"fragments": 2, "period": 10, "overlap_steps": 10}, "overlap_steps must be in"),
        ({"fragments": 2, "period": 10, "overlap_steps": -1}, "overlap_steps must be in"),
        ({"fragments": 2, "period": 10, "mix_alpha": 1.5}, "mix_alpha must be in"),
        ({"fragments": 2, "period": 10, "mix_alpha": -0.1}, "mix_alpha must be in"),
    ],
)
def test_a_plan_that_cannot_stream_is_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        StreamingPlan(**kwargs)


# -- The stream against a fake client -----------------------------------------


class FakeClient:
    """Records fragment pushes and fetches; a fetch returns ``served`` (per fragment runs)."""

    client_id, address = "worker_0", "fake:1"

    def __init__(self, served=None):
        self.served = served or {}
        self.pushes, self.fetches = [], []
        self.version = 0
        self.fetched = threading.Event()

    def push(self, grad, base_version, client_step=0, kind="gradient", samples=0, fragment=None):
        self.pushes.append((fragment, np.array(grad), base_version, client_step, kind, samples))
        self.version += 1
        return PushAck(self.version, 0, False)

    def fetch(self, read_only=False, fragment=None):
        self.fetches.append(fragment)
        values = self.served.get(fragment.runs, np.full(fragment.size, 100.0, np.float32))
        self.fetched.set()
        return self.version, fragment.specs(SPECS), np.array(values, np.float32)


class FakeVariables:
    specs = SPECS

    def __init__(self, flat):
        self.flat = np.array(flat, np.float32)

    def read(self):
        return self.flat.copy()

    def assign(self, flat):
        self.flat = np.array(flat, np.float32)


def make_stream(fragments_=2, period=10, overlap=0, alpha=0.5, served=None, batch_size=8):
    client = FakeClient(served)
    variables = FakeVariables(np.zeros(SIZE))
    stream = FragmentStream(
        client,
        variables,
        StreamingPlan(fragments_, period, overlap, alpha),
        batch_size,
        inline=True,
    )
    stream.start(np.zeros(SIZE, np.float32), version=0)
    return stream, client, variables


def steps(stream, first, last):
    for step in range(first, last + 1):
        stream.after_step(step, step - 1)


def outside(fragment, flat):
    mask = np.ones(flat.size, bool)
    for begin, end in fragment.runs:
        mask[begin:end] = False
    return flat[mask]


def test_the_stream_cuts_the_model_like_the_fragment_plan():
    stream, _, _ = make_stream(fragments_=3, period=9)
    assert stream.fragments == fragments.plan(SPECS, 3)
    stream.close()


def test_a_fragments_push_is_its_anchor_minus_its_local_values_and_nothing_else():
    stream, client, variables = make_stream(period=10, batch_size=8)
    f0, f1 = stream.fragments
    local = np.random.default_rng(0).standard_normal(SIZE).astype(np.float32)
    variables.assign(local)
    steps(stream, 1, 9)
    assert client.pushes == []
    stream.after_step(10, 9)
    assert client.fetched.wait(10)  # Pushed, then fetched.
    stream.close()
    (fragment, delta, base, step, kind, samples), *rest = client.pushes
    assert rest == []
    assert fragment == f0 and (base, step, kind, samples) == (0, 10, "delta", 80)
    np.testing.assert_array_equal(delta, 0 - f0.gather(local))  # The anchor is 0.
    assert client.fetches == [f0]


@pytest.mark.parametrize(
    "tau",
    [0, 1, 3],
)
def test_fetched_values_are_merged_overlap_steps_after_the_push_and_not_before(tau):
    served = np.full(SIZE, 4.0, np.float32)
    stream, client, variables = make_stream(period=10, overlap=tau, alpha=0.0)
    f0 = stream.fragments[0]
    stream.client.served = {f0.runs: f0.gather(served)}
    steps(stream, 1, 9)
    stream.after_step(10, 9)  # Fragment 0 pushes and fetches from here on.
    assert client.fetched.wait(10)  # Its values have arrived: only the schedule holds them.
    for step in range(11, 10 + tau + 1):
        assert not variables.flat.any(), f"merged before step {10 + tau} (at {step - 1})"
        stream.after_step(step, step - 1)
    merged = variables.read()
    np.testing.assert_array_equal(f0.gather(merged), f0.gather(served))
    assert not outside(f0, merged).any()
    stream.close()


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_the_merge_keeps_alpha_of_the_local_values_and_takes_the_rest_fetched(alpha):
    rng = np.random.default_rng(1)
    served = rng.standard_normal(SIZE).astype(np.float32)
    local = rng.standard_normal(SIZE).astype(np.float32)
    stream, client, variables = make_stream(period=10, overlap=2, alpha=alpha)
    f0 = stream.fragments[0]
    client.served = {f0.runs: f0.gather(served)}
    variables.assign(local)
    steps(stream, 1, 12)  # Pushed at 10, merged at 12.
    merged = variables.read()
    a = np.float32(alpha)
    np.testing.assert_allclose(
        f0.gather(merged), a * f0.gather(local) + (1 - a) * f0.gather(served), rtol=1e-6
    )
    assert outside(f0, merged).tobytes() == outside(f0, local).tobytes()
    # The fetched values are the fragment's new anchor: its next push is measured from them.
    steps(stream, 13, 22)  # Pushed at 20 (landed at 22).
    stream.close()
    (_, first, *_), (_, second, *_) = [p for p in client.pushes if p[0] == f0]
    np.testing.assert_array_equal(first, -f0.gather(local))
    np.testing.assert_allclose(second, f0.gather(served) - f0.gather(merged), rtol=1e-6)


def test_finish_pushes_each_fragments_remainder_once_and_fetches_nothing():
    stream, client, _ = make_stream(period=10, overlap=1, batch_size=2)
    f0, f1 = stream.fragments
    steps(stream, 1, 23)  # Fragment 0 synced at 10 and 20, fragment 1 at 15.
    fetched = list(client.fetches)
    assert fetched == [f0, f1, f0]
    stream.finish(23)
    remainders = [(p[0], p[3], p[5]) for p in client.pushes[3:]]
    assert remainders == [(f0, 23, 6), (f1, 23, 16)]  # Samples: steps since its last push.
    assert client.fetches == fetched
    assert stream.finish(23) == []  # Nothing left to push.
    stream.close()


def test_finish_at_a_fragments_own_sync_step_pushes_only_the_others():
    stream, client, _ = make_stream(period=10, overlap=3)
    f0, f1 = stream.fragments
    steps(stream, 1, 20)  # Fragment 0 pushed at 20, its fetch still in flight.
    landed = stream.finish(20)
    assert [p[0] for p in client.pushes] == [f0, f1, f0, f1]
    assert [s.fetched_version is not None for s in landed] == [True, False]
    stream.close()


# -- ReplicaSession over a real server -----------------------------------------


def streaming_session(
    address,
    num_steps,
    fragments_=2,
    period=10,
    overlap=2,
    alpha=0.5,
    client_id="worker_0",
    inline=True,
):
    client = ParameterClient(address, client_id, timeout_secs=10)
    init = np.random.default_rng(2).standard_normal(SIZE).astype(np.float32)
    variables = FakeVariables(init)
    stream = FragmentStream(
        client,
        variables,
        StreamingPlan(fragments_, period, overlap, alpha),
        batch_size=4,
        inline=inline,
    )
    session = ReplicaSession(
        client,
        variables,
        SyncSchedule(period, period, num_steps),
        push_kind="delta",
        batch_size=4,
        say=lambda line: None,
        stream=stream,
    )
    return session, variables


def test_a_streaming_session_moves_the_server_one_version_per_fragment_sync(serve):
    store = ParameterStore(SGD(learning_rate=1.0), push_kind="delta")
    server = serve(store)
    session, variables = streaming_session(server.address, num_steps=30)
    session.join(10)
    pushed, versions = [], []
    try:
        for step in range(1, 31):
            session.before_step()
            variables.assign(variables.read() - np.float32(0.01) * step)  # A local step.
            if session.after_step(step).push:
                pushed.append(step)
            versions.append(session.stats.version)
        session.finish()
        final = variables.read()
        stats = session.stats
    finally:
        session.close()
    assert pushed == [10, 15, 20, 25]  # Fragment 0 at 10, 20; fragment 1 at 15, 25; 30 is last.
    # Each sync lands 2 steps after its push, one server version later than the one before.
    assert [versions[s - 1] for s in (11, 12, 16, 17, 21, 22, 26, 27)] == [0, 1, 1, 2, 2, 3, 3, 4]
    # And each fragment's remainder at the end: 6 fragment syncs, one version each.
    assert store.version == stats.pushes == stats.version == 6
    assert stats.fetches == 4 and stats.pushes_lost == 0
    # One worker, SGD with lr 1 on deltas from the last fetch: the server ends at its weights.
    np.testing.assert_allclose(store.snapshot().flat, final, atol=1e-5)


def run_worker(session, variables, first, last):
    for step in range(first, last + 1):
        session.before_step()
        variables.assign(variables.read() - np.float32(0.001))  # A local step.
        session.after_step(step)


def test_a_worker_joining_a_streaming_run_late_is_not_held_up_by_round_deadlines(serve, caplog):
    store = ParameterStore(SGD(learning_rate=1.0), push_kind="delta", rounds=RoundState(0.5, 1.0))
    server = serve(store)
    (a, a_vars), (b, b_vars) = [
        streaming_session(server.address, num_steps=30, client_id=f"worker_{i}", inline=False)
        for i in (0, 1)
    ]
    a.join(10)
    try:
        run_worker(a, a_vars, 1, 14)  # Alone: fragment 0's round at 10 closes without b.
        b.join(10)
        threads = [
            threading.Thread(target=run_worker, args=(a, a_vars, 15, 30)),
            threading.Thread(target=run_worker, args=(b, b_vars, 1, 30)),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        for session in (a, b):
            session.finish()
    finally:
        a.close()
        b.close()
    assert "closed at its deadline" not in caplog.text


class RestartingClient(FakeClient):
    """A one-server fake that a session can join; its ``lose``-th push finds it restarted."""

    def __init__(self, lose):
        super().__init__()
        self.lose, self.attempts, self.whole_fetches = lose, 0, 0
        self.flat = np.full(SIZE, 7.0, np.float32)

    def wait_for_server(self, timeout_secs):
        pass

    def register(self, specs=()):
        return Registration(True, self.version, SPECS, 0, "s", 1 << 20, 0)

    def fetch(self, read_only=False, fragment=None):
        if fragment is not None:
            return super().fetch(read_only, fragment)
        self.whole_fetches += 1
        return self.version, SPECS, self.flat.copy()

    def push(self, grad, base_version, client_step=0, kind="gradient", samples=0, fragment=None):
        self.attempts += 1
        if self.attempts == self.lose:
            raise ServerRestartedError("restored to version 0", grpc.StatusCode.ABORTED)
        return super().push(grad, base_version, client_step, kind, samples, fragment)

    def close(self):
        pass


def test_a_push_lost_to_a_server_restart_refetches_the_model_and_streams_on_from_it():
    client = RestartingClient(lose=2)  # Fragment 1's first push, at step 15.
    variables = FakeVariables(np.zeros(SIZE))
    stream = FragmentStream(client, variables, StreamingPlan(2, 10, 0, 0.0), inline=True)
    session = ReplicaSession(
        client,
        variables,
        SyncSchedule(10, 10, 40),
        push_kind="delta",
        stream=stream,
        say=lambda line: None,
    )
    session.join(10)  # Weights 7.
    client.flat = np.full(SIZE, 9.0, np.float32)  # What the restored server serves.
    for step in range(1, 27):  # Fragment 1's push at 25.
        session.before_step()
        variables.assign(variables.read() - np.float32(1))  # A local step.
        session.after_step(step)
    session.close()
    assert session.stats.pushes_lost == 1 and client.whole_fetches == 2
    f0, f1 = stream.fragments
    # Refetched at step 15, where the push was refused (inline: at once): 10 steps later the
    # weights are -1, and fragment 1's push at 25 is measured from the refetched 9, not from
    # the join's 7.
    [(_, delta, _, step, _, _)] = [p for p in client.pushes if p[0] == f1]
    assert step == 25
    np.testing.assert_array_equal(delta, np.full(f1.size, 10.0, np.float32))
    # Fragment 0, pushed at 20 (5 steps after the refetch), likewise.
    np.testing.assert_array_equal(client.pushes[1][1], np.full(f0.size, 5.0, np.float32))


# -- The config ----------------------------------------------------------------

STREAMING = {"sync.fragments": 4, "worker.push": "delta", "n_sync": 20}


def test_a_streaming_config_with_what_it_needs_is_accepted():
    config = config_base.get_base_config()
    config.update_from_flattened_dict({**STREAMING, "sync.overlap_steps": 19, "sync.mix_alpha": 1})
    config_base.finalize(config)
    assert (config.sync.fragments, config.n_push, config.n_fetch) == (4, 20, 20)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"worker.push": "gradient"}, "needs worker.push='delta', got 'gradient'"),
        ({"n_push": 20, "n_fetch": 10}, "needs n_push == n_fetch, got 20 and 10"),
        ({"sync.fragments": 21}, "needs at most n_push=20 fragments"),
        ({"sync.overlap_steps": 20}, "needs sync.overlap_steps < n_push=20"),
        ({"ps.staleness": "lr_scale"}, "needs ps.staleness='none'.*got 'lr_scale'"),
        ({"worker.local_steps": "adaptive"}, "needs worker.local_steps='fixed'"),
        ({"worker.overlap": True}, "needs worker.overlap=False"),
    ],
)
def test_each_need_of_streaming_is_refused_in_one_line_naming_sync_fragments(overrides, message):
    fragments_ = overrides.get("sync.fragments", 4)
    assert_refused({**STREAMING, **overrides}, f"sync.fragments={fragments_} {message}")
    config = config_base.get_base_config()
    config.update_from_flattened_dict({**STREAMING, **overrides})
    with pytest.raises(ValueError) as e:
        config_base.finalize(config)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"sync.fragments": 0}, "sync.fragments"),
        ({"sync.overlap_steps": -1}, "sync.overlap_steps"),
        ({"sync.mix_alpha": 1.5}, "sync.mix_alpha must be in \\[0, 1\\], got 1.5"),
    ],
)
def test_bad_streaming_values_are_refused_naming_the_field(overrides, message):
    assert_refused({**STREAMING, **overrides}, message)
