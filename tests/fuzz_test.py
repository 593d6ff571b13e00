"""Random, truncated and malformed messages to every RPC: the server answers and changes nothing.

Property-based (hypothesis): raw bytes go to each method through a channel
with no serializers, so the server sees exactly what an arbitrary client
(or an attacker) could send. Whatever arrives, the server must answer with
a status code the proto's error table promises (never INTERNAL, gRPC's
answer when a deserializer raises, nor UNKNOWN, an unhandled error in our
code) and keep its parameters and version; it must stay up for the next
call.

Reproducible: ``derandomize=True`` draws every example from a seed derived
from the test itself, so each run tries the same inputs (and a failure
recurs on the next run), with no example database.
"""

import dataclasses
import threading
import time

import grpc
import numpy as np
import pytest
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gasgd_tf import wire
from gasgd_tf.proto import parameter_service_pb2 as pb
from gasgd_tf.server import SGD, ParameterServer, ParameterServicer, ParameterStore
from gasgd_tf.tensors import TensorSpec

SPECS = (TensorSpec("conv/kernel", (3, 3, 2, 4)), TensorSpec("dense/bias", (10,)))
SIZE = 3 * 3 * 2 * 4 + 10
INIT = np.linspace(-1, 1, SIZE, dtype=np.float32)
FUZZ = settings(
    max_examples=120,
    deadline=None,
    derandomize=True,  # The same examples on every run: see the module's docstring.
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
# Answers a malformed request may get: the proto's error table. Not
# INTERNAL (gRPC's own answer when a request deserializer raises: ours
# never do) and not UNKNOWN (an unhandled error in our code).
ERRORS = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.FAILED_PRECONDITION,
    # Random client ids fill the server's client records (ps.max_clients).
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
NEVER = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}
TIMEOUT = 20  # Seconds; generous, for a loaded machine: no call here should come near it.


@dataclasses.dataclass
class Target:
    store: ParameterStore
    servicer: ParameterServicer
    calls: dict


def _raw_calls(channel: grpc.Channel) -> dict:
    """Every method of the service, with no serializers: bytes in, bytes out."""
    method = f"/{wire.SERVICE_NAME}/"
    return {
        "Register": channel.unary_unary(method + "Register"),
        "Leave": channel.unary_unary(method + "Leave"),
        "Status": channel.unary_unary(method + "Status"),
        "Heartbeat": channel.unary_unary(method + "Heartbeat"),
        "Fetch": channel.unary_stream(method + "Fetch"),
        "Push": channel.stream_unary(method + "Push"),
        "Initialize": channel.stream_unary(method + "Initialize"),
    }


@pytest.fixture(scope="module")
def target():
    yield from serve_target()


def serve_target():
    """A server at version 0 with INIT, and raw calls to it (codecs_test.py's fixture too)."""
    store = ParameterStore(SGD(learning_rate=1.0))
    store.initialize("init", SPECS, INIT.copy())
    server = ParameterServer(store).start()
    channel = grpc.insecure_channel(server.address)
    yield Target(store, server.servicer, _raw_calls(channel))
    channel.close()
    server.stop(grace=None)


def _unchanged(target: Target):
    store, calls = target.store, target.calls
    assert store.version == 0
    assert store.snapshot().flat.tobytes() == INIT.tobytes()
    status = pb.StatusResponse.FromString(calls["Status"](b"", timeout=TIMEOUT))  # Serving.
    assert status.version == 0


def _call(fn):
    try:
        fn()
    except grpc.RpcError as e:
        assert e.code() not in NEVER, (e.code(), e.details())
        assert e.code() in ERRORS, (e.code(), e.details())


@FUZZ
@given(data=st.binary(max_size=2048))
def test_garbage_to_unary_methods(target, data):
    calls = target.calls
    for name in ("Register", "Leave", "Status", "Heartbeat"):
        _call(lambda n=name: calls[n](data, timeout=TIMEOUT))
    _call(lambda: list(calls["Fetch"](data, timeout=TIMEOUT)))
    _unchanged(target)


