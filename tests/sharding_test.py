"""Sharded parameter server: the plan, the sharded client over real gRPC, shard checkpoints."""

import os

import grpc
import numpy as np
import pytest

from gasgd_tf import checkpoints, sharding
from gasgd_tf.client import RequestRejectedError, ShardedClient, make_client, version_number
from gasgd_tf.server import SGD, ParameterStore
from gasgd_tf.server.checkpointing import save_checkpoint
from gasgd_tf.tensors import FlatLayout, TensorSpec

SPECS = (
    TensorSpec("conv/kernel", (3, 3, 2, 8)),  # 144
    TensorSpec("conv/bias", (8,)),
    TensorSpec("fc/kernel", (100, 30)),  # 3000 elements, 12,000 bytes: split at 4 KiB
    TensorSpec("fc/bias", (30,)),
    TensorSpec("head/kernel", (30, 10)),  # 300
    TensorSpec("head/bias", (10,)),
)
SIZE = FlatLayout(SPECS).size


def test_plan_splits_large_tensors_and_balances_the_rest():
    plan = sharding.make_plan(SPECS, 3, split_bytes=4096)
    # fc/kernel is cut into three runs of 1000 elements, one per shard.
    fc = [p for pieces in plan.pieces for p in pieces if p.spec.name == "fc/kernel"]
    assert [(p.start, p.stop) for p in fc] == [(0, 1000), (1000, 2000), (2000, 3000)]
    # The others go whole, largest first, to the least loaded shard.
    owner = {p.spec.name: k for k, pieces in enumerate(plan.pieces) for p in pieces if p.whole}
    assert owner == {
        "head/kernel": 0,
        "conv/kernel": 1,
        "fc/bias": 2,
        "conv/bias": 2,
        "head/bias": 2,
    }
    assert sum(plan.shard_sizes()) == SIZE
    assert max(plan.shard_sizes()) - min(plan.shard_sizes()) <= 300
    # Every element of the full buffer is in exactly one shard's runs.
    covered = np.zeros(SIZE, np.int64)
    for k in range(3):
        for begin, end in plan.runs(k):
            covered[begin:end] += 1
    assert (covered == 1).all()


def test_plan_is_deterministic_and_names_pieces_reversibly():
    a = sharding.make_plan(SPECS, 2, split_bytes=4096)
    assert a == sharding.make_plan(SPECS, 2, split_bytes=4096)
    names = [s.name for k in range(2) for s in a.shard_specs(k)]
    assert "fc/kernel@0:1500:100x30" in names and "fc/kernel@1500:3000:100x30" in names
    assert sharding.parse_piece_name("fc/kernel@0:1500:100x30") == ("fc/kernel", 0, 1500, (100, 30))
    assert sharding.parse_piece_name("fc/kernel") is None


def test_plan_refuses_a_shard_with_nothing_to_hold():
    with pytest.raises(ValueError, match="shard 1 would hold nothing"):
        sharding.make_plan((TensorSpec("w", (4,)),), 2)
    one = sharding.make_plan(SPECS, 1)
    assert one.runs(0) == ((0, SIZE),)  # One shard: the whole buffer, in order.


@pytest.fixture
def shards(serve):
    stores = [ParameterStore(SGD(learning_rate=0.5)) for _ in range(3)]
    servers = [serve(s) for s in stores]
    return stores, ",".join(s.address for s in servers)


