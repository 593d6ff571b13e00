"""Server checkpoints over time: exact resume, keep-last-k, restore rules, restarts on a port."""

import os
import time

import numpy as np
import pytest

from gasgd_tf import checkpoints
from gasgd_tf.client import ParameterClient, ServerRestartedError
from gasgd_tf.server import (
    AheadOfServerError,
    ParameterServer,
    ParameterStore,
    RestoreError,
    make_optimizer,
)
from gasgd_tf.server.checkpointing import (
    Checkpointer,
    LostUpdates,
    RestoreFailedError,
    VersionMark,
    fresh_start_refusal,
    lost_updates,
    read_mark,
    restore_at_start,
    save_checkpoint,
    slot_shapes,
)
from gasgd_tf.tensors import TensorSpec

SPECS = (TensorSpec("w", (3, 4)), TensorSpec("b", (4,)))
SIZE = 16


def grads(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(size=SIZE).astype(np.float32) for _ in range(n)]


def new_store(optimizer: str = "adam") -> ParameterStore:
    return ParameterStore(make_optimizer(optimizer, learning_rate=0.1))


def initialized(optimizer: str = "adam") -> ParameterStore:
    store = new_store(optimizer)
    store.initialize("init", SPECS, np.linspace(-1, 1, SIZE, dtype=np.float32))
    return store


def push_all(store: ParameterStore, gradients, first_sequence: int = 1) -> None:
    for i, g in enumerate(gradients):
        store.push("worker_0", first_sequence + i, store.version, g, client_step=first_sequence + i)


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adagrad", "adadelta", "rmsprop"])
def test_a_restored_store_goes_on_exactly_as_if_it_never_stopped(tmp_path, optimizer):
    gradients = grads(6)
    straight = initialized(optimizer)
    push_all(straight, gradients)

    first = initialized(optimizer)
    push_all(first, gradients[:3])
    save_checkpoint(first, str(tmp_path), run_id="run")
    resumed = new_store(optimizer)
    restored = restore_at_start(resumed, str(tmp_path), None, "run", restore=None)
    assert restored.version == 3 and resumed.version == 3
    push_all(resumed, gradients[3:], first_sequence=4)

    # Bit-identical: parameters and every optimizer slot (Adam's step count too).
    np.testing.assert_array_equal(resumed.snapshot().flat, straight.snapshot().flat)
    for name, slot in straight.export_state().slots.items():
        np.testing.assert_array_equal(resumed.export_state().slots[name], slot)
    assert resumed.status().updates_applied == straight.status().updates_applied == 6


def test_push_sequences_survive_a_restart(tmp_path):
    store = initialized("sgd")
    push_all(store, grads(2))
    save_checkpoint(store, str(tmp_path), run_id="run")
    resumed = new_store("sgd")
    restore_at_start(resumed, str(tmp_path), None, "run", restore=None)
    # A retry of push 2 (its answer lost in the crash) is recognised, not applied again.
    again = resumed.push("worker_0", 2, 0, grads(1)[0])
    assert again.duplicate and again.version == 2 and resumed.version == 2
    info = resumed.register("worker_0", SPECS)
    assert (info.last_sequence, info.last_step) == (2, 2)  # Where a restarted worker resumes.


def test_restore_needs_the_same_optimizer(tmp_path):
    store = initialized("adam")
    push_all(store, grads(1))
    save_checkpoint(store, str(tmp_path), run_id="run")
    with pytest.raises(RestoreError, match="saved by another optimizer"):
        restore_at_start(new_store("adagrad"), str(tmp_path), None, "run", restore=None)


def test_restore_modes(tmp_path):
    folder = str(tmp_path)
    with pytest.raises(RestoreFailedError, match="has no checkpoint of run run"):
        restore_at_start(new_store(), folder, None, "run", restore=True)
    assert restore_at_start(new_store(), folder, None, "run", restore=None) is None

    save_checkpoint(initialized(), folder, run_id="run")
    fresh = new_store()
    # Starting run "run" afresh would overwrite and prune its files: refused.
    with pytest.raises(RestoreFailedError, match="give a new --config.run_id"):
        restore_at_start(fresh, folder, None, "run", restore=False)
    assert not fresh.initialized
    assert restore_at_start(fresh, folder, None, "new_run", restore=False) is None
    # Another run's checkpoints are not this run's to resume.
    assert restore_at_start(new_store(), folder, None, "other", restore=None) is None
    assert restore_at_start(new_store(), folder, None, "run", restore=None).version == 0


