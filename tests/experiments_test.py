"""Tests for the experiment sweeps: grids, resuming, curves from events, tables and figures."""

import io
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import REPO_ROOT, experiment_command, run_experiment

from gasgd_tf import config_base
from gasgd_tf.experiments import curves, events, plots, report, run, settings, sweep
from gasgd_tf.summaries import MetricWriter


def experiment(**overrides):
    config = settings.experiment_config()
    config.update_from_flattened_dict(overrides)
    return config


def test_grid_has_one_cell_per_clients_and_n_sync_pair():
    base, grid, smoke = sweep.split_experiment(
        experiment(**{"sweep.clients": (4, 1), "sweep.n_sync": (1, 10), "sweep.seeds": (0, 5)})
    )
    assert not smoke
    cells = sweep.grid_cells(base, grid, warm_start=None)
    assert [c.name for c in cells] == [
        "clients1_nsync1_seed0",
        "clients4_nsync1_seed0",
        "clients1_nsync10_seed0",
        "clients4_nsync10_seed0",
        "clients1_nsync1_seed5",
        "clients4_nsync1_seed5",
        "clients1_nsync10_seed5",
        "clients4_nsync10_seed5",
    ]
    last = cells[-1].config
    assert (last.num_workers, last.n_push, last.n_fetch, last.seed) == (4, 10, 10, 5)
    assert (last.name, cells[-1].setting) == (cells[-1].name, "clients4_nsync10")
    # Every cell is a complete, valid training config that a child can read back.
    assert config_base.from_json(cells[0].config_json).to_dict() == cells[0].config.to_dict()


def test_smoke_keeps_the_two_smallest_of_each_axis_and_few_steps():
    base, grid, smoke = sweep.split_experiment(
        experiment(
            smoke=True,
            **{
                "sweep.clients": (8, 1, 4, 2),
                "sweep.n_sync": (100, 1, 10),
                "sweep.pretrain_steps": 300,
            },
        )
    )
    assert smoke and tuple(grid.clients) == (1, 2) and tuple(grid.n_sync) == (1, 10)
    assert tuple(grid.seeds) == (0,)
    assert base.num_steps == grid.smoke_steps == grid.pretrain_steps


def test_warm_start_cells_start_from_the_given_checkpoint():
    base, grid, _ = sweep.split_experiment(experiment(**{"sweep.pretrain_steps": 50}))
    pre = sweep.pretrain_cell(base, grid)
    assert (pre.config.num_workers, pre.config.num_steps, pre.config.warm_start) == (1, 50, None)
    cells = sweep.grid_cells(base, grid, warm_start="/ckpt/params-000000050.npz")
    assert {c.config.warm_start for c in cells} == {"/ckpt/params-000000050.npz"}


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"sweep.clients": (0, 2)}, "sweep.clients"),
        ({"sweep.n_sync": ()}, "sweep.n_sync"),
        ({"sweep.seeds": (-1,)}, "sweep.seeds"),
        ({"sweep.seeds": (0, 0)}, "sweep.seeds repeats"),
        ({"sweep.concurrency": 0}, "sweep.concurrency"),
    ],
)
def test_bad_grids_are_refused(overrides, message):
    with pytest.raises(ValueError, match=message):
        sweep.split_experiment(experiment(**overrides))


def test_run_cells_refuses_what_would_hang_or_collide(tmp_path):
    base, grid, _ = sweep.split_experiment(experiment(**{"sweep.clients": (1,)}))
    cells = sweep.grid_cells(base, grid, None)
    with pytest.raises(ValueError, match="concurrency"):
        sweep.run_cells(cells, str(tmp_path), concurrency=0)
    with pytest.raises(ValueError, match="share a name"):
        sweep.run_cells([cells[0], cells[0]], str(tmp_path))


def test_output_pump_keeps_draining_when_the_console_is_gone(tmp_path):
    import io
    import threading

    console = io.StringIO()
    console.close()  # As when the sweep's output goes to `| head`, which exited.
    lines = [f"line {i}\n" for i in range(1000)]
    log = tmp_path / "sweep.log"
    sweep._pump(iter(lines), "cell", str(log), console, threading.Lock())
    assert log.read_text() == "".join(lines)


def test_a_config_without_sweep_is_refused():
    with pytest.raises(ValueError, match="sweep"):
        sweep.split_experiment(config_base.get_base_config())


