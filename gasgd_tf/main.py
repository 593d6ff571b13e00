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

Errors: a mistake on the command line prints ``error: ...`` (and a usage
line where that helps) and exits with status 2; a failure while running
(a server that cannot listen, one that cannot be reached) prints
``error: <role>: ...`` and exits with status 1. No traceback either way.

Roles: ``local`` starts a server, ``num_workers`` workers and an evaluator on
this machine; ``ps``, ``worker`` and ``eval`` run one process each, for
several hosts; ``prepare`` builds the dataset in its data_dir and exits (the
launcher runs it once before the workers, so they do not race to build it).
"""

import os
import re
import sys

from absl import app, flags
from ml_collections import config_flags

from gasgd_tf import addresses, config_base, layout

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
flags.DEFINE_integer(
    "base_port",
    50051,
    "role=auto under Slurm: shard k listens on base_port+k.",
    lower_bound=1,
    upper_bound=addresses.MAX_PORT,
)
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
DEFAULT_PS_ADDRESS = "127.0.0.1:50051"

# Exit statuses: a command-line mistake (as argparse and most tools), a failure at run time.
USAGE_EXIT = 2
ERROR_EXIT = 1
USAGE_LINE = (
    "usage: python -m gasgd_tf.main --config=configs/<name>.py [--config.FIELD=VALUE ...] "
    "[--role=local|ps|worker|eval|prepare|auto] [--workdir=DIR] (--helpshort lists the flags)"
)


class UsageError(app.UsageError):
    """A command-line mistake: reported as one ``error:`` line, exit status 2.

    Args:
      message: What is wrong, naming the flag.
      show_usage: Also print the usage line (for mistakes in the command's
        shape, where the line helps; not for a wrong value).
    """

    def __init__(self, message: str, show_usage: bool = False):
        super().__init__(message, exitcode=USAGE_EXIT)
        self.show_usage = show_usage


def report_error(message: str, exitcode: int, show_usage: bool = False) -> int:
    """Prints ``error: <message>`` (and the usage line) to stderr; returns ``exitcode``.

    The one way this command reports an error, at flag parsing, in ``main``
    and at run time.
    """
    print(f"error: {message}", file=sys.stderr, flush=True)
    if show_usage:
        print(USAGE_LINE, file=sys.stderr, flush=True)
    return exitcode


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flags parser (``app.run(..., flags_parser=parse_flags)``), with one-line errors.

    ml_collections parses ``--config`` and its ``--config.a.b=value``
    overrides while absl parses the flags, before ``main`` runs, and some
    of its errors (an unknown field, a config file it cannot load) are not
    absl's ``flags.Error``: absl's own parser lets them out as tracebacks.

    Returns:
      The arguments left after the flags, program name first.
    """
    try:
        return FLAGS(argv)
    except Exception as e:
        message = flag_error_message(e, argv)
        if message is None:
            raise  # Not a command-line mistake (a bug in a config file, say): the traceback helps.
        sys.exit(report_error(message, USAGE_EXIT, show_usage=isinstance(e, flags.Error)))


def flag_error_message(error: Exception, argv: list[str]) -> str | None:
    """The one-line message for an error raised while parsing ``argv``; None if it is no flag's.

    Args:
      error: What ``FLAGS(argv)`` raised.
      argv: The command line, program name first.
    """
    if isinstance(error, flags.Error):
        return str(error)
    if isinstance(error, OSError):
        return config_file_message(error, argv)
    if isinstance(error, (AttributeError, KeyError)):
        return _unknown_field_message(error, argv)
    return None


def config_file_message(error: OSError, argv: list[str]) -> str:
    """``--config=PATH: ...`` for a config file that ml_collections could not load."""
    path = _flag_value(argv, "config")
    if path and not os.path.exists(path.split(":", 1)[0]):
        return f"--config={path}: no such file"
    # ml_collections' message lists every path it tried; the last line is the cause.
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return f"--config={path}: cannot load it: {lines[-1] if lines else error}"


