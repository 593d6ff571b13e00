"""Config defaults and validation: the one place that knows every field.

Config files in configs/ start from ``get_base_config()`` and change what
their experiment needs; ``finalize`` resolves derived fields (``n_push`` and
``n_fetch`` from ``n_sync``) and checks everything before any process starts,
so a bad value fails at once with the field's name instead of minutes later
inside a worker.
"""

from __future__ import annotations

import functools
import json
import math
import re

import ml_collections
from ml_collections import config_dict

from gasgd_tf.data import geometry
from gasgd_tf.data.registry import DATASETS
from gasgd_tf.models.registry import MODELS
from gasgd_tf.tensors import WIRE_DTYPES

WORKER_OPTIMIZERS = ("sgd", "adamw")
PUSH_KINDS = ("gradient", "delta")  # wire.PUSH_KINDS, by name.
LOCAL_STEPS = ("fixed", "adaptive")
AGGREGATIONS = ("each", "round")  # gasgd_tf/server/rounds.py.
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
MAX_SHARDS = 64


def get_base_config() -> ml_collections.ConfigDict:
    """Defaults for every field; see configs/default.py for the default run."""
    c = ml_collections.ConfigDict()
    c.name = "default"  # Names the default workdir: runs/<name>.
    c.seed = 0  # Model init (identical on every worker) and per-worker data seeds.
    # Names this run in its checkpoints, so that the files of a sharded
    # server's shards are merged only with each other. The local launcher
    # sets a fresh one; on several hosts, pass the same string to every ps.
    c.run_id = config_dict.placeholder(str)
    # Resume from the newest checkpoint in the workdir (--restore / --norestore):
    # None: if there is one; True: there must be one; False: start a new run
    # (the old checkpoints are kept). A restarted server always resumes its run.
    c.restore = config_dict.placeholder(bool)

    c.num_workers = 2
    c.num_steps = 400  # Training steps per worker.
    c.batch_size = 32  # Per worker.
    # Paper semantics: push accumulated gradients every n_push steps, fetch
    # fresh parameters every n_fetch steps; n_sync sets both when they are unset.
    c.n_sync = 1
    c.n_push = config_dict.placeholder(int)
    c.n_fetch = config_dict.placeholder(int)

    c.data = ml_collections.ConfigDict()
    c.data.name = "sklearn_digits"  # See gasgd_tf/data/registry.py.
    c.data.data_dir = config_dict.placeholder(str)  # tfds data_dir; None: tfds default.
    c.data.shuffle_buffer = 2048
    c.data.manual_dir = config_dict.placeholder(str)  # tfds manual_dir (imagenet2012).
    # Augmentation (gasgd_tf/data/augment.py): resize the shorter side to
    # `resize` (0: keep), zero-pad by `pad` pixels on each side, take a random
    # `crop` x `crop` window (0: the image size) and, if `flip`, mirror it
    # half of the time. Evaluation takes the centre window.
    c.data.resize = 0
    c.data.pad = 0
    c.data.crop = 0
    c.data.flip = False

    c.model = ml_collections.ConfigDict()
    c.model.name = "digits_cnn"  # See gasgd_tf/models/registry.py.
    # None: the model's own default (e.g. paper_imagenet: dropout 0.5 with LRN;
    # paper_imagenet_small: width 0.25), so naming a model gives the paper's net.
    c.model.dropout = config_dict.placeholder(float)
    c.model.width = config_dict.placeholder(float)  # Multiplies filters and hidden units.
    c.model.lrn = config_dict.placeholder(bool)  # Local response normalisation, where it has it.

    # A checkpoint file or the workdir of a finished run whose final
    # parameters initialise the server (warm start); None: cold start.
    c.warm_start = config_dict.placeholder(str)

    # The local optimizer each worker applies every step between syncs: sgd
    # (with momentum), or adamw (keras.optimizers.AdamW with weight_decay;
    # DiLoCo's inner optimizer).
    c.worker = ml_collections.ConfigDict()
    c.worker.optimizer = "sgd"
    c.worker.learning_rate = 0.05
    c.worker.momentum = 0.0  # sgd.
    c.worker.weight_decay = 0.004  # adamw (Keras' default).
    # What a push carries: "gradient", the sum of the raw gradients since the
    # last push (Downpour SGD), or "delta", the parameter delta
    # theta_fetched - theta_local after n_push local steps of the worker's
    # optimizer, which the server's optimizer applies as a gradient (the
    # outer step of DiLoCo). The server applies one kind and refuses the other.
    c.worker.push = "gradient"
    # Local steps between syncs: "fixed" (n_push), or "adaptive" (DyLU, Liu
    # et al. 2024): the server tells each worker its H from its measured
    # step rate, n_push for the fastest and proportionally fewer for slower
    # ones, so all sync at about the same wall-clock interval. Needs
    # n_fetch == n_push.
    c.worker.local_steps = "fixed"
    c.worker.cpu_threads = 0  # TF intra/inter-op threads on CPU; 0: TensorFlow's default.
    c.worker.log_every_steps = 50  # TensorBoard train/* and the progress file.
    c.worker.jit_compile = False  # XLA: 1.5-2.6x slower on these CPUs; try it on GPUs.
    # Keras mixed precision: float32, mixed_float16 (with dynamic loss
    # scaling) or mixed_bfloat16. Variables, and the gradients pushed, stay
    # float32 (client.push_dtype sets the transport precision).
    c.worker.precision = "float32"
    # Each worker takes the GPU of its local rank on its node; more workers
    # than GPUs is an error unless share_gpus.
    c.worker.share_gpus = False
    # Push and fetch on a background thread while the next steps compute
    # (at most one in flight; fetched weights may be a step or two older).
    c.worker.overlap = False
    # EMULATION of heterogeneous hardware: seconds of sleep added after every
    # step, per worker (entry i for worker i; one entry: every worker), so a
    # run can have slow workers on one machine. Every output that reports a
    # delayed worker's speed says so. (): none.
    c.worker.step_delay_secs = ()

    # The server-side optimizer that applies pushed gradients, with the
    # keras.optimizers hyperparameters of the same names (each optimizer
    # reads those it has: gasgd_tf/server/server_config.py, OPTIMIZER_HPARAMS).
    c.ps = ml_collections.ConfigDict()
    c.ps.optimizer = "sgd"  # sgd, adagrad, adadelta, rmsprop, adam.
    c.ps.learning_rate = 0.05
    c.ps.momentum = 0.0  # sgd, rmsprop.
    c.ps.nesterov = False  # sgd.
    c.ps.weight_decay = 0.0  # Decoupled, every optimizer.
    c.ps.beta_1 = 0.9  # adam.
    c.ps.beta_2 = 0.999  # adam.
    c.ps.epsilon = 1e-7  # adagrad, adadelta, rmsprop, adam.
    c.ps.rho = config_dict.placeholder(float)  # adadelta (0.95), rmsprop (0.9); None: Keras'.
    c.ps.initial_accumulator_value = 0.1  # adagrad.
    c.ps.amsgrad = False  # adam.
    c.ps.centered = False  # rmsprop.
    # Learning rate by server version: constant; step (times lr_decay_rate
    # every lr_decay_steps versions); cosine (to lr_alpha x the rate at lr_decay_steps).
    c.ps.lr_schedule = "constant"
    c.ps.lr_decay_steps = 1000
    c.ps.lr_decay_rate = 0.5
    c.ps.lr_alpha = 0.0
    # Staleness policy (gasgd_tf/server/staleness.py): none, lr_scale,
    # bounded (no push staler than staleness_bound), dc_asgd (dc_lambda).
    c.ps.staleness = "none"
    c.ps.staleness_bound = 2
    c.ps.dc_lambda = 0.04
    c.ps.straggler_secs = 30.0  # bounded: stop waiting for a worker silent this long.
    # delayed_nesterov (Liu et al. 2024): each push is applied at once as a
    # plain step of learning_rate / dn_period; the Nesterov momentum
    # (ps.momentum) takes the average of the last dn_period pushes, once
    # every dn_period pushes. dn_period 0: num_workers. dn_c: the share of
    # the momentum step applied between those updates (0: none).
    c.ps.dn_period = 0
    c.ps.dn_c = 0.0
    # How pushes become updates (gasgd_tf/server/rounds.py): "each", one
    # update per push (asynchronous, Downpour); "round", synchronous rounds:
    # one push per active worker, averaged weighted by their samples, one
    # update, and only then are the round's fetches answered. A round whose
    # members have not all pushed closes round_timeout_secs after its first
    # push once round_quorum (a fraction of the active workers) has; a late
    # push counts in the round open when it arrives. Needs n_fetch == n_push.
    c.ps.aggregation = "each"
    c.ps.round_quorum = 0.5
    c.ps.round_timeout_secs = 30.0
    # Sharded parameter server (DistBelief): num_shards server processes, each
    # holding part of the parameters (gasgd_tf/sharding.py); tensors above
    # shard_split_bytes are split over all shards, the rest balanced by size.
    c.ps.num_shards = 1
    c.ps.shard_split_bytes = 4 << 20
    c.ps.rpc_threads = 32
    # Pushes received and applied at once, each in a buffer the size of the
    # parameters: bounds the server's memory; more wait (flow control).
    c.ps.max_concurrent_pushes = 2
    # Fetches streamed at once, each holding a snapshot of the parameters
    # (versions move with every push); more wait, then RESOURCE_EXHAUSTED.
    c.ps.max_concurrent_fetches = 4
    c.ps.summary_every_secs = 2.0
    c.ps.max_parameter_bytes = 16 << 30  # Initialize refuses larger models.
    # Checkpoints of the whole server state (parameters, optimizer slots,
    # version, clients' push sequences) in <workdir>/checkpoints: one as soon
    # as the parameters are set, then every checkpoint_every_secs or every
    # checkpoint_every_updates updates (0: off), and on shutdown; the newest
    # keep_checkpoints of the run are kept. A restarted server resumes from
    # the newest, losing only the updates applied after it.
    c.ps.save_checkpoint = True
    c.ps.checkpoint_every_secs = 30.0
    c.ps.checkpoint_every_updates = 0
    c.ps.keep_checkpoints = 3
    # A client with no call or heartbeat for this long is dropped from the
    # staleness bounds until it calls again (0: never).
    c.ps.heartbeat_timeout_secs = 60.0
    # Most client records the server keeps (any caller can name a new id):
    # full, it forgets expired read-only clients first, then other expired
    # ones, else refuses new ids (RESOURCE_EXHAUSTED). 1024: far above a
    # run's workers + evaluator, ~1.3 MB of records and of a Status reply.
    c.ps.max_clients = 1024

    # Deadlines: every call gets timeout_secs per attempt; transport failures
    # are retried for retry_secs, then the process exits naming the server.
    c.client = ml_collections.ConfigDict()
    c.client.timeout_secs = 60.0
    # Long enough for the launcher to restart a failed server from its checkpoint.
    c.client.retry_secs = 30.0
    c.client.heartbeat_secs = 10.0  # Workers tell the server they are alive this often.
    c.client.connect_timeout_secs = 60.0
    c.client.chunk_bytes = 1 << 20
    # The dtypes gradients (push) and parameters (fetch) travel in: float32,
    # or bfloat16 / float16 for half the bytes. The server keeps float32.
    c.client.push_dtype = "float32"
    c.client.fetch_dtype = "float32"
    # Low-bit push codecs (gasgd_tf/codecs.py), for gradient and delta
    # pushes alike: none; int8 or int4 (blockwise absmax scale, one per
    # codec_block_size values); topk (the topk_fraction largest values, as
    # indices and bfloat16). The quantization error is kept on the worker and
    # added to its next push (error feedback). Needs push_dtype float32.
    c.client.push_codec = "none"
    c.client.codec_block_size = 2048
    c.client.topk_fraction = 0.01

    # Streaming fragment sync (Streaming DiLoCo, Douillard et al. 2025, arXiv
    # 2501.18512; gasgd_tf/replica/streaming.py). fragments = F > 1: the
    # model is cut into F fragments of about equal size (the sharding plan,
    # gasgd_tf/fragments.py), and fragment f syncs alone every n_push steps,
    # at step offset f * n_push / F: it pushes its delta and fetches the
    # fragment in the background; the fetched values are merged into the
    # local ones as mix_alpha * local + (1 - mix_alpha) * fetched once they
    # have arrived and at least overlap_steps local steps have passed (at the
    # latest before that fragment's next push). Needs worker.push='delta'.
    c.sync = ml_collections.ConfigDict()
    c.sync.fragments = 1
    c.sync.overlap_steps = 0
    c.sync.mix_alpha = 0.5

    # Who may talk to the parameter service (gasgd_tf/security.py). A bearer
    # token from token_file, or from the environment variable token_env;
    # TLS with the server's PEM certificate and key, verified by clients
    # against tls_ca; tls_client_auth: mutual TLS with client certificates.
    # tls_server_name: the name clients check the server's certificate for
    # instead of the host in the address (a certificate without an IP SAN
    # for a server reached as 127.0.0.1, or behind a load balancer).
    c.security = ml_collections.ConfigDict()
    c.security.token_file = config_dict.placeholder(str)
    c.security.token_env = "GASGD_TF_TOKEN"
    c.security.tls_cert = config_dict.placeholder(str)
    c.security.tls_key = config_dict.placeholder(str)
    c.security.tls_ca = config_dict.placeholder(str)
    c.security.tls_client_auth = False
    c.security.tls_client_cert = config_dict.placeholder(str)
    c.security.tls_client_key = config_dict.placeholder(str)
    c.security.tls_server_name = config_dict.placeholder(str)

    c.eval = ml_collections.ConfigDict()
    c.eval.every_secs = 5.0
    # How long the evaluator waits for a worker to initialize the server: a
    # worker starting TensorFlow on a loaded machine (or restarted after a
    # kill) took over 60 s here, and the evaluator giving up ends the run.
    c.eval.init_timeout_secs = 600.0
    c.eval.batch_size = 512
    # Average the softmax over the centre, four corners and (with data.flip)
    # their mirror images, reported beside the single centre crop.
    c.eval.multi_crop = False
    # Save the server's final parameters as a Keras model, <workdir>/final_model.keras.
    c.eval.save_model = True

    c.launcher = ml_collections.ConfigDict()
    c.launcher.log_every_secs = 5.0
    c.launcher.startup_timeout_secs = 120.0  # For the server to start serving.
    c.launcher.prepare_timeout_secs = 3600.0  # Building the dataset may download it.
    # A worker killed by a signal (kill -9, the OOM killer) is started again,
    # at most this many times each; one that exits with an error is not (it
    # reported why, and would again).
    c.launcher.max_worker_restarts = 2
    # A server shard that dies (any way) is started again on the same port
    # from its last checkpoint, at most this many times each.
    c.launcher.max_server_restarts = 2
    return c