def test_sharded_roundtrip_is_byte_exact_and_pushes_split_correctly(shards):
    stores, address = shards
    rng = np.random.default_rng(0)
    init = rng.normal(size=SIZE).astype(np.float32)
    grad = rng.normal(size=SIZE).astype(np.float32)
    with make_client(address, "worker_0", split_bytes=4096, timeout_secs=10) as client:
        assert isinstance(client, ShardedClient)
        assert not client.register(SPECS).initialized
        assert client.initialize(SPECS, init) == (True, (0, 0, 0))
        # Each shard holds exactly its pieces, split tensors included.
        for k, store in enumerate(stores):
            assert store.specs == client.plan.shard_specs(k)
        version, specs, flat = client.fetch()
        assert (version, specs) == ((0, 0, 0), SPECS)
        assert flat.tobytes() == init.tobytes()

        ack = client.push(grad, version, client_step=1)
        assert (ack.version, ack.staleness, ack.duplicate) == (1, 0, False)
        version, _, flat = client.fetch()
        assert version_number(version) == 1
        assert flat.tobytes() == (init - np.float32(0.5) * grad).tobytes()
        assert client.leave() == 1
        status = client.status()
        assert status.version == 1 and status.num_parameters == SIZE
        assert [c.active for c in status.clients] == [False]


def test_sharded_fetch_talks_to_all_shards_at_once(shards, monkeypatch):
    # Each shard's fetch blocks until all three have started: only a client
    # that calls them in parallel gets through.
    import threading

    from gasgd_tf.client import client as client_module

    stores, address = shards
    init = np.arange(SIZE, dtype=np.float32)
    client = make_client(address, "eval", split_bytes=4096, timeout_secs=10)
    client.register(SPECS)
    client.initialize(SPECS, init)
    barrier = threading.Barrier(3, timeout=5)
    real_fetch = client_module.ParameterClient.fetch

    def fetch(self, *args, **kwargs):
        barrier.wait()  # BrokenBarrierError after 5 s if the calls were sequential.
        return real_fetch(self, *args, **kwargs)

    monkeypatch.setattr(client_module.ParameterClient, "fetch", fetch)
    _, _, flat = client.fetch(read_only=True)
    assert flat.tobytes() == init.tobytes()
    client.close()


def test_sharded_push_with_nan_is_refused_before_any_shard_applies(shards):
    stores, address = shards
    with make_client(address, "worker_0", split_bytes=4096, timeout_secs=10) as client:
        client.register(SPECS)
        client.initialize(SPECS, np.zeros(SIZE, np.float32))
        grad = np.ones(SIZE, np.float32)
        grad[SIZE - 1] = np.nan  # In one shard's part only.
        with pytest.raises(RequestRejectedError, match="'head/bias' has 1 non-finite") as e:
            client.push(grad, 0)
        assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [s.version for s in stores] == [0, 0, 0]


def test_client_with_another_plan_is_refused(shards):
    _, address = shards
    with make_client(address, "worker_0", split_bytes=4096, timeout_secs=10) as client:
        client.register(SPECS)
        client.initialize(SPECS, np.zeros(SIZE, np.float32))
    # Another split threshold gives other shard signatures: Register refuses them.
    with make_client(address, "worker_1", split_bytes=1 << 20, retry_secs=1) as other:
        with pytest.raises(RequestRejectedError, match="INVALID_ARGUMENT"):
            other.register(SPECS)


def test_shard_checkpoints_merge_into_whole_tensors(shards, tmp_path):
    stores, address = shards
    init = np.random.default_rng(1).normal(size=SIZE).astype(np.float32)
    with make_client(address, "worker_0", split_bytes=4096, timeout_secs=10) as client:
        client.register(SPECS)
        client.initialize(SPECS, init)
    folder = str(tmp_path / "checkpoints")
    for k, store in enumerate(stores):
        save_checkpoint(store, folder, shard=(k, 3))
    assert len(os.listdir(folder)) == 3
    checkpoint = checkpoints.load(str(tmp_path))
    assert checkpoint.meta["versions"] == [0, 0, 0]
    assert checkpoints.flatten_for(checkpoint, SPECS).tobytes() == init.tobytes()
    # A missing shard is named, not silently ignored.
    os.remove(os.path.join(folder, "params-000000000-shard-1-of-3.npz"))
    with pytest.raises(checkpoints.CheckpointError, match="no file of shard 1"):
        checkpoints.load(str(tmp_path))


