"""ParameterClient: deadlines, retries and sequence numbers against real servers."""

import subprocess
import sys
import time

import numpy as np
import pytest

from gasgd_tf.client import ParameterClient, ServerUnavailableError
from gasgd_tf.server import SGD, ParameterServer, ParameterStore
from gasgd_tf.tensors import TensorSpec

SPECS = (TensorSpec("w", (100,)),)


def test_unreachable_server_fails_within_retry_budget():
    # Nothing listens on this port (we bind it and keep it closed).
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{s.getsockname()[1]}"
        with ParameterClient(address, "worker_0", timeout_secs=2, retry_secs=1.5) as client:
            start = time.monotonic()
            with pytest.raises(ServerUnavailableError, match=f"parameter server at {address}"):
                client.status()
            assert time.monotonic() - start < 1.5 + 2 + 1
            with pytest.raises(ServerUnavailableError, match="not reachable within 1s"):
                client.wait_for_server(1)


def test_server_killed_mid_run_gives_clear_error_within_deadline(tmp_path):
    # A real server process, killed with SIGKILL while a client is using it.
    port_file = tmp_path / "port"
    code = (
        "import sys, threading\n"
        "from gasgd_tf.server import SGD, ParameterServer, ParameterStore\n"
        "s = ParameterServer(ParameterStore(SGD()), '127.0.0.1:0').start()\n"
        f"open({str(port_file)!r}, 'w').write(str(s.port))\n"
        "threading.Event().wait()\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline = time.monotonic() + 30
        while not port_file.exists() or not port_file.read_text():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        address = f"127.0.0.1:{port_file.read_text()}"
        client = ParameterClient(address, "worker_0", timeout_secs=3, retry_secs=2)
        client.wait_for_server(10)
        client.register(SPECS)
        client.initialize(SPECS, np.zeros(100, np.float32))
        assert client.push(np.ones(100, np.float32), 0).version == 1
        proc.kill()
        proc.wait()
        start = time.monotonic()
        with pytest.raises(
            ServerUnavailableError, match=f"parameter server at {address} unreachable"
        ):
            while True:  # A worker's loop: push, fetch, push, ...
                client.push(np.ones(100, np.float32), 1)
                client.fetch()
        assert time.monotonic() - start < 2 + 3 + 1
    finally:
        proc.kill()
        proc.wait()


def test_restarted_client_continues_its_sequence(serve):
    server = serve(ParameterStore(SGD()))
    with ParameterClient(server.address, "worker_0") as first:
        first.register(SPECS)
        first.initialize(SPECS, np.zeros(100, np.float32))
        for _ in range(3):
            first.push(np.ones(100, np.float32), 0)
    # Same id, new process: its first push must not look like a retry of push 1.
    with ParameterClient(server.address, "worker_0") as second:
        assert second.register(SPECS).last_sequence == 3
        ack = second.push(np.ones(100, np.float32), 3)
        assert (ack.version, ack.duplicate) == (4, False)


def test_client_reconnects_after_server_restart_on_same_port():
    store = ParameterStore(SGD())
    server = ParameterServer(store, "127.0.0.1:0").start()
    port = server.port
    client = ParameterClient(server.address, "worker_0", timeout_secs=5, retry_secs=10)
    client.register(SPECS)
    client.initialize(SPECS, np.zeros(100, np.float32))
    server.stop(grace=None)
    restarted = ParameterServer(store, f"127.0.0.1:{port}").start()
    try:
        # Retries within retry_secs carry the call over the restart.
        assert client.status().version == 0
        assert client.push(np.ones(100, np.float32), 0).version == 1
    finally:
        client.close()
        restarted.stop(grace=None)


def test_two_processes_with_one_client_id_are_caught(serve):
    # Two workers started with the same --task_index: without this check the
    # server would drop every other push as a "retry", silently.
    from gasgd_tf.client import RequestRejectedError

    server = serve(ParameterStore(SGD()))
    first = ParameterClient(server.address, "worker_0")
    second = ParameterClient(server.address, "worker_0")
    first.register(SPECS)
    first.initialize(SPECS, np.zeros(100, np.float32))
    second.register(SPECS)
    assert first.push(np.ones(100, np.float32), 0).version == 1
    with pytest.raises(RequestRejectedError, match="another process uses the same client id"):
        second.push(np.ones(100, np.float32), 0)
    first.close()
    second.close()


# A stream's framing around its float payload: the header message (client
# id, tensor specs, versions) plus a few bytes of tags and lengths per chunk.
HEADER_BOUND = 256


def test_byte_counters_count_the_payload_streams(serve):
    server = serve(ParameterStore(SGD()))
    payload = 100 * 4  # SPECS in float32.
    with ParameterClient(server.address, "worker_0") as client:
        client.register(SPECS)
        assert (client.bytes_sent, client.bytes_received) == (0, 0)  # Register is not counted.
        client.initialize(SPECS, np.zeros(100, np.float32))
        assert payload < client.bytes_sent <= payload + HEADER_BOUND
        sent = client.bytes_sent
        client.push(np.ones(100, np.float32), 0)
        assert payload < client.bytes_sent - sent <= payload + HEADER_BOUND
        assert client.bytes_received == 0
        client.fetch()
        assert payload < client.bytes_received <= payload + HEADER_BOUND
        client.heartbeat()
        client.status()
        assert client.bytes_received <= payload + HEADER_BOUND  # Unary calls are not counted.


def test_byte_counters_count_what_travels_in_half_precision_and_in_chunks(serve):
    server = serve(ParameterStore(SGD()))
    specs = (TensorSpec("w", (10_000,)),)
    with ParameterClient(
        server.address, "worker_0", chunk_bytes=4096, push_dtype="bfloat16", fetch_dtype="float16"
    ) as client:
        client.register(specs)
        client.initialize(specs, np.zeros(10_000, np.float32))  # Always float32.
        assert 40_000 < client.bytes_sent <= 40_000 + HEADER_BOUND + 10 * 8
        sent = client.bytes_sent
        client.push(np.ones(10_000, np.float32), 0)
        assert 20_000 < client.bytes_sent - sent <= 20_000 + HEADER_BOUND + 5 * 8
        client.fetch()
        assert 20_000 < client.bytes_received <= 20_000 + HEADER_BOUND + 5 * 8


def test_a_sharded_clients_byte_counters_sum_its_shards(serve):
    from gasgd_tf.client import make_client

    servers = [serve(ParameterStore(SGD())) for _ in range(2)]
    specs = (TensorSpec("a", (1000,)), TensorSpec("b", (1000,)))
    address = ",".join(s.address for s in servers)
    with make_client(address, "worker_0", split_bytes=4096) as client:
        client.register(specs)
        client.initialize(specs, np.zeros(2000, np.float32))
        _, _, flat = client.fetch()
        client.push(np.ones(2000, np.float32), (0, 0))
        shards = client.clients
        assert all(c.bytes_sent > 0 and c.bytes_received > 0 for c in shards)
        assert client.bytes_sent == sum(c.bytes_sent for c in shards)
        assert client.bytes_received == sum(c.bytes_received for c in shards)
        assert 2 * 8000 < client.bytes_sent <= 2 * 8000 + 4 * HEADER_BOUND
        assert 8000 < client.bytes_received <= 8000 + 2 * HEADER_BOUND