@functools.cache
def defaults() -> ml_collections.FrozenConfigDict:
    """Every field's default, read-only.

    Library code that takes no config (``ParameterClient``, the Keras
    callback, an in-process server) reads its defaults here, so that a
    default is written once, in ``get_base_config``.
    """
    return ml_collections.FrozenConfigDict(get_base_config())


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(f"invalid config: {message}")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# Fields checked by kind, as dotted paths into the config.
_POSITIVE_INTS = (
    "num_workers",
    "num_steps",
    "batch_size",
    "n_sync",
    "n_push",
    "n_fetch",
    "data.shuffle_buffer",
    "worker.log_every_steps",
    "ps.rpc_threads",
    "ps.num_shards",
    "ps.max_concurrent_pushes",
    "ps.max_concurrent_fetches",
    "ps.shard_split_bytes",
    "ps.lr_decay_steps",
    "ps.max_parameter_bytes",
    "ps.keep_checkpoints",
    "ps.max_clients",
    "eval.batch_size",
    "sync.fragments",
)
_NON_NEGATIVE_INTS = (
    "launcher.max_worker_restarts",
    "launcher.max_server_restarts",
    "ps.checkpoint_every_updates",
    "data.resize",
    "data.pad",
    "data.crop",
    "worker.cpu_threads",
    "ps.staleness_bound",
    "ps.dn_period",
    "sync.overlap_steps",
)
_POSITIVE_FINITE = (
    "worker.learning_rate",
    "ps.learning_rate",
    "ps.summary_every_secs",
    "ps.straggler_secs",
    "ps.round_timeout_secs",
    "client.timeout_secs",
    "client.retry_secs",
    "client.connect_timeout_secs",
    "client.heartbeat_secs",
    "eval.every_secs",
    "eval.init_timeout_secs",
    "launcher.log_every_secs",
    "launcher.startup_timeout_secs",
    "launcher.prepare_timeout_secs",
)