def test_a_cell_counts_as_done_only_with_a_summary_and_the_same_config(tmp_path):
    base, grid, _ = sweep.split_experiment(
        experiment(**{"sweep.clients": (1,), "sweep.seeds": (0,)})
    )
    (cell,) = sweep.grid_cells(base, grid, None)
    folder = tmp_path / cell.name
    folder.mkdir()
    (folder / "config.json").write_text(cell.config_json)
    assert not sweep.is_done(cell, str(tmp_path))  # Interrupted: no summary yet.
    (folder / "summary.json").write_text("{}")
    assert sweep.is_done(cell, str(tmp_path))
    changed = json.loads(cell.config_json)
    changed["num_steps"] += 1  # The experiment changed since: run it again.
    (folder / "config.json").write_text(json.dumps(changed))
    assert not sweep.is_done(cell, str(tmp_path))


def test_an_interrupted_cell_resumes_and_a_changed_cell_starts_afresh(tmp_path, monkeypatch):
    # README: "An experiment sweep resumes an interrupted cell the same way,
    # and starts a cell whose config changed afresh." The cells' launchers
    # are a stand-in executable that records its command line.
    base, grid, _ = sweep.split_experiment(
        experiment(**{"sweep.clients": (1, 2, 4), "sweep.n_sync": (1,), "sweep.seeds": (0,)})
    )
    interrupted, changed, finished = sweep.grid_cells(base, grid, None)
    for cell in (interrupted, changed, finished):
        (tmp_path / cell.name / "checkpoints").mkdir(parents=True)
        (tmp_path / cell.name / "checkpoints" / "params-5.abc.npz").write_text("x")
        (tmp_path / cell.name / "config.json").write_text(cell.config_json)
    other = json.loads(changed.config_json)
    other["ps"]["learning_rate"] *= 2  # The grid changed since that cell ran.
    (tmp_path / changed.name / "config.json").write_text(json.dumps(other))
    (tmp_path / finished.name / "summary.json").write_text("{}")

    calls = tmp_path / "calls"
    fake = tmp_path / "fake_python"
    fake.write_text(f'#!/bin/sh\necho "$*" >> {calls}\n')
    fake.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(fake))
    out = io.StringIO()
    ran = sweep.run_cells([interrupted, changed, finished], str(tmp_path), out=out)

    assert ran == [interrupted.name, changed.name]
    assert f"{finished.name}: done before, skipped" in out.getvalue()
    lines = {
        line.split("--workdir=")[1].split()[0]: line for line in calls.read_text().splitlines()
    }
    assert set(lines) == {str(tmp_path / interrupted.name), str(tmp_path / changed.name)}
    # The interrupted cell: its launcher resumes its checkpoints (no --norestore)...
    assert "--norestore" not in lines[str(tmp_path / interrupted.name)].split()
    assert "-m gasgd_tf.main --config_json=" in lines[str(tmp_path / interrupted.name)]
    # ...the changed one starts a new run beside its old checkpoints.
    assert "--norestore" in lines[str(tmp_path / changed.name)].split()
    # Each launcher is given the cell's current config.
    for cell in (interrupted, changed):
        request = lines[str(tmp_path / cell.name)].split("--config_json=")[1].split()[0]
        assert json.loads(open(request).read()) == json.loads(cell.config_json)


def test_experiment_names_map_to_config_files_with_docstrings():
    for name in run.EXPERIMENTS:
        path = run.config_path(name)
        text = open(path).read()
        assert "Command:" in text and f"--experiment={name}" in text and "Runtime:" in text


def fake_run(folder, clients=2, steps=100, log_every=10, start=None):
    """Event files as a run with `clients` workers would write them, `start` s from now."""
    start = time.time() + 10.0 if start is None else start
    for i in range(clients):
        w = MetricWriter(os.path.join(folder, "tb", f"worker_{i}"))
        for step in range(log_every, steps + 1, log_every):
            accuracy = 0.5 + 0.4 * step / steps + (0.05 if i else 0.0)
            w.scalar("train/accuracy", accuracy, step, wall_time=start + step / 10 + i / 100)
        w.close()
    ev = MetricWriter(os.path.join(folder, "tb", "eval"))
    for k, version in enumerate(range(0, clients * steps + 1, clients * 20)):
        t = start + k
        ev.scalar("eval/accuracy", 0.1 + 0.8 * version / (clients * steps), version, wall_time=t)
        ev.scalar("eval/steps_per_client", version / clients, version, wall_time=t)
    ev.close()


