"""Fault injection on the default run: kill -9 a process mid-run and account for every push.

    .venv/bin/python -m benchmarks.faults --kill=ps_0        # the parameter server
    .venv/bin/python -m benchmarks.faults --kill=worker_0    # a worker
    .venv/bin/python -m benchmarks.faults --kill=launcher    # Ctrl-C, then the same command

Each scenario runs ``configs/default.py`` (2 workers) in a fresh folder,
waits until ``worker_1`` has logged ``--at_step`` steps, injects the fault,
lets the run finish (for ``launcher``: runs the same command again, which
resumes), and prints what summary.json says: the final version, restarts,
updates lost after the last checkpoint, pushes refused by a restored
server, and whether every one of the ``2 x num_steps`` pushes is accounted
for (``version + updates_lost + pushes_lost``). RELIABILITY.md quotes it.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile

from benchmarks import common
from gasgd_tf import layout, progress

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _command(workdir: str, num_steps: int, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "gasgd_tf.main",
        "--config=configs/default.py",
        f"--workdir={workdir}",
        f"--config.num_steps={num_steps}",
        "--config.worker.log_every_steps=10",
        "--config.ps.checkpoint_every_secs=2",
        *extra,
    ]


def _pid_of(workdir: str, role: str) -> int:
    kind, _, index = role.partition("_")
    pattern = f"--role={kind} --config_json={workdir}/config.json --workdir={workdir}"
    pattern += f" --task_index={index}"
    found = subprocess.run(["pgrep", "-f", "--", pattern], capture_output=True, text=True)
    pids = found.stdout.split()
    if len(pids) != 1:
        raise RuntimeError(f"expected one {role} process, found {pids}")
    return int(pids[0])


def run(kill: str, num_steps: int, at_step: int) -> dict:
    """Runs one scenario; returns its figures."""
    workdir = tempfile.mkdtemp(prefix=f"faults_{kill}_")
    launcher = subprocess.Popen(
        _command(workdir, num_steps),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    progress.wait_for_step(workdir, "worker_1", at_step, launcher, timeout_secs=300)
    if kill == "launcher":
        launcher.send_signal(signal.SIGINT)
        out, _ = launcher.communicate(timeout=120)
        again = subprocess.run(
            _command(workdir, num_steps), cwd=ROOT, capture_output=True, text=True, timeout=600
        )
        out += again.stdout + again.stderr
        code = again.returncode
    else:
        os.kill(_pid_of(workdir, kill), signal.SIGKILL)
        out, _ = launcher.communicate(timeout=600)
        code = launcher.returncode
    if code != 0:
        raise RuntimeError(f"the run failed ({code}):\n{out[-3000:]}")
    with open(layout.summary_path(workdir)) as f:
        summary = json.load(f)
    pushes = 2 * num_steps
    lost = summary.get("updates_lost", 0)
    refused = summary.get("pushes_lost", 0)
    return {
        "fault": f"kill -9 {kill}" if kill != "launcher" else "Ctrl-C the launcher, run again",
        "at_step": at_step,
        "pushes_made": pushes,
        "final_version": summary["server_version"],
        "server_restarts": sum(summary.get("server_restarts", {}).values()),
        "worker_restarts": sum(summary.get("worker_restarts", {}).values()),
        "updates_lost": lost,
        "pushes_refused": refused,
        "accounted": summary["server_version"] + lost + refused,
        "test_accuracy": round(summary["test_accuracy"], 4),
        "wall_secs": round(summary["wall_secs"], 1),
        "workdir": workdir,
    }


def _flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--kill", choices=["ps_0", "worker_0", "launcher"], required=True, help="what to kill"
    )
    parser.add_argument("--num_steps", type=int, default=1500, help="config.num_steps")
    parser.add_argument("--at_step", type=int, default=500, help="kill when worker_1 is here")


def main(argv: list[str] | None = None) -> None:
    """``python -m benchmarks.faults --kill=ROLE [--num_steps=N] [--at_step=N]``."""
    # Prints its figures as JSON and writes no report: RELIABILITY.md quotes them.
    common.main("faults", run, doc=__doc__, flags=_flags, report=False, argv=argv)


if __name__ == "__main__":
    main()
