"""Tests for config defaults, resolution and validation (gasgd_tf.config_base, configs/default.py).

A bad value must fail before any process starts, with the offending field's
name in the message, both through the API and through the command line.
"""

import importlib.util
import json
import pathlib
import subprocess
import sys

import pytest

from configs import default
from gasgd_tf import config_base

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent


def _base(**overrides):
    config = config_base.get_base_config()
    for path, value in overrides.items():
        node = config
        *parents, leaf = path.split("__")
        for name in parents:
            node = node[name]
        node[leaf] = value
    return config


def test_default_config_finalizes():
    config = config_base.finalize(default.get_config())
    assert config.num_workers == 2 and config.n_sync == 1
    assert (config.n_push, config.n_fetch) == (1, 1)
    assert config.worker.cpu_threads == 1
    # finalize locks the config: a typo'd field can no longer be added by accident.
    with pytest.raises(AttributeError):
        config.num_worker = 3


def test_finalize_resolves_and_locks_the_callers_config_in_place():
    # Callers keep using the object they passed (main, the sweep, the tests):
    # it must be the resolved one, and as locked as the returned one.
    config = config_base.get_base_config()
    config.n_sync = 6
    assert (config.n_push, config.n_fetch) == (None, None)
    config_base.finalize(config)
    assert (config.n_push, config.n_fetch) == (6, 6)
    with pytest.raises(AttributeError):
        config.n_pushh = 2  # A typo can no longer add a field.
    config.n_push = 3  # Existing fields may still be set (overrides after finalize).
    assert config.n_push == 3


def test_n_sync_sets_unset_n_push_and_n_fetch():
    config = config_base.finalize(_base(n_sync=4))
    assert (config.n_push, config.n_fetch) == (4, 4)


def test_explicit_n_push_and_n_fetch_are_kept():
    config = config_base.finalize(_base(n_sync=4, n_push=2, n_fetch=8))
    assert (config.n_sync, config.n_push, config.n_fetch) == (4, 2, 8)
    # Only one set: the other still follows n_sync.
    config = config_base.finalize(_base(n_sync=3, n_fetch=5))
    assert (config.n_push, config.n_fetch) == (3, 5)


@pytest.mark.parametrize(
    "overrides, field",
    [
        (dict(num_workers=0), "num_workers"),
        (dict(num_steps=0), "num_steps"),
        (dict(batch_size=-1), "batch_size"),
        (dict(n_sync=0), "n_sync"),
        (dict(n_push=0), "n_push"),
        (dict(n_fetch=0), "n_fetch"),
        (dict(data__name="imagenet"), "data.name"),
        (dict(model__name="resnet"), "model.name"),
        (dict(model__dropout=1.0), "model.dropout"),
        (dict(worker__optimizer="adam"), "worker.optimizer"),
        (dict(ps__optimizer="adamw"), "ps.optimizer"),
        (dict(ps__optimizer="adam", ps__beta_1=1.0), "ps"),
        (dict(ps__staleness="sometimes"), "ps.staleness"),
        (dict(ps__staleness="bounded", n_fetch=2), "ps.staleness"),
        (dict(ps__lr_schedule="linear"), "ps"),
        (dict(ps__staleness="bounded", ps__straggler_secs=60.0), "ps.straggler_secs"),
        (dict(ps__staleness="bounded", num_workers=30), "ps.rpc_threads"),
        (dict(ps__staleness="dc_asgd", n_push=2, n_fetch=1), "ps.staleness"),
        (dict(ps__dc_lambda=float("inf")), "ps.dc_lambda"),
        (dict(worker__overlap=True, ps__staleness="bounded"), "worker.overlap"),
        (dict(worker__overlap=True, ps__staleness="dc_asgd"), "worker.overlap"),
        (dict(worker__momentum=1.0), "worker.momentum"),
        (dict(ps__momentum=1.0), "ps.momentum"),
        (dict(ps__momentum=-0.1), "ps.momentum"),
        (dict(worker__learning_rate=0.0), "worker.learning_rate"),
        (dict(ps__learning_rate=0.0), "ps.learning_rate"),
        (dict(ps__weight_decay=-1e-4), "ps.weight_decay"),
        (dict(client__chunk_bytes=(4 << 20) + 1), "client.chunk_bytes"),
        (dict(client__chunk_bytes=(64 << 10) - 1), "client.chunk_bytes"),
        (dict(client__timeout_secs=0.0), "client.timeout_secs"),
        (dict(client__retry_secs=-1.0), "client.retry_secs"),
        (dict(worker__log_every_steps=0), "worker.log_every_steps"),
        (dict(eval__every_secs=0.0), "eval.every_secs"),
        (dict(data__pad=-1), "data.pad"),
        (dict(data__crop=-8), "data.crop"),
        (dict(data__resize=-1), "data.resize"),
        (dict(model__width=0.0), "model.width"),
        (dict(data__crop=9), "data.resize/pad/crop"),  # 9x9 from the 8x8 digits.
        (dict(eval__multi_crop=True), "eval.multi_crop"),  # Five copies of the whole image.
        (dict(data__name="imagenet2012"), "data.resize/pad/crop"),  # Sizes vary: needs a crop.
    ],
)
def test_invalid_value_names_its_field(overrides, field):
    with pytest.raises(ValueError, match=rf"invalid config: {field}\b"):
        config_base.finalize(_base(**overrides))


def test_chunk_bytes_limits_are_inclusive():
    for chunk in (64 << 10, 4 << 20):
        assert config_base.finalize(_base(client__chunk_bytes=chunk)).client.chunk_bytes == chunk


