"""ShardedClient: one client of K parameter-server shards, with ParameterClient's methods.

The model's parameters are spread over the shards by ``gasgd_tf.sharding``;
this client splits each push and assembles each fetch, talking to every
shard at once on its own thread (one ParameterClient, so one channel, per
shard). Fetched parameters are written by each shard's stream straight into
their places in one full buffer; a push sends each shard its runs of the
full gradient without gathering them first.

Versions: every shard versions its own parameters. A fetch returns the
tuple of shard versions, and a push takes that tuple back as its base, so
each shard measures its own staleness. ``version_number`` turns either form
into one number for logs and TensorBoard (the smallest shard version: the
number of updates every shard has applied).

Atomicity: a push is checked for NaN and Inf here, before any shard sees
it, so a bad gradient is refused whole. A shard that stays unreachable
after retries fails the push after the other shards have applied their
parts, as in DistBelief; its own retry is never applied twice.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent import futures
from typing import TypeVar

import grpc
import numpy as np

from gasgd_tf import addresses, sharding
from gasgd_tf.client.client import (
    ParameterClient,
    PushAck,
    Registration,
    RequestRejectedError,
)
from gasgd_tf.fragments import Fragment
from gasgd_tf.proto import parameter_service_pb2 as pb
from gasgd_tf.tensors import (
    PARAMETER_DTYPE,
    FlatLayout,
    TensorSpec,
    ValidationError,
    numpy_dtype,
)

T = TypeVar("T")
Version = int | tuple[int, ...]


def version_number(version: Version) -> int:
    """One number for a version: itself, or the smallest shard version of a tuple."""
    return version if isinstance(version, int) else min(version)


class ShardedClient:
    """A client of a parameter server sharded over ``len(addresses)`` processes.

    Args:
      addresses: host:port of each shard, in shard order.
      client_id: This client's identity, the same on every shard.
      split_bytes: Tensors larger than this are split over the shards; it
        must equal the value every other client uses (``ps.shard_split_bytes``).
      **client_args: ParameterClient's arguments (deadlines, chunk size,
        transport dtypes), the same for every shard.
    """

    def __init__(
        self,
        addresses: Sequence[str],
        client_id: str,
        split_bytes: int = sharding.DEFAULT_SPLIT_BYTES,
        **client_args,
    ):
        if len(addresses) < 2:
            raise ValueError(f"a sharded client needs 2 or more addresses, got {list(addresses)}")
        self.addresses = list(addresses)
        self.address = ",".join(addresses)
        self.client_id = client_id
        self.split_bytes = split_bytes
        self.clients = [ParameterClient(a, client_id, **client_args) for a in addresses]
        # Two calls may be under way at once (a streaming push and a fetch,
        # which may wait for its round): a thread per shard for each.
        self._pool = futures.ThreadPoolExecutor(2 * len(addresses), thread_name_prefix="shard")
        self.plan: sharding.ShardPlan | None = None
        self._layout: FlatLayout | None = None
        # Each shard's last applied step of this client at registration: a
        # client resuming at the smallest does not push again to a shard
        # that has the steps after it already.
        self._registered_steps: list[int] = [0] * len(addresses)

    # -- Plumbing ------------------------------------------------------------

    def _each(self, call: Callable[[int, ParameterClient], T]) -> list[T]:
        """Runs ``call(k, client_k)`` for every shard at once; raises the first error.

        Waits for every shard before raising, so that no call is left running.
        """
        pending = [self._pool.submit(call, k, c) for k, c in enumerate(self.clients)]
        futures.wait(pending)
        return [f.result() for f in pending]

    def _use_specs(self, specs: Sequence[TensorSpec]) -> None:
        specs = tuple(specs)
        if self.plan is None or self.plan.specs != specs:
            self.plan = sharding.make_plan(specs, len(self.clients), self.split_bytes)
            self._layout = FlatLayout(specs)

    def _require_plan(self, what: str) -> sharding.ShardPlan:
        if self.plan is None:
            raise RuntimeError(
                f"{what} before register(specs) or initialize: a sharded client needs the "
                "model's tensors to know where they live"
            )
        return self.plan

    def _views(self, flat: np.ndarray, shard: int) -> list[np.ndarray]:
        """The runs of ``flat`` that shard ``shard`` holds, as views (no copies)."""
        return [flat[b:e] for b, e in self._require_plan("a transfer").runs(shard)]

    # -- Calls ---------------------------------------------------------------

    @property
    def bytes_sent(self) -> int:
        """Payload bytes sent to every shard together (``ParameterClient.bytes_sent``)."""
        return sum(c.bytes_sent for c in self.clients)

    @property
    def bytes_received(self) -> int:
        """Payload bytes received from every shard together (``ParameterClient.bytes_received``)."""
        return sum(c.bytes_received for c in self.clients)

    def wait_for_server(self, timeout_secs: float) -> None:
        self._each(lambda k, c: c.wait_for_server(timeout_secs))

    def register(self, specs: Sequence[TensorSpec] = ()) -> Registration:
        """Registers with every shard, each checking its part of ``specs``.

        Returns:
          initialized: whether every shard is; version: the tuple of shard
          versions; specs: ``specs`` (the full signature).
        """
        if specs:
            self._use_specs(specs)
            plan = self.plan
            regs = self._each(lambda k, c: c.register(plan.shard_specs(k)))
        else:
            regs = self._each(lambda k, c: c.register())
        self._registered_steps = [r.last_step for r in regs]
        return Registration(
            initialized=all(r.initialized for r in regs),
            version=tuple(r.version for r in regs),
            # The full signature; without one, no shard's pieces say it.
            specs=self.plan.specs if self.plan else (),
            last_sequence=min(r.last_sequence for r in regs),
            server_id=",".join(r.server_id for r in regs),
            max_chunk_bytes=min(r.max_chunk_bytes for r in regs),
            # Resume where every shard has the pushes (a restarted shard may be behind).
            last_step=min(r.last_step for r in regs),
        )

    def initialize(self, specs: Sequence[TensorSpec], flat: np.ndarray) -> tuple[bool, Version]:
        """Offers initial parameters to every shard; (all accepted, shard versions).

        Each shard keeps the first complete offer it receives, so offers
        from different clients must be identical (workers build the model
        from the same seed, or warm start from the same checkpoint).
        """
        self._use_specs(specs)
        plan = self.plan
        flat = np.asarray(flat, np.float32)
        results = self._each(
            lambda k, c: c.initialize(plan.shard_specs(k), np.concatenate(self._views(flat, k)))
        )
        return all(a for a, _ in results), tuple(v for _, v in results)

    def _fragment_parts(self, fragment: Fragment) -> list[tuple[Fragment, tuple]]:
        """For each shard: (its part of ``fragment`` in its own buffer, where those
        values lie in the fragment's compact values)."""
        plan = self._require_plan("a fragment transfer")
        return [fragment.within(plan.runs(k)) for k in range(plan.num_shards)]

    def fetch(
        self, read_only: bool = False, fragment: Fragment | None = None
    ) -> tuple[Version, tuple[TensorSpec, ...], np.ndarray]:
        """(shard versions, full specs, full flat float32 parameters), each shard consistent.

        With ``fragment`` (of the full buffer): only its values, compact, and
        the specs naming it; each shard holding part of it sends that part,
        and a shard holding none of it reports version 0.
        """
        if fragment is not None:
            return self._fetch_fragment(read_only, fragment)
        plan = self._require_plan("fetch")
        flat = np.empty(plan.size, np.float32)
        results = self._each(lambda k, c: c.fetch(read_only, out=self._views(flat, k)))
        for k, (_, specs, _) in enumerate(results):
            if specs != plan.shard_specs(k):
                raise RequestRejectedError(
                    f"Fetch from shard {k} ({self.addresses[k]}): it holds other tensors than "
                    "this client's plan (another num_shards or shard_split_bytes?)",
                    grpc.StatusCode.FAILED_PRECONDITION,
                )
        return tuple(v for v, _, _ in results), plan.specs, flat

    def _fetch_fragment(
        self, read_only: bool, fragment: Fragment
    ) -> tuple[Version, tuple[TensorSpec, ...], np.ndarray]:
        parts = self._fragment_parts(fragment)
        flat = np.empty(fragment.size, np.float32)

        def fetch_one(k: int, c: ParameterClient) -> int:
            local, compact = parts[k]
            if not local.runs:
                return 0
            return c.fetch(read_only, out=[flat[a:b] for a, b in compact], fragment=local)[0]

        versions = self._each(fetch_one)
        return tuple(versions), fragment.specs(self.plan.specs), flat

    def push(
        self,
        grad: np.ndarray,
        base_version: Version,
        client_step: int = 0,
        *,
        kind: str = "gradient",
        samples: int = 0,
        fragment: Fragment | None = None,
    ) -> PushAck:
        """Pushes the full gradient: each shard its part, computed from its own base version.

        ``kind`` and ``samples`` as for ``ParameterClient.push`` (every shard
        gets the same). With ``fragment`` (of the full buffer), ``grad`` is
        its compact values and only the shards holding part of it are sent
        their part.

        Returns:
          version: the smallest shard version after the push; staleness: the
          largest shard staleness; duplicate: whether any shard had it.

        Raises:
          RequestRejectedError: NaN or Inf values (INVALID_ARGUMENT, before
            any shard is sent anything), or a shard refused its part.
        """
        plan = self._require_plan("push")
        grad = np.asarray(grad, np.float32)
        dtype = self.clients[0].push_dtype
        if dtype != PARAMETER_DTYPE:
            # Converted once, here, so that the check below sees what the
            # shards will (float16 turns values above 65504 into Inf).
            with np.errstate(over="ignore"):
                grad = grad.astype(numpy_dtype(dtype))
        try:
            layout = self._layout if fragment is None else FlatLayout(fragment.specs(plan.specs))
            layout.check_finite(grad)
        except ValidationError as e:
            hint = " (beyond float16's range: use bfloat16)" if dtype == "float16" else ""
            raise RequestRejectedError(
                f"Push to {self.address}: {e}{hint}", grpc.StatusCode.INVALID_ARGUMENT
            ) from None
        bases = self._bases(base_version, plan.num_shards)

        parts = self._fragment_parts(fragment) if fragment is not None else None

        def push_one(k: int, c: ParameterClient) -> PushAck | None:
            if parts is not None and not parts[k][0].runs:
                return None  # This shard holds none of the fragment.
            if client_step and client_step <= self._registered_steps[k]:
                # Resumed after a restart: this shard applied this step before.
                return PushAck(version=bases[k], staleness=0, duplicate=True)
            if parts is None:
                views, local = self._views(grad, k), None
            else:
                views, local = [grad[a:b] for a, b in parts[k][1]], parts[k][0]
            return c.push(views, bases[k], client_step, kind=kind, samples=samples, fragment=local)

        acks = [a for a in self._each(push_one) if a is not None]
        return PushAck(
            version=min(a.version for a in acks),
            staleness=max(a.staleness for a in acks),
            duplicate=any(a.duplicate for a in acks),
            # Every shard measures the same pushes; the most cautious plan.
            local_steps=min((a.local_steps for a in acks if a.local_steps), default=0),
        )

    @staticmethod
    def _bases(base_version: Version, num_shards: int) -> tuple[int, ...]:
        if isinstance(base_version, int):  # One version for all (e.g. 0 at the start).
            return (base_version,) * num_shards
        if len(base_version) != num_shards:
            raise ValueError(f"{len(base_version)} base versions for {num_shards} shards")
        return tuple(base_version)

    def heartbeat(self) -> int:
        """Heartbeats every shard; returns the smallest shard version."""
        return min(self._each(lambda k, c: c.heartbeat()))

    def start_heartbeats(self, interval_secs: float) -> None:
        """Every shard's client sends heartbeats on its own thread (see ParameterClient)."""
        for c in self.clients:
            c.start_heartbeats(interval_secs)

    def leave(self) -> int:
        """Leaves every shard; returns the smallest shard version."""
        return min(self._each(lambda k, c: c.leave()))

    def status_all(self, client_ids: Sequence[str] = ()) -> list[pb.StatusResponse]:
        """Every shard's StatusResponse, in shard order."""
        return self._each(lambda k, c: c.status(client_ids))

    def status(self, client_ids: Sequence[str] = ()) -> pb.StatusResponse:
        """One StatusResponse for the sharded server.

        version and updates_applied: the smallest over the shards (what every
        shard has applied); rejections and duplicates: summed; parameters:
        summed (pieces partition the model); staleness: shard 0's (every
        push reaches every shard); a client is active while it is active on
        every shard, and its last step is the smallest reported. Counts of
        refused and malformed calls are summed; of client records, shard 0's
        (every client calls every shard).
        """
        shards = self.status_all(client_ids)
        first = shards[0]
        merged = pb.StatusResponse()
        merged.CopyFrom(first)
        merged.initialized = all(s.initialized for s in shards)
        merged.version = min(s.version for s in shards)
        merged.updates_applied = min(s.updates_applied for s in shards)
        merged.pushes_rejected = sum(s.pushes_rejected for s in shards)
        merged.duplicate_pushes = sum(s.duplicate_pushes for s in shards)
        merged.clients_refused = sum(s.clients_refused for s in shards)
        merged.malformed_requests = sum(s.malformed_requests for s in shards)
        merged.num_parameters = sum(s.num_parameters for s in shards)
        merged.server_id = ",".join(s.server_id for s in shards)
        merged.uptime_secs = min(s.uptime_secs for s in shards)
        others = [{c.client_id: c for c in s.clients} for s in shards[1:]]
        for client in merged.clients:
            for table in others:
                other = table.get(client.client_id)
                client.active = client.active and (other is None or other.active)
                client.expired = client.expired or (other is not None and other.expired)
                if other is not None:
                    client.last_step = min(client.last_step, other.last_step)
        known = {c.client_id for c in merged.clients}
        for table in others:  # Clients that never reached shard 0 (a failed call).
            for client_id, client in table.items():
                if client_id not in known:
                    merged.clients.append(client)
                    known.add(client_id)
        return merged

    def close(self) -> None:
        for c in self.clients:
            c.close()
        self._pool.shutdown(wait=True)

    def __enter__(self) -> ShardedClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def make_client(
    address: str | Sequence[str],
    client_id: str,
    split_bytes: int = sharding.DEFAULT_SPLIT_BYTES,
    **client_args,
) -> ParameterClient | ShardedClient:
    """A client of one server, or of a sharded one when ``address`` lists several.

    Args:
      address: host:port, several separated by commas, or a list of them.
      client_id: This client's identity.
      split_bytes: See ShardedClient.
      **client_args: ParameterClient's arguments.

    Raises:
      ValueError: An address is not host:port (``addresses.AddressError``, named).
    """
    text = address if isinstance(address, str) else ",".join(address)
    listed = [str(a) for a in addresses.parse_list(text, where="server address")]
    if len(listed) == 1:
        return ParameterClient(listed[0], client_id, **client_args)
    return ShardedClient(listed, client_id, split_bytes=split_bytes, **client_args)
