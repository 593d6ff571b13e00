"""Low-bit push codecs: int8 / int4 blockwise absmax, and top-k, numpy only.

A push of P float32 values costs 4P bytes. The codecs here cut that:

- ``int8``: the values in blocks of ``block_size``; each block sends one
  float32 scale (its largest magnitude / 127) and one int8 per value,
  ``round(x / scale)``: about 4x fewer bytes.
- ``int4``: the same with 4-bit values in [-7, 7] (scale: largest / 7), two
  per byte: about 8x fewer.
- ``topk``: only the k largest-magnitude values (k = ceil(fraction * P)):
  their indices (uint32, increasing) and values (bfloat16): 6 bytes each.

Each loses information; error feedback (``replica/payload.py``) keeps
what was lost on the sender and adds it to the next push, so nothing is lost
in the sum (Seide et al. 2014; Karimireddy et al. 2019, EF-SGD). Streaming
DiLoCo (arXiv 2501.18512) sent 4-bit outer gradients, INTELLECT-1 (arXiv
2412.01152) int8.

``decode`` is what a server runs on untrusted bytes: it checks the length,
every scale (finite, >= 0), every index (in range, strictly increasing, so
none repeats) and every top-k value (finite) before it writes anything the
caller keeps, and raises ``ValidationError`` naming what is wrong.

The payload layout (little-endian), in this order:

  int8:  float32 scales[ceil(P / B)] | int8 values[P]
  int4:  float32 scales[ceil(P / B)] | uint8 packed[ceil(P / 2)]
         (value i in the low nibble of byte i // 2 when i is even, the high
         nibble when odd; a nibble holds value + 8)
  topk:  uint32 indices[k] | bfloat16 values[k]
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from gasgd_tf.tensors import ValidationError, numpy_dtype

CODECS = ("none", "int8", "int4", "topk")
# Largest magnitude each quantized value may take.
LEVELS = {"int8": 127, "int4": 7}
MAX_BLOCK_SIZE = 1 << 20


@dataclasses.dataclass(frozen=True)
class CodecSpec:
    """How a push is encoded: what its header names.

    Attributes:
      codec: One of ``CODECS``.
      size: The number of float32 values encoded.
      block_size: int8 / int4: values per scale.
      count: topk: the number of values sent (k).
    """

    codec: str
    size: int
    block_size: int = 0
    count: int = 0

    def check(self) -> None:
        """Raises ValidationError if these fields cannot describe a payload."""
        if self.codec not in CODECS or self.codec == "none":
            raise ValidationError(f"unknown push codec {self.codec!r}; known: {CODECS[1:]}")
        if self.codec in LEVELS and not 1 <= self.block_size <= MAX_BLOCK_SIZE:
            raise ValidationError(
                f"{self.codec} block size must be in [1, {MAX_BLOCK_SIZE}], got {self.block_size}"
            )
        if self.codec == "topk" and not 1 <= self.count <= max(self.size, 1):
            raise ValidationError(f"topk count must be in [1, {self.size}], got {self.count}")

    @property
    def blocks(self) -> int:
        return math.ceil(self.size / self.block_size) if self.block_size else 0

    @property
    def nbytes(self) -> int:
        """The payload's length in bytes."""
        if self.codec == "int8":
            return 4 * self.blocks + self.size
        if self.codec == "int4":
            return 4 * self.blocks + (self.size + 1) // 2
        return 6 * self.count  # topk


def topk_count(size: int, fraction: float) -> int:
    """k for ``fraction`` of ``size`` values: at least one."""
    return max(1, min(size, math.ceil(fraction * size)))


def encode(values: np.ndarray, spec: CodecSpec) -> np.ndarray:
    """``values`` (flat float32, ``spec.size`` of them) encoded: a uint8 payload."""
    values = np.ascontiguousarray(values, np.float32).reshape(-1)
    if values.size != spec.size:
        raise ValueError(f"{values.size} values for a codec of size {spec.size}")
    if spec.codec in LEVELS:
        return _encode_blockwise(values, spec)
    return _encode_topk(values, spec.count)


def decode(
    payload: np.ndarray | bytes | memoryview, spec: CodecSpec, out: np.ndarray
) -> np.ndarray:
    """Decodes ``payload`` into ``out`` (flat float32, ``spec.size``); returns ``out``.

    Raises:
      ValidationError: A wrong length, a NaN, Inf or negative scale, an
        index out of range or not increasing, a NaN or Inf value. ``out``
        may then hold partial values: callers decode into a scratch buffer.
    """
    spec.check()
    data = np.frombuffer(payload, np.uint8) if not isinstance(payload, np.ndarray) else payload
    if data.size != spec.nbytes:
        raise ValidationError(
            f"{spec.codec} payload has {data.size} bytes, {spec.nbytes} expected for "
            f"{spec.size} values"
        )
    if spec.codec in LEVELS:
        return _decode_blockwise(data, spec, out)
    return _decode_topk(data, spec, out)


# -- int8 / int4 ----------------------------------------------------------------


# Values per piece of an encode or decode: a few 256 KiB temporaries that stay
# in L2 cache between the operations on one piece (as server/optimizers.py
# blocks its updates), instead of model-sized ones that go through memory.
PIECE_VALUES = 1 << 16


