"""make bench's plumbing: every benchmark renders its saved report; tables land between markers."""

import importlib

import pytest

from benchmarks import common, run_all


@pytest.mark.parametrize("name", run_all.BENCHMARKS)
def test_every_benchmark_renders_its_committed_results(name):
    module = importlib.import_module(f"benchmarks.{name}")
    assert callable(module.run)
    report = common.read_report(name)
    assert report is not None, f"benchmarks/results/{name}.json is missing"
    table = module.markdown(report)
    assert "|---" in table  # A Markdown table.


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