@pytest.mark.parametrize("where", [0.1, 0.3, 0.5, 0.7, 0.93])
def test_a_damaged_newest_checkpoint_falls_back_to_the_one_before(tmp_path, capsys, where):
    folder = str(tmp_path)
    store = initialized()
    push_all(store, grads(2))
    older = save_checkpoint(store, folder, run_id="run")
    push_all(store, grads(1), first_sequence=3)
    time.sleep(0.01)  # Newest by time written.
    newest = save_checkpoint(store, folder, run_id="run")
    with open(newest, "r+b") as f:  # Bit rot somewhere in the file.
        f.seek(int(os.path.getsize(newest) * where))
        f.write(b"\xff" * 16)
    resumed = new_store()
    restored = restore_at_start(resumed, folder, None, "run", restore=None)
    assert restored.path == older and resumed.version == 2
    out = capsys.readouterr().out
    # Damaged arrays fail the restore, damaged metadata the read: either is said.
    assert f"cannot restore from {newest}" in out or f"cannot read {newest}" in out, out


def test_a_server_never_starts_empty_over_checkpoints_it_cannot_read(tmp_path):
    path = save_checkpoint(initialized(), str(tmp_path), run_id="run")
    with open(path, "wb") as f:
        f.write(b"not a zip file")
    store = new_store()
    with pytest.raises(RestoreFailedError, match="damaged checkpoint"):
        restore_at_start(store, str(tmp_path), None, "run", restore=None)
    assert not store.initialized


def test_the_version_mark_counts_the_updates_a_checkpoint_missed(tmp_path, capsys):
    folder = str(tmp_path)
    store = initialized("sgd")
    store.version_sink = VersionMark(folder, "run", None).open()
    push_all(store, grads(3))
    save_checkpoint(store, folder, run_id="run")
    push_all(store, grads(4), first_sequence=4)  # Then the process is killed.
    assert read_mark(folder, "run", None) == 7
    restored = restore_at_start(new_store("sgd"), folder, None, "run", restore=None)
    assert (restored.version, restored.updates_lost) == (3, 4)
    assert "4 update(s) applied after it were lost" in capsys.readouterr().out
    assert restored.pushes_lost == 4  # One push per update without rounds.


def test_with_rounds_the_mark_counts_the_acknowledged_pushes_of_an_open_round(tmp_path, capsys):
    from gasgd_tf.server.rounds import RoundState

    folder = str(tmp_path)

    def round_store():
        return ParameterStore(
            make_optimizer("sgd", learning_rate=0.1), rounds=RoundState(0.5, 10.0)
        )

    store = round_store()
    store.initialize("a", SPECS, np.zeros(SIZE, np.float32))
    store.snapshot("a"), store.snapshot("b")
    store.version_sink = VersionMark(folder, "run", None).open()
    store.push("a", 1, 0, np.ones(SIZE, np.float32))
    save_checkpoint(store, folder, run_id="run")  # The open round holds a's push.
    store.push("b", 1, 0, np.ones(SIZE, np.float32))  # Closes round 1: version 1.
    store.push("a", 2, 1, np.ones(SIZE, np.float32))  # Acknowledged into round 2; then killed.
    restored = restore_at_start(round_store(), folder, None, "run", restore=None)
    assert (restored.version, restored.updates_lost, restored.pushes_lost) == (0, 1, 2)
    assert "2 acknowledged push(es) taken after it were lost" in capsys.readouterr().out


def test_checkpointer_saves_by_updates_and_keeps_the_newest_k_of_its_run(tmp_path):
    folder = str(tmp_path)
    save_checkpoint(initialized(), folder, run_id="older_run")  # Never pruned.
    store = initialized("sgd")
    saver = Checkpointer(store, folder, None, "run", every_secs=0, every_updates=2, keep=2)
    assert saver.due()  # The first state, at once.
    saver.save()
    assert not saver.due()
    for sequence in range(1, 8):
        push_all(store, grads(1), first_sequence=sequence)
        if saver.due():
            time.sleep(0.01)
            saver.save()
    kept = checkpoints.restore_candidates(folder, None, "run")
    assert [checkpoints.read_file(p, False).version for p in kept] == [6, 4]
    assert len(checkpoints.restore_candidates(folder, None, "older_run")) == 1


def test_checkpointer_thread_saves_periodically(tmp_path):
    store = initialized("sgd")
    saver = Checkpointer(store, str(tmp_path), None, "run", every_secs=0.2, every_updates=0, keep=3)
    saver.start()
    try:
        deadline = time.monotonic() + 10
        while saver.saved < 1:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        push_all(store, grads(1))
        while saver.saved < 2:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        saver.stop()
    newest = checkpoints.restore_candidates(str(tmp_path), None, "run")[0]
    assert checkpoints.read_file(newest, False).version == 1


