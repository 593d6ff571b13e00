"""Faults of the network and of peers, injected for real: a client process killed mid-push."""

import subprocess
import sys
import textwrap
import threading
import time

import numpy as np

from gasgd_tf.client import ParameterClient
from gasgd_tf.server import SGD, ParameterStore
from gasgd_tf.tensors import TensorSpec

SPECS = (TensorSpec("w", (256, 256)), TensorSpec("b", (256,)))
SIZE = 256 * 256 + 256

# Sends a push header and the first chunk of a 4-chunk gradient, says so, then
# stalls: the test kills it with SIGKILL, so the kernel drops its TCP connection.
HALF_A_PUSH = textwrap.dedent("""
    import sys, time
    import grpc, numpy as np
    from gasgd_tf import wire
    from gasgd_tf.proto import parameter_service_pb2 as pb
    from gasgd_tf.tensors import TensorSpec
    specs = (TensorSpec("w", (256, 256)), TensorSpec("b", (256,)))
    grad = np.ones(256 * 256 + 256, np.float32)
    header = pb.PushHeader(client_id="doomed", sequence=1, base_version=0,
                           tensors=wire.specs_to_proto(specs))
    frames = list(wire.encode_frames(pb.PushRequest, header, grad, 65536))
    def stream():
        yield from frames[:2]
        print("sent", flush=True)
        time.sleep(60)
    channel = grpc.insecure_channel(sys.argv[1])
    channel.stream_unary("/" + wire.SERVICE_NAME + "/Push")(stream(), timeout=60)
""")


def test_a_client_killed_mid_push_applies_nothing_and_frees_its_slot(serve):
    store = ParameterStore(SGD(learning_rate=1.0))
    init = np.zeros(SIZE, np.float32)
    store.initialize("init", SPECS, init.copy())
    server = serve(store, max_concurrent_pushes=1)
    header_arrived = threading.Event()  # The server has the push's header: it takes the slot.
    check_header = store.layout_for

    def layout_for(specs, **kwargs):
        layout = check_header(specs, **kwargs)
        header_arrived.set()
        return layout

    store.layout_for = layout_for
    doomed = subprocess.Popen(
        [sys.executable, "-c", HALF_A_PUSH, server.address], stdout=subprocess.PIPE, text=True
    )
    try:
        assert doomed.stdout.readline().strip() == "sent"
        # The server is reading its stream, holding the only push slot.
        assert header_arrived.wait(timeout=30), "the half push never reached the server"
        doomed.kill()  # kill -9: no goodbye, the connection just ends.
        doomed.wait()
        deadline = time.monotonic() + 10
        while store.status().pushes_rejected < 1:
            assert time.monotonic() < deadline, "the server never noticed the dead stream"
            time.sleep(0.05)
    finally:
        doomed.kill()
    assert store.version == 0
    np.testing.assert_array_equal(store.snapshot().flat, init)
    # The slot the dead push held is free again: the next push goes through.
    # With the only slot leaked it could not: the server would refuse it as
    # busy at its deadline, and the client would give up within retry_secs.
    with ParameterClient(server.address, "worker_0", timeout_secs=5, retry_secs=1) as client:
        client.register(SPECS)
        ack = client.push(np.ones(SIZE, np.float32), 0)
    assert (ack.version, ack.staleness, ack.duplicate) == (1, 0, False)
    assert store.status().updates_applied == 1
    np.testing.assert_array_equal(store.snapshot().flat, init - 1.0)


# -- The chaos run (benchmarks/chaos.py, faults.py --chaos): its pure parts ------------------

import random  # noqa: E402

import pytest  # noqa: E402

from benchmarks import chaos, faults  # noqa: E402


def test_the_kill_schedule_is_seeded_and_bounded_by_the_window():
    times = chaos.kill_schedule(random.Random(7), 600.0, 30.0, 90.0)
    assert times == chaos.kill_schedule(random.Random(7), 600.0, 30.0, 90.0)
    assert times != chaos.kill_schedule(random.Random(8), 600.0, 30.0, 90.0)
    assert 600 // 90 <= len(times) <= 600 // 30
    assert all(0 < t < 600 for t in times)
    gaps = [b - a for a, b in zip([0.0, *times], times)]
    assert all(30 <= g <= 90 for g in gaps)
    assert chaos.kill_schedule(random.Random(0), 20.0, 30.0, 90.0) == []
    with pytest.raises(ValueError):
        chaos.kill_schedule(random.Random(0), 600.0, 90.0, 30.0)


def test_a_target_is_chosen_among_the_live_roles_only():
    rng = random.Random(1)
    picks = {chaos.choose_target(rng, ["worker_1", "ps_0"]) for _ in range(50)}
    assert picks == {"worker_1", "ps_0"}
    assert chaos.choose_target(rng, []) is None


