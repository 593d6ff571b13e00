"""Streaming fragment sync: one replica's side of Streaming DiLoCo.

Streaming DiLoCo (Douillard et al. 2025, arXiv 2501.18512) keeps DiLoCo's
H local steps of the inner optimizer and its outer step on the parameter
delta, and changes three things, all taken here:

1. the model is cut into F fragments, and fragment f syncs at step offset
   t_f = f * H / F of every H-step period, so the bytes of one sync spread
   over the period instead of moving the whole model at once (the peak
   bandwidth falls F-fold);
2. a fragment's sync is overlapped with the next tau local steps: its
   delta is pushed at step t, and the outer-updated values it fetches are
   used from step t + tau on;
3. those values are merged into the replica's, which moved on for tau
   steps meanwhile: theta_f = alpha * theta_f(local) + (1 - alpha) *
   theta_f(fetched) (alpha = 0 takes the fetched values alone);
   and the outer gradients travel in 4 bits (here: ``client.push_codec``).

The fragments are the parameter service's (``gasgd_tf/fragments.py``): a
push and a fetch name only the fragment's tensors, and with
``ps.aggregation='round'`` each fragment has its own rounds. The delta of
fragment f is theta_f as last fetched (its anchor) minus theta_f now.

When a merge happens: at the end of the first step at least tau steps after
the push at which the fetched values have arrived, and at the latest before
that fragment's next push (which waits for them). The paper's workers
all-reduce in lockstep, so its merge is always at t + tau; here a worker can
be out of phase with the others (it joined late, or a round closed at its
deadline without it), and then its fetch of fragment f waits for the
others' next push of f while they wait for its push of another fragment.
Waiting for the merge at exactly t + tau would stall both until the round
deadline, every period; merging when the values arrive lets both go on
(measured: BUILD_NOTES.md, "Streaming fragment sync"). Pushes go out in
order on one thread (a client's push sequence must not be reordered) and
fetches on another, so a fetch waiting for its round never holds a push
back.

TF-free: the replica's weights are read and assigned through ``Variables``.
"""

from __future__ import annotations

import dataclasses
from concurrent import futures

import numpy as np

from gasgd_tf import fragments as fragments_lib
from gasgd_tf.client import PushAck
from gasgd_tf.fragments import Fragment


@dataclasses.dataclass(frozen=True)
class StreamingPlan:
    """How one replica streams its syncs (``config.sync``).

    Attributes:
      fragments: F, the number of fragments (> 1).
      period: H, local steps between two syncs of one fragment (n_push).
      overlap_steps: tau, local steps a fragment's fetch overlaps (< H).
      mix_alpha: The share of the local values kept at a merge, in [0, 1].
    """

    fragments: int
    period: int
    overlap_steps: int = 0
    mix_alpha: float = 0.5

    def __post_init__(self):
        if not 1 < self.fragments <= self.period:
            raise ValueError(
                f"streaming needs 1 < fragments <= period, got {self.fragments} fragments "
                f"for a period of {self.period} steps"
            )
        if not 0 <= self.overlap_steps < self.period:
            raise ValueError(
                f"overlap_steps must be in [0, {self.period}), got {self.overlap_steps}"
            )
        if not 0 <= self.mix_alpha <= 1:
            raise ValueError(f"mix_alpha must be in [0, 1], got {self.mix_alpha}")

    def offset(self, fragment: int) -> int:
        """t_f: the step offset of fragment ``fragment`` within each period."""
        return fragment * self.period // self.fragments

    def due(self, step: int, previous: int) -> list[int]:
        """The fragments whose sync falls due as the step count moves past ``previous``."""
        out = []
        for f in range(self.fragments):
            start = self.offset(f)
            if (
                step > start
                and (step - start) // self.period > max(previous - start, 0) // self.period
            ):
                out.append(f)
        return out


@dataclasses.dataclass
class _InFlight:
    push: futures.Future
    fetch: futures.Future | None
    lands_at: int  # The first step after which its values may be merged.

    def done(self) -> bool:
        return self.push.done() and (self.fetch is None or self.fetch.done())


class _Inline(futures.Executor):
    """Runs each call in the caller's thread at once (``FragmentStream(inline=True)``)."""

    def submit(self, fn, /, *args, **kwargs):
        future = futures.Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except Exception as e:  # noqa: BLE001 (delivered through the future, as a pool does)
            future.set_exception(e)
        return future


@dataclasses.dataclass
class Landed:
    """What one fragment sync did, for the session's counters."""

    ack: PushAck
    fetched_version: object = None  # Of the values fetched and merged; None: no fetch.


