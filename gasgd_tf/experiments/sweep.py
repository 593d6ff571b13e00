"""Sweeps: a grid of training runs ("cells") over one experiment config.

An experiment config (configs/exp*.py) is a training config plus two extra
fields the sweep consumes:

  ``sweep``: ``clients``, ``n_sync`` and ``seeds`` (the grid: every
    combination is one cell; the seed sets the data order and dropout, and
    the initial weights of a cold start), optionally ``variants`` (named
    sets of config changes, one more axis),
    ``pretrain_steps`` (> 0: first train one worker that long and warm-start
    every cell from its checkpoint, the paper's warm start),
    ``concurrency`` (cells run at once), ``smoke_steps`` (steps per client
    when ``smoke``), optionally ``parts`` (named sub-grids, see below) and
    ``smoke_values`` (how many of the smallest values of each axis a smoke
    run keeps; default 2).
  ``smoke``: a tiny version of the grid (the ``smoke_values`` smallest
    values of the clients and n_sync axes, the first seed, ``smoke_steps``
    steps) to check the whole pipeline in minutes.

``sweep.parts`` (optional) runs several grids in one sweep: each entry
names its own ``clients``, ``n_sync``, ``seeds`` and ``variants`` (any it
leaves out are the sweep's) and ``changes``, config changes for all of its
cells (e.g. another data set); its cells' variants are prefixed with its
``label`` (default: the part's name), e.g.
``mnist5k_diloco_clients4_nsync50_seed0``. Two parts with one label (""
for no prefix) make one grid, e.g. more seeds for some of its cells.
``smoke: False`` leaves a part out of smoke runs. Parts run by ``order``
(default 0), then by name (ml_collections sorts a config's keys).

Each cell is an ordinary run in ``<workdir>/<cell>/`` started as its own
``gasgd_tf.main`` process from a resolved config.json, so a cell can be
rerun by hand with ``--config_json``. A cell whose ``summary.json`` exists
and whose ``config.json`` equals the requested config is skipped, which
makes an interrupted sweep resume where it stopped.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from typing import TextIO

import ml_collections

from gasgd_tf import config_base, launch, layout, progress

PRETRAIN = "pretrain"


@dataclasses.dataclass(frozen=True)
class Cell:
    """One run of a sweep.

    Attributes:
      name: Its subfolder, e.g. ``clients4_nsync10_seed0``.
      config: The resolved training config.
      clients: Number of workers.
      n_sync: The paper's n_sync (n_push = n_fetch).
      seed: ``config.seed``.
      variant: The name of the ``sweep.variants`` entry it applies, or "";
        prefixed with its part's name (``<part>_<variant>``) in a sweep of parts.
      part: The label of the ``sweep.parts`` entry it belongs to (the
        prefix of its variant), or "" (no parts, or a part without one).
    """

    name: str
    config: ml_collections.ConfigDict
    clients: int
    n_sync: int
    seed: int = 0
    variant: str = ""
    part: str = ""

    @property
    def setting(self) -> str:
        """The cell's name without its seed: the cells of one setting differ only in seed."""
        prefix = f"{self.variant}_" if self.variant else ""
        return f"{prefix}clients{self.clients}_nsync{self.n_sync}"

    @property
    def config_json(self) -> str:
        return config_base.to_json(self.config)


