"""Fragments of the parameters (gasgd_tf/fragments.py): the cut, the wire names, the store,
rounds per fragment, and Push / Fetch of a fragment over real gRPC (one server and shards)."""

import threading

import grpc
import numpy as np
import pytest

from gasgd_tf import sharding, wire
from gasgd_tf.client import ParameterClient, make_client
from gasgd_tf.fragments import Fragment, plan, resolve
from gasgd_tf.proto import parameter_service_pb2 as pb
from gasgd_tf.proto import parameter_service_pb2_grpc as pb_grpc
from gasgd_tf.server import SGD, ParameterStore, StalenessConfig, checkpointing
from gasgd_tf.server.rounds import RoundState
from gasgd_tf.tensors import FlatLayout, TensorSpec, ValidationError

SPECS = (
    TensorSpec("conv/kernel", (3, 3, 2, 8)),  # [0, 144)
    TensorSpec("conv/bias", (8,)),  # [144, 152)
    TensorSpec("fc/kernel", (100, 30)),  # [152, 3152)
    TensorSpec("fc/bias", (30,)),  # [3152, 3182)
    TensorSpec("head/kernel", (30, 10)),  # [3182, 3482)
    TensorSpec("head/bias", (10,)),  # [3482, 3492)
)
LAYOUT = FlatLayout(SPECS)
SIZE = LAYOUT.size
FC = 152  # Where fc/kernel starts.

# conv/bias whole, elements 100..700 of fc/kernel, head/bias whole.
A = Fragment.of([(144, 152), (FC + 100, FC + 700), (3482, 3492)])
# conv/kernel whole and elements 700..3000 of fc/kernel (disjoint from A).
B = Fragment.of([(0, 144), (FC + 700, FC + 3000)])


def randn(size, seed=0):
    return np.random.default_rng(seed).standard_normal(size).astype(np.float32)


def outside(fragment, flat):
    """The values of ``flat`` that are not in ``fragment``."""
    mask = np.ones(flat.size, bool)
    for begin, end in fragment.runs:
        mask[begin:end] = False
    return flat[mask]


# -- The cut and its wire names ------------------------------------------------


def test_a_fragment_names_whole_tensors_and_pieces_and_resolves_back_to_itself():
    specs = A.specs(SPECS)
    assert [(s.name, s.shape) for s in specs] == [
        ("conv/bias", (8,)),
        ("fc/kernel@100:700:100x30", (600,)),
        ("head/bias", (10,)),
    ]
    assert resolve(LAYOUT, specs) == A
    assert resolve(LAYOUT, B.specs(SPECS)) == B


def test_a_piece_of_a_shards_piece_is_named_and_resolved_on_that_shard():
    # A shard holds tensor "w" elements 0..500 as one tensor named like this.
    shard_specs = (TensorSpec("w@0:500:10x100", (500,)), TensorSpec("b", (10,)))
    fragment = Fragment.of([(100, 200), (500, 510)])
    specs = fragment.specs(shard_specs)
    assert [(s.name, s.shape) for s in specs] == [
        ("w@0:500:10x100@100:200:500", (100,)),
        ("b", (10,)),
    ]
    assert resolve(FlatLayout(shard_specs), specs) == fragment


def test_specs_naming_every_tensor_whole_are_the_whole_model():
    assert resolve(LAYOUT, SPECS) is None
    # Every element, but named in pieces, is a fragment (it has its own rounds).
    pieces = (SPECS[0], SPECS[1], TensorSpec("fc/kernel@0:3000:100x30", (3000,)), *SPECS[3:])
    assert resolve(LAYOUT, pieces) == Fragment.of([(0, SIZE)])


def piece(name, start, stop, shape="100x30", size=None):
    return TensorSpec(f"{name}@{start}:{stop}:{shape}", (stop - start if size is None else size,))


