"""A client in another language: examples/node_client (Node.js, @grpc/grpc-js, protos/ only).

Skipped when node or npm is missing, or when ``npm ci`` cannot install the
example's pinned dependencies (no registry). The install runs once, and again
only when package-lock.json is newer than the installed tree.
"""

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import tempfile

import numpy as np
import pytest
from conftest import REPO_ROOT

from gasgd_tf.client import ParameterClient
from gasgd_tf.security import Credentials
from gasgd_tf.server import SGD, ParameterStore
from gasgd_tf.tensors import TensorSpec

NODE_DIR = REPO_ROOT / "examples" / "node_client"
# 300,016 float32s (1.2 MB): Fetch and Push both take more than one 1 MiB chunk.
SPECS = (
    TensorSpec("dense/kernel", (3, 4)),
    TensorSpec("dense/bias", (4,)),
    TensorSpec("embedding", (1000, 300)),
)
SIZE = 12 + 4 + 300_000
GRADIENT = np.float32(0.5)  # What client.js pushes in every element.


def _install_dependencies(npm: str) -> None:
    """``npm ci`` into examples/node_client unless node_modules is current."""
    installed = NODE_DIR / "node_modules" / ".package-lock.json"  # Written by npm install/ci.
    lock = NODE_DIR / "package-lock.json"
    # One install at a time, should two test runs share this checkout.
    tag = hashlib.sha256(str(NODE_DIR).encode()).hexdigest()[:12]
    lock_path = os.path.join(tempfile.gettempdir(), f"gasgd_tf-npm-{tag}.lock")
    with open(lock_path, "w") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        if installed.exists() and installed.stat().st_mtime >= lock.stat().st_mtime:
            return
        try:
            result = subprocess.run(
                [npm, "ci", "--no-audit", "--no-fund"],
                cwd=NODE_DIR,
                capture_output=True,
                text=True,
                timeout=300,
            )
        except subprocess.TimeoutExpired:
            pytest.skip("npm ci took over 300 s (no npm registry?)")
        if result.returncode != 0:
            output = (result.stdout + result.stderr).strip()
            # package.json and package-lock.json out of sync is a bug here, not an offline machine.
            assert "EUSAGE" not in output, output
            pytest.skip(f"npm ci failed (no npm registry?): {output[-500:]}")


@pytest.fixture(scope="module")
def node():
    """The node executable, with the example's dependencies installed."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        pytest.skip("the Node.js toolchain (node and npm) is not installed")
    _install_dependencies(npm)
    return node


def _run_client(node, address, client_id, token=None):
    env = {k: v for k, v in os.environ.items() if k != "GASGD_TF_TOKEN"}
    if token is not None:
        env["GASGD_TF_TOKEN"] = token
    return subprocess.run(
        [node, "client.js", address, client_id],
        cwd=NODE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _store(initial):
    store = ParameterStore(SGD(learning_rate=1.0))
    store.initialize("init", SPECS, initial.copy())  # The store takes ownership.
    return store


def _client_record(address, client_id, credentials=None):
    with ParameterClient(address, "monitor", credentials=credentials) as client:
        status = client.status()
    (record,) = [c for c in status.clients if c.client_id == client_id]
    return record


def test_node_client_registers_fetches_pushes_and_leaves(node, serve):
    initial = np.linspace(-1.0, 1.0, SIZE, dtype=np.float32)
    store = _store(initial)
    server = serve(store)
    version = store.version

    result = _run_client(node, server.address, "node_0")
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout.strip().splitlines()[-1])

    # The server applied exactly one update: initial - learning_rate * 0.5, bit for bit.
    expected = initial - np.float32(1.0) * GRADIENT
    assert store.version == version + 1
    np.testing.assert_array_equal(store.snapshot().flat, expected)

    # What the client saw agrees with the server.
    assert (seen["version_before"], seen["version_after"]) == (version, version + 1)
    assert seen["push"] == {"version": version + 1, "staleness": 0, "duplicate": False}
    assert seen["num_parameters"] == SIZE == seen["status"]["num_parameters"]
    assert seen["tensors"] == [{"name": s.name, "shape": list(s.shape)} for s in SPECS]
    assert seen["optimizer"] == "sgd" and seen["server_id"] == store.server_id
    np.testing.assert_array_equal(np.float32(seen["first_values_before"]), initial[:5])
    np.testing.assert_array_equal(np.float32(seen["first_values_after"]), expected[:5])
    assert seen["version_at_leave"] == version + 1

    # The server's Status lists the Node client as gone, after one push.
    record = _client_record(server.address, "node_0")
    assert not record.active
    assert (record.pushes, record.fetches, record.last_sequence) == (1, 2, 1)

    # Run again under the same id: Register's last_sequence continues the sequence
    # (a repeated sequence would be answered as a duplicate and change nothing).
    result = _run_client(node, server.address, "node_0")
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen["push"] == {"version": version + 2, "staleness": 0, "duplicate": False}
    np.testing.assert_array_equal(store.snapshot().flat, expected - GRADIENT)
    assert _client_record(server.address, "node_0").last_sequence == 2


def test_node_client_sends_the_bearer_token(node, serve):
    store = _store(np.zeros(SIZE, np.float32))
    server = serve(store, credentials=Credentials(token="s3cret"))

    for token in (None, "wrong"):
        result = _run_client(node, server.address, "node_1", token=token)
        assert result.returncode != 0
        assert "UNAUTHENTICATED" in result.stderr, result.stderr
        assert result.stdout == ""
    assert store.version == 0

    result = _run_client(node, server.address, "node_1", token="s3cret")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["version_after"] == 1
    assert store.version == 1
    np.testing.assert_array_equal(store.snapshot().flat, np.full(SIZE, -GRADIENT))
    assert not _client_record(server.address, "node_1", Credentials(token="s3cret")).active
