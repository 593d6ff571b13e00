"""Tests for the local launcher's supervision (gasgd_tf.launch), with fake child processes.

No TensorFlow child is started: children are small ``python -c`` programs, and
``LocalLauncher`` runs fake roles by replacing ``launch.child_argv``.
"""

import io
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
import types

import pytest

from gasgd_tf import config_base, launch
from gasgd_tf.launch import Child, LocalLauncher, prepare_workdir, stop_all

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
SLEEP = "import time; time.sleep(60)"
# Installs the handler before saying so, so that the test knows SIGTERM is ignored.
IGNORE_SIGTERM = (
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "print('ready', flush=True); time.sleep(60)"
)

linux_only = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only"
)


def _alive(pid: int) -> bool:
    # A zombie (exited, not yet reaped by init) counts as gone.
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


def _wait_for(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


@pytest.fixture
def children():
    """Children started by a test; any left alive are killed afterwards."""
    started: list[Child] = []
    yield started
    for c in started:
        if c.process is not None and c.process.poll() is None:
            c.process.kill()
            c.process.wait()


def _start(children, tmp_path, role, code) -> Child:
    child = Child(role, [sys.executable, "-c", code], str(tmp_path / "logs" / f"{role}.log"))
    child.start(dict(os.environ))
    children.append(child)
    return child


def test_child_logs_stdout_and_stderr_and_reports_exit_code(tmp_path, children):
    child = _start(
        children,
        tmp_path,
        "w",
        "import sys; print('out', flush=True); print('err', file=sys.stderr); sys.exit(4)",
    )
    assert child.process.wait(timeout=30) == 4
    assert child.poll() == 4
    assert child.tail().splitlines() == ["out", "err"]


def test_poll_before_start_is_none(tmp_path):
    assert Child("w", ["true"], str(tmp_path / "w.log")).poll() is None


def test_tail_returns_last_lines(tmp_path):
    log = tmp_path / "w.log"
    log.write_text("".join(f"line {i}\n" for i in range(50)))
    child = Child("w", ["true"], str(log))
    assert child.tail(3) == "line 47\nline 48\nline 49\n"
    assert child.tail().splitlines() == [f"line {i}" for i in range(30, 50)]  # Default: 20.
    assert Child("w", ["true"], str(tmp_path / "missing.log")).tail() == "(no log)\n"


def test_tail_survives_binary_garbage(tmp_path):
    log = tmp_path / "w.log"
    log.write_bytes(b"ok\n\xff\xfe bad\nlast\n")
    assert Child("w", ["true"], str(log)).tail(2).splitlines()[-1] == "last"


def test_stop_all_terminates_live_children(tmp_path, children):
    a = _start(children, tmp_path, "a", SLEEP)
    b = _start(children, tmp_path, "b", SLEEP)
    done = _start(children, tmp_path, "done", "pass")
    done.process.wait(timeout=30)
    not_started = Child("never", ["true"], str(tmp_path / "never.log"))

    start = time.monotonic()
    stop_all([a, b, done, not_started], grace_secs=120.0)
    # SIGTERM suffices: both died of it (not of a SIGKILL after the grace), and
    # stop_all returned as soon as they had, far inside the 120 s grace.
    assert a.poll() == -signal.SIGTERM and b.poll() == -signal.SIGTERM
    assert time.monotonic() - start < 60.0
    assert done.poll() == 0


def test_stop_all_kills_a_child_that_ignores_sigterm(tmp_path, children):
    stubborn = _start(children, tmp_path, "stubborn", IGNORE_SIGTERM)
    polite = _start(children, tmp_path, "polite", SLEEP)
    assert _wait_for(lambda: "ready" in stubborn.tail(), 30), stubborn.tail()

    start = time.monotonic()
    stop_all([stubborn, polite], grace_secs=0.5)
    elapsed = time.monotonic() - start
    assert stubborn.poll() == -signal.SIGKILL  # Killed, after SIGTERM did nothing...
    assert polite.poll() == -signal.SIGTERM
    assert elapsed >= 0.5  # ...only once the grace period was over (a monotonic lower bound).


# Child side of the parent-death signal: what ``gasgd_tf.main`` runs first.
ARMED_SLEEP = (
    "from gasgd_tf.launch import die_with_parent_if_asked; die_with_parent_if_asked(); "
    "import time; time.sleep(60)"
)
# Prints this process's parent-death signal (prctl PR_GET_PDEATHSIG) and whether the
# launcher's variable is still set, after die_with_parent_if_asked().
REPORT_PDEATHSIG = textwrap.dedent(
    """
    import ctypes, os, sys
    from gasgd_tf import launch
    launch.die_with_parent_if_asked()
    sig = ctypes.c_int(0)
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(2, ctypes.byref(sig))
    print(sig.value, launch.PARENT_PID_ENV in os.environ)
    """
)


def _run_python(code, env_updates):
    env = {k: v for k, v in os.environ.items() if k != launch.PARENT_PID_ENV}
    env.update(env_updates)
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_child_start_tells_the_child_its_launcher_pid(tmp_path, children):
    env = dict(os.environ)
    env.pop(launch.PARENT_PID_ENV, None)
    child = Child(
        "w",
        [sys.executable, "-c", f"import os; print(os.environ.get({launch.PARENT_PID_ENV!r}))"],
        str(tmp_path / "w.log"),
    )
    child.start(env)
    children.append(child)
    assert child.process.wait(timeout=30) == 0
    assert child.tail().strip() == str(os.getpid())
    assert launch.PARENT_PID_ENV not in env  # The caller's dict is left alone.


@linux_only
def test_die_with_parent_if_asked_arms_sigterm_and_hides_the_variable():
    result = _run_python(
        f"import os; os.environ[{launch.PARENT_PID_ENV!r}] = str(os.getppid()); "
        + REPORT_PDEATHSIG,
        {},
    )
    assert result.returncode == 0, result.stderr
    # Armed with SIGTERM; the variable is gone, so this process's own children are not affected.
    assert result.stdout.split() == [str(int(signal.SIGTERM)), "False"]


@linux_only
def test_die_with_parent_if_asked_does_nothing_unless_asked():
    result = _run_python(REPORT_PDEATHSIG, {})
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["0", "False"]


@linux_only
def test_die_with_parent_if_asked_exits_if_the_launcher_is_already_gone():
    # The launcher died (and the child was re-parented) before prctl took effect.
    result = _run_python(ARMED_SLEEP, {launch.PARENT_PID_ENV: "999999999"})
    assert result.returncode == -signal.SIGTERM


def _kill_parent_and_check_child_dies(tmp_path, child_argv_code: str, timeout: float):
    # An intermediate launcher starts a child, then is SIGKILLed (no cleanup can run in it).
    code = textwrap.dedent(
        f"""
        import os, sys, time
        from gasgd_tf.launch import Child
        child = Child("child", {child_argv_code}, sys.argv[1])
        child.start(dict(os.environ))
        print(child.process.pid, flush=True)
        time.sleep(60)
        """
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path / "child.log")],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    pid = None
    try:
        pid = int(parent.stdout.readline())
        assert _alive(pid)
        time.sleep(0.3)  # Let the child get going (the race with prctl is tested above).
        parent.kill()
        parent.wait(timeout=30)
        assert _wait_for(lambda: not _alive(pid), timeout), (
            "child outlived its parent; its log:\n" + (tmp_path / "child.log").read_text()
        )
    finally:
        parent.kill()
        parent.wait()
        parent.stdout.close()
        if pid is not None and _alive(pid):
            os.kill(pid, signal.SIGKILL)


