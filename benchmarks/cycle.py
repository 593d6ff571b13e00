"""B1: one Push + Fetch cycle through the real server, against the TCP loopback floor.

For P float32 parameters (90k, 7.7M and 60M by default), one client process
(this one) pushes a gradient and fetches the parameters from a server
process (``python -m gasgd_tf.main --role=ps``, SGD with momentum 0.9) on
127.0.0.1, as a worker at ``n_sync = 1`` does every step. The cycle time
includes everything a worker waits for: framing, gRPC, the server's checks
and optimizer update, its snapshot copy for the fetch, and the client's
reassembly into one float32 buffer.

The floor is what the bytes alone cost: ``2 x 4P`` bytes (a gradient up, the
parameters down) at the throughput of a plain TCP socket between two
processes on the same loopback, measured in the same run, interleaved with
the cycles (a child process ``recv_into``s 1 MiB at a time what this one
``sendall``s). The target is a cycle of at most 2.0x the floor for 7.7M and
60M parameters.

Also measured side by side: the same cycle with gradients and parameters in
bfloat16 (half the bytes), and with the server sharded over two processes.

Usage:
  python -m benchmarks.cycle [--quick]
"""

from __future__ import annotations

import multiprocessing
import socket
import time

import numpy as np

from benchmarks import common
from benchmarks.servers import ServerProcesses, bench_config
from gasgd_tf.allocator import tune_for_streams
from gasgd_tf.client import make_client
from gasgd_tf.tensors import TensorSpec

MIB = 1 << 20
SIZES = {"90k": 89_578, "7.7M": 7_700_020, "60M": 62_378_344}
TARGET = 2.0  # Cycle time / floor, for 7.7M and 60M.


def make_specs(size: int) -> tuple[TensorSpec, ...]:
    """A CNN-like signature of ``size`` elements: one big kernel, a mid one, small biases."""
    small = [("conv1/bias", 64), ("fc/bias", 1000), ("logits/bias", 10)]
    rest = size - sum(n for _, n in small)
    mid = rest // 5
    return (
        TensorSpec("conv1/kernel", (mid,)),
        *(TensorSpec(name, (n,)) for name, n in small),
        TensorSpec("fc/kernel", (rest - mid,)),
    )


# -- The TCP floor -------------------------------------------------------------


def _sink(port_queue: multiprocessing.Queue) -> None:
    """Child process: reads each connection into one array, 1 MiB per call, like a receiver must.

    The first 8 bytes of a connection give its length; the rest lands in a
    buffer of that size (kept between connections of the same size), so
    the bytes end where a receiver needs them, not in one cache-hot MiB.
    """
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port_queue.put(listener.getsockname()[1])
    buffer = bytearray(0)
    while True:
        conn, _ = listener.accept()
        with conn:
            header = conn.recv(8, socket.MSG_WAITALL)
            nbytes = int.from_bytes(header, "little")
            if len(buffer) != nbytes:
                buffer = bytearray(nbytes)
            view = memoryview(buffer)
            got = 0
            while got < nbytes:
                n = conn.recv_into(view[got : got + MIB])
                if not n:
                    break
                got += n
            conn.sendall(b"k")  # Tells the sender every byte arrived.


class TcpFloor:
    """Times sending an N-byte array over a fresh loopback TCP connection to another process.

    The sender sends from an array of N bytes and the receiver fills one,
    1 MiB per system call: the least any transport between two processes'
    buffers must do (about 3.5 GB/s on these machines with 1 MiB sends).
    """

    def __init__(self):
        context = multiprocessing.get_context("spawn")
        ports = context.Queue()
        self._process = context.Process(target=_sink, args=(ports,), daemon=True)
        self._process.start()
        self._port = ports.get(timeout=30)
        self._data = np.zeros(0, np.uint8)

    def seconds(self, nbytes: int) -> float:
        if self._data.size != nbytes:
            self._data = np.random.default_rng(0).integers(0, 255, nbytes, dtype=np.uint8)
        with socket.create_connection(("127.0.0.1", self._port)) as conn:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            view = memoryview(self._data)
            start = time.perf_counter()
            conn.sendall(nbytes.to_bytes(8, "little"))
            for offset in range(0, nbytes, MIB):
                conn.sendall(view[offset : offset + MIB])
            conn.recv(1)
            return time.perf_counter() - start

    def close(self) -> None:
        self._process.terminate()
        self._process.join()


# -- Cycles --------------------------------------------------------------------


