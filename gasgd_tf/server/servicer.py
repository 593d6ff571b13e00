"""The gRPC servicer: a thin adapter from ParameterService messages to ParameterStore."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable

import grpc
import numpy as np

from gasgd_tf import codecs, config_base, wire
from gasgd_tf.fragments import Fragment
from gasgd_tf.proto import parameter_service_pb2 as pb
from gasgd_tf.proto import parameter_service_pb2_grpc as pb_grpc
from gasgd_tf.server.admission import Gate, take_slot
from gasgd_tf.server.buffer_pool import BufferPool
from gasgd_tf.server.store import (
    AheadOfServerError,
    ClientLimitError,
    ClientRecord,
    DivergedError,
    NotInitializedError,
    ParameterStore,
    PushKindError,
    StalenessStats,
    WaitAbandoned,
)
from gasgd_tf.tensors import (
    PARAMETER_DTYPE,
    WIRE_DTYPES,
    FlatLayout,
    PayloadLayout,
    ValidationError,
    byte_view,
    numpy_dtype,
    with_dtype,
)

log = logging.getLogger(__name__)
_PS = config_base.defaults().ps  # Slot counts of `ps.*`.

# The most clients one Status reply lists (StatusRequest.max_clients_listed
# may ask for fewer). A ClientStatus is at most about 1.3 KB (a 128-character
# id of 4-byte characters, ten-byte varints, 64 histogram buckets), so 1024
# stay near 1.3 MB, far below gRPC's default 4 MiB message limit of any
# client, however many records the server keeps (ps.max_clients).
STATUS_MAX_CLIENTS = 1024


def add_to_server(servicer: ParameterServicer, server: grpc.Server) -> None:
    """Registers ``servicer`` with the fast stream encoding (``wire.frame_parser``).

    Use this instead of the generated ``add_ParameterServiceServicer_to_server``:
    Initialize and Push requests are parsed into views of the received bytes,
    and Fetch yields ready-serialized messages. The bytes on the wire are the
    same, so every client (the generated stubs included) talks to it.

    Every request deserializer is ``wire.tolerant``: gRPC itself answers
    INTERNAL when a deserializer raises, before any handler runs, so bytes
    that do not parse are handed to the handler as a ``wire.MalformedMessage``
    instead, which it answers INVALID_ARGUMENT (and counts).
    """
    unary = {  # method: (request type, response serializer)
        "Register": (pb.RegisterRequest, pb.RegisterResponse.SerializeToString),
        "Leave": (pb.LeaveRequest, pb.LeaveResponse.SerializeToString),
        "Status": (pb.StatusRequest, pb.StatusResponse.SerializeToString),
        "Heartbeat": (pb.HeartbeatRequest, pb.HeartbeatResponse.SerializeToString),
    }
    handlers = {
        name: grpc.unary_unary_rpc_method_handler(
            _parsed_or_refused(servicer, name, getattr(servicer, name)),
            request_deserializer=wire.tolerant(message.FromString, message.DESCRIPTOR.name),
            response_serializer=ser,
        )
        for name, (message, ser) in unary.items()
    }
    # Stream requests: decode_stream raises MalformedMessageError at a
    # malformed message, which the handler answers like any invalid stream.
    handlers["Initialize"] = grpc.stream_unary_rpc_method_handler(
        servicer.Initialize,
        request_deserializer=wire.tolerant(
            wire.frame_parser(pb.InitializeRequest), "InitializeRequest"
        ),
        response_serializer=pb.InitializeResponse.SerializeToString,
    )
    handlers["Push"] = grpc.stream_unary_rpc_method_handler(
        servicer.Push,
        request_deserializer=wire.tolerant(wire.frame_parser(pb.PushRequest), "PushRequest"),
        response_serializer=pb.PushResponse.SerializeToString,
    )
    handlers["Fetch"] = grpc.unary_stream_rpc_method_handler(
        _parsed_or_refused_stream(servicer, "Fetch", servicer.Fetch),
        request_deserializer=wire.tolerant(pb.FetchRequest.FromString, "FetchRequest"),
        response_serializer=None,  # Fetch yields serialized messages.
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(wire.SERVICE_NAME, handlers),)
    )


def _parsed_or_refused(servicer: ParameterServicer, what: str, behavior: Callable) -> Callable:
    """A unary handler that refuses a ``wire.MalformedMessage`` before ``behavior`` sees it."""

    def handle(request, context):
        if isinstance(request, wire.MalformedMessage):
            servicer.refuse_malformed(context, what, request)
        return behavior(request, context)

    return handle


def _parsed_or_refused_stream(
    servicer: ParameterServicer, what: str, behavior: Callable
) -> Callable:
    """Like ``_parsed_or_refused`` for a response-streaming ``behavior`` (a generator)."""

    def handle(request, context):
        if isinstance(request, wire.MalformedMessage):
            servicer.refuse_malformed(context, what, request)
        yield from behavior(request, context)

    return handle


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
        within admission.PUSH_SLOT_WAIT_SECS) is answered RESOURCE_EXHAUSTED with a
        ``retry-after-ms`` hint in its trailing metadata, which clients
        retry after that delay (gasgd_tf/server/admission.py). Initialize
        streams are received one at a time the same way.
      max_concurrent_fetches: How many non-bounded fetches may be sent at
        once, each holding a snapshot of the parameters; the same waits
        and refusals.
    """

    def __init__(
        self,
        store: ParameterStore,
        fetch_chunk_bytes: int = wire.DEFAULT_CHUNK_BYTES,
        max_chunk_bytes: int = wire.MAX_CHUNK_BYTES,
        max_concurrent_pushes: int = _PS.max_concurrent_pushes,
        max_concurrent_fetches: int = _PS.max_concurrent_fetches,
    ):
        self._store = store
        self._push_slots = Gate(max_concurrent_pushes)
        # Every Fetch streams the snapshot of the version it found, and
        # versions move with every push: without a limit, N fetches in flight
        # could hold N model-sized snapshots (measured: +160 MB with 64
        # clients of a 4 MB model). Bounded-staleness training fetches are
        # left out: their admission already bounds them, and a fetch refused
        # after it was admitted would be admitted again on retry.
        self._fetch_slots = Gate(max_concurrent_fetches)
        self._max_concurrent_fetches = max_concurrent_fetches
        # One Initialize at a time: each one received allocates a buffer the
        # size of the whole model, and all but the first are dropped anyway.
        self._initialize_slot = Gate(1)
        # Float32 gradient buffers, reused from push to push: only a push
        # slot holder takes one, so there are at most max_concurrent_pushes.
        self._grad_buffers = BufferPool()
        self._max_concurrent_pushes = max_concurrent_pushes
        self._fetch_chunk_bytes = fetch_chunk_bytes
        self._max_chunk_bytes = max_chunk_bytes
        self._converted: dict[str, tuple[int, np.ndarray]] = {}  # dtype: (version, params)
        self._convert_lock = threading.Lock()

    @property
    def push_slots(self) -> Gate:
        """The push slots (``max_concurrent_pushes``): who holds and waits, for tests."""
        return self._push_slots

    @property
    def fetch_slots(self) -> Gate:
        """The fetch slots (``max_concurrent_fetches``)."""
        return self._fetch_slots

    @property
    def initialize_slot(self) -> Gate:
        """The one Initialize slot."""
        return self._initialize_slot

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
            if isinstance(e, wire.MalformedMessageError):
                self._store.note_malformed()
            log.warning("%s rejected: %s", what, e)
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{what}: {e}")
        except ClientLimitError as e:
            # No retry hint: records free only as clients expire or leave,
            # so an immediate retry would be refused the same way.
            if is_push:
                self._store.note_rejected()
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"{what}: {e}")
        except (NotInitializedError, DivergedError) as e:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"{what}: {e}")
        except AheadOfServerError as e:
            context.abort(grpc.StatusCode.ABORTED, f"{what}: {e}")
        except PushKindError as e:
            if is_push:
                self._store.note_rejected()
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"{what}: {e}")
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

    def refuse_malformed(
        self, context: grpc.ServicerContext, what: str, mark: wire.MalformedMessage
    ) -> None:
        """Answers a request whose bytes did not parse: INVALID_ARGUMENT, counted.

        Raises:
          Exception: ``context.abort``'s, always.
        """
        self._store.note_malformed()
        log.warning("%s rejected: %s", what, mark.describe())
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{what}: {mark.describe()}")

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
                    push_kinds=[wire.PUSH_KINDS[self._store.push_kind]],
                    aggregation=self._store.aggregation,
                    push_codecs=list(wire.PUSH_CODECS.values()),
                    fragments=True,
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
        # A fetch that may wait (bounded staleness, rounds) takes no slot while
        # it waits: the pushes that end its wait need the server more.
        if request.read_only or not self._store.fetches_wait:
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
            fragment = None
            if request.tensors:
                fragment = self._store.fragment_for(wire.specs_from_proto(request.tensors))
            snap = self._store.snapshot(
                request.client_id,
                read_only=request.read_only,
                time_left=context.time_remaining(),
                is_active=context.is_active,
                fragment=fragment,
            )
            if fragment is None:
                specs, flat = snap.specs, self._in_dtype(snap.version, snap.flat, dtype)
            else:  # Gathered (and converted) per fetch: a fragment is a fraction of the model.
                specs, flat = fragment.specs(snap.specs), fragment.gather(snap.flat)
                flat = flat if dtype == PARAMETER_DTYPE else flat.astype(numpy_dtype(dtype))
        header = pb.FetchHeader(
            server_id=self._store.server_id,
            version=snap.version,
            tensors=wire.specs_to_proto(with_dtype(specs, dtype)),
            total_bytes=flat.nbytes,
        )
        yield from wire.encode_frames(pb.FetchResponse, header, flat, self._fetch_chunk_bytes)

    def _take_slot(self, context, gate: Gate, what: str, busy: str) -> float:
        """``admission.take_slot``, naming this server's refusals in its log line."""
        return take_slot(context, gate, what, busy, lambda: self.busy_refusals)

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
        codec = []  # The header's codec, once read (None: plain values).
        fragment = []  # The fragment the header names (None: every parameter).

        def layout(header):
            specs = wire.specs_from_proto(header.tensors)
            layout, part = self._store.push_layout(specs, header.fragment)  # Refuse before waiting.
            fragment.append(part)
            spec = _codec_spec(header, layout)
            codec.append(spec)
            slot.append(self._take_push_slot(context))
            return layout if spec is None else PayloadLayout(spec.nbytes, f"{spec.codec} payload")

        def into_buffer(layout: FlatLayout) -> list[memoryview] | None:
            if layout.dtype != PARAMETER_DTYPE:
                return None  # Half precision or encoded: converted into a new float32 buffer.
            buffer.append(self._grad_buffers.take(layout.size))
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
                grad = buffer[0] if grad is None else grad
                return self._apply_push(header, grad, verified[0], codec[0], fragment[0])
        finally:
            if buffer:  # Back before the slot, so that buffers never outnumber slots.
                self._grad_buffers.give_back(buffer[0])
            if slot:
                self._push_slots.release(slot[0])

    def _apply_push(
        self,
        header,
        grad: np.ndarray,
        known_finite: bool,
        codec: codecs.CodecSpec | None,
        fragment: Fragment | None,
    ) -> pb.PushResponse:
        if codec is not None:  # Decoded and checked before anything changes.
            grad = codecs.decode(grad, codec, np.empty(codec.size, np.float32))
        elif grad.dtype != np.float32:  # Sent in half precision: apply in float32.
            grad = grad.astype(np.float32)
        result = self._store.push(
            header.client_id,
            header.sequence,
            header.base_version,
            grad,
            header.client_step,
            known_finite=known_finite,  # Checked chunk by chunk, in cache, as it arrived.
            base_server_id=header.base_server_id,
            kind=wire.push_kind_name(header.kind),
            samples=header.samples,
            fragment=fragment,
        )
        return pb.PushResponse(
            version=result.version,
            staleness=result.staleness,
            duplicate=result.duplicate,
            local_steps=result.local_steps,
        )

    def Leave(self, request, context):
        with self._errors(context, "Leave"):
            return pb.LeaveResponse(version=self._store.leave(request.client_id))

    def Heartbeat(self, request, context):
        with self._errors(context, "Heartbeat"):
            version = self._store.heartbeat(request.client_id)
            return pb.HeartbeatResponse(version=version, server_id=self._store.server_id)

    def Status(self, request, context):
        limit = request.max_clients_listed or STATUS_MAX_CLIENTS
        status = self._store.status(
            client_ids=request.client_ids[:STATUS_MAX_CLIENTS],
            max_listed=min(limit, STATUS_MAX_CLIENTS),
        )
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
            clients=[_client_proto(c) for c in status.clients],
            num_clients=status.num_clients,
            active_clients=status.active_clients,
            expired_clients=status.expired_clients,
            clients_not_listed=status.num_clients - len(status.clients),
            max_clients=status.max_clients or 0,
            clients_refused=status.clients_refused,
            malformed_requests=status.malformed_requests,
        )


def _client_proto(c: ClientRecord) -> pb.ClientStatus:
    return pb.ClientStatus(
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


def _codec_spec(header, layout: FlatLayout) -> codecs.CodecSpec | None:
    """The codec a push header names, checked against the server's layout; None: no codec.

    Raises:
      ValidationError: An unknown codec, impossible codec fields, or a codec
        over half-precision tensors (a codec encodes float32 values).
    """
    if not header.codec:
        return None
    name = wire.push_codec_name(header.codec)
    if name not in codecs.CODECS:
        raise ValidationError(f"unknown push codec ({name}); this server decodes {codecs.CODECS}")
    if layout.dtype != PARAMETER_DTYPE:
        raise ValidationError(f"a {name} push must name float32 tensors, not {layout.dtype}")
    spec = codecs.CodecSpec(name, layout.size, header.codec_block_size, header.codec_count)
    spec.check()
    return spec
