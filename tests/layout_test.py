"""Role names and workdir paths: one definition every process agrees on."""

import os

from gasgd_tf import layout, progress


def test_role_names_round_trip_through_their_predicates():
    assert layout.workers(3) == ["worker_0", "worker_1", "worker_2"]
    assert layout.shard(2) == "ps_2"
    assert layout.is_worker("worker_10") and not layout.is_worker("ps_0")
    assert layout.is_shard("ps_0") and not layout.is_shard(layout.EVAL)


def test_a_shard_is_named_only_when_the_server_is_sharded():
    assert layout.shard_of(0, 1) is None
    assert layout.shard_of(1, 4) == (1, 4)


def test_every_path_is_under_the_workdir_and_distinct():
    paths = [
        layout.config_path("w"),
        layout.summary_path("w"),
        layout.final_model_path("w"),
        layout.checkpoint_dir("w"),
        layout.tensorboard_dir("w"),
        layout.tensorboard_dir("w", "worker_0"),
        layout.progress_path("w", "worker_0"),
        layout.log_path("w", "worker_0"),
        layout.port_path("w", "ps_0"),
    ]
    assert all(p.startswith("w" + os.sep) for p in paths)
    assert len(set(paths)) == len(paths)
    assert progress.progress_path("w", "eval") == os.path.join("w", "progress", "eval.json")
    # Cleared before a new run: never the checkpoints.
    assert layout.CHECKPOINT_DIR not in layout.RUN_OUTPUTS
    assert set(layout.RESUMED_OUTPUTS) <= set(layout.RUN_OUTPUTS)
