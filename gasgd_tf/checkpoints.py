"""Parameter checkpoints: named float32 arrays plus the server version, in one .npz file.

The parameter server writes one every ``ps.checkpoint_every_secs`` (or
``ps.checkpoint_every_updates``) and when it shuts down (``ps.save_checkpoint``),
keeping the last ``ps.keep_checkpoints`` of its run,
to ``<workdir>/checkpoints/params-<version>.npz`` (each shard of a sharded
server writes ``params-<version>-shard-<k>-of-<K>.npz``, holding its pieces,
and ``load`` merges the newest file of every shard back into whole tensors); ``--config.warm_start``
reads one back to start a new run from it, as the paper's warm-start runs
started from a single-GPU model. The format is NumPy's (a zip of ``.npy``
files, one per tensor, keyed by the tensor's name), so that programs in
other languages and frameworks can read it too; ``__meta__`` holds a small
JSON document (version, time, and what the writer adds: the server's
per-client push sequences, for an exact resume), and ``__slot__.<name>``
the server optimizer's state (momentum, accumulators), flat.

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

from gasgd_tf import layout
from gasgd_tf.tensors import FlatLayout, TensorSpec

CHECKPOINT_DIR = layout.CHECKPOINT_DIR
_META_KEY = "__meta__"
_SLOT_PREFIX = "__slot__."
_NAME = re.compile(r"params-(\d+)(?:-shard-(\d+)-of-(\d+))?(?:\.([A-Za-z0-9_-]+))?\.npz$")
# What a run id may contain: it is part of file names.
RUN_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
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
      slots: The server optimizer's state by slot name (empty if none was
        saved, and for a merged sharded checkpoint: each shard has its own).
    """

    path: str
    version: int
    arrays: dict[str, np.ndarray]
    meta: dict
    slots: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)


def save(
    directory: str,
    specs: Sequence[TensorSpec],
    flat: np.ndarray,
    version: int,
    meta: Mapping | None = None,
    shard: tuple[int, int] | None = None,
    slots: Mapping[str, np.ndarray] | None = None,
) -> str:
    """Writes ``flat`` (laid out by ``specs``) to ``directory/params-<version>.npz``.

    The file appears whole or not at all (written aside, flushed to disk,
    then renamed), so a reader never sees a half-written checkpoint, even
    after a crash of the machine.

    Args:
      directory: Where to write.
      specs: The tensors of ``flat``.
      flat: The parameters.
      version: The server version they have.
      meta: More JSON metadata.
      shard: (k, K) for shard k of a K-shard server: the file is named
        ``params-<version>-shard-<k>-of-<K>.npz``. A ``run_id`` in ``meta``
        is added to the name (``params-<version>.<run_id>.npz``), so that two
        runs in one workdir never overwrite each other's files.
      slots: The server optimizer's state, stored as ``__slot__.<name>``.

    Returns:
      The path written.
    """
    os.makedirs(directory, exist_ok=True)
    arrays = dict(FlatLayout(specs).views(flat))
    reserved = [n for n in arrays if n == _META_KEY or n.startswith(_SLOT_PREFIX)]
    if reserved:
        raise ValueError(f"a tensor may not be named {reserved[0]!r} (reserved)")
    for name, slot in (slots or {}).items():
        arrays[_SLOT_PREFIX + name] = slot
    document = {"version": int(version), "saved_unix": time.time(), **(meta or {})}
    name = f"params-{version:09d}"
    if shard is not None:
        document.update(shard=shard[0], num_shards=shard[1])
        name += f"-shard-{shard[0]}-of-{shard[1]}"
    run_id = document.get("run_id")
    if run_id:
        if not RUN_ID.fullmatch(str(run_id)):
            raise ValueError(f"run_id {run_id!r} is not 1-64 of A-Z a-z 0-9 _ -")
        name += f".{run_id}"
    name += ".npz"
    arrays[_META_KEY] = np.array(json.dumps(document))
    path = os.path.join(directory, name)
    tmp = f"{path}.tmp"
    try:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())  # On disk before the rename makes it visible.
        os.replace(tmp, path)
        _fsync_directory(directory)  # The rename itself survives a crash too.
    finally:
        if os.path.exists(tmp):  # A failed write (disk full) leaves no debris.
            os.remove(tmp)
    return path


