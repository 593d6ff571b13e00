"""Backpressure: busy refusals with a retry hint, one Initialize at a time, bounded memory."""

import os
import subprocess
import sys
import threading
import time

import grpc
import numpy as np
import pytest

from gasgd_tf import allocator, wire
from gasgd_tf.client import ParameterClient, RequestRejectedError, ServerUnavailableError
from gasgd_tf.client import client as client_lib
from gasgd_tf.proto import parameter_service_pb2 as pb
from gasgd_tf.proto import parameter_service_pb2_grpc as pb_grpc
from gasgd_tf.server import SGD, ParameterStore, admission
from gasgd_tf.tensors import FlatLayout, TensorSpec

SPECS = (TensorSpec("w", (100,)), TensorSpec("b", (10,)))
SIZE = FlatLayout(SPECS).size


@pytest.fixture
def fast_refusals(monkeypatch):
    """A push or Initialize waits at most 0.2 s for a slot, so that refusals come quickly."""
    monkeypatch.setattr(admission, "PUSH_SLOT_WAIT_SECS", 0.2)


def wait_until(condition, what: str, timeout: float = 30.0) -> None:
    """Polls ``condition`` until true; the deadline only guards against a hang."""
    give_up = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < give_up, f"timed out waiting until {what}"
        time.sleep(0.01)


@pytest.fixture
def one_slot(serve):
    """A server initialized with zeros, receiving one push at a time; a raw stub; a release."""
    store = ParameterStore(SGD(learning_rate=1.0))
    store.initialize("init", SPECS, np.zeros(SIZE, np.float32))
    server = serve(store, max_concurrent_pushes=1)
    release = threading.Event()  # Ends the stalled stream holding the slot.
    channel = grpc.insecure_channel(server.address)
    try:
        yield server, store, pb_grpc.ParameterServiceStub(channel), release
    finally:
        release.set()
        channel.close()


def stream(message_type, header, flat):
    return list(wire.encode_stream(message_type, header, flat, chunk_bytes=64))


def push_messages(sequence, client_id="holder"):
    header = pb.PushHeader(
        client_id=client_id, sequence=sequence, tensors=wire.specs_to_proto(SPECS)
    )
    return stream(pb.PushRequest, header, np.ones(SIZE, np.float32))


def stalled(messages, release):
    """Sends the header and one chunk, then waits for ``release`` before the rest."""
    yield from messages[:2]
    release.wait(20)
    yield from messages[2:]


def hold_slot(server, stub, release, results):
    """Starts a push that takes the only slot and holds it until ``release``."""
    holder = threading.Thread(
        target=lambda: results.append(stub.Push(stalled(push_messages(1), release), timeout=60))
    )
    holder.start()
    wait_until(lambda: server.servicer.push_slots.held == 1, "the holder has the slot")
    return holder


def retry_after_ms(error: grpc.RpcError) -> str | None:
    return dict(error.trailing_metadata() or ()).get("retry-after-ms")


def test_the_retry_after_key_is_defined_once():
    # The server sets it, the client reads it: one definition, in wire.
    assert admission.RETRY_AFTER_KEY is wire.RETRY_AFTER_KEY is client_lib.RETRY_AFTER_KEY
    assert wire.RETRY_AFTER_KEY == "retry-after-ms"  # The proto's contract.


def test_a_push_beyond_the_slots_is_refused_with_a_retry_hint(one_slot, fast_refusals):
    server, store, stub, release = one_slot
    results = []
    holder = hold_slot(server, stub, release, results)
    with pytest.raises(grpc.RpcError) as e:
        stub.Push(iter(push_messages(1, client_id="late")), timeout=10)
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    hint = retry_after_ms(e.value)
    assert hint is not None and hint.isdecimal()
    assert admission.RETRY_AFTER_MIN_MS <= int(hint) <= admission.RETRY_AFTER_MAX_MS
    assert "server busy" in e.value.details()
    assert "ps.max_concurrent_pushes=1" in e.value.details()
    assert f"retry after {hint} ms" in e.value.details()
    release.set()
    holder.join(30)
    assert not holder.is_alive() and results[0].version == 1
    assert store.version == 1  # The refused push was never applied.


