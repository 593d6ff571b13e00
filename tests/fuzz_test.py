"""Random, truncated and malformed messages to every RPC: the server answers and changes nothing.

Property-based (hypothesis): raw bytes go to each method through a channel
with no serializers, so the server sees exactly what an arbitrary client
(or an attacker) could send. Whatever arrives, the server must answer with
a status code and keep its parameters and version; it must stay up for the
next call.
"""

import threading

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gasgd_tf import wire
from gasgd_tf.proto import parameter_service_pb2 as pb
from gasgd_tf.server import SGD, ParameterServer, ParameterStore
from gasgd_tf.tensors import TensorSpec

SPECS = (TensorSpec("conv/kernel", (3, 3, 2, 4)), TensorSpec("dense/bias", (10,)))
SIZE = 3 * 3 * 2 * 4 + 10
INIT = np.linspace(-1, 1, SIZE, dtype=np.float32)
FUZZ = settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
# Answers a malformed request may get; never UNKNOWN (an unhandled error in our code).
ERRORS = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.INTERNAL,  # gRPC's own answer when a message does not parse.
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.CANCELLED,
}


@pytest.fixture(scope="module")
def target():
    store = ParameterStore(SGD(learning_rate=1.0))
    store.initialize("init", SPECS, INIT.copy())
    server = ParameterServer(store).start()
    channel = grpc.insecure_channel(server.address)
    method = f"/{wire.SERVICE_NAME}/"
    calls = {
        "Register": channel.unary_unary(method + "Register"),
        "Leave": channel.unary_unary(method + "Leave"),
        "Status": channel.unary_unary(method + "Status"),
        "Heartbeat": channel.unary_unary(method + "Heartbeat"),
        "Fetch": channel.unary_stream(method + "Fetch"),
        "Push": channel.stream_unary(method + "Push"),
        "Initialize": channel.stream_unary(method + "Initialize"),
    }
    yield store, calls
    channel.close()
    server.stop(grace=None)


def _unchanged(store, calls):
    assert store.version == 0
    assert store.snapshot().flat.tobytes() == INIT.tobytes()
    status = pb.StatusResponse.FromString(calls["Status"](b"", timeout=5))  # Still serving.
    assert status.version == 0


def _call(fn):
    try:
        fn()
    except grpc.RpcError as e:
        assert e.code() in ERRORS, (e.code(), e.details())


@FUZZ
@given(data=st.binary(max_size=2048))
def test_garbage_to_unary_methods(target, data):
    store, calls = target
    for name in ("Register", "Leave", "Status", "Heartbeat"):
        _call(lambda n=name: calls[n](data, timeout=5))
    _call(lambda: list(calls["Fetch"](data, timeout=5)))
    _unchanged(store, calls)


@FUZZ
@given(messages=st.lists(st.binary(max_size=512), max_size=8))
def test_garbage_streams_to_push_and_initialize(target, messages):
    store, calls = target
    for name in ("Push", "Initialize"):
        _call(lambda n=name: calls[n](iter(messages), timeout=5))
    _unchanged(store, calls)


def _push_header(**overrides) -> bytes:
    fields = dict(client_id="fuzz", sequence=1, base_version=0, tensors=wire.specs_to_proto(SPECS))
    fields.update(overrides)
    return pb.PushRequest(header=pb.PushHeader(**fields)).SerializeToString()


def _valid_push(chunks: list[tuple[int, bytes]], sequence: int) -> bool:
    """Whether the server must apply a well-formed header plus these chunks.

    The server's rules (``tensors.ChunkAssembler`` and ``ParameterStore.push``):
    each chunk starts exactly where the previous one ended (empty chunks
    included, anywhere in the stream), none exceeds the chunk limit, together
    they fill the SIZE float32 values exactly, every value is finite, and the
    sequence is >= 1. Any number of chunks can do that, not only one.
    """
    received = 0
    for offset, data in chunks:
        if offset != received or len(data) > wire.MAX_CHUNK_BYTES:
            return False  # Refused at this chunk, whatever follows.
        received += len(data)
    if received != SIZE * 4 or sequence < 1:
        return False
    return bool(np.isfinite(np.frombuffer(b"".join(d for _, d in chunks), "<f4")).all())


