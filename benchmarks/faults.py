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

    .venv/bin/python -m benchmarks.faults --chaos [--minutes=10] [--seed=0] [--config=both]

runs the chaos run of ``benchmarks/chaos.py`` instead: for ``--minutes``
under each config, a random worker or the server is killed with SIGKILL
every ``--min_gap``-``--max_gap`` seconds; it prints one line per kill, then
the goodput (steps in the final parameters / steps computed), acknowledged
pushes lost and final accuracy, and writes ``benchmarks/results/chaos.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile

from benchmarks import chaos as chaos_lib
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


CHAOS_REPORT = os.path.join(common.RESULTS_DIR, "chaos.json")


def run(
    kill: str | None = None,
    num_steps: int = 1500,
    at_step: int = 500,
    chaos: bool = False,
    minutes: float = 10.0,
    seed: int = 0,
    config: str = "both",
    min_gap: float = 30.0,
    max_gap: float = 90.0,
    grace_minutes: float = 10.0,
    chaos_steps: int | None = None,
    workdir: str | None = None,
) -> dict:
    """Runs one scenario (``kill``), or the chaos run (``chaos``); returns its figures."""
    if chaos:
        report = chaos_lib.run(
            chaos_configs(config),
            minutes=minutes,
            seed=seed,
            min_gap=min_gap,
            max_gap=max_gap,
            num_steps=chaos_steps,
            grace_minutes=grace_minutes,
            workdir=workdir,
        )
        common.write_json(CHAOS_REPORT, report)
        print(chaos_lib.markdown(report), flush=True)
        return {
            "report": CHAOS_REPORT,
            "workdir": report["workdir"],
            "results": [r["aggregate"] for r in report["results"]],
        }
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


def chaos_configs(config: str) -> list[str]:
    """The configs ``--config`` names: one, or ``both`` (async DiLoCo first, then rounds)."""
    return list(chaos_lib.CONFIGS) if config == "both" else [config]


def _positive(text: str) -> float:
    value = float(text)
    if not (value > 0 and value < float("inf")):
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text!r}")
    return value


def _flags(parser: argparse.ArgumentParser) -> None:
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--kill", choices=["ps_0", "worker_0", "launcher"], help="what to kill")
    what.add_argument(
        "--chaos", action="store_true", help="kill -9 a random worker or the server for --minutes"
    )
    parser.add_argument("--num_steps", type=int, default=1500, help="config.num_steps (--kill)")
    parser.add_argument("--at_step", type=int, default=500, help="kill when worker_1 is here")
    chaos = parser.add_argument_group("--chaos")
    chaos.add_argument("--minutes", type=_positive, default=10.0, help="chaos window per config")
    chaos.add_argument("--seed", type=int, default=0, help="the kill times and targets")
    chaos.add_argument(
        "--config", choices=[*chaos_lib.CONFIGS, "both"], default="both", help="which config"
    )
    chaos.add_argument("--min_gap", type=_positive, default=30.0, help="seconds between kills, min")
    chaos.add_argument("--max_gap", type=_positive, default=90.0, help="seconds between kills, max")
    chaos.add_argument(
        "--grace_minutes",
        type=_positive,
        default=10.0,
        help="after the window, time for the run to finish before it counts as a hang",
    )
    chaos.add_argument(
        "--chaos_steps", type=int, default=None, help="num_steps of the first run (default 8/s)"
    )
    chaos.add_argument("--workdir", default=None, help="folder of the runs (default: a new tmp)")


def main(argv: list[str] | None = None) -> None:
    """``python -m benchmarks.faults --kill=ROLE [--num_steps=N] [--at_step=N]`` or ``--chaos``."""
    # Prints its figures as JSON; --kill writes no report (RELIABILITY.md
    # quotes them), --chaos benchmarks/results/chaos.json.
    args = common.parser("faults", __doc__, flags=_flags, report=False).parse_args(argv)
    if args.min_gap > args.max_gap:
        common.parser("faults", __doc__, flags=_flags, report=False).error(
            f"--min_gap ({args.min_gap:g}) is above --max_gap ({args.max_gap:g})"
        )
    common.main("faults", run, doc=__doc__, flags=_flags, report=False, argv=argv)


if __name__ == "__main__":
    main()
