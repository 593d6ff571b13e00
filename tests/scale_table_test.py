"""B10's arithmetic (benchmarks/scale_table.py) on inputs small enough to check by hand."""

import math

import pytest

from benchmarks import common, scale_table

# exp5's grid, cut down: two methods, two client counts, one target never reached.
EXP5 = """
## Experiment 4: something else

| method | H | clients | steps/client to 0.1 |
|---|---|---|---|
| downpour | 1 | 4 | 999 |

## Experiment 5: low-communication training

| method | H | clients | seeds | steps/client to 0.1 | final test error |
|---|---|---|---|---|---|
| downpour | 1 | 1 | 1 | - | 0.404 |
| downpour | 1 | 4 | 1 | 200 | 0.039 |
| diloco | 50 | 4 | 1 | 100 | 0.031 |
| downpour | 50 | 4 | 1 | - | 0.329 |
| downpour | 200 | 4 | 1 | - | 0.479 |

after the table
"""
STEPS = {("downpour", 1): 200.0, ("diloco", 50): 100.0, ("downpour", 50): None}
RATES = {"sender_gbps": 1.0, "decode_gbps": 2.0}


def test_int4_pushes_half_a_byte_a_value_and_a_float32_scale_per_block():
    # 10 values in blocks of 4: 3 scales (12 bytes) and 5 bytes of nibbles.
    assert scale_table.push_bytes("int4", 10, 4) == 17
    assert scale_table.push_bytes("int4", 4096, 2048) == 2 * 4 + 2048
    assert scale_table.push_bytes("none", 10, 4) == 40  # float32.


def test_a_full_duplex_sync_takes_the_longer_direction():
    # 1.25e9 bytes are 10 Gb: one second at 10 Gb/s, whichever way they go.
    assert scale_table.wire_seconds(1.25e9, 0.5e9, 10) == pytest.approx(1.0)
    assert scale_table.wire_seconds(0.0, 1.25e9, 100) == pytest.approx(0.1)


def test_codec_time_is_encode_plus_decode_of_the_float32_bytes():
    # 250M values are 1 GB of float32: 1 s to encode at 1 GB/s, 0.5 s to decode at 2.
    assert scale_table.codec_seconds(250_000_000, 1.0, 2.0) == pytest.approx(1.5)
    assert scale_table.codec_seconds(250_000_000, math.inf, math.inf) == 0.0


def test_step_time_with_and_without_overlap():
    # A 1 s sync every 100 steps of 10 ms: 10 ms more per step when it blocks,
    # 5 ms when half of it hides behind compute, nothing when all of it does.
    assert scale_table.step_seconds(0.01, 1.0, 100) == pytest.approx(0.02)
    assert scale_table.step_seconds(0.01, 1.0, 100, overlap_s=0.5) == pytest.approx(0.015)
    assert scale_table.step_seconds(0.01, 1.0, 100, overlap_s=2.0) == pytest.approx(0.01)
    assert scale_table.sync_share(0.02, 0.01) == pytest.approx(0.5)


def test_time_to_accuracy_is_steps_ratio_times_step_time_ratio():
    assert scale_table.relative_time(0.5, 0.02, 0.04) == pytest.approx(0.25)
    assert scale_table.relative_time(None, 0.02, 0.04) is None  # Never reached.


def test_exp5_steps_are_read_from_the_experiment_5_table():
    assert scale_table.exp5_steps(EXP5) == {
        ("downpour", 1): 200.0,
        ("diloco", 50): 100.0,
        ("downpour", 50): None,
        ("downpour", 200): None,
    }
    assert scale_table.exp5_steps(EXP5, clients=1) == {("downpour", 1): None}
    with pytest.raises(ValueError, match="no exp5 table"):
        scale_table.exp5_steps("## Experiment 5\n\nno table here\n")


def test_the_four_methods_on_a_16_value_model():
    downpour, every_100, diloco, streaming = scale_table.methods(
        16, STEPS, block_size=4, fetch_itemsize=4, tau=2
    )
    assert (downpour.interval, downpour.push, downpour.fetch, downpour.ratio) == (1, 64, 64, 1.0)
    assert (every_100.interval, every_100.push, every_100.ratio) == (100, 64, None)
    assert "never reached 0.1 at 50" in every_100.ratio_source
    # int4: 4 scales (16 bytes) + 8 bytes of nibbles; the fetch stays float32.
    assert (diloco.interval, diloco.push, diloco.fetch, diloco.ratio) == (100, 24, 64, 0.5)
    # One fragment of 16 / 8 = 2 values every 100 / 8 steps: 1 scale + 1 byte.
    assert (streaming.interval, streaming.values, streaming.push, streaming.fetch) == (
        12.5,
        2,
        5,
        8,
    )
    assert (streaming.tau, streaming.ratio) == (2, 0.5)


