"""Benchmark B5, server capacity: updates/s with simulated clients, and peak server memory.

**Updates/s.** Real server processes (``benchmarks.servers.ServerProcesses``:
one ``python -m gasgd_tf.main --role=ps`` per shard, SGD with momentum 0.9,
so one optimizer slot) serve a 30 MB parameter set laid out like a CNN
(``GRID_SPECS``: a 6M-element dense kernel, a 1.4M-element conv kernel and
small tensors; 7,497,908 float32). Simulated clients are separate processes
(``python -m benchmarks.server_capacity --client ...``: numpy and grpc, no
TensorFlow, no model compute) that loop ``fetch()``, then ``push()`` of a
constant gradient (1e-6 everywhere) with the fetched version as its base,
through ``gasgd_tf.client.make_client`` (a ``ShardedClient`` over 2 shards).
The benchmark process initializes the parameters, starts the clients, waits
until every one has connected and done one fetch and push, then sends all
of them the same window on the system-wide monotonic clock: after a
warm-up, each client counts the pushes that complete inside the window.
updates/s = all clients' pushes in the window / its length. The servers'
own count (``updates_applied`` read at both ends of the window, the
smallest over shards) is recorded next to it as a cross-check.

Grid: clients in (1, 4, 16) x shards in (1, 2); each repeat runs every cell
once, in interleaved order, so drift of the machine's load hits all cells
alike; a row is median [min-max] over repeats and the 2-shard / 1-shard
ratio is a ratio of medians. Target (the issue): two shards at least 1.6x
one shard's updates/s.

**Where the CPU goes.** Over each window: CPU seconds (utime + stime from
``/proc/<pid>/stat``) of each server shard, of all clients together and of
this process, and the machine's busy and idle time from ``/proc/stat``;
whatever is busy and not ours is "others" (other programs on the machine).
Server CPU is also split by thread name (``event_engine``: gRPC's C-core
I/O threads; ``main.py``: the main thread's name, inherited by every Python
thread it starts: the RPC handlers running our Python and numpy code).
Clients and servers share the machine's cores, so the table says whether
the cores were saturated or a server process was the limit. Where ``perf``
is installed, one extra cell of each shard count with 16 clients (one in
``--quick``) runs under a machine-wide ``perf record -a`` (CPU-clock
samples, user and kernel) for a profile: the servers' and the clients'
samples by category (memcpy, kernel socket copies, numpy arithmetic,
finiteness checks, the interpreter, gRPC core), by thread, and the
servers' top functions.

**Peak memory.** One shard holding AlexNet's 60,965,224 float32 parameters
(``MEMORY_SPECS``, 243.9 MB), SGD with momentum 0.9. The server's idle
resident memory (VmRSS: Python, grpc, numpy, tensorboard protos) is read
before initialization; then this process, as the only client, initializes
and runs ``MEMORY_CYCLES`` fetch + push cycles, reading the server's VmRSS
before and after each call and its peak (VmHWM) over each call, resetting
the peak before each one (``/proc/<pid>/clear_refs``); the overall peak is
the largest of these (VmHWM is a running maximum, so resets do not hide
it). Then a fresh server with 4 concurrent client processes, each doing
``MEMORY_CYCLES_CONCURRENT`` cycles, shows how concurrent pushes and
fetches add receive buffers and snapshots (VmHWM, no resets). Also (not
in ``--quick``) 1 client with bfloat16 push and fetch (``client.push_dtype``,
``client.fetch_dtype``). Target: peak at most (1 + optimizer slots) x
parameter bytes + 256 MiB.

``--quick``: 1 and 16 clients, one repeat, 1 s warm-up and 3 s windows, one
profile cell, fewer memory cycles, no bfloat16 case.

The parts, by what they measure: ``updates`` (updates/s and where the CPU
goes), ``cpu_profile`` (the perf profile), ``memory`` (peak memory); and
what they share: ``clients`` (the simulated client processes), ``procfs``
(/proc readings), ``models`` (the parameter sets and server settings).

Measured, never asserted. Usage:

  .venv/bin/python -m benchmarks.server_capacity [--quick] [--out=PATH]

writes ``benchmarks/results/server_capacity.json`` and prints the tables.
"""