def test_a_push_near_its_deadline_is_refused_before_it(one_slot):
    # No shortened wait here: a 1.5 s deadline leaves 0.5 s to wait for the
    # slot (PUSH_SLOT_MARGIN_SECS before the deadline), and the refusal
    # still carries the hint instead of ending as DEADLINE_EXCEEDED.
    server, _, stub, release = one_slot
    holder = hold_slot(server, stub, release, [])
    start = time.monotonic()
    with pytest.raises(grpc.RpcError) as e:
        stub.Push(iter(push_messages(1, client_id="late")), timeout=1.5)
    assert time.monotonic() - start < 1.5
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and retry_after_ms(e.value)
    release.set()
    holder.join(10)


def test_the_client_retries_a_busy_refusal_and_succeeds_once_the_slot_frees(
    one_slot, fast_refusals
):
    server, store, stub, release = one_slot
    holder = hold_slot(server, stub, release, [])
    refusals = []
    with ParameterClient(server.address, "worker_0", timeout_secs=30, retry_secs=60) as client:
        client.register(SPECS)
        real_push = client._push

        def counting(messages, **kwargs):
            try:
                return real_push(messages, **kwargs)
            except grpc.RpcError as e:
                refusals.append(e.code())
                if len(refusals) == 3:
                    release.set()  # The slot frees after a few refusals, whatever their pace.
                raise

        client._push = counting
        ack = client.push(np.ones(SIZE, np.float32), base_version=0)
    holder.join(30)
    # Refused three times, retried each time, then it got through.
    assert refusals == [grpc.StatusCode.RESOURCE_EXHAUSTED] * 3
    assert not ack.duplicate and store.version == 2


class _Refused(grpc.RpcError):
    """A RESOURCE_EXHAUSTED answer, with or without a retry hint."""

    def __init__(self, metadata=()):
        self._metadata = metadata

    def code(self):
        return grpc.StatusCode.RESOURCE_EXHAUSTED

    def details(self):
        return "refused (simulated)"

    def trailing_metadata(self):
        return self._metadata


def _client_refused_with(serve, metadata, retry_secs):
    store = ParameterStore(SGD(learning_rate=1.0))
    store.initialize("init", SPECS, np.zeros(SIZE, np.float32))
    server = serve(store)
    client = ParameterClient(server.address, "worker_0", timeout_secs=5, retry_secs=retry_secs)
    client.register(SPECS)
    calls = []

    def refuse(messages, **kwargs):
        calls.append(client_lib.time.monotonic())  # The client's clock (a fake one below).
        raise _Refused(metadata)

    client._push = refuse
    return client, calls


def test_resource_exhausted_without_a_hint_is_not_retried(serve):
    # A message over gRPC's size limit, or a server out of memory: the same
    # request would fail the same way.
    client, calls = _client_refused_with(serve, (), retry_secs=10)
    with client, pytest.raises(RequestRejectedError, match="RESOURCE_EXHAUSTED") as e:
        client.push(np.ones(SIZE, np.float32), base_version=0)
    assert e.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert len(calls) == 1


def test_an_unreadable_hint_is_not_retried(serve):
    client, calls = _client_refused_with(serve, (("retry-after-ms", "soon"),), retry_secs=10)
    with client, pytest.raises(RequestRejectedError, match="RESOURCE_EXHAUSTED"):
        client.push(np.ones(SIZE, np.float32), base_version=0)
    assert len(calls) == 1


