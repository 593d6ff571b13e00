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