def test_json_round_trip_is_equal():
    config = config_base.finalize(_base(n_sync=2, n_fetch=6, num_workers=3, ps__momentum=0.9))
    text = config_base.to_json(config)
    assert json.loads(text)["n_fetch"] == 6
    restored = config_base.from_json(text)
    assert restored.to_dict() == config.to_dict()
    assert config_base.to_json(restored) == text


def test_from_json_validates():
    data = json.loads(config_base.to_json(config_base.finalize(config_base.get_base_config())))
    data["num_workers"] = 0
    with pytest.raises(ValueError, match="num_workers"):
        config_base.from_json(json.dumps(data))


@pytest.mark.parametrize("key", ["num_worker", "ps.momentun"])
def test_from_json_rejects_unknown_key(key):
    # A typo in a hand-edited config.json must not be silently ignored.
    data = json.loads(config_base.to_json(config_base.finalize(config_base.get_base_config())))
    section, _, leaf = key.rpartition(".")
    (data[section] if section else data)[leaf] = 3
    with pytest.raises(ValueError, match=f"unknown field.*{leaf}"):
        config_base.from_json(json.dumps(data))


def _run_main(tmp_path, *flags):
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "gasgd_tf.main",
            "--config=configs/default.py",
            *flags,
            f"--workdir={tmp_path / 'run'}",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,  # Bad flags must fail at once, never start training.
    )


def test_command_line_rejects_unknown_field(tmp_path):
    result = _run_main(tmp_path, "--config.nsync=2")
    assert result.returncode != 0
    assert "nsync" in result.stdout + result.stderr
    assert not (tmp_path / "run").exists()  # Nothing was started.


def test_command_line_rejects_invalid_value_naming_field(tmp_path):
    result = _run_main(tmp_path, "--config.num_workers=0")
    assert result.returncode != 0
    assert "num_workers must be an integer >= 1" in result.stdout + result.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("ps.rpc_threads", 0, "ps.rpc_threads must be an integer >= 1"),
        ("ps.summary_every_secs", 0.0, "ps.summary_every_secs must be a finite number > 0"),
        ("eval.batch_size", 0, "eval.batch_size must be an integer >= 1"),
        ("seed", -1, "seed must be an integer in"),
        ("seed", 2**31, "seed must be an integer in"),
        ("ps.learning_rate", float("inf"), "ps.learning_rate must be a finite number > 0"),
        ("launcher.startup_timeout_secs", -1.0, "launcher.startup_timeout_secs"),
        ("data.shuffle_buffer", 0, "data.shuffle_buffer must be an integer >= 1"),
        ("worker.cpu_threads", -1, "worker.cpu_threads must be an integer >= 0"),
        ("num_workers", True, "num_workers must be an integer >= 1"),
    ],
)
def test_values_that_would_fail_later_are_refused_up_front(field, value, message):
    config = config_base.get_base_config()
    section, _, leaf = field.rpartition(".")
    target = config[section] if section else config
    # Bypass ml_collections' type check to reach our validation (as JSON can).
    with target.ignore_type():
        target[leaf] = value
    with pytest.raises(ValueError, match=message):
        config_base.finalize(config)


def test_from_json_with_a_wrongly_typed_value_is_a_value_error():
    data = json.loads(config_base.to_json(config_base.finalize(config_base.get_base_config())))
    data["num_workers"] = "four"
    with pytest.raises(ValueError, match="invalid config"):
        config_base.from_json(json.dumps(data))


@pytest.mark.parametrize("path", sorted(REPO_ROOT.glob("configs/*.py")), ids=lambda p: p.stem)
def test_every_config_file_resolves(path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    assert "Command:" in (module.__doc__ or "") and "Runtime:" in module.__doc__
    if "sweep" in config:
        from gasgd_tf.experiments import sweep

        base, _, _ = sweep.split_experiment(config)
        config_base.finalize(base)
    else:
        config_base.finalize(config)


def test_an_experiment_config_also_runs_as_one_run(digits_data_dir, tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "gasgd_tf.main",
            "--config=configs/exp2_cold_start.py",
            "--config.smoke=True",  # Sweep fields may be given; one run ignores them.
            f"--config.data.data_dir={digits_data_dir}",
            "--role=prepare",
            f"--workdir={tmp_path / 'run'}",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr


def test_a_short_client_deadline_is_fine_without_bounded_staleness():
    # straggler_secs (30 s by default) only matters to a bounded-staleness wait.
    config = config_base.finalize(_base(client__timeout_secs=5.0))
    assert (config.client.timeout_secs, config.ps.staleness) == (5.0, "none")
    assert config.ps.straggler_secs > config.client.timeout_secs
    # The same deadline with the bounded policy is refused, naming both fields.
    with pytest.raises(ValueError, match=r"ps.straggler_secs .* must be below client.timeout_secs"):
        config_base.finalize(_base(client__timeout_secs=5.0, ps__staleness="bounded"))


def test_a_config_equals_its_config_json_read_back():
    # The launcher compares a resumed run's config with its config.json: a
    # tuple field (worker.step_delay_secs) comes back from JSON as a list.
    import json

    for delays in ((), (0.5,)):
        config = config_base.get_base_config()
        config.worker.step_delay_secs = delays
        config = config_base.finalize(config)
        written = json.loads(config_base.to_json(config))
        assert config_base.differences(written, config.to_dict()) == []
        assert config_base.differences(written, {**config.to_dict(), "seed": 9}) == ["seed"]
