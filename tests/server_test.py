"""The parameter service over real gRPC on a loopback port: data integrity and rejections."""

import threading
import time

import grpc
import numpy as np
import pytest

from gasgd_tf import wire
from gasgd_tf.client import ParameterClient, RequestRejectedError
from gasgd_tf.proto import parameter_service_pb2 as pb
from gasgd_tf.proto import parameter_service_pb2_grpc as pb_grpc
from gasgd_tf.server import SGD, ParameterStore
from gasgd_tf.tensors import FlatLayout, TensorSpec

SPECS = (TensorSpec("conv/kernel", (3, 3, 2, 4)), TensorSpec("dense/bias", (10,)))
SIZE = FlatLayout(SPECS).size


@pytest.fixture
def small(serve):
    """A server initialized with SPECS, a client and a raw stub."""
    server = serve(ParameterStore(SGD(learning_rate=0.5)))
    client = ParameterClient(server.address, "worker_0", timeout_secs=10, retry_secs=2)
    client.register(SPECS)
    init = np.random.default_rng(0).normal(size=SIZE).astype(np.float32)
    client.initialize(SPECS, init)
    stub = pb_grpc.ParameterServiceStub(grpc.insecure_channel(server.address))
    yield server, client, stub, init
    client.close()


def push_stream(specs, flat, sequence=1, chunk_bytes=64, base_version=0):
    header = pb.PushHeader(
        client_id="worker_0",
        sequence=sequence,
        base_version=base_version,
        tensors=wire.specs_to_proto(specs),
    )
    return list(wire.encode_stream(pb.PushRequest, header, flat, chunk_bytes))


def wait_until(condition, what: str, timeout: float = 30.0) -> None:
    """Polls ``condition`` until true; the deadline only guards against a hang."""
    give_up = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < give_up, f"timed out waiting until {what}"
        time.sleep(0.01)


def assert_unchanged(client, init, version=0):
    got_version, _, flat = client.fetch()
    assert got_version == version
    assert flat.tobytes() == init.tobytes()


@pytest.mark.slow  # Measured: 3.4 s and +580 MB peak RSS (64 MiB through four copies).
def test_large_model_roundtrip_is_byte_exact(serve):
    # 64 MiB and more in all, with one 40 MiB tensor: far beyond gRPC's 4 MiB limit.
    specs = (
        TensorSpec("big", (2560, 4096)),
        TensorSpec("mid", (1024, 1024, 6)),
        TensorSpec("odd", (7, 13)),
    )
    layout = FlatLayout(specs)
    assert layout.nbytes > 64 << 20 and specs[0].nbytes > 4 << 20
    server = serve(ParameterStore(SGD(learning_rate=1.0)))
    rng = np.random.default_rng(1)
    with ParameterClient(server.address, "worker_0", timeout_secs=60) as client:
        client.register(specs)
        init = rng.normal(size=layout.size).astype(np.float32)
        assert client.initialize(specs, init) == (True, 0)
        version, got_specs, flat = client.fetch()
        assert (version, got_specs) == (0, specs)
        assert flat.tobytes() == init.tobytes()

        grad = rng.normal(size=layout.size).astype(np.float32)
        ack = client.push(grad, base_version=0)
        assert (ack.version, ack.staleness, ack.duplicate) == (1, 0, False)
        version, _, flat = client.fetch()
        # SGD with lr 1 in float32, computed the same way here.
        assert version == 1 and flat.tobytes() == (init - grad).tobytes()


def test_fetch_before_initialize_is_failed_precondition(serve):
    server = serve(ParameterStore(SGD()))
    with ParameterClient(server.address, "eval", retry_secs=1) as client:
        with pytest.raises(RequestRejectedError, match="not initialized") as e:
            client.fetch()
        assert e.value.code == grpc.StatusCode.FAILED_PRECONDITION


BAD_SIGNATURES = [
    ((TensorSpec("conv/kernel", (3, 3, 4, 2)), SPECS[1]), "'conv/kernel' has shape"),
    ((SPECS[0], TensorSpec("dense/bias", (10,), "float64")), "'dense/bias' has dtype float64"),
    ((*SPECS, TensorSpec("extra", (1,))), "unknown tensor 'extra'"),
    ((SPECS[0],), "missing tensor 'dense/bias'"),
]


@pytest.mark.parametrize("specs, message", BAD_SIGNATURES)
def test_push_with_wrong_signature_is_rejected(small, specs, message):
    _, client, stub, init = small
    flat = np.zeros(FlatLayout([TensorSpec(s.name, s.shape) for s in specs]).size, np.float32)
    with pytest.raises(grpc.RpcError) as e:
        stub.Push(iter(push_stream(specs, flat)), timeout=10)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in e.value.details()
    assert_unchanged(client, init)
    assert client.status().pushes_rejected == 1