def split_experiment(
    config: ml_collections.ConfigDict,
) -> tuple[ml_collections.ConfigDict, ml_collections.ConfigDict, bool]:
    """Separates an experiment config into (training base, sweep, smoke).

    Raises:
      ValueError: The config has no ``sweep`` section, or a bad grid.
    """
    if "sweep" not in config:
        raise ValueError("an experiment config needs a `sweep` section (see configs/exp2*.py)")
    sweep = ml_collections.ConfigDict(config.sweep.to_dict())
    smoke = bool(config.get("smoke", False))
    fields = {k: v for k, v in config.to_dict().items() if k not in ("sweep", "smoke")}
    base = config_base.from_dict(fields, source="the experiment config")
    for part, grid in parts(sweep).items():
        _check_axes(grid, f"sweep.parts.{part}." if part else "sweep.")
    concurrency = sweep.concurrency
    if not isinstance(concurrency, int) or isinstance(concurrency, bool) or concurrency < 1:
        raise ValueError(
            f"invalid config: sweep.concurrency must be an integer >= 1, got {concurrency!r}"
        )
    if smoke:
        keep = sweep.get("smoke_values", 2)
        if sweep.get("parts"):
            sweep.parts = {k: v for k, v in sweep.parts.items() if v.get("smoke", True)}
        for grid in [sweep, *(sweep.get("parts") or {}).values()]:
            for axis in ("clients", "n_sync"):
                if axis in grid:
                    grid[axis] = tuple(sorted(grid[axis])[:keep])
            if "seeds" in grid:
                grid.seeds = tuple(grid.seeds)[:1]
            if "num_steps" in grid.get("changes", {}):
                grid.changes.num_steps = min(grid.changes.num_steps, sweep.smoke_steps)
        base.num_steps = min(base.num_steps, sweep.smoke_steps)
        sweep.pretrain_steps = min(sweep.pretrain_steps, sweep.smoke_steps)
        base.eval.every_secs = min(base.eval.every_secs, 1.0)
    return base, sweep, smoke


def _check_axes(grid, where: str) -> None:
    """The clients, n_sync and seeds of a grid: distinct integers, at least 1 (seeds: 0)."""
    for axis, low in (("clients", 1), ("n_sync", 1), ("seeds", 0)):
        values = tuple(grid[axis])
        if not values or not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= low for v in values
        ):
            raise ValueError(
                f"invalid config: {where}{axis} must be integers >= {low}, got {values}"
            )
        if len(set(values)) != len(values):
            raise ValueError(f"invalid config: {where}{axis} repeats a value: {values}")


def parts(sweep) -> dict[str, dict]:
    """The sweep's grids by part name: ``sweep.parts`` with the sweep's axes filled in.

    A sweep without parts is one grid named "". Each grid has ``clients``,
    ``n_sync``, ``seeds``, ``variants``, ``changes``, ``label``, ``smoke`` and ``order``.
    """
    named = sweep.get("parts") or {"": {}}
    out = {}
    for name, part in named.items():
        grid = {k: sweep.get(k) for k in ("clients", "n_sync", "seeds", "variants")}
        grid.update({"label": name, "changes": {}, "smoke": True, "order": 0})
        grid.update(dict(part))
        grid["variants"] = dict(grid["variants"] or {"": {}})
        out[name] = grid
    return dict(sorted(out.items(), key=lambda item: item[1]["order"]))


def _cell_config(base, variant: str = "", changes=(), **fields) -> ml_collections.ConfigDict:
    """A copy of ``base`` with each of ``changes`` (in order) and the cell's ``fields``, finalized.

    Args:
      base: The training config.
      variant: What the changes are called, for errors.
      changes: Config changes (nested dicts), e.g. a part's then a variant's.
      **fields: The cell's own fields, applied last.

    Raises:
      ValueError: ``changes`` name a field that does not exist (a misspelt
        variant must fail, not add a field).
    """
    config = ml_collections.ConfigDict(base.to_dict())
    config.lock()
    if isinstance(changes, dict):
        changes = (changes,)
    try:
        for change in changes:
            config.update(dict(change or {}))
    except (KeyError, AttributeError) as e:
        raise ValueError(f"invalid config: {variant}: unknown field {e}") from None
    config.update(fields)
    return config_base.finalize(config)


def pretrain_cell(base, sweep) -> Cell:
    """The single worker that the warm-start cells start from."""
    config = _cell_config(
        base,
        name=PRETRAIN,
        num_workers=1,
        num_steps=sweep.pretrain_steps,
        n_sync=1,
        n_push=None,
        n_fetch=None,
        warm_start=None,
    )
    return Cell(PRETRAIN, config, 1, 1)


