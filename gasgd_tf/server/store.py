"""ParameterStore: versioned parameters, the server-side optimizer and client accounting.

Plain Python and numpy: the gRPC servicer is a thin adapter over this class,
and tests drive it directly.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence

import numpy as np

from gasgd_tf import config_base
from gasgd_tf.fragments import Fragment, resolve
from gasgd_tf.server import rounds as rounds_lib
from gasgd_tf.server import staleness as staleness_lib
from gasgd_tf.server.local_steps import LocalStepsPlanner
from gasgd_tf.server.optimizers import ServerOptimizer
from gasgd_tf.server.staleness import StalenessConfig
from gasgd_tf.tensors import (
    PARAMETER_DTYPE,
    FlatLayout,
    TensorSpec,
    ValidationError,
    all_finite,
    check_same_specs,
    common_dtype,
    with_dtype,
)

# Staleness histogram buckets: 0, 1, ..., STALENESS_BUCKETS - 2, and ">= last".
STALENESS_BUCKETS = 64
# Largest parameter set a store accepts by default (ps.max_parameter_bytes).
DEFAULT_MAX_PARAMETER_BYTES = config_base.defaults().ps.max_parameter_bytes
MAX_CLIENT_ID_LENGTH = 128
# Client records a store keeps by default (ps.max_clients: why 1024 is there).
DEFAULT_MAX_CLIENTS = config_base.defaults().ps.max_clients
DEFAULT_PUSH_KIND = config_base.defaults().worker.push
DEFAULT_AGGREGATION = config_base.defaults().ps.aggregation
# A bounded-staleness wait longer than this is logged, naming who it waits for.
SLOW_WAIT_SECS = 1.0
# A bounded-staleness wait ends this long before the caller's deadline.
DEADLINE_MARGIN_SECS = 2.0

log = logging.getLogger(__name__)


class NotInitializedError(RuntimeError):
    """Fetch or push before the parameters were initialized."""


class WaitAbandoned(RuntimeError):
    """A bounded-staleness Fetch whose caller went away (its RPC was cancelled)."""


class DivergedError(RuntimeError):
    """An update made the parameters non-finite; the store refuses further work."""


class PushKindError(RuntimeError):
    """A push of a kind (gradient or parameter delta) the store is not set to apply."""


class AheadOfServerError(RuntimeError):
    """A push computed from a version the server does not have (yet or any more).

    After a restart from a checkpoint the server is back at the checkpoint's
    version, and a client's gradient may name a later one. The client
    should fetch the current parameters and go on from them.
    """


class RestoreError(ValueError):
    """A saved state that does not fit this store (another optimizer, a bad slot)."""


class ClientLimitError(RuntimeError):
    """A new client id while ``max_clients`` records are kept and none may be forgotten."""


@dataclasses.dataclass
class StalenessStats:
    """Count, mean, max and a histogram of staleness values."""

    count: int = 0
    total: int = 0
    max: int = 0
    histogram: np.ndarray = dataclasses.field(
        default_factory=lambda: np.zeros(STALENESS_BUCKETS, np.int64)
    )

    def add(self, staleness: int) -> None:
        self.count += 1
        self.total += staleness
        self.max = max(self.max, staleness)
        self.histogram[min(staleness, STALENESS_BUCKETS - 1)] += 1

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else 0.0


@dataclasses.dataclass(frozen=True)
class PushResult:
    """What a push's answer says.

    Attributes:
      version: The version after the push (with rounds: after the round, if
        this push closed it; else the version it waits on).
      staleness: Versions between the push's base and the version it is applied to.
      duplicate: This (client, sequence) was taken before.
      local_steps: Adaptive local steps: the client's H for its next window (0: keep its own).
    """

    version: int
    staleness: int
    duplicate: bool = False
    local_steps: int = 0


@dataclasses.dataclass
class ClientRecord:
    """What the store knows of one client id."""

    client_id: str
    active: bool = True  # False after Leave.
    pushes: int = 0
    fetches: int = 0
    last_sequence: int = 0
    last_step: int = 0
    last_seen: float = 0.0
    last_result: PushResult | None = None
    staleness: StalenessStats = dataclasses.field(default_factory=StalenessStats)
    # No call or heartbeat for the heartbeat timeout: left out of the
    # staleness bookkeeping until it calls again.
    expired: bool = False
    # Pushed, or fetched without read_only: a worker. A record that never
    # trained (an evaluator, a monitor, a heartbeat-only caller) holds no
    # push sequence, so it is the first forgotten when the table is full.
    trained: bool = False


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """A consistent, read-only copy of the parameters at one version."""

    version: int
    specs: tuple[TensorSpec, ...]
    flat: np.ndarray


@dataclasses.dataclass(frozen=True)
class RegisterInfo:
    initialized: bool
    version: int
    specs: tuple[TensorSpec, ...]
    last_sequence: int
    last_step: int = 0


@dataclasses.dataclass(frozen=True)
class StoreState:
    """Everything a restarted server needs to go on exactly where this one was.

    Attributes:
      version: The parameters' version.
      specs: Their layout.
      params: Flat float32 parameters (a read-only copy).
      slots: The optimizer's state (copies).
      meta: JSON-ready counters and per-client records: push sequences (so
        that a retried push is still recognised after a restart), steps
        and staleness statistics.
    """

    version: int
    specs: tuple[TensorSpec, ...]
    params: np.ndarray
    slots: dict[str, np.ndarray]
    meta: dict


@dataclasses.dataclass(frozen=True)
class StoreStatus:
    """What ``ParameterStore.status`` reports.

    Attributes:
      clients: Copies of the client records asked for (see ``status``):
        all of them by default.
      num_clients: Records kept, listed in ``clients`` or not.
      active_clients: Of them, those that have not left.
      expired_clients: Of them, those expired by the heartbeat timeout.
      max_clients: The limit on records (None: none).
      clients_refused: Calls from new client ids refused at that limit.
      malformed_requests: Requests whose bytes did not parse (counted by
        the servicer through ``note_malformed``).
    """

    initialized: bool
    version: int
    updates_applied: int
    pushes_rejected: int
    duplicate_pushes: int
    num_parameters: int
    optimizer: str
    server_id: str
    uptime_secs: float
    staleness: StalenessStats
    clients: tuple[ClientRecord, ...]
    num_clients: int = 0
    active_clients: int = 0
    expired_clients: int = 0
    max_clients: int | None = None
    clients_refused: int = 0
    malformed_requests: int = 0


class ParameterStore:
    """Holds versioned float32 parameters and applies pushed gradients.

    The parameters are one flat float32 buffer laid out by the signature
    (names, shapes) the first initializer sent; each accepted push is applied
    by the server optimizer and bumps the version by one.

    Locking: one lock (``self._lock``) guards the parameters, optimizer slots,
    version, counters and the client table. Everything expensive that does not
    read shared state happens outside it: receiving chunks, checking shapes
    and finiteness (the layout is immutable once set). Inside it: the
    duplicate check, the optimizer update and the version bump, so concurrent
    pushes apply one at a time, in arrival order, and each push is either
    applied whole or not at all. A fetch copies the parameters under the lock
    once per version (a cached read-only snapshot), then streams the copy
    outside the lock, so streaming never blocks pushes.

    Memory: parameters + optimizer slots + one snapshot (plus older ones
    while fetches still stream them) + the gradients of the pushes being
    received (the servicer bounds how many: ``max_concurrent_pushes``).

    Divergence: finite gradients can still overflow float32 parameters. After
    each update the store checks the parameters; if any became NaN or Inf it
    refuses every later push and fetch with ``DivergedError`` naming the
    version and the client, instead of serving garbage that would surface
    later as workers' "non-finite gradient" errors.

    Step size: each push is applied with ``schedule(version)`` (default: the
    optimizer's own learning rate), times the staleness policy's factor
    (``lr_scale``). ``bounded`` makes Fetch wait (on a condition of the same
    lock, so the wait holds no lock); ``dc_asgd`` keeps a reference to the
    snapshot each client fetched (see gasgd_tf/server/staleness.py).

    Args:
      optimizer: Applies gradients to the flat buffer.
      max_parameter_bytes: Largest parameter set accepted by Initialize.
      clock: Wall clock, for tests.
      staleness: The staleness policy.
      schedule: Learning rate by server version; None: the optimizer's.
      heartbeat_timeout_secs: A client silent this long (no call, no
        heartbeat) is expired: dropped from the staleness bookkeeping
        (``bounded`` stops waiting for it, ``dc_asgd`` lets go of its
        snapshot) until it calls again. None: never.
      max_clients: Most client records kept; None: no limit. Any caller
        can name a new client id, and every record costs memory and a line
        in Status. When the table is full, a new id makes the store forget
        one record: an expired one that never trained first, then one that
        never trained and has left, then any expired one (the oldest seen
        first within each); if none may be forgotten, the call raises
        ``ClientLimitError``. Clients that trained and left are kept (their
        push sequences recognise retries; evaluators wait for them).
      push_kind: "gradient" or "delta": the one kind this store applies.
      rounds: Synchronous rounds (``ps.aggregation='round'``): pushes are
        summed into the open round and applied as one update when it
        closes; a worker's Fetch after its push waits for that (on the
        lock's condition, like ``bounded``). None: each push is an update.
      max_local_steps: Adaptive local steps (DyLU): every push is answered
        with the pusher's H for its next window, this for the fastest
        worker. None: off.
    """

    def __init__(
        self,
        optimizer: ServerOptimizer,
        max_parameter_bytes: int = DEFAULT_MAX_PARAMETER_BYTES,
        clock: Callable[[], float] = time.time,
        staleness: StalenessConfig | None = None,
        schedule: Callable[[int], float] | None = None,
        heartbeat_timeout_secs: float | None = None,
        max_clients: int | None = DEFAULT_MAX_CLIENTS,
        push_kind: str = DEFAULT_PUSH_KIND,
        rounds: rounds_lib.RoundState | None = None,
        max_local_steps: int | None = None,
    ):
        if max_clients is not None and max_clients < 1:
            raise ValueError(f"max_clients must be >= 1 or None, got {max_clients}")
        self.optimizer = optimizer
        # One kind for every client: the optimizer's step means one thing.
        self.push_kind = push_kind
        self.heartbeat_timeout_secs = heartbeat_timeout_secs
        self.max_clients = max_clients
        # Where the version (entry 0) and the pushes taken (entry 2) are
        # written after every accepted push, when set: a shared-memory file,
        # so that a supervisor can tell after a crash how many updates and
        # acknowledged pushes the last checkpoint missed (server/checkpointing.py).
        self.version_sink: np.ndarray | None = None
        # Pushes accepted (acknowledged, not duplicates): one per update, or
        # with rounds several per update (an open round's are in no version yet).
        self._pushes_taken = 0
        self.staleness_config = staleness or StalenessConfig()
        self.schedule = schedule
        self._admission = (
            staleness_lib.BoundedAdmission(self.staleness_config.bound)
            if self.staleness_config.policy == "bounded"
            else None
        )
        self._fetched: dict[str, Snapshot] = {}  # dc_asgd: each client's base parameters.
        self._dc_scratch: np.ndarray | None = None
        self.max_parameter_bytes = max_parameter_bytes
        self._diverged: str | None = None
        self.server_id = uuid.uuid4().hex[:12]
        self._clock = clock
        self._start = clock()
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)  # Pushes and Leaves: bounded waits.
        self._layout: FlatLayout | None = None
        self._wire_layouts: dict[str, FlatLayout] = {}  # Pushes in bfloat16 / float16.
        self._params: np.ndarray | None = None
        self._slots: dict[str, np.ndarray] = {}
        self._version = 0
        # The version this server start began at (0, or the restored one):
        # versions above it exist only in this start's history.
        self._start_version = 0
        self._snapshot: Snapshot | None = None
        self._clients: dict[str, ClientRecord] = {}
        self._staleness = StalenessStats()
        self._recent_staleness: list[tuple[str, int]] = []
        self._updates_applied = 0
        self._pushes_rejected = 0
        self._duplicate_pushes = 0
        self._clients_refused = 0
        self._malformed_requests = 0
        # When the table is full and nothing may be forgotten: the earliest
        # time a record could expire (None: unknown, look). Until then a new
        # id is refused without scanning the table, so that a flood of new
        # ids costs O(1) each under the lock, not O(max_clients).
        self._no_room_until: float | None = None
        # Synchronous rounds (server/rounds.py); None: every push is an update.
        self._round = rounds
        # Adaptive local steps (server/local_steps.py); None: every worker keeps its n_push.
        self._planner = LocalStepsPlanner(max_local_steps) if max_local_steps else None
        # Counts Leaves: a checkpoint must record them even when the version
        # stands still (a restored server that thinks a finished worker is
        # still active would make the evaluator wait for it forever).
        self.leaves = 0

    # -- Reads ---------------------------------------------------------------

    @property
    def initialized(self) -> bool:
        return self._layout is not None

    @property
    def version(self) -> int:
        return self._version

    @property
    def fetches_wait(self) -> bool:
        """Whether a worker's Fetch may wait for others (bounded staleness, rounds)."""
        return self._admission is not None or self._round is not None

    @property
    def aggregation(self) -> str:
        return "round" if self._round is not None else "each"

    @property
    def specs(self) -> tuple[TensorSpec, ...]:
        return self._layout.specs if self._layout else ()

    def snapshot(
        self,
        client_id: str = "",
        read_only: bool = False,
        time_left: float | None = None,
        is_active: Callable[[], bool] | None = None,
        fragment: Fragment | None = None,
    ) -> Snapshot:
        """The current parameters as a consistent read-only copy.

        Args:
          client_id: The fetching client, for accounting; "" for internal reads.
          read_only: The client will not push gradients computed from these
            parameters (an evaluator, a monitor): the staleness policies
            leave it out.
          time_left: ``bounded``: seconds until the caller's deadline; a wait
            that would outlast it is cut short (the fetch is admitted past
            the bound, and the log says so) rather than fail the worker.
          is_active: ``bounded``: False once the caller has gone (its RPC
            was cancelled): the wait ends without admitting it.
          fragment: Rounds: the caller fetches only this fragment, so it
            waits only for that fragment's round (None: for any round it
            pushed into). The whole snapshot is returned all the same.

        Raises:
          NotInitializedError: Before initialization.
          WaitAbandoned: The caller went away while waiting.
          ClientLimitError: A new ``client_id`` and no room for its record.
        """
        with self._lock:
            self._require_healthy()
            training = bool(client_id) and not read_only
            if client_id:
                self._check_room(client_id)  # A new id over max_clients: refused before waiting.
            if training and self._admission is not None:
                self._wait_for_admission(client_id, time_left, is_active)
            if training and self._round is not None:
                key = rounds_lib.ANY if fragment is None else rounds_lib.key_of(fragment)
                self._wait_for_round(client_id, key, time_left, is_active)
            if self._snapshot is None or self._snapshot.version != self._version:
                # Let go of the old copy first: unless a fetch still streams
                # it, its memory is free again before the new one is made.
                self._snapshot = None
                flat = self._params.copy()
                flat.flags.writeable = False
                self._snapshot = Snapshot(self._version, self._layout.specs, flat)
            if client_id:
                try:
                    record = self._touch(client_id)
                except ClientLimitError:  # Its room was taken while it waited.
                    self._forget(client_id)  # Never leave it admitted, blocking others.
                    raise
                record.fetches += 1
                record.trained = record.trained or training
            if training and self.staleness_config.policy == "dc_asgd":
                self._fetched[client_id] = self._snapshot
            return self._snapshot

    def _wait_for_admission(
        self, client_id: str, time_left: float | None, is_active: Callable[[], bool] | None
    ) -> None:
        """``bounded``: waits (lock released) until this fetch keeps every push within the bound."""
        admission = self._admission
        if client_id not in admission.outstanding and client_id not in admission.queue:
            admission.queue.append(client_id)
        try:
            self._admit(client_id, time_left, is_active)
        except BaseException:
            if client_id in admission.queue:  # Never leave a dead waiter at the head.
                admission.queue.remove(client_id)
                self._changed.notify_all()
            raise

    def _admit(
        self, client_id: str, time_left: float | None, is_active: Callable[[], bool] | None
    ) -> None:
        admission = self._admission
        start = self._clock()
        # Leave a margin to send the parameters before the caller's deadline.
        give_up = None if time_left is None else time.monotonic() + time_left - DEADLINE_MARGIN_SECS
        logged = False
        while not admission.admissible(client_id, self._version):
            if is_active is not None and not is_active():
                raise WaitAbandoned(f"{client_id} went away while waiting for its turn")
            if give_up is not None and time.monotonic() >= give_up:
                log.warning(
                    "bounded staleness: admitted %s past the bound at version %d to meet its "
                    "deadline (waiting for %s); raise client.timeout_secs or lower "
                    "ps.straggler_secs",
                    client_id,
                    self._version,
                    ", ".join(admission.blockers()) or "its turn",
                )
                break
            if self._expire_silent_locked():
                continue  # A dead client no longer blocks anyone: check again.
            late = admission.drop_stragglers(self._clock(), self.staleness_config.straggler_secs)
            for name in late:
                log.warning(
                    "bounded staleness: no longer waiting for %s: no push for %.1fs after its "
                    "fetch",
                    name,
                    self.staleness_config.straggler_secs,
                )
            if late:
                self._changed.notify_all()
                continue
            waited = self._clock() - start
            if waited > SLOW_WAIT_SECS and not logged:
                log.info(
                    "bounded staleness (s=%d): %s has waited %.1fs at version %d for %s",
                    admission.bound,
                    client_id,
                    waited,
                    self._version,
                    ", ".join(admission.blockers()) or "its turn",
                )
                logged = True
            self._changed.wait(timeout=0.5)
            self._require_healthy()
        if client_id in admission.queue:
            admission.queue.remove(client_id)
        admission.start(client_id, self._version, self._clock())
        # The next waiter in line may be admissible now too.
        self._changed.notify_all()

    def _wait_for_round(
        self,
        client_id: str,
        key: object,
        time_left: float | None,
        is_active: Callable[[], bool] | None,
    ) -> None:
        """Rounds: a worker that pushed into an open round (of ``key``) waits for its close.

        The lock is released while it waits.
        """
        give_up = None if time_left is None else time.monotonic() + time_left - DEADLINE_MARGIN_SECS
        while self._round.is_member(client_id, key):
            if self._close_round_if_ready():
                break
            if is_active is not None and not is_active():
                raise WaitAbandoned(f"{client_id} went away while waiting for its round")
            if give_up is not None and time.monotonic() >= give_up:
                log.warning(
                    "rounds: %s fetched version %d before its round closed, to meet its "
                    "deadline (waiting for %s); its next push will be late",
                    client_id,
                    self._version,
                    ", ".join(self._waited_for(client_id)) or "nobody",
                )
                return
            if self._expire_silent_locked():
                continue  # A dead member no longer holds the round: check again.
            self._changed.wait(timeout=0.5)
            self._require_healthy()

    def status(self, client_ids: Sequence[str] = (), max_listed: int | None = None) -> StoreStatus:
        """Counters, staleness and (copies of) client records.

        Asking about clients is no sign of life: no record is touched.

        Args:
          client_ids: Clients to list first (unknown ids are skipped).
          max_listed: At most this many records in ``clients``; None: all.
            When there are more, those named in ``client_ids`` come first,
            then clients that trained (workers, active or left), then other
            active ones, then the rest, the most recently seen first within
            each group (see ``_pick_listed``).
        """
        with self._lock:
            records = self._clients.values()
            return StoreStatus(
                initialized=self.initialized,
                version=self._version,
                updates_applied=self._updates_applied,
                pushes_rejected=self._pushes_rejected,
                duplicate_pushes=self._duplicate_pushes,
                num_parameters=self._layout.size if self._layout else 0,
                optimizer=self.optimizer.name,
                server_id=self.server_id,
                uptime_secs=self._clock() - self._start,
                staleness=_copy_stats(self._staleness),
                clients=tuple(
                    dataclasses.replace(c, staleness=_copy_stats(c.staleness))
                    for c in self._pick_listed(client_ids, max_listed)
                ),
                num_clients=len(self._clients),
                active_clients=sum(c.active for c in records),
                expired_clients=sum(c.expired for c in records),
                max_clients=self.max_clients,
                clients_refused=self._clients_refused,
                malformed_requests=self._malformed_requests,
            )

    def _pick_listed(self, client_ids: Sequence[str], max_listed: int | None) -> list[ClientRecord]:
        """The records ``status`` lists: the named ones first, then the table's order."""
        named = [self._clients[c] for c in dict.fromkeys(client_ids) if c in self._clients]
        limit = len(self._clients) if max_listed is None else max(max_listed, 0)
        named = named[:limit]
        chosen = {r.client_id for r in named}
        rest = [r for r in self._clients.values() if r.client_id not in chosen]
        if len(rest) > limit - len(named):
            # Workers first: the evaluator and the launcher look for them
            # (who left, their steps and staleness); a flood of made-up ids
            # (heartbeats, registrations) never trains, so it comes last.
            rest.sort(key=lambda r: (not r.trained, not r.active, r.expired, -r.last_seen))
            keep = {r.client_id for r in rest[: limit - len(named)]}
            rest = [r for r in self._clients.values() if r.client_id in keep]
        return named + rest

    def drain_staleness(self) -> list[int]:
        """Staleness of the pushes applied since the last drain, grouped by client."""
        return [s for values in self.drain_staleness_by_client().values() for s in values]

    def drain_staleness_by_client(self) -> dict[str, list[int]]:
        """Like ``drain_staleness``, by client id (for per-worker histograms)."""
        with self._lock:
            recent, self._recent_staleness = self._recent_staleness, []
        by_client: dict[str, list[int]] = {}
        for client_id, staleness in recent:
            by_client.setdefault(client_id, []).append(staleness)
        return by_client

    # -- Writes --------------------------------------------------------------

    def register(self, client_id: str, specs: Sequence[TensorSpec] | None) -> RegisterInfo:
        """Records a client and checks its signature when it sends one.

        Raises:
          ValidationError: Empty client id, or ``specs`` differ from the
            server's parameters (or, before initialization, are invalid).
        """
        _check_client_id(client_id)
        with self._lock:  # Under the lock: an Initialize may be landing right now.
            if specs and self._layout is not None:
                check_same_specs(self._layout.specs, specs)
            elif specs:
                _parameter_layout(specs, self.max_parameter_bytes)  # Validates early.
            record = self._touch(client_id)
            record.active = True
            return RegisterInfo(
                self.initialized, self._version, self.specs, record.last_sequence, record.last_step
            )

    def layout_for(self, specs: Sequence[TensorSpec], *, initialize: bool) -> FlatLayout:
        """Validates the signature of an Initialize or Push before its chunks arrive.

        Raises:
          ValidationError: An empty or invalid signature; for a push, one that
            differs from the server's parameters.
          NotInitializedError: A push before initialization.
        """
        if not specs:
            raise ValidationError("no tensors in the header")
        if initialize:
            return _parameter_layout(specs, self.max_parameter_bytes)
        self._require_healthy()
        dtype = common_dtype(specs)  # A gradient may travel in half precision.
        check_same_specs(with_dtype(self._layout.specs, dtype), specs)
        if dtype == PARAMETER_DTYPE:
            return self._layout
        layout = self._wire_layouts.get(dtype)
        if layout is None:
            layout = self._wire_layouts[dtype] = FlatLayout(with_dtype(self._layout.specs, dtype))
        return layout

    def push_layout(
        self, specs: Sequence[TensorSpec], fragment: bool = False
    ) -> tuple[FlatLayout, Fragment | None]:
        """The layout of a push's values and the fragment it names (None: every parameter).

        Args:
          specs: The push header's tensors.
          fragment: The header says they name a fragment; else they must be
            every tensor (a subset is a model mismatch).

        Raises:
          ValidationError: An empty or invalid signature, or one that is
            neither the server's tensors nor (with ``fragment``) a fragment
            of them.
          NotInitializedError: A push before initialization.
        """
        if not fragment:
            return self.layout_for(specs, initialize=False), None
        if not specs:
            raise ValidationError("no tensors in the header")
        part = self.fragment_for(specs)
        if part is None:
            return self.layout_for(specs, initialize=False), None
        return FlatLayout(specs), part  # One dtype for every tensor: checked here.

    def fragment_for(self, specs: Sequence[TensorSpec]) -> Fragment | None:
        """The fragment a push's or fetch's ``specs`` name; None for every parameter.

        Raises:
          ValidationError: Specs that name no fragment of the parameters.
          NotInitializedError: Before initialization.
        """
        self._require_healthy()
        fragment = resolve(self._layout, specs)
        if fragment is not None:
            self._check_fragments_allowed()
        return fragment

    def _check_fragments_allowed(self) -> None:
        if self.staleness_config.policy != "none":
            # Each of them counts versions or fetches of the whole model; with
            # fragments every other fragment's update would count as staleness.
            raise ValidationError(
                f"fragment pushes and fetches need ps.staleness='none', not "
                f"{self.staleness_config.policy!r}"
            )

    def initialize(
        self, client_id: str, specs: Sequence[TensorSpec], flat: np.ndarray
    ) -> tuple[bool, int]:
        """Sets the parameters if nobody has; returns (accepted, version).

        Takes ownership of ``flat``.

        Raises:
          ValidationError: Invalid signature or non-finite values.
        """
        _check_client_id(client_id)
        layout = _parameter_layout(specs, self.max_parameter_bytes)
        if flat.shape != (layout.size,) or flat.dtype != np.float32:
            raise ValidationError(
                f"initial values have shape {flat.shape} and dtype {flat.dtype}, "
                f"expected ({layout.size},) float32"
            )
        layout.check_finite(flat)
        with self._lock:
            self._touch(client_id)
            if self._layout is not None:
                return False, self._version
            self._layout = layout
            self._params = np.ascontiguousarray(flat, dtype=np.float32)
            self._slots = self.optimizer.init_slots(layout.size)
            self._version = 0
            return True, self._version

    def push(
        self,
        client_id: str,
        sequence: int,
        base_version: int,
        grad: np.ndarray,
        client_step: int = 0,
        known_finite: bool = False,
        base_server_id: str = "",
        kind: str = DEFAULT_PUSH_KIND,
        samples: int = 0,
        fragment: Fragment | None = None,
    ) -> PushResult:
        """Validates and applies one gradient as one update (with rounds: into the open round).

        Args:
          client_id: The pushing client.
          sequence: Per-client push number, >= 1. A sequence at or below the
            client's last applied one is a retry: acknowledged, not applied.
          base_version: The version the gradient was computed from.
          grad: Flat float32 gradient in the server's layout.
          client_step: The client's local step count, for status.
          known_finite: The caller has checked every value of ``grad`` for
            NaN and Inf (the servicer does, chunk by chunk as they arrive);
            skips that pass here.
          base_server_id: The server id of the fetch that gave
            ``base_version`` ("": unknown). From an earlier server start and
            above the version this start began at: refused, as ahead.
          kind: What ``grad`` carries: "gradient" or "delta" (theta_fetched -
            theta_local); the store's optimizer applies either as a gradient.
          samples: The training examples behind the push (0: unknown); its
            weight in a round's average.
          fragment: ``grad`` holds only this fragment's values (compact, see
            ``gasgd_tf.fragments``), and only they are updated: one version.
            With rounds it goes into that fragment's round. None: every
            parameter.

        Raises:
          PushKindError: ``kind`` is not the store's ``push_kind``. Nothing
            is changed.
          ValidationError: Bad ids, a base version from the future, a wrong
            size, or NaN/Inf values. Nothing is changed.
          NotInitializedError: Before initialization.
          DivergedError: This or an earlier update made the parameters
            non-finite.
          AheadOfServerError: ``base_version`` is not a version of this start.
          ClientLimitError: A new ``client_id`` and no room for its record.
        """
        if kind != self.push_kind:
            raise PushKindError(
                f"this server applies {self.push_kind} pushes, not {kind} pushes: start every "
                f"worker with the server's worker.push={self.push_kind!r}"
            )
        self._check_push(client_id, sequence, grad, known_finite, fragment)
        with self._lock:
            self._require_healthy()
            self._check_base(base_version, base_server_id)
            record = self._touch(client_id)
            record.trained = True
            record.last_step = max(record.last_step, int(client_step))
            if sequence <= record.last_sequence:
                self._duplicate_pushes += 1
                last = record.last_result
                if sequence == record.last_sequence and last is not None:
                    return dataclasses.replace(last, duplicate=True)
                return PushResult(self._version, 0, duplicate=True)
            staleness = self._version - base_version
            local_steps = (
                self._planner.observe(client_id, int(client_step), self._clock())
                if self._planner is not None
                else 0
            )
            if self._round is not None:
                return self._add_to_round(
                    record, sequence, grad, staleness, samples, local_steps, fragment
                )
            finite = self._apply_locked(client_id, grad, staleness, fragment)
            result = self._count_applied(record, sequence, staleness, local_steps)
            if not finite:
                self._raise_diverged(f"applying push {sequence} of {client_id!r}")
            return result

    def _raise_diverged(self, what: str) -> None:
        self._diverged = (
            f"the parameters became non-finite (NaN or Inf) at version {self._version}, "
            f"{what}; the server refuses further pushes and fetches (lower the learning rate "
            "and start again)"
        )
        raise DivergedError(self._diverged)

    def _add_to_round(
        self,
        record: ClientRecord,
        sequence: int,
        values: np.ndarray,
        staleness: int,
        samples: int,
        local_steps: int,
        fragment: Fragment | None,
    ) -> PushResult:
        """Rounds: takes one push into its open round; closes it if it is complete."""
        key = rounds_lib.key_of(fragment)
        base = self._version - staleness
        self._round.add(
            record.client_id, values, int(samples), self._clock(), fragment, self._layout.size
        )
        if base < self._round.applied_version.get(key, 0):  # Computed before its last round.
            log.info(
                "rounds: %s pushed from version %d into round %d (a late push, counted in the "
                "open round)",
                record.client_id,
                base,
                self._round.closed + 1,
            )
        self._count_taken(record, sequence, staleness)
        self._close_round_if_ready()
        result = PushResult(self._version, staleness, local_steps=local_steps)
        record.last_result = result
        return result

    def _expected_members(self) -> list[str]:
        """Rounds: the workers a round waits for (active, not expired, have trained)."""
        return [
            c.client_id for c in self._clients.values() if c.active and c.trained and not c.expired
        ]

    def _waited_for(self, client_id: str) -> list[str]:
        """Rounds: who the open rounds ``client_id`` pushed into still miss."""
        expected = self._expected_members()
        return sorted(
            {
                c
                for key in self._round.open_keys()
                if self._round.is_member(client_id, key)
                for c in self._round.missing(expected, key)
            }
        )

    def _close_round_if_ready(self) -> bool:
        """Rounds: applies every open round that may close now; True if one did."""
        if self._round is None:
            return False
        expected = self._expected_members()
        closed = False
        for key in self._round.open_keys():
            if not self._round.ready(expected, self._clock(), key):
                continue
            missing = self._round.missing(expected, key)
            if missing:
                log.warning(
                    "rounds: round %d closed at its deadline (%.0fs) without %s",
                    self._round.closed + 1,
                    self._round.timeout_secs,
                    ", ".join(missing),
                )
            average, fragment = self._round.take_average(key)
            finite = self._apply_locked("", average, 0, fragment)
            self._count_update()
            self._round.applied_version[key] = self._version
            self._changed.notify_all()
            closed = True
            if not finite:
                self._raise_diverged(f"applying round {self._round.closed}")
        return closed

    def close_due_round(self) -> bool:
        """Rounds: closes the open round if its deadline has come (the server's timer)."""
        with self._lock:
            return self._round is not None and self._close_round_if_ready()

    def _check_push(
        self,
        client_id: str,
        sequence: int,
        grad: np.ndarray,
        known_finite: bool,
        fragment: Fragment | None,
    ) -> None:
        """``push``'s checks that read no shared state: outside the lock (the layout is fixed)."""
        _check_client_id(client_id)
        if sequence < 1:
            raise ValidationError(f"push sequence must be >= 1, got {sequence}")
        self._require_healthy()
        size = self._layout.size if fragment is None else fragment.size
        if grad.shape != (size,) or grad.dtype != np.float32:
            raise ValidationError(
                f"gradient has shape {grad.shape} and dtype {grad.dtype}, "
                f"expected ({size},) float32"
            )
        if fragment is not None:
            self._check_fragments_allowed()
        if known_finite:
            return
        if fragment is None:
            self._layout.check_finite(grad)
        elif not all_finite(grad):  # Rare: the layout of the fragment names the tensor.
            FlatLayout(fragment.specs(self._layout.specs)).check_finite(grad)

    def _check_base(self, base_version: int, base_server_id: str) -> None:
        """Refuses (and counts) a push computed from a version this start does not have."""
        other_start = base_server_id and base_server_id != self.server_id
        if base_version > self._version or (other_start and base_version > self._start_version):
            self._pushes_rejected += 1
            raise AheadOfServerError(
                f"base_version {base_version} is ahead of the server version {self._version} "
                "(the server was restored from a checkpoint?): fetch the current parameters "
                "and push gradients computed from them"
            )

    def _apply_locked(
        self, client_id: str, grad: np.ndarray, staleness: int, fragment: Fragment | None = None
    ) -> bool:
        """Applies ``grad`` per the staleness policy; False if a parameter became non-finite."""
        learning_rate = self._learning_rate(staleness)
        if fragment is not None:
            return self._apply_fragment(grad, fragment, learning_rate)
        if self.staleness_config.policy == "dc_asgd" and client_id in self._fetched:
            grad = staleness_lib.dc_compensate(
                grad,
                self._params,
                self._fetched[client_id].flat,
                self.staleness_config.dc_lambda,
                out=self._dc_buffer(),
            )
        with np.errstate(over="ignore", invalid="ignore"):  # Checked by the optimizer.
            # The optimizer checks the new parameters block by block while
            # each block is still in cache: a separate pass afterwards cost
            # about one more copy's time of the parameters, under the lock.
            finite = self.optimizer.apply(
                self._params, grad, self._slots, learning_rate, check_finite=True
            )
        if self._admission is not None:
            if staleness > self._admission.bound:
                # Only after a straggler was given up on or a deadline forced an
                # admission (both logged when they happened); say it again here.
                log.warning(
                    "bounded staleness: applied a push of %s with staleness %d > %d",
                    client_id,
                    staleness,
                    self._admission.bound,
                )
            self._admission.finish(client_id)
            self._changed.notify_all()
        return finite

    def _apply_fragment(self, values: np.ndarray, fragment: Fragment, learning_rate: float) -> bool:
        """One optimizer step on a fragment's parameters and slots (gathered, then put back).

        Elementwise slots move with their parameters; any other (Adam's step
        count) counts this as one step, as it counts a whole-model push.
        """
        params = fragment.gather(self._params)
        slots = {
            name: fragment.gather(slot) if slot.shape == self._params.shape else slot
            for name, slot in self._slots.items()
        }
        with np.errstate(over="ignore", invalid="ignore"):  # Checked by the optimizer.
            finite = self.optimizer.apply(params, values, slots, learning_rate, check_finite=True)
        fragment.scatter(params, self._params)
        for name, slot in self._slots.items():
            if slot.shape == self._params.shape:
                fragment.scatter(slots[name], slot)
        return finite

    def _write_mark(self) -> None:
        if self.version_sink is not None:
            self.version_sink[0] = self._version
            self.version_sink[2] = self._pushes_taken

    @property
    def pushes_taken(self) -> int:
        """Pushes accepted so far (restored ones included), duplicates not counted."""
        return self._pushes_taken

    def _count_applied(
        self, record: ClientRecord, sequence: int, staleness: int, local_steps: int = 0
    ) -> PushResult:
        """Bumps the version and the counters after an applied push; returns its result."""
        self._count_update()
        self._count_taken(record, sequence, staleness)
        result = PushResult(self._version, staleness, local_steps=local_steps)
        record.last_result = result
        return result

    def _count_update(self) -> None:
        """One more update (a push, or a round) is in the parameters: a new version."""
        self._version += 1
        self._updates_applied += 1
        self._write_mark()

    def _count_taken(self, record: ClientRecord, sequence: int, staleness: int) -> None:
        """The counters of one accepted push, applied at once or into the open round."""
        self._pushes_taken += 1
        self._write_mark()
        record.pushes += 1
        record.last_sequence = sequence
        record.staleness.add(staleness)
        self._staleness.add(staleness)
        self._recent_staleness.append((record.client_id, staleness))

    def heartbeat(self, client_id: str) -> int:
        """Records that ``client_id`` is alive (between its pushes); returns the version."""
        _check_client_id(client_id)
        with self._lock:
            self._touch(client_id)
            return self._version

    def expire_silent(self) -> list[str]:
        """Expires the clients silent for ``heartbeat_timeout_secs``; returns their ids.

        Called periodically (the server's summary loop) and by bounded waits.
        """
        with self._lock:
            expired = self._expire_silent_locked()
            if expired:
                self._close_round_if_ready()
            return expired

    def _expire_silent_locked(self) -> list[str]:
        if self.heartbeat_timeout_secs is None:
            return []
        cutoff = self._clock() - self.heartbeat_timeout_secs
        expired = []
        for record in self._clients.values():
            if record.active and not record.expired and record.last_seen < cutoff:
                record.expired = True
                expired.append(record.client_id)
                self._forget(record.client_id)
                log.warning(
                    "parameter server: %s sent no call or heartbeat for %.0fs: dropped from "
                    "the staleness bounds until it calls again",
                    record.client_id,
                    self.heartbeat_timeout_secs,
                )
        if expired:
            self._changed.notify_all()
        return expired

    def _forget(self, client_id: str) -> None:
        """Drops ``client_id`` from the staleness policies' state (it left or went silent)."""
        self._fetched.pop(client_id, None)
        if self._planner is not None:
            self._planner.forget(client_id)
        if self._admission is not None:
            self._admission.finish(client_id)
            if client_id in self._admission.queue:
                self._admission.queue.remove(client_id)
            self._changed.notify_all()

    def export_state(self) -> StoreState:
        """A consistent copy of everything needed to resume (for a checkpoint).

        Copies the optimizer slots under the lock (the parameters come from
        the version's cached snapshot); the caller writes them outside it.

        Raises:
          NotInitializedError: Before initialization.
          DivergedError: The parameters are not finite: nothing sound to save.
        """
        snapshot = self.snapshot()
        with self._lock:
            self._require_healthy()
            if snapshot.version != self._version:  # A push landed in between.
                self._snapshot = None
                flat = self._params.copy()
                flat.flags.writeable = False
                snapshot = self._snapshot = Snapshot(self._version, self._layout.specs, flat)
            slots = {name: slot.copy() for name, slot in self._slots.items()}
            clients = {
                c.client_id: {
                    "active": c.active,
                    "pushes": c.pushes,
                    "fetches": c.fetches,
                    "last_sequence": c.last_sequence,
                    "last_step": c.last_step,
                    "last_version": c.last_result.version if c.last_result else None,
                    "last_staleness": c.last_result.staleness if c.last_result else None,
                    "staleness": _stats_to_json(c.staleness),
                    "trained": c.trained,
                }
                for c in self._clients.values()
            }
            meta = {
                "updates_applied": self._updates_applied,
                "pushes_taken": self._pushes_taken,
                "pushes_rejected": self._pushes_rejected,
                "duplicate_pushes": self._duplicate_pushes,
                "staleness": _stats_to_json(self._staleness),
                "clients": clients,
                "optimizer": self.optimizer.get_config(),
            }
            if self._round is not None:
                round_slots, meta["round"] = self._round.export(self._layout.size)
                slots.update(round_slots)
            if self._planner is not None:
                meta["local_steps"] = self._planner.export()
            return StoreState(self._version, self._layout.specs, snapshot.flat, slots, meta)

    def restore_state(self, state: StoreState) -> None:
        """Resumes from ``state`` (see ``export_state``): parameters, slots, version, clients.

        Counters continue from the saved ones; every restored client counts
        as seen now (so none expires before it had time to reconnect).

        Raises:
          RestoreError: The store is already initialized, or the slots do
            not fit this store's optimizer (another optimizer, another size).
          ValidationError: Invalid specs or non-finite parameters.
        """
        layout = _parameter_layout(state.specs, self.max_parameter_bytes)
        params = np.array(state.params, dtype=np.float32, copy=True).reshape(-1)
        if params.size != layout.size:
            raise RestoreError(f"saved parameters have {params.size} values, specs {layout.size}")
        layout.check_finite(params)
        expected = self.optimizer.init_slots(layout.size)
        saved_slots, round_slots = rounds_lib.split_slots(state.slots)
        total = round_slots.get(rounds_lib.TOTAL_SLOT)
        if total is not None and np.asarray(total).size != layout.size:
            raise RestoreError(
                f"the saved round has {np.asarray(total).size} values, specs {layout.size}"
            )
        saved_round = state.meta.get("round") or {}
        if self._round is None and (saved_round.get("members") or saved_round.get("fragments")):
            dropped = set(saved_round.get("members") or ())
            for fragment_round in saved_round.get("fragments") or ():
                dropped.update(fragment_round["members"])
            log.warning(
                "the checkpoint has an open round of %s, but this server applies each push "
                "(ps.aggregation='each'): those pushes are dropped",
                ", ".join(sorted(dropped)),
            )
        if set(saved_slots) != set(expected):
            raise RestoreError(
                f"the checkpoint holds optimizer state {sorted(saved_slots)} but this server's "
                f"{self.optimizer.name} optimizer keeps {sorted(expected)}: it was saved by "
                "another optimizer (start a new run, or warm start from it instead)"
            )
        slots = {}
        for name, fresh in expected.items():
            saved = np.asarray(saved_slots[name])
            if saved.shape != fresh.shape:
                raise RestoreError(
                    f"optimizer slot {name!r} has shape {saved.shape}, expected {fresh.shape}"
                )
            slots[name] = np.array(saved, dtype=fresh.dtype, copy=True)
        meta = state.meta
        with self._lock:
            if self._layout is not None:
                raise RestoreError("the parameters are already initialized: restore first")
            self._layout, self._params, self._slots = layout, params, slots
            self._version = self._start_version = int(state.version)
            self._updates_applied = int(meta.get("updates_applied", 0))
            # Older checkpoints: every push taken was one update.
            self._pushes_taken = int(meta.get("pushes_taken", self._updates_applied))
            self._pushes_rejected = int(meta.get("pushes_rejected", 0))
            self._duplicate_pushes = int(meta.get("duplicate_pushes", 0))
            self._staleness = _stats_from_json(meta.get("staleness"))
            now = self._clock()
            for client_id, saved in (meta.get("clients") or {}).items():
                self._clients[client_id] = _record_from_json(client_id, saved, now)
            if self.max_clients is not None and len(self._clients) > self.max_clients:
                # Kept all the same: they are this run's clients, and the
                # limit only refuses new ids (forgetting what it may first).
                log.warning(
                    "restored %d client records, more than ps.max_clients=%d",
                    len(self._clients),
                    self.max_clients,
                )
            if self._round is not None:
                self._round.restore(round_slots, meta.get("round"), now)
            if self._planner is not None:
                self._planner.restore(meta.get("local_steps"))
            self._write_mark()

    def note_rejected(self) -> None:
        """Counts a push rejected before it reached ``push`` (a malformed stream)."""
        with self._lock:
            self._pushes_rejected += 1

    def note_malformed(self) -> None:
        """Counts a request (of any method) whose bytes did not parse."""
        with self._lock:
            self._malformed_requests += 1

    def leave(self, client_id: str) -> int:
        """Marks a client as finished; returns the version."""
        _check_client_id(client_id)
        with self._lock:
            self._touch(client_id).active = False
            self._forget(client_id)
            self._no_room_until = None  # A client that left may be forgotten now: look again.
            self.leaves += 1
            self._close_round_if_ready()  # It may have been the one the round waited for.
            return self._version

    def _learning_rate(self, staleness: int) -> float:
        """The step of the push being applied: schedule x staleness policy."""
        rate = self.schedule(self._version) if self.schedule else self.optimizer.learning_rate
        if self.staleness_config.policy == "lr_scale":
            rate *= staleness_lib.lr_scale(staleness)
        return rate

    def _dc_buffer(self) -> np.ndarray:
        if self._dc_scratch is None or self._dc_scratch.size != self._params.size:
            self._dc_scratch = np.empty(self._params.size, np.float32)
        return self._dc_scratch

    # -- Internals -----------------------------------------------------------

    def _touch(self, client_id: str) -> ClientRecord:
        """The record of ``client_id``, seen now; a new one if there is room.

        Raises:
          ClientLimitError: A new id, and no record may be forgotten for it.
        """
        record = self._clients.get(client_id)
        if record is None:
            self._check_room(client_id)
            record = self._clients[client_id] = ClientRecord(client_id)
        record.last_seen = self._clock()
        if record.expired:
            record.expired = False
            log.info("parameter server: %s is back after it expired", client_id)
        return record

    def _check_room(self, client_id: str) -> None:
        """Makes room for a record of ``client_id`` if it is new and the table is full.

        Raises:
          ClientLimitError: No record may be forgotten (none expired, none
            read-only and left).
        """
        if (
            self.max_clients is None
            or client_id in self._clients
            or len(self._clients) < self.max_clients
        ):
            return
        if self._no_room_until is None or self._clock() >= self._no_room_until:
            self._expire_silent_locked()  # Silent ones may not have been marked yet.
            victim = _forgettable(self._clients.values())
            if victim is not None:
                del self._clients[victim.client_id]
                self._forget(victim.client_id)  # Done when it expired or left; harmless.
                log.debug("forgot client %s to make room for %s", victim.client_id, client_id)
                return
            self._no_room_until = self._next_expiry()
        self._clients_refused += 1
        message = (
            f"the server keeps records of {len(self._clients)} clients "
            f"(ps.max_clients={self.max_clients}) and none has expired or left without "
            "training: new client ids are refused until one does (raise ps.max_clients, or "
            "lower ps.heartbeat_timeout_secs so that silent clients are forgotten sooner)"
        )
        if _is_power_of_ten(self._clients_refused):  # Logged, but not once per call of a flood.
            log.warning(
                "refused client %r (%d refused so far): %s",
                client_id,
                self._clients_refused,
                message,
            )
        raise ClientLimitError(message)

    def _next_expiry(self) -> float:
        """The earliest time an active record may expire (inf: none will)."""
        if self.heartbeat_timeout_secs is None:
            return math.inf
        seen = [r.last_seen for r in self._clients.values() if r.active and not r.expired]
        return min(seen, default=math.inf) + self.heartbeat_timeout_secs

    def _require_initialized(self) -> None:
        if self._layout is None:
            raise NotInitializedError("the parameters are not initialized yet")

    def _require_healthy(self) -> None:
        self._require_initialized()
        if self._diverged:
            raise DivergedError(self._diverged)


def _parameter_layout(specs: Sequence[TensorSpec], max_bytes: int) -> FlatLayout:
    """The layout of a parameter signature: float32 only (the server's masters).

    Raises:
      ValidationError: Any other dtype, or what FlatLayout refuses.
    """
    layout = FlatLayout(specs, max_bytes)
    if layout.dtype != PARAMETER_DTYPE:
        raise ValidationError(
            f"parameters must be {PARAMETER_DTYPE}, got {layout.dtype} "
            f"(tensor {layout.specs[0].name!r}); half precision is for transport only"
        )
    return layout


def _record_from_json(client_id: str, saved: dict, now: float) -> ClientRecord:
    """A client record from a checkpoint's metadata (``export_state``), seen ``now``."""
    record = ClientRecord(
        client_id,
        active=bool(saved.get("active", True)),
        pushes=int(saved.get("pushes", 0)),
        fetches=int(saved.get("fetches", 0)),
        last_sequence=int(saved.get("last_sequence", 0)),
        last_step=int(saved.get("last_step", 0)),
        last_seen=now,
        staleness=_stats_from_json(saved.get("staleness")),
        # Older checkpoints did not record it: a client that pushed trained.
        trained=bool(saved.get("trained", int(saved.get("pushes", 0)) > 0)),
    )
    if saved.get("last_version") is not None:
        record.last_result = PushResult(
            int(saved["last_version"]), int(saved.get("last_staleness") or 0)
        )
    return record


def _forgettable(records: Iterable[ClientRecord]) -> ClientRecord | None:
    """The record a full table forgets first, or None when none may go.

    An expired record that never trained, then one that never trained and
    has left (neither holds a push sequence), then any expired one; the
    oldest seen first within each group. A worker that left is kept: its
    sequence recognises a retried push, and evaluators wait for it to leave.
    """
    best, best_key = None, None
    for r in records:
        if r.expired and not r.trained:
            group = 0
        elif not r.active and not r.trained:
            group = 1
        elif r.expired:
            group = 2
        else:
            continue
        key = (group, r.last_seen)
        if best_key is None or key < best_key:
            best, best_key = r, key
    return best


def _is_power_of_ten(n: int) -> bool:
    while n >= 10 and n % 10 == 0:
        n //= 10
    return n == 1


def _copy_stats(stats: StalenessStats) -> StalenessStats:
    return dataclasses.replace(stats, histogram=stats.histogram.copy())


def _stats_to_json(stats: StalenessStats) -> dict:
    return {
        "count": stats.count,
        "total": stats.total,
        "max": stats.max,
        "histogram": stats.histogram.tolist(),
    }


def _stats_from_json(saved: dict | None) -> StalenessStats:
    stats = StalenessStats()
    if saved:
        stats.count, stats.total, stats.max = (int(saved[k]) for k in ("count", "total", "max"))
        histogram = np.asarray(saved.get("histogram", []), np.int64)[:STALENESS_BUCKETS]
        stats.histogram[: histogram.size] = histogram
    return stats


def _check_client_id(client_id: str) -> None:
    if not client_id:
        raise ValidationError("client_id is empty")
    if len(client_id) > MAX_CLIENT_ID_LENGTH or not client_id.isprintable():
        raise ValidationError(
            f"client_id must be at most {MAX_CLIENT_ID_LENGTH} printable characters, "
            f"got {len(client_id)} characters"
        )
