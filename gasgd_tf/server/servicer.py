"""The gRPC servicer: a thin adapter from ParameterService messages to ParameterStore."""

from __future__ import annotations

import contextlib
import logging
import threading
import time

import grpc
import numpy as np

from gasgd_tf import wire
from gasgd_tf.proto import parameter_service_pb2 as pb
from gasgd_tf.proto import parameter_service_pb2_grpc as pb_grpc
from gasgd_tf.server.store import (
    AheadOfServerError,
    DivergedError,
    NotInitializedError,
    ParameterStore,
    StalenessStats,
    WaitAbandoned,
)
from gasgd_tf.tensors import (
    PARAMETER_DTYPE,
    WIRE_DTYPES,
    FlatLayout,
    ValidationError,
    byte_view,
    numpy_dtype,
    with_dtype,
)

log = logging.getLogger(__name__)

# A push (or Initialize) waits at most this long for a slot, then is refused
# with RESOURCE_EXHAUSTED and a retry hint; it gives up this long before its
# deadline, to answer in time.
PUSH_SLOT_WAIT_SECS = 5.0
PUSH_SLOT_MARGIN_SECS = 1.0
# Trailing metadata of a busy refusal: milliseconds to wait before retrying,
# as a decimal string. Clients retry RESOURCE_EXHAUSTED only when it is
# present (without it, e.g. a message over gRPC's size limit, a retry fails
# the same way).
RETRY_AFTER_KEY = "retry-after-ms"
# The hint's bounds: below 50 ms a retry is mostly a wasted round trip into
# the same queue; above 5 s (one PUSH_SLOT_WAIT_SECS) a client would sit idle
# although slots turn over much faster than that.
RETRY_AFTER_MIN_MS = 50
RETRY_AFTER_MAX_MS = 5000


class _Gate:
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
        self._hold_secs = initial_hold_secs
        self.refused = 0

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
                self.refused += 0 if taken else 1
        return time.monotonic() if taken else None

    def release(self, since: float) -> None:
        """Gives back a place taken at ``since`` (``acquire``'s result)."""
        held = time.monotonic() - since
        with self._lock:
            self._hold_secs += self._SMOOTHING * (held - self._hold_secs)
        self._places.release()

    def retry_after_ms(self) -> int:
        """The hint for a caller turned away now, in milliseconds (see the class)."""
        with self._lock:
            ms = 1000.0 * self._hold_secs * (self._waiting + 1) / self.capacity
        return int(min(max(ms, RETRY_AFTER_MIN_MS), RETRY_AFTER_MAX_MS))


def add_to_server(servicer: ParameterServicer, server: grpc.Server) -> None:
    """Registers ``servicer`` with the fast stream encoding (``wire.frame_parser``).

    Use this instead of the generated ``add_ParameterServiceServicer_to_server``:
    Initialize and Push requests are parsed into views of the received bytes,
    and Fetch yields ready-serialized messages. The bytes on the wire are the
    same, so every client (the generated stubs included) talks to it.
    """
    proto = {  # method: (request deserializer, response serializer)
        "Register": (pb.RegisterRequest.FromString, pb.RegisterResponse.SerializeToString),
        "Leave": (pb.LeaveRequest.FromString, pb.LeaveResponse.SerializeToString),
        "Status": (pb.StatusRequest.FromString, pb.StatusResponse.SerializeToString),
        "Heartbeat": (pb.HeartbeatRequest.FromString, pb.HeartbeatResponse.SerializeToString),
    }
    handlers = {
        name: grpc.unary_unary_rpc_method_handler(
            getattr(servicer, name), request_deserializer=de, response_serializer=ser
        )
        for name, (de, ser) in proto.items()
    }
    handlers["Initialize"] = grpc.stream_unary_rpc_method_handler(
        servicer.Initialize,
        request_deserializer=wire.frame_parser(pb.InitializeRequest),
        response_serializer=pb.InitializeResponse.SerializeToString,
    )
    handlers["Push"] = grpc.stream_unary_rpc_method_handler(
        servicer.Push,
        request_deserializer=wire.frame_parser(pb.PushRequest),
        response_serializer=pb.PushResponse.SerializeToString,
    )
    handlers["Fetch"] = grpc.unary_stream_rpc_method_handler(
        servicer.Fetch,
        request_deserializer=pb.FetchRequest.FromString,
        response_serializer=None,  # Fetch yields serialized messages.
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(wire.SERVICE_NAME, handlers),)
    )


