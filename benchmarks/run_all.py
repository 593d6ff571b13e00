"""``make bench``: runs every benchmark, one after another, and rewrites BENCHMARKS.md's tables.

Each benchmark runs alone (nothing else of ours on the machine), writes
``benchmarks/results/<name>.json``, and its table replaces the text between
``<!-- begin:<name> -->`` and ``<!-- end:<name> -->`` in BENCHMARKS.md. The
prose around the markers (what the numbers mean, profiles, what would close
a gap) is written by hand from a run and stays as it is.

Usage:
  python -m benchmarks.run_all [--quick] [--only=cycle,apply,...] [--tables_only]

``--tables_only`` rewrites the tables from the saved results without
running anything.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import time

from benchmarks import common

# In the order they run: cheap and quiet first.
BENCHMARKS = (
    "codec_speed",
    "scale_table",  # After codec_speed: it reads its rates.
    "cycle",
    "apply",
    "server_capacity",
    "worker_throughput",
    "versus_tf",
)
BENCHMARKS_MD = os.path.join(os.path.dirname(common.RESULTS_DIR), os.pardir, "BENCHMARKS.md")


def replace_section(text: str, name: str, table: str) -> str:
    """``text`` with the block between ``name``'s markers replaced by ``table``.

    Raises:
      ValueError: The markers are missing.
    """
    begin, end = f"<!-- begin:{name} -->", f"<!-- end:{name} -->"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.DOTALL)
    if not pattern.search(text):
        raise ValueError(f"BENCHMARKS.md has no {begin} ... {end} block")
    return pattern.sub(lambda _: f"{begin}\n{table.strip()}\n{end}", text)


def rewrite_tables(names: tuple[str, ...], path: str = BENCHMARKS_MD) -> None:
    """Puts each saved report's table between its markers in BENCHMARKS.md."""
    with open(path) as f:
        text = f.read()
    for name in names:
        report = common.read_report(name)
        if report is None:
            print(f"no results for {name}: its table is unchanged", flush=True)
            continue
        module = importlib.import_module(f"benchmarks.{name}")
        text = replace_section(text, name, module.markdown(report))
    with open(path, "w") as f:
        f.write(text)


def run(quick: bool, only: list[str], tables_only: bool) -> None:
    """Runs the benchmarks in ``only`` one after another (unless ``tables_only``), rewrites tables.

    Each report goes to ``benchmarks/results/<name>.json`` as it is made, so
    a failure later keeps the earlier ones.
    """
    names = tuple(only)
    if not tables_only:
        start = time.perf_counter()
        for name in names:
            print(f"== {name} ==", flush=True)
            began = time.perf_counter()
            module = importlib.import_module(f"benchmarks.{name}")
            report = module.run(quick=quick)
            common.write_report(name, report)
            print(f"== {name}: {time.perf_counter() - began:.0f} s ==", flush=True)
        print(f"all benchmarks: {time.perf_counter() - start:.0f} s", flush=True)
    rewrite_tables(names)
    print(f"rewrote the tables in {os.path.normpath(BENCHMARKS_MD)}", flush=True)


def _flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--only",
        type=common.comma_list(choices=BENCHMARKS),
        default=list(BENCHMARKS),
        metavar=",".join(BENCHMARKS),
        help="the benchmarks to run, in this order (default all)",
    )
    parser.add_argument(
        "--tables_only",
        action="store_true",
        help="run nothing: rewrite the tables from the saved results",
    )


def main(argv: list[str] | None = None) -> None:
    """``python -m benchmarks.run_all [--quick] [--only=cycle,apply,...] [--tables_only]``."""
    # Writes each benchmark's own report; nothing of its own (no --out).
    common.main(
        "run_all",
        run,
        doc=__doc__,
        quick="each benchmark's --quick: a short pass",
        flags=_flags,
        report=False,
        argv=argv,
    )


if __name__ == "__main__":
    main()