@pytest.mark.parametrize(
    "specs, message",
    [
        ((TensorSpec("nope", (3,)),), "unknown tensor 'nope'"),
        ((piece("nope", 0, 10),), "unknown tensor 'nope@0:10:100x30'"),
        ((TensorSpec("conv/bias", (9,)),), "'conv/bias' has shape"),
        ((piece("fc/kernel", 2900, 3100),), "'fc/kernel@2900:3100:100x30' is not a run of"),
        ((piece("fc/kernel", 10, 10),), "'fc/kernel@10:10:100x30' is not a run of"),
        ((piece("fc/kernel", 0, 100, "30x100"),), "is not a run of tensor 'fc/kernel'"),
        ((piece("fc/kernel", 0, 100, size=99),), "'fc/kernel@0:100:100x30' must have shape"),
        ((SPECS[3], SPECS[1]), "order without overlapping \\(at 'conv/bias'\\)"),
        ((piece("fc/kernel", 0, 200), piece("fc/kernel", 100, 300)), "at 'fc/kernel@100:300"),
        ((SPECS[2], piece("fc/kernel", 100, 300)), "at 'fc/kernel@100:300"),
        ((), "no tensors"),
    ],
)
def test_specs_that_name_no_fragment_are_refused_naming_the_tensor(specs, message):
    with pytest.raises(ValidationError, match=message):
        resolve(LAYOUT, specs)


# A CNN's bytes: most of them in one dense layer.
CNN = (
    TensorSpec("conv/kernel", (3, 3, 1, 16)),
    TensorSpec("conv/bias", (16,)),
    TensorSpec("dense/kernel", (784, 64)),
    TensorSpec("dense/bias", (64,)),
    TensorSpec("head/kernel", (64, 10)),
    TensorSpec("head/bias", (10,)),
)


@pytest.mark.parametrize("count", [2, 3, 4, 8])
def test_the_plan_covers_every_element_once_in_fragments_of_about_equal_size(count):
    fragments = plan(CNN, count)
    size = FlatLayout(CNN).size
    assert len(fragments) == count
    covered = np.zeros(size, np.int64)
    for fragment in fragments:
        for begin, end in fragment.runs:
            covered[begin:end] += 1
    assert (covered == 1).all()
    sizes = [f.size for f in fragments]
    assert max(sizes) <= 1.25 * min(sizes), sizes
    assert plan(CNN, count) == fragments  # Every worker cuts the model alike.


def test_a_model_too_small_for_the_fragments_is_refused():
    with pytest.raises(ValueError):
        plan((TensorSpec("w", (3,)),), 4)


def test_gather_and_scatter_move_a_fragments_values_and_nothing_else():
    flat = randn(SIZE)
    values = A.gather(flat)
    assert values.size == A.size == 8 + 600 + 10
    np.testing.assert_array_equal(values[:8], flat[144:152])
    np.testing.assert_array_equal(values[-10:], flat[-10:])
    target = np.zeros(SIZE, np.float32)
    A.scatter(values, target)
    np.testing.assert_array_equal(A.gather(target), values)
    assert not outside(A, target).any()
    assert not A.overlaps(B) and not B.overlaps(A)
    assert A.overlaps(Fragment.of([(FC + 699, FC + 701)]))
    assert not A.overlaps(Fragment.of([(152, FC + 100)]))  # Touching is not overlapping.


@pytest.mark.parametrize("fragment", [A, B, Fragment.of([(0, SIZE)]), Fragment.of([(3000, 3001)])])
def test_a_fragment_within_shards_gathers_what_it_gathers_from_the_full_buffer(fragment):
    cut = sharding.make_plan(SPECS, 3, split_bytes=4096)
    full = randn(SIZE, seed=1)
    got = np.full(fragment.size, np.nan, np.float32)
    filled = np.zeros(fragment.size, np.int64)
    for k in range(3):
        shard = np.concatenate([full[b:e] for b, e in cut.runs(k)])  # The shard's own buffer.
        local, compact = fragment.within(cut.runs(k))
        values = local.gather(shard) if local.runs else np.empty(0, np.float32)
        start = 0
        for begin, end in compact:
            got[begin:end] = values[start : start + end - begin]
            filled[begin:end] += 1
            start += end - begin
        assert start == local.size
    assert (filled == 1).all()
    np.testing.assert_array_equal(got, fragment.gather(full))