def test_test_curve_pairs_accuracy_with_steps_per_client(tmp_path):
    fake_run(str(tmp_path), clients=2, steps=100)
    test = curves.test_curve(str(tmp_path))
    np.testing.assert_allclose(test.steps, [0, 20, 40, 60, 80, 100])
    np.testing.assert_allclose(test.error, 1 - (0.1 + 0.8 * test.steps / 100), atol=1e-6)
    assert test.at_steps(50) == pytest.approx(1 - 0.5, abs=1e-6)
    # Seconds count from the first worker's first event (its writer opening, now).
    np.testing.assert_allclose(test.seconds, 10.0 + np.arange(6), atol=1.0)


def test_train_curves_average_workers_and_smooth_over_the_window(tmp_path):
    fake_run(str(tmp_path), clients=2, steps=100, log_every=10)
    by_steps, by_time = curves.train_curves(
        str(tmp_path), window_minibatches=30, log_every_steps=10
    )
    np.testing.assert_allclose(by_steps.steps, np.arange(10, 101, 10))
    raw = np.array([1 - (0.5 + 0.4 * s / 100 + 0.025) for s in by_steps.steps])
    # Trailing mean of 3 points (30 minibatches / 10 per point).
    np.testing.assert_allclose(by_steps.error[2], raw[:3].mean(), atol=1e-6)
    np.testing.assert_allclose(by_steps.error[0], raw[0], atol=1e-6)
    assert by_time.error.size == 20 and np.all(np.diff(by_time.seconds) >= 0)


def test_event_reader_stops_quietly_at_a_truncated_record(tmp_path):
    w = MetricWriter(str(tmp_path))
    w.scalar("a", 1.0, 1)
    w.scalar("a", 2.0, 2)
    w.close()
    with open(w.path, "ab") as f:
        f.write(b"\x10\x00\x00")  # A writer killed mid-record.
    assert [p.value for p in events.read_scalars(str(tmp_path))["a"]] == [1.0, 2.0]


def test_report_and_figures_from_events(tmp_path):
    base, grid, _ = sweep.split_experiment(
        experiment(**{"sweep.clients": (1, 2), "sweep.seeds": (0, 1)})
    )
    base.unlock()
    base.num_steps = 100
    cells = sweep.grid_cells(base, grid, None)
    for cell in cells:
        folder = tmp_path / cell.name
        fake_run(str(folder), clients=cell.clients, steps=100)
        (folder / "config.json").write_text(cell.config_json)
        accuracy = 0.9 + 0.02 * cell.seed
        (folder / "summary.json").write_text(json.dumps({"test_accuracy": accuracy}))
    rows = [report.row(c, str(tmp_path), 20) for c in cells]
    assert rows[0]["test_error@0.5"] == pytest.approx(0.5, abs=1e-6)
    assert rows[1]["minibatches"] == 200 and rows[1]["test_error_final"] == pytest.approx(0.1)
    # Test error 0.58 at 40 steps per client, 0.42 at 60: 0.5 is first reached at 60.
    assert report.row(cells[0], str(tmp_path), 20, target_error=0.5)["steps_to_0.5"] == 60
    assert np.isnan(report.row(cells[0], str(tmp_path), 20, target_error=0.01)["steps_to_0.01"])

    settings = report.by_setting(rows)
    assert [s["setting"] for s in settings] == ["clients1_nsync1", "clients2_nsync1"]
    assert settings[0]["seeds"] == 2
    assert settings[0]["test_error_final"] == pytest.approx(0.09)
    assert (settings[0]["test_error_final_min"], settings[0]["test_error_final_max"]) == (
        pytest.approx(0.08),
        pytest.approx(0.1),
    )
    csv_path, md_path = report.write(rows, str(tmp_path), "fake")
    text = open(md_path).read()
    assert "| clients1_nsync1 | 2 | 100 | " in text and "0.0900 [0.0800, 0.1000]" in text
    assert text.count("\n| clients") == 2 + 4  # Two settings, four runs.
    assert open(csv_path).readline().startswith("cell,variant,clients,n_sync,seed")
    assert os.path.isfile(tmp_path / "summary_by_setting.csv")

    assert [c.name for c in sweep.discover(str(tmp_path))] == [c.name for c in cells]
    paths = plots.plot(cells, str(tmp_path), 20, "fake")
    assert sorted(os.path.basename(p) for p in paths) == sorted(
        f"{m}_error_{a}.png" for m in ("test", "train") for a in ("steps", "time", "minibatches")
    )
    assert all(open(p, "rb").read(8) == b"\x89PNG\r\n\x1a\n" for p in paths)