def test_sharded_float16_overflow_is_refused_before_any_shard_applies(shards):
    stores, address = shards
    with make_client(
        address, "worker_0", split_bytes=4096, timeout_secs=10, push_dtype="float16"
    ) as client:
        client.register(SPECS)
        client.initialize(SPECS, np.zeros(SIZE, np.float32))
        grad = np.ones(SIZE, np.float32)
        grad[-1] = 1e5  # Finite in float32, Inf in float16; in one shard's part.
        with pytest.raises(RequestRejectedError, match="'head/bias'.*use bfloat16"):
            client.push(grad, 0)
        assert client.push(np.ones(SIZE, np.float32), 0).version == 1
    assert [s.version for s in stores] == [1, 1, 1]


def test_sharded_bfloat16_fetch_lands_in_place(shards):
    import ml_dtypes

    _, address = shards
    init = np.random.default_rng(3).normal(size=SIZE).astype(np.float32)
    with make_client(address, "w", split_bytes=4096, fetch_dtype="bfloat16") as client:
        client.register(SPECS)
        client.initialize(SPECS, init)
        _, _, flat = client.fetch()
    assert flat.tobytes() == init.astype(ml_dtypes.bfloat16).astype(np.float32).tobytes()


def test_shard_checkpoints_of_two_runs_are_not_mixed(shards, tmp_path):
    stores, address = shards
    with make_client(address, "worker_0", split_bytes=4096, timeout_secs=10) as client:
        client.register(SPECS)
        client.initialize(SPECS, np.zeros(SIZE, np.float32))
    folder = str(tmp_path / "checkpoints")
    for k, store in enumerate(stores):
        save_checkpoint(store, folder, shard=(k, 3), run_id="run_a")
    with make_client(address, "worker_0", split_bytes=4096, timeout_secs=10) as client:
        client.register(SPECS)
        client.push(np.ones(SIZE, np.float32), (0, 0, 0))
    # Run B: shard 1 never wrote its file.
    for k in (0, 2):
        save_checkpoint(stores[k], folder, shard=(k, 3), run_id="run_b")
    with pytest.raises(checkpoints.CheckpointError, match="no file of shard 1 from that run"):
        checkpoints.load(str(tmp_path))  # The newest file is run B's.
    run_a = os.path.join(folder, "params-000000000-shard-0-of-3.run_a.npz")
    assert checkpoints.load(run_a).meta["versions"] == [0, 0, 0]


def test_a_resumed_worker_does_not_push_again_to_a_shard_that_was_ahead(shards):
    # A worker killed mid-push: shard 0 applied its step 2, shards 1 and 2
    # did not. Restarted, it resumes after step 1 (what every shard has) and
    # must not give shard 0 step 2 a second time.
    stores, address = shards
    with make_client(address, "worker_0", split_bytes=4096, timeout_secs=10) as client:
        client.register(SPECS)
        client.initialize(SPECS, np.zeros(SIZE, np.float32))
        client.push(np.ones(SIZE, np.float32), (0, 0, 0), client_step=1)
        client.clients[0].push(  # Only shard 0 got step 2 before the kill.
            client._views(np.ones(SIZE, np.float32), 0), 1, client_step=2
        )
    with make_client(address, "worker_0", split_bytes=4096, timeout_secs=10) as restarted:
        assert restarted.register(SPECS).last_step == 1  # Resume after step 1...
        version, _, _ = restarted.fetch()
        assert version == (2, 1, 1)
        restarted.push(np.ones(SIZE, np.float32), version, client_step=2)
        assert [s.version for s in stores] == [2, 2, 2]  # ...and step 2 reaches each shard once.
        restarted.push(np.ones(SIZE, np.float32), (2, 2, 2), client_step=3)
    assert [s.version for s in stores] == [3, 3, 3]
