"""Tests for the TensorFlow-free TensorBoard event writer (gasgd_tf.summaries).

Event files are read back with TensorBoard's own EventAccumulator, so these
tests check what TensorBoard will show, not just what the writer meant to write.
"""

import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from tensorboard.backend.event_processing import event_accumulator

from gasgd_tf.summaries import MetricWriter

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
DBL_MAX = np.finfo(np.float64).max


def _load(logdir) -> event_accumulator.EventAccumulator:
    # size_guidance 0 keeps every event (the default samples histograms down).
    acc = event_accumulator.EventAccumulator(
        str(logdir),
        size_guidance={event_accumulator.SCALARS: 0, event_accumulator.HISTOGRAMS: 0},
    )
    acc.Reload()
    return acc


def _expected_counts(values, limits):
    # Bucket i holds (limits[i-1], limits[i]]; written independently of the module's searchsorted.
    counts = [0] * len(limits)
    for v in values:
        counts[next(i for i, limit in enumerate(limits) if v <= limit)] += 1
    return counts


def test_scalars_read_back_with_tags_steps_and_values(tmp_path):
    with MetricWriter(tmp_path) as writer:
        writer.scalar("train/loss", 0.5, step=1)
        writer.scalar("train/loss", 0.25, step=2)
        writer.scalar("eval/accuracy", 0.875, step=7, wall_time=123.0)
    assert os.path.dirname(writer.path) == str(tmp_path)
    assert os.path.basename(writer.path).startswith("events.out.tfevents.")

    acc = _load(tmp_path)
    assert sorted(acc.Tags()["scalars"]) == ["eval/accuracy", "train/loss"]
    loss = acc.Scalars("train/loss")
    assert [e.step for e in loss] == [1, 2]
    assert [e.value for e in loss] == [0.5, 0.25]  # Exact in float32.
    (acc_event,) = acc.Scalars("eval/accuracy")
    assert (acc_event.step, acc_event.value, acc_event.wall_time) == (7, 0.875, 123.0)


def test_scalar_accepts_numpy_values(tmp_path):
    # Callers pass numpy scalars (losses from TF/numpy); they must be stored as floats.
    with MetricWriter(tmp_path) as writer:
        writer.scalar("x", np.float32(1.5), step=np.int64(3))
    (event,) = _load(tmp_path).Scalars("x")
    assert (event.step, event.value) == (3, 1.5)


def test_scalars_writes_every_tag_at_one_step(tmp_path):
    values = {"a": 1.0, "b": -2.0, "c/d": 3.5}
    with MetricWriter(tmp_path) as writer:
        writer.scalars(values, step=42)
    acc = _load(tmp_path)
    assert sorted(acc.Tags()["scalars"]) == sorted(values)
    events = {tag: acc.Scalars(tag) for tag in values}
    for tag, value in values.items():
        (event,) = events[tag]
        assert (event.step, event.value) == (42, value)
    # One call is one point in time for all its tags.
    assert len({e[0].wall_time for e in events.values()}) == 1


def test_histogram_with_explicit_bucket_limits(tmp_path):
    values = [-1.0, 0.5, 0.5, 1.5, 2.5, 10.0]
    with MetricWriter(tmp_path) as writer:
        writer.histogram("staleness", values, step=5, bucket_limits=[0.0, 1.0, 2.0, 3.0])
    acc = _load(tmp_path)
    assert acc.Tags()["histograms"] == ["staleness"]
    (event,) = acc.Histograms("staleness")
    h = event.histogram_value
    assert event.step == 5
    # The last bucket is open to +inf: its limit is DBL_MAX, as TensorFlow writes it.
    assert list(h.bucket_limit) == [0.0, 1.0, 2.0, DBL_MAX]
    assert list(h.bucket) == [1, 2, 1, 2]
    assert (h.num, h.min, h.max) == (6, -1.0, 10.0)
    assert h.sum == pytest.approx(sum(values))
    assert h.sum_squares == pytest.approx(sum(v * v for v in values))


def test_histogram_with_default_buckets(tmp_path):
    rng = np.random.default_rng(0)
    values = rng.normal(size=500)
    with MetricWriter(tmp_path) as writer:
        writer.histogram("weights", values, step=3)
    (event,) = _load(tmp_path).Histograms("weights")
    h = event.histogram_value
    # 30 equal buckets over [min, max], the last one open.
    edges = np.linspace(values.min(), values.max(), 31)[1:]
    assert len(h.bucket_limit) == len(h.bucket) == 30
    np.testing.assert_allclose(h.bucket_limit[:-1], edges[:-1])
    assert h.bucket_limit[-1] == DBL_MAX
    assert list(h.bucket) == _expected_counts(values, list(h.bucket_limit))
    assert sum(h.bucket) == h.num == 500
    assert h.min == values.min() and h.max == values.max()
    assert h.sum == pytest.approx(values.sum())


