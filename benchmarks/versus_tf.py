"""B6: gasgd_tf against TensorFlow's ParameterServerStrategy, side by side in one run.

The same models, batch sizes and worker counts, measured alternately in the
same run so that the machine's drift hits both alike:

* TensorFlow: ``benchmarks.tf_ps.measure``: ``ParameterServerStrategy`` with
  ``ClusterCoordinator`` and a custom loop (Keras 3's ``fit`` refuses the
  strategy) on an in-process loopback cluster of 1 ps and 1 or 2 workers,
  which read the variables from the ps every step: A-SGD at ``n_sync = 1``.
* gasgd_tf: ``benchmarks.worker_throughput.measure``: a real server
  process and 1 or 2 worker processes (``worker.train``) at ``n_sync`` 1,
  and 10 for the communication-bound setting (the 7.7M net at batch 8:
  30.8 MB each way per sync for 8 images).

Both use TensorFlow's default threads and the same synthetic 32x32x3
images (TensorFlow: an in-memory pool; ours: ``synthetic_cifar10`` through
the real input pipeline, cached). images/s is the aggregate over workers.
Targets (the issue): at least 1.0x TensorFlow's images/s at ``n_sync = 1``
on both models, and at least 2x in the communication-bound setting at
``n_sync = 10``.

Usage:
  python -m benchmarks.versus_tf [--quick]
"""

from __future__ import annotations

import statistics
import time

from benchmarks import common, tf_ps, worker_throughput

# (net, batch size, our n_sync values, TensorFlow steps per timed run, quick steps).
GRID = (
    (worker_throughput.CIFAR_NET, 128, (1,), 100, 60),
    (worker_throughput.BIG_NET, 128, (1,), 7, 4),
    (worker_throughput.BIG_NET, 8, (1, 10), 60, 30),
)
WORKERS = (1, 2)
TARGET_N_SYNC_1 = 1.0
TARGET_COMM_BOUND = 2.0


def _name(net: dict, batch: int) -> str:
    params = worker_throughput.PARAMS[(net["model"], net["width"])]
    width = f" width {net['width']}" if net["width"] else ""
    return f"{net['model']}{width} ({params / 1e6:.2g}M params), batch {batch}"


def run(quick: bool = False) -> dict:
    repeats = 1 if quick else 2
    start = time.perf_counter()
    rows = []
    for net, batch, n_syncs, tf_steps, tf_quick_steps in GRID:
        # The ceiling of any parameter-server scheme here: one worker, no server.
        local = worker_throughput.b6_kwargs(net, batch, 1, 1, quick)
        local_rate = worker_throughput.measure(**{**local, "server": False})["images_per_sec"]
        print(f"{_name(net, batch)}: local, no server: {local_rate:.0f} images/s", flush=True)
        for workers in WORKERS:
            steps = tf_quick_steps if quick else tf_steps
            tf_samples: list[float] = []
            ours: dict[int, list[float]] = {n: [] for n in n_syncs}
            for _ in range(repeats):  # Alternate the two systems within each row.
                tf = tf_ps.measure(
                    net["model"], net["width"], workers, batch, steps, max(2, steps // 5)
                )
                tf_samples.append(tf["images_per_s"])
                for n_sync in n_syncs:
                    kwargs = worker_throughput.b6_kwargs(net, batch, workers, n_sync, quick)
                    ours[n_sync].append(worker_throughput.measure(**kwargs)["images_per_sec"])
            for n_sync, samples in ours.items():
                row = {
                    "setting": _name(net, batch),
                    "model": net["model"],
                    "batch_size": batch,
                    "workers": workers,
                    "n_sync": n_sync,
                    "tensorflow": common.stats(tf_samples),
                    "ours": common.stats(samples),
                    "local_one_worker": local_rate,
                }
                row["ratio"] = statistics.median(samples) / statistics.median(tf_samples)
                rows.append(row)
                print(
                    f"{row['setting']}, {workers} worker(s), n_sync {n_sync}: ours "
                    f"{row['ours']['median']:.0f} vs TensorFlow {row['tensorflow']['median']:.0f} "
                    f"images/s = {row['ratio']:.2f}x",
                    flush=True,
                )
    return {
        "machine": common.machine_info(),
        "command": "python -m benchmarks.versus_tf" + (" --quick" if quick else ""),
        "repeats": repeats,
        "seconds": time.perf_counter() - start,
        "rows": rows,
    }


def _target(row: dict) -> str:
    if row["batch_size"] == 8 and row["n_sync"] == 10:
        target = TARGET_COMM_BOUND
    elif row["batch_size"] == 128 and row["n_sync"] == 1:
        target = TARGET_N_SYNC_1
    else:
        return "-"
    return f">= {target:g}x: {common.verdict(row['ratio'], target)}"


def markdown(report: dict) -> str:
    lines = [
        f"Command: `{report['command']}`; {report['repeats']} measurements of each system per "
        "row, alternating; images/s summed over the workers, median [min-max].",
        "",
        "| setting | workers | our n_sync | TensorFlow PS images/s | gasgd_tf images/s "
        "| ratio | target | one local worker, no server (ceiling) |",
        "|---|---:|---:|---|---|---:|---|---:|",
    ]
    for r in report["rows"]:
        lines.append(
            f"| {r['setting']} | {r['workers']} | {r['n_sync']} "
            f"| {common.fmt(r['tensorflow'])} | {common.fmt(r['ours'])} "
            f"| {r['ratio']:.2f} | {_target(r)} | {r['local_one_worker']:.0f} "
            f"({r['local_one_worker'] / r['tensorflow']['median']:.2f}x TF) |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """``python -m benchmarks.versus_tf [--quick] [--out=PATH]``."""
    common.main(
        "versus_tf",
        run,
        doc=__doc__,
        markdown=markdown,
        quick="fewer steps, one measurement of each system per row",
        argv=argv,
    )


if __name__ == "__main__":
    main()
