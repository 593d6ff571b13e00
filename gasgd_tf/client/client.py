"""ParameterClient: deadlines, retries and chunked streams for the parameter service.

Numpy and grpc only, so evaluators, launchers and tools use it without
TensorFlow. Every call has a deadline. Transport failures (UNAVAILABLE,
DEADLINE_EXCEEDED) are retried with exponential backoff and jitter for at
most ``retry_secs``; then the call raises ``ServerUnavailableError`` naming
the address. A busy server (every push slot taken) answers
RESOURCE_EXHAUSTED with a ``retry-after-ms`` hint in the trailing metadata:
such a call is retried after about that delay, within the same
``retry_secs``. RESOURCE_EXHAUSTED without the hint (a message over gRPC's
size limit, a server out of memory) is not retried. Retrying a push is
safe: it keeps its sequence number, and the server applies each
(client_id, sequence) at most once.

Bytes on the wire: ``bytes_sent`` and ``bytes_received`` count the
serialized messages of the payload streams only (Initialize and Push
requests sent, Fetch responses received), every attempt included (a
retried push is sent twice); the small unary calls (Register, Leave,
Status, heartbeats) and gRPC's own framing are not counted.
"""

from __future__ import annotations

import dataclasses
import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

import grpc
import numpy as np

from gasgd_tf import codecs, config_base, wire
from gasgd_tf.fragments import Fragment
from gasgd_tf.proto import parameter_service_pb2 as pb
from gasgd_tf.proto import parameter_service_pb2_grpc as pb_grpc
from gasgd_tf.security import Credentials
from gasgd_tf.tensors import (
    PARAMETER_DTYPE,
    WIRE_DTYPES,
    FlatLayout,
    TensorSpec,
    ValidationError,
    byte_view,
    numpy_dtype,
    with_dtype,
)

# One flat float32 buffer, or the pieces that laid end to end make one (a
# shard's runs inside the full buffer of a sharded client).
Buffer = np.ndarray | Sequence[np.ndarray]

T = TypeVar("T")
_DEFAULT = config_base.defaults().client  # Deadlines, chunk size and dtypes of `client.*`.

RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
# Trailing metadata of a busy server's RESOURCE_EXHAUSTED: milliseconds to
# wait before retrying (gasgd_tf/server/admission.py sets it; one definition).
RETRY_AFTER_KEY = wire.RETRY_AFTER_KEY
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", wire.GRPC_MESSAGE_LIMIT),
    ("grpc.max_send_message_length", wire.GRPC_MESSAGE_LIMIT),
    # Reconnect quickly after a server restart instead of gRPC's default
    # backoff of up to two minutes; our own retry loop bounds the total.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2000),
]


class ServerUnavailableError(ConnectionError):
    """The parameter server did not answer within the deadline and retries."""


class RequestRejectedError(RuntimeError):
    """The server refused a request (for example INVALID_ARGUMENT); retrying will not help."""

    def __init__(self, message: str, code: grpc.StatusCode):
        super().__init__(message)
        self.code = code


class ServerRestartedError(RequestRejectedError):
    """A push computed from a version the server no longer has (ABORTED).

    The server was restarted from a checkpoint and is back at an earlier
    version. Fetch the current parameters and go on from them; the refused
    gradient is lost (one of the updates since the checkpoint).
    """


@dataclasses.dataclass(frozen=True)
class Registration:
    initialized: bool
    version: int
    specs: tuple[TensorSpec, ...]
    last_sequence: int
    server_id: str
    max_chunk_bytes: int
    # client_step of this client id's last applied push: where a restarted
    # client resumes (0 for a new one).
    last_step: int = 0


@dataclasses.dataclass(frozen=True)
class PushAck:
    """A push's answer (``PushResponse``); ``local_steps``: adaptive H, 0 if none."""

    version: int
    staleness: int
    duplicate: bool
    local_steps: int = 0


