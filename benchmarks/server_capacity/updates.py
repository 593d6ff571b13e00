"""B5's updates/s: simulated clients against 1 or 2 server shards, and where the CPU goes.

Real server processes (``benchmarks.servers.ServerProcesses``, SGD with
momentum 0.9) serve the 30 MB ``GRID_SPECS`` parameter set; ``clients``
simulated client processes loop fetch + push. Each client counts the pushes
that complete inside one window (the same for all, after a warm-up);
updates/s = their sum / the window's length, with the servers' own count
(``updates_applied``, the smallest shard's) next to it as a cross-check.
Over the window, the CPU seconds of every server shard (also by thread
name), of the clients, of this process and of the machine say whether the
cores were saturated or a server process was the limit.

Grid: clients in ``CLIENT_COUNTS`` x shards in ``SHARD_COUNTS``, each repeat
running every cell once in interleaved order; a row is median [min-max]
over repeats, and the 2-shard / 1-shard ratio is a ratio of medians.
Target: two shards at least ``SPEEDUP_TARGET`` x one shard's updates/s.
"""

from __future__ import annotations

import collections
import os
import statistics
import subprocess
import tempfile
import time
from collections.abc import Sequence

from benchmarks.common import fmt, stats, verdict
from benchmarks.server_capacity import cpu_profile, models, procfs
from benchmarks.server_capacity.clients import Clients

CLIENT_COUNTS = (1, 4, 16)
SHARD_COUNTS = (1, 2)
REPEATS = 2
WARMUP_S = 1.5
WINDOW_S = 6.0
QUICK_CLIENT_COUNTS = (1, 16)
QUICK_REPEATS = 1
QUICK_WARMUP_S = 1.0
QUICK_WINDOW_S = 3.0
SPEEDUP_TARGET = 1.6  # Two shards' updates/s >= 1.6x one shard's.


def _sample(server_pids: Sequence[int], client_pids: Sequence[int], init_client) -> dict:
    """CPU counters of every process involved, the machine's, and the servers' update counts."""
    from gasgd_tf.client import ShardedClient

    if isinstance(init_client, ShardedClient):
        updates = [s.updates_applied for s in init_client.status_all()]
    else:
        updates = [init_client.status().updates_applied]
    busy, total = procfs.machine_cpu_s()
    return {
        "t": time.monotonic(),
        "servers": [procfs.cpu_s(p) for p in server_pids],
        "server_threads": [procfs.threads_cpu_s(p) for p in server_pids],
        "clients": sum(procfs.cpu_s(p) for p in client_pids),
        "self": procfs.cpu_s(os.getpid()),
        "machine_busy": busy,
        "machine_total": total,
        "updates": updates,
    }


def _thread_split(before: dict, after: dict) -> dict[str, float]:
    """CPU seconds by thread name between two readings (threads alive at the end)."""
    out: dict[str, float] = collections.defaultdict(float)
    for tid, (name, cpu) in after.items():
        out[name] += cpu - before.get(tid, (name, 0.0))[1]
    return dict(out)


def _cpu_window(s0: dict, s1: dict) -> dict:
    """Cores used (CPU seconds / wall seconds) over the window, by who used them."""
    wall = s1["t"] - s0["t"]
    servers = [(b - a) / wall for a, b in zip(s0["servers"], s1["servers"])]
    clients = (s1["clients"] - s0["clients"]) / wall
    bench = (s1["self"] - s0["self"]) / wall
    busy = (s1["machine_busy"] - s0["machine_busy"]) / wall
    total = (s1["machine_total"] - s0["machine_total"]) / wall
    threads: dict[str, float] = collections.defaultdict(float)
    for a, b in zip(s0["server_threads"], s1["server_threads"]):
        for name, cpu in _thread_split(a, b).items():
            threads[name] += cpu / wall
    return {
        "wall_s": wall,
        "server_cores": servers,
        "server_cores_total": sum(servers),
        "server_cores_by_thread": dict(threads),
        "client_cores": clients,
        "bench_cores": bench,
        # Busy time that is not ours: other programs on the machine.
        "other_cores": max(0.0, busy - sum(servers) - clients - bench),
        "idle_cores": max(0.0, total - busy),
        "machine_cores": total,
    }


