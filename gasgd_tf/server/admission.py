"""Admission control: bounded slots for pushes, fetches and Initialize, with retry hints.

Each push (or Initialize) being received holds a buffer the size of the
model, and each fetch being sent holds a snapshot of it, so the servicer
lets only a few of each run at once. A caller that finds every slot taken
waits a little, then is refused with RESOURCE_EXHAUSTED and a retry hint in
its trailing metadata (``wire.RETRY_AFTER_KEY``), which the Python client
honours. grpc only, no numpy: nothing here touches the parameters.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import grpc

from gasgd_tf.wire import RETRY_AFTER_KEY

log = logging.getLogger(__name__)

# A push (or Initialize, or fetch) waits at most this long for a slot, then
# is refused with RESOURCE_EXHAUSTED and a retry hint; it gives up this long
# before its deadline, to answer in time. Read at each call, so tests can
# shorten the wait.
PUSH_SLOT_WAIT_SECS = 5.0
PUSH_SLOT_MARGIN_SECS = 1.0
# The hint's bounds: below 50 ms a retry is mostly a wasted round trip into
# the same queue; above 5 s (one PUSH_SLOT_WAIT_SECS) a client would sit idle
# although slots turn over much faster than that.
RETRY_AFTER_MIN_MS = 50
RETRY_AFTER_MAX_MS = 5000

__all__ = [
    "PUSH_SLOT_MARGIN_SECS",
    "PUSH_SLOT_WAIT_SECS",
    "RETRY_AFTER_KEY",
    "RETRY_AFTER_MAX_MS",
    "RETRY_AFTER_MIN_MS",
    "Gate",
    "take_slot",
]


class Gate:
    """At most ``capacity`` holders at once, and a retry hint for callers turned away.

    The hint estimates when a place frees for a newcomer: the moving average
    of how long a holder keeps its place (receiving a whole stream and
    applying it), times the callers that would still be ahead of it per
    place, ``(waiting + 1) / capacity``, clamped to [RETRY_AFTER_MIN_MS,
    RETRY_AFTER_MAX_MS]. It is a hint: a retry may still find the gate
    full, and is then refused with a fresh one.

    Args:
      capacity: Places.
      initial_hold_secs: The average hold before any was measured.
    """

    _SMOOTHING = 0.2  # Weight of the newest hold in the moving average.

    def __init__(self, capacity: int, initial_hold_secs: float = 0.1):
        self.capacity = capacity
        self._places = threading.BoundedSemaphore(capacity)
        self._lock = threading.Lock()  # Guards the counters below.
        self._waiting = 0
        self._held = 0
        self._hold_secs = initial_hold_secs
        self.refused = 0

    @property
    def waiting(self) -> int:
        """Callers waiting for a place right now (tests synchronise on it)."""
        with self._lock:
            return self._waiting

    @property
    def held(self) -> int:
        """Places taken right now (tests synchronise on it)."""
        with self._lock:
            return self._held

    def acquire(self, timeout: float) -> float | None:
        """Waits up to ``timeout`` seconds; returns when the place was taken, or None."""
        with self._lock:
            self._waiting += 1
        taken = False
        try:
            taken = self._places.acquire(timeout=timeout)
        finally:
            with self._lock:
                self._waiting -= 1
                self._held += 1 if taken else 0
                self.refused += 0 if taken else 1
        return time.monotonic() if taken else None

    def release(self, since: float) -> None:
        """Gives back a place taken at ``since`` (``acquire``'s result)."""
        held = time.monotonic() - since
        with self._lock:
            self._hold_secs += self._SMOOTHING * (held - self._hold_secs)
            self._held -= 1
        self._places.release()

    def retry_after_ms(self) -> int:
        """The hint for a caller turned away now, in milliseconds (see the class)."""
        with self._lock:
            ms = 1000.0 * self._hold_secs * (self._waiting + 1) / self.capacity
        return int(min(max(ms, RETRY_AFTER_MIN_MS), RETRY_AFTER_MAX_MS))


def take_slot(
    context: grpc.ServicerContext,
    gate: Gate,
    what: str,
    busy: str,
    refusals: Callable[[], int] = lambda: 0,
) -> float:
    """Waits for a place in ``gate``, at most PUSH_SLOT_WAIT_SECS and until the deadline.

    Args:
      context: The call's context (its deadline; where a refusal goes).
      gate: The slots.
      what: The RPC, for messages ("Push").
      busy: Why it is busy, for the refusal's details.
      refusals: The server's busy refusals so far, for the log line.

    Returns:
      When the place was taken, for ``gate.release``.

    Raises:
      Exception: ``context.abort``'s, with RESOURCE_EXHAUSTED and the
        ``RETRY_AFTER_KEY`` trailing metadata, when no place freed in time.
        Not UNAVAILABLE: that says "the connection failed", and would be
        retried at once into the same queue.
    """
    left = context.time_remaining()
    wait = PUSH_SLOT_WAIT_SECS if left is None else left - PUSH_SLOT_MARGIN_SECS
    since = gate.acquire(max(min(wait, PUSH_SLOT_WAIT_SECS), 0.0))
    if since is None:
        hint = gate.retry_after_ms()
        log.info("%s refused: server busy (%d refusals so far)", what, refusals())
        context.set_trailing_metadata(((RETRY_AFTER_KEY, str(hint)),))
        context.abort(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"{what}: server busy, {busy}; retry after {hint} ms",
        )
    return since