def _fsync_directory(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return  # Not on every platform (Windows); the rename is still atomic.
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


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
            arrays, slots = {}, {}
            if with_arrays:
                for key in data.files:
                    if key.startswith(_SLOT_PREFIX):
                        slots[key[len(_SLOT_PREFIX) :]] = data[key]
                    elif key != _META_KEY:
                        arrays[key] = data[key]
    except (OSError, KeyError, ValueError, TypeError, EOFError, zipfile.BadZipFile) as e:
        raise CheckpointError(f"{path} is not a gasgd_tf checkpoint: {e!r}") from None
    return Checkpoint(path, version, arrays, meta, slots)


def file_version(path: str) -> int:
    """The version a checkpoint file holds, from its name (``save`` puts it there)."""
    match = _NAME.search(path)
    if not match:
        raise CheckpointError(f"{path} is not named like a gasgd_tf checkpoint")
    return int(match.group(1))


def read_file(path: str, with_arrays: bool = True) -> Checkpoint:
    """Reads exactly the file ``path`` (one shard's file stays one shard's), slots included.

    Raises:
      CheckpointError: Not a gasgd_tf checkpoint (or damaged).
    """
    return _read(path, with_arrays)


def check_slots(checkpoint: Checkpoint, expected: Mapping[str, tuple[int, ...]]) -> None:
    """Checks that a file's optimizer slots fit the file's own tensors.

    A well-formed file whose slots disagree with its parameters (a slot of
    35 values beside 37 parameters) was written wrongly or altered: it
    cannot be resumed, and the server tries the one before, as for a
    damaged file. Slots named in only one of the two are not compared:
    another set of slots is another optimizer, a config mistake that the
    store reports (``ParameterStore.restore_state``).

    Args:
      checkpoint: One file's contents (``read_file``).
      expected: The shape of each slot for this file's parameter count, as
        the server's optimizer keeps them (``server.checkpointing``).

    Raises:
      CheckpointError: A slot of another shape, naming the file.
    """
    size = sum(int(a.size) for a in checkpoint.arrays.values())
    for name, shape in expected.items():
        if name not in checkpoint.slots:
            continue
        saved = tuple(checkpoint.slots[name].shape)
        if saved != tuple(shape):
            raise CheckpointError(
                f"{checkpoint.path} is inconsistent: optimizer slot {name!r} has shape {saved}, "
                f"but the file's {size} parameter values need {tuple(shape)}"
            )


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
        candidates = shard_files(folder, (k, num_shards))
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


def _newest_first(files: Sequence[str]) -> list[str]:
    # By time written, then version: after a restore the version starts again
    # from the checkpoint's, so the highest version is not always the newest.
    return sorted(
        files, key=lambda f: (os.path.getmtime(f), int(_NAME.search(f).group(1))), reverse=True
    )


def shard_files(directory: str, shard: tuple[int, int] | None) -> list[str]:
    """The checkpoint files in ``directory`` of one server: shard (k, K), or None for unsharded."""
    found = []
    for path in glob.glob(os.path.join(directory, "params-*.npz")):
        match = _NAME.search(path)
        if not match:
            continue
        if shard is None and match.group(2) is None:
            found.append(path)
        elif (
            shard is not None
            and match.group(2) is not None
            and (int(match.group(2)), int(match.group(3))) == tuple(shard)
        ):
            found.append(path)
    return found


def restore_candidates(
    directory: str, shard: tuple[int, int] | None, run_id: str | None
) -> list[str]:
    """The files a (re)starting server of run ``run_id`` may resume from, newest first.

    Args:
      directory: The checkpoints folder.
      shard: (k, K) for shard k of K, None for an unsharded server.
      run_id: Only files of this run; None: every file of this shard layout.
    """
    files = shard_files(directory, shard)
    if run_id is not None:
        files = [f for f in files if _meta_run_id(f) == run_id]
    return _newest_first(files)


def unreadable(directory: str, shard: tuple[int, int] | None) -> list[str]:
    """The checkpoint files of one server whose metadata cannot be read (damaged files)."""
    bad = []
    for path in shard_files(directory, shard):
        try:
            _read(path, with_arrays=False)
        except CheckpointError:
            bad.append(path)
    return bad


def prune(
    directory: str, shard: tuple[int, int] | None, run_id: str | None, keep: int
) -> list[str]:
    """Deletes all but the newest ``keep`` checkpoints of one server of run ``run_id``.

    Files of other runs are never touched (a warm start may need them).

    Returns:
      The paths removed.
    """
    if run_id is None:
        return []  # Without a run id, whose files these are is unknown: keep all.
    removed = []
    for path in restore_candidates(directory, shard, run_id)[max(keep, 1) :]:
        try:
            os.remove(path)
            removed.append(path)
        except FileNotFoundError:
            pass
    return removed


def latest_run_id(directory: str, num_shards: int) -> tuple[str, str] | None:
    """(run id, path) of the newest checkpoint in ``directory`` that a run can resume.

    Only files written with a run id count (every launcher run has one), of
    the layout ``num_shards`` gives; for a sharded server, shard 0's files.
    """
    shard = layout.shard_of(0, num_shards)
    for path in _newest_first(shard_files(directory, shard)):
        run_id = _meta_run_id(path)
        if run_id:
            return run_id, path
    return None