def _cycles(address: str, specs, repeats: int, dtype: str, floor: TcpFloor, size: int) -> dict:
    """``repeats`` timed push+fetch cycles (after one warm-up), each followed by a floor sample."""
    client = make_client(
        address, "bench", timeout_secs=300, retry_secs=5, push_dtype=dtype, fetch_dtype=dtype
    )
    rng = np.random.default_rng(0)
    grad = (rng.standard_normal(size, dtype=np.float32) * 1e-4).astype(np.float32)
    push_s, fetch_s, cycle_s, floor_s = [], [], [], []
    try:
        client.wait_for_server(30)
        client.register(specs)
        client.initialize(specs, rng.standard_normal(size, dtype=np.float32))
        version, _, _ = client.fetch()
        for i in range(repeats + 1):
            t0 = time.perf_counter()
            client.push(grad, version)
            t1 = time.perf_counter()
            version, _, flat = client.fetch()
            t2 = time.perf_counter()
            del flat
            floor_sample = floor.seconds(2 * 4 * size)
            if i:  # The first is a warm-up.
                push_s.append(t1 - t0)
                fetch_s.append(t2 - t1)
                cycle_s.append(t2 - t0)
                floor_s.append(floor_sample)
    finally:
        client.close()
    cycle, lower = common.stats(cycle_s), common.stats(floor_s)
    return {
        "push_s": common.stats(push_s),
        "fetch_s": common.stats(fetch_s),
        "cycle_s": cycle,
        "floor_s": lower,
        "floor_gbps": 2 * 4 * size / lower["median"] / 1e9,
        "ratio": cycle["median"] / lower["median"],
    }


def run(quick: bool = False) -> dict:
    tune_for_streams()  # This process is the worker: tuned as gasgd_tf.main tunes one.
    names = ["90k", "7.7M"] if quick else list(SIZES)
    repeats = 3 if quick else 5
    variants = [("float32", 1), ("bfloat16", 1), ("float32", 2)]
    floor = TcpFloor()
    cells = []
    start = time.perf_counter()
    try:
        for name in names:
            size = SIZES[name]
            specs = make_specs(size)
            for dtype, shards in variants:
                config = bench_config(
                    **{"ps.num_shards": shards, "ps.momentum": 0.9, "ps.learning_rate": 1e-3}
                )
                with ServerProcesses(config) as servers:
                    result = _cycles(servers.address, specs, repeats, dtype, floor, size)
                cell = {"size": name, "parameters": size, "dtype": dtype, "shards": shards}
                cells.append({**cell, **result})
                print(
                    f"{name} params, {dtype}, {shards} shard(s): cycle "
                    f"{result['cycle_s']['median'] * 1e3:.1f} ms, floor "
                    f"{result['floor_s']['median'] * 1e3:.1f} ms "
                    f"({result['floor_gbps']:.2f} GB/s), ratio {result['ratio']:.2f}",
                    flush=True,
                )
    finally:
        floor.close()
    return {
        "machine": common.machine_info(),
        "command": "python -m benchmarks.cycle" + (" --quick" if quick else ""),
        "repeats": repeats,
        "warmup": 1,
        "seconds": time.perf_counter() - start,
        "cells": cells,
    }


def markdown(report: dict) -> str:
    lines = [
        f"Command: `{report['command']}`; {report['repeats']} timed cycles per row after one "
        "warm-up; median [min-max]. The floor is 2 x 4P bytes through a plain TCP socket "
        "between two processes, timed after every cycle.",
        "",
        "| parameters | dtype | shards | push ms | fetch ms | cycle ms | TCP floor ms "
        "| floor GB/s | cycle / floor | target |",
        "|---|---|---:|---|---|---|---|---:|---:|---|",
    ]
    for c in report["cells"]:
        target = "-"
        if c["size"] != "90k" and c["dtype"] == "float32" and c["shards"] == 1:
            target = f"<= {TARGET}: " + common.verdict(c["ratio"], TARGET, higher_is_better=False)
        lines.append(
            f"| {c['size']} | {c['dtype']} | {c['shards']} "
            f"| {common.fmt(c['push_s'], 1e3)} | {common.fmt(c['fetch_s'], 1e3)} "
            f"| {common.fmt(c['cycle_s'], 1e3)} | {common.fmt(c['floor_s'], 1e3)} "
            f"| {c['floor_gbps']:.2f} | {c['ratio']:.2f} | {target} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """``python -m benchmarks.cycle [--quick] [--out=PATH]``."""
    common.main(
        "cycle", run, doc=__doc__, markdown=markdown, quick="90k and 7.7M only, 3 cycles", argv=argv
    )


if __name__ == "__main__":
    main()