def _get(config: ml_collections.ConfigDict, path: str):
    for key in path.split("."):
        config = config[key]
    return config


def finalize(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Resolves derived fields and validates; returns the same, now locked, config.

    Raises:
      ValueError: Naming the offending field.
    """
    config.unlock()
    if config.n_push is None:
        config.n_push = config.n_sync
    if config.n_fetch is None:
        config.n_fetch = config.n_sync
    if config.ps.dn_period == 0:
        config.ps.dn_period = config.num_workers
    for check in (
        _check_kinds,
        _check_run,
        _check_data_and_model,
        _check_optimizers,
        _check_staleness,
        _check_low_communication,
        _check_streaming,
        _check_server,
        _check_transport_and_security,
        _check_step_delays,
    ):
        check(config)
    config.lock()
    return config


def _check_kinds(config: ml_collections.ConfigDict) -> None:
    """Integers, positive numbers and switches, by the field lists above."""
    for field in _POSITIVE_INTS:
        value = _get(config, field)
        _check(_is_int(value) and value >= 1, f"{field} must be an integer >= 1, got {value!r}")
    for field in _NON_NEGATIVE_INTS:
        value = _get(config, field)
        _check(_is_int(value) and value >= 0, f"{field} must be an integer >= 0, got {value!r}")
    for field in _POSITIVE_FINITE:
        value = _get(config, field)
        _check(
            isinstance(value, (int, float)) and math.isfinite(value) and value > 0,
            f"{field} must be a finite number > 0, got {value!r}",
        )
    for field in ("ps.checkpoint_every_secs", "ps.heartbeat_timeout_secs"):
        value = _get(config, field)
        _check(
            isinstance(value, (int, float)) and math.isfinite(value) and value >= 0,
            f"{field} must be a finite number >= 0 (0: off), got {value!r}",
        )


def step_delay_secs(config: ml_collections.ConfigDict, task_index: int) -> float:
    """Worker ``task_index``'s emulated extra seconds per step (``worker.step_delay_secs``)."""
    delays = tuple(config.worker.step_delay_secs)
    if not delays:
        return 0.0
    return float(delays[0] if len(delays) == 1 else delays[task_index])


def _check_step_delays(config: ml_collections.ConfigDict) -> None:
    delays = config.worker.step_delay_secs
    _check(
        isinstance(delays, (tuple, list)) and len(delays) in (0, 1, config.num_workers),
        f"worker.step_delay_secs must be a tuple of 0, 1 or num_workers ({config.num_workers}) "
        f"seconds, got {delays!r}",
    )
    _check(
        all(isinstance(d, (int, float)) and math.isfinite(d) and d >= 0 for d in delays),
        f"worker.step_delay_secs must be finite numbers >= 0, got {delays!r}",
    )


def _check_run(config: ml_collections.ConfigDict) -> None:
    """The run's identity, resumption, heartbeats and seed."""
    _check(
        config.run_id is None or bool(re.fullmatch(r"[A-Za-z0-9_-]{1,64}", config.run_id)),
        f"run_id must be 1-64 of A-Z a-z 0-9 _ - (it names checkpoint files), got "
        f"{config.run_id!r}",
    )
    _check(
        config.restore is None or isinstance(config.restore, bool),
        f"restore must be True, False or None (auto), got {config.restore!r}",
    )
    _check(
        not config.ps.heartbeat_timeout_secs
        or config.ps.heartbeat_timeout_secs >= 2 * config.client.heartbeat_secs,
        f"ps.heartbeat_timeout_secs ({config.ps.heartbeat_timeout_secs}) must be at least twice "
        f"client.heartbeat_secs ({config.client.heartbeat_secs}), or 0 (off)",
    )
    # Workers seed with seed * 1000 + task_index + 1; TensorFlow takes seeds below 2**31.
    seed_limit = 2**31 // 1000 - config.num_workers
    _check(
        _is_int(config.seed) and 0 <= config.seed < seed_limit,
        f"seed must be an integer in [0, {seed_limit}), got {config.seed!r}",
    )


def _check_data_and_model(config: ml_collections.ConfigDict) -> None:
    """The dataset, its augmentation and the model."""
    _check(
        config.data.name in DATASETS,
        f"data.name {config.data.name!r} is not one of {sorted(DATASETS)}",
    )
    try:
        geometry.output_shape(
            DATASETS[config.data.name].image_shape,
            resize=config.data.resize,
            pad=config.data.pad,
            crop=config.data.crop,
        )
    except ValueError as e:
        _check(False, f"data.resize/pad/crop: {e}")
    _check(
        config.model.name in MODELS,
        f"model.name {config.model.name!r} is not one of {sorted(MODELS)}",
    )
    _check(
        config.model.dropout is None or 0.0 <= config.model.dropout < 1.0,
        f"model.dropout must be in [0, 1), got {config.model.dropout}",
    )
    _check(
        config.model.width is None
        or (math.isfinite(config.model.width) and config.model.width > 0),
        f"model.width must be a finite number > 0, got {config.model.width}",
    )
    _check(
        not config.eval.multi_crop or config.data.pad or config.data.crop or config.data.resize,
        "eval.multi_crop needs crops to differ: set data.crop (or data.pad) so that the "
        "corner crops are not all the whole image",
    )


def _check_optimizers(config: ml_collections.ConfigDict) -> None:
    """The workers' precision and optimizer, and the server's optimizer."""
    from gasgd_tf.server.optimizers import OPTIMIZERS

    _check(
        config.worker.precision in PRECISIONS,
        f"worker.precision {config.worker.precision!r} is not one of {PRECISIONS}",
    )
    _check(
        config.worker.optimizer in WORKER_OPTIMIZERS,
        f"worker.optimizer {config.worker.optimizer!r} is not one of {WORKER_OPTIMIZERS}",
    )
    _check(
        config.ps.optimizer in OPTIMIZERS,
        f"ps.optimizer {config.ps.optimizer!r} is not one of {sorted(OPTIMIZERS)}",
    )
    _check(
        config.worker.push in PUSH_KINDS,
        f"worker.push {config.worker.push!r} is not one of {PUSH_KINDS}",
    )
    _check(
        math.isfinite(config.worker.weight_decay) and config.worker.weight_decay >= 0,
        f"worker.weight_decay must be a finite number >= 0, got {config.worker.weight_decay}",
    )
    for section in ("worker", "ps"):
        momentum = config[section].momentum
        _check(0.0 <= momentum < 1.0, f"{section}.momentum must be in [0, 1), got {momentum}")
    _check(
        config.ps.weight_decay >= 0, f"ps.weight_decay must be >= 0, got {config.ps.weight_decay}"
    )


def _check_staleness(config: ml_collections.ConfigDict) -> None:
    """The staleness policy and what it needs of the schedule, threads and overlap."""
    from gasgd_tf.server import staleness

    _check(
        config.ps.staleness in staleness.POLICIES,
        f"ps.staleness {config.ps.staleness!r} is not one of {staleness.POLICIES}",
    )
    _check(
        config.ps.staleness != "bounded" or config.n_push == config.n_fetch,
        f"ps.staleness='bounded' needs n_push == n_fetch (a round is fetch, steps, push), "
        f"got n_push={config.n_push}, n_fetch={config.n_fetch}",
    )
    if config.ps.staleness == "bounded":
        _check(
            config.ps.straggler_secs < config.client.timeout_secs,
            f"ps.straggler_secs ({config.ps.straggler_secs}) must be below client.timeout_secs "
            f"({config.client.timeout_secs}): a bounded-staleness wait must end before the "
            "waiting client's deadline",
        )
        # Every waiting Fetch holds a server thread; the pushes that end the
        # waits need threads too (plus the evaluator and status calls).
        _check(
            config.ps.rpc_threads >= config.num_workers + 3,
            f"ps.rpc_threads ({config.ps.rpc_threads}) must be at least num_workers + 3 "
            f"({config.num_workers + 3}) with ps.staleness='bounded'",
        )
    _check(
        not config.worker.overlap or config.ps.staleness not in ("bounded", "dc_asgd"),
        f"worker.overlap cannot be used with ps.staleness={config.ps.staleness!r}: the policy "
        "takes a Fetch as the moment a worker starts computing from it, and with overlap "
        "the fetched weights are used a step later",
    )
    _check(
        config.ps.staleness != "dc_asgd" or config.worker.push == "gradient",
        "ps.staleness='dc_asgd' needs worker.push='gradient': its compensation is a "
        "second-order correction of a gradient, not of a parameter delta",
    )
    _check(
        config.ps.staleness != "dc_asgd" or config.n_fetch >= config.n_push,
        f"ps.staleness='dc_asgd' needs n_fetch >= n_push (the compensation uses the "
        f"parameters of the last fetch), got n_push={config.n_push}, n_fetch={config.n_fetch}",
    )
    _check(
        math.isfinite(config.ps.dc_lambda) and config.ps.dc_lambda >= 0,
        f"ps.dc_lambda must be a finite number >= 0, got {config.ps.dc_lambda}",
    )


def _check_low_communication(config: ml_collections.ConfigDict) -> None:
    """Rounds, Delayed Nesterov and adaptive local steps, and what each needs."""
    ps = config.ps
    _check(
        ps.aggregation in AGGREGATIONS,
        f"ps.aggregation {ps.aggregation!r} is not one of {AGGREGATIONS}",
    )
    _check(
        config.worker.local_steps in LOCAL_STEPS,
        f"worker.local_steps {config.worker.local_steps!r} is not one of {LOCAL_STEPS}",
    )
    _check(
        isinstance(ps.round_quorum, (int, float)) and 0 < ps.round_quorum <= 1,
        f"ps.round_quorum must be a fraction in (0, 1], got {ps.round_quorum!r}",
    )
    _check(
        isinstance(ps.dn_c, (int, float)) and 0 <= ps.dn_c <= 1,
        f"ps.dn_c must be in [0, 1], got {ps.dn_c!r}",
    )
    for what, on in (
        ("ps.aggregation='round'", ps.aggregation == "round"),
        ("worker.local_steps='adaptive'", config.worker.local_steps == "adaptive"),
    ):
        _check(
            not on or config.n_push == config.n_fetch,
            f"{what} needs n_push == n_fetch (a worker syncs by pushing and fetching at once), "
            f"got n_push={config.n_push}, n_fetch={config.n_fetch}",
        )
    if ps.aggregation == "round":
        _check(
            ps.staleness == "none",
            f"ps.aggregation='round' needs ps.staleness='none', got {ps.staleness!r}: a round "
            "applies fresh pushes together, there is no staleness to treat",
        )
        _check(
            config.worker.local_steps == "fixed",
            "ps.aggregation='round' needs worker.local_steps='fixed': a round waits for every "
            "worker, so adaptive local steps would only make the fast ones push sooner and wait",
        )
        _check(
            ps.round_timeout_secs < config.client.timeout_secs,
            f"ps.round_timeout_secs ({ps.round_timeout_secs}) must be below "
            f"client.timeout_secs ({config.client.timeout_secs}): a fetch waits for its round",
        )
        _check(
            ps.rpc_threads >= config.num_workers + 3,
            f"ps.rpc_threads ({ps.rpc_threads}) must be at least num_workers + 3 "
            f"({config.num_workers + 3}) with ps.aggregation='round' (every worker's fetch "
            "waits for its round on a server thread)",
        )
    if ps.staleness == "delayed_nesterov":
        _check(
            ps.optimizer == "sgd" and ps.momentum > 0,
            "ps.staleness='delayed_nesterov' needs ps.optimizer='sgd' with ps.momentum > 0 "
            f"(the momentum it delays), got {ps.optimizer!r} with momentum {ps.momentum}",
        )


def _check_streaming(config: ml_collections.ConfigDict) -> None:
    """Streaming fragment sync (``sync.*``) and what it needs."""
    sync = config.sync
    _check(
        isinstance(sync.mix_alpha, (int, float)) and 0 <= sync.mix_alpha <= 1,
        f"sync.mix_alpha must be in [0, 1], got {sync.mix_alpha!r}",
    )
    if sync.fragments == 1:
        return
    needs = (
        (config.worker.push == "delta", f"worker.push='delta', got {config.worker.push!r}"),
        (
            config.n_push == config.n_fetch,
            f"n_push == n_fetch, got {config.n_push} and {config.n_fetch}",
        ),
        (
            sync.fragments <= config.n_push,
            f"at most n_push={config.n_push} fragments (one sync step each)",
        ),
        (
            sync.overlap_steps < config.n_push,
            f"sync.overlap_steps < n_push={config.n_push} "
            "(a fragment's fetch lands before its next push)",
        ),
        (
            config.ps.staleness == "none",
            f"ps.staleness='none' (the policies count whole-model "
            f"versions), got {config.ps.staleness!r}",
        ),
        (config.worker.local_steps == "fixed", "worker.local_steps='fixed'"),
        (not config.worker.overlap, "worker.overlap=False (sync.overlap_steps overlaps it)"),
    )
    for ok, what in needs:
        _check(ok, f"sync.fragments={sync.fragments} needs {what}")


def _check_server(config: ml_collections.ConfigDict) -> None:
    """The server optimizer's and schedule's hyperparameters, and the shards."""
    try:  # The optimizer and schedule check their own hyperparameters (numpy only).
        from gasgd_tf.server import server_config

        server_config.build_optimizer(config.ps)
        server_config.build_schedule(config.ps)
    except ValueError as e:
        _check(False, f"ps: {e}")
    _check(
        config.ps.num_shards <= MAX_SHARDS,
        f"ps.num_shards must be at most {MAX_SHARDS}, got {config.ps.num_shards}",
    )
    _check(
        config.ps.num_shards == 1 or config.ps.staleness != "bounded",
        "ps.staleness='bounded' needs ps.num_shards=1: each shard would admit fetches in its "
        "own order, and two shards can each wait for a worker the other holds back",
    )


def _check_transport_and_security(config: ml_collections.ConfigDict) -> None:
    """Wire dtypes, chunk sizes, the token and TLS."""
    from gasgd_tf import codecs

    client = config.client
    _check(
        client.push_codec in codecs.CODECS,
        f"client.push_codec {client.push_codec!r} is not one of {codecs.CODECS}",
    )
    _check(
        client.push_codec == "none" or client.push_dtype == "float32",
        f"client.push_codec={client.push_codec!r} encodes float32 values: it needs "
        f"client.push_dtype='float32', got {client.push_dtype!r}",
    )
    _check(
        _is_int(client.codec_block_size) and 1 <= client.codec_block_size <= codecs.MAX_BLOCK_SIZE,
        f"client.codec_block_size must be an integer in [1, {codecs.MAX_BLOCK_SIZE}], "
        f"got {client.codec_block_size!r}",
    )
    _check(
        isinstance(client.topk_fraction, (int, float)) and 0 < client.topk_fraction <= 1,
        f"client.topk_fraction must be in (0, 1], got {client.topk_fraction!r}",
    )
    for field in ("push_dtype", "fetch_dtype"):
        _check(
            config.client[field] in WIRE_DTYPES,
            f"client.{field} must be one of {WIRE_DTYPES}, got {config.client[field]!r}",
        )
    sec = config.security
    _check(
        bool(sec.tls_cert) == bool(sec.tls_key),
        "security.tls_cert and security.tls_key go together (the server's PEM certificate "
        "and its key)",
    )
    _check(
        bool(sec.tls_client_cert) == bool(sec.tls_client_key),
        "security.tls_client_cert and security.tls_client_key go together",
    )
    _check(
        not sec.tls_client_auth or (sec.tls_cert and sec.tls_ca),
        "security.tls_client_auth needs security.tls_cert, tls_key and tls_ca",
    )
    server_name = sec.tls_server_name
    _check(
        server_name is None or (bool(server_name) and not any(c.isspace() for c in server_name)),
        f"security.tls_server_name must be a host name, got {server_name!r}",
    )
    # The override only changes which name the certificate is checked for;
    # it is for certificates of our own CA, so without tls_ca it is a mistake.
    _check(
        not server_name or sec.tls_ca,
        "security.tls_server_name needs security.tls_ca (it names the server in the "
        "certificate that tls_ca signed)",
    )
    _check(
        64 << 10 <= config.client.chunk_bytes <= 4 << 20,
        f"client.chunk_bytes must be in [64 KiB, 4 MiB], got {config.client.chunk_bytes}",
    )


def to_json(config: ml_collections.ConfigDict) -> str:
    """The resolved config as JSON, as written to <workdir>/config.json."""
    return json.dumps(config.to_dict(), indent=2, sort_keys=True)


def from_json(text: str) -> ml_collections.ConfigDict:
    """Reads a config written by ``to_json`` (for child processes and reruns)."""
    return finalize(from_dict(json.loads(text), source="config JSON"))


def from_dict(fields: dict, source: str = "config") -> ml_collections.ConfigDict:
    """The defaults updated with nested ``fields``; not yet finalized.

    Raises:
      ValueError: A field that does not exist (naming ``source``), or a
        value of the wrong type for its field.
    """
    base = get_base_config()
    base.lock()  # Unknown keys (a typo, a newer version's field) raise instead of adding.
    try:
        base.update_from_flattened_dict(flatten(fields))
    except (KeyError, AttributeError) as e:
        raise ValueError(f"invalid config: unknown field in {source}: {e}") from None
    except TypeError as e:  # A value of the wrong type for its field.
        raise ValueError(f"invalid config: {e}") from None
    return base


def hparams(config: ml_collections.ConfigDict) -> dict[str, bool | int | float | str]:
    """Every set field as a flat ``{"a.b": value}`` dict, for TensorBoard's HParams dashboard."""
    out = {}
    for key, value in flatten(config.to_dict()).items():
        if value is None or key in ("run_id", "restore"):  # How a run started, not a setting.
            continue
        out[key] = value if isinstance(value, (bool, int, float, str)) else str(value)
    return out


def differences(old: dict, new: dict, ignore: tuple[str, ...] = ()) -> list[str]:
    """The dotted fields whose values differ between two config dicts, sorted.

    Args:
      old, new: Configs as dicts (``to_dict()``, or a config.json read back).
      ignore: Fields, or prefixes of fields ("client."), left out.
    """
    a = {k: v for k, v in flatten(old).items() if not k.startswith(ignore)}
    b = {k: v for k, v in flatten(new).items() if not k.startswith(ignore)}
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))


def flatten(d: dict, prefix: str = "") -> dict:
    """A nested dict as ``{"a.b": value}``."""
    out = {}
    for key, value in d.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:  # A tuple as JSON reads it back, so a config equals its config.json.
            out[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value
    return out
