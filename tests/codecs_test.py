"""Push codecs (gasgd_tf/codecs.py): sizes, error feedback, validation, the wire, fuzzing."""

import grpc
import numpy as np
import pytest
from conftest import assert_refused
from fuzz_test import FUZZ, SIZE, TIMEOUT, _call, _push_header, _unchanged, serve_target
from hypothesis import given
from hypothesis import strategies as st

from gasgd_tf import codecs, wire
from gasgd_tf.client import ParameterClient, RequestRejectedError
from gasgd_tf.codecs import CodecSpec, ErrorFeedback
from gasgd_tf.proto import parameter_service_pb2 as pb
from gasgd_tf.server import SGD, ParameterStore
from gasgd_tf.tensors import TensorSpec, ValidationError, numpy_dtype

RNG = np.random.default_rng(0)


@pytest.fixture(scope="module")
def target():
    """The fuzz tests' server: refused pushes must leave it at version 0."""
    yield from serve_target()


ENCODED = ("int8", "int4", "topk")


def spec_for(codec, size, block_size=64, fraction=0.05):
    count = codecs.topk_count(size, fraction) if codec == "topk" else 0
    return CodecSpec(codec, size, block_size if codec != "topk" else 0, count)


@pytest.mark.parametrize(
    "codec, ratio", [("int8", 3.9), ("int4", 7.5), ("topk", 13.0)]
)  # topk at 5%: 6 bytes for each of 5% of the values, 4 / 0.3 = 13.3x.
def test_each_codec_sends_several_times_fewer_bytes_than_float32(codec, ratio):
    values = RNG.standard_normal(10_001).astype(np.float32)
    spec = spec_for(codec, values.size, block_size=2048, fraction=0.05)
    payload = codecs.encode(values, spec)
    assert payload.nbytes == spec.nbytes
    assert values.nbytes / payload.nbytes > ratio


@pytest.mark.parametrize("codec", ["int8", "int4"])
def test_blockwise_values_are_within_half_a_step_of_their_blocks_scale(codec):
    values = RNG.standard_normal(1000).astype(np.float32) * np.repeat([1e-3, 1.0, 50.0, 0.0], 250)
    spec = spec_for(codec, values.size, block_size=250)
    decoded = codecs.decode(codecs.encode(values, spec), spec, np.empty_like(values))
    levels = codecs.LEVELS[codec]
    for block in range(4):
        part = slice(250 * block, 250 * (block + 1))
        step = np.abs(values[part]).max() / levels
        assert np.abs(decoded[part] - values[part]).max() <= step / 2 * (1 + 1e-5) + 1e-12
    assert np.all(decoded[750:] == 0)  # An all-zero block stays zero (scale 0).


def test_topk_keeps_the_largest_values_and_zeroes_the_rest():
    values = np.array([0.1, -5.0, 0.2, 3.0, -0.05, 0.0], np.float32)
    spec = CodecSpec("topk", 6, count=2)
    decoded = codecs.decode(codecs.encode(values, spec), spec, np.empty(6, np.float32))
    np.testing.assert_array_equal(decoded, [0, -5.0, 0, 3.0, 0, 0])


@pytest.mark.parametrize("codec", ENCODED)
def test_error_feedback_loses_nothing_in_the_sum(codec):
    # The sum of what was decoded plus the residual is the sum of what was given.
    feedback = ErrorFeedback(codec, 5003, block_size=256, topk_fraction=0.02)
    given_sum = np.zeros(5003, np.float64)
    decoded_sum = np.zeros(5003, np.float64)
    out = np.empty(5003, np.float32)
    for _ in range(20):
        values = RNG.standard_normal(5003).astype(np.float32)
        given_sum += values
        decoded_sum += codecs.decode(feedback.encode(values), feedback.spec, out)
    np.testing.assert_allclose(decoded_sum + feedback.residual, given_sum, atol=2e-5)


def reference_payload(values, spec):
    """The documented byte layout, written plainly (whole arrays, no pieces, strided packing)."""
    if spec.codec == "topk":
        magnitudes = np.abs(values)
        order = np.lexsort((np.arange(values.size), -magnitudes))  # Largest first, ties: lowest.
        indices = np.sort(order[: spec.count]).astype("<u4")
        kept = values[indices].astype(numpy_dtype("bfloat16"))
        return np.concatenate([indices.view(np.uint8), kept.view(np.uint8)])
    levels = np.float32(codecs.LEVELS[spec.codec])
    rows = np.zeros(spec.blocks * spec.block_size, np.float32)
    rows[: values.size] = values
    rows = rows.reshape(spec.blocks, spec.block_size)
    scales = (np.maximum(rows.max(axis=1), -rows.min(axis=1)) / levels).astype("<f4")
    inverse = np.divide(1.0, scales, out=np.zeros_like(scales), where=scales > 0)
    q = np.rint(rows * inverse[:, None]).astype(np.int8).reshape(-1)[: values.size]
    if spec.codec == "int8":
        return np.concatenate([scales.view(np.uint8), q.view(np.uint8)])
    nibbles = np.append((q + 8).astype(np.uint8), [8] * (values.size % 2)).astype(np.uint8)
    packed = nibbles[0::2] | (nibbles[1::2] << 4)
    return np.concatenate([scales.view(np.uint8), packed])


