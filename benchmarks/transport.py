"""Transport benchmark: Fetch and Push through the parameter service on loopback.

For each parameter size and chunk size, times ``ParameterClient.fetch()`` and
``ParameterClient.push()`` (push + the server's SGD apply) against one
in-process ``ParameterServer``, and, side by side in the same process, a raw
gRPC stream of the same bytes in chunks of the same size through a trivial
generic handler (raw bytes, no protobuf): the ceiling of gRPC itself on this
machine. The server's work alone (``store.push`` on a numpy array: checks +
SGD update, and the snapshot copy a Fetch makes after each update) is timed
per size, so the transport share is visible.

Measured, never asserted. Usage:

  .venv/bin/python -m benchmarks.transport [--sizes_mib=1,64,256] \
      [--chunks_kib=256,1024,2048,4032] [--repeats=5] \
      [--out=benchmarks/results/transport.json]
"""

from __future__ import annotations

import datetime
import logging
import os
import platform
import statistics
import struct
import sys
import time
from collections.abc import Callable
from concurrent import futures

import grpc
import numpy as np

from benchmarks import common
from gasgd_tf import wire
from gasgd_tf.client import ParameterClient
from gasgd_tf.server import SGD, ParameterServer, ParameterStore
from gasgd_tf.server.server import SERVER_OPTIONS
from gasgd_tf.tensors import TensorSpec

MIB = 1 << 20
KIB = 1 << 10
# Small tensors next to the big one, like biases and norms: (name, elements).
SMALL_TENSORS = (("dense/bias", 1000), ("norm/gamma", 4096), ("norm/beta", 4096), ("head", 10))
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", wire.GRPC_MESSAGE_LIMIT),
    ("grpc.max_send_message_length", wire.GRPC_MESSAGE_LIMIT),
]


def make_specs(nbytes: int) -> tuple[TensorSpec, ...]:
    """One big tensor plus a few small ones, ``nbytes`` of float32 in all."""
    total = nbytes // 4
    small = [TensorSpec(name, (n,)) for name, n in SMALL_TENSORS]
    big = total - sum(s.size for s in small)
    if big <= 0:
        raise ValueError(f"{nbytes} bytes is too small for the benchmark layout")
    return (TensorSpec("dense/kernel", (big,)), *small)


# -- Raw gRPC ceiling --------------------------------------------------------

_UPLOAD = "/bench.Raw/Upload"
_DOWNLOAD = "/bench.Raw/Download"


class RawServer:
    """A generic-handler gRPC server that counts uploaded bytes and streams downloads.

    Requests and responses are raw bytes (no serializers), so this is gRPC's
    own cost with no protobuf and no copying into a numpy buffer.
    """

    def __init__(self):
        self._chunks: dict[int, bytes] = {}
        self._server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=4), options=SERVER_OPTIONS
        )
        handler = grpc.method_handlers_generic_handler(
            "bench.Raw",
            {
                "Upload": grpc.stream_unary_rpc_method_handler(self._upload),
                "Download": grpc.unary_stream_rpc_method_handler(self._download),
            },
        )
        self._server.add_generic_rpc_handlers((handler,))
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        self._server.start()

    def _upload(self, request_iterator, context):
        count = 0
        for chunk in request_iterator:
            count += len(chunk)
        return struct.pack("<q", count)

    def _download(self, request, context):
        total, chunk_bytes = struct.unpack("<qq", request)
        chunk = self._chunks.get(chunk_bytes)
        if chunk is None:
            chunk = self._chunks[chunk_bytes] = bytes(chunk_bytes)
        sent = 0
        while sent < total:
            n = min(chunk_bytes, total - sent)
            yield chunk if n == chunk_bytes else chunk[:n]
            sent += n

    def stop(self) -> None:
        self._server.stop(None).wait()


class RawClient:
    def __init__(self, port: int):
        self._channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=CHANNEL_OPTIONS)
        self._upload = self._channel.stream_unary(_UPLOAD)
        self._download = self._channel.unary_stream(_DOWNLOAD)

    def upload(self, total: int, chunk_bytes: int) -> None:
        chunk = bytes(chunk_bytes)
        full, rest = divmod(total, chunk_bytes)
        pieces = [chunk] * full + ([chunk[:rest]] if rest else [])
        count = struct.unpack("<q", self._upload(iter(pieces), timeout=120))[0]
        assert count == total, (count, total)

    def download(self, total: int, chunk_bytes: int) -> None:
        count = 0
        for chunk in self._download(struct.pack("<qq", total, chunk_bytes), timeout=120):
            count += len(chunk)
        assert count == total, (count, total)

    def close(self) -> None:
        self._channel.close()


