"""Protobuf messages of the parameter service <-> numpy, shared by client and server.

Streams of the service are a header message followed by chunks of a flat
buffer (see protos/gasgd_tf/proto/parameter_service.proto). This module
builds those streams from numpy buffers and reads them back, validating as
it goes; it imports protobuf and numpy only.

Two encodings of the same messages:

* ``encode_stream`` builds protobuf message objects, for any gRPC stub (the
  generated one, tests, other tools).
* ``encode_frames`` and ``frame_parser`` are the fast path that the Python
  client and server use: a chunk message is framed by hand (a few bytes of
  protobuf tags and lengths) around a view of the numpy buffer, and parsed
  back into a view of the received bytes. A chunk's bytes are then copied
  once on each side (into the outgoing message, out of the incoming one)
  instead of three or four times through protobuf objects. The bytes on the
  wire are ordinary protobuf: any client in any language reads and writes
  them, and ``frame_parser`` falls back to protobuf's parser for any
  encoding other than the canonical one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, NamedTuple

import numpy as np
from google.protobuf.message import DecodeError

from gasgd_tf import codecs, config_base
from gasgd_tf.proto import parameter_service_pb2 as pb
from gasgd_tf.tensors import (
    PARAMETER_DTYPE,
    WIRE_DTYPES,
    ChunkAssembler,
    FlatLayout,
    TensorSpec,
    ValidationError,
    byte_view,
    iter_chunk_parts,
)

SERVICE_NAME = "gasgd_tf.v1.ParameterService"
# 1 MiB (client.chunk_bytes): measured fastest on loopback (BUILD_NOTES.md).
DEFAULT_CHUNK_BYTES = config_base.defaults().client.chunk_bytes
# The largest chunk a peer may send: under gRPC's default 4 MiB message limit,
# which counts framing, so that any gRPC client with default settings can talk.
MAX_CHUNK_BYTES = (4 << 20) - (64 << 10)
# gRPC's receive limit counts framing; leave room above MAX_CHUNK_BYTES for it.
GRPC_MESSAGE_LIMIT = 8 << 20
# Trailing metadata of a busy refusal (RESOURCE_EXHAUSTED): milliseconds to
# wait before retrying, as a decimal string. The server sets it
# (gasgd_tf/server/admission.py) and the client reads it; defined once here,
# where both already import from, so that the two cannot drift apart.
RETRY_AFTER_KEY = "retry-after-ms"

# What a push carries (PushHeader.kind): the sum of raw gradients, or a
# parameter delta after local steps of the client's own optimizer.
PUSH_KINDS = {
    name: pb.PushKind.Value(f"PUSH_KIND_{name.upper()}") for name in config_base.PUSH_KINDS
}
_PUSH_KIND_NAMES = {value: name for name, value in PUSH_KINDS.items()}


PUSH_CODECS = {name: pb.PushCodec.Value(f"PUSH_CODEC_{name.upper()}") for name in codecs.CODECS}
_PUSH_CODEC_NAMES = {value: name for name, value in PUSH_CODECS.items()}


def push_codec_name(value: int) -> str:
    """The name of a PushHeader.codec (``"codec <n>"`` for a value this version lacks)."""
    return _PUSH_CODEC_NAMES.get(value, f"codec {value}")


def push_kind_name(value: int) -> str:
    """The name of a PushHeader.kind (``"kind <n>"`` for a value this version lacks)."""
    return _PUSH_KIND_NAMES.get(value, f"kind {value}")


_DTYPE_TO_PROTO = {
    "float32": pb.DTYPE_FLOAT32,
    "float64": pb.DTYPE_FLOAT64,
    "float16": pb.DTYPE_FLOAT16,
    "bfloat16": pb.DTYPE_BFLOAT16,
}
_PROTO_TO_DTYPE = {v: k for k, v in _DTYPE_TO_PROTO.items()}


def dtype_to_proto(dtype: str) -> int:
    return _DTYPE_TO_PROTO[dtype]


def fetch_dtype_from_proto(value: int) -> str:
    """The wire dtype a FetchRequest asks for (UNSPECIFIED: float32).

    Raises:
      ValidationError: A dtype parameters cannot travel in.
    """
    if value == pb.DTYPE_UNSPECIFIED:
        return PARAMETER_DTYPE
    dtype = _PROTO_TO_DTYPE.get(value)
    if dtype not in WIRE_DTYPES:
        raise ValidationError(
            f"parameters cannot be fetched as DType {value} ({dtype or 'unknown'}); "
            f"use one of {', '.join(WIRE_DTYPES)}"
        )
    return dtype


def spec_to_proto(spec: TensorSpec) -> pb.TensorSpec:
    return pb.TensorSpec(name=spec.name, shape=spec.shape, dtype=_DTYPE_TO_PROTO[spec.dtype])


def spec_from_proto(msg: pb.TensorSpec) -> TensorSpec:
    """Converts a TensorSpec message, rejecting unnamed tensors and unknown dtypes."""
    if not msg.name:
        raise ValidationError("a tensor has an empty name")
    dtype = _PROTO_TO_DTYPE.get(msg.dtype)
    if dtype is None:
        raise ValidationError(f"tensor {msg.name!r} has no known dtype (DType {msg.dtype})")
    return TensorSpec(msg.name, tuple(msg.shape), dtype)


def specs_to_proto(specs: Sequence[TensorSpec]) -> list[pb.TensorSpec]:
    return [spec_to_proto(s) for s in specs]


def specs_from_proto(msgs: Iterable[pb.TensorSpec]) -> tuple[TensorSpec, ...]:
    return tuple(spec_from_proto(m) for m in msgs)


def encode_stream(
    message_type: Callable[..., Any],
    header: Any,
    flat: np.ndarray,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> Iterator[Any]:
    """Yields ``message_type(header=header)`` then one message per chunk of ``flat``.

    Protobuf message objects, for generated stubs; the Python client and
    server use ``encode_frames``, which puts the same bytes on the wire.

    Args:
      message_type: PushRequest, InitializeRequest or FetchResponse.
      header: The header message for the first message.
      flat: A contiguous buffer in the dtype the header's tensors name; it
        must not change while the stream is consumed.
      chunk_bytes: Largest chunk.
    """
    yield message_type(header=header)
    buffer = np.ascontiguousarray(flat)
    for offset, parts in iter_chunk_parts(byte_view(buffer), chunk_bytes):
        yield message_type(chunk=pb.Chunk(offset=offset, data=b"".join(parts)))


# -- The fast path: chunk messages framed by hand ------------------------------
# PushRequest, InitializeRequest and FetchResponse all carry the header as
# field 1 and the Chunk as field 2; Chunk is {uint64 offset = 1; bytes data = 2}.
_CHUNK_FIELD = 0x12  # Field 2, length-delimited.
_OFFSET_FIELD = 0x08  # Field 1, varint.
_DATA_FIELD = 0x12  # Field 2, length-delimited.


class RawChunk(NamedTuple):
    """A chunk as parsed by ``frame_parser``: its offset and a view of its bytes (no copy)."""

    offset: int
    data: memoryview


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    """(value, position after it); raises IndexError past the end, ValueError when too long."""
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def chunk_frame(offset: int, parts: Sequence[memoryview]) -> bytes:
    """One serialized chunk message (of any of the three stream types) around ``parts``."""
    n = sum(len(p) for p in parts)
    inner = (bytes([_OFFSET_FIELD]) + _varint(offset) if offset else b"") + (
        bytes([_DATA_FIELD]) + _varint(n)
    )
    outer = bytes([_CHUNK_FIELD]) + _varint(len(inner) + n)
    return b"".join((outer, inner, *parts))  # The one copy of the chunk's bytes.


def encode_frames(
    message_type: Callable[..., Any],
    header: Any,
    buffer: np.ndarray | Sequence[memoryview],
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> Iterator[bytes]:
    """Like ``encode_stream`` but yields serialized messages, for a serializer-free stub.

    Args:
      message_type: PushRequest, InitializeRequest or FetchResponse.
      header: The header message.
      buffer: A contiguous array in the header's dtype, or byte views to
        send as if laid end to end (gathered without a copy).
      chunk_bytes: Largest chunk.
    """
    yield message_type(header=header).SerializeToString()
    if isinstance(buffer, np.ndarray):
        buffer = [byte_view(np.ascontiguousarray(buffer))]
    for offset, parts in iter_chunk_parts(buffer, chunk_bytes):
        yield chunk_frame(offset, parts)


def _parse_canonical_chunk(data: bytes) -> RawChunk | None:
    """The chunk in ``data`` if it is encoded the canonical way, else None."""
    if len(data) < 2 or data[0] != _CHUNK_FIELD:
        return None
    try:
        length, pos = _read_varint(data, 1)
        if pos + length != len(data):
            return None
        offset = 0
        if data[pos] == _OFFSET_FIELD:
            offset, pos = _read_varint(data, pos + 1)
        if pos == len(data):
            return RawChunk(offset, memoryview(b""))
        if data[pos] != _DATA_FIELD:
            return None
        n, pos = _read_varint(data, pos + 1)
        if pos + n != len(data):
            return None
    except (IndexError, ValueError):
        return None
    return RawChunk(offset, memoryview(data)[pos:])


def frame_parser(message_type: Any) -> Callable[[bytes], Any]:
    """A gRPC deserializer for a header-then-chunks stream.

    Returns:
      A function of one serialized message returning a ``RawChunk`` for a
      chunk (a view of the bytes, no copy), the header message for a header,
      or the parsed message itself when it has neither (decode_stream
      rejects it).
    """

    def parse(data: bytes) -> Any:
        chunk = _parse_canonical_chunk(data)
        if chunk is not None:
            return chunk
        message = message_type.FromString(data)  # Any other valid encoding.
        which = message.WhichOneof("payload")
        if which == "chunk":
            return RawChunk(message.chunk.offset, memoryview(message.chunk.data))
        if which == "header":
            return message.header
        return message

    return parse


class MalformedMessage(NamedTuple):
    """What a ``tolerant`` deserializer returns for bytes that do not parse.

    gRPC's Python server answers INTERNAL ("Exception deserializing
    request!") whenever a request deserializer raises, before any handler
    runs, and a deserializer cannot abort the call itself. Returning this
    instead (never None: grpcio treats None as a failure too) hands the
    decision to the handler, which answers INVALID_ARGUMENT as the proto's
    error table promises for a malformed request.
    """

    type_name: str
    error: str

    def describe(self) -> str:
        return f"the request is not a valid {self.type_name} message ({self.error})"


class MalformedMessageError(ValidationError):
    """A stream carried a message that did not parse (see ``MalformedMessage``)."""


def tolerant(parse: Callable[[bytes], Any], type_name: str) -> Callable[[bytes], Any]:
    """Wraps a request deserializer so that a parse failure returns a ``MalformedMessage``.

    Args:
      parse: The deserializer, e.g. ``pb.LeaveRequest.FromString`` or a
        ``frame_parser``.
      type_name: The message's name, for the error message.

    Returns:
      A deserializer that never raises protobuf's ``DecodeError``. Other
      exceptions still propagate (gRPC answers INTERNAL: a bug, not bad input).
    """

    def parse_or_mark(data: bytes) -> Any:
        try:
            return parse(data)
        except DecodeError as e:
            return MalformedMessage(type_name, str(e) or "wire format corrupt")

    return parse_or_mark


def _part(item: Any) -> tuple[str, Any]:
    """("header", header) or ("chunk", RawChunk) of a parsed frame or a protobuf message."""
    if isinstance(item, RawChunk):
        return "chunk", item
    if isinstance(item, MalformedMessage):
        raise MalformedMessageError(item.describe())
    if isinstance(item, bytes):
        raise ValidationError("unparsed bytes in a stream (missing deserializer)")
    which = item.WhichOneof("payload") if "payload" in _oneofs(item) else "header"
    if which == "chunk":
        return "chunk", RawChunk(item.chunk.offset, memoryview(item.chunk.data))
    if which == "header":
        return "header", item.header if "payload" in _oneofs(item) else item
    return "empty", None


def _oneofs(message: Any) -> set[str]:
    return set(message.DESCRIPTOR.oneofs_by_name)


def decode_stream(
    messages: Iterable[Any],
    layout_for_header: Callable[[Any], FlatLayout],
    max_chunk_bytes: int = MAX_CHUNK_BYTES,
    out: Callable[[FlatLayout], Sequence[memoryview] | None] | None = None,
    verified: list[bool] | None = None,
) -> tuple[Any, np.ndarray | None]:
    """Reads a header-then-chunks stream into (header, flat buffer).

    Args:
      messages: The stream: protobuf messages with a ``payload`` oneof of
        header/chunk, or what ``frame_parser`` returns.
      layout_for_header: Validates the header and returns the layout its
        chunks must fill (raises ValidationError to reject it).
      max_chunk_bytes: Largest accepted chunk.
      out: Given the layout, the byte views to write into (None: a new
        buffer); then the returned buffer is None.
      verified: If given, receives one bool: whether every value was
        checked finite as its chunk arrived (``ChunkAssembler.all_finite``).

    Returns:
      The header and the buffer in the layout's dtype.

    Raises:
      ValidationError: A missing or repeated header, chunks out of order or
        past the end, or a truncated stream; ``MalformedMessageError`` for a
        message that did not parse (a ``tolerant`` deserializer's mark).
    """
    iterator = iter(messages)
    first = next(iterator, None)
    kind, header = _part(first) if first is not None else ("empty", None)
    if kind != "header":
        raise ValidationError("the stream must start with a header message")
    layout = layout_for_header(header)
    assembler = ChunkAssembler(layout, max_chunk_bytes, out(layout) if out else None)
    for message in iterator:
        kind, chunk = _part(message)
        if kind == "header":
            raise ValidationError("a second header in one stream; expected chunks only")
        if kind != "chunk":
            raise ValidationError("a message with neither header nor chunk in the stream")
        assembler.add(chunk.offset, chunk.data)
    flat = assembler.finish()
    if verified is not None:
        verified.append(assembler.all_finite)
    return header, flat