@pytest.mark.parametrize("codec", ["int8", "int4"])
@pytest.mark.parametrize("size, block_size", [(1, 1), (7, 3), (1000, 7), (4097, 64), (5000, 5000)])
def test_blockwise_bytes_match_the_documented_layout_across_pieces(
    monkeypatch, codec, size, block_size
):
    # Small pieces: many piece boundaries, odd blocks (int4 pieces must start on a byte).
    monkeypatch.setattr(codecs, "PIECE_VALUES", 32)
    values = RNG.standard_normal(size).astype(np.float32) * np.float32(3.0)
    values[::5] = np.round(values[::5])  # Ties at half a step do occur: half to even.
    spec = spec_for(codec, size, block_size=block_size)
    payload = codecs.encode(values, spec)
    np.testing.assert_array_equal(payload, reference_payload(values, spec))
    # Decoding is value * its block's scale, nibble - 8 for int4, bit for bit.
    decoded = codecs.decode(payload, spec, np.empty(size, np.float32))
    scales = payload[: 4 * spec.blocks].view("<f4")
    body = payload[4 * spec.blocks :]
    if codec == "int8":
        q = body.view(np.int8)
    else:
        q = np.stack([body & 0x0F, body >> 4], axis=1).reshape(-1)[:size].astype(np.int8) - 8
    expected = q * np.repeat(scales, block_size)[:size]
    np.testing.assert_array_equal(decoded.view(np.uint32), expected.view(np.uint32))


def test_int4_nibbles_are_value_plus_8_even_index_low():
    spec = CodecSpec("int4", 3, block_size=3)
    payload = codecs.encode(np.array([7.0, -7.0, 1.0], np.float32), spec)
    assert payload[:4].view("<f4")[0] == 1.0
    assert list(payload[4:]) == [15 | (1 << 4), 9 | (8 << 4)]  # 7+8, -7+8; 1+8, pad 0+8.


@pytest.mark.parametrize("sampled", [True, False])
def test_topk_chooses_exactly_the_largest_ties_to_the_lowest_positions(monkeypatch, sampled):
    # Large enough for the sampled threshold; without it, the whole array is partitioned.
    if not sampled:
        monkeypatch.setattr(codecs, "TOPK_SAMPLED_FROM", 1 << 40)
    size = 1 << 19
    values = RNG.standard_normal(size).astype(np.float32)
    values[RNG.integers(0, size, 2000)] = 0.5  # Many ties, some at the k-th magnitude.
    values[RNG.integers(0, size, 2000)] = -0.5
    for fraction in (1e-5, 0.001, 0.01, 0.3):
        spec = spec_for("topk", size, fraction=fraction)
        np.testing.assert_array_equal(
            codecs.encode(values, spec), reference_payload(values, spec), err_msg=str(fraction)
        )


def test_topk_is_exact_when_the_sample_misleads_it():
    # Every sampled position holds a large value, the rest small: the sample's
    # threshold lets too few through, and the whole array is partitioned.
    size = 1 << 19
    values = RNG.standard_normal(size).astype(np.float32)
    values[codecs._sample_positions(size)] = 100.0 + np.arange(codecs.TOPK_SAMPLE)
    spec = spec_for("topk", size, fraction=0.2)
    assert codecs._topk_candidates(values, spec.count) is None
    np.testing.assert_array_equal(codecs.encode(values, spec), reference_payload(values, spec))


def test_topk_of_a_sparse_gradient_picks_zeros_by_position():
    values = np.zeros(1 << 19, np.float32)
    values[[5, 70_000, 400_000]] = [1.0, -2.0, 3.0]
    spec = CodecSpec("topk", values.size, count=6)
    indices = codecs.encode(values, spec)[:24].view("<u4")
    np.testing.assert_array_equal(indices, [0, 1, 2, 5, 70_000, 400_000])