def test_mean_curve_averages_seeds_where_all_have_data():
    a = (np.array([0.0, 10.0]), np.array([1.0, 0.0]))
    b = (np.array([2.0, 8.0]), np.array([0.5, 0.5]))
    x, mean, lo, hi = plots.mean_curve([a, b])
    assert (x[0], x[-1]) == (2.0, 8.0)  # Only where both curves have data.
    np.testing.assert_allclose(mean, ((1.0 - x / 10.0) + 0.5) / 2)
    np.testing.assert_allclose(lo, np.minimum(1.0 - x / 10.0, 0.5))
    one = plots.mean_curve([a])
    np.testing.assert_array_equal(one[1], a[1])


@pytest.mark.slow
def test_smoke_sweep_runs_end_to_end_and_resumes(digits_data_dir, tmp_path):
    workdir = str(tmp_path / "exp3")
    flags = [
        "--experiment=exp3",
        "--config.smoke=True",
        "--config.sweep.smoke_steps=20",
        f"--config.data.data_dir={digits_data_dir}",
        f"--workdir={workdir}",
    ]
    first = run_experiment(*flags)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    names = [
        "clients1_nsync1_seed0",
        "clients2_nsync1_seed0",
        "clients1_nsync10_seed0",
        "clients2_nsync10_seed0",
    ]
    for name in ["pretrain", *names]:
        assert os.path.isfile(os.path.join(workdir, name, "summary.json")), name
    # Every cell warm-started from the pretrain run's checkpoint.
    pre = json.load(open(os.path.join(workdir, "pretrain", "summary.json")))["checkpoint"]
    for name in names:
        assert json.load(open(os.path.join(workdir, name, "config.json")))["warm_start"] == pre
    table = open(os.path.join(workdir, "summary.md")).read()
    assert all(f"| {name} |" in table for name in names)
    assert "bytes_total_final" in table  # The workers' byte counters reached the table.
    # {test, train} x {steps, time, minibatches, bytes}.
    assert len(os.listdir(os.path.join(workdir, "plots"))) == 8

    again = run_experiment(*flags, timeout=300)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert again.stdout.count("done before, skipped") == 5
    assert "starting" not in again.stdout


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_stopping_a_sweep_stops_its_running_cell(digits_data_dir, tmp_path, sig):
    workdir = str(tmp_path / "exp2")
    sweep_process = subprocess.Popen(
        experiment_command(
            "--experiment=exp2",
            "--config.smoke=True",
            "--config.sweep.smoke_steps=1000000",
            f"--config.data.data_dir={digits_data_dir}",
            f"--workdir={workdir}",
        ),
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        started = os.path.join(workdir, "clients1_nsync1_seed0", "progress", "worker_0.json")
        deadline = time.monotonic() + 120
        while not os.path.exists(started):  # The first cell is training.
            assert sweep_process.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
        sweep_process.send_signal(sig)  # To the sweep alone, not its process group.
        out, _ = sweep_process.communicate(timeout=60)
    finally:
        sweep_process.kill()
    assert sweep_process.returncode == 130, out[-3000:]
    assert "interrupted: stopping 1 running cell(s)" in out
    assert "rerun the same command to resume" in out
    left = subprocess.run(["pgrep", "-af", workdir], capture_output=True, text=True).stdout
    assert not [line for line in left.splitlines() if "pgrep" not in line]


def test_variants_are_one_more_axis_with_their_own_config_changes():
    base, grid, _ = sweep.split_experiment(
        experiment(
            **{
                "sweep.clients": (8,),
                "sweep.seeds": (0,),
                "sweep.variants": {
                    "none": {},
                    "bounded": {"ps": {"staleness": "bounded", "staleness_bound": 1}},
                },
            }
        )
    )
    cells = sweep.grid_cells(base, grid, None)
    # In name order (ml_collections keeps config keys sorted).
    assert [(c.name, c.variant, c.setting) for c in cells] == [
        ("bounded_clients8_nsync1_seed0", "bounded", "bounded_clients8_nsync1"),
        ("none_clients8_nsync1_seed0", "none", "none_clients8_nsync1"),
    ]
    assert (cells[0].config.ps.staleness, cells[1].config.ps.staleness) == ("bounded", "none")
    assert cells[0].config.ps.staleness_bound == 1
    assert cells[0].config.ps.learning_rate == cells[1].config.ps.learning_rate  # Untouched.


def test_a_misspelt_field_in_a_variant_is_refused():
    base, grid, _ = sweep.split_experiment(
        experiment(**{"sweep.variants": {"typo": {"ps": {"stalenes": "bounded"}}}})
    )
    with pytest.raises(ValueError, match="sweep.variants.typo: unknown field"):
        sweep.grid_cells(base, grid, None)


def test_the_plots_command_redraws_the_figures_from_events(tmp_path):
    base, grid, _ = sweep.split_experiment(
        experiment(**{"sweep.clients": (2,), "sweep.seeds": (0,)})
    )
    (cell,) = sweep.grid_cells(base, grid, None)
    folder = tmp_path / cell.name
    fake_run(str(folder), clients=2, steps=100)
    (folder / "config.json").write_text(cell.config_json)
    (folder / "summary.json").write_text("{}")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "gasgd_tf.experiments.plots",
            f"--workdir={tmp_path}",
            "--window=20",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.split()) == 6
    assert len(os.listdir(tmp_path / "plots")) == 6


