"""ReplicaSession: the protocol of one model replica with the parameter service.

One session serves the command-line worker, the Keras callback and the
evaluator (read-only). It owns what those once wrote three times:

- join: wait for the server, register with the model's signature, offer
  initial weights when the server has none, fetch, and learn where a
  restarted client resumes;
- the schedule: what is due after step s (``SyncSchedule``);
- the base versions: the version the replica's weights have, and the
  version the oldest gradient of the next push was computed from (with
  ``n_fetch < n_push`` a fetch lands between pushes, and the push must not
  claim the newer version for gradients computed before it);
- recovery after a server restart: a push refused because the server went
  back to an earlier version is lost, and so is what was computed since
  from the same weights; the session fetches the current parameters and
  goes on;
- leave, and the counters every adapter reports.

The session is TF-free. It talks to the model through ``Variables`` (read
and assign the flat float32 weights; ``gasgd_tf.keras_sync.VariableSync``
for Keras) and a ``take_update`` callable that returns what is to be pushed
and resets it (the gradients accumulated since the last push).

Usage, per step::

    session.before_step()        # assigns weights a background fetch brought
    ...compute one step...
    session.after_step(step)     # pushes / fetches when due
    ...
    session.finish(step)         # the last push, if still due, lands
    session.leave()
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Protocol

import grpc
import numpy as np

from gasgd_tf.client import (
    ParameterClient,
    RequestRejectedError,
    ServerRestartedError,
    ServerUnavailableError,
    ShardedClient,
    Version,
    version_number,
)
from gasgd_tf.replica.payload import Update
from gasgd_tf.replica.schedule import Due, SyncSchedule
from gasgd_tf.replica.streaming import FragmentStream, Landed
from gasgd_tf.replica.transport import Fetched, Outcome, make_transport
from gasgd_tf.tensors import TensorSpec, ValidationError, check_same_specs

log = logging.getLogger(__name__)

Client = ParameterClient | ShardedClient
# How often a read-only replica asks whether a worker has initialized the server.
INITIALIZED_POLL_SECS = 0.2


class ModelMismatchError(ValueError):
    """The model's trainable variables differ from the parameters the server holds."""


class Variables(Protocol):
    """The replica's weights as one flat float32 buffer, in the order of ``specs``."""

    specs: tuple[TensorSpec, ...]

    def read(self) -> np.ndarray: ...

    def assign(self, flat: np.ndarray) -> None: ...


@dataclasses.dataclass
class SessionStats:
    """What a session did, for logs, progress files and the adapters' counters.

    Attributes:
      pushes: Pushes the server applied.
      fetches: Fetches after the join (not counting the join's, nor the
        refetch after a lost push).
      pushes_lost: Pushes refused because the server had been restored to
        an earlier version; their updates are lost.
      version: The server version last seen (push answer, fetch or leave).
      staleness: The staleness of the last applied push.
      max_staleness: The largest staleness of a push.
      local_steps: The last H the server planned (adaptive local steps).
    """

    pushes: int = 0
    fetches: int = 0
    pushes_lost: int = 0
    version: int = 0
    staleness: int = 0
    max_staleness: int = 0
    local_steps: int = 0  # The last H the server planned (adaptive local steps; 0: none).


def _mismatch(what: str, address: str, error: Exception) -> ModelMismatchError:
    return ModelMismatchError(
        f"{what} does not match the parameters on the server at {address} ({error}); every "
        "replica must build the same model: the same variable names (Keras paths), shapes "
        "and order"
    )