def test_warm_start_reads_a_checkpoint_with_optimizer_state_as_parameters_only(tmp_path):
    store = initialized("adam")
    push_all(store, grads(2))
    path = save_checkpoint(store, str(tmp_path), run_id="run")
    loaded = checkpoints.load(path)
    assert list(loaded.arrays) == ["w", "b"]  # The slots are not tensors of the model.
    assert set(loaded.slots) == {"momentum", "velocity", "iterations"}


def test_clients_reconnect_to_a_server_restarted_on_its_port(tmp_path):
    # A server restarted on the same port from its checkpoint: the client's
    # next push, computed from a version the server lost, is refused with
    # ServerRestartedError; after a fetch it goes on from the restored version.
    folder = str(tmp_path)
    first = ParameterServer(initialized("sgd"), "127.0.0.1:0").start()
    address, port = first.address, first.port
    with ParameterClient(address, "worker_0", timeout_secs=5, retry_secs=20) as client:
        client.register(SPECS)
        version, _, _ = client.fetch()
        for _ in range(3):
            version = client.push(grads(1)[0], version).version
        save_checkpoint(first.store, folder, run_id="run")
        for _ in range(2):
            version = client.push(grads(1)[0], version).version
        first.stop(grace=None)  # Dies: the last two updates were never saved.

        store = new_store("sgd")
        restore_at_start(store, folder, None, "run", restore=None)
        second = ParameterServer(store, f"127.0.0.1:{port}").start()
        try:
            with pytest.raises(ServerRestartedError, match="base_version 5 is ahead"):
                client.push(grads(1)[0], version)
            version, _, flat = client.fetch()
            assert version == 3
            ack = client.push(grads(1)[0], version)
            assert (ack.version, ack.staleness) == (4, 0)
        finally:
            second.stop(grace=None)


def test_a_push_from_a_lost_version_of_an_earlier_start_is_refused(tmp_path):
    # Versions above the checkpoint's were the crashed server's: the same
    # number on the restarted server names other parameters. Any push whose
    # base came from the earlier start above the checkpoint is refused, even
    # once the restarted server has counted past it again.
    first = initialized("sgd")
    push_all(first, grads(2))
    save_checkpoint(first, str(tmp_path), run_id="run")
    old_start = first.server_id
    resumed = new_store("sgd")
    restore_at_start(resumed, str(tmp_path), None, "run", restore=None)
    push_all(resumed, grads(3), first_sequence=10)  # Back at version 5.
    with pytest.raises(AheadOfServerError, match="base_version 4 is ahead"):
        resumed.push("worker_1", 1, 4, grads(1)[0], base_server_id=old_start)
    # A base at or below the checkpoint is the same in both starts: applied.
    assert resumed.push("worker_1", 1, 2, grads(1)[0], base_server_id=old_start).version == 6
    # And this start's own versions are fine.
    assert (
        resumed.push("worker_1", 2, 6, grads(1)[0], base_server_id=resumed.server_id).version == 7
    )


def test_a_leave_is_checkpointed_even_when_the_version_stands_still(tmp_path):
    store = initialized("sgd")
    saver = Checkpointer(
        store, str(tmp_path), None, "run", every_secs=3600, every_updates=0, keep=2
    )
    saver.save()
    assert not saver.due()
    store.register("worker_0", SPECS)
    store.leave("worker_0")  # Its last push was saved; its Leave must be too.
    assert saver.due()
    time.sleep(0.01)
    saver.save()
    resumed = new_store("sgd")
    restore_at_start(resumed, str(tmp_path), None, "run", restore=None)
    (record,) = [c for c in resumed.status().clients if c.client_id == "worker_0"]
    assert not record.active  # An evaluator waiting for worker_0 to leave is not stuck.


def test_a_failed_periodic_save_waits_before_trying_again(tmp_path, monkeypatch, capsys):
    from gasgd_tf.server import checkpointing

    monkeypatch.setattr(checkpointing, "FAILED_SAVE_BACKOFF_SECS", 60.0)
    calls = []

    def full_disk(*args, **kwargs):
        calls.append(1)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpointing, "save_checkpoint", full_disk)
    saver = Checkpointer(
        initialized("sgd"), str(tmp_path), None, "run", every_secs=0.1, every_updates=0, keep=2
    )
    saver.start()
    time.sleep(1.0)
    saver.stop()
    assert len(calls) == 1  # Not ten times a second.
    assert "checkpoint failed (OSError" in capsys.readouterr().out


