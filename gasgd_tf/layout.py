"""The names of a run's roles and the layout of its workdir: defined once, TF-free.

Every process of a run, the launcher, the experiments and the benchmarks
find each other's files through these functions, so a name changes in one
place. The workdir of a run::

    <workdir>/config.json             the resolved config (gasgd_tf.main)
    <workdir>/summary.json            the launcher's summary of the run
    <workdir>/final_model.keras       the server's final parameters as a Keras model
    <workdir>/checkpoints/            the server's checkpoints (kept across runs)
    <workdir>/tb/<role>/              TensorBoard events of each role (tb/: hparams)
    <workdir>/progress/<role>.json    each role's latest progress
    <workdir>/logs/<role>.log         each role's output (local launcher)
    <workdir>/ports/<role>.port       the port a server shard listens on (local launcher)

The roles are ``worker_<i>``, ``ps_<k>`` and ``eval``; they are also the
client ids the workers and the evaluator use on the server.
"""

from __future__ import annotations

import os

WORKER_PREFIX = "worker_"
SHARD_PREFIX = "ps_"
EVAL = "eval"

CONFIG_FILE = "config.json"
SUMMARY_FILE = "summary.json"
FINAL_MODEL_FILE = "final_model.keras"
CHECKPOINT_DIR = "checkpoints"
TENSORBOARD_DIR = "tb"
PROGRESS_DIR = "progress"
LOG_DIR = "logs"
PORT_DIR = "ports"

# Outputs of a previous run in the same workdir, cleared before a new one.
# Checkpoints are kept: they may be hours of work, and a warm start takes the newest.
RUN_OUTPUTS = (TENSORBOARD_DIR, LOG_DIR, PROGRESS_DIR, SUMMARY_FILE, PORT_DIR, FINAL_MODEL_FILE)
# Kept when a run resumes: its TensorBoard curves and logs go on where they were.
RESUMED_OUTPUTS = (TENSORBOARD_DIR, LOG_DIR)

# A server shard as (index, count), or None for an unsharded server: the
# form checkpoints and shared-memory marks are named by.
Shard = tuple[int, int] | None


def worker(index: int) -> str:
    """The role and client id of worker ``index``."""
    return f"{WORKER_PREFIX}{index}"


def workers(num_workers: int) -> list[str]:
    """The roles of workers 0 ... num_workers - 1."""
    return [worker(i) for i in range(num_workers)]


def shard(index: int) -> str:
    """The role of server shard ``index``."""
    return f"{SHARD_PREFIX}{index}"


def is_worker(role: str) -> bool:
    return role.startswith(WORKER_PREFIX)


def is_shard(role: str) -> bool:
    return role.startswith(SHARD_PREFIX)


def shard_of(index: int, num_shards: int) -> Shard:
    """Shard ``index`` of ``num_shards`` as checkpoints name it (None when unsharded)."""
    return (index, num_shards) if num_shards > 1 else None


def config_path(workdir: str) -> str:
    return os.path.join(workdir, CONFIG_FILE)


def summary_path(workdir: str) -> str:
    return os.path.join(workdir, SUMMARY_FILE)


def final_model_path(workdir: str) -> str:
    return os.path.join(workdir, FINAL_MODEL_FILE)


def checkpoint_dir(workdir: str) -> str:
    return os.path.join(workdir, CHECKPOINT_DIR)


def tensorboard_dir(workdir: str, role: str | None = None) -> str:
    """A role's TensorBoard folder; without a role, the run's (hparams)."""
    base = os.path.join(workdir, TENSORBOARD_DIR)
    return base if role is None else os.path.join(base, role)


def progress_path(workdir: str, role: str) -> str:
    return os.path.join(workdir, PROGRESS_DIR, f"{role}.json")


def log_path(workdir: str, role: str) -> str:
    return os.path.join(workdir, LOG_DIR, f"{role}.log")


def port_path(workdir: str, role: str) -> str:
    return os.path.join(workdir, PORT_DIR, f"{role}.port")