class ReplicaSession:
    """One replica's protocol with the parameter service.

    Args:
      client: A client of the server (one or several shards).
      variables: The replica's weights.
      schedule: When to push and fetch.
      take_update: Returns what the next push carries (the gradients
        accumulated since the last push, flat) and resets it; None for a
        read-only replica.
      overlap: Push and fetch on a background thread while the replica
        computes (``worker.overlap``).
      push_kind: What ``take_update`` returns: "gradient" sums, or a
        parameter "delta" (``payload.DeltaTracker``); named in every push.
      batch_size: Examples per step, for each push's sample count (0: unknown).
      model_name: Names the model in a mismatch error.
      say: Where the session's lines for a person go (a lost push, say);
        default: a logging warning.
      stream: Streaming fragment sync (``config.sync.fragments`` > 1): it
        pushes, fetches and merges one fragment at a time on its own
        schedule, in place of whole-model syncs (``take_update`` is then
        unused: the stream takes each fragment's delta itself).
    """

    def __init__(
        self,
        client: Client,
        variables: Variables,
        schedule: SyncSchedule,
        take_update: Callable[[], np.ndarray] | None = None,
        *,
        overlap: bool = False,
        push_kind: str = "gradient",
        batch_size: int = 0,
        model_name: str = "the model",
        say: Callable[[str], None] | None = None,
        stream: FragmentStream | None = None,
    ):
        self.client = client
        self.stream = stream
        self.variables = variables
        self.schedule = schedule
        self._take_update = take_update
        self.transport = make_transport(client, overlap)
        self.push_kind = push_kind
        self.batch_size = batch_size
        self.model_name = model_name
        self._say = say or log.warning
        self.stats = SessionStats()
        # Added to every step this session reports as client_step: the step
        # a Keras callback's earlier fit reached (its steps restart at 0).
        self.step_offset = 0
        self._weights_version: Version = 0  # Of the weights the replica computes with.
        self._push_base: Version = 0  # Of the oldest gradient in the next push.
        self._fresh = True  # Nothing accumulated: the next step opens a push window.
        self._step = 0  # The steps done at the last after_step.
        self._pushed_step = 0  # The step of the last push handed to the transport.

    @property
    def name(self) -> str:
        return self.client.client_id

    @property
    def weights_version(self) -> Version:
        """The version of the weights the replica computes with (a tuple when sharded)."""
        return self._weights_version

    # -- Joining ---------------------------------------------------------------

    def join(
        self,
        connect_timeout_secs: float,
        *,
        initial: Callable[[], np.ndarray] | None = None,
        heartbeat_secs: float | None = None,
    ) -> int:
        """Registers, offers initial weights if the server has none, and fetches them.

        Args:
          connect_timeout_secs: How long to wait for the server to accept
            connections.
          initial: Returns the flat weights to offer (called only when the
            server needs them); default: the variables' current values.
          heartbeat_secs: Send heartbeats at this interval from now on, so a
            replica computing long between pushes is not expired.

        Returns:
          The step of this client id's last push the server applied (0 for a
          new client; more when a worker resumes a run or was restarted).

        Raises:
          ServerUnavailableError: The server did not answer in time.
          ModelMismatchError: The model differs from the server's (names a tensor).
        """
        self.client.wait_for_server(connect_timeout_secs)
        if heartbeat_secs:
            self.client.start_heartbeats(heartbeat_secs)
        reg = self._register()
        if not reg.initialized:
            offer = self.variables.read() if initial is None else initial()
            accepted, _ = self.client.initialize(self.variables.specs, offer)
            log.info("%s: initialization offer %s", self.name, "accepted" if accepted else "lost")
        self._assign(self._checked(self.client.fetch()))
        self._push_base = self._weights_version
        if self.stream is not None:
            self.stream.start(self.variables.read(), self._weights_version)
        return reg.last_step

    def resume_at(self, step: int) -> None:
        """Counts steps from ``step`` on: the schedule's origin after a resumed join."""
        self._step = self._pushed_step = step
        if self.stream is not None:
            self.stream.start(self.variables.read(), self._weights_version, step)

    def join_read_only(
        self,
        connect_timeout_secs: float,
        heartbeat_secs: float | None,
        init_timeout_secs: float | None = None,
    ) -> None:
        """Registers without offering weights; waits until a worker has initialized the server.

        Args:
          connect_timeout_secs: How long to wait for the server to answer.
          heartbeat_secs: Heartbeat interval from now on (None: none).
          init_timeout_secs: How long to wait for a worker to initialize it
            (None: ``connect_timeout_secs``); a worker starting TensorFlow on
            a loaded machine, or restarted, may take minutes.

        Raises:
          ServerUnavailableError: The server did not answer within
            ``connect_timeout_secs``, or no worker initialized it within
            ``init_timeout_secs``.
          ModelMismatchError: The model differs from the server's.
        """
        if init_timeout_secs is None:
            init_timeout_secs = connect_timeout_secs
        self.client.wait_for_server(connect_timeout_secs)
        # A long evaluation of a large test set is silence otherwise.
        if heartbeat_secs:
            self.client.start_heartbeats(heartbeat_secs)
        deadline = time.monotonic() + init_timeout_secs
        while not self._register().initialized:
            if time.monotonic() > deadline:
                raise ServerUnavailableError(
                    f"parameter server at {self.client.address} was not initialized by any "
                    f"worker within {init_timeout_secs:.0f}s"
                )
            time.sleep(INITIALIZED_POLL_SECS)

    def _register(self):
        """Registers with the model's signature, so the server refuses a model that differs."""
        try:
            return self.client.register(self.variables.specs)
        except RequestRejectedError as e:
            if e.code == grpc.StatusCode.INVALID_ARGUMENT:
                raise _mismatch(self.model_name, self.client.address, e) from None
            raise

    def _checked(self, fetched: Fetched) -> Fetched:
        """``fetched``, if its tensors are the model's (another worker may have
        initialized the server first, with another model)."""
        try:
            check_same_specs(fetched[1], self.variables.specs)
        except ValidationError as e:
            raise _mismatch(self.model_name, self.client.address, e) from None
        return fetched

    # -- Steps -------------------------------------------------------------------

    def before_step(self) -> None:
        """Call before each step: takes what a background sync brought, opens a push window."""
        if self.transport.overlapped:
            self._settle(self.transport.result(wait=False))
        if self._fresh:
            self._push_base, self._fresh = self._weights_version, False

    def after_step(self, step: int) -> Due:
        """Call after each step (or each Keras execution): pushes and fetches when due.

        Args:
          step: Steps done now, counted as the schedule counts them.

        Returns:
          What fell due.
        """
        if self.stream is not None:
            return self._stream_step(step)
        due = self.schedule.due(step, self._step)
        self._step = max(step, self._step)
        if due:
            self._sync(step, due)
        return due

    def _stream_step(self, step: int) -> Due:
        """Streaming: lands the fragment syncs due, starts the ones falling due."""
        previous, self._step = self._step, max(step, self._step)
        last = self.schedule.num_steps is not None and step >= self.schedule.num_steps
        self._book_stream(lambda: self.stream.after_step(step, previous, last))
        return Due(push=bool(self.stream.plan.due(step, previous)) and not last)

    def _book_stream(self, run: Callable[[], list[Landed]], recover: bool = True) -> None:
        """Runs a stream call and counts what landed; recovers from a server restart."""
        try:
            landed = run()
        except ServerRestartedError as e:
            self.stream.abandon()
            self.stats.pushes_lost += 1
            if not recover:
                self._say(f"{self.name}: the last push was lost to a server restart ({e})")
                return
            self._assign(self.client.fetch())
            self.stream.start(self.variables.read(), self._weights_version, self._step)
            self._say(
                f"{self.name}: the server was restored to an earlier version ({e}); the "
                f"fragment syncs in flight are lost; fetched version {self.stats.version}"
            )
            return
        for sync in landed:
            self._count_ack(sync.ack)
            if sync.fetched_version is not None:
                self.stats.fetches += 1
                self.stats.version = version_number(sync.fetched_version)

    def finish(self) -> None:
        """Pushes what was computed since the last push, then waits for the sync in flight."""
        if self.stream is not None:
            self._book_stream(lambda: self.stream.finish(self._step), recover=False)
            return
        if self._take_update is not None and self._step > self._pushed_step:
            self._sync(self._step, Due(push=True))
        self._settle(self.transport.result(wait=True), recover=False)

    def _sync(self, step: int, due: Due) -> None:
        # The sync in flight (background transport) must land before the next:
        # if it was a lost push, what was computed since is lost with it.
        if self._settle(self.transport.result(wait=True)):
            if due.push:  # Its gradients, from the lost weights, were dropped with it.
                self.stats.pushes_lost += 1
                self._pushed_step = step
            return
        update = None
        if due.push:
            samples = (step - self._pushed_step) * self.batch_size
            update = Update(self._take_update(), self.push_kind, samples)
            self._pushed_step = step
            self._fresh = True
        self.transport.start(update, self._push_base, self.step_offset + step, due.fetch)
        self._settle(self.transport.result(wait=False))

    def _settle(self, outcome: Outcome | None, recover: bool = True) -> bool:
        """Books a finished sync's outcome; True if its push was lost (then recovered)."""
        if outcome is None:
            return False
        if outcome.ack is not None:
            ack = outcome.ack
            self._count_ack(ack)
            if ack.local_steps:
                self.stats.local_steps = ack.local_steps
            if ack.local_steps and ack.local_steps != self.schedule.n_push:
                # Adaptive local steps: the next window counts from the step
                # this push was taken at (settled before the next is taken).
                self.schedule = self.schedule.replanned(ack.local_steps, self._pushed_step)
        if outcome.fetched is not None:
            self._assign(outcome.fetched)
            self.stats.fetches += 1
        if outcome.lost is None:
            return False
        self.stats.pushes_lost += 1
        if not recover:
            self._say(f"{self.name}: the last push was lost to a server restart ({outcome.lost})")
            return True
        if self._take_update is not None and not self._fresh:
            self._take_update()  # Accumulated since, from the same lost weights: dropped.
            self._pushed_step = self._step  # The next push's samples start after them.
        self._assign(self.client.fetch())
        self._fresh = True
        self._say(
            f"{self.name}: the server was restored to an earlier version ({outcome.lost}); this "
            f"push is lost; fetched version {self.stats.version} and going on"
        )
        return True

    def _count_ack(self, ack) -> None:
        self.stats.pushes += 1
        self.stats.version, self.stats.staleness = ack.version, ack.staleness
        self.stats.max_staleness = max(self.stats.max_staleness, ack.staleness)

    # -- Plain calls -------------------------------------------------------------

    def _assign(self, fetched: Fetched) -> None:
        version, _, flat = fetched
        self.variables.assign(flat)
        self._weights_version = version
        self.stats.version = version_number(version)

    def fetch(self, read_only: bool = False) -> int:
        """Fetches the server's parameters into the replica now (counted); returns the version."""
        self._assign(self.client.fetch(read_only=read_only))
        self.stats.fetches += 1
        return self.stats.version

    def leave(self) -> int:
        """Tells the server this replica is done; returns the server's version."""
        self.stats.version = version_number(self.client.leave())
        return self.stats.version

    def close(self) -> None:
        """Stops the transport and closes the client (heartbeats included)."""
        self.transport.close()
        if self.stream is not None:
            self.stream.close()
        self.client.close()
