"""Benchmark B2, server apply rate: each server optimizer's update, in GB/s of parameters.

For each parameter count (7.7M and 60M float32) and each server optimizer,
in one process:

* **apply**: ``optimizer.apply(params, grad, slots, lr)`` alone, on arrays
  owned by the benchmark;
* **push**: the whole ``ParameterStore.push`` of a store initialized with
  its own instance of the same optimizer: the gradient's finiteness check,
  the update under the lock and the parameters' finiteness check;
* **copy**: ``np.copyto(dst, src)`` of the same number of bytes, timed right
  before each timed apply and each timed push in the same loop, so that the
  reference bandwidth is measured side by side with what it is compared to
  (a copy reads and writes each byte once: the memory system's ceiling for
  a kernel that must both read and write the parameters).

GB/s = parameter bytes (4 * P) / seconds / 1e9 for all three, so ratio
apply/copy = copy seconds / apply seconds. Target (the issue): SGD with
momentum at least 0.3x the copy bandwidth.

Also measured, for the profile: each whole-array numpy expression of SGD
with momentum written the straightforward way (the memory passes a
non-blocked update makes), the parts of ``store.push``, SGD momentum's
apply by block size, and finiteness checks (``np.isfinite(x).all()``
against alternatives).

Measured, never asserted. Usage:

  .venv/bin/python -m benchmarks.apply [--quick]
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from benchmarks import common
from benchmarks.common import fmt, machine_info, stats, timed, verdict
from gasgd_tf.server import optimizers as opt_lib
from gasgd_tf.server.store import ParameterStore
from gasgd_tf.tensors import FlatLayout, TensorSpec, all_finite

SIZES = (7_700_000, 60_000_000)  # Parameters (float32), as the issue names them.
QUICK_SIZES = (7_700_000,)
REPEATS = 7  # Timed samples per cell, after one warm-up.
QUICK_REPEATS = 5
TARGET = 0.3  # SGD with momentum: apply (and push) GB/s >= 0.3x numpy copy GB/s.
TARGET_OPTIMIZER = "sgd_momentum"
LEARNING_RATE = 0.01

# name -> factory, with the optimizers' real constructors (Keras' defaults
# for everything not named).
OPTIMIZERS: dict[str, Callable[[], opt_lib.ServerOptimizer]] = {
    "sgd": lambda: opt_lib.SGD(LEARNING_RATE),
    "sgd_momentum": lambda: opt_lib.SGD(LEARNING_RATE, momentum=0.9),
    "sgd_nesterov": lambda: opt_lib.SGD(LEARNING_RATE, momentum=0.9, nesterov=True),
    "adagrad": lambda: opt_lib.Adagrad(LEARNING_RATE),
    "adadelta": lambda: opt_lib.Adadelta(LEARNING_RATE),
    "rmsprop": lambda: opt_lib.RMSprop(LEARNING_RATE),
    "rmsprop_centered": lambda: opt_lib.RMSprop(LEARNING_RATE, centered=True),
    "adam": lambda: opt_lib.Adam(LEARNING_RATE),
}

# The whole-array passes of SGD with momentum written without blocking, and
# how many float32 arrays of P elements each one reads plus writes (a copy: 2).
SGD_MOMENTUM_PASSES = (
    ("tmp = g * lr", 2),
    ("m *= momentum", 2),
    ("m -= tmp", 3),
    ("w += m", 3),
)
BLOCK_SIZES = (16_384, 65_536, 262_144, 1_048_576, None)  # None: one block, no blocking.


def _gbps(nbytes: int, seconds: list[float]) -> dict:
    return stats([nbytes / s / 1e9 for s in seconds])


class _Copy:
    """The bandwidth reference: ``np.copyto`` of ``size`` float32 values."""

    def __init__(self, size: int, rng: np.random.Generator):
        self.src = rng.standard_normal(size, dtype=np.float32)
        self.dst = np.empty_like(self.src)
        self.seconds: list[float] = []

    def __call__(self) -> None:
        self.seconds.append(timed(lambda: np.copyto(self.dst, self.src)))


def _side_by_side(fn: Callable[[], object], copy: _Copy, repeats: int, nbytes: int) -> dict:
    """Times ``fn`` ``repeats`` times after a warm-up, each right after a copy.

    Returns {"gbps", "copy_gbps", "ratio"} with the ratio of the medians.
    """
    fn()
    copy.seconds = []
    seconds = []
    for _ in range(repeats):
        copy()
        seconds.append(timed(fn))
    result = {"gbps": _gbps(nbytes, seconds), "copy_gbps": _gbps(nbytes, copy.seconds)}
    result["ratio"] = result["gbps"]["median"] / result["copy_gbps"]["median"]
    return result


def _cell(name: str, size: int, grad: np.ndarray, copy: _Copy, repeats: int) -> dict:
    """apply and store.push of one optimizer, interleaved with the copy."""
    rng = np.random.default_rng(1)
    nbytes = 4 * size
    optimizer = OPTIMIZERS[name]()
    params = rng.standard_normal(size, dtype=np.float32)
    slots = optimizer.init_slots(size)

    store = ParameterStore(OPTIMIZERS[name]())
    store.initialize("bench", (TensorSpec("w", (size,)),), params.copy())
    sequence = 0

    def push() -> None:
        # As the servicer calls it: the gradient was checked for NaN/Inf chunk
        # by chunk while it arrived (in cache), so the store does not again.
        nonlocal sequence
        sequence += 1
        store.push("bench", sequence, store.version, grad, known_finite=True)

    def push_checked() -> None:
        # As a direct caller gets it: the store checks the whole gradient first.
        nonlocal sequence
        sequence += 1
        store.push("bench", sequence, store.version, grad)

    def apply() -> None:
        optimizer.apply(params, grad, slots, LEARNING_RATE)

    # One loop, alternating copy, apply, copy, push: all three see the same
    # machine state (frequency, other load) over the same seconds.
    apply()
    push()
    push_checked()
    copy.seconds = []
    apply_s, push_s, checked_s = [], [], []
    for _ in range(repeats):
        copy()
        apply_s.append(timed(apply))
        copy()
        push_s.append(timed(push))
        copy()
        checked_s.append(timed(push_checked))
    cell = {
        "optimizer": name,
        "size": size,
        "config": optimizer.get_config(),
        "apply_gbps": _gbps(nbytes, apply_s),
        "push_gbps": _gbps(nbytes, push_s),
        "push_checked_gbps": _gbps(nbytes, checked_s),
        "copy_gbps": _gbps(nbytes, copy.seconds),
    }
    copy_median = cell["copy_gbps"]["median"]
    cell["apply_ratio"] = cell["apply_gbps"]["median"] / copy_median
    cell["push_ratio"] = cell["push_gbps"]["median"] / copy_median
    cell["push_checked_ratio"] = cell["push_checked_gbps"]["median"] / copy_median
    if name == TARGET_OPTIMIZER:
        cell["target"] = TARGET
        cell["apply_verdict"] = verdict(cell["apply_ratio"], TARGET)
        cell["push_verdict"] = verdict(cell["push_ratio"], TARGET)
    return cell


def _profile(size: int, grad: np.ndarray, copy: _Copy, repeats: int) -> dict:
    """Where SGD momentum's time goes, and how fast a finiteness check can be."""
    rng = np.random.default_rng(2)
    nbytes = 4 * size
    w = rng.standard_normal(size, dtype=np.float32)
    m = np.zeros(size, np.float32)
    tmp = np.empty(size, np.float32)
    lr, momentum = np.float32(LEARNING_RATE), np.float32(0.9)
    expressions = {
        "tmp = g * lr": lambda: np.multiply(grad, lr, out=tmp),
        "m *= momentum": lambda: np.multiply(m, momentum, out=m),
        "m -= tmp": lambda: np.subtract(m, tmp, out=m),
        "w += m": lambda: np.add(w, m, out=w),
    }
    passes = []
    for expression, arrays in SGD_MOMENTUM_PASSES:
        r = _side_by_side(expressions[expression], copy, repeats, nbytes)
        passes.append(
            {
                "expression": expression,
                "arrays_touched": arrays,
                # Time relative to one copy of the parameters.
                "copy_times": 1 / r["ratio"],
                **r,
            }
        )

    # SGD momentum's apply by block size.
    blocks = []
    optimizer = OPTIMIZERS[TARGET_OPTIMIZER]()
    default_block = optimizer.block_size
    slots = optimizer.init_slots(size)
    for block in BLOCK_SIZES:
        optimizer.block_size = block or size
        r = _side_by_side(
            lambda: optimizer.apply(w, grad, slots, LEARNING_RATE), copy, repeats, nbytes
        )
        blocks.append({"block_size": block or size, "default": block == default_block, **r})
    optimizer.block_size = default_block

    # The parts of store.push with SGD momentum: the gradient's check (before
    # the lock), the update with the parameters' check (under it), and the
    # separate pass over the parameters that check replaced.
    layout = FlatLayout((TensorSpec("w", (size,)),))
    parts = {
        "layout.check_finite(grad)": lambda: layout.check_finite(grad),
        "optimizer.apply(...)": lambda: optimizer.apply(w, grad, slots, LEARNING_RATE),
        "optimizer.apply(..., check_finite=True)": (
            lambda: optimizer.apply(w, grad, slots, LEARNING_RATE, check_finite=True)
        ),
        "np.isfinite(params).all()": lambda: np.isfinite(w).all(),
    }
    push_parts = [
        {"part": part, **_side_by_side(fn, copy, repeats, nbytes)} for part, fn in parts.items()
    ]

    # Finiteness checks of one array (all correct: none can overflow or miss
    # a NaN). A dot product with zeros (0 * inf = NaN) is faster still but
    # relies on the BLAS never skipping zeros, so it is left out.
    checks = {
        "`np.isfinite(x).all()`": lambda: np.isfinite(grad).all(),
        "`np.isfinite(x.min()) and np.isfinite(x.max())`": (
            lambda: np.isfinite(grad.min()) and np.isfinite(grad.max())
        ),
        "`tensors.all_finite(x)`: `np.isfinite` by 1 MiB blocks into one bool buffer": (
            lambda: all_finite(grad)
        ),
    }
    finite = [
        {"check": check, **_side_by_side(fn, copy, repeats, nbytes)} for check, fn in checks.items()
    ]
    return {
        "size": size,
        "passes": passes,
        "blocks": blocks,
        "push_parts": push_parts,
        "finite_checks": finite,
    }


