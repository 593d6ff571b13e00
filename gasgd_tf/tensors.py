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

# The dtype names used in TensorSpec, with their little-endian numpy dtypes.
# bfloat16 has no numpy dtype of its own; its size is all the layout needs.
_ITEMSIZE = {"float32": 4, "float64": 8, "float16": 2, "bfloat16": 2}
PARAMETER_DTYPE = "float32"


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
    """Where each tensor of a signature lies in the flat float32 buffer.

    Args:
      specs: The signature. Names must be unique and dtypes float32 (the dtype
        of parameters and gradients on the server).
      max_bytes: Largest accepted buffer; checked before anything is
        allocated, so a header cannot make a server reserve terabytes.

    Raises:
      ValidationError: On duplicate names, a dtype other than float32, or a
        total size above ``max_bytes``.
    """

    def __init__(self, specs: Sequence[TensorSpec], max_bytes: int | None = None):
        self.specs = tuple(specs)
        seen = set()
        for spec in self.specs:
            if spec.name in seen:
                raise ValidationError(f"tensor {spec.name!r} appears twice")
            seen.add(spec.name)
            if spec.dtype != PARAMETER_DTYPE:
                raise ValidationError(
                    f"tensor {spec.name!r}: dtype {spec.dtype} is not accepted, "
                    f"expected {PARAMETER_DTYPE}"
                )
        sizes = [s.size for s in self.specs]
        self.size = sum(sizes)
        self.nbytes = self.size * _ITEMSIZE[PARAMETER_DTYPE]
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
        """Copies named arrays into one new flat float32 buffer in layout order."""
        flat = np.empty(self.size, dtype=np.float32)
        for name, view in self.views(flat).items():
            view[...] = arrays[name]
        return flat

    def tensor_at_byte(self, byte_offset: int) -> TensorSpec:
        """The tensor that holds the given byte of the flat buffer."""
        element = byte_offset // _ITEMSIZE[PARAMETER_DTYPE]
        index = int(np.searchsorted(self.offsets, element, side="right")) - 1
        return self.specs[min(max(index, 0), len(self.specs) - 1)]

    def check_finite(self, flat: np.ndarray) -> None:
        """Raises ValidationError naming the first tensor with NaN or Inf values."""
        # One vectorised pass over the whole buffer; the per-tensor search only
        # runs on the rare bad push.
        if np.isfinite(flat).all():
            return
        for spec, view in zip(self.specs, self.views(flat).values()):
            bad = np.size(view) - int(np.count_nonzero(np.isfinite(view)))
            if bad:
                raise ValidationError(
                    f"tensor {spec.name!r} has {bad} non-finite values (NaN or Inf)"
                )


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


def iter_chunks(buffer: memoryview | bytes, chunk_bytes: int) -> Iterator[tuple[int, bytes]]:
    """Yields (offset, bytes) pieces of ``buffer``, each at most ``chunk_bytes`` long."""
    if chunk_bytes <= 0:
        raise ValueError(f"chunk_bytes must be positive, got {chunk_bytes}")
    view = memoryview(buffer).cast("B")
    for start in range(0, len(view), chunk_bytes):
        yield start, view[start : start + chunk_bytes].tobytes()


class ChunkAssembler:
    """Reassembles chunks of a flat float32 buffer, checking order and completeness.

    Args:
      layout: The layout the chunks must fill exactly.
      max_chunk_bytes: Largest accepted chunk.
    """

    def __init__(self, layout: FlatLayout, max_chunk_bytes: int):
        self._layout = layout
        self._max_chunk_bytes = max_chunk_bytes
        self._buffer = np.empty(layout.size, dtype=np.float32)
        self._bytes = memoryview(self._buffer).cast("B")
        self.received = 0

    def add(self, offset: int, data: bytes) -> None:
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
        self._bytes[offset : offset + n] = data
        self.received += n

    def finish(self) -> np.ndarray:
        """Returns the completed buffer.

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
