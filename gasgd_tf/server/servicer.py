"""The gRPC servicer: a thin adapter from ParameterService messages to ParameterStore."""

from __future__ import annotations

import contextlib
import logging
import threading

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
    ValidationError,
    numpy_dtype,
    with_dtype,
)

log = logging.getLogger(__name__)

# A push waits at most this long for a slot (then UNAVAILABLE, which clients
# retry), and gives up this long before its deadline, to answer in time.
PUSH_SLOT_WAIT_SECS = 5.0
PUSH_SLOT_MARGIN_SECS = 1.0


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
        slot frees; one that cannot get a slot before its deadline is
        answered UNAVAILABLE (after at most PUSH_SLOT_WAIT_SECS), which
        clients retry.
    """

    def __init__(
        self,
        store: ParameterStore,
        fetch_chunk_bytes: int = wire.DEFAULT_CHUNK_BYTES,
        max_chunk_bytes: int = wire.MAX_CHUNK_BYTES,
        max_concurrent_pushes: int = 2,
    ):
        self._store = store
        self._push_slots = threading.BoundedSemaphore(max_concurrent_pushes)
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

    def Initialize(self, request_iterator, context):
        if self._store.initialized:
            # Answer at once instead of receiving a whole model only to drop it.
            return pb.InitializeResponse(accepted=False, version=self._store.version)
        with self._errors(context, "Initialize"):
            header, flat = wire.decode_stream(
                request_iterator,
                lambda h: self._store.layout_for(wire.specs_from_proto(h.tensors), initialize=True),
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

    def Fetch(self, request, context):
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
            version=snap.version,
            tensors=wire.specs_to_proto(with_dtype(snap.specs, dtype)),
            total_bytes=flat.nbytes,
        )
        yield from wire.encode_frames(pb.FetchResponse, header, flat, self._fetch_chunk_bytes)

    def _take_push_slot(self, context) -> None:
        """Waits for one of the ``max_concurrent_pushes`` slots, at most until the deadline."""
        left = context.time_remaining()
        wait = PUSH_SLOT_WAIT_SECS if left is None else left - PUSH_SLOT_MARGIN_SECS
        wait = max(min(wait, PUSH_SLOT_WAIT_SECS), 0.0)
        if not self._push_slots.acquire(timeout=wait):
            context.abort(
                grpc.StatusCode.UNAVAILABLE,
                f"Push: server busy, {self._max_concurrent_pushes} pushes already being "
                "received (ps.max_concurrent_pushes); retry",
            )

    def Push(self, request_iterator, context):
        slot = []  # Filled once a slot is held, so that only a held slot is released.

        def layout(header):
            specs = wire.specs_from_proto(header.tensors)
            layout = self._store.layout_for(specs, initialize=False)  # Refuse before waiting.
            self._take_push_slot(context)
            slot.append(True)
            return layout

        try:
            with self._errors(context, "Push", is_push=True):
                verified: list[bool] = []
                header, grad = wire.decode_stream(
                    request_iterator, layout, self._max_chunk_bytes, verified=verified
                )
                return self._apply_push(header, grad, verified[0])
        finally:
            if slot:
                self._push_slots.release()

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
