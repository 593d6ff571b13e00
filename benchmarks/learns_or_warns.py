"""B9: with n_sync raised to 50, every offline config in configs/ learns or says it does not.

Issue 15's target: no silent chance result. Each config whose data ships
with the package runs as ``python -m gasgd_tf.main --config=configs/<c>.py
--config.n_sync=50`` (an experiment config runs its base setting), in a
fresh folder; the row says the final test accuracy, whether the run learned
(accuracy at least ``LEARNED_OVER_CHANCE`` above chance) and the
failed-to-learn warning of summary.json, if any. A row that neither learned
nor warned misses the target.

Usage:
  python -m benchmarks.learns_or_warns [--configs=default,diloco,...] [--n_sync=50]
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile

from benchmarks import common
from gasgd_tf import layout

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Configs whose data needs a download or a manual copy: not runnable offline.
NEEDS_DATA = ("cifar10_18pct", "paper_imagenet")
LEARNED_OVER_CHANCE = 0.2  # Accuracy above chance (0.1 on ten classes) that counts as learned.
CHANCE = 0.1


def offline_configs() -> list[str]:
    """The names of configs/*.py whose data ships with the package."""
    names = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, "configs/*.py")))
    return [n for n in names if n not in NEEDS_DATA]


def run_one(name: str, n_sync: int) -> dict:
    """One config at ``n_sync``; its row."""
    workdir = tempfile.mkdtemp(prefix=f"learns_{name}_")
    command = [
        sys.executable,
        "-m",
        "gasgd_tf.main",
        f"--config=configs/{name}.py",
        f"--workdir={workdir}",
        f"--config.n_sync={n_sync}",
    ]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=1800)
    row = {"config": name, "returncode": done.returncode, "workdir": workdir}
    try:
        with open(os.path.join(workdir, layout.SUMMARY_FILE)) as f:
            summary = json.load(f)
    except (OSError, ValueError):
        row["error"] = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        return row
    accuracy = summary.get("test_accuracy")
    row.update(
        accuracy=accuracy,
        learned=accuracy is not None and accuracy >= CHANCE + LEARNED_OVER_CHANCE,
        warning=summary.get("warning") or "",
        steps=summary.get("steps_per_worker"),
    )
    row["ok"] = row["learned"] or bool(row["warning"])
    return row


def run(configs: list[str] | None = None, n_sync: int = 50) -> dict:
    rows = []
    for name in configs or offline_configs():
        row = run_one(name, n_sync)
        rows.append(row)
        print(
            f"{name}: accuracy {row.get('accuracy')}, learned {row.get('learned')}, "
            f"warning {'yes' if row.get('warning') else 'no'}",
            flush=True,
        )
    return {
        "machine": common.machine_info(),
        "command": f"python -m benchmarks.learns_or_warns --n_sync={n_sync}",
        "n_sync": n_sync,
        "rows": rows,
        "all_ok": all(r.get("ok") for r in rows),
    }


def markdown(report: dict) -> str:
    lines = [
        f"`{report['command']}` ({report['machine']['date'][:10]}, "
        f"{report['machine']['cpu_count']} cores)",
        "",
        "| config | test accuracy | learned | failed-to-learn warning |",
        "|---|---|---|---|",
    ]
    for row in report["rows"]:
        accuracy = row.get("accuracy")
        shown = "error: " + " ".join(row["error"]) if "error" in row else f"{accuracy:.3f}"
        warning = row.get("warning", "")
        lines.append(
            f"| {row['config']} | {shown} | {'yes' if row.get('learned') else 'no'} | "
            f"{warning[:120] + ('...' if len(warning) > 120 else '') or 'none'} |"
        )
    met = "met" if report["all_ok"] else "missed"
    lines += ["", f"Target (every config learns or warns): {met}."]
    return "\n".join(lines)


def _flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--configs",
        type=common.comma_list(choices=offline_configs()),
        default=None,
        help="configs to run (default: every offline one)",
    )
    parser.add_argument("--n_sync", type=int, default=50, help="--config.n_sync of every run")


def main(argv: list[str] | None = None) -> None:
    common.main("learns_or_warns", run, doc=__doc__, markdown=markdown, flags=_flags, argv=argv)


if __name__ == "__main__":
    main()
