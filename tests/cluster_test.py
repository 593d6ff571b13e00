"""Cluster specs from TF_CONFIG, Slurm and files; a loopback cluster started from TF_CONFIG."""

import json
import os
import signal
import socket
import subprocess
import sys

import pytest
from conftest import REPO_ROOT

from gasgd_tf import checkpoints, cluster
from gasgd_tf.cluster import ClusterError, ClusterTask

CLUSTER = {
    "ps": ["ps-0:2222", "ps-1:2223"],
    "chief": ["chief-0:2222"],
    "worker": ["worker-0:2222", "worker-1:2222"],
    "evaluator": ["evaluator-0:2222"],
}


def tf_config(kind, index, jobs=None):
    return {"cluster": jobs or CLUSTER, "task": {"type": kind, "index": index}}


@pytest.mark.parametrize(
    "kind, index, expected",
    [
        ("ps", 1, ClusterTask("ps", 1, "0.0.0.0:2223", 3, 2, "TF_CONFIG")),
        ("chief", 0, ClusterTask("worker", 0, "ps-0:2222,ps-1:2223", 3, 2, "TF_CONFIG")),
        ("worker", 1, ClusterTask("worker", 2, "ps-0:2222,ps-1:2223", 3, 2, "TF_CONFIG")),
        ("evaluator", 0, ClusterTask("eval", 0, "ps-0:2222,ps-1:2223", 3, 2, "TF_CONFIG")),
    ],
)
def test_tf_config_names_role_index_and_addresses(kind, index, expected):
    assert cluster.from_tf_config(tf_config(kind, index)) == expected


def test_without_a_chief_workers_keep_their_indices():
    jobs = {"ps": ["p:1"], "worker": ["w0:1", "w1:1"]}
    task = cluster.from_tf_config(tf_config("worker", 1, jobs))
    assert (task.role, task.task_index, task.num_workers) == ("worker", 1, 2)
    sparse = {"ps": {"0": "p:1"}, "worker": {"1": "w1:1", "0": "w0:1"}}  # TensorFlow's sparse form.
    assert cluster.from_tf_config(tf_config("worker", 1, sparse)).num_workers == 2
    master = {"ps": ["p:1"], "master": ["m:1"], "worker": ["w0:1"]}  # Kubeflow's older chief.
    assert cluster.from_tf_config(tf_config("master", 0, master)).task_index == 0
    assert cluster.from_tf_config(tf_config("worker", 0, master)).task_index == 1


@pytest.mark.parametrize(
    "document, message",
    [
        ({"task": {"type": "worker"}}, "no 'cluster'"),
        ({"cluster": CLUSTER}, "no 'task'"),
        (tf_config("trainer", 0), "task type 'trainer' is not one of"),
        (tf_config("worker", 2), r"task worker:2 is not in the cluster \(2 worker tasks\)"),
        (tf_config("worker", 0, {"worker": ["w:1"]}), "no 'ps' job"),
        (tf_config("ps", 0, {"ps": ["p:1"]}), "no 'worker'"),
        (tf_config("ps", 0, {"ps": ["p"], "worker": ["w:1"]}), "'p' is not 'host:port'"),
        ([1, 2], "expected a JSON object"),
        (tf_config("evaluator", 1), "one evaluator"),
        (tf_config("worker", 0, {"ps": ["p:1"], "worker": {"0": "w:1", "2": "w:2"}}), "from 0 up"),
    ],
)
def test_bad_tf_configs_are_named(document, message):
    with pytest.raises(ClusterError, match=message):
        cluster.from_tf_config(document)


def test_slurm_tasks_become_shards_workers_and_the_evaluator():
    env = {
        "SLURM_NTASKS": "6",
        "SLURM_JOB_NODELIST": "gpu[07-08],cpu1",
        "SLURM_TASKS_PER_NODE": "2(x2),2",
    }
    roles = [
        cluster.from_slurm({**env, "SLURM_PROCID": str(rank)}, num_shards=2, base_port=6000)
        for rank in range(6)
    ]
    assert [(t.role, t.task_index) for t in roles] == [
        ("ps", 0),
        ("ps", 1),
        ("worker", 0),
        ("worker", 1),
        ("worker", 2),
        ("eval", 0),
    ]
    assert roles[0].ps_address == "0.0.0.0:6000" and roles[1].ps_address == "0.0.0.0:6001"
    # Tasks 0-1 on gpu07, 2-3 on gpu08: the shards both live on gpu07.
    assert roles[2].ps_address == "gpu07:6000,gpu07:6001"
    assert {t.num_workers for t in roles} == {3}
    # GPUs by rank among the workers of a node: gpu08's two workers take 0 and 1.
    assert [t.local_rank for t in roles] == [None, None, 0, 1, 0, None]