@pytest.mark.parametrize("bad_value", [np.nan, np.inf, -np.inf])
def test_push_with_non_finite_values_is_rejected(small, bad_value):
    _, client, _, init = small
    grad = np.zeros(SIZE, np.float32)
    grad[-1] = bad_value  # In dense/bias, the last tensor.
    with pytest.raises(RequestRejectedError, match="'dense/bias' has 1 non-finite") as e:
        client.push(grad, base_version=0)
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert_unchanged(client, init)


def test_truncated_push_stream_is_rejected(small):
    _, client, stub, init = small
    messages = push_stream(SPECS, np.ones(SIZE, np.float32), chunk_bytes=64)
    with pytest.raises(grpc.RpcError) as e:
        stub.Push(iter(messages[:-2]), timeout=10)  # The last two chunks never come.
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # 256 of 328 bytes arrived: the stream stopped inside the first tensor.
    assert "truncated stream: received 256 of 328 bytes" in e.value.details()
    assert "'conv/kernel' is incomplete" in e.value.details()
    assert_unchanged(client, init)


def test_out_of_order_and_headerless_streams_are_rejected(small):
    _, client, stub, init = small
    messages = push_stream(SPECS, np.ones(SIZE, np.float32), chunk_bytes=64)
    swapped = [messages[0], messages[2], messages[1], *messages[3:]]
    for stream, message in [
        (swapped, "offset 64 out of order, expected offset 0 (in tensor 'conv/kernel')"),
        (messages[1:], "must start with a header"),
        ([messages[0], messages[0]], "a second header"),
    ]:
        with pytest.raises(grpc.RpcError) as e:
            stub.Push(iter(stream), timeout=10)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert message in e.value.details()
    assert_unchanged(client, init)


def test_oversized_chunk_is_rejected(small):
    _, client, stub, init = small
    header = pb.PushRequest(
        header=pb.PushHeader(client_id="worker_0", sequence=1, tensors=wire.specs_to_proto(SPECS))
    )
    chunk = pb.PushRequest(chunk=pb.Chunk(offset=0, data=b"\0" * (wire.MAX_CHUNK_BYTES + 4)))
    with pytest.raises(grpc.RpcError) as e:
        stub.Push(iter([header, chunk]), timeout=10)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "exceeds the limit" in e.value.details()
    assert_unchanged(client, init)


def test_retried_push_over_grpc_is_applied_once(small):
    _, client, stub, init = small
    grad = np.ones(SIZE, np.float32)
    first = stub.Push(iter(push_stream(SPECS, grad, sequence=7)), timeout=10)
    again = stub.Push(iter(push_stream(SPECS, grad, sequence=7)), timeout=10)
    assert (first.version, first.duplicate) == (1, False)
    assert (again.version, again.duplicate) == (1, True)
    version, _, flat = client.fetch()
    assert version == 1
    np.testing.assert_array_equal(flat, init - np.float32(0.5) * grad)
    assert client.status().duplicate_pushes == 1


def test_register_with_mismatched_signature_is_rejected(small):
    server, _, _, _ = small
    with ParameterClient(server.address, "worker_1", retry_secs=1) as other:
        with pytest.raises(RequestRejectedError, match="INVALID_ARGUMENT.*'conv/kernel' has shape"):
            other.register((TensorSpec("conv/kernel", (1,)), SPECS[1]))


def test_status_reports_clients_and_staleness(small):
    _, client, _, _ = small
    client.push(np.ones(SIZE, np.float32), base_version=0, client_step=5)
    client.push(np.ones(SIZE, np.float32), base_version=0, client_step=10)
    client.leave()
    status = client.status()
    assert (status.initialized, status.version, status.updates_applied) == (True, 2, 2)
    assert status.num_parameters == SIZE and status.optimizer == "sgd"
    assert (status.staleness.count, status.staleness.max) == (2, 1)
    assert list(status.staleness.histogram) == [1, 1]
    (worker,) = [c for c in status.clients if c.client_id == "worker_0"]
    assert (worker.active, worker.pushes, worker.last_sequence, worker.last_step) == (
        False,
        2,
        2,
        10,
    )


def initialize_stream(specs):
    header = pb.InitializeHeader(client_id="attacker", tensors=wire.specs_to_proto(specs))
    return iter([pb.InitializeRequest(header=header)])


@pytest.mark.parametrize("shape", [(2**40,), (2**32, 2**32), (2**62, 2), (3, 2**62)])
def test_initialize_with_absurd_shapes_is_invalid_argument(serve, shape):
    # Sizes that overflow int64 or would make the server allocate terabytes
    # before any byte arrives are refused from the header alone.
    store = ParameterStore(SGD())
    server = serve(store)
    stub = pb_grpc.ParameterServiceStub(grpc.insecure_channel(server.address))
    with pytest.raises(grpc.RpcError) as e:
        stub.Initialize(initialize_stream([TensorSpec("w", shape)]), timeout=10)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "exceed the limit" in e.value.details() and "'w'" in e.value.details()
    assert not store.initialized


