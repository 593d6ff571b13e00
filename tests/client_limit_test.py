"""Bounded client records (ps.max_clients) and a Status reply that fits any count."""

import time

import grpc
import numpy as np
import pytest

from gasgd_tf import config_base, wire
from gasgd_tf.client import ParameterClient, RequestRejectedError
from gasgd_tf.proto import parameter_service_pb2 as pb
from gasgd_tf.proto import parameter_service_pb2_grpc as pb_grpc
from gasgd_tf.server import SGD, ParameterStore
from gasgd_tf.server.servicer import STATUS_MAX_CLIENTS
from gasgd_tf.server.staleness import StalenessConfig
from gasgd_tf.server.store import DEFAULT_MAX_CLIENTS, ClientLimitError
from gasgd_tf.tensors import FlatLayout, TensorSpec

SPECS = (TensorSpec("w", (3,)),)
SIZE = FlatLayout(SPECS).size
GRPC_DEFAULT_LIMIT = 4 << 20  # What a client with default settings accepts.


class Clock:
    """A wall clock the test moves by hand."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def make_store(max_clients, timeout=None, clock=None, **kwargs):
    store = ParameterStore(
        SGD(learning_rate=1.0),
        max_clients=max_clients,
        heartbeat_timeout_secs=timeout,
        clock=clock or time.time,
        **kwargs,
    )
    store.initialize("init", SPECS, np.zeros(SIZE, np.float32))
    return store


def ids(store, **kwargs):
    return [c.client_id for c in store.status(**kwargs).clients]


def test_the_default_limit_is_the_configs():
    assert config_base.get_base_config().ps.max_clients == DEFAULT_MAX_CLIENTS == 1024
    assert STATUS_MAX_CLIENTS >= DEFAULT_MAX_CLIENTS  # A default server lists every client.
    config = config_base.get_base_config()
    config.ps.max_clients = 0
    with pytest.raises(ValueError, match="ps.max_clients must be an integer >= 1"):
        config_base.finalize(config)


def test_new_ids_beyond_the_limit_are_refused_and_known_ones_still_served():
    store = make_store(max_clients=3)  # "init" is one of them.
    store.heartbeat("a")
    store.heartbeat("b")
    with pytest.raises(ClientLimitError, match=r"ps.max_clients=3\)"):
        store.heartbeat("c")
    with pytest.raises(ClientLimitError):  # Every kind of call that names a new id.
        store.snapshot("c", read_only=True)
    with pytest.raises(ClientLimitError):
        store.push("c", 1, 0, np.ones(SIZE, np.float32))
    assert store.version == 0  # The refused push changed nothing.
    store.heartbeat("a")  # Known ids are never refused.
    assert store.push("b", 1, 0, np.ones(SIZE, np.float32)).version == 1
    status = store.status()
    assert (status.num_clients, status.clients_refused, status.max_clients) == (3, 3, 3)
    assert ids(store) == ["init", "a", "b"]


def test_a_full_table_forgets_expired_read_only_then_left_read_only_then_expired_clients():
    clock = Clock()
    store = make_store(max_clients=5, timeout=10, clock=clock)
    store.snapshot("worker", read_only=False)  # Trains.
    store.snapshot("eval", read_only=True)  # Read-only.
    store.heartbeat("tool")
    clock.now += 5
    store.heartbeat("left_tool")
    store.leave("left_tool")  # Left, never trained.
    store.heartbeat("init")  # Keeps "init" fresh.
    clock.now += 6  # worker, eval and tool (seen 11 s ago) expire; the others do not.
    store.heartbeat("init")
    store.heartbeat("new_1")  # Full: forgets the oldest expired read-only record.
    assert "eval" not in ids(store) and "tool" in ids(store)
    store.heartbeat("new_2")
    assert "tool" not in ids(store)
    store.heartbeat("new_3")  # No expired read-only left: a read-only one that left.
    assert "left_tool" not in ids(store)
    store.heartbeat("new_4")  # Then an expired worker.
    assert "worker" not in ids(store)
    with pytest.raises(ClientLimitError):  # Only active, unexpired clients remain.
        store.heartbeat("new_5")
    assert sorted(ids(store)) == ["init", "new_1", "new_2", "new_3", "new_4"]


def test_a_worker_that_left_is_never_forgotten():
    clock = Clock()
    store = make_store(max_clients=2, timeout=10, clock=clock)
    store.push("worker_0", 1, 0, np.ones(SIZE, np.float32))
    store.leave("worker_0")  # The evaluator waits for this; the sequence dedupes retries.
    clock.now += 60
    store.heartbeat("a")  # "init" expired (read-only): forgotten instead.
    with pytest.raises(ClientLimitError):
        store.heartbeat("b")
    assert ids(store) == ["worker_0", "a"]
    assert store.register("worker_0", None).last_sequence == 1


def test_a_flood_of_new_ids_is_refused_cheaply_until_a_client_may_expire():
    clock = Clock()
    store = make_store(max_clients=64, timeout=30, clock=clock)
    for i in range(63):
        store.heartbeat(f"real_{i}")
    start = time.perf_counter()
    for i in range(20_000):  # The 20,000 heartbeats with distinct ids.
        with pytest.raises(ClientLimitError):
            store.heartbeat(f"flood_{i}")
    elapsed = time.perf_counter() - start
    status = store.status(max_listed=0)
    assert (status.num_clients, status.clients_refused) == (64, 20_000)
    assert elapsed < 10  # No scan of the table per refusal (measured well under 1 s).
    clock.now += 31  # Now the silent ones expire: new ids get their records.
    store.heartbeat("late")
    assert "late" in ids(store) and store.status(max_listed=0).num_clients == 64


def test_a_bounded_fetch_from_a_new_id_is_refused_before_it_waits():
    store = make_store(max_clients=2, staleness=StalenessConfig("bounded", bound=0))
    store.snapshot("worker_0")
    with pytest.raises(ClientLimitError):
        store.snapshot("worker_1")  # Would wait for worker_0's push; refused at once instead.
    # worker_1 left nothing behind: worker_0's next round is not held up by it.
    assert store.push("worker_0", 1, 0, np.ones(SIZE, np.float32)).version == 1
    assert store.snapshot("worker_0").version == 1


def test_restore_keeps_every_saved_client_and_whether_it_trained():
    store = make_store(max_clients=None)
    store.push("worker_0", 1, 0, np.ones(SIZE, np.float32))
    for i in range(5):
        store.heartbeat(f"tool_{i}")
    state = store.export_state()
    restored = ParameterStore(SGD(learning_rate=1.0), max_clients=3)
    restored.restore_state(state)
    assert restored.status(max_listed=0).num_clients == 7  # Above the limit, all kept.
    listed = {c.client_id: c for c in restored.status().clients}
    assert listed["worker_0"].trained and not listed["tool_0"].trained


def test_status_lists_workers_and_named_clients_first_when_they_do_not_all_fit():
    store = make_store(max_clients=None)
    store.push("worker_0", 1, 0, np.ones(SIZE, np.float32))
    store.leave("worker_0")
    store.snapshot("worker_1")
    for i in range(50):
        store.heartbeat(f"tool_{i}")
    seen = {c.client_id: c.last_seen for c in store.status().clients}
    listed = ids(store, client_ids=["tool_7", "nobody"], max_listed=4)
    # The named one first; then the workers (left or not), then the most
    # recently seen active client; each in the order the server met them.
    assert listed == ["tool_7", "worker_0", "worker_1", "tool_49"]
    status = store.status(client_ids=["tool_7"], max_listed=0)
    assert status.clients == () and status.num_clients == 53
    assert (status.active_clients, status.expired_clients) == (52, 0)
    # Asking is no sign of life.
    assert {c.client_id: c.last_seen for c in store.status().clients} == seen


def _fill(store, n):
    for i in range(n):
        store.heartbeat(f"c{'x' * 120}{i:05d}")  # Long ids: big entries.


def test_status_over_grpc_fits_the_default_message_limit_at_any_client_count(serve):
    store = make_store(max_clients=None)  # No limit on records: only Status' own.
    store.push("worker_0", 1, 0, np.ones(SIZE, np.float32))
    store.leave("worker_0")
    _fill(store, 30_000)  # The issue: at ~30,000 the reply passed 4 MiB.
    server = serve(store)
    # A channel with gRPC's default receive limit, as any other client has.
    with grpc.insecure_channel(server.address) as channel:
        status = pb_grpc.ParameterServiceStub(channel).Status(pb.StatusRequest(), timeout=30)
        few = pb_grpc.ParameterServiceStub(channel).Status(
            pb.StatusRequest(client_ids=["c" + "x" * 120 + "00042"], max_clients_listed=2),
            timeout=30,
        )
    assert status.ByteSize() < GRPC_DEFAULT_LIMIT
    assert len(status.clients) == STATUS_MAX_CLIENTS
    assert (status.num_clients, status.clients_not_listed) == (30_002, 30_002 - 1024)
    assert status.active_clients == 30_001 and status.max_clients == 0  # All but worker_0.
    # The evaluator's question (which workers left) is still answered.
    (worker,) = [c for c in status.clients if c.client_id == "worker_0"]
    assert not worker.active and worker.pushes == 1
    assert [c.client_id for c in few.clients] == ["c" + "x" * 120 + "00042", "worker_0"]


def test_the_largest_possible_status_reply_fits_the_default_message_limit():
    # Every field at its largest: 128 four-byte characters, huge counters,
    # all 64 histogram buckets full.
    huge = 2**64 - 1
    summary = pb.StalenessSummary(count=huge, mean=1e300, max=huge, histogram=[huge] * 64)
    client = pb.ClientStatus(
        client_id="\U0001f600" * 128,
        active=True,
        pushes=huge,
        fetches=huge,
        last_sequence=huge,
        last_step=huge,
        last_seen_unix=1e300,
        staleness=summary,
        expired=True,
    )
    reply = pb.StatusResponse(
        initialized=True,
        version=huge,
        updates_applied=huge,
        pushes_rejected=huge,
        duplicate_pushes=huge,
        num_parameters=huge,
        optimizer="x" * 64,
        server_id="x" * 64,
        uptime_secs=1e300,
        staleness=summary,
        clients=[client] * STATUS_MAX_CLIENTS,
        num_clients=huge,
        active_clients=huge,
        expired_clients=huge,
        clients_not_listed=huge,
        max_clients=huge,
        clients_refused=huge,
        malformed_requests=huge,
    )
    assert reply.ByteSize() < GRPC_DEFAULT_LIMIT / 2, reply.ByteSize()


def test_a_new_id_beyond_the_limit_is_resource_exhausted_without_a_retry_hint(serve):
    store = make_store(max_clients=2)
    server = serve(store)
    with ParameterClient(server.address, "worker_0", timeout_secs=10, retry_secs=10) as ok:
        ok.register(SPECS)
        with ParameterClient(server.address, "worker_1", timeout_secs=10, retry_secs=10) as late:
            start = time.monotonic()
            with pytest.raises(RequestRejectedError, match="RESOURCE_EXHAUSTED") as e:
                late.register(SPECS)
            assert time.monotonic() - start < 9  # Not retried: it would fail the same way.
            assert "ps.max_clients=2" in str(e.value)
        stub = pb_grpc.ParameterServiceStub(ok._channel)
        with pytest.raises(grpc.RpcError) as raw:
            stub.Heartbeat(pb.HeartbeatRequest(client_id="worker_2"), timeout=10)
        assert raw.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert wire.RETRY_AFTER_KEY not in dict(raw.value.trailing_metadata() or ())
        ok.heartbeat()  # Known clients go on.
        status = ok.status()
    assert (status.num_clients, status.max_clients, status.clients_refused) == (2, 2, 2)