from __future__ import annotations

import argparse
import json
import time

from benchmarks import common
from benchmarks.server_capacity import clients, cpu_profile, memory, models, updates

__all__ = ["main", "markdown", "run"]


def _profile_cells(quick: bool, warmup_s: float, window_s: float) -> list[dict]:
    """One updates/s cell of each shard count (one in ``--quick``) under perf; none without it."""
    cells = []
    if not cpu_profile.available():
        return cells
    for shards in updates.SHARD_COUNTS[:1] if quick else updates.SHARD_COUNTS:
        clients_n = cpu_profile.PROFILE_CLIENTS
        cell = updates.grid_cell(clients_n, shards, warmup_s, window_s, profile=True)
        print(
            f"profile cell, clients {clients_n} shards {shards}: "
            f"{cell['updates_per_s']:.1f} updates/s under perf",
            flush=True,
        )
        cells.append(cell)
    return cells


def run(quick: bool = False) -> dict:
    """Measures the updates/s grid, the profile cells and peak memory; returns the report."""
    start = time.perf_counter()
    client_counts = updates.QUICK_CLIENT_COUNTS if quick else updates.CLIENT_COUNTS
    repeats = updates.QUICK_REPEATS if quick else updates.REPEATS
    warmup_s = updates.QUICK_WARMUP_S if quick else updates.WARMUP_S
    window_s = updates.QUICK_WINDOW_S if quick else updates.WINDOW_S
    cells = updates.measure(client_counts, repeats, warmup_s, window_s)
    profiles = _profile_cells(quick, warmup_s, window_s)
    mem = memory.measure(quick)
    return {
        "machine": common.machine_info(),
        "command": "python -m benchmarks.server_capacity" + (" --quick" if quick else ""),
        "total_s": time.perf_counter() - start,
        "setup": {
            "grid_params": models.num_params("grid"),
            "grid_tensors": [[name, list(shape)] for name, shape in models.GRID_SPECS],
            "optimizer": "sgd, momentum 0.9 (1 slot)",
            "gradient": f"constant {models.GRADIENT_VALUE}",
            "client_counts": list(client_counts),
            "shard_counts": list(updates.SHARD_COUNTS),
            "repeats": repeats,
            "warmup_s": warmup_s,
            "window_s": window_s,
        },
        "target": {
            "speedup": updates.SPEEDUP_TARGET,
            "memory": "(1 + slots) x parameter bytes + 256 MiB",
        },
        "cells": cells,
        "rows": updates.summarize(cells, client_counts),
        "profiles": profiles,
        "memory": mem,
    }


def markdown(report: dict) -> str:
    """The report's section of BENCHMARKS.md: throughput, CPU, profile, memory, verdicts."""
    m = report["machine"]
    lines = [
        f"`{report['command']}` on {m.get('cpu_model', m['processor'])} "
        f"({m['cpu_count']} cores), Python {m['python']}, grpcio {m['grpcio']}, numpy "
        f"{m['numpy']}, {m['date']}. **The server shards and all simulated clients share "
        f"these {m['cpu_count']} cores** (and whatever else runs on the machine): nothing is "
        "pinned.",
    ]
    lines += updates.markdown(report)
    lines += cpu_profile.markdown(report["profiles"])
    lines += memory.markdown(report)
    missed = updates.misses(report) + memory.misses(report)
    if missed:
        lines += ["", "### Missed targets", "", *missed]
    return "\n".join(lines) + "\n"


def _client_or_run(quick: bool, client: str | None) -> dict | None:
    if client is None:
        return run(quick=quick)
    clients.client_main(json.loads(client))
    return None


def _flags(parser: argparse.ArgumentParser) -> None:
    # One simulated client in this process, started by ``clients.Clients``; internal.
    parser.add_argument("--client", metavar="JSON", help=argparse.SUPPRESS)


def main(argv: list[str] | None = None) -> None:
    """``python -m benchmarks.server_capacity [--quick] [--out=PATH]``."""
    common.main(
        "server_capacity",
        _client_or_run,
        doc=__doc__,
        markdown=markdown,
        quick="1 and 16 clients, 1 repeat, shorter windows, fewer memory cycles",
        flags=_flags,
        argv=argv,
    )
