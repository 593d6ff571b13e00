"""The gasgd_tf command line: parse flags, write config.json, run one role.

Usage:
  python -m gasgd_tf.main --config=configs/default.py           # everything, locally
  python -m gasgd_tf.main --config=configs/default.py --config.num_workers=4
  python -m gasgd_tf.main --config=configs/default.py --role=ps --ps_address=0.0.0.0:50051
  python -m gasgd_tf.main --config=configs/default.py --role=worker --task_index=0 \\
      --ps_address=HOST:50051
  python -m gasgd_tf.main --config=configs/default.py --role=eval --ps_address=HOST:50051
  # A server sharded over two processes (--task_index is the shard index):
  python -m gasgd_tf.main --config=configs/default.py --config.ps.num_shards=2 --role=ps \
      --task_index=1 --ps_address=0.0.0.0:50052
  python -m gasgd_tf.main --config=configs/default.py --config.ps.num_shards=2 --role=worker \
      --task_index=0 --ps_address=HOST:50051,HOST:50052

Roles: ``local`` starts a server, ``num_workers`` workers and an evaluator on
this machine; ``ps``, ``worker`` and ``eval`` run one process each, for
several hosts; ``prepare`` builds the dataset in its data_dir and exits (the
launcher runs it once before the workers, so they do not race to build it).
"""

import os
import sys

from absl import app, flags
from ml_collections import config_flags

from gasgd_tf import config_base

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None, "Config file, e.g. configs/default.py; override fields with --config.a.b=value."
)
flags.DEFINE_string(
    "config_json", None, "A resolved config.json to run instead of --config (e.g. a past run's)."
)
flags.DEFINE_string("workdir", None, "Run folder. Default: runs/<config file name>.")
flags.DEFINE_enum(
    "role",
    "local",
    ["local", "ps", "worker", "eval", "prepare", "auto"],
    "What this process runs; auto: the task TF_CONFIG, Slurm or --cluster_file names "
    "(gasgd_tf/cluster.py).",
)
flags.DEFINE_string(
    "cluster_file", None, "role=auto: a TF_CONFIG-style JSON file describing the cluster."
)
flags.DEFINE_enum(
    "task_type",
    None,
    ["ps", "chief", "worker", "evaluator"],
    "role=auto with --cluster_file: this task's type (with --task_index), if the file has none.",
)
flags.DEFINE_integer("base_port", 50051, "role=auto under Slurm: shard k listens on base_port+k.")
flags.DEFINE_integer(
    "task_index", 0, "Worker index (role=worker); shard index (role=ps with ps.num_shards > 1)."
)
flags.DEFINE_string(
    "ps_address",
    None,
    "role=ps: host:port to listen on (default 127.0.0.1:50051; 0.0.0.0:PORT for other hosts). "
    "role=worker/eval: the server's host:port; with ps.num_shards > 1, every shard's "
    "host:port in shard order, separated by commas.",
)
flags.DEFINE_string("port_file", None, "role=ps: write the bound port here (for launchers).")
flags.DEFINE_bool(
    "restore",
    None,
    "Resume from the newest checkpoint in the workdir (the default when there is one); "
    "--restore: there must be one; --norestore: start a new run (old checkpoints are kept). "
    "Sets config.restore.",
)


# The run id of a --role=ps server started without --config.run_id.
DEFAULT_PS_RUN_ID = "default"


def load_config():
    """The resolved config from --config_json or --config, with its name set."""
    if FLAGS.config_json:
        with open(FLAGS.config_json) as f:
            return config_base.from_json(f.read())
    if FLAGS.config is None:
        raise app.UsageError("pass --config=configs/<name>.py (or --config_json=PATH)")
    config = FLAGS.config
    config.unlock()
    # An experiment config (configs/exp*.py) also runs as one run: its base
    # settings, without the grid that gasgd_tf.experiments.run sweeps over.
    for sweep_field in ("sweep", "smoke"):
        if sweep_field in config:
            del config[sweep_field]
    path = config_flags.get_config_filename(FLAGS["config"])
    config.name = os.path.splitext(os.path.basename(path))[0]
    return config_base.finalize(config)


def _resolve_warm_start(config):
    """Pins ``warm_start`` to one checkpoint file, so that every worker reads the same one."""
    from gasgd_tf import checkpoints

    try:
        # Reads the metadata only: a wrong file fails here, before any process starts.
        path = os.path.abspath(checkpoints.load_meta(config.warm_start).path)
    except (FileNotFoundError, checkpoints.CheckpointError) as e:
        raise app.UsageError(f"warm start: {e}") from None
    with config.unlocked():
        config.warm_start = path
    return config


