"""The fast stream encoding and half-precision transport."""

import grpc
import ml_dtypes
import numpy as np
import pytest

from gasgd_tf import wire
from gasgd_tf.client import ParameterClient, RequestRejectedError
from gasgd_tf.proto import parameter_service_pb2 as pb
from gasgd_tf.proto import parameter_service_pb2_grpc as pb_grpc
from gasgd_tf.server import SGD, ParameterStore
from gasgd_tf.tensors import FlatLayout, TensorSpec, byte_view

SPECS = (TensorSpec("w", (300, 7)), TensorSpec("b", (7,)))
SIZE = FlatLayout(SPECS).size


@pytest.mark.parametrize("offset", [0, 5, 300, 1 << 40])
def test_frames_are_the_protobuf_encoding(offset):
    data = bytes(range(256)) * 3
    frame = wire.chunk_frame(offset, [memoryview(data[:100]), memoryview(data[100:])])
    message = pb.PushRequest.FromString(frame)
    assert (message.chunk.offset, message.chunk.data) == (offset, data)
    assert frame == pb.PushRequest(chunk=pb.Chunk(offset=offset, data=data)).SerializeToString()
    parsed = wire.frame_parser(pb.PushRequest)(frame)
    assert (parsed.offset, bytes(parsed.data)) == (offset, data)


def test_frame_parser_falls_back_to_protobuf_for_other_encodings():
    parse = wire.frame_parser(pb.FetchResponse)
    # Fields in reverse order: valid protobuf, not the canonical layout.
    inner = b"\x12\x03abc" + b"\x08\x07"
    reordered = b"\x12" + bytes([len(inner)]) + inner
    chunk = parse(reordered)
    assert (chunk.offset, bytes(chunk.data)) == (7, b"abc")
    header = parse(pb.FetchResponse(header=pb.FetchHeader(version=3)).SerializeToString())
    assert header.version == 3
    with pytest.raises(Exception):  # noqa: B017 - protobuf's DecodeError: gRPC answers INTERNAL.
        parse(b"\x12\x7f" + b"short")


def test_chunk_parts_span_pieces_without_gathering():
    a, b = np.arange(10, dtype=np.float32), np.arange(10, 17, dtype=np.float32)
    chunks = list(wire.iter_chunk_parts([byte_view(a), byte_view(b)], 24))
    assert [offset for offset, _ in chunks] == [0, 24, 48]
    assert [len(parts) for _, parts in chunks] == [1, 2, 1]  # The second spans both arrays.
    joined = b"".join(b"".join(parts) for _, parts in chunks)
    assert joined == np.concatenate([a, b]).tobytes()


@pytest.fixture
def server(serve):
    store = ParameterStore(SGD(learning_rate=1.0))
    return store, serve(store)


@pytest.mark.parametrize("dtype, bound", [("bfloat16", 2.0**-8), ("float16", 2.0**-11)])
def test_half_precision_push_and_fetch_round_to_nearest(server, dtype, bound):
    store, srv = server
    rng = np.random.default_rng(0)
    init = rng.uniform(0.5, 2.0, SIZE).astype(np.float32) * rng.choice([-1, 1], SIZE)
    grad = rng.uniform(0.5, 2.0, SIZE).astype(np.float32)
    with ParameterClient(srv.address, "w", push_dtype=dtype, fetch_dtype=dtype) as client:
        client.register(SPECS)
        client.initialize(SPECS, init)
        version, specs, flat = client.fetch()
        assert specs == SPECS and flat.dtype == np.float32  # float32 to the caller.
        # Each value rounded once: relative error at most half a unit in the last place.
        assert np.all(np.abs(flat - init) <= bound * np.abs(init))
        assert not np.array_equal(flat, init)  # It did travel in half precision.
        client.push(grad, version)
    # The server applies the rounded gradient to its float32 masters.
    applied = init - store.snapshot().flat
    assert np.all(np.abs(applied - grad) <= bound * grad + 1e-6 * np.abs(init))
    assert store.snapshot().flat.dtype == np.float32


def test_bfloat16_matches_ml_dtypes_rounding(server):
    store, srv = server
    init = np.random.default_rng(1).normal(size=SIZE).astype(np.float32)
    store.initialize("init", SPECS, init)
    with ParameterClient(srv.address, "eval", fetch_dtype="bfloat16") as client:
        _, _, flat = client.fetch()
    expected = init.astype(ml_dtypes.bfloat16).astype(np.float32)
    assert flat.tobytes() == expected.tobytes()


def test_float16_overflow_is_refused_naming_the_tensor(server):
    store, srv = server
    store.initialize("init", SPECS, np.zeros(SIZE, np.float32))
    grad = np.zeros(SIZE, np.float32)
    grad[-1] = 1e6  # Beyond float16's 65504: Inf on the wire.
    with ParameterClient(srv.address, "w", push_dtype="float16", retry_secs=1) as client:
        client.register(SPECS)
        with pytest.raises(RequestRejectedError, match="'b' has 1 non-finite") as e:
            client.push(grad, 0)
        assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert store.version == 0


