"""GPU check: images/s per worker on the GPU path, one worker process per GPU.

    .venv/bin/python -m benchmarks.gpu_check                  # every GPU, 3 precisions
    .venv/bin/python -m benchmarks.gpu_check --workers=2 --precisions=float32 --jit

Runs the local launcher on ``synthetic_cifar10`` (offline) with the
cuda-convnet CIFAR-10 net, ``--workers`` workers (default: one per visible
GPU, as ``nvidia-smi -L`` lists them; one on a machine without GPUs), batch
128, ``n_sync=1``, for each precision asked for, and prints each worker's
images/s, the device it reported, the server version and the wall time as
JSON and as a Markdown table. Record what it printed in BUILD_NOTES.md with
the machine. On a machine without a GPU it runs on the CPU and says so.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

from benchmarks import common
from gasgd_tf import layout
from gasgd_tf.config_base import PRECISIONS  # worker.precision's values.

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def visible_gpus() -> list[str]:
    """The GPUs this process may use: ``nvidia-smi -L``'s, narrowed by CUDA_VISIBLE_DEVICES."""
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return []
    gpus = [line for line in out.stdout.splitlines() if line.startswith("GPU ")]
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:  # nvidia-smi ignores it; TensorFlow does not.
        gpus = gpus[: len([d for d in visible.split(",") if d.strip()])]
    return gpus


def run_one(precision: str, workers: int, steps: int, jit: bool) -> dict:
    workdir = tempfile.mkdtemp(prefix=f"gpu_check_{precision}_")
    command = [
        sys.executable,
        "-m",
        "gasgd_tf.main",
        "--config=configs/default.py",
        f"--workdir={workdir}",
        "--config.data.name=synthetic_cifar10",
        "--config.model.name=cifar10_18pct",
        f"--config.num_workers={workers}",
        f"--config.num_steps={steps}",
        "--config.batch_size=128",
        "--config.worker.log_every_steps=50",
        f"--config.worker.precision={precision}",
        f"--config.worker.jit_compile={jit}",
        "--config.eval.every_secs=30",
        "--config.eval.save_model=False",
    ]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=3600)
    if result.returncode != 0:
        raise RuntimeError(f"{precision}: the run failed:\n{result.stdout[-3000:]}")
    with open(layout.summary_path(workdir)) as f:
        summary = json.load(f)
    placed = []
    for i in range(workers):
        with open(layout.log_path(workdir, layout.worker(i)), errors="replace") as f:
            match = re.search(r"parameters on (.+?); joined", f.read())
        placed.append(match.group(1) if match else "?")
    return {
        "precision": precision,
        "jit_compile": jit,
        "workers": workers,
        "devices": placed,
        "images_per_sec_per_worker": [round(x, 1) for x in summary["worker_images_per_sec"]],
        "images_per_sec": round(summary["images_per_sec"], 1),
        "server_version": summary["server_version"],
        "wall_secs": round(summary["wall_secs"], 1),
    }


def run(workers: int, steps: int, precisions: list[str], jit: bool) -> dict:
    """One run per precision with ``workers`` workers (0: one per visible GPU); the rows."""
    gpus = visible_gpus()
    workers = workers or max(len(gpus), 1)
    print(f"GPUs: {gpus or 'none (the CPU path is measured)'}", flush=True)
    return {"gpus": gpus, "rows": [run_one(p, workers, steps, jit) for p in precisions]}


def markdown(report: dict) -> str:
    """The rows as JSON, then as a Markdown table."""
    lines = [
        json.dumps(report["rows"], indent=2),
        "| precision | XLA | workers | images/s per worker | total | device of worker 0 |",
        "|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        per = ", ".join(f"{x:,.0f}" for x in r["images_per_sec_per_worker"])
        lines.append(
            f"| {r['precision']} | {r['jit_compile']} | {r['workers']} | {per} | "
            f"{r['images_per_sec']:,.0f} | {r['devices'][0]} |"
        )
    return "\n".join(lines)


def _flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workers", type=int, default=0, help="0: one per visible GPU")
    parser.add_argument("--steps", type=int, default=300, help="steps per worker")
    parser.add_argument(
        "--precisions",
        type=common.comma_list(choices=PRECISIONS),
        default=list(PRECISIONS),
        metavar=",".join(PRECISIONS),
        help="worker.precision of each run",
    )
    parser.add_argument("--jit", action="store_true", help="XLA (worker.jit_compile)")


def main(argv: list[str] | None = None) -> None:
    """``python -m benchmarks.gpu_check [--workers=N] [--steps=N] [--precisions=...] [--jit]``."""
    # Prints its rows and writes no report: BUILD_NOTES.md records them by hand.
    common.main(
        "gpu_check", run, doc=__doc__, markdown=markdown, flags=_flags, report=False, argv=argv
    )


if __name__ == "__main__":
    main()
