"""Tensor signatures, flat buffers and their chunking: the numpy core of the wire format.

Both sides of the parameter service move a set of tensors as one flat buffer:
the tensors laid end to end in signature order, each as raw little-endian
bytes, cut into chunks. This module holds that layout and the checks on it,
with no gRPC, protobuf or TensorFlow, so that the server, the client and the
tests share one implementation.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Mapping, Sequence

import numpy as np

# The dtype names used in TensorSpec, with their sizes in bytes.
_ITEMSIZE = {"float32": 4, "float64": 8, "float16": 2, "bfloat16": 2}
PARAMETER_DTYPE = "float32"
# Elements per block of ``all_finite``: 1 MiB of float32 (see there).
FINITE_CHECK_BLOCK = 1 << 18
# Dtypes a flat buffer may travel in: parameters and gradients are float32
# on both sides; float16 and bfloat16 halve the bytes on the wire.
WIRE_DTYPES = ("float32", "bfloat16", "float16")


def numpy_dtype(name: str) -> np.dtype:
    """The little-endian numpy dtype of a wire dtype name (bfloat16 via ml_dtypes)."""
    if name == "bfloat16":
        import ml_dtypes  # A dependency of TensorFlow and JAX; numpy has no bfloat16.

        return np.dtype(ml_dtypes.bfloat16)
    if name not in WIRE_DTYPES:
        raise ValidationError(f"dtype {name!r} is not one of {WIRE_DTYPES}")
    return np.dtype(name).newbyteorder("<")


def with_dtype(specs: Sequence[TensorSpec], dtype: str) -> tuple[TensorSpec, ...]:
    """The same tensors, all in ``dtype`` (the signature of a request sent in that dtype)."""
    return tuple(dataclasses.replace(s, dtype=dtype) for s in specs)


def common_dtype(specs: Sequence[TensorSpec]) -> str:
    """The one wire dtype every tensor of a request uses.

    Raises:
      ValidationError: Tensors of different dtypes, or a dtype not in WIRE_DTYPES.
    """
    if not specs:
        return PARAMETER_DTYPE
    dtype = specs[0].dtype
    for spec in specs:
        if spec.dtype != dtype:
            raise ValidationError(
                f"tensor {spec.name!r} has dtype {spec.dtype} but {specs[0].name!r} has "
                f"{dtype}: every tensor of a request travels in one dtype"
            )
    if dtype not in WIRE_DTYPES:
        raise ValidationError(
            f"tensor {specs[0].name!r}: dtype {dtype} is not accepted, expected one of "
            f"{', '.join(WIRE_DTYPES)}"
        )
    return dtype


class ValidationError(ValueError):
    """A request whose tensors do not match the expected ones; nothing was applied."""


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """Name, shape and dtype of one tensor.

    Attributes:
      name: Unique name, for example a Keras variable path "conv2d/kernel".
      shape: Dimensions; () for a scalar.
      dtype: One of "float32", "float64", "float16", "bfloat16".
    """

    name: str
    shape: tuple[int, ...]
    dtype: str = PARAMETER_DTYPE

    def __post_init__(self):
        object.__setattr__(self, "shape", tuple(int(d) for d in self.shape))
        if self.dtype not in _ITEMSIZE:
            raise ValidationError(f"tensor {self.name!r}: unknown dtype {self.dtype!r}")
        if any(d < 0 for d in self.shape):
            raise ValidationError(f"tensor {self.name!r}: negative dimension in {self.shape}")

    @property
    def size(self) -> int:
        """Number of elements (exact: Python integers cannot overflow)."""
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        """Number of bytes in the flat buffer."""
        return self.size * _ITEMSIZE[self.dtype]

    def describe(self) -> str:
        return f"{self.name!r} {list(self.shape)} {self.dtype}"


class FlatLayout:
    """Where each tensor of a signature lies in one flat buffer.

    Args:
      specs: The signature. Names must be unique; every tensor has the same
        dtype, one of WIRE_DTYPES (float32 for parameters and gradients;
        bfloat16 or float16 for a request sent in half precision).
      max_bytes: Largest accepted buffer; checked before anything is
        allocated, so a header cannot make a server reserve terabytes.

    Raises:
      ValidationError: On duplicate names, mixed or unaccepted dtypes, or a
        total size above ``max_bytes``.
    """

    def __init__(self, specs: Sequence[TensorSpec], max_bytes: int | None = None):
        self.specs = tuple(specs)
        seen = set()
        for spec in self.specs:
            if spec.name in seen:
                raise ValidationError(f"tensor {spec.name!r} appears twice")
            seen.add(spec.name)
        self.dtype = common_dtype(self.specs)
        self.itemsize = _ITEMSIZE[self.dtype]
        sizes = [s.size for s in self.specs]
        self.size = sum(sizes)
        self.nbytes = self.size * self.itemsize
        if max_bytes is not None and self.nbytes > max_bytes:
            biggest = max(self.specs, key=lambda s: s.size)
            raise ValidationError(
                f"tensors of {self.nbytes} bytes exceed the limit of {max_bytes} bytes "
                f"(largest: {biggest.describe()})"
            )
        offsets = [0]
        for size in sizes:
            offsets.append(offsets[-1] + size)
        self.offsets = tuple(offsets)

    def views(self, flat: np.ndarray) -> dict[str, np.ndarray]:
        """Shaped views (no copies) of each tensor inside ``flat``."""
        if flat.shape != (self.size,):
            raise ValueError(f"flat buffer has shape {flat.shape}, expected ({self.size},)")
        return {
            s.name: flat[a:b].reshape(s.shape)
            for s, a, b in zip(self.specs, self.offsets, self.offsets[1:])
        }

    def flatten(self, arrays: Mapping[str, np.ndarray]) -> np.ndarray:
        """Copies named arrays into one new flat buffer of the layout's dtype, in layout order."""
        flat = np.empty(self.size, dtype=numpy_dtype(self.dtype))
        for name, view in self.views(flat).items():
            view[...] = arrays[name]
        return flat

    def tensor_at_byte(self, byte_offset: int) -> TensorSpec:
        """The tensor that holds the given byte of the flat buffer."""
        element = byte_offset // self.itemsize
        index = int(np.searchsorted(self.offsets, element, side="right")) - 1
        return self.specs[min(max(index, 0), len(self.specs) - 1)]

    def check_finite(self, flat: np.ndarray) -> None:
        """Raises ValidationError naming the first tensor with NaN or Inf values."""
        # One vectorised pass over the whole buffer; the per-tensor search only
        # runs on the rare bad push.
        if all_finite(flat):
            return
        for spec, view in zip(self.specs, self.views(flat).values()):
            bad = np.size(view) - int(np.count_nonzero(np.isfinite(view)))
            if bad:
                raise ValidationError(
                    f"tensor {spec.name!r} has {bad} non-finite values (NaN or Inf)"
                )