@pytest.mark.parametrize("codec", ENCODED)
@pytest.mark.parametrize("size", [5003, 1 << 19])
def test_error_feedback_keeps_exactly_what_decoding_lost(codec, size):
    # The residual is computed while encoding; it must equal decoding the
    # payload and subtracting, bit for bit.
    feedback = ErrorFeedback(codec, size, block_size=256, topk_fraction=0.01)
    out = np.empty(size, np.float32)
    for _ in range(3):
        values = RNG.standard_normal(size).astype(np.float32)
        corrected = feedback.residual + values
        payload = feedback.encode(values)
        np.testing.assert_array_equal(payload, codecs.encode(corrected, feedback.spec))
        expected = corrected - codecs.decode(payload, feedback.spec, out)
        np.testing.assert_array_equal(feedback.residual.view(np.uint32), expected.view(np.uint32))


@pytest.mark.parametrize("codec", ENCODED)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_nan_or_inf_is_refused_and_the_residual_is_kept(codec, bad):
    size = 1 << 19  # Top-k's sampled path: every NaN and Inf must still be found.
    feedback = ErrorFeedback(codec, size, block_size=2048, topk_fraction=0.01)
    feedback.encode(RNG.standard_normal(size).astype(np.float32))
    residual = feedback.residual.copy()
    values = RNG.standard_normal(size).astype(np.float32)
    values[size // 3] = bad
    with pytest.raises(ValueError, match="NaN or Inf"):
        feedback.encode(values)
    np.testing.assert_array_equal(feedback.residual, residual)


def _payload(codec, size=SIZE):
    spec = spec_for(codec, size)
    return spec, bytearray(codecs.encode(np.linspace(-1, 1, size, dtype=np.float32), spec))


def _f32(value):
    return np.array([value], "<f4").tobytes()


def _u32(value):
    return np.array([value], "<u4").tobytes()


BAD_PAYLOADS = {
    "short": lambda codec, p: p[:-1],
    "long": lambda codec, p: p + b"\0",
    "nan scale": lambda codec, p: _f32(np.nan) + p[4:] if codec != "topk" else None,
    "inf scale": lambda codec, p: _f32(np.inf) + p[4:] if codec != "topk" else None,
    "negative scale": lambda codec, p: _f32(-1.0) + p[4:] if codec != "topk" else None,
    "index out of range": lambda codec, p: _u32(SIZE) + p[4:] if codec == "topk" else None,
    "repeated index": lambda codec, p: p[4:8] + p[4:] if codec == "topk" else None,
    "nan value": lambda codec, p: p[:-2] + b"\xc0\x7f" if codec == "topk" else None,
}
CASES = [
    (codec, name)
    for codec in ENCODED
    for name, bad in BAD_PAYLOADS.items()
    if bad(codec, bytearray(8)) is not None
]


@pytest.mark.parametrize("codec, name", CASES)
def test_a_bad_payload_is_refused_naming_what_is_wrong(codec, name):
    spec, payload = _payload(codec)
    with pytest.raises(ValidationError):
        codecs.decode(bytes(BAD_PAYLOADS[name](codec, payload)), spec, np.empty(SIZE, np.float32))


@pytest.mark.parametrize(
    "spec, message",
    [
        (CodecSpec("int8", 10, block_size=0), "block size"),
        (CodecSpec("int4", 10, block_size=codecs.MAX_BLOCK_SIZE + 1), "block size"),
        (CodecSpec("topk", 10, count=0), "topk count"),
        (CodecSpec("topk", 10, count=11), "topk count"),
        (CodecSpec("zip", 10), "unknown push codec"),
    ],
)
def test_impossible_codec_fields_are_refused(spec, message):
    with pytest.raises(ValidationError, match=message):
        spec.check()


def _encoded_push(codec, payload, spec, sequence=1):
    header = _push_header(
        sequence=sequence,
        codec=wire.PUSH_CODECS[codec],
        codec_block_size=spec.block_size,
        codec_count=spec.count,
    )
    return [header, wire.chunk_frame(0, [memoryview(bytes(payload))])]


@pytest.mark.parametrize("codec, name", CASES)
def test_the_server_refuses_a_bad_payload_as_invalid_argument_and_changes_nothing(
    target, codec, name
):
    spec, payload = _payload(codec)
    frames = _encoded_push(codec, BAD_PAYLOADS[name](codec, payload), spec)
    with pytest.raises(grpc.RpcError) as error:
        target.calls["Push"](iter(frames), timeout=TIMEOUT)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT, error.value.details()
    _unchanged(target)


@FUZZ
@given(codec=st.sampled_from(ENCODED), data=st.binary(max_size=6 * SIZE), count=st.integers(0, 9))
def test_random_payload_bytes_are_refused_or_applied_never_garbage(target, codec, data, count):
    # Random bytes under a valid codec header: the wrong length is refused;
    # a right-length payload may decode (then the push is only refused here
    # by its sequence 0, so the shared server stays unchanged either way).
    spec = CodecSpec(codec, SIZE, 64 if codec != "topk" else 0, count if codec == "topk" else 0)
    frames = _encoded_push(codec, data, spec, sequence=0)
    _call(lambda: target.calls["Push"](iter(frames), timeout=TIMEOUT))
    _unchanged(target)
    try:
        decoded = codecs.decode(data, spec, np.empty(SIZE, np.float32))
    except ValidationError:
        return
    assert np.all(np.isfinite(decoded)) or codec != "topk"


@pytest.mark.parametrize("codec", ENCODED)
def test_an_encoded_push_moves_the_server_by_the_decoded_values(serve, codec):
    store = ParameterStore(SGD(learning_rate=1.0))
    server = serve(store)
    specs = (TensorSpec("w", (300,)), TensorSpec("b", (7,)))
    with ParameterClient(
        server.address, "w0", timeout_secs=10, push_codec=codec, topk_fraction=0.1
    ) as client:
        client.register(specs)
        client.initialize(specs, np.zeros(307, np.float32))
        grad = RNG.standard_normal(307).astype(np.float32)
        client.push(grad, 0)
        residual = client._feedback.residual.copy()
        reply = client.register(specs)
    assert store.version == 1
    # Applied: -(grad - what the feedback kept for the next push).
    np.testing.assert_allclose(store.snapshot().flat, -(grad - residual), atol=1e-6)
    assert reply.initialized


def test_capabilities_list_every_codec(serve):
    server = serve(ParameterStore(SGD(learning_rate=0.1)))
    with grpc.insecure_channel(server.address) as channel:
        from gasgd_tf.proto import parameter_service_pb2_grpc as pb_grpc

        reply = pb_grpc.ParameterServiceStub(channel).Register(
            pb.RegisterRequest(client_id="probe"), timeout=10
        )
    assert set(reply.capabilities.push_codecs) == set(wire.PUSH_CODECS.values())


def test_an_encoded_nan_is_refused_by_the_client_before_it_is_sent(serve):
    server = serve(ParameterStore(SGD(learning_rate=0.1)))
    specs = (TensorSpec("w", (4,)),)
    with ParameterClient(server.address, "w0", timeout_secs=10, push_codec="int8") as client:
        client.register(specs)
        client.initialize(specs, np.zeros(4, np.float32))
        with pytest.raises((ValueError, RequestRejectedError), match="NaN"):
            client.push(np.array([1, np.nan, 0, 0], np.float32), 0)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"client.push_codec": "zip"}, "client.push_codec 'zip' is not one of"),
        ({"client.push_codec": "int8", "client.push_dtype": "bfloat16"}, "needs"),
        ({"client.codec_block_size": 0}, "client.codec_block_size must be"),
        ({"client.topk_fraction": 0.0}, "client.topk_fraction must be in"),
    ],
)
def test_bad_codec_settings_are_refused_naming_the_field(overrides, message):
    assert_refused(overrides, message)


