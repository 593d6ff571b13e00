"""Figures like the paper's: training and test error per setting, from TensorBoard events.

Usage:
  python -m gasgd_tf.experiments.plots --workdir=runs/exp3 [--window=50]

writes ``<workdir>/plots/{test,train}_error_{steps,time,minibatches,bytes}.png``
(a sweep of parts: ``plots/<part>/``): one panel per ``n_sync`` value, one
curve per number of clients and variant (the mean over seeds, their range
shaded; with several of each, the colour is the variant and the line style
the clients); training error is smoothed with a trailing window of
``--window`` minibatches. ``bytes`` is the bytes each client sent and
received (the workers' mean, counted in the client), on a log axis. The
sweep runner calls the same code when it finishes.
"""

from __future__ import annotations

import os
import sys

import numpy as np

from gasgd_tf.experiments import curves
from gasgd_tf.experiments.sweep import Cell, discover

AXES = {
    "steps": "steps per client (minibatches)",
    "time": "wall-clock seconds since the first worker started",
    "minibatches": "minibatches of all clients together",
    "bytes": "bytes sent + received per client (log scale)",
}
LINE_STYLES = ("-", "--", ":", "-.")
GRID_POINTS = 200  # Where the seeds' curves are resampled to be averaged.


def caption(num_cores: int | None = None) -> str:
    cores = num_cores or os.cpu_count() or 1
    return (
        "Steps per client stand for time when every client has its own GPU, as in the paper. "
        f"Here all clients share {cores} CPU cores, so wall-clock time cannot show a parallel "
        f"speed-up beyond {cores} clients."
    )


def mean_curve(curves_xy: list[tuple[np.ndarray, np.ndarray]]):
    """The seeds' curves on a common x grid: (x, mean, min, max).

    The grid spans the x range every curve covers, so the mean is never an
    extrapolation; one curve comes back as it is.
    """
    curves_xy = [(x, y) for x, y in curves_xy if x.size]
    if not curves_xy:
        empty = np.zeros(0)
        return empty, empty, empty, empty
    if len(curves_xy) == 1:
        x, y = curves_xy[0]
        return x, y, y, y
    lo = max(x[0] for x, _ in curves_xy)
    hi = min(x[-1] for x, _ in curves_xy)
    grid = np.linspace(lo, hi, GRID_POINTS)
    ys = np.stack([np.interp(grid, x, y) for x, y in curves_xy])
    return grid, ys.mean(axis=0), ys.min(axis=0), ys.max(axis=0)


def _series(cell: Cell, folder: str, window_minibatches: int) -> dict:
    test = curves.test_curve(folder)
    train_steps, train_time = curves.train_curves(
        folder, window_minibatches, cell.config.worker.log_every_steps
    )
    order = np.argsort(train_time.seconds, kind="stable")
    comm = curves.comm_curves(folder)
    return {
        ("test", "bytes"): (comm.at_steps(test.steps), test.error),
        ("train", "bytes"): (comm.at_steps(train_steps.steps), train_steps.error),
        ("test", "steps"): (test.steps, test.error),
        ("test", "time"): (test.seconds, test.error),
        ("test", "minibatches"): (test.steps * cell.clients, test.error),
        ("train", "steps"): (train_steps.steps, train_steps.error),
        ("train", "time"): (train_time.seconds[order], train_time.error[order]),
        ("train", "minibatches"): (train_steps.steps * cell.clients, train_steps.error),
    }


def _styles(keys: list[tuple[str, int]], plt) -> dict:
    """(colour, line style) per (variant, clients) curve."""
    variants = list(dict.fromkeys(v for v, _ in keys))
    clients = sorted({n for _, n in keys})
    if len(variants) > 1 and len(clients) > 1:  # Colour: the variant; style: the clients.
        return {
            (v, n): (plt.cm.tab10(variants.index(v) % 10), LINE_STYLES[clients.index(n) % 4])
            for v, n in keys
        }
    shade = max(len(keys) - 1, 1)
    return {k: (plt.cm.viridis(i / shade), "-") for i, k in enumerate(keys)}


