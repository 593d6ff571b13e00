"""Runs one of the paper's experiments as a sweep, then writes its table and figures.

Usage:
  python -m gasgd_tf.experiments.run --experiment=exp2
  python -m gasgd_tf.experiments.run --experiment=exp2 --config.smoke=True   # minutes
  python -m gasgd_tf.experiments.run --experiment=exp3 --config.sweep.concurrency=2
  python -m gasgd_tf.experiments.run --config=configs/my_sweep.py --workdir=runs/mine

``--experiment`` picks the config file (configs/exp1..5*.py, whose
docstrings give the paper figure, the command, the expected result and the
runtime); any of its fields can be overridden with ``--config.a.b=value``,
for every cell at once. Results go to ``--workdir`` (default
``runs/<experiment>``, with ``_smoke`` appended for smoke runs): one folder per
cell, ``summary.csv``, ``summary.md`` and ``plots/`` (``plots/<part>/`` for
each labelled part of a sweep of parts). Rerunning the same
command skips the cells that finished.
"""

from __future__ import annotations

import os
import sys

EXPERIMENTS = {
    "exp1": "exp1_async_vs_single.py",
    "exp2": "exp2_cold_start.py",
    "exp3": "exp3_warm_start.py",
    "exp4": "exp4_staleness.py",
    "exp5": "exp5_low_communication.py",
}


def config_path(experiment: str) -> str:
    """configs/<file> of an experiment, from the working directory or the source tree."""
    name = EXPERIMENTS[experiment]
    source_tree = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    for root in (os.getcwd(), source_tree):
        path = os.path.join(root, "configs", name)
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(f"configs/{name} not found; run from the gasgd_tf source tree")


def _experiment_in(argv: list[str]) -> str | None:
    """The --experiment value, read before flag parsing: it picks --config's default file."""
    for i, arg in enumerate(argv):
        if arg.startswith("--experiment="):
            return arg.split("=", 1)[1]
        if arg == "--experiment" and i + 1 < len(argv):
            return argv[i + 1]
    return None


def main(argv: list[str]) -> int:
    from absl import app, flags
    from ml_collections import config_flags

    from gasgd_tf import checkpoints
    from gasgd_tf.experiments import plots, report, sweep

    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    FLAGS = flags.FLAGS
    if FLAGS.config is None:
        raise app.UsageError(f"pass --experiment={{{','.join(EXPERIMENTS)}}} or --config=FILE")
    try:
        base, sweep_config, smoke = sweep.split_experiment(FLAGS.config)
    except ValueError as e:
        raise app.UsageError(str(e)) from None
    name = (
        FLAGS.experiment
        or os.path.splitext(os.path.basename(config_flags.get_config_filename(FLAGS["config"])))[0]
    )
    workdir = FLAGS.workdir or os.path.join("runs", name + ("_smoke" if smoke else ""))
    os.makedirs(workdir, exist_ok=True)
    concurrency = sweep_config.concurrency if FLAGS.concurrency is None else FLAGS.concurrency

    try:
        warm_start = base.warm_start
        if sweep_config.pretrain_steps > 0 and warm_start is None:
            pre = sweep.pretrain_cell(base, sweep_config)
            print(f"[sweep] warm start: one worker trains {pre.config.num_steps} steps first")
            sweep.run_cells([pre], workdir)
            warm_start = os.path.join(workdir, pre.name)
        if warm_start is not None:
            warm_start = os.path.abspath(checkpoints.resolve(warm_start))
        cells = sweep.grid_cells(base, sweep_config, warm_start)
        print(
            f"[sweep] {name}: {len(cells)} cells, {concurrency} at a time, in {workdir}",
            flush=True,
        )
        sweep.run_cells(cells, workdir, concurrency)
    except (sweep.CellFailed, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume", file=sys.stderr, flush=True)
        return 130

    window = sweep_config.window_minibatches
    rows = [report.row(c, workdir, window, sweep_config.target_error) for c in cells]
    csv_path, md_path = report.write(rows, workdir, name)
    with open(md_path) as f:
        print(f.read())
    for part in dict.fromkeys(c.part for c in cells):  # A sweep of parts: plots/<part>/.
        group = [c for c in cells if c.part == part]
        out_dir = os.path.join(workdir, "plots", part)
        for path in plots.plot(group, workdir, window, f"{name} {part}".strip(), out_dir):
            print(f"[sweep] figure: {path}")
    print(f"[sweep] table: {csv_path}, {md_path}")
    return 0


def run() -> None:
    """Console entry point: defines the flags (--config's default depends on --experiment)."""
    from absl import app, flags
    from ml_collections import config_flags

    experiment = _experiment_in(sys.argv)
    default = None
    if experiment in EXPERIMENTS:
        default = config_path(experiment)
    flags.DEFINE_enum("experiment", None, list(EXPERIMENTS), "Which experiment of the paper.")
    config_flags.DEFINE_config_file(
        "config", default, "Experiment config; default: the one --experiment names."
    )
    flags.DEFINE_string("workdir", None, "Sweep folder. Default: runs/<experiment>[_smoke].")
    flags.DEFINE_integer("concurrency", None, "Cells run at once (default: sweep.concurrency).")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    app.run(lambda argv: sys.exit(main(argv)))


if __name__ == "__main__":
    run()
