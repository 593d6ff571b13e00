"""Which parameters each shard of a sharded parameter server holds (numpy only).

With ``ps.num_shards = K`` the parameters are spread over K ordinary
parameter servers, as in DistBelief: each shard is a ParameterStore holding
some of the tensors, applying its part of every push and versioning it on
its own. The server needs no notion of sharding; the clients split and
reassemble, and every client derives the same plan from the model's
signature, ``K`` and ``split_bytes``:

1. Every tensor above ``split_bytes`` is cut into K near-equal contiguous
   runs of its flattened elements, one per shard, so that no shard carries
   a whole large layer (AlexNet's fc6 alone is 60% of the model).
2. The other tensors go whole, largest first, to the shard holding the
   fewest elements so far (greedy size balancing; ties to the lower index).
3. Within a shard, pieces keep the order they have in the full buffer, so
   each shard's part of a flat buffer is a few long runs of it.

A piece of a split tensor is a 1-D tensor on its shard named
``<name>@<start>:<stop>:<shape>`` (elements ``start``..``stop`` of the
row-major flattening of tensor ``name`` of shape ``d0xd1x...``), so shard
checkpoints can be merged back into whole tensors without the model; see
``checkpoints.load``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from gasgd_tf import config_base
from gasgd_tf.tensors import FlatLayout, TensorSpec

# Every client of a sharded server must use the same value (ps.shard_split_bytes).
DEFAULT_SPLIT_BYTES = config_base.defaults().ps.shard_split_bytes
_PIECE_SEPARATOR = "@"


@dataclasses.dataclass(frozen=True)
class Piece:
    """A run of one tensor's elements that one shard holds.

    Attributes:
      spec: The whole tensor.
      start: First element (of the flattened tensor) in the piece.
      stop: One past the last element.
      offset: Element offset of the tensor in the full flat buffer.
    """

    spec: TensorSpec
    start: int
    stop: int
    offset: int

    @property
    def whole(self) -> bool:
        return self.start == 0 and self.stop == self.spec.size

    @property
    def shard_spec(self) -> TensorSpec:
        """The tensor as its shard stores it."""
        if self.whole:
            return self.spec
        return TensorSpec(piece_name(self.spec, self.start, self.stop), (self.stop - self.start,))

    @property
    def flat_range(self) -> tuple[int, int]:
        """Elements [begin, end) of the full flat buffer that this piece is."""
        return self.offset + self.start, self.offset + self.stop


def piece_name(spec: TensorSpec, start: int, stop: int) -> str:
    """The shard-side name of elements ``start``..``stop`` of ``spec``."""
    shape = "x".join(str(d) for d in spec.shape)
    return f"{spec.name}{_PIECE_SEPARATOR}{start}:{stop}:{shape}"


def parse_piece_name(name: str) -> tuple[str, int, int, tuple[int, ...]] | None:
    """(tensor name, start, stop, tensor shape) of a piece name; None for a whole tensor."""
    base, sep, rest = name.rpartition(_PIECE_SEPARATOR)
    if not sep:
        return None
    fields = rest.split(":")
    if len(fields) != 3 or not fields[0].isdigit() or not fields[1].isdigit():
        return None
    try:
        shape = tuple(int(d) for d in fields[2].split("x")) if fields[2] else ()
    except ValueError:
        return None
    return base, int(fields[0]), int(fields[1]), shape


@dataclasses.dataclass(frozen=True)
class ShardPlan:
    """Where every tensor of a signature lives among ``num_shards`` shards.

    Attributes:
      specs: The full signature, in the model's order.
      pieces: For each shard, its pieces in full-buffer order.
    """

    specs: tuple[TensorSpec, ...]
    pieces: tuple[tuple[Piece, ...], ...]

    @property
    def num_shards(self) -> int:
        return len(self.pieces)

    @property
    def size(self) -> int:
        """Elements in the full flat buffer."""
        return sum(s.size for s in self.specs)

    def shard_specs(self, shard: int) -> tuple[TensorSpec, ...]:
        """The signature shard ``shard`` stores."""
        return tuple(p.shard_spec for p in self.pieces[shard])

    def runs(self, shard: int) -> tuple[tuple[int, int], ...]:
        """The element ranges of the full buffer that make up the shard's buffer, in order.

        Adjacent pieces are merged, so a shard's part of a flat buffer is
        read or written as a few long runs.
        """
        runs: list[list[int]] = []
        for piece in self.pieces[shard]:
            begin, end = piece.flat_range
            if runs and runs[-1][1] == begin:
                runs[-1][1] = end
            else:
                runs.append([begin, end])
        return tuple((b, e) for b, e in runs)

    def shard_sizes(self) -> tuple[int, ...]:
        return tuple(sum(p.stop - p.start for p in pieces) for pieces in self.pieces)


def make_plan(
    specs: Sequence[TensorSpec], num_shards: int, split_bytes: int = DEFAULT_SPLIT_BYTES
) -> ShardPlan:
    """Assigns the tensors of ``specs`` to ``num_shards`` shards (see the module docstring).

    Raises:
      ValueError: ``num_shards`` < 1, or a shard would get nothing (fewer
        tensors than shards and none above ``split_bytes``).
    """
    if num_shards < 1:
        raise ValueError(f"num_shards must be >= 1, got {num_shards}")
    if split_bytes < 1:
        raise ValueError(f"split_bytes must be >= 1, got {split_bytes}")
    specs = tuple(specs)
    offsets = FlatLayout(specs).offsets
    shards: list[list[Piece]] = [[] for _ in range(num_shards)]
    loads = [0] * num_shards
    whole = []
    for index, spec in enumerate(specs):
        if num_shards > 1 and spec.nbytes > split_bytes and spec.size >= num_shards:
            bounds = [spec.size * k // num_shards for k in range(num_shards + 1)]
            for k in range(num_shards):
                shards[k].append(Piece(spec, bounds[k], bounds[k + 1], offsets[index]))
                loads[k] += bounds[k + 1] - bounds[k]
        else:
            whole.append(index)
    for index in sorted(whole, key=lambda i: (-specs[i].size, i)):
        k = min(range(num_shards), key=lambda j: (loads[j], j))
        shards[k].append(Piece(specs[index], 0, specs[index].size, offsets[index]))
        loads[k] += specs[index].size
    empty = [k for k, pieces in enumerate(shards) if not pieces]
    if empty:
        raise ValueError(
            f"{num_shards} shards for {len(specs)} tensors: shard {empty[0]} would hold nothing; "
            f"use fewer shards or a smaller ps.shard_split_bytes (now {split_bytes})"
        )
    ordered = tuple(tuple(sorted(p, key=lambda piece: piece.flat_range)) for p in shards)
    return ShardPlan(specs, ordered)