def all_finite(values: np.ndarray) -> bool:
    """Whether no value of ``values`` (any float array) is NaN or Inf.

    The same answer as ``np.isfinite(values).all()``, faster on large arrays:
    that writes a bool array a quarter of the floats' size to memory and
    reads it back, while this checks ``FINITE_CHECK_BLOCK`` elements at a
    time into one small bool buffer that stays in cache, so memory sees one
    read of the floats (60M float32: 0.7x against 1.05x the time of a numpy
    copy of the same bytes, benchmarks/apply.py). It also stops at the first
    block with a bad value. Sums and dot products of the values are no
    substitute: they overflow to Inf on large finite values.

    Thread-safe: the buffer is per call (it is small), since pushes are
    checked concurrently, outside the store's lock.
    """
    flat = np.ravel(values)  # A view for the contiguous buffers used here.
    block = FINITE_CHECK_BLOCK
    ok = np.empty(min(flat.size, block), dtype=bool)
    for start in range(0, flat.size, block):
        part = flat[start : start + block]
        finite = ok[: part.size]
        np.isfinite(part, out=finite)
        if not finite.all():
            return False
    return True


def check_same_specs(expected: Sequence[TensorSpec], got: Sequence[TensorSpec]) -> None:
    """Checks that ``got`` is ``expected``: same names, shapes, dtypes and order.

    Raises:
      ValidationError: Naming the first offending tensor.
    """
    expected_by_name = {s.name: s for s in expected}
    got_names = [s.name for s in got]
    for spec in got:
        want = expected_by_name.get(spec.name)
        if want is None:
            raise ValidationError(f"unknown tensor {spec.name!r}")
        if spec.shape != want.shape:
            raise ValidationError(
                f"tensor {spec.name!r} has shape {list(spec.shape)}, expected {list(want.shape)}"
            )
        if spec.dtype != want.dtype:
            raise ValidationError(
                f"tensor {spec.name!r} has dtype {spec.dtype}, expected {want.dtype}"
            )
    missing = [s.name for s in expected if s.name not in set(got_names)]
    if missing:
        raise ValidationError(f"missing tensor {missing[0]!r} ({len(missing)} missing in all)")
    if len(got_names) != len(set(got_names)):
        dup = next(n for n in got_names if got_names.count(n) > 1)
        raise ValidationError(f"tensor {dup!r} appears twice")
    for i, (want, spec) in enumerate(zip(expected, got)):
        if want.name != spec.name:
            raise ValidationError(
                f"tensor {spec.name!r} is at position {i}, expected {want.name!r} there "
                "(send tensors in the server's order)"
            )


