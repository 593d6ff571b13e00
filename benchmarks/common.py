"""What every benchmark shares: timing, summaries, machine info, results files.

Each benchmark module ``benchmarks/<name>.py`` has
  ``run(quick: bool = False) -> dict``   measures and returns a JSON-able report
                                         (``machine``, ``command``, numbers);
  ``markdown(report: dict) -> str``      the report's section of BENCHMARKS.md;
and runs alone as ``python -m benchmarks.<name> [--quick]``, writing
``benchmarks/results/<name>.json``. ``benchmarks/run_all.py`` (``make bench``)
runs them all and rewrites BENCHMARKS.md from the reports.

Measured, never asserted: targets are compared in the tables, not in tests.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def timed(fn: Callable[[], object]) -> float:
    """Seconds one call of ``fn`` takes."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def stats(values: list[float]) -> dict:
    """{"values", "median", "min", "max"} of a list of samples."""
    return {
        "values": list(values),
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
    }


def _num(value: float, digits: int) -> str:
    """``digits`` significant digits, but whole numbers (1,234) from 1,000 on, never 1.23e+03."""
    return f"{value:,.0f}" if abs(value) >= 10 ** (digits - 1) * 10 else f"{value:.{digits}g}"


def fmt(s: dict, scale: float = 1.0, digits: int = 3) -> str:
    """'median [min-max]' of a ``stats`` dict, times ``scale``, ``digits`` significant."""
    median, low, high = (_num(s[k] * scale, digits) for k in ("median", "min", "max"))
    return f"{median} [{low}-{high}]"


def machine_info() -> dict:
    """The machine and library versions, recorded next to every result."""
    import grpc
    import numpy as np

    info = {
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": sys.version.split()[0],
        "grpcio": grpc.__version__,
        "numpy": np.__version__,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        if names:
            info["cpu_model"] = names[0]
    except OSError:
        pass
    return info


def write_report(name: str, report: dict) -> str:
    """Writes ``benchmarks/results/<name>.json``; returns its path."""
    os.makedirs(RESULTS_DIR, exist_ok=True)
    path = os.path.join(RESULTS_DIR, f"{name}.json")
    with open(path, "w") as f:
        json.dump(report, f, indent=1)
    return path


def read_report(name: str) -> dict | None:
    """The last report of benchmark ``name``, or None."""
    try:
        with open(os.path.join(RESULTS_DIR, f"{name}.json")) as f:
            return json.load(f)
    except FileNotFoundError:
        return None


def main(name: str, run, markdown, argv: list[str]) -> None:
    """A benchmark's command line: ``[--quick]``; writes its report and prints its table."""
    report = run(quick="--quick" in argv)
    path = write_report(name, report)
    print(markdown(report))
    print(f"wrote {path}")


def verdict(value: float, target: float, higher_is_better: bool = True) -> str:
    """'met' or 'missed by N%' for a ratio against its target."""
    ok = value >= target if higher_is_better else value <= target
    if ok:
        return "met"
    miss = (target - value) / target if higher_is_better else (value - target) / target
    return f"missed by {miss:.0%}"
