"""Tests for parameter checkpoints (gasgd_tf.checkpoints) and the server writing them."""

import os
import time

import numpy as np
import pytest

from gasgd_tf import checkpoints
from gasgd_tf.server import SGD, DivergedError, ParameterStore
from gasgd_tf.server.checkpointing import save_checkpoint
from gasgd_tf.tensors import FlatLayout, TensorSpec

SPECS = (TensorSpec("conv1/kernel", (3, 3, 1, 4)), TensorSpec("conv1/bias", (4,)))
SIZE = FlatLayout(SPECS).size


def test_save_then_load_round_trips_names_shapes_values_and_version(tmp_path):
    flat = np.random.default_rng(0).standard_normal(SIZE).astype(np.float32)
    path = checkpoints.save(str(tmp_path), SPECS, flat, 42, meta={"note": "x"})
    assert os.path.basename(path) == "params-000000042.npz"
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]

    ckpt = checkpoints.load(path)
    assert ckpt.version == 42 and ckpt.meta["note"] == "x"
    assert list(ckpt.arrays) == ["conv1/kernel", "conv1/bias"]
    assert ckpt.arrays["conv1/kernel"].shape == (3, 3, 1, 4)
    np.testing.assert_array_equal(checkpoints.flatten_for(ckpt, SPECS), flat)
    # In another order of the same tensors, the values follow the names.
    swapped = checkpoints.flatten_for(ckpt, SPECS[::-1])
    np.testing.assert_array_equal(swapped[:4], flat[-4:])


def test_resolve_finds_the_newest_checkpoint_of_a_run_folder(tmp_path):
    folder = tmp_path / "run" / "checkpoints"
    flat = np.zeros(SIZE, np.float32)
    old = checkpoints.save(str(folder), SPECS, flat, 900)
    time.sleep(0.01)
    # A rerun in the same workdir restarts at version 0: newest written wins.
    new = checkpoints.save(str(folder), SPECS, flat, 5)
    os.utime(old, (time.time() - 60, time.time() - 60))
    assert checkpoints.resolve(str(tmp_path / "run")) == new
    assert checkpoints.resolve(str(folder)) == new
    assert checkpoints.resolve(old) == old


def test_resolve_and_load_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint file or run folder"):
        checkpoints.resolve(str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="no checkpoint in"):
        checkpoints.resolve(str(tmp_path))
    bad = tmp_path / "params-000000001.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a gasgd_tf checkpoint"):
        checkpoints.load(str(bad))


def test_flatten_for_names_missing_extra_and_misshaped_tensors(tmp_path):
    path = checkpoints.save(str(tmp_path), SPECS, np.zeros(SIZE, np.float32), 1)
    ckpt = checkpoints.load(path)
    with pytest.raises(ValueError, match="missing \\['dense/kernel'\\]"):
        checkpoints.flatten_for(ckpt, (*SPECS, TensorSpec("dense/kernel", (2,))))
    with pytest.raises(ValueError, match="unexpected \\['conv1/bias'\\]"):
        checkpoints.flatten_for(ckpt, SPECS[:1])
    with pytest.raises(ValueError, match="'conv1/bias' has shape \\(4,\\), the model has \\(5,\\)"):
        checkpoints.flatten_for(ckpt, (SPECS[0], TensorSpec("conv1/bias", (5,))))


def test_server_saves_its_current_parameters_and_version(tmp_path, capsys):
    store = ParameterStore(SGD(learning_rate=1.0))
    assert save_checkpoint(store, str(tmp_path)) is None  # Nothing to save yet.
    init = np.arange(SIZE, dtype=np.float32)
    store.initialize("worker_0", SPECS, init.copy())
    store.push("worker_0", 1, 0, np.ones(SIZE, np.float32))
    path = save_checkpoint(store, str(tmp_path))
    ckpt = checkpoints.load(path)
    assert ckpt.version == 1 and ckpt.meta["optimizer"]["learning_rate"] == 1.0
    np.testing.assert_array_equal(checkpoints.flatten_for(ckpt, SPECS), init - 1.0)
    assert "saved version 1" in capsys.readouterr().out


def test_server_writes_no_checkpoint_of_diverged_parameters(tmp_path, capsys):
    store = ParameterStore(SGD(learning_rate=1.0))
    store.initialize("worker_0", SPECS, np.zeros(SIZE, np.float32))
    store.push("worker_0", 1, 0, np.full(SIZE, 3e38, np.float32))
    with pytest.raises(DivergedError):
        store.push("worker_0", 2, 1, np.full(SIZE, 3e38, np.float32))  # Overflows to -inf.
    assert save_checkpoint(store, str(tmp_path)) is None
    assert "no checkpoint written" in capsys.readouterr().out
    assert not os.listdir(tmp_path)


def test_a_truncated_checkpoint_is_refused_clearly(tmp_path):
    path = checkpoints.save(str(tmp_path), SPECS, np.zeros(SIZE, np.float32), 3)
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])  # A copy cut short.
    with pytest.raises(checkpoints.CheckpointError, match="not a gasgd_tf checkpoint"):
        checkpoints.load(path)
    with pytest.raises(checkpoints.CheckpointError):
        checkpoints.load_meta(str(tmp_path))


def test_the_launcher_records_only_its_own_servers_checkpoint(tmp_path):
    import types

    from gasgd_tf import config_base
    from gasgd_tf.launch import LocalLauncher

    launcher = LocalLauncher(config_base.finalize(config_base.get_base_config()), str(tmp_path))
    directory = str(tmp_path / "checkpoints")
    flat = np.zeros(SIZE, np.float32)
    older = checkpoints.save(directory, SPECS, flat, 500, meta={"server_id": "old"})
    status = types.SimpleNamespace(server_id="new", version=40)
    # The new server wrote nothing (disk full, killed): the old file is not this run's.
    assert launcher._checkpoint_of(status) is None
    time.sleep(0.01)
    mine = checkpoints.save(directory, SPECS, flat, 40, meta={"server_id": "new"})
    assert launcher._checkpoint_of(status) == mine != older


def test_check_slots_names_a_file_whose_slots_disagree_with_its_tensors(tmp_path):
    flat = np.zeros(SIZE, np.float32)
    slots = {"momentum": np.zeros(SIZE - 1, np.float32), "iterations": np.zeros(1, np.int64)}
    path = checkpoints.save(str(tmp_path), SPECS, flat, 3, slots=slots)
    checkpoint = checkpoints.read_file(path)
    checkpoints.check_slots(checkpoint, {"iterations": (1,)})  # Fits; others not compared.
    checkpoints.check_slots(checkpoint, {"velocity": (SIZE,)})  # Absent: another optimizer's.
    with pytest.raises(checkpoints.CheckpointError) as raised:
        checkpoints.check_slots(checkpoint, {"momentum": (SIZE,), "iterations": (1,)})
    assert str(raised.value) == (
        f"{path} is inconsistent: optimizer slot 'momentum' has shape ({SIZE - 1},), but the "
        f"file's {SIZE} parameter values need ({SIZE},)"
    )