def run(quick: bool = False) -> dict:
    """Measures every (size, optimizer) cell and the profile; returns the report."""
    start = time.perf_counter()
    repeats = QUICK_REPEATS if quick else REPEATS
    cells, profiles = [], []
    for size in QUICK_SIZES if quick else SIZES:
        rng = np.random.default_rng(0)
        # Small, like real gradients: no overflow or denormals over the repeats.
        grad = rng.standard_normal(size, dtype=np.float32) * np.float32(1e-3)
        copy = _Copy(size, rng)
        for name in OPTIMIZERS:
            cell = _cell(name, size, grad, copy, repeats)
            print(
                f"{size:>11,} {name:<17} apply {fmt(cell['apply_gbps'])} GB/s "
                f"push {fmt(cell['push_gbps'])} GB/s copy {fmt(cell['copy_gbps'])} GB/s "
                f"ratios {cell['apply_ratio']:.2f} {cell['push_ratio']:.2f}",
                flush=True,
            )
            cells.append(cell)
        profiles.append(_profile(size, grad, copy, repeats))
        del grad, copy
    return dict(
        machine=machine_info(),
        command="python -m benchmarks.apply" + (" --quick" if quick else ""),
        repeats=repeats,
        total_s=time.perf_counter() - start,
        target={"optimizer": TARGET_OPTIMIZER, "ratio": TARGET},
        cells=cells,
        profiles=profiles,
    )