def plot(
    cells: list[Cell],
    workdir: str,
    window_minibatches: int = 50,
    title: str = "",
    out_dir: str | None = None,
) -> list[str]:
    """Draws the figures for ``cells`` into ``out_dir`` (``<workdir>/plots``); returns their paths.

    One figure per (test or train error, x-axis); one panel per n_sync; one
    curve per number of clients and variant: the mean over the seeds, with
    their range shaded. The bytes figures are left out when no cell has
    byte counters.
    """
    import matplotlib

    matplotlib.use("Agg")  # No display on servers; must precede pyplot.
    from matplotlib import pyplot as plt
    from matplotlib import ticker

    out_dir = out_dir or os.path.join(workdir, "plots")
    os.makedirs(out_dir, exist_ok=True)
    panels = sorted({c.n_sync for c in cells})
    # One curve per (variant, clients): variants in the sweep's order.
    variants = list(dict.fromkeys(c.variant for c in cells))
    keys = [(v, n) for v in variants for n in sorted({c.clients for c in cells})]
    keys = [k for k in keys if any((c.variant, c.clients) == k for c in cells)]
    several_clients = len({c.clients for c in cells}) > 1
    styles = _styles(keys, plt)
    data = {c.name: _series(c, os.path.join(workdir, c.name), window_minibatches) for c in cells}
    counted = any(np.isfinite(d[("test", "bytes")][0]).any() for d in data.values())
    paths = []
    for metric in ("test", "train"):
        for axis in [a for a in AXES if a != "bytes" or counted]:
            fig, axes = plt.subplots(
                1,
                len(panels),
                figsize=(4.2 * len(panels) + 0.6, 3.6),
                squeeze=False,
                sharey=True,
                sharex=axis == "bytes",  # One bytes scale: the panels' H compare across.
            )
            for ax, n_sync in zip(axes[0], panels):
                for key in keys:
                    variant, clients = key
                    group = [
                        c for c in cells if c.n_sync == n_sync and (c.variant, c.clients) == key
                    ]
                    if not group:
                        continue
                    x, mean, lo, hi = mean_curve([data[c.name][(metric, axis)] for c in group])
                    seeds = f", {len(group)} seeds" if len(group) > 1 else ""
                    label = f"{clients} client{'s' if clients > 1 else ''}"
                    if variant:
                        label = f"{variant}, {label}" if several_clients else variant
                    color, style = styles[key]
                    ax.plot(x, mean, color=color, linestyle=style, label=label + seeds, lw=1.2)
                    if len(group) > 1:
                        ax.fill_between(x, lo, hi, color=color, alpha=0.15, linewidth=0)
                ax.set_title(f"n_sync = {n_sync}", fontsize=10)
                ax.set_xlabel(AXES[axis], fontsize=9)
                ax.set_yscale("log")
                if axis == "bytes":
                    ax.set_xscale("log")
                    ax.xaxis.set_major_formatter(ticker.EngFormatter(unit="B"))
                    ax.xaxis.set_minor_formatter(ticker.NullFormatter())
                ax.grid(True, which="both", alpha=0.3)
            ylabel = (
                "test error"
                if metric == "test"
                else f"training error ({window_minibatches}-minibatch window)"
            )
            axes[0][0].set_ylabel(ylabel, fontsize=9)
            axes[0][-1].legend(fontsize=8)
            fig.suptitle(f"{title}: {metric} error" if title else f"{metric} error", fontsize=11)
            fig.text(0.01, 0.01, caption(), fontsize=7, wrap=True, va="bottom")
            fig.tight_layout(rect=(0, 0.08, 1, 1))
            path = os.path.join(out_dir, f"{metric}_error_{axis}.png")
            fig.savefig(path, dpi=90)
            plt.close(fig)
            paths.append(path)
    return paths


def main(argv: list[str]) -> int:
    from absl import app, flags

    del argv
    workdir = flags.FLAGS.workdir
    cells = [c for c in discover(workdir) if c.name != "pretrain"]
    if not cells:
        raise app.UsageError(f"no finished runs under {workdir}")
    for path in plot(cells, workdir, flags.FLAGS.window, os.path.basename(workdir.rstrip("/"))):
        print(path)
    return 0


if __name__ == "__main__":
    from absl import app, flags

    flags.DEFINE_string("workdir", None, "A sweep's folder, e.g. runs/exp3.", required=True)
    flags.DEFINE_integer("window", 50, "Training error smoothing window, in minibatches.")
    app.run(lambda argv: sys.exit(main(argv)))
