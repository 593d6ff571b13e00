"""make bench's plumbing: every benchmark renders its saved report; tables land between markers;
every script answers --help without running anything, through one shared command line."""

import importlib
import importlib.util
import os
import pkgutil
import subprocess
import sys
import time

import pytest

import benchmarks
from benchmarks import common, cycle, run_all
from benchmarks import server_capacity as capacity

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Modules of benchmarks/ that are libraries of the scripts, without a command line.
LIBRARIES = {
    "chaos",  # faults.py --chaos
    "common",
    "servers",
    "server_capacity.clients",
    "server_capacity.cpu_profile",
    "server_capacity.memory",
    "server_capacity.models",
    "server_capacity.procfs",
    "server_capacity.updates",
}


def _modules() -> list[str]:
    """Every module under benchmarks/ ("cycle", "server_capacity.memory", ...), from the folder."""
    names = [m.name for m in pkgutil.walk_packages(benchmarks.__path__, "benchmarks.")]
    return sorted(n.removeprefix("benchmarks.") for n in names if not n.endswith(".__main__"))


SCRIPTS = [name for name in _modules() if name not in LIBRARIES]


def _table_rows(text: str, header_start: str) -> list[list[str]]:
    """The cells of each body row of the Markdown table whose header starts so."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


@pytest.mark.parametrize("name", run_all.BENCHMARKS)
def test_every_benchmark_renders_its_committed_results(name):
    module = importlib.import_module(f"benchmarks.{name}")
    assert callable(module.run)
    report = common.read_report(name)
    assert report is not None, f"benchmarks/results/{name}.json is missing"
    table = module.markdown(report)
    assert "|---" in table  # A Markdown table.


def test_a_rendered_table_shows_the_numbers_it_was_given():
    # B1's table: times in ms as "median [min-max]" to 3 significant digits
    # (common.fmt), GB/s and ratios to 2 decimals, the verdict against TARGET.
    def s(median, low, high):
        return {"median": median, "min": low, "max": high}

    cell = {
        "size": "7.7M",
        "dtype": "float32",
        "shards": 1,
        "push_s": s(0.0123, 0.0120, 0.0131),
        "fetch_s": s(0.04567, 0.04, 0.05),
        "cycle_s": s(0.05801, 0.0552, 0.0613),
        "floor_s": s(0.0214, 0.021, 0.0222),
        "floor_gbps": 2.876,
        "ratio": 2.7107,
    }
    report = {"command": "python -m benchmarks.cycle", "repeats": 5, "cells": [cell]}
    rows = _table_rows(cycle.markdown(report), "| parameters |")
    assert rows == [
        [
            "7.7M",
            "float32",
            "1",
            "12.3 [12-13.1]",
            "45.7 [40-50]",
            "58 [55.2-61.3]",
            "21.4 [21-22.2]",
            "2.88",
            "2.71",
            "<= 2.0: missed by 36%",
        ]
    ]


def test_server_capacity_tables_show_the_report_numbers():
    report = common.read_report("server_capacity")
    text = capacity.markdown(report)
    rows = _table_rows(text, "| clients | 1 shard updates/s |")
    assert [r[0] for r in rows] == [str(r["clients"]) for r in report["rows"]]
    for cells, row in zip(rows, report["rows"]):
        assert cells[1] == common.fmt(row["shards_1"]["updates_per_s"])
        assert cells[2] == common.fmt(row["shards_2"]["updates_per_s"])
        assert cells[3] == f"{row['ratio']:.2f}"
        assert cells[5] == row["verdict"]
    memory_rows = _table_rows(text, "| case | cycles |")
    mib = 1 << 20
    for cells, case in zip(memory_rows, report["memory"]["cases"], strict=True):
        assert cells[0] == case["case"]
        assert cells[3] == f"{case['peak'] / mib:,.0f}"  # Peak, in MiB.
        assert cells[6] == f"{case['extra_copies']:.2f}"


def test_tables_replace_only_their_own_section():
    text = (
        "intro\n<!-- begin:a -->\nold a\n<!-- end:a -->\n"
        "middle\n<!-- begin:b -->\nold b\n<!-- end:b -->\n"
    )
    out = run_all.replace_section(text, "a", "| new |")
    assert "| new |" in out and "old a" not in out and "old b" in out and "middle" in out
    with pytest.raises(ValueError, match="no <!-- begin:c -->"):
        run_all.replace_section(text, "c", "x")


def test_benchmarks_md_has_a_section_for_every_benchmark():
    with open(run_all.BENCHMARKS_MD) as f:
        text = f.read()
    for name in run_all.BENCHMARKS:
        assert f"<!-- begin:{name} -->" in text and f"<!-- end:{name} -->" in text


def test_numbers_are_formatted_without_exponents():
    assert common.fmt({"median": 2958.2, "min": 2950.0, "max": 2970.0}) == "2,958 [2,950-2,970]"
    assert common.fmt({"median": 0.136, "min": 0.122, "max": 0.165}) == "0.136 [0.122-0.165]"
    assert common.verdict(0.95, 1.0) == "missed by 5%"
    assert common.verdict(3.0, 2.0, higher_is_better=False) == "missed by 50%"


# -- The shared command line ----------------------------------------------------


def _runs_with_python_m(name: str) -> bool:
    """Whether ``python -m benchmarks.<name>`` does something: a __main__ block or package."""
    spec = importlib.util.find_spec(f"benchmarks.{name}")
    if spec.submodule_search_locations:
        return importlib.util.find_spec(f"benchmarks.{name}.__main__") is not None
    with open(spec.origin) as f:
        return 'if __name__ == "__main__":' in f.read()


def test_every_module_is_a_script_or_a_listed_library():
    for name in _modules():
        assert _runs_with_python_m(name) == (name not in LIBRARIES), name
    assert {"cycle", "apply", "server_capacity", "run_all", "transport"} <= set(SCRIPTS)


@pytest.fixture
def nothing_runs(monkeypatch):
    """Makes every benchmark's measuring and writing fail loudly."""

    def refuse(*args, **kwargs):
        raise AssertionError("--help ran the benchmark")

    monkeypatch.setattr(common, "write_json", refuse)
    for name in SCRIPTS:
        module = importlib.import_module(f"benchmarks.{name}")
        if hasattr(module, "run"):
            monkeypatch.setattr(module, "run", refuse)