# -- The store -----------------------------------------------------------------


def make_store(optimizer=None, **kwargs):
    store = ParameterStore(optimizer or SGD(learning_rate=0.5, momentum=0.9), **kwargs)
    store.initialize("a", SPECS, randn(SIZE))
    return store


def test_a_fragment_push_updates_only_its_parameters_and_momentum_as_one_version():
    fragment_store, whole_store = make_store(), make_store()
    warmup = randn(SIZE, seed=2)  # Momentum everywhere, so that "unchanged" means something.
    fragment_store.push("a", 1, 0, warmup)
    whole_store.push("a", 1, 0, warmup)
    before = fragment_store.export_state()

    grad = randn(SIZE, seed=3)
    result = fragment_store.push("a", 2, 1, A.gather(grad), fragment=A)
    whole_store.push("a", 2, 1, grad)  # The same step on every parameter.

    assert result.version == fragment_store.version == 2
    after, whole = fragment_store.export_state(), whole_store.export_state()
    for got, old, all_moved in (
        (after.params, before.params, whole.params),
        (after.slots["momentum"], before.slots["momentum"], whole.slots["momentum"]),
    ):
        assert outside(A, got).tobytes() == outside(A, old).tobytes()
        assert A.gather(got).tobytes() == A.gather(all_moved).tobytes()
        assert not np.array_equal(A.gather(got), A.gather(old))


def test_a_fragment_push_is_refused_under_a_staleness_policy():
    store = make_store(staleness=StalenessConfig("lr_scale"))
    init = store.snapshot().flat.copy()
    with pytest.raises(ValidationError, match="ps.staleness='none'"):
        store.push("a", 1, 0, A.gather(randn(SIZE)), fragment=A)
    with pytest.raises(ValidationError, match="ps.staleness='none'"):
        store.fragment_for(A.specs(SPECS))
    assert store.version == 0
    assert store.snapshot().flat.tobytes() == init.tobytes()


def test_a_nan_in_a_fragment_push_is_refused_naming_its_tensor_and_changes_nothing():
    store = make_store()
    init = store.snapshot().flat.copy()
    values = A.gather(randn(SIZE))
    values[8 + 300] = np.nan  # In the piece of fc/kernel.
    with pytest.raises(ValidationError, match="'fc/kernel@100:700:100x30' has 1 non-finite"):
        store.push("a", 1, 0, values, fragment=A)
    assert store.version == 0
    assert store.snapshot().flat.tobytes() == init.tobytes()


def test_a_fragment_push_of_the_wrong_size_is_refused():
    store = make_store()
    with pytest.raises(ValidationError, match=f"expected \\({A.size},\\) float32"):
        store.push("a", 1, 0, np.zeros(A.size + 1, np.float32), fragment=A)
    assert store.version == 0


# -- Rounds per fragment -------------------------------------------------------


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def round_store(momentum=0.0):
    """A round store with workers a and b joined, every parameter 0, SGD lr 1."""
    store = ParameterStore(
        SGD(learning_rate=1.0, momentum=momentum),
        clock=Clock(),
        rounds=RoundState(0.5, 10.0),
        heartbeat_timeout_secs=60.0,
    )
    store.initialize("a", SPECS, np.zeros(SIZE, np.float32))
    for worker in ("a", "b"):
        store.snapshot(worker)
    return store


def full(value, fragment):
    return np.full(fragment.size, value, np.float32)


def test_a_fragments_round_averages_into_one_update_of_it_while_anothers_stays_open():
    store = round_store()
    store.push("a", 1, 0, full(5.0, B), samples=10, fragment=B)
    store.push("a", 2, 0, full(1.0, A), samples=10, fragment=A)
    assert store.version == 0  # Each round waits for b.
    store.push("b", 1, 0, full(3.0, A), samples=30, fragment=A)
    assert store.version == 1
    flat = store.snapshot().flat
    np.testing.assert_array_equal(A.gather(flat), full(-2.5, A))  # -(10 * 1 + 30 * 3) / 40.
    assert not outside(A, flat).any()  # B's round is still open: nothing of it applied.
    store.push("b", 2, 1, full(7.0, B), samples=10, fragment=B)
    assert store.version == 2
    flat = store.snapshot().flat
    np.testing.assert_array_equal(B.gather(flat), full(-6.0, B))
    np.testing.assert_array_equal(A.gather(flat), full(-2.5, A))
    assert store.status().updates_applied == 2