def grid_cells(base, sweep, warm_start: str | None) -> list[Cell]:
    """Every (part, variant, clients, n_sync, seed) of the grid, seeds varying slowest.

    ``sweep.variants`` (optional) names sets of config changes compared
    side by side, e.g. ``{"lr_scale": {"ps": {"staleness": "lr_scale"}}}``;
    a variant's name prefixes its cells' names. Variants run in name order
    (ml_collections keeps the keys of a config sorted). ``sweep.parts``
    (optional): several such grids, see the module docstring.

    Seeds vary slowest (within each part; parts run one after the other),
    so that an interrupted sweep already holds whole grids of the first seeds.

    Args:
      base: The training config every cell starts from.
      sweep: The ``sweep`` section.
      warm_start: The checkpoint file every cell starts from (an absolute
        path to one file, as the launcher pins it, so that ``is_done``
        compares like with like), or None for a cold start.
    """
    cells = []
    for part, grid in parts(sweep).items():
        for seed in grid["seeds"]:
            for variant, overrides in grid["variants"].items():
                label = "_".join(x for x in (grid["label"], variant) if x)
                for n_sync in grid["n_sync"]:
                    for clients in sorted(grid["clients"]):
                        name = f"{label}_" if label else ""
                        name += f"clients{clients}_nsync{n_sync}_seed{seed}"
                        config = _cell_config(
                            base,
                            f"sweep.parts.{part}.variants.{variant}"
                            if part
                            else f"sweep.variants.{variant}",
                            (grid["changes"], overrides),
                            name=name,
                            seed=seed,
                            num_workers=clients,
                            n_sync=n_sync,
                            n_push=None,
                            n_fetch=None,
                            warm_start=warm_start,
                        )
                        cell = Cell(name, config, clients, n_sync, seed, label, grid["label"])
                        cells.append(cell)
    return cells


def _same_config(cell: Cell, folder: str) -> bool:
    """Whether the run last started in ``folder`` had exactly this cell's config."""
    written = progress.read_json(layout.config_path(folder))
    if written is None:
        return False
    # How a run was started (its id, whether it resumed) is not part of the experiment.
    ignore = ("run_id", "restore")
    return not config_base.differences(written, json.loads(cell.config_json), ignore=ignore)


def is_done(cell: Cell, workdir: str) -> bool:
    """Whether the cell finished before with exactly this config."""
    folder = os.path.join(workdir, cell.name)
    summary = progress.read_json(layout.summary_path(folder))
    return summary is not None and _same_config(cell, folder)


def _pump(stream, prefix: str, log_path: str, out: TextIO, lock: threading.Lock) -> None:
    """Copies a cell's output to its log and, prefixed, to ``out``, until the pipe closes.

    The pipe is always drained, whatever happens to ``out`` (closed by
    ``| head``, say): a launcher blocked on a full pipe would never finish.
    """
    with open(log_path, "w") as log:
        for line in stream:
            log.write(line)
            log.flush()
            try:
                with lock:
                    out.write(f"[{prefix}] {line}")
                    out.flush()
            except (OSError, ValueError):
                pass  # The log keeps everything; the console is a courtesy.


class CellFailed(RuntimeError):
    pass


@dataclasses.dataclass
class _Running:
    cell: Cell
    process: subprocess.Popen
    pump: threading.Thread
    started: float


def _start(cell: Cell, workdir: str, out: TextIO, lock: threading.Lock) -> _Running:
    folder = os.path.join(workdir, cell.name)
    os.makedirs(folder, exist_ok=True)
    request = os.path.join(folder, "request.json")
    # An interrupted cell resumes from its checkpoints; a cell whose config
    # changed since (another grid) starts afresh (its old checkpoints stay).
    resume = [] if _same_config(cell, folder) else ["--norestore"]
    with open(request, "w") as f:
        f.write(cell.config_json)
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gasgd_tf.main",
            f"--config_json={request}",
            f"--workdir={folder}",
            *resume,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        bufsize=1,
        # The launcher (and through it every process of the cell) dies with
        # this process, even if it is SIGKILLed (gasgd_tf/launch.py).
        env={**os.environ, launch.PARENT_PID_ENV: str(os.getpid())},
    )
    pump = threading.Thread(
        target=_pump,
        args=(process.stdout, cell.name, os.path.join(folder, "sweep.log"), out, lock),
        daemon=True,
    )
    pump.start()
    return _Running(cell, process, pump, time.monotonic())