class _FakeClock:
    """The client's ``time`` module with a virtual clock: ``sleep`` advances it at once."""

    def __init__(self):
        self.now = 1000.0
        self.sleeps = []

    def monotonic(self):
        return self.now

    def sleep(self, secs):
        self.sleeps.append(secs)
        self.now += secs

    def __getattr__(self, name):  # Anything else the client may use: the real one.
        return getattr(time, name)


def test_a_server_that_stays_busy_gives_up_within_the_retry_window(serve, monkeypatch):
    client, calls = _client_refused_with(serve, (("retry-after-ms", "100"),), retry_secs=1.0)
    clock = _FakeClock()  # No real waiting: the pace of this machine cannot matter.
    monkeypatch.setattr(client_lib, "time", clock)
    with client, pytest.raises(ServerUnavailableError, match="stayed busy") as e:
        client.push(np.ones(SIZE, np.float32), base_version=0)
    assert "refused (simulated)" in str(e.value)  # The server's details, passed on.
    # Each retry after the hint times a jitter in [0.5, 1.5]: 50-150 ms.
    slack = 1e-9  # 0.1 x 1.5 is a hair above 0.15 in floating point.
    assert clock.sleeps and all(0.05 - slack <= s <= 0.15 + slack for s in clock.sleeps)
    assert len(calls) == len(clock.sleeps) + 1  # A call after every wait, then it gave up.
    # Every call within the 1 s window from the first refusal, and the
    # window used up: it gave up only when the next wait would pass it.
    assert calls[-1] - calls[0] <= 1.0
    assert calls[-1] - calls[0] > 1.0 - 0.15 - slack
    assert 7 <= len(calls) <= 21, len(calls)


def initialize_messages(client_id, value):
    header = pb.InitializeHeader(client_id=client_id, tensors=wire.specs_to_proto(SPECS))
    return stream(pb.InitializeRequest, header, np.full(SIZE, value, np.float32))


def test_concurrent_initialize_streams_apply_one(serve):
    store = ParameterStore(SGD(learning_rate=1.0))
    server = serve(store)
    release = threading.Event()
    answers = {}

    def offer(i, messages):
        with grpc.insecure_channel(server.address) as channel:
            answers[i] = pb_grpc.ParameterServiceStub(channel).Initialize(messages, timeout=60)

    # The first stream stalls mid-way while holding the Initialize slot; the
    # others arrive meanwhile and wait for their turn.
    first = threading.Thread(
        target=offer, args=(0, stalled(initialize_messages("init_0", 0.0), release))
    )
    first.start()
    slot = server.servicer.initialize_slot
    wait_until(lambda: slot.held == 1, "the first stream holds the Initialize slot")
    others = [
        threading.Thread(target=offer, args=(i, iter(initialize_messages(f"init_{i}", i))))
        for i in range(1, 5)
    ]
    for t in others:
        t.start()
    wait_until(lambda: slot.waiting == 4, "the other four wait for the slot")
    assert not store.initialized and all(t.is_alive() for t in others)
    release.set()
    for t in [first, *others]:
        t.join(30)
        assert not t.is_alive()
    assert answers[0].accepted
    assert [answers[i].accepted for i in range(1, 5)] == [False] * 4
    np.testing.assert_array_equal(store.snapshot().flat, np.zeros(SIZE, np.float32))