@linux_only
def test_child_dies_when_its_parent_dies(tmp_path):
    _kill_parent_and_check_child_dies(tmp_path, f"[sys.executable, '-c', {ARMED_SLEEP!r}]", 5.0)


@linux_only
def test_main_process_dies_when_its_launcher_dies(tmp_path):
    # A real role (the TensorFlow-free parameter server) through gasgd_tf.main.
    argv = (
        "[sys.executable, '-m', 'gasgd_tf.main', '--config=configs/default.py', '--role=ps', "
        f"'--ps_address=127.0.0.1:0', '--workdir={tmp_path / 'run'}']"
    )
    _kill_parent_and_check_child_dies(tmp_path, argv, 15.0)


def test_prepare_workdir_removes_only_previous_outputs(tmp_path, capsys):
    workdir = tmp_path / "run"
    for name in ("tb", "logs", "progress", "checkpoints"):
        (workdir / name).mkdir(parents=True)
        (workdir / name / "file").write_text("x")
    for name in ("summary.json", "ports", "notes.txt", "config.json"):
        (workdir / name).write_text("x")

    prepare_workdir(str(workdir))
    assert sorted(os.listdir(workdir)) == ["checkpoints", "config.json", "notes.txt"]
    assert (workdir / "checkpoints" / "file").read_text() == "x"
    out = capsys.readouterr().out
    assert "cleared" in out and "summary.json" in out


def test_prepare_workdir_creates_missing_folder_quietly(tmp_path, capsys):
    workdir = tmp_path / "a" / "b"
    prepare_workdir(str(workdir))
    prepare_workdir(str(workdir))  # Twice: nothing to clear, no error.
    assert workdir.is_dir() and os.listdir(workdir) == []
    assert capsys.readouterr().out == ""