def _assert_applied_once(frames: list[bytes], chunks: list[tuple[int, bytes]]) -> None:
    """Sends a valid push, and its retry, to a server of its own: applied exactly once.

    Not to the shared server: that one must stay at version 0 for every
    other example.
    """
    store = ParameterStore(SGD(learning_rate=1.0))
    store.initialize("init", SPECS, INIT.copy())
    server = ParameterServer(store).start()
    channel = grpc.insecure_channel(server.address)
    try:
        push = channel.stream_unary(f"/{wire.SERVICE_NAME}/Push")
        first = pb.PushResponse.FromString(push(iter(frames), timeout=5))
        retry = pb.PushResponse.FromString(push(iter(frames), timeout=5))  # Same sequence.
    finally:
        channel.close()
        server.stop(grace=None)
    assert (first.version, first.duplicate) == (1, False)
    assert (retry.version, retry.duplicate) == (1, True)
    assert store.version == 1
    grad = np.frombuffer(b"".join(d for _, d in chunks), "<f4")
    with np.errstate(over="ignore"):  # Random bit patterns: INIT - grad may overflow to inf.
        expected = INIT - np.float32(1.0) * grad
    assert store.snapshot().flat.tobytes() == expected.tobytes()


# Valid pushes of several chunks, which hypothesis rarely generates by
# itself, so that the applied-once branch below always runs.
_GRAD = np.linspace(-0.5, 0.5, SIZE, dtype="<f4").tobytes()


@FUZZ
@example(chunks=[(0, _GRAD[:100]), (100, _GRAD[100:])], sequence=1)
@example(chunks=[(0, b""), (0, _GRAD[:4]), (4, _GRAD[4:]), (SIZE * 4, b"")], sequence=3)
@example(chunks=[(0, _GRAD[:100]), (100, _GRAD[100:])], sequence=0)  # Sequence 0: refused.
@given(
    chunks=st.lists(
        st.tuples(st.integers(0, 2 * SIZE * 4), st.binary(max_size=4 * SIZE + 8)), max_size=4
    ),
    sequence=st.integers(0, 3),
)
def test_valid_header_with_malformed_chunks_changes_nothing(target, chunks, sequence):
    # A well-formed header followed by chunks at random offsets and lengths
    # (gaps, overlaps, overruns, truncation, NaN bit patterns): refused whole.
    store, calls = target
    frames = [_push_header(sequence=sequence)]
    frames += [wire.chunk_frame(offset, [memoryview(data)]) for offset, data in chunks]
    if _valid_push(chunks, sequence):
        # A valid push by chance (one chunk or several): it must be applied,
        # once. Either way the shared server sees only refused pushes, so an
        # applied push there fails _unchanged (a misjudged valid one included).
        _assert_applied_once(frames, chunks)
    else:
        _call(lambda: calls["Push"](iter(frames), timeout=5))
    _unchanged(store, calls)


def test_a_push_cut_off_mid_stream_applies_nothing(target):
    store, calls = target
    grad = np.ones(SIZE, np.float32)
    frames = list(wire.encode_frames(pb.PushRequest, pb.PushHeader(), grad, 64))
    frames[0] = _push_header(sequence=7)
    release = threading.Event()

    def stalled():
        yield from frames[:2]  # The header and the first 64 bytes, then nothing.
        release.wait(5)

    call = calls["Push"].future(stalled(), timeout=20)
    threading.Event().wait(0.3)
    call.cancel()  # The connection's stream goes away mid-push.
    release.set()
    threading.Event().wait(0.3)
    _unchanged(store, calls)
