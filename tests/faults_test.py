"""Faults of the network and of peers, injected for real: a client process killed mid-push."""

import subprocess
import sys
import textwrap
import threading
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
    header_arrived = threading.Event()  # The server has the push's header: it takes the slot.
    check_header = store.layout_for

    def layout_for(specs, **kwargs):
        layout = check_header(specs, **kwargs)
        header_arrived.set()
        return layout

    store.layout_for = layout_for
    doomed = subprocess.Popen(
        [sys.executable, "-c", HALF_A_PUSH, server.address], stdout=subprocess.PIPE, text=True
    )
    try:
        assert doomed.stdout.readline().strip() == "sent"
        # The server is reading its stream, holding the only push slot.
        assert header_arrived.wait(timeout=30), "the half push never reached the server"
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
    # The slot the dead push held is free again: the next push goes through.
    # With the only slot leaked it could not: the server would refuse it as
    # busy at its deadline, and the client would give up within retry_secs.
    with ParameterClient(server.address, "worker_0", timeout_secs=5, retry_secs=1) as client:
        client.register(SPECS)
        ack = client.push(np.ones(SIZE, np.float32), 0)
    assert (ack.version, ack.staleness, ack.duplicate) == (1, 0, False)
    assert store.status().updates_applied == 1
    np.testing.assert_array_equal(store.snapshot().flat, init - 1.0)