def test_a_push_overlapping_another_fragments_open_round_is_refused_and_changes_nothing():
    store = round_store()
    store.push("a", 1, 0, full(1.0, A), fragment=A)
    overlapping = Fragment.of([(FC + 600, FC + 800)])
    with pytest.raises(ValidationError, match="overlap another fragment's open round"):
        store.push("b", 1, 0, full(100.0, overlapping), fragment=overlapping)
    with pytest.raises(ValidationError, match="overlap"):  # Nor the whole model.
        store.push("b", 1, 0, np.full(SIZE, 100.0, np.float32))
    assert store.version == 0 and not store.snapshot().flat.any()
    # b's sequence 1 was not taken, and the round's sum holds a's push alone.
    assert not store.push("b", 1, 0, full(3.0, A), fragment=A).duplicate
    assert store.version == 1
    flat = store.snapshot().flat
    np.testing.assert_array_equal(A.gather(flat), full(-2.0, A))
    assert not outside(A, flat).any()


def fetch_in_thread(store, client_id, **kwargs):
    out = []
    thread = threading.Thread(target=lambda: out.append(store.snapshot(client_id, **kwargs)))
    thread.start()
    return thread, out


def test_a_workers_fragment_fetch_waits_only_for_that_fragments_round():
    store = round_store()
    store.push("a", 1, 0, full(1.0, A), fragment=A)
    # Its fetch of B does not wait for A's round (on a thread only to catch a hang).
    thread, out = fetch_in_thread(store, "a", fragment=B)
    thread.join(timeout=10)
    assert not thread.is_alive() and out[0].version == 0
    # Its fetches of A, and of the whole model, wait for A's round.
    waiting = [fetch_in_thread(store, "a", fragment=A), fetch_in_thread(store, "a")]
    for thread, out in waiting:
        thread.join(timeout=0.3)
        assert thread.is_alive() and not out
    store.push("b", 1, 0, full(3.0, A), fragment=A)
    for thread, out in waiting:
        thread.join(timeout=10)
        assert out[0].version == 1
        np.testing.assert_array_equal(A.gather(out[0].flat), full(-2.0, A))


def test_open_fragment_rounds_survive_a_checkpoint_and_continue_bit_identically(tmp_path):
    store = round_store(momentum=0.9)
    store.push("a", 1, 0, full(1.0, A), samples=10, fragment=A)
    store.push("a", 2, 0, randn(B.size, seed=4), samples=20, fragment=B)
    store.push("b", 1, 0, randn(B.size, seed=5), samples=30, fragment=B)  # B closes: momentum.
    store.push("a", 3, 1, randn(B.size, seed=6), samples=20, fragment=B)  # B's second round.
    assert store.version == 1
    checkpointing.save_checkpoint(store, str(tmp_path), run_id="r", quiet=True)

    restarted = ParameterStore(SGD(learning_rate=1.0, momentum=0.9), rounds=RoundState(0.5, 10.0))
    assert checkpointing.restore_at_start(restarted, str(tmp_path), None, "r", True)
    assert restarted.push("a", 3, 1, randn(B.size, seed=6), fragment=B).duplicate
    for s in (store, restarted):
        s.push("b", 2, 1, randn(A.size, seed=7), samples=30, fragment=A)
        s.push("b", 3, 2, randn(B.size, seed=8), samples=10, fragment=B)
    assert restarted.version == store.version == 3
    saved, resumed = store.export_state(), restarted.export_state()
    assert resumed.params.tobytes() == saved.params.tobytes()
    assert resumed.slots["momentum"].tobytes() == saved.slots["momentum"].tobytes()
    assert A.gather(saved.params).any()  # A's round was applied, not dropped.