def _mparams(size: int) -> str:
    return f"{size / 1e6:g}M"


def markdown(report: dict) -> str:
    """The report's section of BENCHMARKS.md: the table, the profile and the verdict."""
    m = report["machine"]
    lines = [
        f"`{report['command']}` on {m.get('cpu_model', m['processor'])} "
        f"({m['cpu_count']} cores), numpy {m['numpy']}, {m['date']}; "
        f"{report['repeats']} samples per cell after a warm-up, median [min-max].",
        "",
        "GB/s = 4 x parameters / seconds. **apply**: `optimizer.apply(params, grad, slots, lr)`; "
        "**push**: `ParameterStore.push` as the servicer calls it (apply under the lock + the "
        "parameters' finiteness check; the gradient was checked chunk by chunk as it arrived); "
        "**push+check**: `ParameterStore.push` called directly, which first checks the whole "
        "gradient; **copy**: `np.copyto` of the same bytes, timed before each of them in the "
        f"same loop. Ratios are of the medians. Target: SGD with momentum >= {TARGET}x copy.",
        "",
        "| optimizer | params | apply GB/s | push GB/s | push+check GB/s | copy GB/s "
        "| apply/copy | push/copy | push+check/copy | target | verdict |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    misses = []
    for c in report["cells"]:
        target = verdict_text = ""
        if "target" in c:
            target = f">= {c['target']}x"
            verdict_text = f"apply: {c['apply_verdict']}; push: {c['push_verdict']}"
            for what in ("apply", "push"):
                if c[f"{what}_verdict"] != "met":
                    misses.append((what, c))
        lines.append(
            f"| {c['optimizer']} | {_mparams(c['size'])} | {fmt(c['apply_gbps'])} "
            f"| {fmt(c['push_gbps'])} | {fmt(c['push_checked_gbps'])} | {fmt(c['copy_gbps'])} "
            f"| {c['apply_ratio']:.2f} | {c['push_ratio']:.2f} | {c['push_checked_ratio']:.2f} "
            f"| {target} | {verdict_text} |"
        )
    lines += ["", "### Profile: SGD with momentum", ""]
    for p in report["profiles"]:
        lines += _profile_tables(p)
    lines += _misses(report, misses)
    return "\n".join(lines)


def _profile_tables(p: dict) -> list[str]:
    """One profile's tables: unblocked passes, block sizes, parts of push, finiteness checks."""
    lines: list[str] = []
    size = _mparams(p["size"])
    lines += [
        f"Whole-array numpy passes of the update written without blocking, {size} "
        "parameters (arrays touched = float32 arrays of P elements read + written; "
        "a copy touches 2):",
        "",
        "| expression | arrays touched | GB/s | copy GB/s | time / copy time |",
        "|---|---:|---:|---:|---:|",
    ]
    total = 0.0
    for r in p["passes"]:
        total += r["copy_times"]
        lines.append(
            f"| `{r['expression']}` | {r['arrays_touched']} | {fmt(r['gbps'])} "
            f"| {fmt(r['copy_gbps'])} | {r['copy_times']:.2f} |"
        )
    lines += [
        f"| all four | {sum(a for _, a in SGD_MOMENTUM_PASSES)} | | | {total:.2f} |",
        "",
    ]
    lines += [
        f"`SGD(momentum=0.9).apply` by `block_size` (elements; {p['size']:,}: one block, "
        f"no blocking), {size} parameters:",
        "",
        "| block_size | apply GB/s | copy GB/s | apply/copy |",
        "|---:|---:|---:|---:|",
    ]
    for r in p["blocks"]:
        mark = " (default)" if r["default"] else ""
        lines.append(
            f"| {r['block_size']:,}{mark} | {fmt(r['gbps'])} | {fmt(r['copy_gbps'])} "
            f"| {r['ratio']:.2f} |"
        )
    lines.append("")
    lines += [
        f"Parts of `store.push` (SGD momentum), {size} parameters; `store.push` runs the "
        "first and the third:",
        "",
        "| part | GB/s | copy GB/s | time / copy time |",
        "|---|---:|---:|---:|",
    ]
    for r in p["push_parts"]:
        lines.append(
            f"| `{r['part']}` | {fmt(r['gbps'])} | {fmt(r['copy_gbps'])} | {1 / r['ratio']:.2f} |"
        )
    lines += [
        "",
        f"Finiteness checks of one array, {size} parameters:",
        "",
        "| check | GB/s | copy GB/s | time / copy time |",
        "|---|---:|---:|---:|",
    ]
    for r in p["finite_checks"]:
        lines.append(
            f"| {r['check']} | {fmt(r['gbps'])} | {fmt(r['copy_gbps'])} | {1 / r['ratio']:.2f} |"
        )
    lines.append("")
    return lines


def _misses(report: dict, misses: list[tuple[str, dict]]) -> list[str]:
    """Missed targets: by how much, where the push's time goes, what would close the gap."""
    if not misses:
        return []
    lines: list[str] = []
    lines += ["### Missed targets", ""]
    profiles = {p["size"]: p for p in report["profiles"]}
    for what, c in misses:
        ratio = c[f"{what}_ratio"]
        line = (
            f"- {c['optimizer']} {what}, {_mparams(c['size'])}: {ratio:.2f}x copy, "
            f"{c[f'{what}_verdict']} (target {c['target']}x)."
        )
        parts = {r["part"]: 1 / r["ratio"] for r in profiles[c["size"]]["push_parts"]}
        if what == "push" and len(parts) == 4:
            grad_check, update, checked, separate = parts.values()
            line += (
                f" In copy times: the gradient's check {grad_check:.2f} (before the lock), "
                f"the update {update:.2f} plus {checked - update:.2f} for the parameters' "
                f"check fused into it (a separate pass took {separate:.2f}). Under the "
                f"lock, which is what serialises pushes from several clients, a push "
                f"runs at {1 / checked:.2f}x copy."
            )
        lines.append(line)
    lines += [
        "",
        "Where the time goes: numpy runs each operation of an update as its own loop, "
        "so the update is as fast as blocking makes it: each block's operands stay in "
        "cache and memory sees each of w, g and m read once and w and m written once "
        "(5 arrays against the copy's 2: at most 0.4x); the finiteness checks add a "
        "read of the gradient before the update and a pass over each block of "
        "parameters in cache. What would close the push gap: check the gradient chunk "
        "by chunk as the servicer receives it (each chunk is in cache then), which "
        "takes most of the gradient's check out of `push`; or one compiled loop "
        "(numba, Cython, a C extension: a dependency the numpy-only server does not "
        "have) doing the update and both checks in one pass over memory; or running "
        "the blocks on two threads (numpy releases the GIL), taking cores from the "
        "gRPC threads.",
        "",
    ]
    return lines


def main(argv: list[str] | None = None) -> None:
    """``python -m benchmarks.apply [--quick] [--out=PATH]``."""
    common.main(
        "apply",
        run,
        doc=__doc__,
        markdown=markdown,
        quick="7.7M parameters only, 5 repeats",
        argv=argv,
    )


if __name__ == "__main__":
    main()