def test_child_argv_runs_main_with_role_and_flags():
    argv = launch.child_argv("worker", "/w/config.json", "/w", task_index=1, ps_address="h:1")
    assert argv[:3] == [sys.executable, "-m", "gasgd_tf.main"]
    assert argv[3:] == [
        "--role=worker",
        "--config_json=/w/config.json",
        "--workdir=/w",
        "--task_index=1",
        "--ps_address=h:1",
    ]


# --- LocalLauncher.run with fake roles -------------------------------------------------


@pytest.fixture
def restore_sigterm():
    # run() installs a SIGTERM handler in this (pytest's) process; put the old one back.
    old = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, old)


def _config(num_workers=2):
    config = config_base.finalize(config_base.get_base_config())
    config.num_workers = num_workers
    config.launcher.log_every_secs = 0.1
    config.launcher.startup_timeout_secs = 30.0
    return config


def _fake_child_argv(scripts):
    """A child_argv that runs ``scripts[role](flags)`` (Python source) for each role."""
    calls = []

    def child_argv(role, config_json, workdir, **flags):
        calls.append((role, config_json, workdir, flags))
        return [sys.executable, "-c", scripts[role](flags)]

    return child_argv, calls


def _ps_script(port: int):
    # Reports a port through the file the launcher waits for, atomically, then serves "forever".
    def script(flags):
        return (
            f"import os, time; p = {flags['port_file']!r}; "
            f"open(p + '.tmp', 'w').write('{port}'); os.replace(p + '.tmp', p); time.sleep(60)"
        )

    return script


def _launcher_pids(launcher):
    return [c.process.pid for c in launcher.children if c.process is not None]


def test_run_stops_everything_when_a_worker_fails(tmp_path, monkeypatch, restore_sigterm):
    config = _config(num_workers=2)
    scripts = {
        "prepare": lambda flags: "pass",
        "ps": _ps_script(1),  # Nothing listens there; no progress line is due before the failure.
        "worker": lambda flags: (
            "import sys, time; time.sleep(0.3); print('boom', flush=True); sys.exit(3)"
            if flags["task_index"] == 0
            else SLEEP
        ),
        "eval": lambda flags: SLEEP,
    }
    fake, calls = _fake_child_argv(scripts)
    monkeypatch.setattr(launch, "child_argv", fake)
    config.launcher.log_every_secs = 60.0  # A progress line would query the fake address.
    out = io.StringIO()
    launcher = LocalLauncher(config, str(tmp_path), out=out)

    start = time.monotonic()
    assert launcher.run() == 1
    assert time.monotonic() - start < 20

    text = out.getvalue()
    assert re.search(r"error: worker_0 .*exit code 3", text), text
    assert "boom" in text
    assert str(tmp_path / "logs" / "worker_0.log") in text
    # Every role was started, and none is left running.
    assert [c[0] for c in calls] == ["prepare", "ps", "worker", "worker", "eval"]
    assert {c[1] for c in calls} == {str(tmp_path / "config.json")}
    assert [c.role for c in launcher.children] == ["ps_0", "worker_0", "worker_1", "eval"]
    assert all(c.poll() is not None for c in launcher.children)
    assert not any(_alive(pid) for pid in _launcher_pids(launcher))


def test_run_fails_when_prepare_fails(tmp_path, monkeypatch, restore_sigterm):
    scripts = {"prepare": lambda flags: "print('no data'); raise SystemExit(2)"}
    fake, calls = _fake_child_argv(scripts)
    monkeypatch.setattr(launch, "child_argv", fake)
    out = io.StringIO()
    assert LocalLauncher(_config(), str(tmp_path), out=out).run() == 1
    assert [c[0] for c in calls] == ["prepare"]  # No server or worker was started.
    assert re.search(r"error: prepare .*code 2", out.getvalue()), out.getvalue()
    assert "no data" in out.getvalue()


def test_run_fails_when_server_exits_before_serving(tmp_path, monkeypatch, restore_sigterm):
    scripts = {
        "prepare": lambda flags: "pass",
        "ps": lambda flags: "print('cannot bind'); raise SystemExit(1)",
    }
    fake, calls = _fake_child_argv(scripts)
    monkeypatch.setattr(launch, "child_argv", fake)
    out = io.StringIO()
    assert LocalLauncher(_config(), str(tmp_path), out=out).run() == 1
    assert [c[0] for c in calls] == ["prepare", "ps"]
    assert re.search(r"error: ps_0 .*code 1 before serving", out.getvalue()), out.getvalue()
    assert "cannot bind" in out.getvalue()