# -- Over gRPC -----------------------------------------------------------------


@pytest.fixture
def small(serve):
    """A server initialized with SPECS (SGD lr 0.5), a client and a raw stub."""
    store = ParameterStore(SGD(learning_rate=0.5))
    server = serve(store)
    client = ParameterClient(server.address, "worker_0", timeout_secs=10, retry_secs=2)
    client.register(SPECS)
    init = randn(SIZE, seed=9)
    client.initialize(SPECS, init)
    channel = grpc.insecure_channel(server.address)
    yield store, server, client, pb_grpc.ParameterServiceStub(channel), init
    channel.close()
    client.close()


def push_stream(specs, flat, fragment, sequence=1):
    header = pb.PushHeader(
        client_id="worker_0",
        sequence=sequence,
        base_version=0,
        tensors=wire.specs_to_proto(specs),
        fragment=fragment,
    )
    return list(wire.encode_stream(pb.PushRequest, header, flat, 256))


def assert_unchanged(store, init):
    assert store.version == 0
    assert store.snapshot().flat.tobytes() == init.tobytes()


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_a_fragment_fetch_returns_its_values_named_as_asked(small, dtype):
    _, server, _, _, init = small
    with ParameterClient(server.address, "eval", timeout_secs=10, fetch_dtype=dtype) as client:
        _, _, whole = client.fetch()  # In the wire dtype, converted to float32.
        version, specs, values = client.fetch(fragment=A)
        assert client.fetch()[1] == SPECS  # A fragment fetch leaves the signature whole.
    assert version == 0
    assert specs == A.specs(SPECS)
    assert values.dtype == np.float32 and values.tobytes() == A.gather(whole).tobytes()
    if dtype == "float32":
        assert values.tobytes() == A.gather(init).tobytes()


def test_the_reply_to_a_raw_fragment_fetch_names_the_tensors_as_asked(small):
    _, _, _, stub, _ = small
    asked = B.specs(SPECS)
    request = pb.FetchRequest(client_id="probe", read_only=True, tensors=wire.specs_to_proto(asked))
    header, *_ = list(stub.Fetch(request, timeout=10))
    assert wire.specs_from_proto(header.header.tensors) == asked
    assert header.header.total_bytes == 4 * B.size


def test_a_push_naming_some_tensors_without_the_fragment_flag_is_still_a_model_mismatch(small):
    store, _, client, stub, init = small
    specs = (SPECS[0],)
    with pytest.raises(grpc.RpcError) as e:
        stub.Push(iter(push_stream(specs, np.zeros(144, np.float32), False)), timeout=10)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "missing tensor 'conv/bias'" in e.value.details()
    assert_unchanged(store, init)
    # The same with the flag: an update of conv/kernel alone.
    grad = np.ones(144, np.float32)
    stub.Push(iter(push_stream(specs, grad, True)), timeout=10)
    flat = store.snapshot().flat
    assert store.version == 1
    np.testing.assert_array_equal(flat[:144], init[:144] - np.float32(0.5))
    assert flat[144:].tobytes() == init[144:].tobytes()


@pytest.mark.parametrize(
    "specs, message",
    [
        ((TensorSpec("nope", (3,)),), "unknown tensor 'nope'"),
        ((piece("fc/kernel", 2900, 3100),), "'fc/kernel@2900:3100:100x30' is not a run"),
        ((piece("fc/kernel", 0, 200), piece("fc/kernel", 100, 300)), "'fc/kernel@100:300"),
        ((SPECS[3], SPECS[1]), "'conv/bias'"),
    ],
)
def test_a_push_or_fetch_naming_no_fragment_is_invalid_argument_and_changes_nothing(
    small, specs, message
):
    store, _, _, stub, init = small
    size = sum(s.size for s in specs)
    with pytest.raises(grpc.RpcError) as e:
        stub.Push(iter(push_stream(specs, np.ones(size, np.float32), True)), timeout=10)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in e.value.details()
    request = pb.FetchRequest(client_id="probe", tensors=wire.specs_to_proto(specs))
    with pytest.raises(grpc.RpcError) as e:
        list(stub.Fetch(request, timeout=10))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in e.value.details()
    assert_unchanged(store, init)


