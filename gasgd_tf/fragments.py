"""Fragments: parts of a flat parameter buffer that sync on their own (numpy only).

Streaming DiLoCo (Douillard et al. 2025, arXiv 2501.18512) cuts the model
into F fragments and syncs fragment f at its own step offset, so that no
sync moves the whole model at once. Here a fragment is a set of element
ranges of the flat buffer, and the parameter service takes a push or a
fetch of a fragment alone.

On the wire a fragment is a list of TensorSpecs, each one of the server's
tensors whole, or a contiguous run of one tensor's flattened elements named
as ``sharding.py`` names a shard's piece: ``<name>@<start>:<stop>:<shape>``
with shape (stop - start,). The specs come in the server's flat order, and
none overlaps another. A push or fetch naming every tensor whole is the
plain, whole-model one.

The cut itself reuses the sharding plan (``sharding.make_plan`` with F
"shards"): tensors above one fragment's share are split into F near-equal
runs and the others are balanced by size, so the fragments carry about
equal bytes. (The paper cuts by whole layers, strided; a small CNN has too
few layers for F equal fragments of whole layers.)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from gasgd_tf import sharding
from gasgd_tf.tensors import FlatLayout, TensorSpec, ValidationError

Runs = tuple[tuple[int, int], ...]


def _merged(runs: Sequence[tuple[int, int]]) -> Runs:
    """Sorted, non-empty runs with adjacent ones joined."""
    out: list[list[int]] = []
    for begin, end in sorted(runs):
        if end <= begin:
            continue
        if out and out[-1][1] == begin:
            out[-1][1] = end
        else:
            out.append([begin, end])
    return tuple((b, e) for b, e in out)


@dataclasses.dataclass(frozen=True)
class Fragment:
    """Element ranges [begin, end) of a flat buffer, increasing and disjoint.

    Values "of the fragment" are its ranges' elements laid end to end (the
    compact layout a push or fetch of it carries).
    """

    runs: Runs

    @classmethod
    def of(cls, runs: Sequence[tuple[int, int]]) -> Fragment:
        return cls(_merged(runs))

    @property
    def size(self) -> int:
        return sum(e - b for b, e in self.runs)

    def gather(self, flat: np.ndarray) -> np.ndarray:
        """The fragment's values of ``flat``: a view for one run, else a compact copy."""
        if len(self.runs) == 1:
            begin, end = self.runs[0]
            return flat[begin:end]
        return np.concatenate([flat[b:e] for b, e in self.runs])

    def scatter(self, values: np.ndarray, flat: np.ndarray) -> None:
        """Writes compact ``values`` back into the fragment's places of ``flat``."""
        start = 0
        for begin, end in self.runs:
            part = flat[begin:end]
            if not np.shares_memory(part, values):  # A view from gather: already there.
                part[...] = values[start : start + end - begin]
            start += end - begin

    def overlaps(self, other: Fragment) -> bool:
        i = j = 0
        while i < len(self.runs) and j < len(other.runs):
            (a, b), (c, d) = self.runs[i], other.runs[j]
            if a < d and c < b:
                return True
            if b <= d:
                i += 1
            else:
                j += 1
        return False

    def within(
        self, runs: Sequence[tuple[int, int]]
    ) -> tuple[Fragment, tuple[tuple[int, int], ...]]:
        """This fragment as seen by a buffer made of ``runs`` of the full one (a shard's).

        Returns:
          (the fragment in the coordinates of that buffer, the compact
          ranges of this fragment's values that fall in it, in order).
        """
        local, compact = [], []
        base = 0  # Where each run of ``runs`` starts in the shard's own buffer.
        starts = np.cumsum([0] + [e - b for b, e in self.runs])
        for r_begin, r_end in runs:
            for index, (begin, end) in enumerate(self.runs):
                lo, hi = max(begin, r_begin), min(end, r_end)
                if lo < hi:
                    local.append((base + lo - r_begin, base + hi - r_begin))
                    first = int(starts[index]) + lo - begin
                    compact.append((first, first + hi - lo))
            base += r_end - r_begin
        return Fragment.of(local), tuple(compact)

    def specs(self, signature: Sequence[TensorSpec]) -> tuple[TensorSpec, ...]:
        """The wire specs naming this fragment of a buffer laid out by ``signature``."""
        layout = FlatLayout(signature)
        out = []
        for spec, offset in zip(layout.specs, layout.offsets):
            for begin, end in self.runs:
                lo, hi = max(begin, offset), min(end, offset + spec.size)
                if lo >= hi:
                    continue
                if hi - lo == spec.size:
                    out.append(spec)
                else:
                    piece = sharding.piece_name(spec, lo - offset, hi - offset)
                    out.append(TensorSpec(piece, (hi - lo,), spec.dtype))
        return tuple(out)