def _mean_ms(seconds) -> float | None:
    """Mean of the clients' means (None: a client completed none in the window), in ms."""
    values = [v for v in seconds if v is not None]
    return 1e3 * statistics.fmean(values) if values else None


def grid_cell(
    clients: int, shards: int, warmup_s: float, window_s: float, profile: bool = False
) -> dict:
    """One (clients, shards) cell in fresh server and client processes."""
    from benchmarks.servers import ServerProcesses, bench_config
    from gasgd_tf.client import make_client

    config = bench_config(**{"ps.num_shards": shards, **models.PS_FIELDS})
    specs = models.specs("grid")
    flat = models.initial_params("grid")
    split_bytes = config.ps.shard_split_bytes
    with tempfile.TemporaryDirectory(prefix="gasgd_b5_") as workdir:
        with ServerProcesses(config, workdir) as servers:
            init = make_client(servers.address, "bench_init", split_bytes=split_bytes)
            init.wait_for_server(60)
            init.initialize(specs, flat)
            sim = Clients(servers.address, clients, "grid", split_bytes, workdir)
            perf = perf_path = None
            try:
                sim.wait_ready()
                server_pids = [p.pid for p in servers.processes]
                start = time.monotonic() + warmup_s
                end = start + window_s
                sim.send(f"WINDOW {start!r} {end!r}")
                time.sleep(max(0.0, start - time.monotonic()))
                s0 = _sample(server_pids, sim.pids, init)
                if profile:
                    perf_path = os.path.join(workdir, "perf.data")
                    perf = cpu_profile.start(perf_path)
                time.sleep(max(0.0, end - time.monotonic()))
                s1 = _sample(server_pids, sim.pids, init)
                if perf is not None:
                    perf.send_signal(2)  # SIGINT: perf writes its file and exits.
                    perf.wait(timeout=60)
                results = sim.results()
            finally:
                sim.kill()
                init.close()
            prof = None
            if perf is not None:
                try:
                    prof = cpu_profile.report(perf_path, server_pids, sim.pids)
                except (OSError, subprocess.SubprocessError) as e:
                    prof = {"error": repr(e)}
    pushes = sum(r["pushes"] for r in results)
    cpu = _cpu_window(s0, s1)
    server_updates = min(b - a for a, b in zip(s0["updates"], s1["updates"]))
    ups = pushes / window_s
    cell = {
        "clients": clients,
        "shards": shards,
        "window_s": window_s,
        "pushes": pushes,
        "updates_per_s": ups,
        # The servers' own count over the sampling window (the smallest shard's).
        "server_updates_per_s": server_updates / cpu["wall_s"],
        "pushes_per_client": [r["pushes"] for r in results],
        "fetch_ms_mean": _mean_ms(r["fetch_s_mean"] for r in results),
        "push_ms_mean": _mean_ms(r["push_s_mean"] for r in results),
        "cpu": cpu,
        # CPU milliseconds per update: the cost of one fetch + push to each side.
        "server_cpu_ms_per_update": 1e3 * cpu["server_cores_total"] / ups if ups else None,
        "client_cpu_ms_per_update": 1e3 * cpu["client_cores"] / ups if ups else None,
    }
    if prof is not None:
        cell["profile"] = prof
    return cell


def measure(client_counts: Sequence[int], repeats: int, warmup_s: float, window_s: float) -> list:
    """Every (clients, shards) cell, ``repeats`` times, interleaved; the cells in run order."""
    cells = []
    for repeat in range(repeats):
        # Alternate the shard order between repeats, so neither always goes first.
        shard_order = SHARD_COUNTS if repeat % 2 == 0 else tuple(reversed(SHARD_COUNTS))
        for clients in client_counts:
            for shards in shard_order:
                cell = grid_cell(clients, shards, warmup_s, window_s)
                cell["repeat"] = repeat
                c = cell["cpu"]
                print(
                    f"repeat {repeat} clients {clients:>2} shards {shards}: "
                    f"{cell['updates_per_s']:6.1f} updates/s "
                    f"(server {cell['server_updates_per_s']:.1f}); "
                    f"cores: servers {c['server_cores_total']:.2f} clients {c['client_cores']:.2f} "
                    f"others {c['other_cores']:.2f} idle {c['idle_cores']:.2f}; "
                    f"fetch {cell['fetch_ms_mean'] or float('nan'):.0f} ms "
                    f"push {cell['push_ms_mean'] or float('nan'):.0f} ms",
                    flush=True,
                )
                cells.append(cell)
    return cells


