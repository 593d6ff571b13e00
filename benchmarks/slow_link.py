"""B7: time to accuracy on a slow link: gasgd_tf's modes, one worker alone and TensorFlow's PSS.

Every row is one whole training run of the same model on the same offline
data (``configs/default.py``: the digits CNN, 151,306 parameters, on
scikit-learn's digits, batch 32, 2 workers x ``num_steps`` steps), each in
its own network namespace whose ``lo`` is shaped by ``benchmarks/network.py``:
what the server receives and what it sends each get ``--rate`` (an htb
class per direction, u32 filters on the server's port; everything else is
fast). The rows are ``ROWS`` below (config file and ``--config`` overrides),
run one after another:

* one worker with no server at all (``worker.train`` with no address, the
  no-communication baseline of ``benchmarks/worker_throughput.py``), with
  SGD at Downpour's server learning rate and momentum: the update Downpour
  applies with one worker at ``n_sync = 1``, without the communication;
  its final accuracy and time are the target and the reference; a second
  single worker with DiLoCo's inner AdamW, for context;
* Downpour (``configs/default.py``) at ``n_sync = 1`` and at each
  ``--n_sync`` (the best of those is marked);
* DiLoCo (``configs/diloco.py``, H = 50) with float32, int8, int4 and
  top-k (1%) pushes; streaming DiLoCo with 4 fragments (a row whose config
  fields this version refuses is shown as skipped, with the error);
* TensorFlow's ParameterServerStrategy training the same model, data,
  workers and batch (``benchmarks.tf_ps.train_to_accuracy``), its ps's port
  filtered like the server's.

The rate (``--rate=auto``): the largest two-digit rate at which one float32
sync of the model (a push to the server, then a fetch from it, 4 bytes per
parameter each way) takes at least ``SYNC_COST_STEPS`` (50) steps of the
single worker, whose step time the first row measures here.

Time to accuracy: the target is the single worker's final test accuracy;
each row's time is from its first training step (start-up, TensorFlow's
import and tracing excluded) to the first evaluation at or above it. Test
accuracy over time: the single worker's weights every 10 steps (copied in
memory, evaluated after the run); gasgd_tf's server checkpoints, written
every second (``ps.checkpoint_every_secs``) and evaluated after the run, so
that no evaluation crosses the slow link or takes a core during training
(the evaluator evaluates only the first and the final parameters); a
checkpoint's time is when it was written, or the end of training for the
final parameters; TensorFlow's coordinator every ``eval_every`` steps, with
its clock paused while it evaluates. Bytes per client: gasgd_tf's client
payload counters (pushes without the initial weights offer, where the first
progress report comes before the first push; fetches); "wire" is what each
htb class carried, all clients, TCP/IP headers included.

Targets (reported, never asserted): the best gasgd_tf mode reaches the
single worker's final accuracy in at most 0.6x its time; at least 5x
sooner than TensorFlow's strategy on the same link; int4 or top-k pushes
at least 7.5x fewer bytes than float32 DiLoCo, losing at most 0.5 points of
final accuracy.

Usage:
  python -m benchmarks.slow_link [--quick] [--rate=auto|40mbit] [--n_sync=10,50]
      [--num_steps=500] [--rows=single,downpour_1,...] [--row_timeout_s=800]

Needs root, ``ip`` and ``tc`` (``benchmarks/network.py``). Runs' folders go
to ``runs/benchmarks/slow_link/`` (checkpoints deleted after evaluation
unless ``--keep_runs``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import statistics
import sys
import time
from collections.abc import Callable, Sequence

from benchmarks import common, network

NAME = "slow_link"
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORK_DIR = os.path.join(REPO_ROOT, "runs", "benchmarks", NAME)

BASE = "configs/default.py"
DILOCO = "configs/diloco.py"
STREAMING = "configs/streaming_diloco.py"
SYNC_COST_STEPS = 50  # One float32 push + fetch costs at least this many local steps.
LOG_EVERY_STEPS = 10  # Worker reports, and the single worker's weight copies.
NUM_STEPS = 500  # Per worker (configs/default.py's).
QUICK_STEPS = 100
ROW_TIMEOUT_S = 800.0
QUICK_ROW_TIMEOUT_S = 240.0
N_SYNCS = (10, 50)
TF_PORTS = (network.SERVER_PORT + 10, network.SERVER_PORT + 11)  # Workers: not filtered.
_TAG = "SLOW_LINK_RESULT "

# Every gasgd_tf run: checkpoints every second for the accuracy over time;
# the evaluator only at the start and the end, so that its fetches stay off the link.
COMMON_OVERRIDES = (
    f"--config.worker.log_every_steps={LOG_EVERY_STEPS}",
    "--config.ps.checkpoint_every_secs=1",
    "--config.ps.keep_checkpoints=1000000",
    "--config.eval.every_secs=1000000",
)

# The rows: (key, label, kind, config file, --config overrides). kind: "local"
# (one worker, no server), "gasgd" (python -m gasgd_tf.main), "tf" (PSS).
# "{n}" rows are repeated for each --n_sync value.
ROWS: tuple[tuple[str, str, str, str, tuple[str, ...]], ...] = (
    # Downpour's server update (lr 0.02, momentum 0.9) as the worker's own optimizer.
    ("single", "1 worker, no server", "local", BASE, ("--config.worker.momentum=0.9",)),
    # For context only (the target is the row above): DiLoCo's inner optimizer alone.
    ("single_adamw", "1 worker, no server, AdamW", "local", DILOCO, ()),
    ("downpour_1", "Downpour n_sync=1", "gasgd", BASE, ()),
    ("downpour_{n}", "Downpour n_sync={n}", "gasgd", BASE, ("--config.n_sync={n}",)),
    ("diloco", "DiLoCo H=50 float32", "gasgd", DILOCO, ()),
    ("diloco_int8", "DiLoCo + int8", "gasgd", DILOCO, ("--config.client.push_codec=int8",)),
    ("diloco_int4", "DiLoCo + int4", "gasgd", DILOCO, ("--config.client.push_codec=int4",)),
    (
        "diloco_topk",
        "DiLoCo + top-k 1%",
        "gasgd",
        DILOCO,
        ("--config.client.push_codec=topk", "--config.client.topk_fraction=0.01"),
    ),
    (
        "streaming_f4",
        "streaming DiLoCo F=4",
        "gasgd",
        DILOCO,
        (
            "--config.sync.fragments=4",
            "--config.sync.overlap_steps=5",
            "--config.sync.mix_alpha=0.5",
        ),
    ),
    # The whole recipe: 4 fragments, int4 pushes and bfloat16 fetches.
    ("streaming_recipe", "streaming DiLoCo F=4 + int4 + bfloat16 fetch", "gasgd", STREAMING, ()),
    ("tensorflow", "TensorFlow ParameterServerStrategy", "tf", BASE, ()),
)


@dataclasses.dataclass(frozen=True)
class Row:
    """One run of the table."""

    key: str
    label: str
    kind: str
    config: str
    overrides: tuple[str, ...]


def expand_rows(n_syncs: Sequence[int], only: Sequence[str] | None = None) -> list[Row]:
    """``ROWS`` with each ``{n}`` row once per ``n_syncs`` value, keeping those named in ``only``.

    Raises:
      ValueError: ``only`` names a row that does not exist.
    """
    rows = []
    for key, label, kind, config, overrides in ROWS:
        values = n_syncs if "{n}" in key else [None]
        for n in values:
            fill = (lambda s, n=n: s.format(n=n)) if n is not None else (lambda s: s)
            rows.append(Row(fill(key), fill(label), kind, config, tuple(map(fill, overrides))))
    if only:
        unknown = sorted(set(only) - {r.key for r in rows})
        if unknown:
            raise ValueError(f"unknown rows {unknown}; choose from {[r.key for r in rows]}")
        rows = [r for r in rows if r.key in only]
    return rows


# -- Pure parts (tested) -------------------------------------------------------------


def time_to_accuracy(series: Sequence[dict], target: float) -> float | None:
    """The first ``t`` whose ``accuracy`` is at least ``target``; None if never.

    Args:
      series: Dicts with ``t`` (seconds) and ``accuracy``, in any order.
      target: The accuracy to reach.
    """
    for point in sorted(series, key=lambda p: p["t"]):
        # Accuracies are counts / examples: equal values must compare equal.
        if point["accuracy"] >= target - 1e-9:
            return max(point["t"], 0.0)
    return None


def choose_rate(params: int, step_s: float, steps: int = SYNC_COST_STEPS) -> int:
    """The largest rate, two significant digits, where a float32 sync costs >= ``steps`` steps.

    A sync pushes 4 bytes per parameter to the server and then fetches as
    many from it, each direction at the rate: 2 x 32 x params bits in all.

    Returns:
      Bits per second.
    """
    exact = 2 * 32 * params / (steps * step_s)
    digits = 10 ** max(int(math.floor(math.log10(exact))) - 1, 0)
    return int(exact // digits * digits)


def sync_cost_steps(params: int, rate_bps: int, step_s: float) -> float:
    """How many local steps one float32 push + fetch takes at ``rate_bps`` each way."""
    return 2 * 32 * params / rate_bps / step_s


def refusal(returncode: int | None, error: str | None) -> str | None:
    """ "skipped: <why>" for a run that refused its command line (exit 2); else None."""
    if returncode == 2:
        return f"skipped: {(error or 'the run refused its command line').removeprefix('error: ')}"
    return None


# -- Running the rows ----------------------------------------------------------------


def _say(key: str) -> Callable[[str], None]:
    return lambda line: print(f"[{key}] {line}", flush=True)


def resolve_config(args: Sequence[str]):
    """The finalized config of ``--config=FILE --config.X=Y ...``, as gasgd_tf.main makes it."""
    from absl import flags
    from ml_collections import config_flags

    from gasgd_tf import config_base

    values = flags.FlagValues()
    argv = ["slow_link", *args]
    # ml_collections defines a flag for each --config.X override it finds in sys_argv.
    config_flags.DEFINE_config_file("config", None, "config file", values, sys_argv=argv)
    values(argv)
    config = values.config
    config.unlock()
    for field in ("sweep", "smoke"):  # An experiment config runs as its base setting.
        if field in config:
            del config[field]
    return config_base.finalize(config)


def _write_config(args: Sequence[str], workdir: str) -> tuple[str, object]:
    from gasgd_tf import config_base, layout

    config = resolve_config(args)
    os.makedirs(workdir, exist_ok=True)
    path = layout.config_path(workdir)
    with open(path, "w") as f:
        f.write(config_base.to_json(config))
    return path, config


def _child(mode: str, spec: dict, timeout_s: float, ns: network.Namespace | None = None) -> dict:
    """Runs ``python -m benchmarks.slow_link --<mode>=JSON`` (inside ``ns``); returns its result."""
    argv = [sys.executable, "-m", "benchmarks.slow_link", f"--{mode}={json.dumps(spec)}"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    if ns is not None:
        result = ns.run(argv, timeout_s=timeout_s, cwd=REPO_ROOT, env=env)
    else:
        result = network.run_command(argv, timeout_s, cwd=REPO_ROOT, env=env)
    for line in result.stdout.splitlines():
        if result.returncode == 0 and line.startswith(_TAG):
            return json.loads(line[len(_TAG) :])
    why = "timed out" if result.timed_out else f"exit {result.returncode}"
    raise RuntimeError(f"slow_link --{mode} failed ({why}):\n{result.stderr[-3000:]}")


def run_local(row: Row, args: list[str], workdir: str, timeout_s: float) -> dict:
    """The single worker with no server, in an unshaped namespace (it sends nothing)."""
    config_json, config = _write_config(args, workdir)
    start = time.monotonic()
    with network.shaped_namespace(None, None) as ns:
        out = _child("local", {"config_json": config_json, "workdir": workdir}, timeout_s, ns)
    return dict(out, status="ok", wall_s=time.monotonic() - start, num_workers=1)


def run_tf(row: Row, args: list[str], workdir: str, rate: int, timeout_s: float) -> dict:
    """TensorFlow's PSS on the same config, its ps's port filtered like the server's."""
    from benchmarks import tf_ps

    config_json, config = _write_config(args, workdir)
    total = config.num_workers * config.num_steps
    start = time.monotonic()
    workers = list(TF_PORTS[: config.num_workers])
    # The ps pulls the gradients from the workers' ports (RecvTensor): shaped as pushes.
    with network.shaped_namespace(rate, rate, [network.SERVER_PORT], pull_ports=workers) as ns:
        out = tf_ps.train_to_accuracy(
            config_json,
            ps_port=network.SERVER_PORT,
            worker_ports=workers,
            eval_every_steps=max(10, total // 40),
            deadline_s=timeout_s,
            command_prefix=ns.command([]),
            say=_say(row.key),
        )
        wire = ns.class_bytes()
    status = "timed out" if out["timed_out"] else "ok"
    return dict(
        out,
        status=status,
        wall_s=time.monotonic() - start,
        wire=wire,
        num_workers=config.num_workers,
    )


def run_gasgd(row: Row, args: list[str], workdir: str, rate: int, timeout_s: float) -> dict:
    """One ``gasgd_tf.main`` run in a shaped namespace; its checkpoints evaluated after."""
    with network.shaped_namespace(rate, rate, [network.SERVER_PORT]) as ns:
        run = network.run_training(ns, args, workdir, timeout_s, say=_say(row.key))
    skipped = refusal(run.returncode, run.error)
    if skipped:
        return {"status": skipped, "wall_s": run.wall_s}
    status = "timed out" if run.timed_out else "ok"
    if run.returncode not in (0, None):
        status = f"failed: {run.error or f'exit {run.returncode}'}"
    result = {"status": status, "wall_s": run.wall_s, "wire": run.class_bytes, "ports": run.ports}
    try:
        result.update(_gasgd_outcome(workdir))
    except (RuntimeError, FileNotFoundError, KeyError, IndexError) as e:
        result["status"] = f"failed: {status}; no results to read: {e}"
    if run.summary:
        result["summary_test_accuracy"] = run.summary.get("test_accuracy")
    return result


def _gasgd_outcome(workdir: str) -> dict:
    """Accuracy over time (checkpoints), training span and bytes of a finished run."""
    from gasgd_tf import config_base, layout, progress

    with open(layout.config_path(workdir)) as f:
        config = config_base.from_json(f.read())
    workers = [_worker_times(workdir, i, config) for i in range(config.num_workers)]
    t0 = min(w["start"] for w in workers)
    ends = [w["end"] for w in workers]
    # A run stopped early has no end: its checkpoints keep their own times.
    t_end = max(ends) if None not in ends else math.inf
    points = _child("evaluate", {"workdir": workdir}, 600.0)["points"]
    # A checkpoint written after training ended holds parameters that existed at its end.
    series = [
        dict(t=min(p["saved_unix"], t_end) - t0, version=p["version"], accuracy=p["accuracy"])
        for p in points
    ]
    final = progress.read_json(layout.progress_path(workdir, layout.EVAL)) or {}
    return {
        "series": sorted(series, key=lambda p: p["t"]),
        "final_accuracy": max(points, key=lambda p: p["saved_unix"])["accuracy"],
        "evaluator_final_accuracy": final.get("accuracy"),
        "train_s": t_end - t0 if math.isfinite(t_end) else None,
        "num_workers": config.num_workers,
        "push_bytes": [w["push_bytes"] for w in workers],
        "fetch_bytes": [w["bytes_received"] for w in workers],
        "init_offer_bytes": [w["init_offer_bytes"] for w in workers],
    }


def _worker_times(workdir: str, index: int, config) -> dict:
    """A worker's first-step time (Unix), end, and bytes, from its events and progress file.

    Its first ``train/images_per_sec`` point covers the steps since its loop
    started: start = that point's time - steps x batch / images_per_sec.
    """
    from gasgd_tf import layout, progress
    from gasgd_tf.experiments import events

    role = layout.worker(index)
    scalars = events.read_scalars(layout.tensorboard_dir(workdir, role))
    first = scalars["train/images_per_sec"][0]
    start = first.wall_time - first.step * config.batch_size / first.value
    done = progress.read_json(layout.progress_path(workdir, role)) or {}
    end = start + done["wall_secs"] if done.get("done") else None
    sent = done.get("bytes_sent", 0)
    # Before the first push, what was sent is the initial weights offer (if this worker made one).
    offer = scalars["comm/bytes_sent"][0].value if first.step < config.n_push else None
    return {
        "start": start,
        "end": end,
        "push_bytes": sent - offer if offer is not None else sent,
        "init_offer_bytes": offer,
        "bytes_received": done.get("bytes_received", 0),
    }


# -- The children ----------------------------------------------------------------------


def _local_child(spec: dict) -> dict:
    """One worker trains alone; its weights are copied every report and evaluated after."""
    from gasgd_tf import config_base, evaluation, worker
    from gasgd_tf.data import pipeline

    with open(spec["config_json"]) as f:
        config = config_base.from_json(f.read())
    # worker.train(address=None)'s own loop; _WorkerRun is used directly to copy
    # the weights at each report (a report action), which train() has no hook for.
    run = worker._WorkerRun(config, 0, None, spec["workdir"])
    run.join()
    run.reporter.actions.append(lambda r: copies.append((time.time(), r.step, run.sync.read())))
    started, start = time.time(), time.perf_counter()
    copies = [(started, 0, run.sync.read())]
    last = run.loop()
    result = run.finish(last, start)
    evaluate = evaluation.Evaluator(
        run.model, pipeline.eval_dataset(config.data, config.eval.batch_size)
    )
    series = []
    for when, step, flat in copies:
        run.sync.assign(flat)
        accuracy, loss, _, _ = evaluate()
        series.append(dict(t=when - started, steps=step, accuracy=accuracy, loss=loss))
    return dict(
        params=int(run.model.count_params()),
        series=series,
        final_accuracy=series[-1]["accuracy"],
        train_s=result.wall_secs,
        steps=result.steps,
        step_s=result.wall_secs / result.steps,
    )


def _evaluate_child(spec: dict) -> dict:
    """Test accuracy of every checkpoint of an unsharded run."""
    from gasgd_tf import checkpoints, config_base, evaluation, layout, worker
    from gasgd_tf.data import pipeline
    from gasgd_tf.keras_sync import VariableSync

    workdir = spec["workdir"]
    with open(layout.config_path(workdir)) as f:
        config = config_base.from_json(f.read())
    model = worker.build(config)
    sync = VariableSync(model.trainable_variables)
    evaluate = evaluation.Evaluator(
        model, pipeline.eval_dataset(config.data, config.eval.batch_size)
    )
    points = []
    for path in checkpoints.shard_files(layout.checkpoint_dir(workdir), None):
        checkpoint = checkpoints.read_file(path)
        sync.assign(checkpoints.flatten_for(checkpoint, sync.specs))
        accuracy, loss, _, _ = evaluate()
        points.append(
            dict(
                saved_unix=checkpoint.meta["saved_unix"],
                version=checkpoint.version,
                accuracy=accuracy,
                loss=loss,
            )
        )
    if not points:
        raise RuntimeError(f"no checkpoints in {layout.checkpoint_dir(workdir)}")
    return {"points": sorted(points, key=lambda p: p["saved_unix"])}


# -- The whole benchmark ------------------------------------------------------------------


def _row_args(row: Row, num_steps: int) -> list[str]:
    return [f"--config={row.config}", f"--config.num_steps={num_steps}"]


def run_row(row: Row, num_steps: int, rate: int | None, timeout_s: float, keep: bool) -> dict:
    """Runs one row in its own namespace; a failure becomes the row's status, never a crash."""
    workdir = os.path.join(WORK_DIR, time.strftime("%Y%m%d-%H%M%S") + f"_{row.key}")
    args = _row_args(row, num_steps) + list(COMMON_OVERRIDES) + list(row.overrides)
    print(f"[{row.key}] {row.label}: {' '.join(args)}", flush=True)
    base = {"key": row.key, "label": row.label, "kind": row.kind, "args": args, "workdir": workdir}
    try:
        if row.kind == "local":
            out = run_local(row, args, workdir, timeout_s)
        elif row.kind == "tf":
            out = run_tf(row, args, workdir, rate, timeout_s)
        else:
            out = run_gasgd(row, args, workdir, rate, timeout_s)
    except (RuntimeError, ValueError, OSError) as e:
        out = {"status": f"failed: {str(e).splitlines()[0] if str(e) else type(e).__name__}"}
        print(f"[{row.key}] failed:\n{e}", flush=True)
    if not keep:
        shutil.rmtree(os.path.join(workdir, "checkpoints"), ignore_errors=True)
    acc = out.get("final_accuracy")
    print(
        f"[{row.key}] {out['status']}; final accuracy "
        f"{'-' if acc is None else f'{acc:.4f}'}, {out.get('wall_s', 0):.0f} s",
        flush=True,
    )
    return {**base, **out}


def analyse(rows: list[dict]) -> dict:
    """Time to the single worker's final accuracy per row, the ratios and the three targets."""
    by_key = {r["key"]: r for r in rows}
    single, tf = by_key.get("single"), by_key.get("tensorflow")
    if not single or "final_accuracy" not in single:
        return {"target_accuracy": None, "targets": []}
    target = single["final_accuracy"]
    for r in rows:
        r["time_to_target"] = time_to_accuracy(r.get("series", []), target)
    ref = single["time_to_target"]
    tf_time = tf.get("time_to_target") if tf else None
    for r in rows:
        t = r["time_to_target"]
        r["x_single"] = t / ref if t is not None and ref else None
        r["x_tf"] = t / tf_time if t is not None and tf_time else None
    downpours = [r for r in rows if r["key"].startswith("downpour_") and r["key"] != "downpour_1"]
    best_downpour = _best(downpours)
    if best_downpour:
        best_downpour["best_downpour"] = True
    return {
        "target_accuracy": target,
        "targets": _targets(rows, single, tf),
    }


def _best(rows: list[dict]) -> dict | None:
    """The row that reached the target soonest; else the one with the best final accuracy."""
    reached = [r for r in rows if r.get("time_to_target") is not None]
    if reached:
        return min(reached, key=lambda r: r["time_to_target"])
    finished = [r for r in rows if r.get("final_accuracy") is not None]
    return max(finished, key=lambda r: r["final_accuracy"]) if finished else None


def _targets(rows: list[dict], single: dict, tf: dict | None) -> list[dict]:
    """The three targets: what was measured, and met / missed."""
    ours = [r for r in rows if r["kind"] == "gasgd"]
    best = _best(ours)
    out = []
    ref = single.get("time_to_target")
    if best and best.get("time_to_target") is not None and ref:
        ratio = best["time_to_target"] / ref
        verdict = common.verdict(ratio, 0.6, higher_is_better=False)
        measured = f"{best['label']}: {ratio:.2f}x the single worker's time"
    else:
        verdict, measured = "missed", "no gasgd_tf mode reached the single worker's accuracy"
    out.append(
        dict(
            target="best mode <= 0.6x the single worker's time", measured=measured, verdict=verdict
        )
    )
    out.append(_tf_target(best, tf))
    out.append(_codec_target(rows))
    return out


def _tf_target(best: dict | None, tf: dict | None) -> dict:
    name = "best mode >= 5x sooner than TensorFlow's PSS"
    if not best or best.get("time_to_target") is None or not tf or "series" not in tf:
        return dict(target=name, measured="not measured", verdict="-")
    ours = best["time_to_target"]
    if tf.get("time_to_target") is not None:
        speedup = tf["time_to_target"] / ours
        return dict(target=name, measured=f"{speedup:.2f}x", verdict=common.verdict(speedup, 5.0))
    # TensorFlow never reached it: its whole training time is a lower bound.
    bound = tf["train_s"] / ours
    verdict = "met" if bound >= 5.0 else f"unknown (TensorFlow did not reach it; >= {bound:.1f}x)"
    return dict(target=name, measured=f">= {bound:.2f}x (TensorFlow not there)", verdict=verdict)


def _codec_target(rows: list[dict]) -> dict:
    name = "int4 or top-k: >= 7.5x fewer push bytes than float32, <= 0.5 points lost"
    by_key = {r["key"]: r for r in rows}
    base = by_key.get("diloco")
    if not base or not base.get("push_bytes"):
        return dict(target=name, measured="float32 DiLoCo not measured", verdict="-")
    parts, met = [], False
    for key in ("diloco_int4", "diloco_topk"):
        r = by_key.get(key)
        if not r or not r.get("push_bytes"):
            continue
        fewer = statistics.mean(base["push_bytes"]) / statistics.mean(r["push_bytes"])
        lost = (base["final_accuracy"] - r["final_accuracy"]) * 100
        ok = fewer >= 7.5 and lost <= 0.5
        met = met or ok
        parts.append(f"{r['label']}: {fewer:.1f}x fewer, {lost:+.2f} points lost")
    if not parts:
        return dict(target=name, measured="not measured", verdict="-")
    return dict(target=name, measured="; ".join(parts), verdict="met" if met else "missed")


def run(
    quick: bool = False,
    rate: str = "auto",
    n_sync: Sequence[int] = N_SYNCS,
    num_steps: int | None = None,
    rows: Sequence[str] | None = None,
    row_timeout_s: float | None = None,
    keep_runs: bool = False,
    local: str | None = None,
    evaluate: str | None = None,
) -> dict | None:
    """Runs the rows one after another; returns the report."""
    if local is not None or evaluate is not None:  # A child: internal.
        out = _local_child(json.loads(local)) if local else _evaluate_child(json.loads(evaluate))
        print(_TAG + json.dumps(out), flush=True)
        return None
    reason = network.unavailable_reason()
    if reason is not None:
        raise SystemExit(f"error: python -m benchmarks.{NAME}: no shaped network here: {reason}")
    start = time.monotonic()
    steps = num_steps or (QUICK_STEPS if quick else NUM_STEPS)
    timeout_s = row_timeout_s or (QUICK_ROW_TIMEOUT_S if quick else ROW_TIMEOUT_S)
    table = expand_rows(n_sync, rows)
    if table[0].key != "single":
        table = expand_rows(n_sync, ["single"]) + table  # It sets the target (and the rate).
    results: list[dict] = []
    settings = {"num_steps": steps, "row_timeout_s": timeout_s, "sync_cost_steps": SYNC_COST_STEPS}
    for row in table:
        if row.kind != "local" and "rate_bps" not in settings:
            settings.update(_rate_settings(rate, results[0]))
            print(f"link: {settings['rate']} each way; {settings['why']}", flush=True)
        results.append(run_row(row, steps, settings.get("rate_bps"), timeout_s, keep_runs))
    analysis = analyse(results)
    command = "python -m benchmarks.slow_link" + (" --quick" if quick else "")
    return {
        "machine": common.machine_info(),
        "command": command + _flag_text(rate, n_sync, num_steps, rows, row_timeout_s),
        "settings": settings,
        "rows": results,
        **analysis,
        "total_s": time.monotonic() - start,
    }


def _rate_settings(rate: str, single: dict) -> dict:
    """The link rate (``auto``: from the single worker's step time and the model's size)."""
    params, step_s = single.get("params"), single.get("step_s")
    if rate == "auto":
        if not params or not step_s:
            raise SystemExit(
                "error: the single worker failed: no step time to choose the rate from"
            )
        bps = choose_rate(params, step_s)
    else:
        bps = network.parse_rate(rate)
    out = {"rate": network.format_rate(bps), "rate_bps": bps, "params": params, "step_s": step_s}
    if params and step_s:
        cost = sync_cost_steps(params, bps, step_s)
        out["sync_steps"] = cost
        out["why"] = (
            f"{params:,} parameters, one float32 push + fetch = {2 * 4 * params / 1e6:.2f} MB = "
            f"{cost:.0f} steps of the single worker ({step_s * 1e3:.2f} ms each)"
        )
    else:
        out["why"] = "given"
    return out


def _flag_text(rate, n_sync, num_steps, rows, row_timeout_s) -> str:
    parts = []
    if rate != "auto":
        parts.append(f"--rate={rate}")
    if tuple(n_sync) != N_SYNCS:
        parts.append(f"--n_sync={','.join(map(str, n_sync))}")
    if num_steps:
        parts.append(f"--num_steps={num_steps}")
    if rows:
        parts.append(f"--rows={','.join(rows)}")
    if row_timeout_s:
        parts.append(f"--row_timeout_s={row_timeout_s:g}")
    return "".join(" " + p for p in parts)


# -- The table ------------------------------------------------------------------------------


def _mb(values: list | None) -> str:
    if not values:
        return "-"
    return f"{statistics.mean(values) / 1e6:,.2f}"


def _secs(value: float | None, missing: str = "not reached") -> str:
    return missing if value is None or not math.isfinite(value) else f"{value:,.1f}"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def markdown(report: dict) -> str:
    """The report as BENCHMARKS.md's B7 table, with the link, the model and the targets."""
    s = report["settings"]
    m = report["machine"]
    target = report.get("target_accuracy")
    lines = [
        f"Command: `{report['command']}` ({m['date'][:10]}, {m['cpu_count']} cores, "
        f"{m.get('cpu_model', m['processor'])}); {s['num_steps']} steps per worker.",
        "",
        f"Link: {s.get('rate', '-')} to and from the server (htb per direction); "
        f"{s.get('why', '')}.",
        f"Target: the single worker's final test accuracy, "
        f"{'-' if target is None else f'{target:.4f}'}; times from the first training step.",
        "",
        "| mode | status | s to target | vs single | vs TF | final accuracy | train s "
        "| push MB / client | fetch MB / client | wire MB to / from server | run s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for r in report["rows"]:
        wire = r.get("wire") or {}
        acc = r.get("final_accuracy")
        label = r["label"] + (" (best Downpour n_sync > 1)" if r.get("best_downpour") else "")
        ok = r["status"] == "ok"
        lines.append(
            f"| {label} | {r['status']} "
            f"| {_secs(r.get('time_to_target')) if ok or 'series' in r else '-'} "
            f"| {_ratio(r.get('x_single'))} | {_ratio(r.get('x_tf'))} "
            f"| {'-' if acc is None else f'{acc:.4f}'} "
            f"| {_secs(r.get('train_s'), '-')} "
            f"| {_mb(r.get('push_bytes'))} | {_mb(r.get('fetch_bytes'))} "
            f"| {_wire(wire)} | {r.get('wall_s', 0):,.0f} |"
        )
    lines += ["", "| target | measured | verdict |", "|---|---|---|"]
    for t in report.get("targets", []):
        lines.append(f"| {t['target']} | {t['measured']} | {t['verdict']} |")
    return "\n".join(lines)


def _wire(wire: dict) -> str:
    if not wire:
        return "-"
    return f"{wire.get('to_server', 0) / 1e6:,.1f} / {wire.get('from_server', 0) / 1e6:,.1f}"


def _flags(parser: argparse.ArgumentParser) -> None:
    def rate(text: str) -> str:
        if text == "auto":
            return text
        try:
            if network.parse_rate(text) is None:
                raise ValueError("the link must be shaped")
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
        return text

    parser.add_argument(
        "--rate",
        type=rate,
        default="auto",
        help="the link each way: auto (a sync costs 50 single-worker steps) or e.g. 40mbit",
    )
    parser.add_argument(
        "--n_sync",
        type=common.comma_list(_positive_int),
        default=list(N_SYNCS),
        help="Downpour's n_sync values besides 1 (default 10,50); the best is marked",
    )
    parser.add_argument(
        "--num_steps",
        type=_positive_int,
        default=None,
        help=f"steps per worker (default {NUM_STEPS}, --quick {QUICK_STEPS})",
    )
    parser.add_argument(
        "--rows",
        type=common.comma_list(),
        default=None,
        help="only these rows (keys: single, single_adamw, downpour_1, downpour_<n>, diloco, "
        "diloco_int8, diloco_int4, diloco_topk, streaming_f4, streaming_recipe, tensorflow); "
        "single always runs",
    )
    parser.add_argument(
        "--row_timeout_s",
        type=float,
        default=None,
        help=f"each row's limit (default {ROW_TIMEOUT_S:g}, --quick {QUICK_ROW_TIMEOUT_S:g})",
    )
    parser.add_argument("--keep_runs", action="store_true", help="keep the runs' checkpoints")
    parser.add_argument("--local", metavar="JSON", help=argparse.SUPPRESS)
    parser.add_argument("--evaluate", metavar="JSON", help=argparse.SUPPRESS)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError("must be an integer >= 1")
    return value


QUICK_HELP = f"{QUICK_STEPS} steps per worker, each row limited to {QUICK_ROW_TIMEOUT_S:g} s"


def main(argv: list[str] | None = None) -> None:
    """``python -m benchmarks.slow_link [--quick] [--rate=auto] [--n_sync=10,50] ...``."""
    parser = common.parser(NAME, __doc__, quick=QUICK_HELP, flags=_flags)
    args = parser.parse_args(argv)
    if args.rows:  # Row keys depend on --n_sync: checked here, before anything runs.
        try:
            expand_rows(args.n_sync, args.rows)
        except ValueError as e:
            parser.error(f"argument --rows: {e}")
    common.main(
        NAME, run, doc=__doc__, markdown=markdown, quick=QUICK_HELP, flags=_flags, argv=argv
    )


if __name__ == "__main__":
    main()