def byte_view(array: np.ndarray) -> memoryview:
    """The bytes of a contiguous array, without a copy (works for bfloat16 too)."""
    return memoryview(array.view(np.uint8)).cast("B")


def iter_chunks(buffer: memoryview | bytes, chunk_bytes: int) -> Iterator[tuple[int, bytes]]:
    """Yields (offset, bytes) pieces of ``buffer``, each at most ``chunk_bytes`` long."""
    for offset, parts in iter_chunk_parts(buffer, chunk_bytes):
        yield offset, b"".join(parts)


def iter_chunk_parts(
    buffer: memoryview | bytes | Sequence[memoryview], chunk_bytes: int
) -> Iterator[tuple[int, list[memoryview]]]:
    """Yields (offset, pieces) covering ``buffer`` in order, at most ``chunk_bytes`` a chunk.

    Args:
      buffer: The bytes to cut, or a sequence of byte views to cut as if
        they were laid end to end (a shard's tensors gathered from a larger
        buffer, with no copy to gather them).
      chunk_bytes: Largest chunk.

    Yields:
      The chunk's byte offset and the views (no copies) whose concatenation
      is the chunk: one view, or more where a chunk spans two parts.
    """
    if chunk_bytes <= 0:
        raise ValueError(f"chunk_bytes must be positive, got {chunk_bytes}")
    parts = [memoryview(buffer).cast("B")] if not isinstance(buffer, (list, tuple)) else buffer
    offset = 0
    pending: list[memoryview] = []
    pending_bytes = 0
    for part in parts:
        start = 0
        while start < len(part):
            take = min(chunk_bytes - pending_bytes, len(part) - start)
            pending.append(part[start : start + take])
            pending_bytes += take
            start += take
            if pending_bytes == chunk_bytes:
                yield offset, pending
                offset += pending_bytes
                pending, pending_bytes = [], 0
    if pending_bytes:
        yield offset, pending


class ByteScatter:
    """Writes a byte stream into several byte views laid end to end.

    A sharded client receives a shard's parameters straight into their
    places in the full flat buffer: each view is one run of the shard's
    tensors there.
    """

    def __init__(self, parts: Sequence[memoryview]):
        self._parts = list(parts)
        ends = np.cumsum([len(p) for p in self._parts]) if self._parts else np.zeros(0)
        self._starts = [0, *(int(e) for e in ends[:-1])]
        self.nbytes = int(ends[-1]) if len(ends) else 0

    def write(self, offset: int, data: memoryview) -> None:
        """Copies ``data`` to bytes ``offset ... offset + len(data)`` of the stream."""
        index = max(int(np.searchsorted(self._starts, offset, side="right")) - 1, 0)
        done = 0
        n = len(data)
        while done < n:
            part = self._parts[index]
            at = offset + done - self._starts[index]
            take = min(len(part) - at, n - done)
            part[at : at + take] = data[done : done + take]
            done += take
            index += 1