def exp5_config(**overrides):
    import importlib.util

    spec = importlib.util.spec_from_file_location("exp5", run.config_path("exp5"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    config.update_from_flattened_dict(overrides)
    return config


def test_exp5_resolves_every_cell_with_the_shared_recipes():
    from gasgd_tf import recipes

    base, grid, smoke = sweep.split_experiment(exp5_config())
    cells = sweep.grid_cells(base, grid, None)  # Each one finalized (validated).
    assert not smoke and len({c.name for c in cells}) == len(cells) == 41
    by_part = {}
    for c in cells:
        by_part.setdefault(c.part, []).append(c)
    assert {p: len(v) for p, v in by_part.items()} == {"hetero": 4, "": 33, "mnist5k": 4}
    assert {c.config.num_steps for c in cells} == {400, 300}
    assert cells[0].part == "hetero"  # The emulated slow worker runs first.
    for c in cells:
        method = c.variant.split("_", 1)[1] if c.part else c.variant
        ps, worker = c.config.ps, c.config.worker
        assert (c.config.n_push, c.config.n_fetch) == (c.n_sync, c.n_sync)
        if method == "downpour":
            assert (worker.push, ps.aggregation, ps.learning_rate) == ("gradient", "each", 0.1)
        elif method == "rounds":
            assert (worker.push, ps.aggregation) == ("gradient", "round")
        elif method in ("diloco", "async_diloco", "adaptive", "fixed"):
            assert (worker.push, worker.optimizer) == ("delta", "adamw")
            assert ps.learning_rate == recipes.DILOCO_OUTER_LEARNING_RATE
            assert worker.learning_rate == recipes.DILOCO_INNER_LEARNING_RATE
        if method in ("async_diloco", "adaptive"):
            assert (ps.staleness, worker.local_steps) == ("delayed_nesterov", "adaptive")
        if method == "diloco":
            assert (ps.aggregation, ps.nesterov) == ("round", True)
        if c.part == "hetero":
            delays = tuple(worker.step_delay_secs)
            assert len(delays) == 4 and sum(d > 0 for d in delays) == 1
        assert c.config.data.name == ("mnist5k" if c.part == "mnist5k" else "sklearn_digits")
    adaptive, fixed = by_part["hetero"][:2]
    changed = config_base.differences(
        json.loads(adaptive.config_json), json.loads(fixed.config_json), ignore=("name",)
    )
    assert changed == ["worker.local_steps"]  # Side by side, same seed: only H's rule differs.
    assert adaptive.config.worker.local_steps == "adaptive"
    assert fixed.config.ps.staleness == "delayed_nesterov"
    # The grid's two parts have no prefix: one table, one figure set.
    assert {c.clients for c in cells if c.setting.startswith("downpour_")} == {1, 4, 8}
    assert not any(c.setting.startswith("rounds_clients1") for c in cells)


def test_exp5_smoke_has_one_short_cell_per_method_and_part():
    base, grid, smoke = sweep.split_experiment(exp5_config(smoke=True))
    cells = sweep.grid_cells(base, grid, None)
    assert smoke and all(c.config.num_steps <= grid.smoke_steps for c in cells)
    assert all(c.seed == 0 for c in cells) and len(cells) == 11
    assert {(c.part, c.clients, c.n_sync) for c in cells} == {
        ("hetero", 4, 50),
        ("", 4, 1),
        ("", 1, 1),
        ("mnist5k", 4, 1),
    }


def test_parts_are_grids_of_their_own_with_prefixes_changes_and_an_order():
    config = experiment(**{"sweep.clients": (1, 2), "sweep.n_sync": (1, 10)})
    config.sweep.parts = {
        "b": {"clients": (2,), "changes": {"data": {"pad": 0}}, "order": -1},
        "a": {"label": "", "n_sync": (10,)},
        "c": {"label": "", "clients": (2,), "n_sync": (10,), "seeds": (7,), "smoke": False},
    }
    base, grid, _ = sweep.split_experiment(config)
    cells = sweep.grid_cells(base, grid, None)
    assert [c.name for c in cells][:4] == [
        "b_clients2_nsync1_seed0",
        "b_clients2_nsync10_seed0",
        "b_clients2_nsync1_seed1",
        "b_clients2_nsync10_seed1",
    ]
    assert {c.config.data.pad for c in cells if c.part == "b"} == {0}
    assert {c.config.data.pad for c in cells if c.part == ""} == {2}
    assert {c.seed for c in cells if c.setting == "clients2_nsync10"} == {0, 1, 2, 7}
    smoke_config = experiment(**{"sweep.clients": (1, 2), "sweep.n_sync": (1, 10)})
    smoke_config.sweep.parts = config.sweep.parts
    smoke_config.smoke = True
    base, grid, _ = sweep.split_experiment(smoke_config)
    assert {c.seed for c in sweep.grid_cells(base, grid, None)} == {0}
    config.sweep.parts.a.clients = (0,)
    with pytest.raises(ValueError, match="sweep.parts.a.clients"):
        sweep.split_experiment(config)


def test_bytes_to_target_reads_the_counters_at_the_step_the_target_was_reached():
    test = curves.Curve(
        np.array([0.0, 10.0, 20.0, 30.0]), np.zeros(4), np.array([0.9, 0.5, 0.08, 0.05])
    )
    comm = curves.Comm(
        np.array([0.0, 10.0, 40.0]), np.array([100.0, 200.0, 500.0]), np.array([0.0, 50.0, 80.0])
    )
    # Reached 0.1 at step 20: sent 300 (interpolated), received 60.
    assert report.bytes_to(test, comm, 0.1, "sent") == pytest.approx(300.0)
    assert report.bytes_to(test, comm, 0.1, "received") == pytest.approx(60.0)
    assert report.bytes_to(test, comm, 0.1) == pytest.approx(360.0)
    assert np.isnan(report.bytes_to(test, comm, 0.01))
    empty = curves.Comm(np.zeros(0), np.zeros(0), np.zeros(0))
    assert np.isnan(report.bytes_to(test, empty, 0.1))
    columns = report.comm_columns(test, comm, 0.1)
    assert columns["bytes_total_to_0.1"] == pytest.approx(360.0)
    assert columns["bytes_total_final"] == pytest.approx(580.0)


def test_byte_counters_make_table_columns_and_figures(tmp_path):
    base, grid, _ = sweep.split_experiment(
        experiment(**{"sweep.clients": (2,), "sweep.seeds": (0,)})
    )
    (cell,) = sweep.grid_cells(base, grid, None)
    folder = tmp_path / cell.name
    fake_run(str(folder), clients=2, steps=100)
    for i in range(2):  # Worker i sends (i + 1) kB and receives 2 kB per logged step.
        w = MetricWriter(os.path.join(folder, "tb", f"worker_{i}"))
        for step in range(10, 101, 10):
            w.scalars(
                {"comm/bytes_sent": 100 * (i + 1) * step, "comm/bytes_received": 200 * step}, step
            )
        w.close()
    (folder / "config.json").write_text(cell.config_json)
    (folder / "summary.json").write_text(json.dumps({"worker_images_per_sec": [30.0, 10.0]}))
    comm = curves.comm_curves(str(folder))
    np.testing.assert_allclose(comm.steps, np.arange(10, 101, 10))
    np.testing.assert_allclose(comm.sent, 150 * comm.steps)
    row = report.row(cell, str(tmp_path), 20, target_error=0.5)
    # Test error first at or below 0.5 at 60 steps per client.
    assert row["bytes_sent_to_0.5"] == pytest.approx(150 * 60)
    assert row["bytes_total_to_0.5"] == pytest.approx(350 * 60)
    assert row["bytes_received_final"] == pytest.approx(200 * 100)
    assert row["speed_ratio"] == pytest.approx(3.0)
    setting = report.by_setting([row])[0]
    assert setting["bytes_total_to_0.5_reached"] == "1/1"
    paths = plots.plot([cell], str(tmp_path), 20, "fake", out_dir=str(tmp_path / "out"))
    assert str(tmp_path / "out" / "test_error_bytes.png") in paths
