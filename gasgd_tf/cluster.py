"""Which role this process plays in a cluster, from TF_CONFIG, Slurm or a cluster file.

``--role=auto`` asks ``resolve`` instead of taking ``--role``,
``--task_index`` and ``--ps_address`` from the command line:

- ``TF_CONFIG`` (what Kubernetes training operators such as Kubeflow's
  TFJob set in every pod)::

      {"cluster": {"ps": ["ps-0:2222"], "chief": ["chief-0:2222"],
                   "worker": ["worker-0:2222", "worker-1:2222"],
                   "evaluator": ["evaluator-0:2222"]},
       "task": {"type": "worker", "index": 1}}

  ``ps`` tasks are the server shards (shard k listens on the port of
  ``cluster.ps[k]``, on every interface); ``chief`` (if any) is worker 0
  and ``worker`` i is worker i + 1 (``len(chief)`` really); ``evaluator``
  is the evaluator. The number of workers and of shards comes from the
  cluster, overriding the config's.
- A cluster file (``--cluster_file``): the same JSON; its ``task`` may be
  left out and given with ``--task_type`` and ``--task_index`` instead.
- Slurm (``SLURM_PROCID``, ``SLURM_NTASKS``, ``SLURM_JOB_NODELIST`` or
  ``SLURM_STEP_NODELIST``, ``SLURM_TASKS_PER_NODE``): tasks 0 to
  ``ps.num_shards - 1`` are the server shards (shard k on port
  ``base_port + k`` of its node), the last task is the evaluator and the
  tasks between are the workers, in order. TensorFlow's
  ``SlurmClusterResolver`` does the same job but needs TensorFlow (the
  server must not import it) and ``scontrol``; the node list syntax is
  expanded here.

The worker's local rank (which GPU it takes on its node) comes from
``local_rank``: ``SLURM_LOCALID``, ``LOCAL_RANK``, else the worker index.

NumPy-free and TensorFlow-free: only the standard library.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Mapping

from gasgd_tf import addresses

DEFAULT_BASE_PORT = 50051


class ClusterError(ValueError):
    """A cluster description that is missing, malformed or does not name this task."""


@dataclasses.dataclass(frozen=True)
class ClusterTask:
    """This process's part in a cluster.

    Attributes:
      role: "ps", "worker" or "eval".
      task_index: The shard index (ps) or the worker index (worker); 0 for eval.
      ps_address: For ps, where to listen (``0.0.0.0:PORT``); for the others,
        every shard's ``host:port`` in shard order, separated by commas.
      num_workers: Workers in the cluster.
      num_shards: Server shards in the cluster.
      source: Where this came from, for logs ("TF_CONFIG", "slurm", a file).
      local_rank: For a worker under Slurm: its rank among the workers of
        its node (the GPU it takes); None when the cluster does not say.
    """

    role: str
    task_index: int
    ps_address: str
    num_workers: int
    num_shards: int
    source: str
    local_rank: int | None = None


def from_tf_config(document: Mapping, source: str = "TF_CONFIG") -> ClusterTask:
    """The task a TF_CONFIG document describes (see the module docstring).

    Raises:
      ClusterError: No ``ps`` or no worker in the cluster, an unknown task
        type, an index out of range, or a malformed address.
    """
    if not isinstance(document, Mapping):
        raise ClusterError(f"{source}: expected a JSON object, got {type(document).__name__}")
    cluster = document.get("cluster")
    task = document.get("task")
    if not isinstance(cluster, Mapping):
        raise ClusterError(f"{source}: no 'cluster' object")
    if not isinstance(task, Mapping) or "type" not in task:
        raise ClusterError(f"{source}: no 'task' with a 'type' and an 'index'")
    jobs = {}
    for job, listed in cluster.items():
        if isinstance(listed, Mapping):  # TensorFlow's sparse form: {"0": "host:port"}.
            try:
                indices = sorted(int(k) for k in listed)
            except ValueError:
                raise ClusterError(f"{source}: cluster.{job} has a non-integer index") from None
            if indices != list(range(len(indices))):
                raise ClusterError(
                    f"{source}: cluster.{job} lists tasks {indices}: gasgd_tf needs every task "
                    "from 0 up (each worker counts)"
                )
            listed = [listed[str(k)] for k in indices]
        if not isinstance(listed, list) or not all(isinstance(a, str) for a in listed):
            raise ClusterError(f"{source}: cluster.{job} must be a list of 'host:port'")
        jobs[job] = [_checked(address, f"{source}: cluster.{job}") for address in listed]
    if "master" in jobs:  # Kubeflow's older name of the chief.
        jobs["chief"] = jobs.pop("master")
    ps = jobs.get("ps", [])
    workers = jobs.get("chief", []) + jobs.get("worker", [])
    if not ps:
        raise ClusterError(f"{source}: the cluster has no 'ps' job (the parameter server)")
    if not workers:
        raise ClusterError(f"{source}: the cluster has no 'worker' (or 'chief') job")
    kind = str(task["type"])
    kind = "chief" if kind == "master" else kind
    try:
        index = int(task.get("index", 0))
    except (TypeError, ValueError):
        raise ClusterError(f"{source}: task.index must be an integer") from None
    known = {"ps": ps, "chief": jobs.get("chief", []), "worker": jobs.get("worker", [])}
    known["evaluator"] = jobs.get("evaluator", [])
    if kind not in known:
        raise ClusterError(
            f"{source}: task type {kind!r} is not one of {sorted(known)} (gasgd_tf runs ps "
            "shards, workers (chief = worker 0) and one evaluator)"
        )
    if kind == "evaluator" and index != 0:
        raise ClusterError(f"{source}: gasgd_tf runs one evaluator, got evaluator:{index}")
    if not 0 <= index < max(len(known[kind]), 1 if kind == "evaluator" else 0):
        raise ClusterError(
            f"{source}: task {kind}:{index} is not in the cluster ({len(known[kind])} {kind} tasks)"
        )
    shards = ",".join(ps)
    common = dict(num_workers=len(workers), num_shards=len(ps), source=source)
    if kind == "ps":
        port = addresses.parse(ps[index]).port  # Checked above.
        return ClusterTask("ps", index, addresses.format_address("0.0.0.0", port), **common)
    if kind == "evaluator":
        return ClusterTask("eval", 0, shards, **common)
    offset = 0 if kind == "chief" else len(known["chief"])
    return ClusterTask("worker", index + offset, shards, **common)


def from_slurm(
    env: Mapping[str, str], num_shards: int, base_port: int = DEFAULT_BASE_PORT
) -> ClusterTask:
    """The task of this Slurm process (see the module docstring).

    Args:
      env: The environment (``os.environ``).
      num_shards: Server shards (``ps.num_shards``): the first tasks.
      base_port: Shard k listens on ``base_port + k``.

    Raises:
      ClusterError: Not inside a Slurm job step, or too few tasks.
    """
    try:
        rank, ntasks = int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"])
    except (KeyError, ValueError):
        raise ClusterError(
            "not in a Slurm job step (SLURM_PROCID and SLURM_NTASKS unset): run with srun"
        ) from None
    nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST")
    per_node = env.get("SLURM_STEP_TASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE")
    if not nodelist or not per_node:
        raise ClusterError("Slurm: SLURM_JOB_NODELIST or SLURM_TASKS_PER_NODE is unset")
    hosts = task_hosts(expand_hostlist(nodelist), expand_tasks_per_node(per_node))
    if len(hosts) < ntasks:
        raise ClusterError(f"Slurm: {ntasks} tasks but the node list places {len(hosts)}")
    num_workers = ntasks - num_shards - 1
    if num_workers < 1:
        raise ClusterError(
            f"Slurm: {ntasks} tasks; gasgd_tf needs ps.num_shards={num_shards} server tasks, "
            "at least one worker and one evaluator"
        )
    for k in range(num_shards):
        _checked_port(base_port + k, f"Slurm: shard {k}'s port (--base_port={base_port} + {k})")
    shards = ",".join(addresses.format_address(hosts[k], base_port + k) for k in range(num_shards))
    common = dict(num_workers=num_workers, num_shards=num_shards, source="slurm")
    if rank < num_shards:
        listen = addresses.format_address("0.0.0.0", base_port + rank)
        return ClusterTask("ps", rank, listen, **common)
    if rank == ntasks - 1:
        return ClusterTask("eval", 0, shards, **common)
    # Among the workers of its node (the server and evaluator take no GPU).
    on_node = sum(1 for r in range(num_shards, rank) if hosts[r] == hosts[rank])
    return ClusterTask("worker", rank - num_shards, shards, **common, local_rank=on_node)


def expand_hostlist(text: str) -> list[str]:
    """Slurm's compressed node list, expanded: ``gpu[01-03,7],login`` -> 4 names.

    Raises:
      ClusterError: Unbalanced brackets or a bad range.
    """
    names: list[str] = []
    for part in re.findall(r"[^,\[]+(?:\[[^\]]*\][^,\[]*)*", text):
        match = re.fullmatch(r"([^\[]*)\[([^\]]+)\](.*)", part)
        if not match:
            if "[" in part or "]" in part:
                raise ClusterError(f"Slurm node list {text!r}: cannot read {part!r}")
            names.append(part)
            continue
        prefix, ranges, rest = match.groups()
        for item in ranges.split(","):
            low, _, high = item.partition("-")
            if not low.isdigit() or (high and not high.isdigit()):
                raise ClusterError(f"Slurm node list {text!r}: bad range {item!r}")
            for n in range(int(low), int(high or low) + 1):
                for tail in expand_hostlist(rest) if "[" in rest else [rest]:
                    names.append(f"{prefix}{n:0{len(low)}d}{tail}")
    return names


def expand_tasks_per_node(text: str) -> list[int]:
    """``SLURM_TASKS_PER_NODE``, expanded: ``2(x3),1`` -> ``[2, 2, 2, 1]``."""
    counts = []
    for item in text.split(","):
        match = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", item.strip())
        if not match:
            raise ClusterError(f"SLURM_TASKS_PER_NODE {text!r}: cannot read {item!r}")
        counts += [int(match.group(1))] * int(match.group(2) or 1)
    return counts


def task_hosts(nodes: list[str], per_node: list[int]) -> list[str]:
    """The node of every task, in task order (Slurm's default block distribution)."""
    if len(per_node) == 1 and len(nodes) > 1:
        per_node = per_node * len(nodes)
    return [node for node, count in zip(nodes, per_node) for _ in range(count)]


def local_rank(env: Mapping[str, str], default: int) -> int:
    """This process's rank on its node: which of the node's GPUs it takes.

    ``LOCAL_RANK`` first (the launcher and ``--role=auto`` set it for
    workers: their rank among the workers of their node), then Slurm's and
    Open MPI's, else ``default``.
    """
    for key in ("LOCAL_RANK", "SLURM_LOCALID", "OMPI_COMM_WORLD_LOCAL_RANK"):
        value = env.get(key)
        if value is not None and value.strip().isdigit():
            return int(value)
    return default


def resolve(
    env: Mapping[str, str] | None = None,
    cluster_file: str | None = None,
    task_type: str | None = None,
    task_index: int | None = None,
    num_shards: int = 1,
    base_port: int = DEFAULT_BASE_PORT,
) -> ClusterTask:
    """This process's task: from ``cluster_file``, else ``TF_CONFIG``, else Slurm.

    Args:
      env: The environment; default ``os.environ``.
      cluster_file: A TF_CONFIG-style JSON file.
      task_type, task_index: The task, for a cluster file without one (or
        to override its).
      num_shards: For Slurm: how many tasks are server shards.
      base_port: For Slurm: the first shard's port.

    Raises:
      ClusterError: Nothing describes a cluster, or what does is wrong.
    """
    env = os.environ if env is None else env
    if cluster_file:
        try:
            with open(cluster_file) as f:
                document = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise ClusterError(f"cluster file {cluster_file}: {e}") from None
        if task_type is not None:
            document = {**document, "task": {"type": task_type, "index": task_index or 0}}
        return from_tf_config(document, source=cluster_file)
    if env.get("TF_CONFIG"):
        try:
            document = json.loads(env["TF_CONFIG"])
        except json.JSONDecodeError as e:
            raise ClusterError(f"TF_CONFIG is not JSON: {e}") from None
        return from_tf_config(document)
    if "SLURM_PROCID" in env:
        return from_slurm(env, num_shards, base_port)
    raise ClusterError(
        "--role=auto found no cluster: set TF_CONFIG (Kubernetes operators do), run under "
        "Slurm's srun, or pass --cluster_file"
    )


def _checked(address: str, where: str) -> str:
    """``address`` in gRPC's form, checked by the one rule (``gasgd_tf.addresses``)."""
    try:
        return str(addresses.parse(address, where))
    except addresses.AddressError as e:
        raise ClusterError(f"{where}: {address!r} is not 'host:port': {e.reason}") from None


def _checked_port(port: int, where: str) -> int:
    try:
        return addresses.check_port(port, where)
    except addresses.AddressError as e:
        raise ClusterError(str(e)) from None