def _log(*parts: str) -> tuple[str, dict[str, int]]:
    """A worker log from step numbers, "kill:N" (a server kill mark here) and literal lines."""
    text, marks = "", {}
    for part in parts:
        if part.startswith("kill:"):
            marks[part] = len(text)
        elif part.isdigit():
            text += f"worker_0: step {part}/10, loss 0.1, accuracy 0.9, server version 1\n"
        else:
            text += part + "\n"
    return text, marks


JOIN = "worker_0: 151,306 parameters on CPU (1 threads); joined at version 0"
RESTART = "\n===== worker_0 started again at 2026-12-03 10:00:00: killed by signal 9 ====="
REFUSED = (
    "worker_0: the server was restored to an earlier version (base_version 9 is ahead); this "
    "push is lost; fetched version 3 and going on"
)


def _count(parts, rollbacks=None):
    text, marks = _log(*parts)
    kills = [(offset, int(name.split(":")[1])) for name, offset in marks.items()]
    return chaos.account_worker(chaos.parse_worker_log(text, kills), rollbacks or {})


def test_no_fault_every_step_reaches_the_final_parameters():
    count = _count([JOIN, *map(str, range(1, 11)), "worker_0: done, 10 steps"])
    assert (count.computed, count.final, count.goodput) == (10, 10, 1.0)


def test_a_killed_worker_redoes_the_steps_after_its_last_applied_push():
    resumed = "worker_0: 151,306 parameters on CPU; joined at version 4; resuming after step 5"
    count = _count([JOIN, *map(str, range(1, 8)), RESTART, resumed, *map(str, range(6, 11))])
    assert (count.computed, count.final, count.redone) == (12, 10, 2)
    assert count.goodput == 10 / 12


def test_a_server_kill_rolls_back_acknowledged_steps_and_refuses_the_next_push():
    # Checkpoint had the push of step 2; the server acknowledged up to step 4, then died;
    # the push of step 8 is refused, the worker fetches and goes on.
    parts = [JOIN, *map(str, range(1, 7)), "kill:1", "7", REFUSED, "8", "9", "10"]
    count = _count(parts, {1: (2, 4)})
    assert (count.computed, count.rolled_back, count.refused, count.final) == (10, 2, 4, 4)
    assert count.unattributed_refusals == 0


def test_a_server_kill_without_a_refused_push_loses_only_the_steps_after_the_checkpoint():
    count = _count([JOIN, *map(str, range(1, 6)), "kill:3", *map(str, range(6, 11))], {3: (2, 4)})
    assert (count.computed, count.rolled_back, count.refused, count.final) == (10, 2, 0, 8)


def test_a_worker_killed_after_a_server_kill_recomputes_the_rolled_back_steps():
    resumed = "worker_0: 151,306 parameters on CPU; joined at version 1; resuming after step 2"
    parts = [JOIN, *map(str, range(1, 7)), "kill:1", "7", RESTART, resumed, *map(str, range(3, 11))]
    count = _count(parts, {1: (2, 4)})
    # Computed 7 + 8; lost: 3-4 rolled back, 5-7 redone; every index 1..10 is in the end.
    assert (count.computed, count.rolled_back, count.redone, count.final) == (15, 2, 3, 10)
    assert count.computed - count.final == count.rolled_back + count.redone + count.refused


def test_acknowledged_pushes_lost_are_counted_by_push_sequence():
    before = {"worker_0": {"last_sequence": 9}, "worker_1": {"last_sequence": 7}}
    restored = {"worker_0": {"last_sequence": 7}, "worker_1": {"last_sequence": 7}}
    assert chaos.acked_lost(before, restored) == 2
    assert chaos.acked_lost(before, {}) == 16


def _record(restored_path: str, restored_version: int = 4) -> dict:
    text0, marks0 = _log(JOIN, *map(str, range(1, 7)), "kill:1", *map(str, range(7, 11)))
    text1, _ = _log(JOIN.replace("worker_0", "worker_1"))
    text1 += "".join(f"worker_1: step {i}/10, loss 0.1\n" for i in range(1, 11))
    kill = {
        "number": 1,
        "target": "ps_0",
        "at_secs": 40.0,
        "log_sizes": {"worker_0": marks0["kill:1"], "worker_1": len(text1)},
        "status_clients": {
            "worker_0": {"last_sequence": 3, "last_step": 6},
            "worker_1": {"last_sequence": 5, "last_step": 10},
        },
        "checkpoint_path": "/w/checkpoints/params-000000004.abc.npz",
        "checkpoint_version": 4,
        "checkpoint_clients": {
            "worker_0": {"last_sequence": 2, "last_step": 4},
            "worker_1": {"last_sequence": 5, "last_step": 10},
        },
        "launcher_updates_lost": 1,
    }
    worker_kill = {"number": 2, "target": "worker_1", "at_secs": 70.0, "log_sizes": {}}
    return {
        "num_workers": 2,
        "kills": [kill, worker_kill],
        "restored": [{"version": restored_version, "path": restored_path}],
        "logs": {"worker_0": text0, "worker_1": text1},
        "summary": {"server_version": 12, "test_accuracy": 0.97},
        "outcome": "done",
    }


