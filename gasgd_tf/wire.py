"""Protobuf messages of the parameter service <-> numpy, shared by client and server.

Streams of the service are a header message followed by chunks of a flat
buffer (see protos/gasgd_tf/proto/parameter_service.proto). This module
builds those streams from numpy buffers and reads them back, validating as
it goes; it imports protobuf and numpy only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from gasgd_tf.proto import parameter_service_pb2 as pb
from gasgd_tf.tensors import (
    ChunkAssembler,
    FlatLayout,
    TensorSpec,
    ValidationError,
    iter_chunks,
)

DEFAULT_CHUNK_BYTES = 1 << 20  # 1 MiB: measured fastest on loopback (BUILD_NOTES.md).
# The largest chunk a peer may send: under gRPC's default 4 MiB message limit,
# which counts framing, so that any gRPC client with default settings can talk.
MAX_CHUNK_BYTES = (4 << 20) - (64 << 10)
# gRPC's receive limit counts framing; leave room above MAX_CHUNK_BYTES for it.
GRPC_MESSAGE_LIMIT = 8 << 20

_DTYPE_TO_PROTO = {
    "float32": pb.DTYPE_FLOAT32,
    "float64": pb.DTYPE_FLOAT64,
    "float16": pb.DTYPE_FLOAT16,
    "bfloat16": pb.DTYPE_BFLOAT16,
}
_PROTO_TO_DTYPE = {v: k for k, v in _DTYPE_TO_PROTO.items()}


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

    Args:
      message_type: PushRequest, InitializeRequest or FetchResponse.
      header: The header message for the first message.
      flat: A contiguous float32 buffer; it must not change while the stream
        is consumed.
      chunk_bytes: Largest chunk.
    """
    yield message_type(header=header)
    buffer = np.ascontiguousarray(flat, dtype="<f4")
    for offset, data in iter_chunks(buffer.data, chunk_bytes):
        yield message_type(chunk=pb.Chunk(offset=offset, data=data))


def decode_stream(
    messages: Iterable[Any],
    layout_for_header: Callable[[Any], FlatLayout],
    max_chunk_bytes: int = MAX_CHUNK_BYTES,
) -> tuple[Any, np.ndarray]:
    """Reads a header-then-chunks stream into (header, flat float32 buffer).

    Args:
      messages: The stream: messages with a ``payload`` oneof of header/chunk.
      layout_for_header: Validates the header and returns the layout its
        chunks must fill (raises ValidationError to reject it).
      max_chunk_bytes: Largest accepted chunk.

    Raises:
      ValidationError: A missing or repeated header, chunks out of order or
        past the end, or a truncated stream.
    """
    iterator = iter(messages)
    first = next(iterator, None)
    if first is None or first.WhichOneof("payload") != "header":
        raise ValidationError("the stream must start with a header message")
    header = first.header
    assembler = ChunkAssembler(layout_for_header(header), max_chunk_bytes)
    for message in iterator:
        if message.WhichOneof("payload") != "chunk":
            raise ValidationError("a second header in one stream; expected chunks only")
        assembler.add(message.chunk.offset, message.chunk.data)
    return header, assembler.finish()