class _FakeClient:
    """Stands in for gasgd_tf.client.ParameterClient: a fixed status, and a log of its use.

    The launcher's status calls are answered here, without a real server, and
    their order relative to child starts is recorded.
    """

    events: list = []

    def __init__(self, address, name, **kwargs):
        self.address = address
        self.events.append(("open", address))

    def status(self, client_ids=()):
        self.events.append(("status", self.address))
        staleness = types.SimpleNamespace(mean=0.5, max=2)
        clients = [
            types.SimpleNamespace(client_id=f"worker_{i}", pushes=4, staleness=staleness)
            for i in range(2)
        ] + [types.SimpleNamespace(client_id="eval", pushes=0, staleness=staleness)]
        return types.SimpleNamespace(
            version=7,
            updates_applied=9,
            pushes_rejected=1,
            staleness=staleness,
            clients=clients,
            server_id="fake",
        )

    def close(self):
        self.events.append(("close", self.address))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


@pytest.fixture
def fake_client(monkeypatch):
    import gasgd_tf.client

    _FakeClient.events = []
    monkeypatch.setattr(gasgd_tf.client, "ParameterClient", _FakeClient)
    monkeypatch.setattr(
        gasgd_tf.client, "make_client", lambda address, name, **kw: _FakeClient(address, name, **kw)
    )
    return _FakeClient


def _success_scripts(tmp_path, port):
    def progress(role, data):
        path = os.path.join(str(tmp_path), "progress", f"{role}.json")
        # Atomic, like the real roles, so that the launcher never reads half a file.
        return (
            "import time; time.sleep(0.5); from gasgd_tf.progress import write_json; "
            f"write_json({path!r}, {data!r})"
        )

    return {
        "prepare": lambda flags: "pass",
        "ps": _ps_script(port),
        "worker": lambda flags: progress(
            f"worker_{flags['task_index']}",
            {
                "step": 400,
                "steps": 400,
                "loss": 0.5,
                "images_per_sec": 100.0,
                "done": True,
                "bytes_sent": 1000,
                "bytes_received": 2000,
            },
        ),
        "eval": lambda flags: progress(
            "eval", {"accuracy": 0.75, "loss": 0.25, "version": 7, "examples": 359}
        ),
    }


def test_run_succeeds_and_writes_summary(tmp_path, monkeypatch, restore_sigterm, fake_client):
    fake, calls = _fake_child_argv(_success_scripts(tmp_path, 4321))
    monkeypatch.setattr(launch, "child_argv", fake)
    out = io.StringIO()
    launcher = LocalLauncher(_config(num_workers=2), str(tmp_path), out=out)

    assert launcher.run() == 0, out.getvalue()
    text = out.getvalue()
    assert "parameter server on 127.0.0.1:4321" in text
    assert {c[3].get("ps_address") for c in calls if c[0] in ("worker", "eval")} == {
        "127.0.0.1:4321"
    }
    assert "version 7 | steps" in text  # At least one progress line while the children ran.
    assert "test accuracy 0.7500" in text
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["test_accuracy"] == 0.75 and summary["test_examples"] == 359
    assert summary["steps_per_worker"] == [400, 400]
    # Per worker; the evaluator never pushes and is left out.
    assert summary["staleness_by_client"] == {
        "worker_0": {"mean": 0.5, "max": 2},
        "worker_1": {"mean": 0.5, "max": 2},
    }
    assert summary["images_per_sec"] == 200.0
    assert summary["bytes_sent_per_worker"] == [1000, 1000]  # From each worker's progress file.
    assert summary["bytes_received_per_worker"] == [2000, 2000]
    assert summary["local_steps_per_worker"] == [0, 0]  # Fixed local steps.
    assert "warning" not in summary  # A run that learns carries none.
    assert (summary["server_version"], summary["updates_applied"], summary["pushes_rejected"]) == (
        7,
        9,
        1,
    )
    assert all(c.poll() is not None for c in launcher.children)  # The sleeping ps was stopped.
    assert all(e[1] == "127.0.0.1:4321" for e in fake_client.events)


def test_the_evaluators_not_learning_warning_reaches_progress_lines_and_summary(
    tmp_path, monkeypatch, restore_sigterm, fake_client
):
    scripts = _success_scripts(tmp_path, 4321)
    warned = {"accuracy": 0.1, "loss": 2.3026, "version": 7, "examples": 359}
    warned["warning"] = "the run is not learning: test loss 2.3026. Likely cause: x."
    warned["warning_short"] = "the run is not learning: test loss 2.3026"
    path = os.path.join(str(tmp_path), "progress", "eval.json")
    scripts["eval"] = lambda flags: (
        f"from gasgd_tf.progress import write_json; write_json({path!r}, {warned!r}); "
        "import time; time.sleep(0.5)"  # Written at once: progress lines see it.
    )
    fake, _ = _fake_child_argv(scripts)
    monkeypatch.setattr(launch, "child_argv", fake)
    out = io.StringIO()
    assert LocalLauncher(_config(num_workers=2), str(tmp_path), out=out).run() == 0
    text = out.getvalue()
    assert "| WARNING: the run is not learning: test loss 2.3026\n" in text, text
    assert f"\nWARNING: {warned['warning']}\nsummary: " in text, text
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["warning"] == warned["warning"]