def _pieces(spec: CodecSpec):
    """(first block, end block) of each piece; the last may hold a partial block."""
    step = max(1, PIECE_VALUES // spec.block_size)
    for first in range(0, spec.blocks, step):
        yield first, min(first + step, spec.blocks)


def _rows(flat: np.ndarray, first: int, end: int, block_size: int, size: int) -> np.ndarray:
    """Blocks ``first``..``end`` of ``flat`` as rows, the last zero-padded if it is partial."""
    part = flat[first * block_size : min(end * block_size, size)]
    if part.size == (end - first) * block_size:
        return part.reshape(-1, block_size)
    padded = np.zeros((end - first) * block_size, flat.dtype)
    padded[: part.size] = part
    return padded.reshape(-1, block_size)


def _encode_blockwise(values: np.ndarray, spec: CodecSpec) -> np.ndarray:
    levels = np.float32(LEVELS[spec.codec])
    scales = np.empty(spec.blocks, np.float32)
    q = np.empty(spec.blocks * spec.block_size, np.int8)
    for first, end in _pieces(spec):
        rows = _rows(values, first, end, spec.block_size, spec.size)
        # max and -min: two reductions, no temporary |x|.
        absmax = np.maximum(rows.max(axis=1), -rows.min(axis=1))
        if not np.all(np.isfinite(absmax)):
            raise ValueError("cannot encode NaN or Inf")
        scale = np.divide(absmax, levels, out=scales[first:end])
        inverse = np.divide(1.0, scale, out=np.zeros_like(scale), where=scale > 0)
        scaled = np.multiply(rows, inverse[:, None])  # |scaled| <= levels: no clipping.
        np.rint(scaled, out=scaled)
        q[first * spec.block_size : end * spec.block_size] = scaled.reshape(-1)
    q = q[: spec.size]
    header = scales.view(np.uint8)
    if spec.codec == "int8":
        return np.concatenate([header, q.view(np.uint8)])
    q += 8  # Nibbles 1..15.
    nibbles = q.view(np.uint8)
    if nibbles.size % 2:
        nibbles = np.append(nibbles, np.uint8(8))
    packed = nibbles[0::2] | (nibbles[1::2] << 4)
    return np.concatenate([header, packed])


def _decode_blockwise(data: np.ndarray, spec: CodecSpec, out: np.ndarray) -> np.ndarray:
    scales = data[: 4 * spec.blocks].view("<f4")
    if not np.all(np.isfinite(scales)) or np.any(scales < 0):
        bad = int(np.flatnonzero(~np.isfinite(scales) | (scales < 0))[0])
        raise ValidationError(f"{spec.codec} scale of block {bad} is {scales[bad]}")
    body = data[4 * spec.blocks :]
    if spec.codec == "int8":
        q = body.view(np.int8)
    else:
        q = np.empty(body.size * 2, np.int8)
        np.bitwise_and(body, 0x0F, out=q[0::2].view(np.uint8))
        np.right_shift(body, 4, out=q[1::2].view(np.uint8))
        q -= 8
        q = q[: spec.size]
    B = spec.block_size
    for first, end in _pieces(spec):
        rows = _rows(q, first, end, B, spec.size)
        stop = min(end * B, spec.size)
        target = out[first * B : stop]
        if target.size == rows.size:
            np.multiply(rows, scales[first:end, None], out=target.reshape(-1, B))
        else:
            target[...] = (rows * scales[first:end, None]).reshape(-1)[: target.size]
    return out


# -- top-k ----------------------------------------------------------------------


def _encode_topk(values: np.ndarray, count: int) -> np.ndarray:
    if not np.all(np.isfinite(values)):
        raise ValueError("cannot encode NaN or Inf")
    if count >= values.size:
        indices = np.arange(values.size, dtype=np.uint32)
    else:
        indices = np.argpartition(np.abs(values), values.size - count)[values.size - count :]
        indices = np.sort(indices).astype(np.uint32)
    kept = values[indices].astype(numpy_dtype("bfloat16"))  # The wire's bfloat16 (ml_dtypes).
    return np.concatenate([indices.view(np.uint8), kept.view(np.uint8)])


def _decode_topk(data: np.ndarray, spec: CodecSpec, out: np.ndarray) -> np.ndarray:
    k = spec.count
    indices = data[: 4 * k].view("<u4").astype(np.int64)
    if indices.size and (indices[-1] >= spec.size or np.any(np.diff(indices) <= 0)):
        if np.any(indices >= spec.size):
            bad = int(indices[np.argmax(indices >= spec.size)])
            raise ValidationError(f"topk index {bad} is out of range for {spec.size} values")
        raise ValidationError("topk indices must be strictly increasing (none repeated)")
    values = data[4 * k :].view(numpy_dtype("bfloat16")).astype(np.float32)
    if not np.all(np.isfinite(values)):
        raise ValidationError("topk values include NaN or Inf")
    out[...] = 0
    out[indices] = values
    return out


class ErrorFeedback:
    """Encodes successive pushes of one sender, carrying each one's error into the next.

    ``encode(v)`` encodes ``v + residual`` and keeps ``residual = (v +
    residual) - decode(...)``: the sum of everything decoded plus the
    residual equals the sum of everything given, to float32 rounding.

    Args:
      codec: One of ``CODECS`` other than "none".
      size: Values per push.
      block_size: int8 / int4: values per scale.
      topk_fraction: topk: the share of values sent, in (0, 1].
    """

    def __init__(self, codec: str, size: int, block_size: int = 2048, topk_fraction: float = 0.01):
        count = topk_count(size, topk_fraction) if codec == "topk" else 0
        self.spec = CodecSpec(codec, size, block_size if codec in LEVELS else 0, count)
        self.spec.check()
        self.residual = np.zeros(size, np.float32)
        self._decoded = np.empty(size, np.float32)

    def encode(self, values: np.ndarray) -> np.ndarray:
        """The payload for ``values`` plus the carried error; the new error is kept."""
        corrected = self.residual + np.asarray(values, np.float32).reshape(-1)
        payload = encode(corrected, self.spec)
        decode(payload, self.spec, self._decoded)
        np.subtract(corrected, self._decoded, out=self.residual)
        return payload