def _unknown_field_message(error: Exception, argv: list[str]) -> str | None:
    """``--config.x: the config has no field 'x'; did you mean 'y'?``, or None if no override.

    ml_collections raises KeyError("'x'\\nDid you mean \"y\" instead of \"x\"?"), for a
    top-level field wrapped in an AttributeError.
    """
    inner = error.args[0] if error.args else ""
    if isinstance(inner, KeyError):
        inner = inner.args[0] if inner.args else ""
    lines = str(inner).splitlines()
    if not lines:
        return None
    key = lines[0].strip().strip("'\"")
    for arg in argv[1:]:
        name = arg.lstrip("-").split("=", 1)[0]
        if not name.startswith("config."):
            continue
        path = name[len("config.") :].split(".")
        if key in path:
            field = ".".join(path[: path.index(key) + 1])
            message = f"--{name}: the config has no field {field!r}"
            hint = re.search(r'Did you mean "([^"]+)"', "\n".join(lines[1:]))
            if hint:
                suggested = path[: path.index(key)] + [hint.group(1)]
                message += f"; did you mean --config.{'.'.join(suggested)}?"
            return message
    return None  # Not about an override on this command line: not ours to explain.


def _flag_value(argv: list[str], name: str) -> str | None:
    """The value of ``--name=V`` or ``--name V`` in ``argv`` (the last one), or None."""
    value = None
    for i, arg in enumerate(argv[1:], start=1):
        for prefix in (f"--{name}", f"-{name}"):
            if arg.startswith(prefix + "="):
                value = arg[len(prefix) + 1 :]
            elif arg == prefix and i + 1 < len(argv):
                value = argv[i + 1]
    return value


def load_config():
    """The resolved config from --config_json or --config, with its name set.

    Raises:
      UsageError: Neither is given, or the file cannot be read.
      ValueError: An invalid config (``config_base.finalize``).
    """
    if FLAGS.config_json:
        try:
            with open(FLAGS.config_json) as f:
                text = f.read()
        except OSError as e:
            raise UsageError(f"--config_json={FLAGS.config_json}: {e.strerror or e}") from None
        return config_base.from_json(text)
    if FLAGS.config is None:
        raise UsageError("pass --config=configs/<name>.py (or --config_json=PATH)", True)
    config = FLAGS.config
    try:
        config.unlock()
    except OSError as e:
        # Without overrides ml_collections reports a file it could not load only now.
        raise UsageError(config_file_message(e, sys.argv)) from None
    # An experiment config (configs/exp*.py) also runs as one run: its base
    # settings, without the grid that gasgd_tf.experiments.run sweeps over.
    for sweep_field in ("sweep", "smoke"):
        if sweep_field in config:
            del config[sweep_field]
    path = config_flags.get_config_filename(FLAGS["config"])
    config.name = os.path.splitext(os.path.basename(path))[0]
    return config_base.finalize(config)


def checked_ps_address(role: str, ps_address: str | None, num_shards: int, where: str) -> str:
    """The server address(es) ``role`` uses, checked (``gasgd_tf.addresses``) and normalized.

    Args:
      role: ``ps`` (where to listen: one address, port 0 picks a free one),
        ``worker`` or ``eval`` (every shard's address, in shard order).
      ps_address: The given address(es); None for the default (ps only).
      num_shards: ``ps.num_shards``: how many addresses a client needs.
      where: What gave them, for the error (``--ps_address``, a cluster).

    Raises:
      UsageError: Missing, malformed, or not one per shard.
    """
    try:
        if role == "ps":
            listen = addresses.parse(ps_address or DEFAULT_PS_ADDRESS, where, allow_port_zero=True)
            return str(listen)
        if not ps_address:
            raise UsageError(f"--role={role} needs --ps_address=HOST:PORT of the server")
        listed = addresses.parse_list(ps_address, where)
    except addresses.AddressError as e:
        raise UsageError(str(e)) from None
    if len(listed) != num_shards:
        raise UsageError(
            f"{where} names {len(listed)} servers but ps.num_shards={num_shards}: "
            "give every shard's host:port, in shard order, separated by commas"
        )
    return addresses.join(listed)


def _resolve_warm_start(config):
    """Pins ``warm_start`` to one checkpoint file, so that every worker reads the same one."""
    from gasgd_tf import checkpoints

    try:
        # Reads the metadata only: a wrong file fails here, before any process starts.
        path = os.path.abspath(checkpoints.load_meta(config.warm_start).path)
    except (FileNotFoundError, checkpoints.CheckpointError) as e:
        raise UsageError(f"warm start: {e}") from None
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
        raise UsageError(str(e)) from None
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
        raise UsageError(f"{task.source}: {e}") from None
    print(
        f"{task.source}: this process is {task.role} {task.task_index} of a cluster with "
        f"{task.num_shards} server shard(s) and {task.num_workers} worker(s); "
        f"ps address {task.ps_address}",
        flush=True,
    )
    return task.role, task.task_index, task.ps_address, config