def test_initialize_after_initialization_is_answered_at_once(small):
    _, client, stub, init = small
    # Header only, no chunks: a server that waited for the data would reject
    # the truncated stream instead of answering accepted=false.
    response = stub.Initialize(initialize_stream(SPECS), timeout=10)
    assert (response.accepted, response.version) == (False, 0)
    assert_unchanged(client, init)


def test_diverged_server_refuses_pushes_and_fetches(serve):
    store = ParameterStore(SGD(learning_rate=1.0))
    server = serve(store)
    with ParameterClient(server.address, "worker_0", retry_secs=1) as client:
        client.register(SPECS)
        client.initialize(SPECS, np.zeros(SIZE, np.float32))
        client.push(np.full(SIZE, 3e38, np.float32), 0)
        with pytest.raises(RequestRejectedError, match="FAILED_PRECONDITION.*non-finite") as e:
            client.push(np.full(SIZE, 3e38, np.float32), 1)
        assert e.value.code == grpc.StatusCode.FAILED_PRECONDITION
        with pytest.raises(RequestRejectedError, match="lower the learning rate"):
            client.fetch()


@pytest.fixture
def one_slot():
    """A server initialized with zeros that receives one push at a time.

    Yields the store, a raw stub, the release of the stalled streams below
    and the push slots (to wait on who holds and who waits).
    """
    from gasgd_tf.server import ParameterServer

    store = ParameterStore(SGD(learning_rate=1.0))
    store.initialize("init", SPECS, np.zeros(SIZE, np.float32))
    server = ParameterServer(store, max_concurrent_pushes=1).start()
    release = threading.Event()  # Ends the stalled streams below.
    channel = grpc.insecure_channel(server.address)
    try:
        yield store, pb_grpc.ParameterServiceStub(channel), release, server.servicer.push_slots
    finally:
        release.set()
        channel.close()
        server.stop(grace=None)


def stalled(messages, release):
    """Sends the header and one chunk, then waits for ``release`` before the rest."""
    yield from messages[:2]
    release.wait(10)
    yield from messages[2:]


def test_pushes_beyond_the_limit_wait_for_a_slot(one_slot):
    # One slot: a second push waits (without reading its chunks) until the
    # first, stalled mid-stream, is done; then both are applied.
    store, stub, release, slots = one_slot
    first = push_stream(SPECS, np.ones(SIZE, np.float32), sequence=1)
    results = {}
    t1 = threading.Thread(
        target=lambda: results.update(a=stub.Push(stalled(first, release), timeout=60))
    )
    t1.start()
    wait_until(lambda: slots.held == 1, "the first push holds the slot")
    second = push_stream(SPECS, np.ones(SIZE, np.float32), sequence=2)
    t2 = threading.Thread(target=lambda: results.update(b=stub.Push(iter(second), timeout=60)))
    t2.start()
    wait_until(lambda: slots.waiting == 1, "the second push waits for the slot")
    assert store.version == 0 and t2.is_alive()
    release.set()
    t1.join(30)
    t2.join(30)
    assert store.version == 2 and {r.version for r in results.values()} == {1, 2}


def test_a_push_that_cannot_get_a_slot_in_time_is_refused_as_busy(one_slot):
    store, stub, release, slots = one_slot
    first = push_stream(SPECS, np.ones(SIZE, np.float32), sequence=1)
    holder = threading.Thread(target=lambda: stub.Push(stalled(first, release), timeout=60))
    holder.start()
    wait_until(lambda: slots.held == 1, "the first push holds the slot")
    second = push_stream(SPECS, np.ones(SIZE, np.float32), sequence=2)
    with pytest.raises(grpc.RpcError) as e:
        stub.Push(iter(second), timeout=1.5)
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # With a retry hint.
    assert "server busy" in e.value.details()
    release.set()
    holder.join(30)
    assert store.version == 1  # The first push was not disturbed.


def test_a_cancelled_push_gives_its_slot_back(one_slot):
    store, stub, release, slots = one_slot
    first = push_stream(SPECS, np.ones(SIZE, np.float32), sequence=1)
    call = stub.Push.future(stalled(first, release), timeout=60)
    wait_until(lambda: slots.held == 1, "the push holds the only slot")
    # The server is reading its stream: the cancel reaches a push in
    # progress (not one that never started), whatever the timing.
    assert call.cancel()
    wait_until(lambda: slots.held == 0, "the cancelled push gave its slot back")
    assert store.status(max_listed=0).pushes_rejected == 1  # Refused, nothing applied.
    release.set()
    second = push_stream(SPECS, np.ones(SIZE, np.float32), sequence=2)
    assert stub.Push(iter(second), timeout=30).version == 1  # The slot is free again.