def test_an_initialize_refused_as_busy_is_retried_by_the_client(serve, fast_refusals):
    store = ParameterStore(SGD(learning_rate=1.0))
    server = serve(store)
    release = threading.Event()
    stub = pb_grpc.ParameterServiceStub(grpc.insecure_channel(server.address))
    first = threading.Thread(
        target=lambda: stub.Initialize(
            stalled(initialize_messages("init_0", 0.0), release), timeout=60
        )
    )
    first.start()
    slot = server.servicer.initialize_slot
    wait_until(lambda: slot.held == 1, "the first stream holds the Initialize slot")
    with pytest.raises(grpc.RpcError) as e:
        stub.Initialize(iter(initialize_messages("init_1", 1.0)), timeout=30)
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and retry_after_ms(e.value)
    assert "another Initialize" in e.value.details()
    assert slot.refused == 1

    def release_after_the_clients_first_refusal():
        wait_until(lambda: slot.refused >= 2, "the client was refused as busy")
        release.set()

    releaser = threading.Thread(target=release_after_the_clients_first_refusal)
    releaser.start()
    with ParameterClient(server.address, "init_2", timeout_secs=30, retry_secs=60) as client:
        assert client.initialize(SPECS, np.full(SIZE, 2.0, np.float32)) == (False, 0)
    releaser.join(30)
    assert slot.refused >= 2  # It was refused, retried, and answered.
    first.join(30)
    np.testing.assert_array_equal(store.snapshot().flat, np.zeros(SIZE, np.float32))


# -- Memory under 64 concurrent clients ------------------------------------------

_SERVER = """
import sys
from gasgd_tf.allocator import tune_for_server
tune_for_server()  # As the ps role does (gasgd_tf/main.py).
from gasgd_tf.server import SGD, ParameterServer, ParameterStore
server = ParameterServer(ParameterStore(SGD(learning_rate=1.0)), "127.0.0.1:0").start()
print(server.port, flush=True)
sys.stdin.read()  # Serves until the test closes our stdin.
"""


