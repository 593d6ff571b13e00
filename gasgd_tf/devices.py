"""Where a TensorFlow process runs: one GPU per worker when there are GPUs, else the CPU."""

from __future__ import annotations

import logging

import tensorflow as tf

log = logging.getLogger(__name__)


def configure(task_index: int, cpu_threads: int = 0) -> str:
    """Pins this process to one GPU (by task index) or limits its CPU threads.

    Takes effect only before TensorFlow initialises its devices (before the
    first op); called later, as when several roles share one test process,
    it logs that and keeps the current settings.

    Args:
      task_index: This worker's index; worker i takes local GPU i modulo the
        number of GPUs.
      cpu_threads: On CPU, intra- and inter-op threads; 0 keeps TensorFlow's
        default. Several workers on one CPU run faster with 1 each.

    Returns:
      A description of the device, for logs.
    """
    gpus = tf.config.list_physical_devices("GPU")
    try:
        if gpus:
            gpu = gpus[task_index % len(gpus)]
            if task_index >= len(gpus):
                log.warning(
                    "worker %d shares %s: %d GPUs for more workers", task_index, gpu.name, len(gpus)
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
