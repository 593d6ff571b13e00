"""Faults of the network and of peers, injected for real: a client process killed mid-push."""

import subprocess
import sys
import textwrap
import time

import numpy as np

from gasgd_tf.client import ParameterClient
from gasgd_tf.server import SGD, ParameterStore
from gasgd_tf.tensors import TensorSpec

SPECS = (TensorSpec("w", (256, 256)), TensorSpec("b", (256,)))
SIZE = 256 * 256 + 256

# Sends a push header and the first chunk of a 4-chunk gradient, says so, then
# stalls: the test kills it with SIGKILL, so the kernel drops its TCP connection.
HALF_A_PUSH = textwrap.dedent("""
    import sys, time
    import grpc, numpy as np
    from gasgd_tf import wire
    from gasgd_tf.proto import parameter_service_pb2 as pb
    from gasgd_tf.tensors import TensorSpec
    specs = (TensorSpec("w", (256, 256)), TensorSpec("b", (256,)))
    grad = np.ones(256 * 256 + 256, np.float32)
    header = pb.PushHeader(client_id="doomed", sequence=1, base_version=0,
                           tensors=wire.specs_to_proto(specs))
    frames = list(wire.encode_frames(pb.PushRequest, header, grad, 65536))
    def stream():
        yield from frames[:2]
        print("sent", flush=True)
        time.sleep(60)
    channel = grpc.insecure_channel(sys.argv[1])
    channel.stream_unary("/" + wire.SERVICE_NAME + "/Push")(stream(), timeout=60)
""")


def test_a_client_killed_mid_push_applies_nothing_and_frees_its_slot(serve):
    store = ParameterStore(SGD(learning_rate=1.0))
    init = np.zeros(SIZE, np.float32)
    store.initialize("init", SPECS, init.copy())
    server = serve(store, max_concurrent_pushes=1)
    doomed = subprocess.Popen(
        [sys.executable, "-c", HALF_A_PUSH, server.address], stdout=subprocess.PIPE, text=True
    )
    try:
        assert doomed.stdout.readline().strip() == "sent"
        time.sleep(0.3)  # The server is reading its stream, holding the only push slot.
        doomed.kill()  # kill -9: no goodbye, the connection just ends.
        doomed.wait()
        deadline = time.monotonic() + 10
        while store.status().pushes_rejected < 1:
            assert time.monotonic() < deadline, "the server never noticed the dead stream"
            time.sleep(0.05)
    finally:
        doomed.kill()
    assert store.version == 0
    np.testing.assert_array_equal(store.snapshot().flat, init)
    # The slot the dead push held is free again: the next push goes through at once.
    with ParameterClient(server.address, "worker_0", timeout_secs=5, retry_secs=1) as client:
        client.register(SPECS)
        start = time.monotonic()
        ack = client.push(np.ones(SIZE, np.float32), 0)
        assert ack.version == 1 and time.monotonic() - start < 2