@FUZZ
@given(messages=st.lists(st.binary(max_size=512), max_size=8))
def test_garbage_streams_to_push_and_initialize(target, messages):
    for name in ("Push", "Initialize"):
        _call(lambda n=name: target.calls[n](iter(messages), timeout=TIMEOUT))
    _unchanged(target)


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
        first = pb.PushResponse.FromString(push(iter(frames), timeout=TIMEOUT))
        retry = pb.PushResponse.FromString(push(iter(frames), timeout=TIMEOUT))  # Same sequence.
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
    frames = [_push_header(sequence=sequence)]
    frames += [wire.chunk_frame(offset, [memoryview(data)]) for offset, data in chunks]
    if _valid_push(chunks, sequence):
        # A valid push by chance (one chunk or several): it must be applied,
        # once. Either way the shared server sees only refused pushes, so an
        # applied push there fails _unchanged (a misjudged valid one included).
        _assert_applied_once(frames, chunks)
    else:
        _call(lambda: target.calls["Push"](iter(frames), timeout=TIMEOUT))
    _unchanged(target)


def _wait_until(condition, what: str, timeout: float = 30.0) -> None:
    """Polls ``condition`` until true; the deadline only guards against a hang."""
    give_up = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < give_up, f"timed out waiting until {what}"
        time.sleep(0.01)


def test_a_push_cut_off_mid_stream_applies_nothing(target):
    # The server has the header and the first chunk (the push holds its
    # slot) when the client goes away: the push is refused, counted, and
    # its slot given back; nothing is applied.
    store, slots = target.store, target.servicer.push_slots
    rejected = store.status(max_listed=0).pushes_rejected
    grad = np.ones(SIZE, np.float32)
    frames = list(wire.encode_frames(pb.PushRequest, pb.PushHeader(), grad, 64))
    frames[0] = _push_header(sequence=7)
    release = threading.Event()

    def stalled():
        yield from frames[:2]  # The header and the first 64 bytes, then nothing.
        release.wait(30)

    call = target.calls["Push"].future(stalled(), timeout=60)
    try:
        _wait_until(lambda: slots.held == 1, "the push holds its slot")
        assert call.cancel()  # The connection's stream goes away mid-push.
        _wait_until(lambda: slots.held == 0, "the cut-off push gave its slot back")
    finally:
        release.set()
    assert store.status(max_listed=0).pushes_rejected == rejected + 1
    _unchanged(target)


# Bytes no request message parses from: a length-delimited field 1 whose
# length runs past the end, a varint that never ends, an end-group tag.
UNPARSABLE = [b"\x0a\x05ab", b"\x08" + b"\xff" * 11, b"\x0c"]


@pytest.mark.parametrize("data", UNPARSABLE)
def test_bytes_that_do_not_parse_are_invalid_argument_and_counted(serve, data):
    methods = ("Register", "Leave", "Status", "Heartbeat", "Fetch", "Push", "Initialize")
    for name in methods:  # No request message parses them (protobuf's DecodeError).
        with pytest.raises(DecodeError):
            getattr(pb, f"{name}Request").FromString(data)
    # Not initialized: an Initialize reads its stream (an initialized server
    # answers accepted=false without reading it), and the malformed message
    # is refused before anything else is checked.
    store = ParameterStore(SGD(learning_rate=1.0))
    server = serve(store)
    answers = {}
    with grpc.insecure_channel(server.address) as channel:
        calls = _raw_calls(channel)
        for name in methods:
            with pytest.raises(grpc.RpcError) as e:
                if name == "Fetch":
                    list(calls[name](data, timeout=TIMEOUT))
                elif name in ("Push", "Initialize"):
                    calls[name](iter([data]), timeout=TIMEOUT)
                else:
                    calls[name](data, timeout=TIMEOUT)
            answers[name] = (e.value.code(), e.value.details())
        status = pb.StatusResponse.FromString(calls["Status"](b"", timeout=TIMEOUT))
    assert {n: code for n, (code, _) in answers.items()} == dict.fromkeys(
        methods, grpc.StatusCode.INVALID_ARGUMENT
    ), answers
    for name, (_, details) in answers.items():
        assert details.startswith(f"{name}: the request is not a valid {name}Request"), details
    assert status.malformed_requests == len(methods)
    assert status.pushes_rejected == 1  # The Push; the other calls are no pushes.
    assert status.num_clients == 0 and not store.initialized  # Nothing was created.
