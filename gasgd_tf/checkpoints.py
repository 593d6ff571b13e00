"""Parameter checkpoints: named float32 arrays plus the server version, in one .npz file.

The parameter server writes one when it shuts down (``ps.save_checkpoint``)
to ``<workdir>/checkpoints/params-<version>.npz``; ``--config.warm_start``
reads one back to start a new run from it, as the paper's warm-start runs
started from a single-GPU model. The format is NumPy's (a zip of ``.npy``
files, one per tensor, keyed by the tensor's name), so that programs in
other languages and frameworks can read it too; ``__meta__`` holds a small
JSON document (version, time, and what the writer adds).

This module uses only NumPy: the server must not import TensorFlow.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import re
import time
import zipfile
from collections.abc import Mapping, Sequence

import numpy as np

from gasgd_tf.tensors import FlatLayout, TensorSpec

CHECKPOINT_DIR = "checkpoints"
_META_KEY = "__meta__"
_NAME = re.compile(r"params-(\d+)\.npz$")


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, or that does not fit the model."""


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """Parameters read from a checkpoint file.

    Attributes:
      path: The file.
      version: The server version the parameters had.
      arrays: Tensor name -> float32 array, in the order they were saved.
      meta: The JSON metadata the writer stored.
    """

    path: str
    version: int
    arrays: dict[str, np.ndarray]
    meta: dict


def save(
    directory: str,
    specs: Sequence[TensorSpec],
    flat: np.ndarray,
    version: int,
    meta: Mapping | None = None,
) -> str:
    """Writes ``flat`` (laid out by ``specs``) to ``directory/params-<version>.npz``.

    The file appears whole or not at all (written aside, then renamed), so a
    reader never sees a half-written checkpoint.

    Returns:
      The path written.
    """
    os.makedirs(directory, exist_ok=True)
    arrays = dict(FlatLayout(specs).views(flat))
    if _META_KEY in arrays:
        raise ValueError(f"a tensor may not be named {_META_KEY!r}")
    document = {"version": int(version), "saved_unix": time.time(), **(meta or {})}
    arrays[_META_KEY] = np.array(json.dumps(document))
    path = os.path.join(directory, f"params-{version:09d}.npz")
    tmp = f"{path}.tmp"
    try:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())  # On disk before the rename makes it visible.
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):  # A failed write (disk full) leaves no debris.
            os.remove(tmp)
    return path


def resolve(path: str) -> str:
    """The checkpoint file ``path`` names: the file itself, or the newest written in a run.

    Args:
      path: A ``.npz`` file, a checkpoints folder, or a run's workdir (its
        ``checkpoints/`` folder is searched).

    Raises:
      FileNotFoundError: Nothing there, or no checkpoint in the folder.
    """
    if os.path.isfile(path):
        return path
    if not os.path.isdir(path):
        raise FileNotFoundError(f"no checkpoint file or run folder at {path!r}")
    for folder in (os.path.join(path, CHECKPOINT_DIR), path):
        found = [f for f in glob.glob(os.path.join(folder, "params-*.npz")) if _NAME.search(f)]
        if found:
            # The newest written, not the highest version: a rerun in the same
            # workdir starts again from version 0 and keeps older checkpoints.
            return max(found, key=lambda f: (os.path.getmtime(f), int(_NAME.search(f).group(1))))
    raise FileNotFoundError(
        f"no checkpoint in {path!r} (expected {CHECKPOINT_DIR}/params-<version>.npz; "
        "a run writes one when its parameter server stops)"
    )


def _read(path: str, with_arrays: bool) -> Checkpoint:
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data[_META_KEY]))
            version = int(meta["version"])
            arrays = {k: data[k] for k in data.files if k != _META_KEY} if with_arrays else {}
    except (OSError, KeyError, ValueError, TypeError, zipfile.BadZipFile) as e:
        raise CheckpointError(f"{path} is not a gasgd_tf checkpoint: {e!r}") from None
    return Checkpoint(path, version, arrays, meta)


def load(path: str) -> Checkpoint:
    """Reads the checkpoint ``path`` names (see ``resolve``).

    Raises:
      FileNotFoundError: See ``resolve``.
      CheckpointError: The file is not a gasgd_tf checkpoint.
    """
    return _read(resolve(path), with_arrays=True)


def load_meta(path: str) -> Checkpoint:
    """Like ``load`` but reads only the metadata (``arrays`` is empty): a cheap check."""
    return _read(resolve(path), with_arrays=False)


def flatten_for(checkpoint: Checkpoint, specs: Sequence[TensorSpec]) -> np.ndarray:
    """The checkpoint's arrays as one flat float32 buffer laid out by ``specs``.

    Raises:
      CheckpointError: A tensor is missing, extra, or of another shape, named.
    """
    names = [s.name for s in specs]
    missing = [n for n in names if n not in checkpoint.arrays]
    extra = [n for n in checkpoint.arrays if n not in set(names)]
    if missing or extra:
        raise CheckpointError(
            f"checkpoint {checkpoint.path} does not match the model: "
            f"missing {missing[:5]}, unexpected {extra[:5]}"
        )
    parts = []
    for spec in specs:
        array = checkpoint.arrays[spec.name]
        if tuple(array.shape) != tuple(spec.shape):
            raise CheckpointError(
                f"checkpoint {checkpoint.path}: tensor {spec.name!r} has shape "
                f"{tuple(array.shape)}, the model has {tuple(spec.shape)}"
            )
        parts.append(np.asarray(array, dtype=np.float32).ravel())
    return np.concatenate(parts) if parts else np.zeros(0, np.float32)