def _rewrite_slot(path: str, name: str, values: np.ndarray) -> None:
    """Rewrites one optimizer slot of a checkpoint in place: still a well-formed file."""
    with np.load(path, allow_pickle=False) as data:
        arrays = {key: data[key] for key in data.files}
    arrays["__slot__." + name] = values
    when = os.path.getmtime(path)
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    os.utime(path, (when, when))  # Still the newest.


def test_an_inconsistent_newest_checkpoint_is_named_and_the_one_before_used(tmp_path, capsys):
    folder = str(tmp_path)
    store = initialized("adam")
    push_all(store, grads(2))
    older = save_checkpoint(store, folder, run_id="run")
    push_all(store, grads(1), first_sequence=3)
    time.sleep(0.01)  # Newest by time written.
    newest = save_checkpoint(store, folder, run_id="run")
    _rewrite_slot(newest, "momentum", np.zeros(SIZE - 2, np.float32))  # Beside 16 parameters.

    resumed = new_store("adam")
    restored = restore_at_start(resumed, folder, None, "run", restore=None)
    assert restored.path == older and resumed.version == 2
    out = capsys.readouterr().out
    assert f"cannot restore from {newest} ({newest} is inconsistent" in out, out
    assert "slot 'momentum' has shape (14,), but the file's 16 parameter values need (16,)" in out


def test_an_inconsistent_only_checkpoint_stops_the_server_naming_the_file(tmp_path):
    path = save_checkpoint(initialized("adam"), str(tmp_path), run_id="run")
    _rewrite_slot(path, "velocity", np.zeros((4, 4), np.float32))
    store = new_store("adam")
    with pytest.raises(RestoreFailedError, match=rf"{path}: {path} is inconsistent.*'velocity'"):
        restore_at_start(store, str(tmp_path), None, "run", restore=None)
    assert not store.initialized


def test_a_fixed_size_slot_is_checked_too(tmp_path):
    path = save_checkpoint(initialized("adam"), str(tmp_path), run_id="run")
    _rewrite_slot(path, "iterations", np.zeros(SIZE, np.int64))  # Adam's step count is (1,).
    with pytest.raises(RestoreFailedError, match="'iterations' has shape \\(16,\\).*need \\(1,\\)"):
        restore_at_start(new_store("adam"), str(tmp_path), None, "run", restore=None)


def test_another_optimizers_checkpoint_names_the_file(tmp_path):
    path = save_checkpoint(initialized("adam"), str(tmp_path), run_id="run")
    with pytest.raises(RestoreError, match=f"^{path}: .*saved by another optimizer"):
        restore_at_start(new_store("rmsprop"), str(tmp_path), None, "run", restore=None)


def test_slot_shapes_match_what_each_optimizer_allocates():
    for name in ("sgd", "adam", "adagrad", "adadelta", "rmsprop"):
        optimizer = make_optimizer(
            name, learning_rate=0.1, **({"momentum": 0.9} if name == "sgd" else {})
        )
        expected = {k: v.shape for k, v in optimizer.init_slots(37).items()}
        assert slot_shapes(optimizer, 37) == expected, name


def test_updates_lost_are_computed_once_for_the_launcher_and_the_server(tmp_path):
    folder = str(tmp_path)
    assert lost_updates(folder, "run", None, 3) == LostUpdates(None, None)  # No crash on record.
    mark = VersionMark(folder, "run", None).open()
    mark[0] = 7
    mark.flush()
    assert lost_updates(folder, "run", None, 3) == LostUpdates(7, 4, None)  # No push count.
    assert lost_updates(folder, "run", None, 9) == LostUpdates(7, None)  # An earlier start's mark.
    assert lost_updates(folder, "other", None, 3) == LostUpdates(None, None)


def test_the_norestore_refusal_is_one_rule_for_the_launcher_and_the_server(tmp_path):
    from gasgd_tf import config_base, launch

    folder = os.path.join(str(tmp_path), checkpoints.CHECKPOINT_DIR)
    assert fresh_start_refusal(folder, None, "run") is None
    save_checkpoint(initialized(), folder, run_id="run")
    refusal = fresh_start_refusal(folder, None, "run")
    assert "holds 1 checkpoint(s) of run run" in refusal and "give a new --config.run_id" in refusal
    assert fresh_start_refusal(folder, None, "new_run") is None

    with pytest.raises(RestoreFailedError) as server_says:
        restore_at_start(new_store(), folder, None, "run", restore=False)
    config = config_base.finalize(config_base.get_base_config())
    config.run_id, config.restore = "run", False
    with pytest.raises(ValueError) as launcher_says:
        launch.choose_run(config, str(tmp_path))
    assert str(server_says.value) == str(launcher_says.value) == refusal