def _from_cluster(config):
    """role=auto: (role, task index, ps address, config) from TF_CONFIG, Slurm or a file.

    The cluster decides how many workers and shards there are; the config
    follows it (and is checked again).
    """
    from gasgd_tf import cluster

    try:
        task = cluster.resolve(
            cluster_file=FLAGS.cluster_file,
            task_type=FLAGS.task_type,
            task_index=FLAGS.task_index,
            num_shards=config.ps.num_shards,
            base_port=FLAGS.base_port,
        )
    except cluster.ClusterError as e:
        raise app.UsageError(str(e)) from None
    with config.unlocked():
        config.num_workers = task.num_workers
        config.ps.num_shards = task.num_shards
    if task.local_rank is not None:  # Slurm: the rank among the workers of the node.
        os.environ["LOCAL_RANK"] = str(task.local_rank)
    elif task.source == "TF_CONFIG":
        # One pod per task: a worker takes its pod's first GPU unless told otherwise.
        os.environ.setdefault("LOCAL_RANK", "0")
    try:
        config = config_base.finalize(config)
    except ValueError as e:
        raise app.UsageError(f"{task.source}: {e}") from None
    print(
        f"{task.source}: this process is {task.role} {task.task_index} of a cluster with "
        f"{task.num_shards} server shard(s) and {task.num_workers} worker(s); "
        f"ps address {task.ps_address}",
        flush=True,
    )
    return task.role, task.task_index, task.ps_address, config


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    try:
        config = load_config()
    except ValueError as e:
        raise app.UsageError(str(e)) from None
    workdir = FLAGS.workdir or os.path.join("runs", config.name)
    role = FLAGS.role
    task_index, ps_address = FLAGS.task_index, FLAGS.ps_address
    if role == "auto":
        role, task_index, ps_address, config = _from_cluster(config)
    if FLAGS.restore is not None:
        with config.unlocked():
            config.restore = FLAGS.restore

    if role == "ps":
        from gasgd_tf.allocator import tune_for_server
        from gasgd_tf.security import SecurityConfigError
        from gasgd_tf.server import server  # No TensorFlow in this process.

        tune_for_server()  # Before the server's threads: gasgd_tf/allocator.py.
        if not config.run_id:
            # Names this server's checkpoints, so that a restart resumes them
            # and old ones are pruned; several runs in one workdir need ids.
            with config.unlocked():
                config.run_id = DEFAULT_PS_RUN_ID

        os.makedirs(workdir, exist_ok=True)
        if not 0 <= task_index < config.ps.num_shards:
            raise app.UsageError(
                f"--task_index={task_index} is not a shard index of "
                f"ps.num_shards={config.ps.num_shards}"
            )
        from gasgd_tf.server.checkpointing import RestoreFailedError
        from gasgd_tf.server.store import RestoreError

        try:
            server.run(
                config,
                workdir,
                ps_address or "127.0.0.1:50051",
                FLAGS.port_file,
                shard_index=task_index,
            )
        except (SecurityConfigError, RestoreFailedError, RestoreError) as e:
            print(f"error: ps: {e}", file=sys.stderr, flush=True)
            return 1
        return 0
    if role == "local":
        from gasgd_tf import launch  # No TensorFlow in the launcher either.
        from gasgd_tf.progress import write_json

        if config.warm_start:
            config = _resolve_warm_start(config)
        try:
            resumed = launch.choose_run(config, workdir)
        except ValueError as e:
            raise app.UsageError(str(e)) from None
        launch.prepare_workdir(workdir, resuming=resumed is not None)
        write_json(os.path.join(workdir, "config.json"), config.to_dict())
        return launch.LocalLauncher(config, workdir, resumed_from=resumed).run()
    if role == "prepare":
        from gasgd_tf.data import pipeline

        pipeline.prepare(config.data)
        return 0

    if not ps_address:
        raise app.UsageError(f"--role={role} needs --ps_address=HOST:PORT of the server")
    shards = len([a for a in ps_address.split(",") if a.strip()])
    if shards != config.ps.num_shards:
        raise app.UsageError(
            f"--ps_address names {shards} servers but ps.num_shards={config.ps.num_shards}: "
            "give every shard's host:port, in shard order, separated by commas"
        )
    from gasgd_tf.checkpoints import CheckpointError
    from gasgd_tf.client import RequestRejectedError, ServerUnavailableError
    from gasgd_tf.security import SecurityConfigError

    try:
        if role == "worker":
            from gasgd_tf import worker
            from gasgd_tf.devices import DeviceError

            try:
                worker.train(config, task_index, ps_address, workdir)
            except DeviceError as e:
                print(f"error: worker: {e}", file=sys.stderr, flush=True)
                return 1
        else:
            from gasgd_tf import evaluation

            evaluation.run(config, ps_address, workdir)
    except (
        ServerUnavailableError,
        RequestRejectedError,
        FileNotFoundError,
        CheckpointError,
        SecurityConfigError,
    ) as e:
        print(f"error: {role}: {e}", file=sys.stderr, flush=True)
        return 1
    return 0


def run():
    """Console entry point."""
    from gasgd_tf.launch import die_with_parent_if_asked

    die_with_parent_if_asked()  # Before anything slow: see gasgd_tf/launch.py.
    from gasgd_tf.allocator import tune_for_streams

    tune_for_streams()  # Megabyte chunks from the heap, not mmap: gasgd_tf/allocator.py.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # Hide TensorFlow's INFO lines.
    app.run(lambda argv: sys.exit(main(argv)))


if __name__ == "__main__":
    run()
