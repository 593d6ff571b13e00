"""B7's driver (benchmarks/slow_link.py): the rows, time to accuracy, the rate, the table, skips."""

import contextlib
import os
import subprocess
import sys

import pytest

from benchmarks import network, slow_link

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_rows_expand_each_n_sync_and_name_real_configs():
    rows = slow_link.expand_rows([10, 50])
    assert [r.key for r in rows] == [
        "single",
        "single_adamw",
        "downpour_1",
        "downpour_10",
        "downpour_50",
        "diloco",
        "diloco_int8",
        "diloco_int4",
        "diloco_topk",
        "streaming_f4",
        "streaming_recipe",
        "tensorflow",
    ]
    by_key = {r.key: r for r in rows}
    assert by_key["downpour_10"].overrides == ("--config.n_sync=10",)
    assert by_key["downpour_50"].label == "Downpour n_sync=50"
    assert "--config.client.topk_fraction=0.01" in by_key["diloco_topk"].overrides
    for r in rows:
        assert r.kind in ("local", "gasgd", "tf")
        assert os.path.exists(os.path.join(REPO_ROOT, r.config)), r.config
        assert all(o.startswith("--config.") for o in r.overrides)


def test_rows_can_be_picked_and_an_unknown_one_is_refused():
    assert [r.key for r in slow_link.expand_rows([20], ["tensorflow", "downpour_20"])] == [
        "downpour_20",
        "tensorflow",
    ]
    with pytest.raises(ValueError, match="unknown rows \\['downpour_10'\\]"):
        slow_link.expand_rows([20], ["downpour_10"])


def test_every_row_resolves_to_a_valid_config_of_the_same_model_and_data():
    for row in slow_link.expand_rows([10]):
        args = slow_link._row_args(row, 123) + list(slow_link.COMMON_OVERRIDES)
        config = slow_link.resolve_config(args + list(row.overrides))
        assert (config.num_steps, config.batch_size) == (123, 32)
        assert (config.model.name, config.data.name) == ("digits_cnn", "sklearn_digits")
        assert config.ps.checkpoint_every_secs == 1


def test_time_to_accuracy_is_the_first_time_at_or_above_the_target():
    series = [
        {"t": 3.0, "accuracy": 0.95},
        {"t": 1.0, "accuracy": 0.5},
        {"t": 2.0, "accuracy": 348 / 359},  # Equal to the target: reached.
        {"t": 4.0, "accuracy": 0.99},
    ]
    assert slow_link.time_to_accuracy(series, 348 / 359) == 2.0
    assert slow_link.time_to_accuracy(series, 0.995) is None
    assert slow_link.time_to_accuracy([{"t": -0.2, "accuracy": 0.9}], 0.5) == 0.0
    assert slow_link.time_to_accuracy([], 0.5) is None


def test_the_rate_makes_one_float32_sync_cost_at_least_50_steps():
    rate = slow_link.choose_rate(151_306, 0.0142)
    assert rate == 13_000_000  # 13.6 Mbit/s exactly, two digits, rounded down.
    cost = slow_link.sync_cost_steps(151_306, rate, 0.0142)
    assert 50 <= cost < 55
    assert slow_link.choose_rate(7_700_020, 0.05) == 190_000_000


def test_a_refused_command_line_is_a_skip_and_other_failures_are_not():
    line = "error: --config.sync.fragments: the config has no field 'sync'"
    assert slow_link.refusal(2, line) == (
        "skipped: --config.sync.fragments: the config has no field 'sync'"
    )
    assert slow_link.refusal(1, "error: worker_0 exited") is None
    assert slow_link.refusal(0, None) is None