def _memory_mib(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM (peak RSS) of process ``pid``, in MiB."""
    with open(f"/proc/{pid}/status") as f:
        fields = dict(line.split(":", 1) for line in f)
    return {k: int(fields[k].split()[0]) / 1024 for k in ("VmRSS", "VmHWM")}


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads /proc")
def test_64_clients_push_and_fetch_with_bounded_server_memory():
    clients, load_secs = 64, 15.0
    size = 1 << 20  # 4 MiB of float32.
    specs = (TensorSpec("w", (size,)),)
    model_mib = size * 4 / 2**20
    proc = subprocess.Popen(
        [sys.executable, "-c", _SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        address = f"127.0.0.1:{int(proc.stdout.readline())}"
        with ParameterClient(address, "init", timeout_secs=30) as client:
            client.wait_for_server(30)
            client.register(specs)
            assert client.initialize(specs, np.zeros(size, np.float32)) == (True, 0)
            client.fetch()  # The version-0 snapshot too: part of the baseline.
        try:  # Peak RSS from here on (Linux: "5" resets VmHWM to the current RSS).
            with open(f"/proc/{proc.pid}/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            pass  # Then the peak may include start-up: a looser check, never a false failure.
        baseline = _memory_mib(proc.pid)["VmRSS"]

        stop = threading.Event()
        acked = [0] * clients
        refused = [0] * clients  # RESOURCE_EXHAUSTED answers seen (and retried).
        errors = []
        grad = np.ones(size, np.float32)

        def client_loop(i):
            try:
                with ParameterClient(address, f"w{i}", timeout_secs=30, retry_secs=30) as client:
                    version = client.register(specs).version
                    real_push = client._push

                    def counting(messages, **kwargs):
                        try:
                            return real_push(messages, **kwargs)
                        except grpc.RpcError as e:
                            if e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                                refused[i] += 1
                            raise

                    client._push = counting
                    while not stop.is_set():  # A worker with n_sync = 1: push, then fetch.
                        ack = client.push(grad, version)
                        assert not ack.duplicate
                        acked[i] += 1
                        version, _, _ = client.fetch()
            except BaseException as e:  # Reported below, in the test's thread.
                errors.append(e)

        threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(clients)]
        start = time.monotonic()
        for t in threads:
            t.start()
        time.sleep(load_secs)
        stop.set()
        for t in threads:
            t.join(60)
        duration = time.monotonic() - start
        assert not any(t.is_alive() for t in threads)
        memory = _memory_mib(proc.pid)
        with ParameterClient(address, "check", timeout_secs=30) as client:
            status = client.status()
            version, _, flat = client.fetch(read_only=True)
    finally:
        proc.stdin.close()
        proc.wait(30)

    # The design's bound on what the load may add to the server's memory:
    #   the version snapshot of the final fetch, the snapshots of the fetches
    #   being streamed (one per fetch slot, ps.max_concurrent_fetches=4, each
    #   of another version at worst), the gradient buffers (one
    #   per push slot, ps.max_concurrent_pushes=2 by default), every stream's
    #   initial flow-control window (64 KiB: BDP probing is off), the chunk
    #   messages of the two streams being read (the one parsed, the next one
    #   in gRPC's window, one in flight), the malloc arenas (capped at
    #   SERVER_ARENAS; each may cache about two freed chunk messages below
    #   its trim threshold, as many again in fragments), and 32 MiB for
    #   threads, protobuf objects and the like.
    chunk_mib = wire.DEFAULT_CHUNK_BYTES / 2**20
    slots, fetch_slots = 2, 4
    arenas = allocator.SERVER_ARENAS  # tune_for_server caps them (gasgd_tf/allocator.py).
    bound = (
        model_mib
        + fetch_slots * model_mib
        + slots * model_mib
        + clients * 64 / 1024
        + slots * 3 * chunk_mib
        + arenas * 4 * chunk_mib
        + 32
    )
    growth = memory["VmHWM"] - baseline
    total = sum(acked)
    print(
        f"{clients} clients, {duration:.1f} s, {model_mib:.0f} MiB model: {total} pushes "
        f"acknowledged ({total / duration:.0f}/s), {sum(refused)} refused with "
        f"RESOURCE_EXHAUSTED and retried; server RSS {baseline:.0f} MiB after "
        f"initialization, peak {memory['VmHWM']:.0f} MiB (+{growth:.0f} MiB, bound "
        f"+{bound:.0f} MiB), final {memory['VmRSS']:.0f} MiB"
    )
    assert not errors, errors[:3]
    assert all(acked)  # Every client got through.
    assert status.version == status.updates_applied == total == version
    assert status.duplicate_pushes == 0 and status.pushes_rejected == 0
    # SGD, learning rate 1, gradients of ones: every parameter counts the updates.
    assert np.array_equal(flat, np.full(size, -version, np.float32))
    assert growth < bound, f"server memory grew {growth:.0f} MiB, over the bound {bound:.0f} MiB"


def test_fetches_beyond_their_slots_wait_then_are_refused_with_a_hint(serve, fast_refusals):
    # Each fetch in flight holds a snapshot of the parameters: at most
    # max_concurrent_fetches of them. A reader that stops reading keeps its
    # slot (gRPC's flow control stalls the stream) until it goes away.
    big = (TensorSpec("w", (1 << 20,)),)
    store = ParameterStore(SGD(learning_rate=1.0))
    store.initialize("init", big, np.zeros(1 << 20, np.float32))
    server = serve(store, max_concurrent_fetches=1)
    # A small, fixed receive window: the slow reader really cannot take it all.
    channel = grpc.insecure_channel(server.address, options=[("grpc.http2.bdp_probe", 0)])
    try:
        stub = pb_grpc.ParameterServiceStub(channel)
        slow = stub.Fetch(pb.FetchRequest(client_id="slow"), timeout=30)
        next(slow)  # The header; then it stops reading 4 MiB of chunks.
        with pytest.raises(grpc.RpcError) as e:
            list(stub.Fetch(pb.FetchRequest(client_id="late"), timeout=10))
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert retry_after_ms(e.value) is not None
        assert "ps.max_concurrent_fetches=1" in e.value.details()
        slow.cancel()  # The slow reader goes away: its slot is free again.
        with ParameterClient(server.address, "late", timeout_secs=10, retry_secs=10) as client:
            version, _, flat = client.fetch()
        assert version == 0 and flat.size == 1 << 20
    finally:
        channel.close()
