"""An emulated network with real sockets: a gasgd_tf run in a Linux namespace with a shaped link.

Loopback moves bytes at memory speed, which hides what communication costs
on a real network (DESIGN.md, "Measuring communication honestly on one
machine"). This module gives every measurement its own network namespace,
whose ``lo`` carries an ``htb`` qdisc with one class per direction, chosen
by ``u32`` filters on the server's port(s): ``match ip dport PORT`` (what the
server receives: pushes, requests) goes to the *to-server* class,
``match ip sport PORT`` (what it sends: fetched parameters) to the
*from-server* class, and everything else (worker to worker, the
coordinator's control traffic) to a fast default class, like a full-duplex
NIC in front of the server. All traffic stays on 127.0.0.1 inside the
namespace; nothing is sent anywhere else. The namespace is always deleted
(also on SIGINT/SIGTERM, and a stale one of a killed run is deleted the next
time), and checked to be gone.

The gasgd_tf launcher (``python -m gasgd_tf.main``, role ``local``) starts
its server shards on 127.0.0.1 port 0 (a free port the kernel picks) and
has no option to fix it. In a fresh namespace the kernel can only pick from
the namespace's own ``net.ipv4.ip_local_port_range``, so ``run_training``
narrows that range to the filtered ports while the shards bind, and widens
it again as soon as every shard has written its port file (before any
worker connects: a worker takes seconds to import TensorFlow, and would
retry for ``client.retry_secs`` anyway). It then checks that every shard
listens on a filtered port, and reports the bytes each class carried, so an
unshaped run cannot pass for a shaped one.

The command line runs one whole training run (server shards, workers,
evaluator) inside a shaped namespace, after a short raw-TCP self-check of
the link, and reports the wall time, the final test accuracy and the bytes:

  python -m benchmarks.network --to-server=80mbit --from-server=80mbit \\
      [--config=configs/default.py] [-- --config.num_steps=200 ...]

Rates are tc's: ``<number>[bit|kbit|mbit|gbit]`` (bits per second). Needs
root, ``ip`` and ``tc`` (iproute2) and a kernel with ``htb`` and ``u32``;
``unavailable_reason()`` says what is missing.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence

from benchmarks import common

NAME = "network"
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORK_DIR = os.path.join(REPO_ROOT, "runs", "benchmarks", NAME)

# Below Linux's ephemeral range (32768-60999): no client socket ever gets it.
SERVER_PORT = 20051
FAST_RATE = 10_000_000_000  # The default class: everything that is not server traffic.
MTU = 9000  # As in DESIGN.md's verified recipe.
STOP_GRACE_SECS = 30.0  # Launcher: SIGINT (it stops its children in order), then SIGKILL.

_UNITS = {"bit": 1, "kbit": 10**3, "mbit": 10**6, "gbit": 10**9}
_PROBE_TAG = "NETWORK_PROBE "
_counter = itertools.count()


# -- Rates and tc commands (pure: tested without root) ---------------------------


def parse_rate(text: str | int | float | None) -> int | None:
    """Bits per second from a tc rate (``80mbit``, ``1.5gbit``, ``500kbit``, ``1000``).

    None, ``""`` and ``none`` mean unshaped (None). A bare number is bits per
    second. tc's byte units (``mbps`` is megabytes per second) are refused:
    too easy to mistake for megabits.

    Raises:
      ValueError: Not a positive rate in those units.
    """
    if text is None:
        return None
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value, unit = float(text), "bit"
    else:
        raw = str(text).strip().lower()
        if raw in ("", "none"):
            return None
        match = re.fullmatch(r"([0-9]*\.?[0-9]+)\s*([a-z]*)", raw)
        if not match:
            raise ValueError(f"not a rate: {text!r} (write e.g. 80mbit)")
        value, unit = float(match.group(1)), match.group(2) or "bit"
        if unit not in _UNITS:
            raise ValueError(
                f"unknown rate unit {unit!r} in {text!r}: use bit, kbit, mbit or gbit "
                "(bits per second)"
            )
    bits = round(value * _UNITS[unit])
    if bits < 1000:
        raise ValueError(f"rate {text!r} is below 1kbit")
    return bits


def format_rate(bits: int | None) -> str:
    """``80mbit``, ``1.5gbit``, ``640kbit``; ``unshaped`` for None."""
    if bits is None:
        return "unshaped"
    for unit in ("gbit", "mbit", "kbit"):
        if bits >= _UNITS[unit]:
            return f"{bits / _UNITS[unit]:g}{unit}"
    return f"{bits}bit"


def htb_commands(
    to_server: int | None,
    from_server: int | None,
    server_ports: Sequence[int],
    dev: str = "lo",
    fast_rate: int = FAST_RATE,
    pull_ports: Sequence[int] = (),
) -> list[list[str]]:
    """The tc commands that shape ``dev``: one htb class per direction, chosen by port.

    Args:
      to_server: Bits/s of what the server receives (``dport``); None: unshaped.
      from_server: Bits/s of what the server sends (``sport``); None: unshaped.
      server_ports: The ports the server(s) listen on.
      dev: The device (``lo`` inside the namespace).
      fast_rate: The default class, for all other traffic.
      pull_ports: Ports of tasks the server *pulls* data from over its own
        connections: what they send (``sport``) also takes the to-server
        class. TensorFlow's ps receives the workers' gradients this way (it
        calls RecvTensor on each worker's port).

    Returns:
      ``tc ...`` argument lists, in order; [] when both directions are unshaped.
    """
    if to_server is None and from_server is None:
        return []
    tc = ["tc"]
    commands = [
        # r2q 1000: htb's quantum (rate / r2q) stays sane at 10gbit too.
        [*tc, "qdisc", "add", "dev", dev, "root", "handle", "1:", "htb", "default", "30"]
        + ["r2q", "1000"],
        [*tc, "class", "add", "dev", dev, "parent", "1:", "classid", "1:30", "htb"]
        + ["rate", f"{fast_rate}bit"],
    ]
    matches = (
        (
            "1:10",
            to_server,
            [("dport", p) for p in server_ports] + [("sport", p) for p in pull_ports],
        ),
        ("1:20", from_server, [("sport", p) for p in server_ports]),
    )
    for classid, rate, fields in matches:
        if rate is None:
            continue
        commands.append(
            [*tc, "class", "add", "dev", dev, "parent", "1:", "classid", classid, "htb"]
            + ["rate", f"{rate}bit", "ceil", f"{rate}bit"]
        )
        for field, port in fields:
            commands.append(
                [*tc, "filter", "add", "dev", dev, "parent", "1:", "protocol", "ip", "prio", "1"]
                + ["u32", "match", "ip", field, str(port), "0xffff", "flowid", classid]
            )
    return commands


def check_ports(ports: Sequence[int]) -> list[int]:
    """The server ports as ints, checked: 1-65535, distinct, consecutive (one range).

    Raises:
      ValueError: Naming the bad port.
    """
    out = [int(p) for p in ports]
    if not out:
        raise ValueError("no server port to shape")
    for p in out:
        if not 1 <= p <= 65535:
            raise ValueError(f"server port {p} is not in 1-65535")
    if sorted(out) != list(range(min(out), min(out) + len(out))):
        raise ValueError(f"server ports must be consecutive, got {out}")
    return out


_CLASS = re.compile(r"class htb (1:\d+) .*?Sent (\d+) bytes (\d+) pkt", re.DOTALL)
CLASS_NAMES = {"1:10": "to_server", "1:20": "from_server", "1:30": "other"}


def parse_class_stats(text: str) -> dict[str, int]:
    """Bytes sent per direction from ``tc -s class show`` output: {"to_server": N, ...}."""
    out = {}
    for block in re.split(r"\n(?=class )", text):
        match = _CLASS.search(block)
        if match and match.group(1) in CLASS_NAMES:
            out[CLASS_NAMES[match.group(1)]] = int(match.group(2))
    return out


# -- Availability ----------------------------------------------------------------


@dataclasses.dataclass
class CommandResult:
    """What a command run inside (or outside) a namespace did."""

    returncode: int | None
    stdout: str
    stderr: str
    wall_s: float
    timed_out: bool = False


def run_command(argv: Sequence[str], timeout_s: float = 30.0, **kwargs) -> CommandResult:
    """Runs ``argv`` in its own process group; on timeout kills the whole group.

    Args:
      argv: The command.
      timeout_s: Wall-clock limit.
      **kwargs: For ``subprocess.Popen`` (cwd, env).

    Returns:
      Its exit status (None when killed at the timeout), output and wall time.
    """
    start = time.perf_counter()
    proc = subprocess.Popen(
        list(argv),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        start_new_session=True,  # Its own group: the timeout reaches its children too.
        **kwargs,
    )
    try:
        out, err = proc.communicate(timeout=timeout_s)
        return CommandResult(proc.returncode, out, err, time.perf_counter() - start)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        return CommandResult(None, out, err, time.perf_counter() - start, timed_out=True)


def _ip(*args: str, timeout_s: float = 30.0) -> CommandResult:
    return run_command(["ip", *args], timeout_s)


def list_namespaces() -> list[str]:
    """The names of the network namespaces ``ip netns list`` shows."""
    result = _ip("netns", "list")
    return [line.split()[0] for line in result.stdout.splitlines() if line.strip()]


def unavailable_reason() -> str | None:
    """Why shaped namespaces cannot be made here (one line), or None when they can.

    Checks root, ``ip`` and ``tc``, and makes (and deletes) a namespace with
    an htb qdisc on its ``lo``.
    """
    if os.geteuid() != 0:
        return f"needs root for network namespaces and tc (running as uid {os.geteuid()})"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"`{tool}` (iproute2) is not installed"
    name = f"gasgd-check-{os.getpid()}-{next(_counter)}"
    made = _ip("netns", "add", name)
    if made.returncode != 0:
        return f"cannot create a network namespace: {_first_line(made.stderr)}"
    try:
        htb = run_command(
            ["ip", "netns", "exec", name, "tc", "qdisc", "add", "dev", "lo", "root", "handle"]
            + ["1:", "htb", "default", "30"]
        )
        if htb.returncode != 0:
            return f"tc cannot add an htb qdisc: {_first_line(htb.stderr)}"
    finally:
        _ip("netns", "del", name)
    return None


def _first_line(text: str) -> str:
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return lines[0] if lines else "(no message)"


# -- The namespace ----------------------------------------------------------------


@dataclasses.dataclass
class Namespace:
    """A network namespace made by ``shaped_namespace``; run things in it.

    Attributes:
      name: Its name (``ip netns``).
      to_server, from_server: The shaped rates in bits/s (None: unshaped).
      server_ports: The ports the filters match.
    """

    name: str
    to_server: int | None
    from_server: int | None
    server_ports: list[int]

    def command(self, argv: Sequence[str]) -> list[str]:
        """``argv`` as a command that runs inside the namespace."""
        return ["ip", "netns", "exec", self.name, *argv]

    def run(self, argv: Sequence[str], timeout_s: float = 60.0, **kwargs) -> CommandResult:
        """Runs ``argv`` inside; see ``run_command``."""
        return run_command(self.command(argv), timeout_s, **kwargs)

    def check(self, argv: Sequence[str]) -> str:
        """Runs ``argv`` inside; returns its output.

        Raises:
          RuntimeError: It failed (with its error line).
        """
        result = self.run(argv, timeout_s=30.0)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed: {_first_line(result.stderr)}")
        return result.stdout

    def popen(self, argv: Sequence[str], **kwargs) -> subprocess.Popen:
        """Starts ``argv`` inside, in its own process group (``subprocess.Popen`` kwargs)."""
        return subprocess.Popen(self.command(argv), start_new_session=True, **kwargs)

    def class_bytes(self) -> dict[str, int]:
        """Bytes each htb class has sent so far: {"to_server", "from_server", "other"}."""
        result = self.run(["tc", "-s", "class", "show", "dev", "lo"], timeout_s=10.0)
        return parse_class_stats(result.stdout)

    def port_range(self) -> str:
        """The namespace's ``net.ipv4.ip_local_port_range`` ("low high")."""
        return " ".join(self.check(["cat", "/proc/sys/net/ipv4/ip_local_port_range"]).split())

    def set_port_range(self, low: int, high: int) -> None:
        """Sets the namespace's own ephemeral port range (the host's is not touched)."""
        self.check(["sysctl", "-q", "-w", f"net.ipv4.ip_local_port_range={low} {high}"])

    def pids(self) -> list[int]:
        """The processes running inside."""
        result = _ip("netns", "pids", self.name)
        return [int(p) for p in result.stdout.split() if p.isdigit()]

    def stop_all(self, grace_s: float = 5.0) -> None:
        """SIGTERM to every process inside (all started by us), SIGKILL after ``grace_s``."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            pids = self.pids()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + grace_s
            while pids and self.pids() and time.monotonic() < deadline:
                time.sleep(0.1)


class NamespaceLeftBehind(RuntimeError):
    """``ip netns del`` did not remove a namespace."""


def _delete(name: str) -> None:
    """Deletes namespace ``name`` (its processes first) and checks that it is gone."""
    Namespace(name, None, None, []).stop_all()
    _ip("netns", "del", name)
    if name in list_namespaces():
        raise NamespaceLeftBehind(f"network namespace {name} is still there after ip netns del")


def remove_stale(prefix: str) -> list[str]:
    """Deletes namespaces named ``<prefix><pid>-<n>`` whose creating process is gone.

    A run killed with SIGKILL cannot clean up; the next one does.

    Returns:
      The names deleted.
    """
    removed = []
    for name in list_namespaces():
        match = re.fullmatch(re.escape(prefix) + r"(\d+)-\d+", name)
        if match and not _alive(int(match.group(1))):
            _delete(name)
            removed.append(name)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _raise_interrupt(signum, _frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def shaped_namespace(
    to_server_rate: str | int | None,
    from_server_rate: str | int | None,
    server_ports: Sequence[int] = (SERVER_PORT,),
    name_prefix: str = "gasgd-",
    mtu: int = MTU,
    pull_ports: Sequence[int] = (),
) -> Iterator[Namespace]:
    """A fresh network namespace whose ``lo`` is shaped per direction by server port.

    Args:
      to_server_rate: Rate of traffic to the server ports (``80mbit``; None: unshaped).
      from_server_rate: Rate of traffic from them.
      server_ports: The server's port(s), consecutive.
      name_prefix: The namespace is ``<prefix><pid>-<n>``, unique on this machine.
      mtu: ``lo``'s MTU inside.
      pull_ports: Ports whose outgoing traffic also takes the to-server class
        (see ``htb_commands``; TensorFlow's worker tasks).

    Yields:
      The ``Namespace``. On exit (also on an exception, Ctrl-C or SIGTERM)
      every process inside is stopped and the namespace deleted and checked
      to be gone.

    Raises:
      ValueError: A bad rate or port.
      RuntimeError: ip or tc failed (with its error line).
      NamespaceLeftBehind: It could not be deleted.
    """
    to_server, from_server = parse_rate(to_server_rate), parse_rate(from_server_rate)
    ports = check_ports(server_ports)
    remove_stale(name_prefix)
    ns = Namespace(f"{name_prefix}{os.getpid()}-{next(_counter)}", to_server, from_server, ports)
    # SIGTERM would end the process without running the finally below.
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_interrupt) if main_thread else None
    created = False
    try:
        made = _ip("netns", "add", ns.name)
        if made.returncode != 0:
            raise RuntimeError(f"ip netns add {ns.name} failed: {_first_line(made.stderr)}")
        created = True
        ns.check(["ip", "link", "set", "lo", "mtu", str(mtu), "up"])
        for command in htb_commands(to_server, from_server, ports, pull_ports=pull_ports):
            ns.check(command)
        yield ns
    finally:
        try:
            if created:
                _delete(ns.name)
        finally:
            if main_thread:
                signal.signal(signal.SIGTERM, previous)


# -- A raw TCP self-check -----------------------------------------------------------


def _receive(conn: socket.socket, nbytes: int) -> float:
    """Reads ``nbytes``; bits/s from the first byte to the last (the first read not counted)."""
    got, first_len, first = 0, 0, None
    while got < nbytes:
        data = conn.recv(1 << 20)
        if not data:
            break
        if first is None:
            first, first_len = time.perf_counter(), len(data)
        got += len(data)
    elapsed = time.perf_counter() - (first or time.perf_counter())
    return (got - first_len) * 8 / elapsed if elapsed > 0 else float("nan")


def _send(conn: socket.socket, nbytes: int) -> None:
    chunk = b"\0" * (1 << 20)
    left = nbytes
    while left > 0:
        conn.sendall(chunk[: min(left, len(chunk))])
        left -= min(left, len(chunk))


def tcp_probe(port: int, to_server_bytes: int, from_server_bytes: int) -> dict:
    """Sends bytes to a listener on 127.0.0.1:``port`` and back; run it inside the namespace.

    Returns:
      {"to_server_bps", "from_server_bps", "to_server_bytes", "from_server_bytes"}:
      the rate each receiver saw.
    """
    result: dict = {"to_server_bytes": to_server_bytes, "from_server_bytes": from_server_bytes}
    with socket.create_server(("127.0.0.1", port)) as listener:

        def serve() -> None:
            conn, _ = listener.accept()
            with conn:
                result["to_server_bps"] = _receive(conn, to_server_bytes)
                _send(conn, from_server_bytes)
                # The client closes first, so that TIME_WAIT lands on its port, not
                # on the server port, which a server binding port 0 must find free.
                conn.recv(1)

        server = threading.Thread(target=serve, daemon=True)
        server.start()
        with socket.create_connection(("127.0.0.1", port)) as client:
            _send(client, to_server_bytes)
            result["from_server_bps"] = _receive(client, from_server_bytes)
        server.join()
    return result


def measure_tcp(
    ns: Namespace, seconds: float = 1.5, max_bytes: int = 64 << 20, timeout_s: float = 60.0
) -> dict:
    """A bounded raw TCP stream each way through the first server port, inside ``ns``.

    Args:
      ns: The namespace.
      seconds: About how long each direction sends at its shaped rate.
      max_bytes: At most this many bytes each way (and this many when unshaped).
      timeout_s: The probe process's limit.

    Returns:
      ``tcp_probe``'s figures, and ``to_server_ratio`` / ``from_server_ratio``
      (achieved / configured; None when unshaped).

    Raises:
      RuntimeError: The probe failed or timed out.
    """

    def size(rate: int | None) -> int:
        return max(256 << 10, min(max_bytes, int(rate * seconds / 8))) if rate else max_bytes

    spec = {
        "port": ns.server_ports[0],
        "to_server_bytes": size(ns.to_server),
        "from_server_bytes": size(ns.from_server),
    }
    argv = [sys.executable, "-m", "benchmarks.network", "--tcp_probe=" + json.dumps(spec)]
    result = ns.run(argv, timeout_s=timeout_s, cwd=REPO_ROOT)
    for line in result.stdout.splitlines():
        if result.returncode == 0 and line.startswith(_PROBE_TAG):
            out = json.loads(line[len(_PROBE_TAG) :])
            for direction, rate in (("to_server", ns.to_server), ("from_server", ns.from_server)):
                out[f"{direction}_ratio"] = out[f"{direction}_bps"] / rate if rate else None
            return out
    why = "timed out" if result.timed_out else f"exit {result.returncode}"
    raise RuntimeError(f"TCP probe in {ns.name} failed ({why}): {result.stderr[-2000:]}")


# -- A whole gasgd_tf run inside ---------------------------------------------------------


@dataclasses.dataclass
class TrainingRun:
    """What one ``python -m gasgd_tf.main`` run inside a namespace did.

    Attributes:
      returncode: The launcher's exit status (None: killed at the timeout).
      wall_s: From start to exit, start-up included.
      timed_out: Stopped at the timeout.
      summary: Its summary.json (None if it wrote none).
      error: Its first ``error: ...`` line, if any.
      output_tail: The last lines of its output.
      class_bytes: Bytes each htb class carried during the run.
      ports: The port(s) the shards listened on.
    """

    returncode: int | None
    wall_s: float
    timed_out: bool
    summary: dict | None
    error: str | None
    output_tail: str
    class_bytes: dict
    ports: list[int]


def _shard_ports(workdir: str, num_shards: int) -> list[int] | None:
    """The ports every shard wrote to its port file, or None until all have."""
    from gasgd_tf import layout

    ports = []
    for k in range(num_shards):
        try:
            with open(layout.port_path(workdir, layout.shard(k))) as f:
                ports.append(int(f.read().strip()))
        except (FileNotFoundError, ValueError):
            return None
    return ports


def _stop_launcher(proc: subprocess.Popen) -> None:
    """SIGINT (the launcher stops its children in order), then SIGKILL to its group."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=STOP_GRACE_SECS)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def run_training(
    ns: Namespace,
    main_args: Sequence[str],
    workdir: str,
    timeout_s: float,
    say: Callable[[str], None] = print,
) -> TrainingRun:
    """Runs ``python -m gasgd_tf.main --role=local`` in ``ns``, its shards on the filtered ports.

    Args:
      ns: The namespace; ``ns.server_ports`` gives one port per shard (the
        config's ``ps.num_shards`` must match).
      main_args: ``--config=...`` and ``--config.X=Y`` overrides (no --workdir, --role).
      workdir: The run's folder (made fresh).
      timeout_s: The run's limit; then it is stopped (``timed_out``).
      say: Where the launcher's lines go (progress), prefixed by the caller.

    Returns:
      The ``TrainingRun``.
    """
    from gasgd_tf import layout

    os.makedirs(workdir, exist_ok=True)
    argv = [sys.executable, "-m", "gasgd_tf.main", *main_args, "--role=local"]
    argv.append(f"--workdir={workdir}")
    default_range = [int(p) for p in ns.port_range().split()]
    low, high = min(ns.server_ports), max(ns.server_ports)
    ns.set_port_range(low, high)  # Port 0 can only be these now; see the module docstring.
    narrowed = True
    lines: list[str] = []
    start = time.monotonic()
    env = dict(os.environ, PYTHONUNBUFFERED="1", TF_CPP_MIN_LOG_LEVEL="2")
    proc = ns.popen(
        argv,
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    reader = threading.Thread(target=_read_lines, args=(proc, lines, say), daemon=True)
    reader.start()
    ports: list[int] = []
    timed_out = False
    try:
        while proc.poll() is None:
            if narrowed and (found := _shard_ports(workdir, len(ns.server_ports))) is not None:
                ns.set_port_range(*default_range)
                narrowed, ports = False, found
                if sorted(ports) != sorted(ns.server_ports):
                    raise RuntimeError(f"the shards listen on {ports}, not on {ns.server_ports}")
            if time.monotonic() - start > timeout_s:
                timed_out = True
                say(f"timed out after {timeout_s:.0f} s: stopping the run")
                break
            time.sleep(0.02)
    finally:
        _stop_launcher(proc)
        if narrowed:
            ns.set_port_range(*default_range)
        reader.join(timeout=10)
    wall_s = time.monotonic() - start
    summary = None
    with contextlib.suppress(FileNotFoundError, json.JSONDecodeError):
        with open(layout.summary_path(workdir)) as f:
            summary = json.load(f)
    error = next((line for line in lines if line.startswith("error:")), None)
    return TrainingRun(
        returncode=None if timed_out else proc.returncode,
        wall_s=wall_s,
        timed_out=timed_out,
        summary=summary,
        error=error,
        output_tail="\n".join(lines[-30:]),
        class_bytes=ns.class_bytes(),
        ports=ports,
    )


def _read_lines(proc: subprocess.Popen, lines: list[str], say: Callable[[str], None]) -> None:
    for line in proc.stdout:
        line = line.rstrip("\n")
        lines.append(line)
        say(line)


# -- The command line ---------------------------------------------------------------------


def run(
    to_server: str = "80mbit",
    from_server: str = "80mbit",
    config: str = "configs/default.py",
    extra: Sequence[str] = (),
    probe_seconds: float = 1.5,
    timeout_s: float = 1800.0,
    workdir: str | None = None,
    tcp_probe: str | None = None,
) -> dict | None:
    """Self-checks the shaped link, then runs one whole training run inside; returns the report."""
    if tcp_probe is not None:  # The probe child, inside a namespace: internal.
        spec = json.loads(tcp_probe)
        print(_PROBE_TAG + json.dumps(tcp_probe_from_spec(spec)), flush=True)
        return None
    reason = unavailable_reason()
    if reason is not None:
        raise SystemExit(f"error: python -m benchmarks.{NAME}: no shaped network here: {reason}")
    workdir = workdir or tempfile.mkdtemp(prefix="run_", dir=_work_dir())
    main_args = [f"--config={config}", *extra]
    with shaped_namespace(to_server, from_server, [SERVER_PORT]) as ns:
        print(
            f"namespace {ns.name}: to server {format_rate(ns.to_server)}, from server "
            f"{format_rate(ns.from_server)}, server port {SERVER_PORT}",
            flush=True,
        )
        probe = measure_tcp(ns, seconds=probe_seconds) if probe_seconds > 0 else None
        if probe:
            print(f"TCP self-check: {_probe_line(probe)}", flush=True)
        result = run_training(ns, main_args, workdir, timeout_s, say=lambda s: print(s, flush=True))
    summary = result.summary or {}
    return {
        "machine": common.machine_info(),
        "command": " ".join(
            [
                "python -m benchmarks.network",
                f"--to-server={to_server}",
                f"--from-server={from_server}",
                f"--config={config}",
            ]
            + (["--", *extra] if extra else [])
        ),
        "to_server_bps": parse_rate(to_server),
        "from_server_bps": parse_rate(from_server),
        "probe": probe,
        "returncode": result.returncode,
        "timed_out": result.timed_out,
        "error": result.error,
        "wall_s": result.wall_s,
        "test_accuracy": summary.get("test_accuracy"),
        "bytes_sent_per_worker": summary.get("bytes_sent_per_worker"),
        "bytes_received_per_worker": summary.get("bytes_received_per_worker"),
        "class_bytes": result.class_bytes,
        "ports": result.ports,
        "workdir": workdir,
    }


def tcp_probe_from_spec(spec: dict) -> dict:
    """``tcp_probe`` from the probe child's JSON spec."""
    return tcp_probe(spec["port"], spec["to_server_bytes"], spec["from_server_bytes"])


def _work_dir() -> str:
    os.makedirs(WORK_DIR, exist_ok=True)
    return WORK_DIR


def _mbit(bps: float | None) -> str:
    return "-" if bps is None else f"{bps / 1e6:.1f} Mbit/s"


def _probe_line(probe: dict) -> str:
    return (
        f"to server {_mbit(probe['to_server_bps'])}, from server {_mbit(probe['from_server_bps'])}"
    )


def markdown(report: dict) -> str:
    """The run as a small Markdown table."""
    sent = report.get("bytes_sent_per_worker") or []
    received = report.get("bytes_received_per_worker") or []
    mb = 1e6
    probe = report.get("probe")
    acc = report.get("test_accuracy")
    cls = report.get("class_bytes") or {}
    outcome = "timed out" if report["timed_out"] else f"exit {report['returncode']}"
    lines = [
        f"Command: `{report['command']}`",
        "",
        "| link (to / from server) | TCP self-check | outcome | wall s | test accuracy "
        "| MB pushed / fetched per worker | MB on the wire to / from server |",
        "|---|---|---|---:|---:|---|---|",
        f"| {format_rate(report['to_server_bps'])} / {format_rate(report['from_server_bps'])} "
        f"| {_probe_line(probe) if probe else '-'} | {outcome} | {report['wall_s']:.1f} "
        f"| {'-' if acc is None else f'{acc:.4f}'} "
        f"| {', '.join(f'{s / mb:.1f} / {r / mb:.1f}' for s, r in zip(sent, received)) or '-'} "
        f"| {cls.get('to_server', 0) / mb:.1f} / {cls.get('from_server', 0) / mb:.1f} |",
    ]
    if report.get("error"):
        lines += ["", f"{report['error']}"]
    return "\n".join(lines)


def _flags(parser: argparse.ArgumentParser) -> None:
    def rate(text: str) -> str:
        try:
            parse_rate(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
        return text

    parser.add_argument(
        "--to-server",
        "--to_server",
        dest="to_server",
        type=rate,
        default="80mbit",
        help="rate of what the server receives (pushes): 80mbit, 1gbit, none (default 80mbit)",
    )
    parser.add_argument(
        "--from-server",
        "--from_server",
        dest="from_server",
        type=rate,
        default="80mbit",
        help="rate of what the server sends (fetches) (default 80mbit)",
    )
    parser.add_argument("--config", default="configs/default.py", help="the run's config file")
    parser.add_argument(
        "--probe_seconds",
        type=float,
        default=1.5,
        help="seconds of raw TCP each way before the run, to check the link (0: none)",
    )
    parser.add_argument("--timeout_s", type=float, default=1800.0, help="the run's limit")
    parser.add_argument("--workdir", default=None, help="the run's folder (default: a new one)")
    parser.add_argument(
        "extra",
        nargs="*",
        metavar="-- --config.X=Y",
        help="more gasgd_tf.main flags, after --",
    )
    parser.add_argument("--tcp_probe", metavar="JSON", help=argparse.SUPPRESS)


def main(argv: list[str] | None = None) -> None:
    """``python -m benchmarks.network --to-server=RATE --from-server=RATE [-- --config.X=Y]``."""
    common.main(NAME, run, doc=__doc__, markdown=markdown, flags=_flags, argv=argv)


if __name__ == "__main__":
    main()