# -- Timing ------------------------------------------------------------------


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def summarize(seconds: list[float], nbytes: int) -> dict:
    med = statistics.median(seconds)
    return {
        "seconds": seconds,
        "median_s": med,
        "min_s": min(seconds),
        "max_s": max(seconds),
        "median_gbps": nbytes / med / 1e9,
        "min_gbps": nbytes / max(seconds) / 1e9,
        "max_gbps": nbytes / min(seconds) / 1e9,
    }


def _time_cell(
    store: ParameterStore,
    specs: tuple[TensorSpec, ...],
    grad: np.ndarray,
    chunk_bytes: int,
    repeats: int,
    raw: RawClient,
) -> tuple[list[float], list[float], list[float], list[float]]:
    """Seconds of fetch, push+apply, raw upload and raw download, ``repeats`` each."""
    nbytes = grad.nbytes
    server = ParameterServer(store, "127.0.0.1:0", fetch_chunk_bytes=chunk_bytes).start()
    client = ParameterClient(
        server.address, "bench", timeout_secs=120, retry_secs=5, chunk_bytes=chunk_bytes
    )
    fetch_s, push_s, up_s, down_s = [], [], [], []
    try:
        client.wait_for_server(10)
        client.register(specs)
        assert client.chunk_bytes == chunk_bytes, (client.chunk_bytes, chunk_bytes)
        for i in range(repeats + 1):  # The first is a warm-up.
            t0 = time.perf_counter()
            version, _, flat = client.fetch()
            t1 = time.perf_counter()
            client.push(grad, version)
            t2 = time.perf_counter()
            raw.upload(nbytes, chunk_bytes)
            t3 = time.perf_counter()
            raw.download(nbytes, chunk_bytes)
            t4 = time.perf_counter()
            assert flat.nbytes == nbytes
            if i:
                fetch_s.append(t1 - t0)
                push_s.append(t2 - t1)
                up_s.append(t3 - t2)
                down_s.append(t4 - t3)
    finally:
        client.close()
        server.stop(grace=None)
    return fetch_s, push_s, up_s, down_s


def bench_size(nbytes: int, chunks: list[int], repeats: int, raw: RawClient) -> dict:
    specs = make_specs(nbytes)
    rng = np.random.default_rng(0)
    size = nbytes // 4
    init = rng.standard_normal(size, dtype=np.float32)
    grad = (rng.standard_normal(size, dtype=np.float32) * 1e-3).astype(np.float32)
    store = ParameterStore(SGD(learning_rate=1e-3))
    accepted, _ = store.initialize("bench_init", specs, init)
    assert accepted

    # Server work alone: store.push (checks, SGD update, finiteness check of the
    # parameters) and the snapshot copy a Fetch makes after each new version.
    apply_s, snapshot_s = [], []
    for sequence in range(1, repeats + 2):
        t_apply = timed(lambda s=sequence: store.push("bench_direct", s, store.version, grad))
        t_snap = timed(store.snapshot)
        if sequence > 1:  # The first is a warm-up.
            apply_s.append(t_apply)
            snapshot_s.append(t_snap)

    cells = []
    for chunk_bytes in chunks:
        fetch_s, push_s, up_s, down_s = _time_cell(store, specs, grad, chunk_bytes, repeats, raw)
        cell = {
            "size_bytes": nbytes,
            "chunk_bytes": chunk_bytes,
            "fetch": summarize(fetch_s, nbytes),
            "push_apply": summarize(push_s, nbytes),
            "raw_upload": summarize(up_s, nbytes),
            "raw_download": summarize(down_s, nbytes),
        }
        cell["fetch_vs_raw_download"] = (
            cell["fetch"]["median_gbps"] / cell["raw_download"]["median_gbps"]
        )
        cell["push_vs_raw_upload"] = (
            cell["push_apply"]["median_gbps"] / cell["raw_upload"]["median_gbps"]
        )
        cells.append(cell)
        print(
            f"  {nbytes // MIB} MiB, chunk {chunk_bytes // KIB} KiB: "
            f"fetch {cell['fetch']['median_gbps']:.2f} GB/s, "
            f"push+apply {cell['push_apply']['median_gbps']:.2f} GB/s, "
            f"raw up {cell['raw_upload']['median_gbps']:.2f} / "
            f"down {cell['raw_download']['median_gbps']:.2f} GB/s",
            flush=True,
        )
    return {
        "size_bytes": nbytes,
        "tensors": [[s.name, list(s.shape)] for s in specs],
        "server_apply": summarize(apply_s, nbytes),
        "server_snapshot": summarize(snapshot_s, nbytes),
        "cells": cells,
    }


# -- Report ------------------------------------------------------------------