def _stop(running: Sequence[_Running], grace_secs: float = 30.0) -> None:
    """SIGINT to every cell's launcher (it stops its own processes), SIGKILL if it lingers."""
    launch.stop_processes([r.process for r in running], grace_secs, signal.SIGINT)
    for r in running:
        r.pump.join(timeout=5)


def run_cells(
    cells: Sequence[Cell], workdir: str, concurrency: int = 1, out: TextIO = sys.stdout
) -> list[str]:
    """Runs the cells not done yet, at most ``concurrency`` at a time.

    Each cell's launcher output goes to ``<workdir>/<cell>/sweep.log`` and,
    prefixed with the cell name, to ``out``. On Ctrl-C or SIGTERM every
    running cell is stopped (its launcher stops its processes) before
    ``KeyboardInterrupt`` propagates; the finished cells stay finished.

    Returns:
      The names of the cells that ran (the others were done already).

    Raises:
      ValueError: ``concurrency`` < 1, or two cells share a name.
      CellFailed: A cell's launcher exited with an error; the cells already
        running are finished first, no new ones start.
    """
    if not isinstance(concurrency, int) or concurrency < 1:
        raise ValueError(f"concurrency must be an integer >= 1, got {concurrency!r}")
    names = [c.name for c in cells]
    if len(set(names)) != len(names):
        raise ValueError(f"cells share a name: {sorted(n for n in names if names.count(n) > 1)}")
    todo = [c for c in cells if not is_done(c, workdir)]
    lock = threading.Lock()

    def say(line: str) -> None:
        with lock:
            out.write(f"[sweep] {line}\n")
            out.flush()

    for cell in cells:
        if cell not in todo:
            say(f"{cell.name}: done before, skipped")
    running: list[_Running] = []
    failed: list[str] = []
    ran = []
    queue = list(todo)
    previous_term = signal.getsignal(signal.SIGTERM)
    previous_int = signal.getsignal(signal.SIGINT)
    if threading.current_thread() is threading.main_thread():
        # Also when started with SIGINT ignored (a background job), as the launcher does.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        while queue or running:
            while queue and len(running) < concurrency and not failed:
                cell = queue.pop(0)
                say(f"{cell.name}: starting ({len(ran) + 1} of {len(todo)})")
                running.append(_start(cell, workdir, out, lock))
                ran.append(cell.name)
            for r in list(running):
                if r.process.poll() is None:
                    continue
                r.pump.join()
                running.remove(r)
                if r.process.returncode == 0:
                    say(f"{r.cell.name}: finished in {time.monotonic() - r.started:.0f}s")
                else:
                    failed.append(r.cell.name)
                    say(f"{r.cell.name}: FAILED (exit {r.process.returncode})")
            if failed and not running:
                queue.clear()
            time.sleep(0.2)
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # A second Ctrl-C must not cut this short.
        say(f"interrupted: stopping {len(running)} running cell(s)")
        _stop(running)
        raise
    finally:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, previous_term)
            signal.signal(signal.SIGINT, previous_int)
    if failed:
        raise CellFailed(
            f"cells failed: {', '.join(failed)}; see their sweep.log under {workdir}; "
            "rerun the same command to resume (finished cells are skipped)"
        )
    return ran


def _raise_interrupt(*_) -> None:
    raise KeyboardInterrupt


def discover(workdir: str) -> list[Cell]:
    """The finished cells under ``workdir`` (folders with config.json and summary.json)."""
    cells = []
    for name in sorted(os.listdir(workdir)) if os.path.isdir(workdir) else []:
        folder = os.path.join(workdir, name)
        config_path = layout.config_path(folder)
        if not (os.path.isfile(config_path) and os.path.isfile(layout.summary_path(folder))):
            continue
        with open(config_path) as f:
            config = config_base.from_json(f.read())
        variant = name.split("_clients")[0] if "_clients" in name else ""
        cells.append(Cell(name, config, config.num_workers, config.n_push, config.seed, variant))
    return sorted(cells, key=lambda c: (c.seed, c.n_sync, c.clients, c.name))
