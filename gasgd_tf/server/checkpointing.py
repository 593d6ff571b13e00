"""The server's checkpoints over time: periodic saves, keep-last-k, restore at start.

A parameter server process that dies loses at most the updates applied
since its last checkpoint, and says how many when it starts again:

- ``save_checkpoint`` writes the whole state of a ParameterStore
  (parameters, optimizer slots, version, per-client push sequences and
  statistics) atomically (``gasgd_tf.checkpoints.save``).
- ``Checkpointer`` does so on a thread every ``every_secs`` seconds or
  ``every_updates`` updates (whichever comes first, only when the version
  moved; the first as soon as the parameters are initialized, so that a
  restart never finds nothing), keeps the newest ``keep`` files of this
  run, and writes the last one on shutdown.
- ``restore_at_start`` resumes a starting server from the newest checkpoint
  of its run. It never starts empty over a checkpoint it was asked to use:
  a newest file that is unreadable, or whose optimizer slots disagree with
  its own tensors, is named and the previous one tried.
- ``fresh_start_refusal`` and ``lost_updates``: the rules the launcher
  shares with the server (``--norestore`` over a run's checkpoints; the
  updates a restart loses), computed here only.
- ``VersionMark``: the version after every update, in a 16-byte file the
  store writes through shared memory (the page cache outlives a killed
  process), so the restarted server and the launcher can tell exactly how
  many updates the checkpoint missed.

NumPy only, like the rest of the server.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time

import numpy as np

from gasgd_tf import checkpoints
from gasgd_tf.server.optimizers import ServerOptimizer
from gasgd_tf.server.store import DivergedError, ParameterStore, RestoreError, StoreState
from gasgd_tf.tensors import TensorSpec, ValidationError

# After a failed periodic save, the next try waits this long.
FAILED_SAVE_BACKOFF_SECS = 10.0


class RestoreFailedError(RuntimeError):
    """Checkpoints exist for this server but none could be restored (or one was required)."""


def _shard_suffix(shard: tuple[int, int] | None) -> str:
    return "" if shard is None else f"-shard-{shard[0]}-of-{shard[1]}"


def save_checkpoint(
    store: ParameterStore,
    directory: str,
    shard: tuple[int, int] | None = None,
    run_id: str | None = None,
    quiet: bool = False,
) -> str | None:
    """Writes the store's whole state to ``directory``; None if there is nothing sound to save.

    Args:
      store: The server's store.
      directory: The checkpoints folder.
      shard: (k, K) for shard k of a K-shard server (see ``checkpoints.save``).
      run_id: The config's; ties the shards' files of one run together and
        picks what a restarted server of this run resumes from.
      quiet: Do not print the path (periodic saves print a shorter line).
    """
    if not store.initialized:
        print("parameter server: never initialized, no checkpoint written", flush=True)
        return None
    try:
        state = store.export_state()
    except DivergedError as e:
        print(f"parameter server: no checkpoint written: {e}", flush=True)
        return None
    path = checkpoints.save(
        directory,
        state.specs,
        state.params,
        state.version,
        meta={"server_id": store.server_id, "run_id": run_id, **state.meta},
        shard=shard,
        slots=state.slots,
    )
    if not quiet:
        print(f"parameter server: saved version {state.version} to {path}", flush=True)
    return path


class VersionMark:
    """The server's version after every update, in a file that survives a killed process.

    The file (``<directory>/version-<run_id>[-shard-k-of-K].mark``) holds
    three little-endian uint64: the version, the Unix time the server
    started, and the pushes it had taken (acknowledged; with rounds, an
    open round's pushes count before their update exists). The store
    writes them through a shared memory mapping: no system call per
    update, and the kernel keeps the page when the process is killed. It
    is removed when the server stops cleanly.
    """

    def __init__(self, directory: str, run_id: str | None, shard: tuple[int, int] | None):
        self.path = mark_path(directory, run_id, shard)

    def open(self) -> np.ndarray:
        """Creates the file (or reuses it) and returns the writable mapping."""
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        # A two-entry mark of an older gasgd_tf is written anew.
        size = os.path.getsize(self.path) if os.path.exists(self.path) else 0
        mode = "r+" if size >= MARK_BYTES else "w+"
        mark = np.memmap(self.path, dtype="<u8", mode=mode, shape=(MARK_BYTES // 8,))
        mark[1] = int(time.time())
        return mark

    def remove(self) -> None:
        try:
            os.remove(self.path)
        except FileNotFoundError:
            pass


MARK_BYTES = 24  # Three uint64: version, start time, pushes taken.


def mark_path(directory: str, run_id: str | None, shard: tuple[int, int] | None) -> str:
    return os.path.join(directory, f"version-{run_id or 'none'}{_shard_suffix(shard)}.mark")


def read_mark(directory: str, run_id: str | None, shard: tuple[int, int] | None) -> int | None:
    """The last version a crashed server of this run reached, or None (no crash on record)."""
    return _read_mark(directory, run_id, shard)[0]


def _read_mark(
    directory: str, run_id: str | None, shard: tuple[int, int] | None
) -> tuple[int | None, int | None]:
    """(version, pushes taken) of a crashed server's mark; None where not on record."""
    try:
        with open(mark_path(directory, run_id, shard), "rb") as f:
            data = f.read(MARK_BYTES)
    except FileNotFoundError:
        return None, None
    values = np.frombuffer(data[: len(data) // 8 * 8], "<u8")
    version = int(values[0]) if values.size >= 1 else None
    pushes = int(values[2]) if values.size >= 3 else None
    return version, pushes


@dataclasses.dataclass(frozen=True)
class LostUpdates:
    """What a server that stopped had applied past the checkpoint it resumes from.

    Attributes:
      reached: The version it had reached (its version mark); None: no
        crash on record.
      lost: Updates applied after the checkpoint, gone with the process;
        None when not known (no mark, or a mark behind the checkpoint: an
        earlier start's).
      pushes_lost: Acknowledged pushes taken after the checkpoint, gone
        with it: ``lost`` without rounds; with rounds also those of an
        open round. None when not known.
    """

    reached: int | None
    lost: int | None
    pushes_lost: int | None = None


def lost_updates(
    directory: str,
    run_id: str | None,
    shard: tuple[int, int] | None,
    version: int,
    pushes_taken: int | None = None,
) -> LostUpdates:
    """How many updates (and pushes) a server of this run lost by resuming from a checkpoint.

    The one place this is computed: the launcher says it as it restarts a
    dead server (and adds it to summary.json), the server as it restores.

    Args:
      directory, run_id, shard: Whose mark.
      version: The checkpoint's version.
      pushes_taken: The checkpoint's ``meta["pushes_taken"]``; None: unknown.
    """
    reached, pushes = _read_mark(directory, run_id, shard)
    lost = reached - version if reached is not None and reached >= version else None
    pushes_lost = None
    if (
        pushes is not None
        and pushes_taken is not None
        and pushes >= pushes_taken
        and lost is not None
    ):
        pushes_lost = pushes - pushes_taken
    return LostUpdates(reached, lost, pushes_lost)


def fresh_start_refusal(
    directory: str,
    shard: tuple[int, int] | None,
    run_id: str | None,
    candidates: list[str] | None = None,
) -> str | None:
    """Why run ``run_id`` may not start afresh (``--norestore``) here, or None if it may.

    Starting a run afresh under the id of one that has checkpoints would
    overwrite its files (same names) and prune them: a new run needs a new
    id. The one rule for the launcher (before any process starts) and the
    server (as it starts).

    Args:
      directory: The checkpoints folder.
      shard: (k, K), or None for an unsharded server.
      run_id: The run's id (None: any checkpoint of this shard layout).
      candidates: ``checkpoints.restore_candidates`` of these, if the
        caller has them already.
    """
    if candidates is None:
        candidates = checkpoints.restore_candidates(directory, shard, run_id)
    if not candidates:
        return None
    return (
        f"--norestore (restore=False), but {directory} holds {len(candidates)} checkpoint(s) "
        f"of {_whose(run_id)}, which a fresh start under the same run id would overwrite: give "
        "a new --config.run_id (or move them away)"
    )


def _whose(run_id: str | None) -> str:
    return f"run {run_id}" if run_id else "this server"


@dataclasses.dataclass(frozen=True)
class Restored:
    """What ``restore_at_start`` resumed from."""

    path: str
    version: int
    saved_unix: float
    # Updates the server had applied past the checkpoint before it stopped
    # (from the version mark); None when it is not known.
    updates_lost: int | None
    # Acknowledged pushes it had taken past the checkpoint (with rounds,
    # an open round's too); None when not known.
    pushes_lost: int | None = None


def restore_at_start(
    store: ParameterStore,
    directory: str,
    shard: tuple[int, int] | None,
    run_id: str | None,
    restore: bool | None,
) -> Restored | None:
    """Resumes ``store`` from the newest checkpoint of this server's run, as ``restore`` says.

    Candidates are tried newest first; one that cannot be read, or whose
    contents disagree with themselves (``checkpoints.check_slots``), is
    named and the one before it tried.

    Args:
      store: A fresh, uninitialized store.
      directory: The checkpoints folder.
      shard: (k, K), or None for an unsharded server.
      run_id: The run's id; only its checkpoints are candidates (None: any
        checkpoint of this shard layout).
      restore: None: resume if there is a checkpoint; True: there must be
        one; False: start empty, which is refused when this run has
        checkpoints (``fresh_start_refusal``).

    Returns:
      What was restored, or None (the store stays uninitialized).

    Raises:
      RestoreFailedError: ``restore`` is True and there is no checkpoint, or
        no candidate could be read.
      RestoreError: A checkpoint that does not fit this server (another
        optimizer): a config mistake, reported (with the file) rather than
        worked around.
    """
    candidates = checkpoints.restore_candidates(directory, shard, run_id)
    if restore is False:
        refusal = fresh_start_refusal(directory, shard, run_id, candidates)
        if refusal:
            raise RestoreFailedError(refusal)
        return None
    damaged = []
    if run_id is not None:
        # Whose run a damaged file was is unknown: never skip one without a word.
        damaged = checkpoints.unreadable(directory, shard)
        for path in damaged:
            print(
                f"parameter server: cannot read {path} (damaged?); not resuming from it",
                flush=True,
            )
    if not candidates:
        _check_nothing_to_resume(directory, shard, run_id, restore, damaged)
        return None
    errors = []
    for path in candidates:
        try:
            checkpoint = _restore_file(store, path)
        except (checkpoints.CheckpointError, ValidationError) as e:
            errors.append(f"{path}: {e}")
            print(
                f"parameter server: cannot restore from {path} ({e}); trying an older one",
                flush=True,
            )
            continue
        return _report_restored(checkpoint, directory, run_id, shard)
    raise RestoreFailedError(
        f"none of the {len(candidates)} checkpoint(s) of {_whose(run_id)} could be restored; "
        "the server will not start empty over them (pass restore=False to start a new run): "
        + "; ".join(errors)
    )


def _check_nothing_to_resume(
    directory: str,
    shard: tuple[int, int] | None,
    run_id: str | None,
    restore: bool | None,
    damaged: list[str],
) -> None:
    """No candidate: fine unless one was required, or damaged files may have been this run's."""
    whose = _whose(run_id)
    if damaged:
        # It may have been this run's only checkpoint: starting empty would
        # silently throw the run away (and workers would initialize it anew).
        raise RestoreFailedError(
            f"{directory} holds damaged checkpoint(s) of unknown run and none of {whose} to "
            f"resume: {', '.join(damaged)}; move them away, or pass restore=False "
            "(--norestore) to start a new run"
        )
    if restore:
        raise RestoreFailedError(
            f"restore=True but {directory} has no checkpoint of {whose}"
            + ("" if shard is None else f" (shard {shard[0]} of {shard[1]})")
        )


def _restore_file(store: ParameterStore, path: str) -> checkpoints.Checkpoint:
    """Restores ``store`` from the file ``path``; returns what it read.

    Raises:
      CheckpointError: The file cannot be read, or disagrees with itself.
      ValidationError: Invalid tensors (names, non-finite values).
      RestoreError: It was saved by another optimizer (the file is named).
    """
    checkpoint = checkpoints.read_file(path)
    specs = tuple(TensorSpec(name, tuple(a.shape)) for name, a in checkpoint.arrays.items())
    params = checkpoints.flatten_for(checkpoint, specs)
    # Before the store sees it: a slot that disagrees with the file's own
    # tensors is a bad file (try the one before), not another optimizer.
    checkpoints.check_slots(checkpoint, slot_shapes(store.optimizer, int(params.size)))
    state = StoreState(
        version=checkpoint.version,
        specs=specs,
        params=params,
        slots=checkpoint.slots,
        meta=checkpoint.meta,
    )
    _check_legacy_slots(state, store)
    try:
        store.restore_state(state)
    except RestoreError as e:
        raise RestoreError(f"{path}: {e}") from None
    return checkpoint


def slot_shapes(optimizer: ServerOptimizer, size: int) -> dict[str, tuple[int, ...]]:
    """The shape of each slot ``optimizer`` keeps for ``size`` parameters, none allocated.

    A slot is either one value per parameter or of a fixed size (Adam's
    step count), so its shape is read off the slots for 0 and 1
    parameters: allocating the real ones would briefly double the
    optimizer's memory for a large model.
    """
    none, one = optimizer.init_slots(0), optimizer.init_slots(1)
    return {
        name: tuple(a + (b - a) * size for a, b in zip(none[name].shape, one[name].shape))
        for name in none
    }


def _report_restored(
    checkpoint: checkpoints.Checkpoint,
    directory: str,
    run_id: str | None,
    shard: tuple[int, int] | None,
) -> Restored:
    """Says what was restored (and what was lost); returns it."""
    lost = lost_updates(
        directory, run_id, shard, checkpoint.version, checkpoint.meta.get("pushes_taken")
    )
    saved = float(checkpoint.meta.get("saved_unix", 0.0))
    age = f", saved {time.time() - saved:.0f}s ago" if saved else ""
    lost_text = (
        f"; {lost.lost} update(s) applied after it were lost (the server had reached version "
        f"{lost.reached})"
        if lost.lost is not None
        else ""
    )
    if lost.pushes_lost is not None and lost.pushes_lost != lost.lost:
        lost_text += f"; {lost.pushes_lost} acknowledged push(es) taken after it were lost"
    print(
        f"parameter server: restored version {checkpoint.version} from {checkpoint.path}"
        f"{age}{lost_text}",
        flush=True,
    )
    return Restored(checkpoint.path, checkpoint.version, saved, lost.lost, lost.pushes_lost)


def _check_legacy_slots(state: StoreState, store: ParameterStore) -> None:
    """A final checkpoint of an older gasgd_tf has no optimizer state: resume with fresh slots.

    Only for optimizers whose fresh slots mean "no history" (what a warm
    start does too); said out loud, since the resume is then not exact.
    """
    if state.slots:
        return
    fresh = store.optimizer.init_slots(int(state.params.size))
    if fresh:
        print(
            "parameter server: the checkpoint has no optimizer state (written by an older "
            f"version); {store.optimizer.name} starts with fresh slots",
            flush=True,
        )
        state.slots.update(fresh)


class Checkpointer:
    """Saves the store periodically on a thread; keeps the newest ``keep`` files of this run.

    Args:
      store: The server's store.
      directory: The checkpoints folder.
      shard: (k, K), or None.
      run_id: The run's id (see ``save_checkpoint``).
      every_secs: Save when this long has passed since the last save
        (and the version moved); 0: not by time.
      every_updates: Save after this many updates; 0: not by count.
      keep: How many of this server's files of this run to keep.
    """

    def __init__(
        self,
        store: ParameterStore,
        directory: str,
        shard: tuple[int, int] | None,
        run_id: str | None,
        every_secs: float,
        every_updates: int,
        keep: int,
    ):
        self._store = store
        self._directory = directory
        self._shard = shard
        self._run_id = run_id
        self._every_secs = every_secs
        self._every_updates = every_updates
        self._keep = keep
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ps-checkpoints", daemon=True)
        # None: nothing saved by this process yet; the first save comes at once
        # (for a restored store, a copy of the file it came from: cheap insurance).
        self._last_version: int | None = None
        self._last_leaves = 0
        self._last_time = time.monotonic()
        self._save_lock = threading.Lock()  # The final save may race a periodic one.
        self.saved = 0

    def start(self) -> Checkpointer:
        self._thread.start()
        return self

    def due(self) -> bool:
        """Whether a periodic save is due now."""
        if not self._store.initialized:
            return False
        version = self._store.version
        if self._last_version is None:
            return True  # The first state: a restart must find something.
        if self._store.leaves != self._last_leaves:
            return True  # Who has finished must survive a restart (see ParameterStore.leaves).
        if version == self._last_version:
            return False
        if self._every_updates and version - self._last_version >= self._every_updates:
            return True
        return bool(self._every_secs) and time.monotonic() - self._last_time >= self._every_secs

    def save(self, quiet: bool = True) -> str | None:
        """Saves now and prunes older files; returns the path (None: nothing saved)."""
        with self._save_lock:
            leaves = self._store.leaves  # Read first: a Leave during the save is saved next time.
            try:
                path = save_checkpoint(
                    self._store, self._directory, self._shard, self._run_id, quiet=quiet
                )
            finally:
                # A failed save (disk full) waits for the next interval too,
                # instead of copying the state and retrying ten times a second.
                self._last_time = time.monotonic()
            if path is None:
                return None
            self._last_leaves = leaves
            self._last_version = checkpoints.file_version(path)
            self.saved += 1
            checkpoints.prune(self._directory, self._shard, self._run_id, self._keep)
            return path

    def _run(self) -> None:
        # Poll often enough for every_updates to be near exact at typical rates.
        failed_at = None
        while not self._stop.wait(0.1):
            if failed_at is not None and time.monotonic() - failed_at < FAILED_SAVE_BACKOFF_SECS:
                continue
            if not self.due():
                continue
            try:
                path = self.save()
                failed_at = None
            except Exception as e:  # Disk full, out of memory: say so, keep serving, retry later.
                failed_at = time.monotonic()
                print(
                    f"parameter server: checkpoint failed ({type(e).__name__}: {e}); trying "
                    f"again in {FAILED_SAVE_BACKOFF_SECS:.0f}s",
                    flush=True,
                )
                continue
            if path is not None:
                print(
                    f"parameter server: checkpoint at version {self._last_version} ({path})",
                    flush=True,
                )

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