def _s(stats: dict) -> str:
    """Milliseconds: median [min-max]."""
    return f"{stats['median_s'] * 1e3:.3g} [{stats['min_s'] * 1e3:.3g}-{stats['max_s'] * 1e3:.3g}]"


def _g(stats: dict) -> str:
    return f"{stats['median_gbps']:.2f} [{stats['min_gbps']:.2f}-{stats['max_gbps']:.2f}]"


def markdown(report: dict) -> str:
    """The report's two tables: fetch and push per (size, chunk); the server's own work per size."""
    results = report["sizes"]
    lines = [
        "| size MiB | chunk KiB | fetch ms | fetch GB/s | push+apply ms | push+apply GB/s "
        "| raw down GB/s | raw up GB/s | fetch / raw down | push / raw up |",
        "|---:|---:|---|---|---|---|---|---|---:|---:|",
    ]
    for size in results:
        for c in size["cells"]:
            lines.append(
                f"| {c['size_bytes'] // MIB} | {c['chunk_bytes'] // KIB} "
                f"| {_s(c['fetch'])} | {_g(c['fetch'])} "
                f"| {_s(c['push_apply'])} | {_g(c['push_apply'])} "
                f"| {_g(c['raw_download'])} | {_g(c['raw_upload'])} "
                f"| {c['fetch_vs_raw_download']:.2f} | {c['push_vs_raw_upload']:.2f} |"
            )
    lines += [
        "",
        "| size MiB | server apply ms (store.push) | apply GB/s | snapshot copy ms | "
        "apply share of push+apply (best chunk) |",
        "|---:|---|---|---|---:|",
    ]
    for size in results:
        best = min(c["push_apply"]["median_s"] for c in size["cells"])
        share = size["server_apply"]["median_s"] / best
        lines.append(
            f"| {size['size_bytes'] // MIB} | {_s(size['server_apply'])} "
            f"| {_g(size['server_apply'])} | {_s(size['server_snapshot'])} | {share:.0%} |"
        )
    return "\n".join(lines)


def machine_info() -> dict:
    import google.protobuf

    return {
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": sys.version.split()[0],
        "grpcio": grpc.__version__,
        "protobuf": google.protobuf.__version__,
        "numpy": np.__version__,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "network": "loopback (127.0.0.1), client and server in one process",
    }


def run(sizes_mib: list[float], chunks_kib: list[int], repeats: int) -> dict:
    """Measures every (size, chunk) cell and the server's own work per size; returns the report."""
    logging.getLogger("gasgd_tf").setLevel(logging.WARNING)  # No "listening on" per cell.
    sizes = [int(s * MIB) for s in sizes_mib]
    chunks = [c * KIB for c in chunks_kib]
    start = time.perf_counter()
    raw_server = RawServer()
    raw = RawClient(raw_server.port)
    results = []
    try:
        for nbytes in sizes:
            print(f"{nbytes / MIB:g} MiB of float32 parameters", flush=True)
            results.append(bench_size(nbytes, chunks, repeats, raw))
    finally:
        raw.close()
        raw_server.stop()
    report = {
        "machine": machine_info(),
        "command": " ".join([".venv/bin/python -m benchmarks.transport", *sys.argv[1:]]),
        "repeats": repeats,
        "warmup": 1,
        "default_chunk_bytes": wire.DEFAULT_CHUNK_BYTES,
        "total_seconds": time.perf_counter() - start,
        "sizes": results,
    }
    report["markdown"] = markdown(report)
    return report


def _chunk_kib(text: str) -> int:
    kib = int(text)
    if not 0 < kib * KIB <= wire.MAX_CHUNK_BYTES:
        raise ValueError(f"chunks are 1 to {wire.MAX_CHUNK_BYTES // KIB} KiB")
    return kib


def _flags(parser) -> None:
    parser.add_argument(
        "--sizes_mib",
        type=common.comma_list(float),
        default=[1.0, 64.0, 256.0],
        metavar="1,64,256",
        help="parameter sizes in MiB",
    )
    parser.add_argument(
        "--chunks_kib",
        type=common.comma_list(_chunk_kib),
        default=[256, 1024, 2048, 4032],
        metavar="256,1024,2048,4032",
        help=f"chunk sizes in KiB (at most {wire.MAX_CHUNK_BYTES // KIB})",
    )
    parser.add_argument(
        "--repeats", type=int, default=5, help="timed repeats per cell, after one warm-up"
    )


def main(argv: list[str] | None = None) -> None:
    """``python -m benchmarks.transport [--sizes_mib=...] [--chunks_kib=...] [--repeats=N]``."""
    common.main("transport", run, doc=__doc__, markdown=markdown, flags=_flags, argv=argv)


if __name__ == "__main__":
    main()