def test_histogram_of_equal_values_keeps_all_of_them(tmp_path):
    # min == max must not give a zero-width range (which would drop or misplace values).
    with MetricWriter(tmp_path) as writer:
        writer.histogram("const", np.full((2, 3), 5.0), step=0)
    (event,) = _load(tmp_path).Histograms("const")
    h = event.histogram_value
    assert (h.num, h.min, h.max, h.sum) == (6, 5.0, 5.0, 30.0)
    assert sum(h.bucket) == 6
    assert h.bucket[0] == 6


def test_empty_histogram_writes_nothing(tmp_path):
    writer = MetricWriter(tmp_path)
    size = os.path.getsize(writer.path)
    writer.histogram("empty", [], step=1)
    writer.histogram("empty", np.zeros((0, 4)), step=2)
    assert os.path.getsize(writer.path) == size
    writer.close()
    assert _load(tmp_path).Tags()["histograms"] == []


def test_writes_are_visible_before_close(tmp_path):
    # TensorBoard and the launcher read the file while the run goes on.
    writer = MetricWriter(tmp_path)
    try:
        writer.scalar("live", 2.0, step=1)
        assert [e.value for e in _load(tmp_path).Scalars("live")] == [2.0]
    finally:
        writer.close()


def test_write_after_close_raises(tmp_path):
    writer = MetricWriter(tmp_path)
    writer.close()
    writer.close()  # Closing twice is harmless.
    with pytest.raises(ValueError, match="closed"):
        writer.scalar("x", 1.0, step=0)
    with pytest.raises(ValueError, match="closed"):
        writer.histogram("h", [1.0, 2.0], step=0)
    with pytest.raises(ValueError, match="closed"):
        writer.scalars({"a": 1.0}, step=0)


def test_creates_missing_logdir(tmp_path):
    logdir = tmp_path / "tb" / "ps"
    with MetricWriter(logdir) as writer:
        writer.scalar("x", 1.0, step=0)
    assert os.path.isfile(writer.path) and os.path.dirname(writer.path) == str(logdir)


def test_server_and_summaries_never_import_tensorflow(tmp_path):
    # The parameter server's process must stay TensorFlow-free (start-up time, memory).
    code = textwrap.dedent(
        """
        import sys
        import gasgd_tf.summaries
        import gasgd_tf.server
        from gasgd_tf.summaries import MetricWriter
        with MetricWriter(sys.argv[1]) as w:
            w.scalar("s", 1.0, step=1)
            w.histogram("h", [1.0, 2.0, 3.0], step=1)
            w.histogram("h2", [1.0, 2.0], step=1, bucket_limits=[1.5, 2.5])
        bad = sorted(m for m in sys.modules if m == "tensorflow" or m.startswith("tensorflow."))
        print("TF_MODULES", bad)
        sys.exit(1 if bad else 0)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "TF_MODULES []" in result.stdout
    # And the writes really happened in that process.
    acc = _load(tmp_path)
    assert acc.Tags()["scalars"] == ["s"]
    assert sorted(acc.Tags()["histograms"]) == ["h", "h2"]


def test_histogram_leaves_out_non_finite_values(tmp_path):
    # TensorBoard cannot bucket NaN or Inf; counting them in `num` but in no
    # bucket would make the histogram inconsistent.
    with MetricWriter(tmp_path) as writer:
        writer.histogram("h", [1.0, float("inf"), float("nan"), 2.5], 0, bucket_limits=[0.5, 2, 3])
        writer.histogram("only_nan", [float("nan")], 0)
    acc = _load(tmp_path)
    (event,) = acc.Histograms("h")
    assert event.histogram_value.num == 2
    assert sum(event.histogram_value.bucket) == 2
    assert "only_nan" not in acc.Tags()["histograms"]


def test_hparams_are_readable_by_the_hparams_dashboard(tmp_path):
    from tensorboard.plugins.hparams import metadata

    with MetricWriter(tmp_path) as writer:
        writer.hparams(
            {"num_workers": 4, "ps.optimizer": "sgd", "data.flip": False, "warm_start": None},
            trial_id="clients4_nsync10",
        )
    acc = _load(tmp_path)
    content = acc.SummaryMetadata(metadata.SESSION_START_INFO_TAG).plugin_data.content
    info = metadata.parse_session_start_info_plugin_data(content)
    assert info.group_name == "clients4_nsync10"
    assert info.hparams["num_workers"].number_value == 4
    assert info.hparams["ps.optimizer"].string_value == "sgd"
    assert info.hparams["data.flip"].bool_value is False
    assert "warm_start" not in info.hparams  # None values are left out.