class FragmentStream:
    """Pushes, fetches and merges one fragment at a time (see the module docstring).

    Not thread-safe: one replica's training loop calls it. Its pushes run on
    one background thread in the order they were started, its fetches on
    another.

    Args:
      client: A ParameterClient or ShardedClient (fragment pushes and fetches).
      variables: The replica's weights (read, assign, specs).
      plan: The streaming schedule.
      batch_size: Examples per step, for each push's sample count.
      inline: Run each push and fetch in the caller's thread when it is
        started (no overlap): the merges then happen exactly tau steps
        after the push, which is what tests of the schedule want.
    """

    def __init__(
        self, client, variables, plan: StreamingPlan, batch_size: int = 0, inline: bool = False
    ):
        self.client = client
        self.variables = variables
        self.plan = plan
        self.batch_size = batch_size
        self.fragments: tuple[Fragment, ...] = fragments_lib.plan(variables.specs, plan.fragments)
        self._anchor: np.ndarray | None = None  # Each fragment's values as last fetched.
        self._bases: list[object] = [0] * plan.fragments
        self._pushed_step = [0] * plan.fragments
        self._in_flight: dict[int, _InFlight] = {}
        if inline:
            self._pushes: futures.Executor = _Inline()
            self._fetches: futures.Executor = self._pushes
        else:
            self._pushes = futures.ThreadPoolExecutor(1, thread_name_prefix="fragment-push")
            self._fetches = futures.ThreadPoolExecutor(1, thread_name_prefix="fragment-fetch")

    def start(self, flat: np.ndarray, version: object, step: int = 0) -> None:
        """Takes the replica's freshly fetched weights as every fragment's anchor."""
        self._anchor = np.array(flat, np.float32, copy=True)
        self._bases = [version] * self.plan.fragments
        self._pushed_step = [step] * self.plan.fragments

    def after_step(self, step: int, previous: int, last: bool = False) -> list[Landed]:
        """Starts the syncs falling due (not at the last step), then merges those that may land.

        A sync may land once ``overlap_steps`` steps have passed since its
        push and its values have arrived (see the module docstring).
        """
        landed = []
        if not last:
            for f in self.plan.due(step, previous):
                landed.extend(self._start(f, step, fetch=True))
        for f, sync in sorted(self._in_flight.items()):
            if sync.lands_at <= step and sync.done():
                landed.append(self._land(f))
        return landed

    def finish(self, step: int) -> list[Landed]:
        """Lands every sync in flight, then pushes each fragment's steps not yet pushed."""
        landed = [self._land(f) for f in sorted(self._in_flight)]
        for f in range(self.plan.fragments):
            if step > self._pushed_step[f]:
                landed.extend(self._start(f, step, fetch=False))
                landed.append(self._land(f))
        return landed

    def _start(self, f: int, step: int, fetch: bool) -> list[Landed]:
        landed = [self._land(f)] if f in self._in_flight else []  # Never two of one fragment.
        fragment = self.fragments[f]
        delta = fragment.gather(self._anchor) - fragment.gather(self.variables.read())
        samples = (step - self._pushed_step[f]) * self.batch_size
        self._pushed_step[f] = step
        base = self._bases[f]
        push = self._pushes.submit(
            self.client.push, delta, base, step, kind="delta", samples=samples, fragment=fragment
        )
        fetched = self._fetches.submit(self._fetch_after, push, fragment) if fetch else None
        self._in_flight[f] = _InFlight(push, fetched, step + self.plan.overlap_steps)
        return landed

    def _fetch_after(self, push: futures.Future, fragment: Fragment):
        """Fetches ``fragment`` once its push is applied (not at all if the push failed)."""
        push.result()
        return self.client.fetch(fragment=fragment)

    def _land(self, f: int) -> Landed:
        """Waits for fragment ``f``'s sync and merges what it fetched (errors propagate)."""
        sync = self._in_flight.pop(f)
        ack = sync.push.result()
        if sync.fetch is None:
            return Landed(ack)
        fetched = sync.fetch.result()
        version, _, values = fetched
        fragment = self.fragments[f]
        local = self.variables.read()
        alpha = np.float32(self.plan.mix_alpha)
        mixed = alpha * fragment.gather(local) + (np.float32(1) - alpha) * values
        fragment.scatter(mixed, local)
        self.variables.assign(local)
        fragment.scatter(values, self._anchor)
        self._bases[f] = version
        return Landed(ack, version)

    def abandon(self) -> None:
        """Drops the syncs in flight (after a lost push: the caller fetches everything anew)."""
        for sync in self._in_flight.values():
            for future in (sync.push, sync.fetch):
                if future is None:
                    continue
                future.cancel()
                try:
                    future.result()
                except Exception:  # noqa: BLE001 (already reported by whoever landed it)
                    pass
        self._in_flight.clear()

    def close(self) -> None:
        self.abandon()
        self._pushes.shutdown(wait=True)
        self._fetches.shutdown(wait=True)