def test_diloco_200s_steps_give_the_pessimistic_ratio():
    steps = {**STEPS, ("diloco", 200): 300.0}
    rows = scale_table.table(scale_table.methods(16, steps, block_size=4), 0.01, RATES)
    diloco = rows[6]
    assert (diloco["steps_ratio"], diloco["steps_ratio_high"]) == (0.5, 1.5)
    assert diloco["relative_time_high"] == pytest.approx(3 * diloco["relative_time"])
    assert "(H=200's ratio: " in scale_table.markdown({**_report(), "rows": rows})


def test_a_streaming_row_hides_tau_steps_of_its_sync():
    streaming = scale_table.Method("s", 10, 250_000_000, 1.25e9, 0.25e9, True, 2, 0.5, "")
    row = scale_table.row(streaming, 10, 0.1, RATES, base_step_s=0.4)
    # Sync: 1.5 s of codec + 1 s of wire; 0.2 s hidden; 2.3 s over 10 steps.
    assert row["sync_s"] == pytest.approx(2.5)
    assert row["step_s"] == pytest.approx(0.1 + 0.23)
    assert row["bytes_per_step"] == pytest.approx(1.5e8)
    assert row["relative_time"] == pytest.approx(0.5 * 0.33 / 0.4)


def test_the_table_compares_each_rate_with_downpour_at_that_rate():
    rows = scale_table.table(scale_table.methods(16, STEPS, block_size=4), 0.01, RATES)
    assert len(rows) == 4 * len(scale_table.LINK_GBPS)
    assert [r["relative_time"] for r in rows[:3]] == [1.0, 1.0, 1.0]
    assert all(r["relative_time"] is None for r in rows[3:6])  # Downpour n_sync 100.


def _report() -> dict:
    """A report as run() makes it, from the small inputs here and no model build."""
    all_methods = scale_table.methods(16, STEPS, block_size=4)
    codec = {**RATES, "date": "2026-01-01", "command": "python -m benchmarks.codec_speed"}
    return {
        "command": "python -m benchmarks.scale_table",
        "date": "2026-01-02T00:00:00+00:00",
        "net": {"params": 16},
        "gpu_step_s": 0.01,
        "gpu_step_source": "cited",
        "gpu_figure": scale_table.GPU_FIGURE,
        "codec": codec,
        "block_size": 4,
        "fetch_dtype": "float32",
        "tau": 1,
        "clients": 4,
        "exp5_steps": {"downpour H=1": 200.0, "downpour H=50": None},
        "streaming_source": scale_table.STREAMING_SOURCE,
        "methods": [{"name": m.name} for m in all_methods],
        "rows": scale_table.table(all_methods, 0.01, RATES),
        "sensitivity_gbps": 10.0,
        "sensitivity": [{"variant": "as in the table", "step_s": [0.5, 0.01, 0.02, 0.0123]}],
    }


def test_markdown_is_titled_computed_and_lists_its_inputs():
    text = scale_table.markdown(_report())
    assert text.startswith("**Computed, not measured.**")
    body = [line for line in text.splitlines() if line.startswith("| Downpour n_sync=1 | 10 |")]
    # 128 + 128 bytes every step at 10 Gb/s: far below a millisecond of wire.
    assert body == [
        "| Downpour n_sync=1 | 10 | 10.0 | 0.0 | 0.0% | 1.00 (the baseline, 200 steps) | 1.00 |"
    ]
    assert "never reached (exp5)" in text
    for source in ("EXPERIMENTS.md", "codec_speed.json", "codecs.py", "2501.18512", "A100"):
        assert source in text
    assert "downpour H=1 200, downpour H=50 -" in text
    assert "| as in the table | 500.0 | 10.0 | 20.0 | 12.3 |" in text


def test_the_committed_results_render():
    report = common.read_report("scale_table")
    assert report is not None, "benchmarks/results/scale_table.json is missing"
    assert "|---" in scale_table.markdown(report)