def test_gasgd_tf_main_refuses_an_unknown_field_with_exit_2_and_an_error_line(tmp_path):
    # What a row whose config fields this version lacks gets back.
    proc = subprocess.run(
        [sys.executable, "-m", "gasgd_tf.main", "--config=configs/diloco.py"]
        + ["--config.sync.no_such_field=4", "--role=local", f"--workdir={tmp_path}"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    error = next(line for line in proc.stderr.splitlines() if line.startswith("error:"))
    assert slow_link.refusal(proc.returncode, error).startswith("skipped: --config.sync.no_such")


def test_a_refused_row_is_skipped_in_the_table_not_raised(monkeypatch):
    @contextlib.contextmanager
    def no_namespace(*args, **kwargs):
        yield network.Namespace("fake", None, None, [network.SERVER_PORT])

    refused = network.TrainingRun(
        returncode=2,
        wall_s=1.5,
        timed_out=False,
        summary=None,
        error="error: --config.sync.fragments: the config has no field 'sync'",
        output_tail="",
        class_bytes={},
        ports=[],
    )
    monkeypatch.setattr(network, "shaped_namespace", no_namespace)
    monkeypatch.setattr(network, "run_training", lambda *args, **kwargs: refused)
    monkeypatch.setattr(slow_link, "WORK_DIR", "/nonexistent-slow-link-test")
    row = slow_link.expand_rows([10], ["streaming_f4"])[0]
    result = slow_link.run_row(row, 100, 13_000_000, 60.0, keep=True)
    assert result["status"] == "skipped: --config.sync.fragments: the config has no field 'sync'"
    report = _report([_single(), result])
    table = slow_link.markdown(report)
    assert "| streaming DiLoCo F=4 | skipped: --config.sync.fragments" in table


def _single(final=0.96):
    return {
        "key": "single",
        "label": "1 worker, no server",
        "kind": "local",
        "status": "ok",
        "series": [
            {"t": 0.0, "accuracy": 0.1},
            {"t": 5.0, "accuracy": 0.9},
            {"t": 7.0, "accuracy": final},
        ],  # fmt: skip
        "final_accuracy": final,
        "train_s": 7.5,
        "wall_s": 30.0,
        "params": 151_306,
        "step_s": 0.015,
    }


def _gasgd(key, label, series, final, push, fetch=(8e6, 8e6)):
    return {
        "key": key,
        "label": label,
        "kind": "gasgd",
        "status": "ok",
        "series": series,
        "final_accuracy": final,
        "train_s": series[-1]["t"],
        "push_bytes": list(push),
        "fetch_bytes": list(fetch),
        "wire": {"to_server": 13.1e6, "from_server": 16.2e6},
        "wall_s": 40.0,
    }


def _report(rows):
    analysis = slow_link.analyse(rows)
    return {
        "machine": {"date": "2026-12-06T10:00:00+00:00", "cpu_count": 2, "processor": "x86_64"},
        "command": "python -m benchmarks.slow_link",
        "settings": {"num_steps": 500, "rate": "13mbit", "why": "151,306 parameters"},
        "rows": rows,
        **analysis,
    }


def _table_rows(text):
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| mode |"))
    out = {}
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        out[cells[0]] = cells
    return out


def test_the_table_shows_times_ratios_bytes_and_the_targets():
    def at(*points):
        return [{"t": t, "accuracy": a} for t, a in points]

    rows = [
        _single(),
        _gasgd("downpour_10", "Downpour n_sync=10", at((5, 0.5), (20, 0.97)), 0.97, [3e7, 3e7]),
        _gasgd("downpour_50", "Downpour n_sync=50", at((5, 0.5), (9, 0.96)), 0.96, [6e6, 6e6]),
        _gasgd("diloco", "DiLoCo H=50 float32", at((3, 0.9), (4, 0.965)), 0.97, [6.05e6, 6.05e6]),
        _gasgd("diloco_int4", "DiLoCo + int4", at((3, 0.9), (3.5, 0.97)), 0.968, [7.6e5, 7.6e5]),
        _gasgd(
            "diloco_topk",
            "DiLoCo + top-k 1%",
            at(
                (3, 0.5),
            ),
            0.80,
            [1e5, 1e5],
        ),
        {
            "key": "tensorflow",
            "label": "TensorFlow ParameterServerStrategy",
            "kind": "tf",
            "status": "ok",
            "series": at((10, 0.5), (35, 0.961)),
            "final_accuracy": 0.961,
            "train_s": 40.0,
            "wire": {"to_server": 6.1e8, "from_server": 6.3e8},
            "wall_s": 60.0,
        },
    ]
    report = _report(rows)
    assert report["target_accuracy"] == 0.96
    table = _table_rows(slow_link.markdown(report))
    assert table["1 worker, no server"][2:5] == ["7.0", "1.00x", "0.20x"]
    int4 = table["DiLoCo + int4"]
    assert int4[2:6] == ["3.5", "0.50x", "0.10x", "0.9680"]
    assert int4[7:10] == ["0.76", "8.00", "13.1 / 16.2"]
    assert table["DiLoCo + top-k 1%"][2] == "not reached"
    assert "Downpour n_sync=50 (best Downpour n_sync > 1)" in table  # 9 s against 20 s.
    verdicts = {t["target"].split(":")[0]: t for t in report["targets"]}
    assert verdicts["best mode <= 0.6x the single worker's time"]["verdict"] == "met"
    assert verdicts["best mode >= 5x sooner than TensorFlow's PSS"]["verdict"] == "met"  # 10x.
    codec = verdicts["int4 or top-k"]
    assert codec["verdict"] == "met"  # int4: 7.96x fewer bytes, 0.2 points lost.
    assert "DiLoCo + int4: 8.0x fewer, +0.20 points lost" in codec["measured"]


def test_tensorflow_not_reaching_the_target_gives_a_lower_bound():
    rows = [
        _single(),
        _gasgd("diloco", "DiLoCo H=50 float32", [{"t": 20.0, "accuracy": 0.97}], 0.97, [1, 1]),
        {
            "key": "tensorflow",
            "label": "TF",
            "kind": "tf",
            "status": "timed out",
            "series": [{"t": 60.0, "accuracy": 0.9}],
            "final_accuracy": 0.9,
            "train_s": 60.0,
        },
    ]
    target = next(t for t in _report(rows)["targets"] if "TensorFlow" in t["target"])
    assert target["measured"] == ">= 3.00x (TensorFlow not there)"
    assert target["verdict"].startswith("unknown")