@pytest.mark.parametrize("name", SCRIPTS)
def test_help_prints_usage_and_runs_nothing(name, nothing_runs, capsys):
    module = importlib.import_module(f"benchmarks.{name}")
    start = time.monotonic()
    with pytest.raises(SystemExit) as exit_info:
        module.main(["--help"])
    assert exit_info.value.code == 0
    assert time.monotonic() - start < 5
    out = capsys.readouterr().out
    assert out.startswith(f"usage: python -m benchmarks.{name} [-h]")
    assert module.__doc__.splitlines()[0] in out  # The module's docstring says what it measures.


@pytest.mark.parametrize("name", SCRIPTS)
def test_a_bad_argument_is_one_error_line_and_status_2(name, nothing_runs, capsys):
    module = importlib.import_module(f"benchmarks.{name}")
    required = ["--kill=ps_0"] if name == "faults" else []  # Its one required option.
    with pytest.raises(SystemExit) as exit_info:
        module.main([*required, "--no_such_option"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [
        f"error: python -m benchmarks.{name}: unrecognized arguments: --no_such_option (see --help)"
    ]


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["--only=cycle,nope"],
            "argument --only: unknown 'nope'; choose from codec_speed, scale_table, cycle, apply",
        ),
        (["--quick=1"], "argument --quick: ignored explicit argument '1'"),
    ],
)
def test_bad_values_are_refused_before_anything_runs(argv, message, nothing_runs, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_all.main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("module", ["cycle", "server_capacity"])
def test_help_in_a_subprocess(module):
    # server_capacity is a package: its __main__ must parse too, not measure.
    results = os.path.join(common.RESULTS_DIR, f"{module}.json")
    before = os.stat(results).st_mtime_ns
    proc = subprocess.run(
        [sys.executable, "-m", f"benchmarks.{module}", "--help"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"usage: python -m benchmarks.{module}")
    assert os.stat(results).st_mtime_ns == before


def test_main_passes_options_to_run_by_name_and_writes_the_report(tmp_path, capsys):
    calls = []

    def run(quick, sizes):
        calls.append((quick, sizes))
        return {"sizes": sizes}

    def flags(parser):
        parser.add_argument("--sizes", type=common.comma_list(int), default=[1])

    out = tmp_path / "r.json"
    kwargs = dict(doc="Doc.", markdown=lambda r: f"table {r['sizes']}", quick="short", flags=flags)
    common.main("x", run, **kwargs, argv=["--quick", "--sizes=4,,5", f"--out={out}"])
    assert calls == [(True, [4, 5])]
    assert out.read_text().replace(" ", "").replace("\n", "") == '{"sizes":[4,5]}'
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == "table [4, 5]" and printed[1].endswith(f"wrote {out}")
    common.main("x", run, **kwargs, argv=["--out="])  # Writes nothing.
    assert calls[-1] == (False, [1]) and "wrote" not in capsys.readouterr().out
