"""Parameter checkpoints: named float32 arrays plus the server version, in one .npz file.

The parameter server writes one when it shuts down (``ps.save_checkpoint``)
to ``<workdir>/checkpoints/params-<version>.npz`` (each shard of a sharded
server writes ``params-<version>-shard-<k>-of-<K>.npz``, holding its pieces,
and ``load`` merges the newest file of every shard back into whole tensors); ``--config.warm_start``
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
_NAME = re.compile(r"params-(\d+)(?:-shard-(\d+)-of-(\d+))?\.npz$")
# The files of one sharded checkpoint are written together as the shards stop.
SHARD_SET_WINDOW_SECS = 300.0


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
    shard: tuple[int, int] | None = None,
) -> str:
    """Writes ``flat`` (laid out by ``specs``) to ``directory/params-<version>.npz``.

    The file appears whole or not at all (written aside, then renamed), so a
    reader never sees a half-written checkpoint.

    Args:
      directory: Where to write.
      specs: The tensors of ``flat``.
      flat: The parameters.
      version: The server version they have.
      meta: More JSON metadata.
      shard: (k, K) for shard k of a K-shard server: the file is named
        ``params-<version>-shard-<k>-of-<K>.npz``.

    Returns:
      The path written.
    """
    os.makedirs(directory, exist_ok=True)
    arrays = dict(FlatLayout(specs).views(flat))
    if _META_KEY in arrays:
        raise ValueError(f"a tensor may not be named {_META_KEY!r}")
    document = {"version": int(version), "saved_unix": time.time(), **(meta or {})}
    name = f"params-{version:09d}.npz"
    if shard is not None:
        document.update(shard=shard[0], num_shards=shard[1])
        name = f"params-{version:09d}-shard-{shard[0]}-of-{shard[1]}.npz"
    arrays[_META_KEY] = np.array(json.dumps(document))
    path = os.path.join(directory, name)
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


def _shard_set(path: str) -> list[str] | None:
    """The files of the sharded checkpoint ``path`` belongs to, in shard order; None if unsharded.

    ``path`` stands for its own shard. For each other shard: the file with
    the same ``run_id`` in its metadata (every shard of a run writes the
    run's id); for files without one, the file of that shard written
    closest in time to ``path``, within SHARD_SET_WINDOW_SECS.

    Raises:
      CheckpointError: A shard's file is missing.
    """
    match = _NAME.search(path)
    if not match or match.group(2) is None:
        return None
    shard, num_shards = int(match.group(2)), int(match.group(3))
    folder = os.path.dirname(path)
    when = os.path.getmtime(path)
    run_id = _read(path, with_arrays=False).meta.get("run_id")
    files = []
    for k in range(num_shards):
        if k == shard:
            files.append(path)
            continue
        candidates = glob.glob(os.path.join(folder, f"params-*-shard-{k}-of-{num_shards}.npz"))
        if run_id:
            same_run = [f for f in candidates if _meta_run_id(f) == run_id]
            if not same_run:
                raise CheckpointError(
                    f"{path} is shard {shard} of {num_shards} of run {run_id}, but {folder} has "
                    f"no file of shard {k} from that run (did that shard fail to write it?)"
                )
            files.append(max(same_run, key=os.path.getmtime))
            continue
        near = [f for f in candidates if abs(os.path.getmtime(f) - when) <= SHARD_SET_WINDOW_SECS]
        if not near:
            raise CheckpointError(
                f"{path} is shard {shard} of {num_shards}, but {folder} has no file of "
                f"shard {k} written within {SHARD_SET_WINDOW_SECS:.0f}s of it"
            )
        files.append(min(near, key=lambda f: abs(os.path.getmtime(f) - when)))
    return files


def _meta_run_id(path: str) -> str | None:
    try:
        return _read(path, with_arrays=False).meta.get("run_id")
    except CheckpointError:
        return None


def _merge_pieces(arrays: Mapping[str, np.ndarray], path: str) -> dict[str, np.ndarray]:
    """Whole tensors from shard arrays: pieces of split tensors joined and reshaped."""
    from gasgd_tf.sharding import parse_piece_name  # numpy only

    merged: dict[str, np.ndarray] = {}
    pieces: dict[str, list[tuple[int, int, np.ndarray]]] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    for name, array in arrays.items():
        parsed = parse_piece_name(name)
        if parsed is None:
            merged[name] = array
            continue
        source, start, stop, shape = parsed
        pieces.setdefault(source, []).append((start, stop, array.ravel()))
        shapes[source] = shape
    for source, parts in pieces.items():
        parts.sort(key=lambda p: p[0])
        expected = 0
        for start, stop, array in parts:
            if start != expected or array.size != stop - start:
                raise CheckpointError(f"{path}: the pieces of tensor {source!r} do not join up")
            expected = stop
        size = int(np.prod(shapes[source], dtype=np.int64))
        if expected != size:
            raise CheckpointError(f"{path}: tensor {source!r} has {expected} of {size} elements")
        merged[source] = np.concatenate([a for _, _, a in parts]).reshape(shapes[source])
    return merged


def _read_any(path: str, with_arrays: bool) -> Checkpoint:
    """Reads one file, or every file of a sharded checkpoint merged into one Checkpoint."""
    files = _shard_set(path)
    if files is None:
        return _read(path, with_arrays)
    shards = [_read(f, with_arrays) for f in files]
    arrays: dict[str, np.ndarray] = {}
    for shard in shards:
        arrays.update(shard.arrays)
    meta = {
        **shards[0].meta,
        "server_id": ",".join(str(c.meta.get("server_id", "")) for c in shards),
        "versions": [c.version for c in shards],
        "files": files,
    }
    version = min(c.version for c in shards)
    meta["version"] = version
    return Checkpoint(files[0], version, _merge_pieces(arrays, path) if with_arrays else {}, meta)


def load(path: str) -> Checkpoint:
    """Reads the checkpoint ``path`` names (see ``resolve``).

    A shard's file is read together with the other shards' files of the
    same checkpoint, and split tensors are joined: the result is the whole
    model (version: the smallest shard version).

    Raises:
      FileNotFoundError: See ``resolve``.
      CheckpointError: The file is not a gasgd_tf checkpoint, or a shard is missing.
    """
    return _read_any(resolve(path), with_arrays=True)


def load_meta(path: str) -> Checkpoint:
    """Like ``load`` but reads only the metadata (``arrays`` is empty): a cheap check."""
    return _read_any(resolve(path), with_arrays=False)


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
