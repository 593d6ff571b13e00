"""What every benchmark shares: its command line, timing, summaries, machine info, results files.

Each benchmark module ``benchmarks/<name>.py`` has
  ``run(quick: bool = False, ...) -> dict``  measures and returns a JSON-able report
                                             (``machine``, ``command``, numbers);
  ``markdown(report: dict) -> str``          the report's section of BENCHMARKS.md;
  ``main(argv: list[str] | None = None)``    its command line, through ``common.main``:
and runs alone as ``python -m benchmarks.<name> [--quick] [--out=PATH]``, writing
``benchmarks/results/<name>.json``; ``--help`` prints its usage (the module's
docstring and its options) and runs nothing. ``benchmarks/run_all.py``
(``make bench``) runs them all and rewrites BENCHMARKS.md from the reports.

Measured, never asserted: targets are compared in the tables, not in tests.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import NoReturn

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
    return write_json(os.path.join(RESULTS_DIR, f"{name}.json"), report)


def read_report(name: str) -> dict | None:
    """The last report of benchmark ``name``, or None."""
    try:
        with open(os.path.join(RESULTS_DIR, f"{name}.json")) as f:
            return json.load(f)
    except FileNotFoundError:
        return None


def write_json(path: str, report: dict) -> str:
    """Writes ``report`` to ``path`` as indented JSON, creating its folder; returns the path."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        json.dump(report, f, indent=1)
    return path


# -- The command line that every benchmark shares ------------------------------


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad argument in one line, ``error: ...``, and exits with status 2.

    argparse's own ``error`` prints the whole usage first; one line is easier
    to find in ``make bench``'s long output.
    """

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {self.prog}: {message} (see --help)\n")


def comma_list(
    item: Callable[[str], object] = str, choices: Sequence[object] | None = None
) -> Callable[[str], list]:
    """An argparse ``type`` for ``a,b,c``: the list of ``item(part)``, empty parts skipped.

    Args:
      item: Converts one part (``int``, ``float``, or a checker that raises
        ValueError).
      choices: The allowed values; None: any.

    Returns:
      The converter. A part that ``item`` refuses or that is not among
      ``choices`` becomes one ``error: ... argument --flag: ...`` line.
    """

    def parse(text: str) -> list:
        values = []
        for part in filter(None, (p.strip() for p in text.split(","))):
            try:
                value = item(part)
            except ValueError as e:
                raise argparse.ArgumentTypeError(f"{part!r}: {e}") from None
            if choices is not None and value not in choices:
                known = ", ".join(map(str, choices))
                raise argparse.ArgumentTypeError(f"unknown {part!r}; choose from {known}")
            values.append(value)
        return values

    return parse


def parser(
    name: str,
    doc: str | None,
    *,
    quick: str | None = None,
    flags: Callable[[argparse.ArgumentParser], None] | None = None,
    report: bool = True,
) -> argparse.ArgumentParser:
    """The command line of ``python -m benchmarks.<name>``.

    Args:
      name: The module's name under ``benchmarks/``.
      doc: The module's docstring: what ``--help`` prints above the options,
        as written.
      quick: The help of ``--quick``; None: the benchmark has no ``--quick``.
      flags: Adds the benchmark's own options (``parser.add_argument``).
      report: Whether the benchmark writes a JSON report; ``--out`` says where.

    Returns:
      The parser; its ``error`` prints one ``error: ...`` line and exits 2.
    """
    p = _Parser(
        prog=f"python -m benchmarks.{name}",
        description=doc,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    if quick is not None:
        p.add_argument("--quick", action="store_true", help=quick)
    if report:
        p.add_argument(
            "--out",
            metavar="PATH",
            default=os.path.join(RESULTS_DIR, f"{name}.json"),
            help=f"the JSON report (default benchmarks/results/{name}.json; --out= writes none)",
        )
    if flags is not None:
        flags(p)
    return p


def main(
    name: str,
    run: Callable[..., dict | None],
    *,
    doc: str | None,
    markdown: Callable[[dict], str] | None = None,
    quick: str | None = None,
    flags: Callable[[argparse.ArgumentParser], None] | None = None,
    report: bool = True,
    argv: Sequence[str] | None = None,
) -> None:
    """A benchmark's command line: parses ``argv``, calls ``run``, prints and writes its report.

    Every option but ``--out`` (``--quick`` and those that ``flags`` adds)
    reaches ``run`` as the keyword argument of the same name, so an option is
    named once, the same on the command line and in Python. ``--help``
    prints the usage and exits 0 before ``run`` is called; a bad argument
    prints one ``error: ...`` line and exits 2.

    Args:
      name: The module's name under ``benchmarks/``; the report goes to
        ``benchmarks/results/<name>.json`` unless ``--out`` says otherwise.
      run: Measures; returns the report, or None when there is nothing to
        print or write (a child process's mode, or ``run_all``).
      doc: The module's docstring, for ``--help``.
      markdown: Renders the report for the terminal; None: indented JSON.
      quick, flags, report: As for ``parser``.
      argv: The arguments; None: ``sys.argv[1:]``.
    """
    args = vars(parser(name, doc, quick=quick, flags=flags, report=report).parse_args(argv))
    out = args.pop("out", None)
    start = time.perf_counter()
    result = run(**args)
    if result is None:
        return
    print(markdown(result) if markdown else json.dumps(result, indent=2))
    wrote = f"; wrote {write_json(out, result)}" if out else ""
    print(f"total {time.perf_counter() - start:.0f} s{wrote}", flush=True)


def verdict(value: float, target: float, higher_is_better: bool = True) -> str:
    """'met' or 'missed by N%' for a ratio against its target."""
    ok = value >= target if higher_is_better else value <= target
    if ok:
        return "met"
    miss = (target - value) / target if higher_is_better else (value - target) / target
    return f"missed by {miss:.0%}"