def _stats(values: list[float | None]) -> dict:
    """``stats`` of the values that exist (a cell with no update in its window has none)."""
    return stats([v for v in values if v is not None] or [float("nan")])


def summarize(cells: list[dict], client_counts: Sequence[int]) -> list[dict]:
    """One row per client count: each shard count's stats over repeats, their ratio, verdict."""
    rows = []
    for clients in client_counts:
        row: dict = {"clients": clients}
        for shards in SHARD_COUNTS:
            mine = [c for c in cells if c["clients"] == clients and c["shards"] == shards]
            row[f"shards_{shards}"] = {
                "updates_per_s": stats([c["updates_per_s"] for c in mine]),
                "server_updates_per_s": stats([c["server_updates_per_s"] for c in mine]),
                "server_cores": stats([c["cpu"]["server_cores_total"] for c in mine]),
                "max_shard_cores": stats([max(c["cpu"]["server_cores"]) for c in mine]),
                "client_cores": stats([c["cpu"]["client_cores"] for c in mine]),
                "other_cores": stats([c["cpu"]["other_cores"] for c in mine]),
                "idle_cores": stats([c["cpu"]["idle_cores"] for c in mine]),
                "server_cpu_ms_per_update": _stats([c["server_cpu_ms_per_update"] for c in mine]),
                "client_cpu_ms_per_update": _stats([c["client_cpu_ms_per_update"] for c in mine]),
                "fetch_ms": _stats([c["fetch_ms_mean"] for c in mine]),
                "push_ms": _stats([c["push_ms_mean"] for c in mine]),
            }
        one = row["shards_1"]["updates_per_s"]["median"]
        two = row["shards_2"]["updates_per_s"]["median"]
        row["ratio"] = two / one if one else float("nan")
        row["target"] = SPEEDUP_TARGET
        row["verdict"] = verdict(row["ratio"], SPEEDUP_TARGET)
        rows.append(row)
    return rows


def _cores(s: dict) -> str:
    return fmt(s, digits=2)


def markdown(report: dict) -> list[str]:
    """The report's lines for updates/s: the setup, updates/s per cell, where the CPU went."""
    return _throughput_table(report) + _cpu_table(report)


def _throughput_table(report: dict) -> list[str]:
    setup = report["setup"]
    lines = [
        "",
        f"Simulated clients (separate processes, no model compute) loop fetch + push of "
        f"{setup['grid_params']:,} float32 parameters ({4 * setup['grid_params'] / 1e6:.1f} MB: "
        "a 6M and a 1.4M kernel, split over the shards, and 8 small tensors) to a server "
        f"with {setup['optimizer']}. updates/s = pushes completed in a {setup['window_s']:g} s "
        f"window (after {setup['warmup_s']:g} s of warm-up, the same window for every client) "
        f"/ {setup['window_s']:g} s; {setup['repeats']} interleaved repeats per cell, median "
        "[min-max]; ratio of medians.",
        "",
        "| clients | 1 shard updates/s | 2 shards updates/s | 2 / 1 | target | verdict |",
        "|---:|---:|---:|---:|---:|---|",
    ]
    for r in report["rows"]:
        lines.append(
            f"| {r['clients']} | {fmt(r['shards_1']['updates_per_s'])} "
            f"| {fmt(r['shards_2']['updates_per_s'])} | {r['ratio']:.2f} "
            f"| >= {r['target']}x | {r['verdict']} |"
        )
    return lines


