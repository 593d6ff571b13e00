"""The parameter server process: a gRPC server over a ParameterStore, plus its summaries."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from gasgd_tf import config_base, layout, wire
from gasgd_tf.security import Credentials, TokenInterceptor, server_credentials
from gasgd_tf.server import checkpointing, server_config
from gasgd_tf.server.rounds import RoundState
from gasgd_tf.server.servicer import ParameterServicer, add_to_server
from gasgd_tf.server.store import STALENESS_BUCKETS, ParameterStore
from gasgd_tf.summaries import MetricWriter

log = logging.getLogger(__name__)
_PS = config_base.defaults().ps  # Thread and slot counts of `ps.*`.
# How often the `ps` role looks whether a stop signal came (its handler only records it).
STOP_POLL_SECS = 0.2

SERVER_OPTIONS = [
    ("grpc.max_receive_message_length", wire.GRPC_MESSAGE_LIMIT),
    ("grpc.max_send_message_length", wire.GRPC_MESSAGE_LIMIT),
    # Without this a second server can bind the same port silently and
    # steal half the connections; with it, the bind fails loudly.
    ("grpc.so_reuseport", 0),
    # No BDP probing: with it, gRPC grows every stream's receive window to
    # at least 4 MiB (more on fast links) while memory pressure is low, so
    # each push waiting for a slot had its whole gradient buffered in gRPC
    # before we read a byte: measured +660 MB peak with 64 clients pushing
    # 4 MB gradients, growing with the clients. Without it a waiting stream
    # buffers one initial window (64 KiB); the stream being read still gets
    # a window for each whole message it reads, so one round trip per chunk
    # (tests/backpressure_test.py measures the bound).
    ("grpc.http2.bdp_probe", 0),
]


class ParameterServer:
    """A running gRPC ParameterService.

    Args:
      store: The parameters it serves.
      address: host:port to listen on; port 0 picks a free port.
      max_workers: Threads handling RPCs; each in-flight stream holds one.
      fetch_chunk_bytes: Chunk size of Fetch streams.
      max_concurrent_pushes: Pushes received and applied at once (see
        ParameterServicer); bounds the memory for gradient buffers.
      max_concurrent_fetches: Fetches streamed at once; bounds the memory
        for parameter snapshots.
      credentials: A bearer token every call must carry and/or TLS server
        credentials (``gasgd_tf.security``); None: plaintext, open.
    """

    def __init__(
        self,
        store: ParameterStore,
        address: str = "127.0.0.1:0",
        max_workers: int = _PS.rpc_threads,
        fetch_chunk_bytes: int = wire.DEFAULT_CHUNK_BYTES,
        max_concurrent_pushes: int = _PS.max_concurrent_pushes,
        max_concurrent_fetches: int = _PS.max_concurrent_fetches,
        credentials: Credentials | None = None,
    ):
        self.store = store
        credentials = credentials or Credentials()
        interceptors = [TokenInterceptor(credentials.token)] if credentials.token else []
        self._server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="ps-rpc"),
            options=SERVER_OPTIONS,
            interceptors=interceptors,
        )
        # Kept for callers that watch its slots (tests synchronise on them).
        self.servicer = servicer = ParameterServicer(
            store,
            fetch_chunk_bytes=fetch_chunk_bytes,
            max_concurrent_pushes=max_concurrent_pushes,
            max_concurrent_fetches=max_concurrent_fetches,
        )
        add_to_server(servicer, self._server)
        # Standard services, so that ordinary gRPC tools can probe (grpc_health_probe)
        # and call (grpcurl, with reflection) the parameter service.
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        reflection.enable_server_reflection(
            (
                wire.SERVICE_NAME,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ),
            self._server,
        )
        host = address.rsplit(":", 1)[0]
        self.tls = credentials.tls is not None
        try:
            if self.tls:
                self.port = self._server.add_secure_port(address, credentials.tls)
            else:
                self.port = self._server.add_insecure_port(address)
        except RuntimeError as e:
            raise OSError(f"parameter server cannot listen on {address}: {e}") from None
        if not self.port:
            raise OSError(f"parameter server cannot listen on {address} (port in use?)")
        self.address = f"{host}:{self.port}"

    def start(self) -> ParameterServer:
        self._server.start()
        for service in ("", wire.SERVICE_NAME):
            self.health.set(service, health_pb2.HealthCheckResponse.SERVING)
        log.info("parameter server listening on %s", self.address)
        return self

    def stop(self, grace: float | None = 1.0) -> None:
        """Stops serving; in-flight calls get ``grace`` seconds to finish."""
        self.health.enter_graceful_shutdown()
        self._server.stop(grace).wait()

    def __enter__(self) -> ParameterServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop(grace=None)


class SummaryLoop:
    """Writes ps/* metrics to TensorBoard every ``interval`` seconds on a thread."""

    def __init__(self, store: ParameterStore, writer: MetricWriter, interval: float):
        self._store = store
        self._writer = writer
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ps-summaries", daemon=True)
        self._last = (time.monotonic(), 0)

    def start(self) -> SummaryLoop:
        self._thread.start()
        return self

    def write(self) -> None:
        status = self._store.status(max_listed=0)  # Counts only: no copies of the records.
        now = time.monotonic()
        then, applied_then = self._last
        self._last = (now, status.updates_applied)
        step = status.version
        self._writer.scalars(
            {
                "ps/version": status.version,
                "ps/updates_per_sec": (status.updates_applied - applied_then)
                / max(now - then, 1e-9),
                "ps/active_clients": status.active_clients,
                "ps/pushes_rejected": status.pushes_rejected,
                "ps/staleness_mean": status.staleness.mean,
            },
            step,
        )
        by_client = self._store.drain_staleness_by_client()
        # Integer staleness: one bucket per value, edges at k + 0.5.
        edges = [k + 0.5 for k in range(STALENESS_BUCKETS)]
        everyone = [s for values in by_client.values() for s in values]
        self._writer.histogram("ps/staleness", everyone, step, bucket_limits=edges)
        for client_id, values in sorted(by_client.items()):
            self._writer.histogram(f"ps/staleness/{client_id}", values, step, bucket_limits=edges)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._store.expire_silent()  # Heartbeat timeouts, checked as often as summaries.
            self._store.close_due_round()  # A round past its deadline with nobody fetching.
            self.write()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.write()


def build_store(config) -> ParameterStore:
    """The ``ps`` role's store: optimizer, schedule, staleness, rounds and limits.

    Args:
      config: The run's config (``config.ps``; ``config.worker.push`` and
        ``local_steps`` with ``n_push``, which the server applies and plans).
    """
    ps_config = config.ps
    rounds = None
    if ps_config.aggregation == "round":
        rounds = RoundState(ps_config.round_quorum, ps_config.round_timeout_secs)
    adaptive = config.worker.local_steps == "adaptive"
    return ParameterStore(
        server_config.build_optimizer(ps_config),
        ps_config.max_parameter_bytes,
        staleness=server_config.build_staleness(ps_config),
        schedule=server_config.build_schedule(ps_config),
        heartbeat_timeout_secs=ps_config.heartbeat_timeout_secs or None,
        max_clients=ps_config.max_clients,
        push_kind=config.worker.push,
        rounds=rounds,
        max_local_steps=config.n_push if adaptive else None,
    )


def _write_atomically(path: str, text: str) -> None:
    """Writes ``text`` to ``path`` so that a reader sees all of it or no file."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def log_to_console() -> None:
    """Shows the server's log lines (INFO and up) on stderr, unless logging is set up already.

    The store and servicer report through ``logging`` (bounded-staleness
    waits, expired clients, refusals). The ``ps`` role runs under absl,
    whose handler on the root logger already prints them; a process that
    configured nothing would otherwise show only warnings (Python's last
    resort handler), and no INFO line at all.
    """
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO,
            stream=sys.stderr,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )


def run(
    config, workdir: str, address: str, port_file: str | None = None, shard_index: int = 0
) -> None:
    """The ``ps`` role: serves until SIGTERM or SIGINT, then writes final summaries.

    With ``ps.save_checkpoint``, it first resumes from the newest checkpoint
    of ``config.run_id`` in ``<workdir>/checkpoints`` (as ``config.restore``
    says), saves one periodically while serving, and a last one as it stops
    (``gasgd_tf/server/checkpointing.py``).

    Args:
      config: The resolved run config (uses ``config.ps``).
      workdir: Run folder; events go to ``<workdir>/tb/ps_<shard_index>``.
      address: host:port to listen on (port 0: any free port).
      port_file: If set, the bound port is written there (atomically) once
        the server accepts calls, for a launcher that asked for port 0.
      shard_index: Which shard of ``config.ps.num_shards`` this server is.
        The server itself holds whatever tensors its clients initialize it
        with; the index names its events and its checkpoint.
    """
    num_shards = config.ps.num_shards
    if not 0 <= shard_index < num_shards:
        raise ValueError(f"shard index {shard_index} is not in [0, ps.num_shards={num_shards})")
    log_to_console()
    store = build_store(config)
    shard = layout.shard_of(shard_index, num_shards)
    directory = layout.checkpoint_dir(workdir)
    # Before serving: a client must never see the empty store of a restarted server.
    checkpointing.restore_at_start(store, directory, shard, config.run_id, config.restore)
    checkpointer = mark = None
    if config.ps.save_checkpoint:
        mark = checkpointing.VersionMark(directory, config.run_id, shard)
        store.version_sink = mark.open()
        store.version_sink[0] = store.version
        store.version_sink[2] = store.pushes_taken
        checkpointer = checkpointing.Checkpointer(
            store,
            directory,
            shard,
            config.run_id,
            every_secs=config.ps.checkpoint_every_secs,
            every_updates=config.ps.checkpoint_every_updates,
            keep=config.ps.keep_checkpoints,
        )
    credentials = server_credentials(config.security)
    server = ParameterServer(
        store,
        address,
        max_workers=config.ps.rpc_threads,
        max_concurrent_pushes=config.ps.max_concurrent_pushes,
        max_concurrent_fetches=config.ps.max_concurrent_fetches,
        credentials=credentials,
    ).start()
    writer = MetricWriter(layout.tensorboard_dir(workdir, layout.shard(shard_index)))
    summaries = SummaryLoop(store, writer, config.ps.summary_every_secs).start()
    if port_file:
        _write_atomically(port_file, str(server.port))
    if checkpointer is not None:
        checkpointer.start()
    name = f"(shard {shard_index} of {num_shards}) " if shard else ""
    print(
        f"parameter server {store.server_id} {name}listening on {server.address} "
        f"(token: {'required' if credentials.token else 'off'}, "
        f"TLS: {'on' if credentials.tls else 'off'})",
        flush=True,
    )

    # The handlers only record the signal. They used to call Event.set, which
    # takes the event's lock: a second SIGTERM arriving while the first
    # handler held that lock ran its handler in the same thread, waited for
    # the lock for ever, and the server never stopped (found by the
    # launcher-SIGKILL test in a fresh clone; py-spy showed the nested
    # handlers). time.sleep is interrupted by a signal, runs its handler,
    # and sleeps on.
    received: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: received.append(signum))
    while not received:
        time.sleep(STOP_POLL_SECS)
    server.stop(grace=2.0)
    summaries.stop()
    writer.close()
    if checkpointer is not None:
        checkpointer.stop()
        if checkpointer.save(quiet=False) is not None or not store.initialized:
            mark.remove()  # A clean stop: nothing was lost, nothing to account for.
    status = store.status(max_listed=0)
    print(
        f"parameter server stopped at version {status.version} "
        f"({status.updates_applied} updates, {status.pushes_rejected} rejected)",
        flush=True,
    )