def test_mixed_dtypes_and_unknown_fetch_dtypes_are_invalid_argument(server):
    store, srv = server
    store.initialize("init", SPECS, np.zeros(SIZE, np.float32))
    stub = pb_grpc.ParameterServiceStub(grpc.insecure_channel(srv.address))
    header = pb.PushHeader(
        client_id="w",
        sequence=1,
        tensors=[
            pb.TensorSpec(name="w", shape=[300, 7], dtype=pb.DTYPE_BFLOAT16),
            pb.TensorSpec(name="b", shape=[7], dtype=pb.DTYPE_FLOAT32),
        ],
    )
    with pytest.raises(grpc.RpcError) as e:
        stub.Push(iter([pb.PushRequest(header=header)]), timeout=10)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "every tensor of a request travels in one dtype" in e.value.details()
    with pytest.raises(grpc.RpcError) as e:
        list(stub.Fetch(pb.FetchRequest(client_id="x", dtype=pb.DTYPE_FLOAT64), timeout=10))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    reg = stub.Register(pb.RegisterRequest(client_id="x"), timeout=10)
    assert set(reg.capabilities.fetch_dtypes) == {
        pb.DTYPE_FLOAT32,
        pb.DTYPE_BFLOAT16,
        pb.DTYPE_FLOAT16,
    }


def test_canonical_frames_take_the_fast_path_and_bad_ones_do_not():
    frame = wire.chunk_frame(1 << 20, [memoryview(b"x" * 1000)])
    assert wire._parse_canonical_chunk(frame) is not None  # Not protobuf's fallback.
    rng = np.random.default_rng(0)
    # Truncated, extended or corrupted frames: the fast path either agrees
    # with protobuf or steps aside (None); it never returns something else.
    for _ in range(300):
        data = bytearray(frame[: rng.integers(0, len(frame) + 1)])
        if data and rng.random() < 0.5:
            data[rng.integers(0, min(len(data), 8))] = rng.integers(0, 256)
        if rng.random() < 0.2:
            data += b"\x00"
        fast = wire._parse_canonical_chunk(bytes(data))
        if fast is None:
            continue
        message = pb.PushRequest.FromString(bytes(data))
        assert (fast.offset, bytes(fast.data)) == (message.chunk.offset, message.chunk.data)


def test_byte_scatter_handles_empty_parts():
    from gasgd_tf.tensors import ByteScatter

    a, b, c = bytearray(3), bytearray(0), bytearray(4)
    scatter = ByteScatter([memoryview(b), memoryview(a), memoryview(b), memoryview(c)])
    scatter.write(0, memoryview(b"abcd"))
    scatter.write(4, memoryview(b"efg"))
    assert (bytes(a), bytes(c)) == (b"abc", b"defg")


def test_fetch_into_views_converts_any_reply_dtype(server):
    store, srv = server
    init = np.random.default_rng(2).normal(size=SIZE).astype(np.float32)
    store.initialize("init", SPECS, init)
    out = [np.empty(100, np.float32), np.empty(SIZE - 100, np.float32)]
    with ParameterClient(srv.address, "eval", fetch_dtype="bfloat16") as client:
        _, _, flat = client.fetch(out=out)
    assert flat is None
    expected = init.astype(ml_dtypes.bfloat16).astype(np.float32)
    assert np.concatenate(out).tobytes() == expected.tobytes()
    with ParameterClient(srv.address, "eval", retry_secs=1) as client:
        with pytest.raises(RequestRejectedError, match="reply has"):
            client.fetch(out=[np.empty(5, np.float32)])


def test_store_refuses_half_precision_parameters():
    from gasgd_tf.tensors import ValidationError

    store = ParameterStore(SGD())
    half = (TensorSpec("w", (4,), "bfloat16"),)
    with pytest.raises(ValidationError, match="half precision is for transport only"):
        store.initialize("w", half, np.zeros(4, np.float32))
    with pytest.raises(ValidationError, match="half precision is for transport only"):
        store.register("w", half)


def test_a_tolerant_deserializer_marks_bytes_that_do_not_parse():
    # gRPC answers INTERNAL when a request deserializer raises; the server's
    # deserializers return a mark instead, which its handlers refuse as
    # INVALID_ARGUMENT (tests/fuzz_test.py covers that over gRPC).
    for parse in (pb.LeaveRequest.FromString, wire.frame_parser(pb.PushRequest)):
        tolerant = wire.tolerant(parse, "SomeRequest")
        mark = tolerant(b"\x0a\x05ab")  # Field 1 claims 5 bytes, 2 follow.
        assert isinstance(mark, wire.MalformedMessage) and mark is not None
        assert mark.describe().startswith("the request is not a valid SomeRequest message")
        assert tolerant(b"") is not None  # An empty message is a valid one.
    good = pb.LeaveRequest(client_id="w").SerializeToString()
    assert wire.tolerant(pb.LeaveRequest.FromString, "LeaveRequest")(good).client_id == "w"


def test_decode_stream_refuses_a_marked_message_as_malformed():
    header = pb.PushHeader(client_id="w", sequence=1, tensors=wire.specs_to_proto(SPECS))
    mark = wire.MalformedMessage("PushRequest", "truncated")
    for stream in ([mark], [header, mark]):
        with pytest.raises(wire.MalformedMessageError, match="not a valid PushRequest"):
            wire.decode_stream(stream, lambda h: FlatLayout(SPECS))