def _cpu_table(report: dict) -> list[str]:
    lines = [
        "",
        "Where the CPU goes over the window (cores = CPU seconds / wall seconds, from "
        "`/proc/<pid>/stat` and `/proc/stat`; *others*: busy time of other programs; "
        "*max shard*: the busiest server process; ms/update: CPU milliseconds per update "
        "(one fetch + one push); fetch and push: each client's mean call time):",
        "",
        "| clients | shards | updates/s | server cores | max shard | client cores | others "
        "| idle | server ms/update | client ms/update | fetch ms | push ms |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["rows"]:
        for shards in SHARD_COUNTS:
            s = r[f"shards_{shards}"]
            lines.append(
                f"| {r['clients']} | {shards} | {fmt(s['updates_per_s'])} "
                f"| {_cores(s['server_cores'])} | {_cores(s['max_shard_cores'])} "
                f"| {_cores(s['client_cores'])} | {_cores(s['other_cores'])} "
                f"| {_cores(s['idle_cores'])} | {fmt(s['server_cpu_ms_per_update'])} "
                f"| {fmt(s['client_cpu_ms_per_update'])} | {fmt(s['fetch_ms'])} "
                f"| {fmt(s['push_ms'])} |"
            )
    threads: dict[str, list[float]] = collections.defaultdict(list)
    for c in report["cells"]:
        total = c["cpu"]["server_cores_total"] or 1.0
        for name, cores in c["cpu"]["server_cores_by_thread"].items():
            threads[name].append(cores / total)
    if threads:
        split = ", ".join(
            f"`{name}` {statistics.median(v):.0%}"
            for name, v in sorted(threads.items(), key=lambda kv: -statistics.median(kv[1]))
            if statistics.median(v) >= 0.01
        )
        lines += [
            "",
            f"Server CPU by thread name, median share over all cells: {split}. (`main.py` is "
            "the main thread's name, which every Python thread it starts inherits: the RPC "
            "handlers running our Python and numpy code, and gRPC's Python server loop; "
            "`event_engine`: gRPC's C-core I/O threads.)",
        ]
    return lines


def misses(report: dict) -> list[str]:
    """Missed speed-up targets: by how much, where the CPU went, what would close the gap."""
    out = []
    missed_rows = [r for r in report["rows"] if r["verdict"] != "met"]
    cores = report["machine"]["cpu_count"]
    for r in missed_rows:
        one, two = r["shards_1"], r["shards_2"]
        busy1 = cores - one["idle_cores"]["median"]
        busy2 = cores - two["idle_cores"]["median"]
        server1 = one["server_cpu_ms_per_update"]["median"]
        server2 = two["server_cpu_ms_per_update"]["median"]
        client1 = one["client_cpu_ms_per_update"]["median"]
        client2 = two["client_cpu_ms_per_update"]["median"]
        # The busiest of the 2 shards' CPU ms per update: its ceiling with one core to itself.
        busiest2 = 1e3 * two["max_shard_cores"]["median"] / two["updates_per_s"]["median"]
        out.append(
            f"- {r['clients']} client(s): 2 shards {r['ratio']:.2f}x 1 shard, {r['verdict']} "
            f"(target {r['target']}x). With 1 shard the machine was busy "
            f"{busy1:.2f} of {cores} cores (server {one['server_cores']['median']:.2f}, its "
            f"busiest process {one['max_shard_cores']['median']:.2f}; clients "
            f"{one['client_cores']['median']:.2f}; others {one['other_cores']['median']:.2f}); "
            f"with 2 shards {busy2:.2f} (servers {two['server_cores']['median']:.2f}, clients "
            f"{two['client_cores']['median']:.2f}, others {two['other_cores']['median']:.2f}). "
            f"Each update cost {server1:.1f} ms of server CPU and {client1:.1f} ms of client "
            f"CPU with 1 shard, {server2:.1f} and {client2:.1f} ms with 2 "
            f"({server2 / server1 - 1:+.0%} and {client2 / client1 - 1:+.0%}: two streams per "
            f"call instead of one). Projection, not a measurement: if each server process had "
            f"one core of its own and nothing else limited it, 1 shard would do "
            f"{1e3 / server1:.0f} updates/s and 2 shards {1e3 / busiest2:.0f} (their busiest "
            f"shard: {busiest2:.1f} ms per update), {server1 / busiest2:.2f}x."
        )
    if missed_rows:
        out += [
            "",
            "  A second shard adds a process (its own GIL) but no cores: it can only raise "
            "updates/s where one server process was the limit while cores sat idle. Where "
            "the machine is saturated (idle near 0) by servers, clients and other programs, "
            "the updates/s are set by the total CPU per update (server + client ms/update "
            "above), which sharding does not lower. What would close it: measuring on a "
            "machine where the shards get cores of their own (at least one per shard) and the "
            "clients run elsewhere, as in a real deployment; on this machine, fewer CPU "
            "passes over the bytes per update (see the profile: copies in and out of gRPC, "
            "the receive buffer, the snapshot copy, the finiteness check and the update "
            "itself each touch every byte).",
        ]
    return out