def test_no_grpc_client_is_open_while_children_start(
    tmp_path, monkeypatch, restore_sigterm, fake_client
):
    fake, _ = _fake_child_argv(_success_scripts(tmp_path, 4321))
    monkeypatch.setattr(launch, "child_argv", fake)
    real_start = Child.start

    def recording_start(self, env, **kwargs):
        fake_client.events.append(("start", self.role))
        real_start(self, env, **kwargs)

    monkeypatch.setattr(Child, "start", recording_start)
    assert LocalLauncher(_config(num_workers=2), str(tmp_path), out=io.StringIO()).run() == 0

    open_clients = 0
    for event, what in fake_client.events:
        open_clients += {"open": 1, "close": -1}.get(event, 0)
        # The launcher opens its gRPC channel only after forking every child.
        assert not (event == "start" and open_clients), (
            f"{what} forked while a gRPC client was open"
        )


def test_children_start_cleanly_while_grpc_is_live(tmp_path, children, serve):
    # gRPC's fork handlers abort a child forked through a plain fork() (which a preexec_fn
    # forces) while a channel is live; seen as exit code -6 in a few percent of forks.
    from gasgd_tf.client import ParameterClient
    from gasgd_tf.server import ParameterStore, make_optimizer

    server = serve(ParameterStore(make_optimizer("sgd", learning_rate=0.1)))
    with ParameterClient(server.address, "test", timeout_secs=5.0, retry_secs=1.0) as client:
        assert client.status().version == 0
        started = [_start(children, tmp_path, f"c{i}", "pass") for i in range(40)]
        client.status()
    codes = [c.process.wait(timeout=60) for c in started]
    assert codes == [0] * 40, [c.tail() for c in started if c.poll()]


def test_a_killed_worker_is_started_again(tmp_path, monkeypatch, restore_sigterm, fake_client):
    # worker_0 is SIGKILLed the first time it runs; the run goes on and finishes.
    marker = tmp_path / "killed_once"
    scripts = _success_scripts(tmp_path, 4321)
    succeed = scripts["worker"]

    def worker(flags):
        if flags["task_index"] != 0:
            return succeed(flags)
        return (
            f"import os, signal, pathlib; m = pathlib.Path({str(marker)!r})\n"
            "if not m.exists():\n"
            "    m.write_text('x'); os.kill(os.getpid(), signal.SIGKILL)\n" + succeed(flags)
        )

    scripts["worker"] = worker
    fake, calls = _fake_child_argv(scripts)
    monkeypatch.setattr(launch, "child_argv", fake)
    out = io.StringIO()
    launcher = LocalLauncher(_config(num_workers=2), str(tmp_path), out=out)
    assert launcher.run() == 0, out.getvalue()
    assert "worker_0 was killed by signal 9; starting it again (1 of at most 2" in out.getvalue()
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["worker_restarts"] == {"worker_0": 1}


def test_a_worker_killed_too_often_fails_the_run(tmp_path, monkeypatch, restore_sigterm):
    config = _config(num_workers=1)
    config.launcher.max_worker_restarts = 1
    config.launcher.log_every_secs = 60.0
    scripts = {
        "prepare": lambda flags: "pass",
        "ps": _ps_script(1),
        "worker": lambda flags: "import os, signal; os.kill(os.getpid(), signal.SIGKILL)",
        "eval": lambda flags: SLEEP,
    }
    fake, _ = _fake_child_argv(scripts)
    monkeypatch.setattr(launch, "child_argv", fake)
    out = io.StringIO()
    launcher = LocalLauncher(config, str(tmp_path), out=out)
    assert launcher.run() == 1
    text = out.getvalue()
    assert text.count("starting it again") == 1
    assert re.search(r"error: worker_0 .*exit code -9", text), text


# --- Resuming a run, and restarting a dead server ----------------------------------------


def _save(workdir, run_id, version=3, shard=None):
    import numpy as np

    from gasgd_tf import checkpoints
    from gasgd_tf.tensors import TensorSpec

    folder = os.path.join(str(workdir), "checkpoints")
    return checkpoints.save(
        folder, (TensorSpec("w", (2,)),), np.zeros(2, np.float32), version,
        meta={"run_id": run_id}, shard=shard,
    )  # fmt: skip


