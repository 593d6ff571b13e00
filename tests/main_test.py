"""The whole program, as a user runs it: processes, TensorBoard events, failures."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
from conftest import REPO_ROOT
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from gasgd_tf import checkpoints, progress
from gasgd_tf.client import ParameterClient


def main_command(*flags: str) -> list[str]:
    return [sys.executable, "-m", "gasgd_tf.main", *flags]


def run_main(*flags: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Runs the program from the repository root and waits for it."""
    return subprocess.run(
        main_command(*flags), cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout
    )


def events(logdir: str) -> EventAccumulator:
    acc = EventAccumulator(logdir, size_guidance={"scalars": 0, "histograms": 0})
    acc.Reload()
    return acc


def leftover_processes(marker: str) -> list[str]:
    out = subprocess.run(["pgrep", "-af", marker], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if "pgrep" not in line]


@pytest.mark.slow
def test_local_run_trains_and_writes_summary_and_events(digits_data_dir, tmp_path):
    workdir = str(tmp_path / "run")
    result = run_main(
        "--config=configs/default.py",
        f"--workdir={workdir}",
        f"--config.data.data_dir={digits_data_dir}",
        "--config.num_steps=150",
        "--config.worker.log_every_steps=25",
        "--config.eval.every_secs=1",
        "--config.launcher.log_every_secs=1",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "parameter server on 127.0.0.1:" in result.stdout
    assert "test accuracy" in result.stdout and "done in" in result.stdout

    with open(os.path.join(workdir, "summary.json")) as f:
        summary = json.load(f)
    assert summary["steps_per_worker"] == [150, 150]
    assert summary["server_version"] == summary["updates_applied"] == 300
    assert summary["eval_version"] == 300 and summary["test_examples"] == 359
    assert summary["test_accuracy"] > 0.8  # 150 steps: well above chance (0.1).
    with open(os.path.join(workdir, "config.json")) as f:
        config = json.load(f)
    assert (config["name"], config["n_push"], config["n_fetch"]) == ("default", 1, 1)

    # The final evaluation is in TensorBoard with the summary's number.
    ev = events(os.path.join(workdir, "tb", "eval"))
    final = ev.Scalars("eval/accuracy")[-1]
    assert (final.step, final.value) == (300, pytest.approx(summary["test_accuracy"], abs=1e-6))
    assert "eval/loss" in ev.Tags()["scalars"]
    for i in range(2):
        tags = events(os.path.join(workdir, "tb", f"worker_{i}")).Tags()["scalars"]
        assert {"train/loss", "train/accuracy", "train/images_per_sec"} <= set(tags)
    ps = events(os.path.join(workdir, "tb", "ps_0"))
    assert ps.Scalars("ps/version")[-1].value == 300
    assert "ps/updates_per_sec" in ps.Tags()["scalars"]
    histograms = ps.Histograms("ps/staleness")
    assert sum(h.histogram_value.num for h in histograms) == 300  # Every push, once.
    assert not leftover_processes(workdir)

    # The final Keras model holds the server's final parameters (its checkpoint's).
    import keras
    import numpy as np

    model = keras.models.load_model(summary["model"])
    checkpoint = checkpoints.load(workdir)
    assert checkpoint.version == 300
    for variable in model.trainable_variables:
        np.testing.assert_array_equal(variable.numpy(), checkpoint.arrays[variable.path])


def start_ps(workdir: str) -> tuple[subprocess.Popen, str]:
    port_file = os.path.join(workdir, "port")
    ps = subprocess.Popen(
        main_command(
            "--role=ps",
            "--config=configs/default.py",
            f"--workdir={workdir}",
            "--ps_address=127.0.0.1:0",
            f"--port_file={port_file}",
        ),
        cwd=REPO_ROOT,
    )
    deadline = time.monotonic() + 60
    while not os.path.exists(port_file):
        assert ps.poll() is None and time.monotonic() < deadline, "ps did not start"
        time.sleep(0.05)
    with open(port_file) as f:
        return ps, f"127.0.0.1:{f.read()}"


@pytest.mark.slow
def test_worker_exits_with_clear_error_when_server_dies(digits_data_dir, tmp_path):
    ps, address = start_ps(str(tmp_path))
    retry, timeout = 3, 5
    worker = subprocess.Popen(
        main_command(
            "--role=worker",
            "--config=configs/default.py",
            f"--workdir={tmp_path}",
            f"--ps_address={address}",
            f"--config.data.data_dir={digits_data_dir}",
            "--config.num_steps=1000000",
            f"--config.client.retry_secs={retry}",
            f"--config.client.timeout_secs={timeout}",
        ),
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        with ParameterClient(address, "test", retry_secs=5) as client:
            deadline = time.monotonic() + 120
            while client.status().version < 20:  # The worker is training.
                assert worker.poll() is None and time.monotonic() < deadline
                time.sleep(0.2)
        ps.send_signal(signal.SIGKILL)
        ps.wait()
        killed = time.monotonic()
        _, stderr = worker.communicate(timeout=retry + timeout + 30)
        elapsed = time.monotonic() - killed
    finally:
        ps.kill()
        worker.kill()
    assert worker.returncode == 1
    assert f"error: worker: parameter server at {address} unreachable" in stderr
    assert elapsed < retry + timeout + 5, f"took {elapsed:.1f}s to notice"


def test_bad_override_fails_before_starting_anything(tmp_path):
    result = subprocess.run(
        main_command("--config=configs/default.py", f"--workdir={tmp_path}", "--config.n_push=0"),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "n_push must be an integer >= 1" in result.stderr
    assert not os.path.exists(tmp_path / "config.json")


def start_launcher(workdir: str, data_dir: str, num_steps: int) -> subprocess.Popen:
    """The default run in the background (progress every 10 steps), its output piped."""
    return subprocess.Popen(
        main_command(
            "--config=configs/default.py",
            f"--workdir={workdir}",
            f"--config.data.data_dir={data_dir}",
            f"--config.num_steps={num_steps}",
            "--config.worker.log_every_steps=10",
        ),
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["SIGINT", "SIGKILL"])
def test_stopping_the_launcher_leaves_no_process_behind(digits_data_dir, tmp_path, sig):
    # Ctrl-C stops every child in order; even SIGKILL of the launcher takes
    # them down (they asked Linux for SIGTERM when their parent dies).
    workdir = str(tmp_path / "run")
    launcher = start_launcher(workdir, digits_data_dir, 1000000)
    try:
        started = os.path.join(workdir, "progress", "worker_1.json")
        deadline = time.monotonic() + 120
        while not os.path.exists(started):  # Every role is up and training.
            assert launcher.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
        launcher.send_signal(sig)
        out, _ = launcher.communicate(timeout=30)
    finally:
        launcher.kill()
    if sig == signal.SIGINT:
        assert launcher.returncode == 130
        assert "interrupted: stopped all processes" in out
    deadline = time.monotonic() + 10
    while leftover_processes(workdir) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = leftover_processes(workdir)
    assert not left, _why_still_running(workdir, left)


def _why_still_running(workdir: str, left: list[str]) -> str:
    """The leftover processes, the end of every role's log and, where py-spy is there, stacks."""
    report = [f"still running: {left}"]
    logs = os.path.join(workdir, "logs")
    for name in sorted(os.listdir(logs)) if os.path.isdir(logs) else []:
        with open(os.path.join(logs, name), errors="replace") as f:
            report.append(f"--- {name}:\n" + "".join(f.readlines()[-8:]))
    py_spy = shutil.which("py-spy") or os.path.join(os.path.dirname(sys.executable), "py-spy")
    for line in left:
        if os.path.exists(py_spy):
            dump = subprocess.run(
                [py_spy, "dump", "--pid", line.split()[0]], capture_output=True, text=True
            )
            report.append(dump.stdout[-3000:] + dump.stderr[-500:])
    return "\n".join(report)


@pytest.mark.slow
def test_warm_start_begins_at_the_checkpoints_accuracy(digits_data_dir, tmp_path):
    def train(workdir, *flags):
        result = run_main(
            "--config=configs/default.py",
            f"--workdir={workdir}",
            f"--config.data.data_dir={digits_data_dir}",
            "--config.num_workers=1",
            "--config.eval.every_secs=0.1",
            *flags,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        with open(os.path.join(workdir, "summary.json")) as f:
            return json.load(f)

    pre_dir = str(tmp_path / "pretrain")
    pre = train(pre_dir, "--config.num_steps=300")
    assert pre["test_accuracy"] > 0.8 and os.path.isfile(pre["checkpoint"])

    warm_dir = str(tmp_path / "warm")
    train(warm_dir, "--config.num_steps=20", f"--config.warm_start={pre_dir}")
    with open(os.path.join(warm_dir, "config.json")) as f:
        assert json.load(f)["warm_start"] == os.path.abspath(pre["checkpoint"])
    with open(os.path.join(warm_dir, "logs", "worker_0.log")) as f:
        assert f"warm start from {os.path.abspath(pre['checkpoint'])}" in f.read()
    first = events(os.path.join(warm_dir, "tb", "eval")).Scalars("eval/accuracy")[0]
    # From the checkpoint, not from scratch (about 0.1 at version 0).
    assert first.step <= 20 and first.value >= pre["test_accuracy"] - 0.05


def test_warm_start_from_a_missing_run_fails_before_starting(tmp_path):
    result = run_main(
        "--config=configs/default.py",
        f"--workdir={tmp_path / 'run'}",
        f"--config.warm_start={tmp_path / 'nowhere'}",
        timeout=120,
    )
    assert result.returncode != 0
    assert "no checkpoint file or run folder" in result.stderr
    assert not os.path.exists(tmp_path / "run" / "logs")


def _default_run(digits_data_dir, workdir, *flags) -> dict:
    result = run_main(
        "--config=configs/default.py",
        f"--workdir={workdir}",
        f"--config.data.data_dir={digits_data_dir}",
        *flags,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    with open(os.path.join(workdir, "summary.json")) as f:
        return json.load(f)


@pytest.mark.slow
def test_overlap_reaches_the_accuracy_of_the_default_run(digits_data_dir, tmp_path):
    # The acceptance test: the default config with and without the
    # background push/fetch thread. Measured here: 0.975-0.983 without,
    # 0.961-0.967 with (BENCHMARKS.md); a broken overlap (lost pushes, wrong
    # weights assigned) stays far below.
    off = _default_run(digits_data_dir, str(tmp_path / "off"))
    on = _default_run(digits_data_dir, str(tmp_path / "on"), "--config.worker.overlap=True")
    assert on["server_version"] == off["server_version"] == 1000  # Every push landed.
    assert off["test_accuracy"] > 0.95

    def close_enough(run):
        return run["test_accuracy"] > 0.94 and run["test_accuracy"] >= off["test_accuracy"] - 0.04

    if not close_enough(on):
        # Asynchronous runs differ from run to run (push order): one fresh-clone
        # run of the overlap config gave 0.928 where 8 others gave 0.961-0.972.
        # A second chance; a broken overlap misses both times by far.
        on = _default_run(digits_data_dir, str(tmp_path / "on2"), "--config.worker.overlap=True")
    assert close_enough(on), (on["test_accuracy"], off["test_accuracy"])


@pytest.mark.slow
def test_sharded_run_trains_and_writes_one_checkpoint_per_shard(digits_data_dir, tmp_path):
    workdir = str(tmp_path / "run")
    summary = _default_run(
        digits_data_dir,
        workdir,
        "--config.num_steps=150",
        "--config.ps.num_shards=2",
        "--config.ps.shard_split_bytes=65536",  # fc1/kernel (512 KiB) is split.
        "--config.client.push_dtype=bfloat16",
    )
    assert summary["num_shards"] == 2 and summary["server_version"] == 300
    assert summary["test_accuracy"] > 0.8
    for k in range(2):
        assert events(os.path.join(workdir, "tb", f"ps_{k}")).Scalars("ps/version")[-1].value == 300
    checkpoint = checkpoints.load(workdir)
    assert checkpoint.path == summary["checkpoint"]
    assert checkpoint.arrays["fc1/kernel"].shape == (1024, 128)  # Joined from its two pieces.
    assert not leftover_processes(workdir)


@pytest.mark.slow
def test_a_worker_killed_mid_run_is_restarted_and_the_run_finishes(digits_data_dir, tmp_path):
    workdir = str(tmp_path / "run")
    launcher = start_launcher(workdir, digits_data_dir, 300)
    progress.wait_for_step(workdir, "worker_0", 20, launcher)  # Mid-run: it has pushed.
    pattern = (
        f"--role=worker --config_json={workdir}/config.json --workdir={workdir} --task_index=0"
    )
    found = subprocess.run(["pgrep", "-f", "--", pattern], capture_output=True, text=True)
    pids = found.stdout.split()
    assert len(pids) == 1, pids
    os.kill(int(pids[0]), signal.SIGKILL)
    out, _ = launcher.communicate(timeout=300)
    assert launcher.returncode == 0, out
    assert "worker_0 was killed by signal 9; starting it again" in out
    with open(os.path.join(workdir, "summary.json")) as f:
        summary = json.load(f)
    assert summary["worker_restarts"] == {"worker_0": 1}
    # The restarted worker_0 resumed after its last applied push: 300 pushes
    # each, exactly, however many worker_0 had made before the kill.
    assert summary["server_version"] == 600
    with open(os.path.join(workdir, "logs", "worker_0.log")) as f:
        assert re.search(r"worker_0: .*joined at version \d+; resuming after step \d+", f.read())
    assert summary["test_accuracy"] > 0.8
    assert not leftover_processes(workdir)


@pytest.mark.slow
def test_the_server_killed_mid_run_is_restarted_from_its_checkpoint(digits_data_dir, tmp_path):
    workdir = str(tmp_path / "run")
    launcher = subprocess.Popen(
        main_command(
            "--config=configs/default.py",
            f"--workdir={workdir}",
            f"--config.data.data_dir={digits_data_dir}",
            "--config.num_steps=600",
            "--config.worker.log_every_steps=10",
            "--config.ps.checkpoint_every_secs=1",
        ),
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    progress.wait_for_step(workdir, "worker_1", 150, launcher)
    found = subprocess.run(
        ["pgrep", "-f", "--", f"--role=ps --config_json={workdir}/config.json"],
        capture_output=True,
        text=True,
    )
    assert len(found.stdout.split()) == 1, found.stdout
    os.kill(int(found.stdout.split()[0]), signal.SIGKILL)
    out, _ = launcher.communicate(timeout=300)
    assert launcher.returncode == 0, out
    match = re.search(
        r"ps_0 was killed by signal 9 at version (\d+); starting it again on port \d+ "
        r"\(1 of at most 2\), from its checkpoint at version (\d+); (\d+) update\(s\)",
        out,
    )
    assert match, out
    reached, saved, lost = (int(g) for g in match.groups())
    assert saved > 0 and reached - saved == lost
    with open(os.path.join(workdir, "logs", "ps_0.log")) as f:
        log = f.read()
    assert f"parameter server: restored version {saved} from" in log
    assert f"{lost} update(s) applied after it were lost" in log
    with open(os.path.join(workdir, "summary.json")) as f:
        summary = json.load(f)
    assert summary["server_restarts"] == {"ps_0": 1} and summary["updates_lost"] == lost
    # Every push is accounted for: applied (the version continued from the
    # checkpoint's), lost with the updates after the checkpoint, or refused
    # by the restored server as computed from a version it no longer had.
    # (A push applied just before the kill whose answer was lost is applied
    # again by the restored server: counted twice, at most once per worker.)
    accounted = summary["server_version"] + lost + summary.get("pushes_lost", 0)
    assert 1200 <= accounted <= 1202, summary
    assert summary["server_version"] > saved and summary["test_accuracy"] > 0.9
    assert not leftover_processes(workdir)


@pytest.mark.slow
def test_an_interrupted_run_resumes_where_it_stopped(digits_data_dir, tmp_path):
    workdir = str(tmp_path / "run")
    launcher = start_launcher(workdir, digits_data_dir, 400)
    progress.wait_for_step(workdir, "worker_1", 100, launcher)
    launcher.send_signal(signal.SIGINT)  # Ctrl-C: the server saves as it stops.
    launcher.communicate(timeout=60)
    assert launcher.returncode == 130
    stopped_at = checkpoints.load(workdir).version
    assert 0 < stopped_at < 800

    second = _default_run(digits_data_dir, workdir, "--config.num_steps=400")
    assert second["resumed_from"] and second["server_version"] == 800  # Exactly the rest.
    assert sum(second["steps_per_worker"]) == 800 - stopped_at
    assert second["test_accuracy"] > 0.9
    with open(os.path.join(workdir, "logs", "worker_0.log")) as f:
        assert "===== worker_0 started again at" in f.read()  # One log, both parts.

    # A finished run resumed: nothing left to train, the same result.
    result = run_main(
        "--config=configs/default.py",
        f"--workdir={workdir}",
        f"--config.data.data_dir={digits_data_dir}",
        "--config.num_steps=400",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "nothing left to train" in result.stdout
    with open(os.path.join(workdir, "summary.json")) as f:
        third = json.load(f)
    assert third["server_version"] == 800 and third["test_accuracy"] == second["test_accuracy"]

    # --norestore: a new run from scratch beside the old checkpoints.
    fresh = _default_run(digits_data_dir, workdir, "--config.num_steps=50", "--norestore")
    assert fresh["server_version"] == 100 and "resumed_from" not in fresh
    assert checkpoints.load_meta(second["checkpoint"]).version == 800  # Kept.
    assert not leftover_processes(workdir)


@pytest.mark.slow
def test_a_finished_run_resumed_with_more_steps_trains_only_the_new_ones(digits_data_dir, tmp_path):
    # README: operational settings may change when resuming; more num_steps
    # trains longer, without --restore, continuing the same run.
    workdir = str(tmp_path / "run")
    flags = ("--config.num_workers=1", "--config.eval.every_secs=1")
    first = _default_run(digits_data_dir, workdir, *flags, "--config.num_steps=30")
    assert first["server_version"] == 30 and "resumed_from" not in first
    first_checkpoint = checkpoints.load_meta(first["checkpoint"])

    more = _default_run(
        digits_data_dir,
        workdir,
        *flags,
        "--config.num_steps=60",
        "--config.worker.log_every_steps=5",
    )
    assert more["resumed_from"] == first["checkpoint"]  # The same run, continued...
    assert more["server_version"] == more["updates_applied"] == 60  # ...to exactly 60 steps,
    assert more["steps_per_worker"] == [30]  # the 30 new ones trained by this launch.
    run_id = checkpoints.load_meta(more["checkpoint"]).meta["run_id"]
    assert run_id == first_checkpoint.meta["run_id"]  # No new run beside the old one.
    with open(os.path.join(workdir, "config.json")) as f:
        assert json.load(f)["num_steps"] == 60  # The new setting is the run's now.
    with open(os.path.join(workdir, "logs", "worker_0.log")) as f:
        assert re.search(r"joined at version 30; resuming after step 30", f.read())
    assert not leftover_processes(workdir)