def test_slurm_lists_expand():
    assert cluster.expand_hostlist("n[1-3,10],login,a[01-02]b") == [
        "n1",
        "n2",
        "n3",
        "n10",
        "login",
        "a01b",
        "a02b",
    ]
    assert cluster.expand_tasks_per_node("2(x3),1") == [2, 2, 2, 1]
    with pytest.raises(ClusterError, match="bad range"):
        cluster.expand_hostlist("n[a-b]")
    with pytest.raises(ClusterError, match="at least one worker"):
        cluster.from_slurm(
            {
                "SLURM_PROCID": "0",
                "SLURM_NTASKS": "2",
                "SLURM_JOB_NODELIST": "n1",
                "SLURM_TASKS_PER_NODE": "2",
            },
            num_shards=1,
        )


def test_resolve_prefers_the_file_then_tf_config_then_slurm(tmp_path):
    path = tmp_path / "cluster.json"
    path.write_text(json.dumps({"cluster": CLUSTER}))
    env = {"TF_CONFIG": json.dumps(tf_config("ps", 0)), "SLURM_PROCID": "0"}
    from_file = cluster.resolve(env, str(path), task_type="evaluator", task_index=0)
    assert (from_file.role, from_file.source) == ("eval", str(path))
    assert cluster.resolve(env).role == "ps"
    with pytest.raises(ClusterError, match="found no cluster"):
        cluster.resolve({})
    with pytest.raises(ClusterError, match="TF_CONFIG is not JSON"):
        cluster.resolve({"TF_CONFIG": "{"})
    assert cluster.local_rank({"SLURM_LOCALID": "3"}, default=0) == 3
    assert cluster.local_rank({}, default=5) == 5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_a_cluster_started_from_tf_config_trains_to_completion(digits_data_dir, tmp_path):
    # What a Kubernetes TFJob does: the same command in every pod, each with
    # its own TF_CONFIG. Here the pods are processes on loopback.
    jobs = {
        "ps": [f"127.0.0.1:{_free_port()}"],
        "chief": ["127.0.0.1:1"],  # Workers are never dialled: any port.
        "worker": ["127.0.0.1:2"],
        "evaluator": ["127.0.0.1:3"],
    }
    steps = 60

    def start(kind, index=0):
        env = dict(os.environ, TF_CONFIG=json.dumps(tf_config(kind, index, jobs)))
        env["TF_CPP_MIN_LOG_LEVEL"] = "2"
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gasgd_tf.main",
                "--config=configs/default.py",
                "--role=auto",
                f"--workdir={tmp_path / kind}",
                f"--config.data.data_dir={digits_data_dir}",
                f"--config.num_steps={steps}",
                "--config.num_workers=7",  # The cluster's count (2) wins.
                "--config.eval.every_secs=0.5",
            ],
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    ps = start("ps")
    others = [start("chief"), start("worker"), start("evaluator")]
    try:
        outputs = [p.communicate(timeout=300)[0] for p in others]
        for p, out in zip(others, outputs):
            assert p.returncode == 0, out[-3000:]
        assert "TF_CONFIG: this process is worker 1 of a cluster with 1 server shard(s) and " in (
            outputs[1]
        )
        assert "eval: final accuracy" in outputs[2]
        ps.send_signal(signal.SIGTERM)  # As the operator deletes the ps pod when the job is done.
        ps_out = ps.communicate(timeout=60)[0]
    finally:
        for p in [ps, *others]:
            p.kill()
    assert ps.returncode == 0, ps_out[-3000:]
    assert f"listening on 0.0.0.0:{jobs['ps'][0].rsplit(':', 1)[1]}" in ps_out
    # Both workers pushed every step: the server's final checkpoint says 2 x steps.
    assert checkpoints.load(str(tmp_path / "ps")).version == 2 * steps
    with open(tmp_path / "evaluator" / "progress" / "eval.json") as f:
        final = json.load(f)
    assert final["final"] and final["version"] == 2 * steps
