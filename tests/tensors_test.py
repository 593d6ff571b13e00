"""Tests for the flat-buffer layout, chunking and reassembly (gasgd_tf.tensors)."""

import numpy as np
import pytest

from gasgd_tf.tensors import (
    ChunkAssembler,
    FlatLayout,
    TensorSpec,
    ValidationError,
    check_same_specs,
    iter_chunks,
)

SPECS = (TensorSpec("a", (3, 4)), TensorSpec("b", (5,)), TensorSpec("c", ()))


def test_layout_offsets_and_views_share_memory():
    layout = FlatLayout(SPECS)
    assert layout.offsets == (0, 12, 17, 18)
    assert layout.nbytes == 18 * 4
    flat = np.arange(18, dtype=np.float32)
    views = layout.views(flat)
    assert views["a"].shape == (3, 4) and views["c"].shape == ()
    views["b"][...] = -1  # Views write through to the flat buffer.
    np.testing.assert_array_equal(flat[12:17], -1)


def test_flatten_roundtrip():
    layout = FlatLayout(SPECS)
    arrays = {s.name: np.asarray(np.random.rand(*s.shape), np.float32) for s in SPECS}
    views = layout.views(layout.flatten(arrays))
    for name, value in arrays.items():
        np.testing.assert_array_equal(views[name], value)


def test_layout_rejects_duplicates_and_other_dtypes():
    with pytest.raises(ValidationError, match="'a' appears twice"):
        FlatLayout([TensorSpec("a", (1,)), TensorSpec("a", (2,))])
    with pytest.raises(ValidationError, match="'x': dtype float64 is not accepted"):
        FlatLayout([TensorSpec("x", (1,), "float64")])
    with pytest.raises(ValidationError, match="unknown dtype"):
        TensorSpec("x", (1,), "int8")


@pytest.mark.parametrize(
    "got, message",
    [
        (SPECS[:2], "missing tensor 'c'"),
        ((*SPECS, TensorSpec("d", (1,))), "unknown tensor 'd'"),
        ((TensorSpec("a", (4, 3)), *SPECS[1:]), r"'a' has shape \[4, 3\], expected \[3, 4\]"),
        ((SPECS[0], TensorSpec("b", (5,), "float16"), SPECS[2]), "'b' has dtype float16"),
        ((SPECS[1], SPECS[0], SPECS[2]), "'b' is at position 0"),
    ],
)
def test_check_same_specs_names_the_tensor(got, message):
    with pytest.raises(ValidationError, match=message):
        check_same_specs(SPECS, got)
    check_same_specs(SPECS, SPECS)  # The same signature passes.


def test_check_finite_names_the_tensor():
    layout = FlatLayout(SPECS)
    flat = np.zeros(layout.size, np.float32)
    layout.check_finite(flat)
    flat[13] = np.inf
    with pytest.raises(ValidationError, match="'b' has 1 non-finite"):
        layout.check_finite(flat)


def test_chunks_reassemble_byte_exact():
    layout = FlatLayout([TensorSpec("big", (1000, 7)), TensorSpec("small", (3,))])
    flat = np.random.rand(layout.size).astype(np.float32)
    assembler = ChunkAssembler(layout, max_chunk_bytes=4096)
    chunks = list(iter_chunks(flat.data, 4096))
    assert all(len(data) <= 4096 for _, data in chunks) and len(chunks) == 7
    for offset, data in chunks:
        assembler.add(offset, data)
    assert assembler.finish().tobytes() == flat.tobytes()


def test_assembler_rejects_gaps_oversize_overflow_and_truncation():
    layout = FlatLayout(SPECS)
    assembler = ChunkAssembler(layout, max_chunk_bytes=32)
    with pytest.raises(ValidationError, match="out of order"):
        assembler.add(8, b"\0" * 8)
    with pytest.raises(ValidationError, match="exceeds the limit"):
        assembler.add(0, b"\0" * 64)
    assembler.add(0, b"\0" * 32)
    assembler.add(32, b"\0" * 32)
    with pytest.raises(ValidationError, match="run past the end"):
        assembler.add(64, b"\0" * 32)
    # 64 of 72 bytes: the stream stopped inside tensor 'b'.
    with pytest.raises(ValidationError, match="truncated stream.*'b' is incomplete"):
        assembler.finish()


def test_sizes_are_exact_and_bounded_before_allocation():
    # 2**32 x 2**32 wraps to 0 in int64 arithmetic; Python integers do not.
    huge = TensorSpec("w", (2**32, 2**32))
    assert huge.size == 2**64
    with pytest.raises(ValidationError, match=r"exceed the limit of 1024 bytes \(largest: 'w'"):
        FlatLayout([huge], max_bytes=1024)
    assert FlatLayout([TensorSpec("b", (16, 16))], max_bytes=1024).nbytes == 1024


def test_assembler_checks_values_as_chunks_arrive():
    layout = FlatLayout([TensorSpec("w", (1000,))])
    flat = np.random.rand(layout.size).astype(np.float32)
    assembler = ChunkAssembler(layout, max_chunk_bytes=1024)
    for offset, data in iter_chunks(flat.data, 1024):
        assembler.add(offset, data)
    assert assembler.finish().tobytes() == flat.tobytes() and assembler.all_finite

    flat[999] = np.nan
    assembler = ChunkAssembler(layout, max_chunk_bytes=1024)
    for offset, data in iter_chunks(flat.data, 1024):
        assembler.add(offset, data)
    assembler.finish()
    assert not assembler.all_finite

    # Chunks off element boundaries are not checked here: "not known finite".
    assembler = ChunkAssembler(layout, max_chunk_bytes=1024)
    for offset, data in iter_chunks(np.ones(1000, np.float32).data, 1022):
        assembler.add(offset, data)
    assembler.finish()
    assert not assembler.all_finite