def resolve(layout: FlatLayout, specs: Sequence[TensorSpec]) -> Fragment | None:
    """The fragment that wire ``specs`` name in a buffer laid out by ``layout``.

    Dtypes are not compared (a request may travel in half precision; the
    caller checks the dtype).

    Returns:
      None when ``specs`` name every tensor whole, in order (the whole model).

    Raises:
      ValidationError: An unknown tensor, a piece out of its tensor's range
        or of the wrong shape, specs out of order or overlapping; the
        message names the tensor.
    """
    specs = tuple(specs)
    if not specs:
        raise ValidationError("no tensors in the header")
    if [(s.name, s.shape) for s in specs] == [(s.name, s.shape) for s in layout.specs]:
        return None
    index = {s.name: (s, off) for s, off in zip(layout.specs, layout.offsets)}
    runs = [_run_of(spec, index) for spec in specs]
    for i in range(1, len(runs)):
        if runs[i][0] < runs[i - 1][1]:
            raise ValidationError(
                "a fragment's tensors must come in the server's order without overlapping "
                f"(at {specs[i].name!r})"
            )
    return Fragment.of(runs)


def _run_of(spec: TensorSpec, index: dict) -> tuple[int, int]:
    """The range of the full buffer one wire spec of a fragment names."""
    if spec.name in index:
        whole, offset = index[spec.name]
        if tuple(spec.shape) != tuple(whole.shape):
            raise ValidationError(
                f"tensor {spec.name!r} has shape {list(spec.shape)}, expected {list(whole.shape)}"
            )
        return offset, offset + whole.size
    parsed = sharding.parse_piece_name(spec.name)
    if parsed is None or parsed[0] not in index:
        raise ValidationError(f"unknown tensor {spec.name!r}")
    name, start, stop, shape = parsed
    whole, offset = index[name]
    if shape != tuple(whole.shape) or not 0 <= start < stop <= whole.size:
        raise ValidationError(
            f"piece {spec.name!r} is not a run of tensor {name!r} {list(whole.shape)}"
        )
    if tuple(spec.shape) != (stop - start,):
        raise ValidationError(f"piece {spec.name!r} must have shape [{stop - start}]")
    return offset + start, offset + stop


def plan(signature: Sequence[TensorSpec], count: int) -> tuple[Fragment, ...]:
    """Cuts a model into ``count`` fragments of about equal size (``sharding.make_plan``).

    A tensor larger than one fragment's share of the model is split over all
    fragments, so that one large layer (most of a CNN's bytes sit in one or
    two dense layers) does not make one fragment carry most of the model.

    Raises:
      ValueError: More fragments than the model can be cut into.
    """
    share = max(1, sum(s.nbytes for s in signature) // count)
    try:
        cut = sharding.make_plan(signature, count, split_bytes=share)
    except ValueError:
        size = sum(s.size for s in signature)
        raise ValueError(
            f"a model of {len(signature)} tensors and {size} values cannot be cut into "
            f"{count} fragments: use fewer (sync.fragments)"
        ) from None
    return tuple(Fragment.of(cut.runs(k)) for k in range(count))