def main(argv: list[str]) -> int:
    """Runs the role the flags name; returns the exit status.

    Everything the command line says is checked before any role starts
    (a mistake raises UsageError); a role's failure at run time is
    reported by ``report_error`` with status 1.
    """
    if len(argv) > 1:
        raise UsageError(f"unexpected arguments: {' '.join(argv[1:])}", show_usage=True)
    try:
        config = load_config()
    except ValueError as e:
        raise UsageError(str(e)) from None
    workdir = FLAGS.workdir or os.path.join("runs", config.name)
    role, task_index = FLAGS.role, FLAGS.task_index
    ps_address, where = FLAGS.ps_address, "--ps_address"
    if role == "auto":
        role, task_index, ps_address, config = _from_cluster(config)
        where = "the cluster's ps address"
    if FLAGS.restore is not None:
        with config.unlocked():
            config.restore = FLAGS.restore
    if role in ("ps", "worker", "eval"):
        ps_address = checked_ps_address(role, ps_address, config.ps.num_shards, where)
    if role == "ps":
        return _run_server(config, workdir, task_index, ps_address)
    if role == "local":
        return _run_local(config, workdir)
    if role == "prepare":
        from gasgd_tf.data import pipeline

        pipeline.prepare(config.data)
        return 0
    return _run_client(role, config, workdir, task_index, ps_address)


def _run_server(config, workdir: str, task_index: int, address: str) -> int:
    """The ``ps`` role: one server (shard) on ``address``, until stopped."""
    if not 0 <= task_index < config.ps.num_shards:
        raise UsageError(
            f"--task_index={task_index} is not a shard index of "
            f"ps.num_shards={config.ps.num_shards}"
        )
    from gasgd_tf.allocator import tune_for_server
    from gasgd_tf.security import SecurityConfigError
    from gasgd_tf.server import server  # No TensorFlow in this process.
    from gasgd_tf.server.checkpointing import RestoreFailedError
    from gasgd_tf.server.store import RestoreError

    tune_for_server()  # Before the server's threads: gasgd_tf/allocator.py.
    if not config.run_id:
        # Names this server's checkpoints, so that a restart resumes them
        # and old ones are pruned; several runs in one workdir need ids.
        with config.unlocked():
            config.run_id = DEFAULT_PS_RUN_ID
    try:
        addresses.check_can_listen(addresses.parse(address, allow_port_zero=True))
    except OSError as e:
        return report_error(f"ps: cannot listen on {address}: {e.strerror or e}", ERROR_EXIT)
    os.makedirs(workdir, exist_ok=True)
    try:
        server.run(config, workdir, address, FLAGS.port_file, shard_index=task_index)
    except (SecurityConfigError, RestoreFailedError, RestoreError, OSError) as e:
        # OSError: it cannot listen there (the port is taken, the host is not this one's).
        return report_error(f"ps: {e}", ERROR_EXIT)
    return 0


def _run_local(config, workdir: str) -> int:
    """The ``local`` role: the launcher, with every process on this machine."""
    from gasgd_tf import launch  # No TensorFlow in the launcher either.
    from gasgd_tf.progress import write_json

    if config.warm_start:
        config = _resolve_warm_start(config)
    try:
        resumed = launch.choose_run(config, workdir)
    except ValueError as e:
        raise UsageError(str(e)) from None
    launch.prepare_workdir(workdir, resuming=resumed is not None)
    write_json(layout.config_path(workdir), config.to_dict())
    return launch.LocalLauncher(config, workdir, resumed_from=resumed).run()


def _run_client(role: str, config, workdir: str, task_index: int, ps_address: str) -> int:
    """The ``worker`` and ``eval`` roles, against the server at ``ps_address``."""
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
                return report_error(f"worker: {e}", ERROR_EXIT)
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
        return report_error(f"{role}: {e}", ERROR_EXIT)
    return 0


def run_main(argv: list[str]) -> int:
    """``main``, with a command-line mistake reported as one line and exit status 2."""
    try:
        return main(argv)
    except app.UsageError as e:  # Ours, and any absl raises for us.
        return report_error(str(e), USAGE_EXIT, getattr(e, "show_usage", False))


def run():
    """Console entry point."""
    from gasgd_tf.launch import die_with_parent_if_asked

    die_with_parent_if_asked()  # Before anything slow: see gasgd_tf/launch.py.
    from gasgd_tf.allocator import tune_for_streams

    tune_for_streams()  # Megabyte chunks from the heap, not mmap: gasgd_tf/allocator.py.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # Hide TensorFlow's INFO lines.
    # absl passes run_main's return value to sys.exit.
    app.run(run_main, flags_parser=parse_flags)


if __name__ == "__main__":
    run()