def test_a_launch_resumes_the_newest_run_in_its_workdir(tmp_path, capsys):
    config = _config()
    assert launch.choose_run(config, str(tmp_path)) is None  # Nothing there: a new run.
    first_id = config.run_id
    assert re.fullmatch(r"[0-9a-f]{12}", first_id)

    _save(tmp_path, "older", version=9)
    time.sleep(0.01)
    newest = _save(tmp_path, "newer", version=3)
    config = _config()
    assert launch.choose_run(config, str(tmp_path)) == newest
    assert config.run_id == "newer"
    assert "resuming run newer from" in capsys.readouterr().out

    config = _config()
    config.restore = False  # --norestore: a new run, the old files stay.
    assert launch.choose_run(config, str(tmp_path)) is None
    assert config.run_id not in ("newer", "older")
    assert "not resuming (--norestore)" in capsys.readouterr().out
    assert os.path.exists(newest)


def test_a_changed_config_or_a_reused_run_id_is_not_resumed_silently(tmp_path):
    _save(tmp_path, "run_a")
    (tmp_path / "config.json").write_text(json.dumps(_config().to_dict()))
    config = _config()
    config.ps.learning_rate = 0.5  # Another run than the one in the workdir.
    with pytest.raises(ValueError, match=r"started with another config \(differs in: "):
        launch.choose_run(config, str(tmp_path))
    config.restore = True  # Asked for: resume it with this config.
    assert launch.choose_run(config, str(tmp_path)) and config.run_id == "run_a"

    config = _config()
    config.run_id, config.restore = "run_a", False  # Its files would be overwritten.
    with pytest.raises(ValueError, match="give a new --config.run_id"):
        launch.choose_run(config, str(tmp_path))


def test_restore_true_needs_a_checkpoint_of_the_same_layout(tmp_path):
    _save(tmp_path, "sharded", shard=(0, 2))
    config = _config()
    config.restore = True
    with pytest.raises(ValueError, match="no checkpoint to resume .*num_shards=1"):
        launch.choose_run(config, str(tmp_path))
    config = _config()
    config.ps.num_shards = 2
    launch.choose_run(config, str(tmp_path))
    assert config.run_id == "sharded"


def test_prepare_workdir_keeps_the_curves_and_logs_of_a_resumed_run(tmp_path):
    for name in ("tb", "logs", "progress"):
        (tmp_path / name).mkdir()
    (tmp_path / "summary.json").write_text("{}")
    prepare_workdir(str(tmp_path), resuming=True)
    assert sorted(os.listdir(tmp_path)) == ["logs", "tb"]


def _dying_ps_script(port: int, deaths: int, marker: pathlib.Path):
    """A ps that reports ``port`` and then SIGKILLs itself, the first ``deaths`` times it runs."""

    def script(flags):
        return textwrap.dedent(f"""
            import os, pathlib, signal, time
            p = {flags["port_file"]!r}
            open(p + '.tmp', 'w').write('{port}'); os.replace(p + '.tmp', p)
            m = pathlib.Path({str(marker)!r})
            n = int(m.read_text()) if m.exists() else 0
            m.write_text(str(n + 1))
            with open(m.with_suffix('.address'), 'a') as f:
                f.write({flags["ps_address"]!r} + '\\n')
            if n < {deaths}:
                time.sleep(0.3); os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(60)
        """)

    return script


def test_a_dead_server_is_started_again_on_its_port(
    tmp_path, monkeypatch, restore_sigterm, fake_client
):
    marker = tmp_path / "ps_runs"
    scripts = _success_scripts(tmp_path, 4321)
    scripts["ps"] = _dying_ps_script(4321, deaths=1, marker=marker)
    scripts["worker"] = lambda flags: (
        "import time; time.sleep(1.5)\n" + _success_scripts(tmp_path, 4321)["worker"](flags)
    )
    fake, calls = _fake_child_argv(scripts)
    monkeypatch.setattr(launch, "child_argv", fake)
    _save(tmp_path, None, version=3)  # What the server saved before it died.
    out = io.StringIO()
    assert LocalLauncher(_config(), str(tmp_path), out=out).run() == 0, out.getvalue()
    assert (
        "ps_0 was killed by signal 9 at version ?; starting it again on port 4321 (1 of at "
        "most 2), from its checkpoint at version 3" in out.getvalue()
    )
    assert calls[-1][3]["restore"] is True  # It must resume, never start empty.
    # First on any free port, then on the very port the workers know.
    assert marker.with_suffix(".address").read_text().split() == [
        "127.0.0.1:0",
        "127.0.0.1:4321",
    ]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["server_restarts"] == {"ps_0": 1}
    log = (tmp_path / "logs" / "ps_0.log").read_text()
    assert "===== ps_0 started again at" in log and "was killed by signal 9 =====" in log


