"""B5's parameter sets and server settings, shared by every part of ``server_capacity``."""

from __future__ import annotations

import os

import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MIB = 1 << 20

# (name, shape): a CNN-like 30 MB parameter set. The two kernels are above
# the default shard_split_bytes (4 MiB), so 2 shards split them evenly.
GRID_SPECS: tuple[tuple[str, tuple[int, ...]], ...] = (
    ("conv1/kernel", (3, 3, 3, 64)),
    ("conv1/bias", (64,)),
    ("conv2/kernel", (3, 3, 64, 128)),
    ("conv2/bias", (128,)),
    ("conv3/kernel", (5, 5, 224, 250)),  # 1.4M
    ("conv3/bias", (250,)),
    ("dense/kernel", (3000, 2000)),  # 6M
    ("dense/bias", (2000,)),
    ("head/kernel", (2000, 10)),
    ("head/bias", (10,)),
)
# AlexNet (Krizhevsky et al. 2012, two-tower conv2/4/5): 60,965,224 parameters.
MEMORY_SPECS: tuple[tuple[str, tuple[int, ...]], ...] = (
    ("conv1/kernel", (11, 11, 3, 96)),
    ("conv1/bias", (96,)),
    ("conv2/kernel", (5, 5, 48, 256)),
    ("conv2/bias", (256,)),
    ("conv3/kernel", (3, 3, 256, 384)),
    ("conv3/bias", (384,)),
    ("conv4/kernel", (3, 3, 192, 384)),
    ("conv4/bias", (384,)),
    ("conv5/kernel", (3, 3, 192, 256)),
    ("conv5/bias", (256,)),
    ("fc6/kernel", (9216, 4096)),
    ("fc6/bias", (4096,)),
    ("fc7/kernel", (4096, 4096)),
    ("fc7/bias", (4096,)),
    ("fc8/kernel", (4096, 1000)),
    ("fc8/bias", (1000,)),
)
MODELS = {"grid": GRID_SPECS, "memory": MEMORY_SPECS}

PS_FIELDS = {"ps.optimizer": "sgd", "ps.momentum": 0.9}
OPTIMIZER_SLOTS = 1  # SGD with momentum: one slot the size of the parameters.
GRADIENT_VALUE = 1e-6  # Small: a few hundred updates move the parameters by ~1e-3.


def specs(model: str) -> tuple:
    """The ``TensorSpec``s of ``model`` ("grid" or "memory", see ``MODELS``)."""
    from gasgd_tf.tensors import TensorSpec

    return tuple(TensorSpec(name, shape) for name, shape in MODELS[model])


def num_params(model: str) -> int:
    """How many float32 parameters ``model`` has."""
    return sum(int(np.prod(shape)) for _, shape in MODELS[model])


def initial_params(model: str) -> np.ndarray:
    """The parameters every server is initialized with: small random float32, seed 0."""
    n = num_params(model)
    return np.random.default_rng(0).standard_normal(n, dtype=np.float32) * np.float32(0.01)
