"""How a replica's push and fetch reach the server: now, or on a background thread.

Both transports take one sync at a time (a push, a fetch, or a push then a
fetch) and hand back its ``Outcome`` once. The session never needs to know
which one it has: ``DirectTransport`` finishes the sync inside ``start``;
``BackgroundTransport`` (``worker.overlap``) runs it on a thread while the
replica computes its next steps, as DistBelief ran fetch, compute and push
in loosely coupled threads.

At most one sync is in flight: starting the next one first waits for the
previous one, so pushes stay in order and memory stays bounded. A push the
server refused because it was restored to an earlier version is an outcome
(``lost``), not an error: the session recovers from it. Every other error
of a background call is raised in the training thread, by the next
``result`` or ``start``.
"""

from __future__ import annotations

import dataclasses
import threading
from typing import Protocol

import numpy as np

from gasgd_tf.client import PushAck, ServerRestartedError, Version
from gasgd_tf.replica.payload import Update
from gasgd_tf.tensors import TensorSpec

Fetched = tuple[Version, tuple[TensorSpec, ...], np.ndarray]


class Client(Protocol):
    """What a transport needs of a ParameterClient or ShardedClient."""

    def push(
        self,
        grad: np.ndarray,
        base_version: Version,
        client_step: int = 0,
        *,
        kind: str = "gradient",
        samples: int = 0,
    ) -> PushAck: ...

    def fetch(self, read_only: bool = False) -> Fetched: ...


@dataclasses.dataclass
class Outcome:
    """What one sync did.

    Attributes:
      ack: The server's answer to it, when it was applied (or a duplicate).
      lost: The server refused it because it was restored to an earlier
        version meanwhile; then no fetch was made.
      fetched: The parameters fetched, when a fetch was asked for and made.
    """

    ack: PushAck | None = None
    lost: ServerRestartedError | None = None
    fetched: Fetched | None = None


def run_sync(
    client: Client, update: Update | None, base: Version, client_step: int, fetch: bool
) -> Outcome:
    """Pushes ``update`` (if any), then fetches (if ``fetch`` and the push was not lost)."""
    outcome = Outcome()
    if update is not None:
        try:
            outcome.ack = client.push(
                update.values,
                base,
                client_step=client_step,
                kind=update.kind,
                samples=update.samples,
            )
        except ServerRestartedError as e:
            outcome.lost = e
            return outcome
    if fetch:
        outcome.fetched = client.fetch()
    return outcome


class DirectTransport:
    """Runs each sync in the calling thread, inside ``start``."""

    overlapped = False

    def __init__(self, client: Client):
        self._client = client
        self._done: Outcome | None = None

    def start(self, update: Update | None, base: Version, client_step: int, fetch: bool) -> None:
        """Runs the sync now; its outcome is the next ``result``."""
        self._done = run_sync(self._client, update, base, client_step, fetch)

    def result(self, wait: bool = True) -> Outcome | None:
        """The outcome of the last sync, once; None when there is none to collect."""
        done, self._done = self._done, None
        return done

    def close(self) -> None:
        """Nothing runs in the background: nothing to stop."""


class BackgroundTransport:
    """Runs each sync on a background thread (``worker.overlap``).

    Fetched parameters come back as an outcome that the session assigns at
    the replica's next step boundary, so with overlap the weights a step
    computes with may be one or two steps older than without it; pushes
    still name the version their oldest gradient was computed from.
    """

    overlapped = True

    def __init__(self, client: Client):
        self._client = client
        self._thread: threading.Thread | None = None
        self._done: Outcome | None = None
        self._error: BaseException | None = None

    def start(self, update: Update | None, base: Version, client_step: int, fetch: bool) -> None:
        """Starts the sync on a thread; the previous one must have been collected.

        Raises:
          RuntimeError: The previous sync's outcome was not collected (a bug
            of the caller: it would be dropped).
        """
        if self._thread is not None or self._done is not None:
            raise RuntimeError("start() before the previous sync's result() was collected")

        def run():
            try:
                self._done = run_sync(self._client, update, base, client_step, fetch)
            except BaseException as e:  # Raised in the training thread by result().
                self._error = e

        self._thread = threading.Thread(target=run, name="gasgd-sync", daemon=True)
        self._thread.start()

    def result(self, wait: bool = True) -> Outcome | None:
        """The finished sync's outcome, once; None if none, or (``wait=False``) still running.

        Raises:
          Exception: The error of the background sync, other than a lost push.
        """
        if self._thread is not None:
            if not wait and self._thread.is_alive():
                return None
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        done, self._done = self._done, None
        return done

    def close(self) -> None:
        """Waits for the sync in flight, dropping its outcome and error."""
        if self._thread is not None:
            self._thread.join()
        self._thread, self._done, self._error = None, None, None


Transport = DirectTransport | BackgroundTransport


def make_transport(client: Client, overlap: bool) -> Transport:
    """The background transport with ``overlap``, else the direct one."""
    return BackgroundTransport(client) if overlap else DirectTransport(client)