def test_capabilities_say_the_server_takes_fragments(small):
    _, _, _, stub, _ = small
    reply = stub.Register(pb.RegisterRequest(client_id="probe"), timeout=10)
    assert reply.capabilities.fragments


def test_a_fragment_push_through_the_client_updates_only_the_fragment(small):
    store, _, client, _, init = small
    values = randn(A.size, seed=10)
    ack = client.push(values, 0, fragment=A)
    assert ack.version == store.version == 1
    flat = store.snapshot().flat
    assert A.gather(flat).tobytes() == (A.gather(init) - np.float32(0.5) * values).tobytes()
    assert outside(A, flat).tobytes() == outside(A, init).tobytes()


def test_int4_fragment_pushes_keep_one_error_feedback_per_fragment(serve):
    store = ParameterStore(SGD(learning_rate=1.0))
    server = serve(store)
    raw = {A: np.zeros(A.size, np.float64), B: np.zeros(B.size, np.float64)}
    with ParameterClient(
        server.address, "w0", timeout_secs=10, push_codec="int4", codec_block_size=64
    ) as client:
        client.register(SPECS)
        client.initialize(SPECS, np.zeros(SIZE, np.float32))
        for i in range(4):
            for fragment in (A, B):
                values = randn(fragment.size, seed=100 + 2 * i + (fragment is B))
                raw[fragment] += values
                client.push(values, store.version, fragment=fragment)
        feedback = dict(client._fragment_feedback)
        assert client._feedback is None  # The whole model's residual is apart.
    assert store.version == 8
    assert set(feedback) == {A, B}
    flat = store.snapshot().flat
    for fragment in (A, B):
        residual = feedback[fragment].residual
        assert feedback[fragment].spec.codec == "int4" and residual.size == fragment.size
        assert np.abs(residual).max() > 0  # int4 loses something each push...
        # ...and error feedback sends it later: applied (-decoded) + residual = the raw sum.
        np.testing.assert_allclose(-fragment.gather(flat), raw[fragment] - residual, atol=2e-5)
    assert not outside(Fragment.of([*A.runs, *B.runs]), flat).any()


def test_a_sharded_fragment_push_and_fetch_equal_those_of_one_server(serve):
    stores = [ParameterStore(SGD(learning_rate=0.5, momentum=0.9)) for _ in range(3)]
    addresses = [serve(s).address for s in stores]
    init = randn(SIZE, seed=11)
    sharded = make_client(addresses[:2], "w0", split_bytes=4096, timeout_secs=10)
    single = ParameterClient(addresses[2], "w0", timeout_secs=10)
    cut = sharding.make_plan(SPECS, 2, split_bytes=4096)
    try:
        for client in (sharded, single):
            client.register(SPECS)
            client.initialize(SPECS, init)
            client.fetch()
        for i, fragment in enumerate((A, B, A)):
            values = randn(fragment.size, seed=20 + i)
            sharded.push(values, sharded.fetch()[0], fragment=fragment)
            single.push(values, single.fetch()[0], fragment=fragment)
        for fragment in (A, B):
            versions, specs, values = sharded.fetch(fragment=fragment)
            assert specs == single.fetch(fragment=fragment)[1] == fragment.specs(SPECS)
            assert values.tobytes() == single.fetch(fragment=fragment)[2].tobytes()
        assert sharded.fetch()[2].tobytes() == single.fetch()[2].tobytes()
        # A fragment of shard 0's runs alone: shard 1 is neither sent anything nor asked.
        only = Fragment.of([cut.runs(0)[0]])
        before = stores[1].version
        ack = sharded.push(np.ones(only.size, np.float32), sharded.fetch()[0], fragment=only)
        assert stores[1].version == before and ack.version >= 1
        versions, _, values = sharded.fetch(fragment=only)
        assert versions[1] == 0 and versions[0] == stores[0].version
        assert values.tobytes() == only.gather(sharded.fetch()[2]).tobytes()
    finally:
        sharded.close()
        single.close()