class ParameterClient:
    """A client of one parameter server.

    Args:
      address: host:port of the server.
      client_id: This client's identity, for example "worker_0".
      timeout_secs: Deadline of each attempt of each call.
      retry_secs: How long transport failures are retried before giving up.
      chunk_bytes: Chunk size for Push and Initialize streams.
      push_dtype: The dtype gradients travel in: float32, or bfloat16 /
        float16 for half the bytes (the server applies them in float32).
      fetch_dtype: The dtype parameters travel in (the same choices); the
        client always returns float32.
      credentials: A bearer token and/or TLS channel credentials, with the
        name to check in the server's certificate (``gasgd_tf.security``);
        None: plaintext, no token.
      push_codec: "none", "int8", "int4" or "topk" (``gasgd_tf.codecs``):
        pushes travel encoded, and what the encoding loses is added to the
        next push (error feedback: this client keeps the residual).
      codec_block_size: int8 / int4: values per scale.
      topk_fraction: topk: the share of values each push sends.

    Attributes:
      bytes_sent: Serialized bytes of the Initialize and Push streams sent
        so far (every attempt).
      bytes_received: Serialized bytes of the Fetch streams received so far.
    """

    def __init__(
        self,
        address: str,
        client_id: str,
        timeout_secs: float = _DEFAULT.timeout_secs,
        retry_secs: float = _DEFAULT.retry_secs,
        chunk_bytes: int = _DEFAULT.chunk_bytes,
        push_dtype: str = _DEFAULT.push_dtype,
        fetch_dtype: str = _DEFAULT.fetch_dtype,
        credentials: Credentials | None = None,
        push_codec: str = _DEFAULT.push_codec,
        codec_block_size: int = _DEFAULT.codec_block_size,
        topk_fraction: float = _DEFAULT.topk_fraction,
    ):
        for what, dtype in (("push_dtype", push_dtype), ("fetch_dtype", fetch_dtype)):
            if dtype not in WIRE_DTYPES:
                raise ValueError(f"{what} must be one of {WIRE_DTYPES}, got {dtype!r}")
        if push_codec not in codecs.CODECS:
            raise ValueError(f"push_codec must be one of {codecs.CODECS}, got {push_codec!r}")
        if push_codec != "none" and push_dtype != PARAMETER_DTYPE:
            raise ValueError(f"push_codec={push_codec!r} needs push_dtype='float32'")
        self.push_codec = push_codec
        self._codec_args = (codec_block_size, topk_fraction)
        # The sender's error feedback, made at the first encoded push (the
        # size is known then); one more per fragment pushed.
        self._feedback: codecs.ErrorFeedback | None = None
        self._fragment_feedback: dict[Fragment, codecs.ErrorFeedback] = {}
        self.address = address
        self.client_id = client_id
        self.timeout_secs = timeout_secs
        self.retry_secs = retry_secs
        self.chunk_bytes = min(chunk_bytes, wire.MAX_CHUNK_BYTES)
        self.push_dtype = push_dtype
        self.fetch_dtype = fetch_dtype
        credentials = credentials or Credentials()
        self._metadata = credentials.metadata()  # The token goes with every call.
        if credentials.tls is not None:
            options = list(CHANNEL_OPTIONS)
            if credentials.server_name:
                # Check the certificate for this name, not the address's host:
                # certificates often name a DNS name the client does not dial.
                options.append(("grpc.ssl_target_name_override", credentials.server_name))
            self._channel = grpc.secure_channel(address, credentials.tls, options=options)
        else:
            self._channel = grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
        self._stub = pb_grpc.ParameterServiceStub(self._channel)
        # The streams go through serializer-free methods: chunks are framed
        # and parsed by wire.encode_frames / wire.frame_parser (one copy each).
        self.bytes_sent = 0
        self.bytes_received = 0
        self._bytes_lock = threading.Lock()  # Shared with a background push or fetch.
        method = f"/{wire.SERVICE_NAME}/"
        self._initialize = self._channel.stream_unary(
            method + "Initialize", None, pb.InitializeResponse.FromString
        )
        self._push = self._channel.stream_unary(method + "Push", None, pb.PushResponse.FromString)
        self._fetch = self._channel.unary_stream(
            method + "Fetch",
            pb.FetchRequest.SerializeToString,
            self._counting_parser(wire.frame_parser(pb.FetchResponse)),
        )
        self._sequence = 0
        self._specs: tuple[TensorSpec, ...] = ()
        # The server start of the last fetch: pushes name it, so that a server
        # restarted from a checkpoint can tell its own versions from lost ones.
        self._fetched_from = ""
        self._heartbeats: threading.Thread | None = None
        self._closed = threading.Event()

    # -- Plumbing ------------------------------------------------------------

    def _count(self, sent: int = 0, received: int = 0) -> None:
        with self._bytes_lock:
            self.bytes_sent += sent
            self.bytes_received += received

    def _counting(self, frames: Iterator[bytes]) -> Iterator[bytes]:
        """``frames`` as they are, each one's size added to ``bytes_sent`` as it is sent."""
        for frame in frames:
            self._count(sent=len(frame))
            yield frame

    def _counting_parser(self, parse: Callable[[bytes], T]) -> Callable[[bytes], T]:
        """A deserializer that adds each received message's size to ``bytes_received``."""

        def counted(data: bytes) -> T:
            self._count(received=len(data))
            return parse(data)

        return counted

    def _call(self, what: str, attempt: Callable[[float], T]) -> T:
        """Runs ``attempt(timeout)``, retrying transient failures within ``retry_secs``.

        Transport failures are retried with exponential backoff and jitter;
        a busy refusal (RESOURCE_EXHAUSTED with ``retry-after-ms``) after
        the server's hint, times a uniform 0.5-1.5 so that the clients it
        turned away together do not all come back at once. The retry
        window starts at the first failure, so an attempt that took long
        before failing (a push that waited for a busy server) is still
        retried.

        Raises:
          RequestRejectedError: Any other status (RESOURCE_EXHAUSTED
            without a hint included); retrying would not help.
          ServerUnavailableError: The window ran out: the server stayed
            unreachable, or stayed busy.
        """
        give_up = None
        backoff = 0.05
        while True:
            try:
                return attempt(self.timeout_secs)
            except grpc.RpcError as e:
                code = e.code()
                hint = None  # Seconds a busy server asked us to wait.
                if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    trailing = getattr(e, "trailing_metadata", lambda: ())
                    for key, value in trailing() or ():
                        # Only a plain decimal counts: anything else is not a
                        # hint we understand, and the call is not retried.
                        if key == RETRY_AFTER_KEY and isinstance(value, str) and value.isdecimal():
                            hint = int(value) / 1000.0
                if code not in RETRYABLE and hint is None:
                    raise RequestRejectedError(
                        f"{what} to {self.address} refused: {code.name}: {e.details()}", code
                    ) from None
                if give_up is None:
                    give_up = time.monotonic() + self.retry_secs
                if hint is not None:
                    delay = hint * random.uniform(0.5, 1.5)
                    if time.monotonic() + delay > give_up:
                        raise ServerUnavailableError(
                            f"parameter server at {self.address} stayed busy: {what} was "
                            f"refused with {code.name} ({e.details()}) and retries gave up "
                            f"after {self.retry_secs:.0f}s"
                        ) from None
                    time.sleep(delay)
                    continue
                if time.monotonic() + backoff > give_up:
                    raise ServerUnavailableError(
                        f"parameter server at {self.address} unreachable: {what} failed with "
                        f"{code.name} ({e.details()}) and retries gave up after "
                        f"{self.retry_secs:.0f}s"
                    ) from None
                time.sleep(backoff * random.uniform(0.5, 1.0))
                backoff = min(backoff * 2, 2.0)

    def wait_for_server(self, timeout_secs: float) -> None:
        """Blocks until the server's port accepts connections.

        Raises:
          ServerUnavailableError: Not within ``timeout_secs``.
        """
        try:
            grpc.channel_ready_future(self._channel).result(timeout=timeout_secs)
        except grpc.FutureTimeoutError:
            raise ServerUnavailableError(
                f"parameter server at {self.address} not reachable within {timeout_secs:.0f}s"
            ) from None

    # -- Calls ---------------------------------------------------------------

    def register(self, specs: Sequence[TensorSpec] = ()) -> Registration:
        """Announces this client; with ``specs``, the server checks them against its own.

        The push sequence continues after the server's last applied one for
        this client id, so a restarted client is not mistaken for a retry.
        """
        request = pb.RegisterRequest(client_id=self.client_id, tensors=wire.specs_to_proto(specs))
        response = self._call(
            "Register", lambda t: self._stub.Register(request, timeout=t, metadata=self._metadata)
        )
        self._sequence = max(self._sequence, response.last_sequence)
        reg = Registration(
            initialized=response.initialized,
            version=response.version,
            specs=wire.specs_from_proto(response.tensors),
            last_sequence=response.last_sequence,
            server_id=response.server_id,
            max_chunk_bytes=response.capabilities.max_chunk_bytes,
            last_step=response.last_step,
        )
        if reg.max_chunk_bytes:
            self.chunk_bytes = min(self.chunk_bytes, reg.max_chunk_bytes)
        if reg.specs:
            self._specs = reg.specs
        return reg

    def initialize(self, specs: Sequence[TensorSpec], flat: np.ndarray) -> tuple[bool, int]:
        """Offers initial parameters; returns (accepted, version). First complete offer wins."""
        header = pb.InitializeHeader(client_id=self.client_id, tensors=wire.specs_to_proto(specs))

        def attempt(timeout):
            stream = wire.encode_frames(
                pb.InitializeRequest, header, np.asarray(flat, np.float32), self.chunk_bytes
            )
            return self._initialize(
                self._counting(stream), timeout=timeout, metadata=self._metadata
            )

        response = self._call("Initialize", attempt)
        self._specs = tuple(specs)
        return response.accepted, response.version

    def fetch(
        self,
        read_only: bool = False,
        out: Sequence[np.ndarray] | None = None,
        fragment: Fragment | None = None,
    ) -> tuple[int, tuple[TensorSpec, ...], np.ndarray | None]:
        """Returns (version, specs, flat float32 parameters) of one consistent snapshot.

        Args:
          read_only: This client will not push gradients computed from the
            result (an evaluator): a bounded-staleness server neither delays
            the fetch nor waits for a push after it.
          out: Float32 arrays that laid end to end receive the parameters
            (a sharded client's places in its full buffer); then the
            returned buffer is None.
          fragment: Fetch only this fragment of the parameters (their
            values compact, the specs naming it; ``gasgd_tf.fragments``).
            Needs the signature from an earlier register, initialize or
            fetch.
        """
        wanted = self._fragment_specs(fragment) if fragment is not None else None
        request = pb.FetchRequest(
            client_id=self.client_id,
            read_only=read_only,
            dtype=wire.dtype_to_proto(self.fetch_dtype),
            tensors=wire.specs_to_proto(wanted) if wanted else (),
        )

        def into_out(layout: FlatLayout) -> list[memoryview] | None:
            """Float32 replies go straight into ``out``; others are converted after."""
            size = sum(a.size for a in out)
            if layout.size != size:
                raise ValidationError(f"reply has {layout.size} values, expected {size}")
            return [byte_view(a) for a in out] if layout.dtype == PARAMETER_DTYPE else None

        def attempt(timeout):
            stream = self._fetch(request, timeout=timeout, metadata=self._metadata)
            try:
                header, flat = wire.decode_stream(
                    stream, _fetch_layout, out=into_out if out is not None else None
                )
            except ValidationError as e:
                raise RequestRejectedError(
                    f"Fetch from {self.address}: malformed reply: {e}", grpc.StatusCode.INTERNAL
                ) from None
            self._fetched_from = header.server_id
            return header.version, wire.specs_from_proto(header.tensors), flat

        version, specs, flat = self._call("Fetch", attempt)
        specs = with_dtype(specs, PARAMETER_DTYPE)
        if wanted is not None and specs != wanted:
            raise RequestRejectedError(
                f"Fetch from {self.address}: the reply names other tensors than the fragment "
                "asked for",
                grpc.StatusCode.INTERNAL,
            )
        if flat is not None and out is not None:  # Arrived in half precision: convert.
            start = 0
            for part in out:
                part[...] = flat[start : start + part.size]
                start += part.size
            flat = None
        elif flat is not None and flat.dtype != np.float32:
            flat = flat.astype(np.float32)
        if fragment is None:
            self._specs = specs
        return version, specs, flat

    def _fragment_specs(self, fragment: Fragment) -> tuple[TensorSpec, ...]:
        """The float32 specs that name ``fragment`` of this client's signature."""
        if not self._specs:
            raise RuntimeError("a fragment before register, initialize or fetch: no signature")
        return fragment.specs(self._specs)

    def push(
        self,
        grad: Buffer,
        base_version: int,
        client_step: int = 0,
        *,
        kind: str = "gradient",
        samples: int = 0,
        fragment: Fragment | None = None,
    ) -> PushAck:
        """Pushes a flat float32 gradient (or parameter delta) computed from ``base_version``.

        Uses the signature from the last register/initialize/fetch. A retried
        attempt reuses the sequence number, so it is applied at most once.

        Args:
          grad: The gradient, flat in the server's layout, or pieces that
            laid end to end make it (sent without gathering them); float32,
            or already in ``push_dtype``.
          base_version: The version of the parameters it was computed from.
          client_step: This client's step count, for the server's status.
          kind: "gradient" (the sum of raw gradients) or "delta"
            (theta_fetched - theta_local); the server applies one kind.
          samples: The training examples behind it (0: unknown).
          fragment: ``grad`` holds only this fragment's values (compact); the
            server updates only them. Encoded pushes keep one error
            feedback residual per fragment.
        """
        if not self._specs:
            raise RuntimeError("push before register, initialize or fetch: no signature known")
        parts = [grad] if isinstance(grad, np.ndarray) else list(grad)
        wire_dtype = numpy_dtype(self.push_dtype)
        codec_fields = {}
        if self.push_codec != "none":  # Encoded once: a retry resends the same bytes.
            payload, codec_fields = self._encode(parts, fragment)
        elif all(p.dtype == wire_dtype for p in parts):  # Already in the wire dtype.
            payload = [byte_view(np.ascontiguousarray(p)) for p in parts]
        else:  # One conversion; the result is what travels, so retries reuse it.
            half = np.empty(sum(p.size for p in parts), numpy_dtype(self.push_dtype))
            start = 0
            with np.errstate(over="ignore"):  # float16 overflow: Inf, which the server names.
                for p in parts:
                    half[start : start + p.size] = p.ravel()
                    start += p.size
            payload = [byte_view(half)]
        self._sequence += 1
        header = pb.PushHeader(
            client_id=self.client_id,
            sequence=self._sequence,
            base_version=base_version,
            tensors=wire.specs_to_proto(
                with_dtype(
                    self._fragment_specs(fragment) if fragment else self._specs, self.push_dtype
                )
            ),
            client_step=client_step,
            base_server_id=self._fetched_from,
            kind=wire.PUSH_KINDS[kind],
            samples=samples,
            fragment=fragment is not None,
            **codec_fields,
        )

        attempts = 0

        def attempt(timeout):
            nonlocal attempts
            attempts += 1
            stream = wire.encode_frames(pb.PushRequest, header, payload, self.chunk_bytes)
            return self._push(self._counting(stream), timeout=timeout, metadata=self._metadata)

        try:
            response = self._call("Push", attempt)
        except RequestRejectedError as e:
            if e.code == grpc.StatusCode.ABORTED:
                raise ServerRestartedError(str(e), e.code) from None
            raise
        if response.duplicate and attempts == 1:
            # Not a retry of ours: another process pushes under this client id,
            # and half the pushes would be dropped without a word.
            raise RequestRejectedError(
                f"Push to {self.address}: push {self._sequence} of client {self.client_id!r} "
                "was already applied: another process uses the same client id "
                "(a duplicate --task_index?)",
                grpc.StatusCode.ALREADY_EXISTS,
            )
        return PushAck(
            response.version, response.staleness, response.duplicate, response.local_steps
        )

    def _encode(
        self, parts: list[np.ndarray], fragment: Fragment | None
    ) -> tuple[list[memoryview], dict]:
        """The push's payload in ``push_codec``, error feedback included, and its header fields."""
        flat = parts[0] if len(parts) == 1 else np.concatenate([p.ravel() for p in parts])
        feedback = self._feedback if fragment is None else self._fragment_feedback.get(fragment)
        if feedback is None or feedback.spec.size != flat.size:
            feedback = codecs.ErrorFeedback(self.push_codec, flat.size, *self._codec_args)
            if fragment is None:
                self._feedback = feedback
            else:
                self._fragment_feedback[fragment] = feedback
        payload = feedback.encode(flat)
        spec = feedback.spec
        return [byte_view(payload)], {
            "codec": wire.PUSH_CODECS[spec.codec],
            "codec_block_size": spec.block_size,
            "codec_count": spec.count,
        }

    def leave(self) -> int:
        """Tells the server this client has finished; returns the version."""
        request = pb.LeaveRequest(client_id=self.client_id)
        return self._call(
            "Leave", lambda t: self._stub.Leave(request, timeout=t, metadata=self._metadata)
        ).version

    def status(self, client_ids: Sequence[str] = ()) -> pb.StatusResponse:
        """The server's StatusResponse (version, updates, clients, staleness).

        Args:
          client_ids: Clients to list first: they are listed whatever the
            server's cap on the clients one reply lists.
        """
        request = pb.StatusRequest(client_ids=list(client_ids))
        return self._call(
            "Status", lambda t: self._stub.Status(request, timeout=t, metadata=self._metadata)
        )

    def heartbeat(self) -> int:
        """Tells the server this client is alive; returns the version."""
        request = pb.HeartbeatRequest(client_id=self.client_id)
        return self._call(
            "Heartbeat", lambda t: self._stub.Heartbeat(request, timeout=t, metadata=self._metadata)
        ).version

    def start_heartbeats(self, interval_secs: float) -> None:
        """Sends a heartbeat every ``interval_secs`` on a thread until ``close``.

        Between pushes a worker may compute for long (large ``n_push``, a
        slow GPU); heartbeats keep the server from expiring it meanwhile.
        A failed heartbeat is not an error here: the next push or fetch
        reports an unreachable server.
        """
        if self._heartbeats is not None:
            return

        def beat() -> None:
            while not self._closed.wait(interval_secs):
                try:
                    self._stub.Heartbeat(
                        pb.HeartbeatRequest(client_id=self.client_id),
                        timeout=min(interval_secs, self.timeout_secs),
                        metadata=self._metadata,
                    )
                except grpc.RpcError:
                    pass  # Reported by the next real call, with its retries.
                except ValueError:
                    return  # The channel was closed under us.

        self._heartbeats = threading.Thread(target=beat, name="gasgd-heartbeat", daemon=True)
        self._heartbeats.start()

    def close(self) -> None:
        self._closed.set()
        if self._heartbeats is not None:
            self._heartbeats.join(timeout=self.timeout_secs)
        self._channel.close()

    def __enter__(self) -> ParameterClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _fetch_layout(header: pb.FetchHeader) -> FlatLayout:
    layout = FlatLayout(wire.specs_from_proto(header.tensors))
    if header.total_bytes != layout.nbytes:
        raise ValidationError(
            f"header says {header.total_bytes} bytes, tensors need {layout.nbytes}"
        )
    return layout