def _staleness_proto(stats: StalenessStats) -> pb.StalenessSummary:
    # Trailing empty buckets carry nothing: after trimming, the last bucket
    # still counts every push with staleness >= its index, as the proto says.
    hist = stats.histogram.tolist()
    while len(hist) > 1 and hist[-1] == 0:
        hist.pop()
    return pb.StalenessSummary(count=stats.count, mean=stats.mean, max=stats.max, histogram=hist)


class ParameterServicer(pb_grpc.ParameterServiceServicer):
    """Implements ParameterService over a ParameterStore.

    Register it with ``add_to_server``: Fetch yields serialized messages.
    Gradients pushed in bfloat16 or float16 are converted to float32 before
    the store sees them; parameters fetched in those dtypes are converted
    once per version and dtype, and the copy is shared by every fetcher.

    Args:
      store: The parameters.
      fetch_chunk_bytes: Chunk size for Fetch streams.
      max_chunk_bytes: Largest chunk accepted from clients.
      max_concurrent_pushes: How many pushes may be received and applied at
        once, each into a gradient buffer the size of the parameters: this
        bounds the server's memory. A push beyond it waits, before reading
        its chunks (gRPC's flow control then holds its sender), until a
        slot frees; one that cannot get a slot before its deadline (or
        within PUSH_SLOT_WAIT_SECS) is answered RESOURCE_EXHAUSTED with a
        ``retry-after-ms`` hint in its trailing metadata, which clients
        retry after that delay. Initialize streams are received one at a
        time the same way.
    """

    def __init__(
        self,
        store: ParameterStore,
        fetch_chunk_bytes: int = wire.DEFAULT_CHUNK_BYTES,
        max_chunk_bytes: int = wire.MAX_CHUNK_BYTES,
        max_concurrent_pushes: int = 2,
        max_concurrent_fetches: int = 4,
    ):
        self._store = store
        self._push_slots = _Gate(max_concurrent_pushes)
        # Every Fetch streams the snapshot of the version it found, and
        # versions move with every push: without a limit, N fetches in flight
        # could hold N model-sized snapshots (measured: +160 MB with 64
        # clients of a 4 MB model). Bounded-staleness training fetches are
        # left out: their admission already bounds them, and a fetch refused
        # after it was admitted would be admitted again on retry.
        self._fetch_slots = _Gate(max_concurrent_fetches)
        self._max_concurrent_fetches = max_concurrent_fetches
        # One Initialize at a time: each one received allocates a buffer the
        # size of the whole model, and all but the first are dropped anyway.
        self._initialize_slot = _Gate(1)
        # Float32 gradient buffers, reused from push to push (a slot holder
        # takes one, so there are at most max_concurrent_pushes): a fresh one
        # per push left freed model-sized blocks cached in the malloc arena of
        # every RPC thread that ever held a slot (measured: +85 MB with 64
        # clients and a 4 MB model, growing with the RPC threads).
        self._grad_buffers: list[np.ndarray] = []
        self._grad_buffers_lock = threading.Lock()
        self._max_concurrent_pushes = max_concurrent_pushes
        self._fetch_chunk_bytes = fetch_chunk_bytes
        self._max_chunk_bytes = max_chunk_bytes
        self._converted: dict[str, tuple[int, np.ndarray]] = {}  # dtype: (version, params)
        self._convert_lock = threading.Lock()

    def _in_dtype(self, version: int, flat: np.ndarray, dtype: str) -> np.ndarray:
        """The snapshot ``flat`` of ``version`` in ``dtype``, converted once per version."""
        if dtype == PARAMETER_DTYPE:
            return flat
        with self._convert_lock:  # One conversion per version, however many fetch it.
            cached = self._converted.get(dtype)
            if cached is not None and cached[0] == version:
                return cached[1]
            with np.errstate(over="ignore"):  # float16: Inf beyond its range, as documented.
                converted = flat.astype(numpy_dtype(dtype))
            if cached is None or version > cached[0]:  # A slow fetcher's old version: not kept.
                self._converted[dtype] = (version, converted)
            return converted

    @contextlib.contextmanager
    def _errors(self, context: grpc.ServicerContext, what: str, is_push: bool = False):
        """Maps store errors to status codes; ``context.abort`` raises, ending the RPC."""
        try:
            yield
        except ValidationError as e:
            if is_push:
                self._store.note_rejected()
            log.warning("%s rejected: %s", what, e)
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{what}: {e}")
        except (NotInitializedError, DivergedError) as e:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"{what}: {e}")
        except AheadOfServerError as e:
            context.abort(grpc.StatusCode.ABORTED, f"{what}: {e}")
        except WaitAbandoned as e:
            context.abort(grpc.StatusCode.CANCELLED, f"{what}: {e}")
        except MemoryError:
            if is_push:
                self._store.note_rejected()
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"{what}: server out of memory")
        except grpc.RpcError:
            # The client went away while we read its stream: nothing to apply
            # and nobody to answer.
            if is_push:
                self._store.note_rejected()
            context.abort(grpc.StatusCode.CANCELLED, f"{what}: the client cancelled the stream")

    def Register(self, request, context):
        with self._errors(context, "Register"):
            specs = wire.specs_from_proto(request.tensors)
            info = self._store.register(request.client_id, specs or None)
            return pb.RegisterResponse(
                initialized=info.initialized,
                version=info.version,
                tensors=wire.specs_to_proto(info.specs),
                last_sequence=info.last_sequence,
                last_step=info.last_step,
                capabilities=pb.Capabilities(
                    push_dtypes=[wire.dtype_to_proto(d) for d in WIRE_DTYPES],
                    fetch_dtypes=[wire.dtype_to_proto(d) for d in WIRE_DTYPES],
                    max_chunk_bytes=self._max_chunk_bytes,
                    optimizer=self._store.optimizer.name,
                ),
                server_id=self._store.server_id,
            )

    @property
    def busy_refusals(self) -> int:
        """Pushes, fetches and Initialize streams refused so far because every slot was taken."""
        return self._push_slots.refused + self._initialize_slot.refused + self._fetch_slots.refused

    def Initialize(self, request_iterator, context):
        if self._store.initialized:
            # Answer at once instead of receiving a whole model only to drop it.
            return pb.InitializeResponse(accepted=False, version=self._store.version)
        since = self._take_slot(
            context, self._initialize_slot, "Initialize", "another Initialize is being received"
        )
        try:
            if self._store.initialized:
                # The stream we waited for set the parameters: this one loses,
                # and its chunks are never read.
                return pb.InitializeResponse(accepted=False, version=self._store.version)
            with self._errors(context, "Initialize"):
                header, flat = wire.decode_stream(
                    request_iterator,
                    lambda h: self._store.layout_for(
                        wire.specs_from_proto(h.tensors), initialize=True
                    ),
                    self._max_chunk_bytes,
                )
                accepted, version = self._store.initialize(
                    header.client_id, wire.specs_from_proto(header.tensors), flat
                )
                log.info(
                    "Initialize from %r: %s",
                    header.client_id,
                    "accepted" if accepted else "already set",
                )
                return pb.InitializeResponse(accepted=accepted, version=version)
        finally:
            self._initialize_slot.release(since)

    def Fetch(self, request, context):
        since = None
        if request.read_only or self._store.staleness_config.policy != "bounded":
            n = self._max_concurrent_fetches
            since = self._take_slot(
                context,
                self._fetch_slots,
                "Fetch",
                f"{n} fetch{'es' if n != 1 else ''} already being sent "
                f"(ps.max_concurrent_fetches={n})",
            )
        try:
            yield from self._fetch(request, context)
        finally:
            if since is not None:
                self._fetch_slots.release(since)

    def _fetch(self, request, context):
        with self._errors(context, "Fetch"):
            dtype = wire.fetch_dtype_from_proto(request.dtype)
            snap = self._store.snapshot(
                request.client_id,
                read_only=request.read_only,
                time_left=context.time_remaining(),
                is_active=context.is_active,
            )
            flat = self._in_dtype(snap.version, snap.flat, dtype)
        header = pb.FetchHeader(
            server_id=self._store.server_id,
            version=snap.version,
            tensors=wire.specs_to_proto(with_dtype(snap.specs, dtype)),
            total_bytes=flat.nbytes,
        )
        yield from wire.encode_frames(pb.FetchResponse, header, flat, self._fetch_chunk_bytes)

    def _take_slot(self, context, gate: _Gate, what: str, busy: str) -> float:
        """Waits for a place in ``gate``, at most PUSH_SLOT_WAIT_SECS and until the deadline.

        Returns:
          When the place was taken, for ``gate.release``.

        Raises:
          Exception: ``context.abort``'s, with RESOURCE_EXHAUSTED and the
            ``retry-after-ms`` trailing metadata, when no place freed in time.
            Not UNAVAILABLE: that says "the connection failed", and would be
            retried at once into the same queue.
        """
        left = context.time_remaining()
        wait = PUSH_SLOT_WAIT_SECS if left is None else left - PUSH_SLOT_MARGIN_SECS
        since = gate.acquire(max(min(wait, PUSH_SLOT_WAIT_SECS), 0.0))
        if since is None:
            hint = gate.retry_after_ms()
            log.info("%s refused: server busy (%d refusals so far)", what, self.busy_refusals)
            context.set_trailing_metadata(((RETRY_AFTER_KEY, str(hint)),))
            context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{what}: server busy, {busy}; retry after {hint} ms",
            )
        return since

    def _take_push_slot(self, context) -> float:
        """Takes one of the ``max_concurrent_pushes`` slots; returns when, for the release."""
        n = self._max_concurrent_pushes
        return self._take_slot(
            context,
            self._push_slots,
            "Push",
            f"{n} push{'es' if n != 1 else ''} already being received and applied "
            f"(ps.max_concurrent_pushes={n})",
        )

    def Push(self, request_iterator, context):
        slot = []  # When the slot was taken, once held: only a held slot is released.
        buffer = []  # The pooled gradient buffer, once taken (after the slot).

        def layout(header):
            specs = wire.specs_from_proto(header.tensors)
            layout = self._store.layout_for(specs, initialize=False)  # Refuse before waiting.
            slot.append(self._take_push_slot(context))
            return layout

        def into_buffer(layout: FlatLayout) -> list[memoryview] | None:
            if layout.dtype != PARAMETER_DTYPE:
                return None  # Half precision: converted into a new float32 buffer anyway.
            with self._grad_buffers_lock:
                pooled = [b for b in self._grad_buffers if b.size == layout.size]
                if pooled:
                    self._grad_buffers.remove(pooled[0])
            buffer.append(pooled[0] if pooled else np.empty(layout.size, np.float32))
            return [byte_view(buffer[0])]

        try:
            with self._errors(context, "Push", is_push=True):
                verified: list[bool] = []
                header, grad = wire.decode_stream(
                    request_iterator,
                    layout,
                    self._max_chunk_bytes,
                    out=into_buffer,
                    verified=verified,
                )
                # The store keeps no reference to the gradient: the buffer is
                # free again once the push is applied.
                return self._apply_push(header, buffer[0] if grad is None else grad, verified[0])
        finally:
            if buffer:  # Back before the slot, so that buffers never outnumber slots.
                with self._grad_buffers_lock:
                    self._grad_buffers.append(buffer[0])
            if slot:
                self._push_slots.release(slot[0])

    def _apply_push(self, header, grad: np.ndarray, known_finite: bool) -> pb.PushResponse:
        if grad.dtype != np.float32:  # Sent in half precision: apply in float32.
            grad = grad.astype(np.float32)
        result = self._store.push(
            header.client_id,
            header.sequence,
            header.base_version,
            grad,
            header.client_step,
            known_finite=known_finite,  # Checked chunk by chunk, in cache, as it arrived.
            base_server_id=header.base_server_id,
        )
        return pb.PushResponse(
            version=result.version, staleness=result.staleness, duplicate=result.duplicate
        )

    def Leave(self, request, context):
        with self._errors(context, "Leave"):
            return pb.LeaveResponse(version=self._store.leave(request.client_id))

    def Heartbeat(self, request, context):
        with self._errors(context, "Heartbeat"):
            version = self._store.heartbeat(request.client_id)
            return pb.HeartbeatResponse(version=version, server_id=self._store.server_id)

    def Status(self, request, context):
        status = self._store.status()
        return pb.StatusResponse(
            initialized=status.initialized,
            version=status.version,
            updates_applied=status.updates_applied,
            pushes_rejected=status.pushes_rejected,
            duplicate_pushes=status.duplicate_pushes,
            num_parameters=status.num_parameters,
            optimizer=status.optimizer,
            server_id=status.server_id,
            uptime_secs=status.uptime_secs,
            staleness=_staleness_proto(status.staleness),
            clients=[
                pb.ClientStatus(
                    client_id=c.client_id,
                    active=c.active,
                    pushes=c.pushes,
                    fetches=c.fetches,
                    last_sequence=c.last_sequence,
                    last_step=c.last_step,
                    last_seen_unix=c.last_seen,
                    staleness=_staleness_proto(c.staleness),
                    expired=c.expired,
                )
                for c in status.clients
            ],
        )
