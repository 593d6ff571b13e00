"""Named training recipes that configs and experiments share: written once, here.

``configs/default.py``, ``configs/diloco.py``, ``configs/async_diloco.py`` and
``configs/streaming_diloco.py`` return these; the low-communication experiment (exp5) applies the same
functions to its own setting, so "DiLoCo" means one thing everywhere.
"""

from __future__ import annotations

import ml_collections

from gasgd_tf import config_base

# DiLoCo's outer optimizer (Douillard et al. 2023, arXiv 2311.08105):
# Nesterov SGD, learning rate 0.7, momentum 0.9, over H = 50 inner steps.
DILOCO_OUTER_LEARNING_RATE = 0.7
DILOCO_OUTER_MOMENTUM = 0.9
DILOCO_LOCAL_STEPS = 50
# The inner AdamW's learning rate on the digits CNN (BUILD_NOTES.md,
# "Low-communication training": 0.002 against 0.001 and 0.005).
DILOCO_INNER_LEARNING_RATE = 0.002
# Streaming DiLoCo (Douillard et al. 2025, arXiv 2501.18512): F fragments,
# each fetch overlapped with tau = H / 10 local steps, merged half and half,
# outer gradients in 4 bits (here: int4 blockwise, gasgd_tf/codecs.py).
STREAMING_FRAGMENTS = 4
STREAMING_OVERLAP_STEPS = 5
STREAMING_MIX_ALPHA = 0.5
STREAMING_CODEC = "int4"
# Parameters fetched in bfloat16: half the bytes, no loss measured (BUILD_NOTES.md).
STREAMING_FETCH_DTYPE = "bfloat16"


def default_run() -> ml_collections.ConfigDict:
    """The default run (configs/default.py): 2 workers x 500 steps of A-SGD, n_sync 1."""
    config = config_base.get_base_config()
    config.num_workers = 2
    config.num_steps = 500
    config.batch_size = 32
    config.n_sync = 1
    config.worker.learning_rate = 0.02
    # Server momentum: 0.9 reached 0.978 test accuracy in 3 of 3 runs here,
    # plain SGD (lr 0.05, 400 or 600 steps) 0.964 to 0.969 (BUILD_NOTES.md).
    config.ps.learning_rate = 0.02
    config.ps.momentum = 0.9
    # Two workers share two cores: one thread each avoids oversubscription.
    config.worker.cpu_threads = 1
    return config


def diloco(
    config: ml_collections.ConfigDict,
    local_steps: int = DILOCO_LOCAL_STEPS,
    inner_learning_rate: float = DILOCO_INNER_LEARNING_RATE,
) -> ml_collections.ConfigDict:
    """Makes ``config`` DiLoCo: H local AdamW steps, delta pushes, rounds, outer Nesterov.

    Returns the same config, changed.
    """
    config.n_sync = local_steps
    config.worker.push = "delta"
    config.worker.optimizer = "adamw"
    config.worker.learning_rate = inner_learning_rate
    config.worker.momentum = 0.0
    config.ps.aggregation = "round"
    config.ps.staleness = "none"
    config.ps.optimizer = "sgd"
    config.ps.learning_rate = DILOCO_OUTER_LEARNING_RATE
    config.ps.momentum = DILOCO_OUTER_MOMENTUM
    config.ps.nesterov = True
    config.worker.local_steps = "fixed"
    return config


def async_diloco(
    config: ml_collections.ConfigDict,
    local_steps: int = DILOCO_LOCAL_STEPS,
    inner_learning_rate: float = DILOCO_INNER_LEARNING_RATE,
) -> ml_collections.ConfigDict:
    """Makes ``config`` asynchronous DiLoCo (Liu et al. 2024, arXiv 2401.09135).

    ``diloco`` without rounds: each delta is applied on arrival with Delayed
    Nesterov (period: the number of workers), and adaptive local steps
    (DyLU) give slow workers fewer steps per sync. Returns the same config.
    """
    diloco(config, local_steps, inner_learning_rate)
    config.ps.aggregation = "each"
    config.ps.staleness = "delayed_nesterov"
    config.ps.nesterov = False  # Delayed Nesterov is Nesterov by construction.
    config.ps.dn_period = 0  # The number of workers.
    config.worker.local_steps = "adaptive"
    return config


def streaming_diloco(
    config: ml_collections.ConfigDict,
    fragments: int = STREAMING_FRAGMENTS,
    overlap_steps: int = STREAMING_OVERLAP_STEPS,
    mix_alpha: float = STREAMING_MIX_ALPHA,
    codec: str = STREAMING_CODEC,
) -> ml_collections.ConfigDict:
    """Makes ``config`` Streaming DiLoCo: ``diloco`` synced one fragment at a time.

    Fragment f of F syncs at step offset f * H / F, its fetch overlapped
    with ``overlap_steps`` local steps and merged with ``mix_alpha``; the
    deltas travel in ``codec`` with error feedback, the parameters in
    bfloat16. Returns the same config.
    """
    diloco(config)
    config.sync.fragments = fragments
    config.sync.overlap_steps = overlap_steps
    config.sync.mix_alpha = mix_alpha
    config.client.push_codec = codec
    config.client.fetch_dtype = STREAMING_FETCH_DTYPE
    return config