def test_a_server_killed_again_while_it_restarts_is_started_once_more(
    tmp_path, monkeypatch, restore_sigterm, fake_client
):
    # Run 1 serves and is killed; run 2 is killed before it serves; run 3 serves.
    marker = tmp_path / "ps_runs"

    def ps(flags):
        return textwrap.dedent(f"""
            import os, pathlib, signal, time
            m = pathlib.Path({str(marker)!r})
            n = int(m.read_text()) if m.exists() else 0
            m.write_text(str(n + 1))
            if n == 1:
                os.kill(os.getpid(), signal.SIGKILL)
            p = {flags["port_file"]!r}
            open(p + '.tmp', 'w').write('4321'); os.replace(p + '.tmp', p)
            if n == 0:
                time.sleep(0.3); os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(60)
        """)

    scripts = _success_scripts(tmp_path, 4321)
    scripts["ps"] = ps
    scripts["worker"] = lambda flags: (
        "import time; time.sleep(2)\n" + _success_scripts(tmp_path, 4321)["worker"](flags)
    )
    fake, _ = _fake_child_argv(scripts)
    monkeypatch.setattr(launch, "child_argv", fake)
    _save(tmp_path, None, version=3)
    config = _config()
    config.launcher.max_server_restarts = 3
    out = io.StringIO()
    assert LocalLauncher(config, str(tmp_path), out=out).run() == 0, out.getvalue()
    assert out.getvalue().count("starting it again") == 2
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["server_restarts"] == {"ps_0": 2}


@pytest.mark.parametrize(
    "save", [True, False, "none-yet"], ids=["too-often", "checkpoints-off", "none-yet"]
)
def test_a_server_that_cannot_be_restarted_fails_the_run(
    tmp_path, monkeypatch, restore_sigterm, fake_client, save
):
    config = _config()
    config.launcher.max_server_restarts = 1
    config.ps.save_checkpoint = bool(save)
    if save is True:
        _save(tmp_path, None, version=3)
    scripts = _success_scripts(tmp_path, 4321)
    scripts["ps"] = _dying_ps_script(4321, deaths=10, marker=tmp_path / "ps_runs")
    scripts["worker"] = lambda flags: SLEEP
    fake, _ = _fake_child_argv(scripts)
    monkeypatch.setattr(launch, "child_argv", fake)
    out = io.StringIO()
    assert LocalLauncher(config, str(tmp_path), out=out).run() == 1
    text = out.getvalue()
    if save == "none-yet":
        assert "error: ps_0 was killed by signal 9 before its first checkpoint" in text, text
    elif save:
        assert text.count("starting it again") == 1
        assert "error: ps_0 was killed by signal 9 (restarted 1 times already)" in text, text
    else:
        assert "error: ps_0 was killed by signal 9 (no restart: ps.save_checkpoint is off)" in text


@pytest.mark.parametrize(
    "change",
    [
        {"num_steps": 5000},  # More steps: the run trains longer.
        {"worker.log_every_steps": 7},
        {"client.timeout_secs": 90.0, "client.retry_secs": 45.0},
        {"ps.checkpoint_every_secs": 5.0, "ps.keep_checkpoints": 5},
        {"eval.every_secs": 3.0, "launcher.log_every_secs": 2.0},
    ],
    ids=["num_steps", "logging", "timeouts", "checkpoint-intervals", "eval-and-launcher"],
)
def test_a_run_resumes_with_changed_operational_settings_without_restore(tmp_path, change):
    # README: "Operational settings may change on the way (more num_steps
    # trains longer; logging, timeouts, checkpoint intervals)": no --restore.
    previous = _config()
    previous.run_id = "run_a"
    (tmp_path / "config.json").write_text(json.dumps(previous.to_dict()))
    checkpoint = _save(tmp_path, "run_a", version=40)
    config = _config()
    config.update_from_flattened_dict(change)
    assert config.restore is None  # Neither --restore nor --norestore.
    assert launch.choose_run(config, str(tmp_path)) == checkpoint
    assert (config.run_id, config.restore) == ("run_a", True)
    for field, value in change.items():  # Resumed with the new settings, not the old ones.
        node = config
        for name in field.split("."):
            node = node[name]
        assert node == value


# A TensorFlow-free worker against the real server: pushes 3 gradients, says so,
# waits for the test's go (given after it killed the server), pushes 3 more.
RESTART_WORKER = textwrap.dedent("""
    import os, pathlib, sys, time
    import numpy as np
    from gasgd_tf.client import ParameterClient
    from gasgd_tf.progress import write_json
    from gasgd_tf.tensors import TensorSpec
    address, pushed, go, progress_file = sys.argv[1:5]
    specs = (TensorSpec("w", (4,)),)
    versions = []
    with ParameterClient(address, "worker_0", timeout_secs=5, retry_secs=60) as client:
        client.register(specs)
        client.initialize(specs, np.zeros(4, np.float32))
        for step in range(1, 7):
            if step == 4:
                pathlib.Path(pushed).write_text("3")
                deadline = time.monotonic() + 120
                while not os.path.exists(go):
                    assert time.monotonic() < deadline, "no go from the test"
                    time.sleep(0.02)
            version = client.fetch()[0]
            versions.append(client.push(np.ones(4, np.float32), version, step).version)
        client.leave()
    write_json(progress_file, {"step": 6, "steps": 6, "loss": 0.5, "images_per_sec": 1.0,
                               "done": True, "versions": versions})
""")


