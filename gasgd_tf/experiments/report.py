"""One summary table per sweep (CSV and Markdown), from each cell's summary.json and events."""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Sequence

from gasgd_tf import layout, progress
from gasgd_tf.experiments import curves
from gasgd_tf.experiments.sweep import Cell

# Test error is reported at these fractions of each cell's steps per client.
FRACTIONS = (0.1, 0.25, 0.5, 1.0)


def row(cell: Cell, workdir: str, window_minibatches: int, target_error: float = 0.1) -> dict:
    """The table row of one finished cell.

    Args:
      cell: The cell.
      workdir: The sweep's folder.
      window_minibatches: Smoothing of the training error.
      target_error: ``steps_to_<target>`` and ``seconds_to_<target>`` are
        the steps per client and the wall-clock seconds at which the test
        error first reached it (the paper's "speed-up" reading);
        ``bytes_{sent,received,total}_to_<target>`` the bytes per client
        by then (``bytes_to``).
    """
    folder = os.path.join(workdir, cell.name)
    summary = progress.read_json(layout.summary_path(folder)) or {}
    config = cell.config
    test = curves.test_curve(folder)
    train, _ = curves.train_curves(folder, window_minibatches, config.worker.log_every_steps)
    out = {
        "cell": cell.name,
        "variant": cell.variant,
        "clients": cell.clients,
        "n_sync": cell.n_sync,
        "seed": cell.seed,
        "warm_start": bool(config.warm_start),
        "steps_per_client": config.num_steps,
        "minibatches": config.num_steps * cell.clients,
    }
    for f in FRACTIONS:
        out[f"test_error@{f:g}"] = test.at_steps(f * config.num_steps)
    out[f"steps_to_{target_error:g}"] = test.steps_to(target_error)
    out[f"seconds_to_{target_error:g}"] = test.seconds_to(target_error)
    out.update(comm_columns(test, curves.comm_curves(folder), target_error))
    out["test_error_first"] = float(test.error[0]) if test.error.size else math.nan
    out["test_error_best"] = float(test.error.min()) if test.error.size else math.nan
    out["test_error_final"] = 1.0 - summary.get("test_accuracy", math.nan)
    if "test_accuracy_multi_crop" in summary:
        out["test_error_final_multi_crop"] = 1.0 - summary["test_accuracy_multi_crop"]
    out["train_error_final"] = float(train.error[-1]) if train.error.size else math.nan
    out["wall_secs"] = summary.get("wall_secs", math.nan)
    out["images_per_sec"] = summary.get("images_per_sec", math.nan)
    out["mean_staleness"] = summary.get("staleness_mean", math.nan)
    out["max_staleness"] = summary.get("staleness_max", math.nan)
    rates = summary.get("worker_images_per_sec") or []
    # Fastest over slowest worker: about 3 for one emulated 3x slower worker.
    out["speed_ratio"] = max(rates) / min(rates) if rates and min(rates) > 0 else math.nan
    return out


def bytes_to(test: curves.Curve, comm: curves.Comm, target_error: float, which="total") -> float:
    """Bytes per client (``comm``'s ``which``) by the step the test error first reached the target.

    NaN when it never did, or without byte counters.
    """
    steps = test.steps_to(target_error)
    return math.nan if math.isnan(steps) else comm.at_steps(steps, which)


def comm_columns(test: curves.Curve, comm: curves.Comm, target_error: float) -> dict:
    """Bytes per client to the target and in all (sent, received, their sum)."""
    out = {}
    for which in ("sent", "received", "total"):
        out[f"bytes_{which}_to_{target_error:g}"] = bytes_to(test, comm, target_error, which)
    for which in ("sent", "received", "total"):
        last = getattr(comm, which)
        out[f"bytes_{which}_final"] = float(last[-1]) if last.size else math.nan
    return out


# Columns that identify a setting rather than measure it.
_KEYS = ("variant", "clients", "n_sync", "warm_start", "steps_per_client", "minibatches")


def by_setting(rows: Sequence[dict]) -> list[dict]:
    """One row per (variant, clients, n_sync): the seeds' mean, min and max of each measurement."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["variant"], r["clients"], r["n_sync"]), []).append(r)
    out = []
    for group in groups.values():
        first = group[0]
        prefix = f"{first['variant']}_" if first["variant"] else ""
        row_out = {"setting": f"{prefix}clients{first['clients']}_nsync{first['n_sync']}"}
        row_out.update({k: first[k] for k in _KEYS})
        row_out["seeds"] = len(group)
        for key in first:
            if key in _KEYS or key in ("cell", "seed") or isinstance(first[key], bool):
                continue
            # A run that never reached a target error has NaN there: the
            # mean is over the runs that did (the count is in `reached`).
            values = [float(r[key]) for r in group if not math.isnan(float(r[key]))]
            if key.startswith(("steps_to_", "seconds_to_", "bytes_")) and "_to_" in key:
                row_out[f"{key}_reached"] = f"{len(values)}/{len(group)}"
            mean = sum(values) / len(values) if values else math.nan
            row_out[key] = mean
            row_out[f"{key}_min"] = min(values) if values else math.nan
            row_out[f"{key}_max"] = max(values) if values else math.nan
        out.append(row_out)
    return out


def _fmt(value) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:.4f}" if abs(value) < 10 else f"{value:.0f}"
    return str(value)


def _write_csv(rows: Sequence[dict], path: str) -> None:
    columns = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows(rows)


def write(rows: Sequence[dict], workdir: str, title: str) -> tuple[str, str]:
    """Writes the tables into ``workdir``; returns the paths of (summary.csv, summary.md).

    ``summary.csv`` has one row per cell, ``summary_by_setting.csv`` one per
    setting (mean, min and max over seeds), and ``summary.md`` both tables.
    """
    csv_path = os.path.join(workdir, "summary.csv")
    _write_csv(rows, csv_path)
    settings = by_setting(rows)
    _write_csv(settings, os.path.join(workdir, "summary_by_setting.csv"))
    md_path = os.path.join(workdir, "summary.md")
    with open(md_path, "w") as f:
        f.write(markdown_by_setting(settings, f"{title}: mean over seeds [min, max]"))
        f.write("\n")
        f.write(markdown(rows, f"{title}: every run"))
    return csv_path, md_path


def markdown_by_setting(settings: Sequence[dict], title: str) -> str:
    """The per-setting rows as a Markdown table, each measurement as ``mean [min, max]``."""
    measured = [
        k
        for k in settings[0]
        if k not in ("setting", "seeds", *_KEYS) and not k.endswith(("_min", "_max", "_reached"))
    ]
    columns = ["setting", "seeds", "minibatches", *measured]
    lines = [f"### {title}", "", "| " + " | ".join(columns) + " |"]
    lines.append("|" + "|".join("---" for _ in columns) + "|")
    for r in settings:
        cells = []
        for c in columns:
            text = _fmt(r[c])
            if c in measured and r["seeds"] > 1:
                text += f" [{_fmt(r[c + '_min'])}, {_fmt(r[c + '_max'])}]"
            reached = r.get(f"{c}_reached")
            if reached and reached != f"{r['seeds']}/{r['seeds']}":
                text += f" ({reached} reached)"
            cells.append(text)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def markdown(rows: Sequence[dict], title: str) -> str:
    """The rows as a Markdown table under a heading."""
    columns = list(dict.fromkeys(k for r in rows for k in r))
    lines = [f"### {title}", "", "| " + " | ".join(columns) + " |"]
    lines.append("|" + "|".join("---" for _ in columns) + "|")
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r.get(c, "")) for c in columns) + " |")
    return "\n".join(lines) + "\n"