@pytest.mark.parametrize("codec, push", [("int4", "gradient"), ("topk", "delta")])
def test_the_cli_worker_pushes_encoded_gradients_and_deltas(
    serve, digits_data_dir, tmp_path, codec, push
):
    from worker_test import small_config

    from gasgd_tf import worker

    store = ParameterStore(SGD(learning_rate=0.05), push_kind=push)
    server = serve(store)
    config = small_config(
        digits_data_dir, n_sync=2, **{"client.push_codec": codec, "worker.push": push}
    )
    result = worker.train(config, 0, server.address, str(tmp_path))
    assert result.pushes == 4 == store.version  # Steps 2, 4, 6 and 7.
    assert np.isfinite(result.loss)


def test_each_shard_gets_its_part_encoded_with_its_own_error_feedback(serve):
    from gasgd_tf.client import make_client

    stores = [ParameterStore(SGD(learning_rate=1.0)) for _ in range(2)]
    addresses = [serve(s).address for s in stores]
    specs = (TensorSpec("a", (500,)), TensorSpec("b", (300,)))
    client = make_client(addresses, "w0", split_bytes=1 << 20, timeout_secs=10, push_codec="int8")
    try:
        client.register(specs)
        client.initialize(specs, np.zeros(800, np.float32))
        version, _, _ = client.fetch()
        grad = RNG.standard_normal(800).astype(np.float32)
        client.push(grad, version)
        _, _, served = client.fetch()
        residuals = [c._feedback.residual for c in client.clients]
    finally:
        client.close()
    assert [s.version for s in stores] == [1, 1]
    assert sum(r.size for r in residuals) == 800  # Each shard's client encoded its own part.
    assert np.abs(served + grad).max() <= max(np.abs(r).max() for r in residuals) + 1e-6
