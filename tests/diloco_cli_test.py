"""configs/diloco.py, async_diloco.py and streaming_diloco.py as a user runs them (short)."""

import json
import os
import re

import pytest
from main_test import run_main

from gasgd_tf import layout


@pytest.mark.slow
@pytest.mark.parametrize("name", ["diloco", "async_diloco", "streaming_diloco"])
def test_the_diloco_configs_train_with_few_syncs(name, digits_data_dir, tmp_path):
    workdir = str(tmp_path / name)
    result = run_main(
        f"--config=configs/{name}.py",
        f"--workdir={workdir}",
        f"--config.data.data_dir={digits_data_dir}",
        "--config.num_steps=150",
        "--config.n_sync=25",
        "--config.eval.every_secs=1",
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    with open(layout.summary_path(workdir)) as f:
        summary = json.load(f)
    assert summary["steps_per_worker"] == [150, 150]
    if name == "diloco":
        assert_one_update_per_round(summary, workdir, rounds=6)  # One per 25 steps.
        assert summary["staleness_max"] == 0
    elif name == "async_diloco":  # One update per delta: 6 each at H = 25, more if planned.
        assert summary["server_version"] >= 12
    else:
        assert_one_update_per_round(summary, workdir, rounds=4 * 6)  # Per fragment.
    assert summary["test_accuracy"] > 0.8
    # 6 or more pushes of 151,306 values each, counted in the clients: float32, or int4
    # (half a byte and a scale per 2,048 values) when streaming.
    value_bytes = 0.5 if name == "streaming_diloco" else 4
    assert all(b > 6 * value_bytes * 151_306 for b in summary["bytes_sent_per_worker"])
    if name == "async_diloco":
        assert all(h >= 1 for h in summary["local_steps_per_worker"])  # Planned by the server.
    assert "warning" not in summary
    with open(os.path.join(workdir, "config.json")) as f:
        config = json.load(f)
    assert config["worker"]["push"] == "delta" and config["worker"]["optimizer"] == "adamw"


def assert_one_update_per_round(summary: dict, workdir: str, rounds: int) -> None:
    """Each round (of the model, or of a fragment) is one update: ``rounds`` with both
    workers in every round.

    A worker that starts late (TensorFlow's warm-up on a loaded machine)
    misses the first rounds, which the other closes alone: then up to twice
    as many.
    """
    joined = []
    for k in range(2):
        with open(os.path.join(workdir, "logs", f"worker_{k}.log")) as f:
            joined += re.findall(r"joined at version (\d+)", f.read())
    assert len(joined) == 2, joined
    if joined == ["0", "0"]:
        assert summary["server_version"] == rounds
    else:
        assert rounds < summary["server_version"] <= 2 * rounds
