"""Where a TensorFlow process runs: one GPU per worker when there are GPUs, else the CPU."""

from __future__ import annotations

import logging

import tensorflow as tf

log = logging.getLogger(__name__)


class DeviceError(RuntimeError):
    """More workers on a node than it has GPUs (and sharing was not asked for)."""


def pick_gpu(local_rank: int, num_gpus: int, share_gpus: bool = False) -> int:
    """Which of the node's ``num_gpus`` GPUs the worker of ``local_rank`` takes.

    A process that sees exactly one GPU takes it, whatever its rank: the
    scheduler gave it that one (Slurm's ``--gpus-per-task=1``, a pod with
    one GPU).

    Raises:
      DeviceError: ``local_rank >= num_gpus > 1`` without ``share_gpus``:
        two workers on one GPU halve each other's speed and may run out of
        its memory, so it must be asked for.
    """
    if num_gpus == 1:
        return 0
    if local_rank < num_gpus:
        return local_rank
    if not share_gpus:
        raise DeviceError(
            f"this worker has local rank {local_rank} but the process sees {num_gpus} GPU(s): "
            "start at most one worker per GPU on a node, set LOCAL_RANK to each worker's rank "
            "on its node, or set worker.share_gpus=True to put several on one GPU"
        )
    return local_rank % num_gpus


def configure(local_rank: int, cpu_threads: int = 0, share_gpus: bool = False) -> str:
    """Pins this process to one GPU (by local rank) or limits its CPU threads.

    The GPU is chosen inside the process (``tf.config.set_visible_devices``,
    what ``CUDA_VISIBLE_DEVICES=<local rank>`` would do from outside), so
    that the same command runs on every node. Takes effect only before
    TensorFlow initialises its devices (before the first op); called later,
    as when several roles share one test process, it logs that and keeps
    the current settings.

    Args:
      local_rank: This worker's rank on its node (``gasgd_tf.cluster.local_rank``:
        Slurm's local id, ``LOCAL_RANK``, else the worker index): it takes
        that GPU.
      cpu_threads: On CPU, intra- and inter-op threads; 0 keeps TensorFlow's
        default. Several workers on one CPU run faster with 1 each.
      share_gpus: Allow more workers than GPUs (rank modulo the GPUs).

    Returns:
      A description of the device, for logs.

    Raises:
      DeviceError: See ``pick_gpu``.
    """
    gpus = tf.config.list_physical_devices("GPU")
    # Outside the try below: its RuntimeError means "already initialised",
    # and a DeviceError (a RuntimeError too) must not be taken for that.
    index = pick_gpu(local_rank, len(gpus), share_gpus) if gpus else 0
    try:
        if gpus:
            gpu = gpus[index]
            if local_rank >= len(gpus) > 1:
                log.warning(
                    "local rank %d shares %s: %d GPUs for more workers",
                    local_rank,
                    gpu.name,
                    len(gpus),
                )
            tf.config.set_visible_devices(gpu, "GPU")
            # Grow memory as needed instead of taking the whole card, so that
            # an evaluator can share a worker's GPU.
            tf.config.experimental.set_memory_growth(gpu, True)
            return f"GPU {gpu.name}"
        if cpu_threads:
            tf.config.threading.set_intra_op_parallelism_threads(cpu_threads)
            tf.config.threading.set_inter_op_parallelism_threads(cpu_threads)
            return f"CPU ({cpu_threads} threads)"
    except RuntimeError as e:  # TensorFlow is already initialised in this process.
        log.info("device settings unchanged: %s", e)
        return "the devices already configured in this process"
    return "CPU"