def test_a_run_is_accounted_from_its_record_and_aggregated():
    figures = chaos.account_run(_record("/w/checkpoints/params-000000004.abc.npz"))
    assert figures["steps"]["computed"] == 20
    assert figures["steps"]["rolled_back"] == 2  # worker_0's steps 5-6.
    assert figures["steps"]["final"] == 18
    (server,) = figures["server_kills"]
    assert server["acked_pushes_lost"] == 1 and server["restored_newest"]
    assert server["acked_lost_beyond_checkpoint"] == 0
    assert figures["worker_kills"] == 1
    run = {"outcome": "done", "kills": [], "figures": figures, "longest_stall_secs": 3.0}
    total = chaos.aggregate("async_diloco", [run, run], 600.0)
    assert (total["runs"], total["worker_kills"], total["server_kills"]) == (2, 2, 2)
    assert total["goodput"] == 36 / 40 and total["acked_lost_beyond_checkpoint"] == 0
    table = chaos.markdown({"results": [{"aggregate": total}]})
    assert "| async_diloco | 2 (done, done) | 2 / 2 | 40 | 36 | 90.0% | 2 | 0 |" in table
    stopped = {**run, "outcome": "hang"}  # No final parameters: its steps are listed apart.
    total = chaos.aggregate("diloco", [run, stopped], 600.0)
    assert total["steps"]["computed"] == 20 and total["steps_computed_in_unfinished_runs"] == 20
    assert (total["runs"], total["completed_runs"], total["goodput"]) == (2, 1, 18 / 20)


def test_a_server_that_restored_an_older_checkpoint_is_reported():
    figures = chaos.account_run(_record("/w/checkpoints/params-000000002.abc.npz", 2))
    (server,) = figures["server_kills"]
    assert not server["restored_newest"]
    assert server["acked_lost_beyond_checkpoint"] == 2  # Versions 3 and 4.


def test_role_pid_finds_only_this_runs_process(tmp_path):
    workdir = str(tmp_path)
    argv = ["--role=worker", f"--workdir={workdir}", "--task_index=1"]
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", *argv])
    try:
        deadline = time.monotonic() + 10
        while chaos.role_pid(workdir, "worker_1") is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert chaos.role_pid(workdir, "worker_1") == proc.pid
        assert chaos.role_pid(workdir, "worker_0") is None
        assert chaos.role_pid(workdir + "x", "worker_1") is None
    finally:
        proc.kill()
        proc.wait()


def test_chaos_flags_reach_run(monkeypatch):
    calls = []
    monkeypatch.setattr(faults, "run", lambda **kwargs: calls.append(kwargs))
    faults.main(["--chaos", "--minutes=0.5", "--seed=3", "--config=diloco"])
    (kwargs,) = calls
    assert kwargs["chaos"] and kwargs["kill"] is None
    assert (kwargs["minutes"], kwargs["seed"], kwargs["config"]) == (0.5, 3, "diloco")
    assert (kwargs["min_gap"], kwargs["max_gap"]) == (30.0, 90.0)
    faults.main(["--chaos"])
    assert (calls[-1]["minutes"], calls[-1]["config"]) == (10.0, "both")
    assert faults.chaos_configs("both") == ["async_diloco", "diloco"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--chaos", "--kill=ps_0"], "not allowed with argument"),
        ([], "one of the arguments --kill --chaos is required"),
        (["--chaos", "--minutes=0"], "argument --minutes"),
        (["--chaos", "--config=default"], "argument --config: invalid choice"),
        (["--chaos", "--min_gap=60", "--max_gap=40"], "--min_gap (60) is above --max_gap (40)"),
    ],
)
def test_bad_chaos_flags_are_one_error_line(argv, message, monkeypatch, capsys):
    monkeypatch.setattr(faults, "run", lambda **kwargs: pytest.fail("ran"))
    with pytest.raises(SystemExit) as exit_info:
        faults.main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_the_step_at_a_kill_is_the_newest_process_last_logged_step(tmp_path):
    log = tmp_path / "worker_0.log"
    assert chaos.last_step(str(log)) is None
    text, _ = _log(JOIN, "1", "2", "3")
    log.write_text(text)
    assert chaos.last_step(str(log)) == 3
    log.write_text(text + RESTART + "\n")  # Started again, not stepping yet.
    assert chaos.last_step(str(log)) is None