class PayloadLayout:
    """The bytes of an encoded push (a codec's payload) for ``ChunkAssembler``: opaque bytes.

    Args:
      nbytes: The payload's length.
      name: Names it in errors (a truncated or overlong stream).
    """

    dtype = "uint8"
    itemsize = 1

    def __init__(self, nbytes: int, name: str = "encoded payload"):
        self.size = self.nbytes = int(nbytes)
        self._spec = TensorSpec(name, (self.size,))

    def tensor_at_byte(self, byte_offset: int) -> TensorSpec:
        return self._spec


def _assembly_dtype(layout) -> np.dtype:
    return np.dtype(np.uint8) if layout.dtype == "uint8" else numpy_dtype(layout.dtype)


class ChunkAssembler:
    """Reassembles chunks of a flat buffer, checking order and completeness.

    Args:
      layout: The layout the chunks must fill exactly (in its dtype): a
        ``FlatLayout``, or a ``PayloadLayout`` for encoded bytes.
      max_chunk_bytes: Largest accepted chunk.
      out: Where the bytes go: byte views laid end to end, ``layout.nbytes``
        in all; default: a new buffer of the layout's dtype.
    """

    def __init__(
        self, layout: FlatLayout, max_chunk_bytes: int, out: Sequence[memoryview] | None = None
    ):
        self._layout = layout
        self._max_chunk_bytes = max_chunk_bytes
        if out is None:
            self._buffer = np.empty(layout.size, dtype=_assembly_dtype(layout))
            self._scatter = ByteScatter([byte_view(self._buffer)])
        else:
            self._buffer = None
            self._scatter = ByteScatter(out)
            if self._scatter.nbytes != layout.nbytes:
                raise ValueError(
                    f"output views hold {self._scatter.nbytes} bytes, the layout {layout.nbytes}"
                )
        self.received = 0
        # Whether every chunk so far was checked for NaN and Inf as it arrived
        # (while in cache) and passed; chunks that do not start and end on
        # element boundaries are left to a check of the whole buffer.
        self._dtype = _assembly_dtype(layout)
        self._finite = self._dtype.kind == "f"  # Encoded bytes: their decoder checks them.

    @property
    def all_finite(self) -> bool:
        """True when every value was seen as it arrived, and none was NaN or Inf.

        False means "not known finite": the caller checks the whole buffer,
        which also names the tensor with the bad value.
        """
        return self._finite and self.received == self._layout.nbytes

    def add(self, offset: int, data: bytes | memoryview) -> None:
        """Copies one chunk into place.

        Raises:
          ValidationError: On a chunk out of order, too large, or past the end.
        """
        if offset != self.received:
            raise ValidationError(
                f"chunk at byte offset {offset} out of order, expected offset {self.received} "
                f"(in tensor {self._layout.tensor_at_byte(self.received).name!r})"
            )
        n = len(data)
        if n > self._max_chunk_bytes:
            raise ValidationError(f"chunk of {n} bytes exceeds the limit {self._max_chunk_bytes}")
        if offset + n > self._layout.nbytes:
            raise ValidationError(
                f"chunks run past the end: {offset + n} bytes for tensors of "
                f"{self._layout.nbytes} bytes"
            )
        view = memoryview(data).cast("B")
        self._scatter.write(offset, view)
        if self._finite:
            itemsize = self._dtype.itemsize
            if offset % itemsize or n % itemsize:
                self._finite = False
            else:
                self._finite = all_finite(np.frombuffer(view, self._dtype))
        self.received += n

    def finish(self) -> np.ndarray | None:
        """Returns the completed buffer (None when it was written to ``out``).

        Raises:
          ValidationError: When bytes are missing (a truncated stream), naming
            the first incomplete tensor.
        """
        if self.received != self._layout.nbytes:
            spec = self._layout.tensor_at_byte(self.received)
            raise ValidationError(
                f"truncated stream: received {self.received} of {self._layout.nbytes} bytes; "
                f"tensor {spec.name!r} is incomplete"
            )
        return self._buffer
