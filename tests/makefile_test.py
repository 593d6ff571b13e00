"""The Makefile that README's two commands (and CI, and make bench) go through."""

import shutil
import subprocess

import pytest
from conftest import REPO_ROOT


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_every_documented_target_parses():
    # -n: print the commands, run nothing. A broken rule fails here, not in CI.
    targets = ["train", "test", "test-fast", "bench", "protos", "check-protos", "lint"]
    result = subprocess.run(
        ["make", "-n", *targets], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "gasgd_tf.main --config=configs/default.py" in result.stdout
    assert "benchmarks.run_all" in result.stdout and "protos/generate.py --check" in result.stdout