def test_a_real_server_killed_mid_run_is_restarted_from_its_checkpoint(
    tmp_path, monkeypatch, restore_sigterm
):
    # The real parameter server process (no TensorFlow in it), a fake worker
    # and evaluator: the launcher restarts the SIGKILLed server on its port
    # from its checkpoint, and the worker goes on from the restored version.
    from gasgd_tf import checkpoints

    config = _config(num_workers=1)
    config.ps.checkpoint_every_updates = 1
    config.launcher.log_every_secs = 0.2
    launch.choose_run(config, str(tmp_path))
    (tmp_path / "config.json").write_text(config_base.to_json(config))
    pushed, go = tmp_path / "pushed", tmp_path / "go"
    real_child_argv = launch.child_argv

    def child_argv(role, config_json, workdir, **flags):
        if role == "ps":
            return real_child_argv(role, config_json, workdir, **flags)
        if role == "worker":
            progress_file = os.path.join(workdir, "progress", "worker_0.json")
            args = [flags["ps_address"], str(pushed), str(go), progress_file]
            return [sys.executable, "-c", RESTART_WORKER, *args]
        if role == "eval":
            path = os.path.join(workdir, "progress", "eval.json")
            result = {"accuracy": 0.5, "loss": 1.0, "version": 6, "examples": 1}
            code = f"from gasgd_tf.progress import write_json; write_json({path!r}, {result!r})"
            return [sys.executable, "-c", code]
        return [sys.executable, "-c", "pass"]  # prepare

    monkeypatch.setattr(launch, "child_argv", child_argv)
    out = io.StringIO()
    launcher = LocalLauncher(config, str(tmp_path), out=out)
    killed = []

    def kill_the_server_mid_run():
        directory = str(tmp_path / "checkpoints")

        def saved_version():
            found = checkpoints.restore_candidates(directory, None, config.run_id)
            return checkpoints.file_version(found[0]) if found else None

        # Mid-run: 3 pushes applied and checkpointed; the worker waits for the go.
        if _wait_for(lambda: pushed.exists() and saved_version() == 3, 120):
            (ps,) = [c for c in launcher.children if c.role == "ps_0"]
            killed.append(ps.process.pid)
            os.kill(ps.process.pid, signal.SIGKILL)
        go.write_text("go")  # Also on failure, so that the worker never hangs.

    killer = threading.Thread(target=kill_the_server_mid_run, daemon=True)
    killer.start()
    code = launcher.run()
    killer.join(timeout=60)
    text = out.getvalue()
    assert code == 0 and killed, text
    (port,) = re.findall(r"parameter server on 127\.0\.0\.1:(\d+)", text)
    # On the very port the worker knows, from the checkpoint taken at the kill.
    assert (
        f"ps_0 was killed by signal 9 at version 3; starting it again on port {port} (1 of at "
        "most 2), from its checkpoint at version 3; 0 update(s) after it are lost" in text
    ), text
    # The worker's pushes went on from the restored version: none lost, none twice.
    worker = json.loads((tmp_path / "progress" / "worker_0.json").read_text())
    assert worker["versions"] == [1, 2, 3, 4, 5, 6]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["server_restarts"] == {"ps_0": 1} and summary["updates_lost"] == 0
    assert summary["server_version"] == 6
    log = (tmp_path / "logs" / "ps_0.log").read_text()
    assert "parameter server: restored version 3 from" in log
    assert not any(_alive(pid) for pid in _launcher_pids(launcher))


@linux_only
def test_a_server_stops_on_a_burst_of_sigterms(tmp_path):
    # A dying launcher and a cleanup may both send SIGTERM, at nearly the same
    # moment. The server's handler once took a lock (Event.set); a second
    # signal arriving while the first handler held it waited for ever.
    port_file = tmp_path / "ps.port"
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gasgd_tf.main",
            "--config=configs/default.py",
            "--role=ps",
            "--ps_address=127.0.0.1:0",
            f"--workdir={tmp_path / 'run'}",
            f"--port_file={port_file}",
        ],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert _wait_for(port_file.exists, 60), "the server never listened"
        for _ in range(50):
            server.send_signal(signal.SIGTERM)
        out, _ = server.communicate(timeout=30)
    finally:
        server.kill()
        server.wait()
    assert server.returncode == 0, out[-2000:]
    assert "parameter server stopped at version 0" in out
