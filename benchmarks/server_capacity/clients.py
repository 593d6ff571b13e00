"""B5's simulated clients: separate processes that loop fetch + push, no TensorFlow, no model.

Each runs ``python -m benchmarks.server_capacity --client JSON`` (see
``client_main``): numpy and grpc only, through ``gasgd_tf.client.make_client``
(a ``ShardedClient`` over several shards), pushing a constant gradient
(``models.GRADIENT_VALUE``) with the fetched version as its base. ``Clients``
starts them and talks to them over their stdin and stdout, so that every
client counts the same window on the system-wide monotonic clock.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

from benchmarks.server_capacity import models


def client_main(cfg: dict) -> None:
    """One simulated client: connect, warm up, then fetch + push as told on stdin.

    Protocol (stdout lines; stdin lines from the benchmark):
      -> ``READY``                     connected, registered, one fetch + push done;
      <- ``WINDOW <start> <end>``       loop until ``end`` (time.monotonic, which
                                        is CLOCK_MONOTONIC: the same clock in every
                                        process), counting what completes in
                                        [start, end]; or
      <- ``CYCLES <n>``                 do n fetch + push cycles;
      -> ``RESULT <json>``.
    """
    from gasgd_tf.client import make_client

    specs = models.specs(cfg["model"])
    client = make_client(
        cfg["address"], cfg["client_id"], split_bytes=cfg["split_bytes"], **cfg["client_args"]
    )
    client.wait_for_server(60)
    client.register(specs)
    grad = np.full(sum(s.size for s in specs), models.GRADIENT_VALUE, np.float32)
    step = 0

    def cycle() -> tuple[float, float, float]:
        nonlocal step
        t0 = time.monotonic()
        version, _, _ = client.fetch()
        t1 = time.monotonic()
        step += 1
        client.push(grad, version, step)
        return t0, t1, time.monotonic()

    cycle()  # Channel set up, first allocations made: not in anyone's window.
    print("READY", flush=True)
    command = sys.stdin.readline().split()
    fetch_s: list[float] = []
    push_s: list[float] = []
    pushes = fetches = 0
    if command and command[0] == "WINDOW":
        start, end = float(command[1]), float(command[2])
        while time.monotonic() < end:
            t0, t1, t2 = cycle()
            if start <= t1 <= end:
                fetches += 1
                fetch_s.append(t1 - t0)
            if start <= t2 <= end:
                pushes += 1
                push_s.append(t2 - t1)
    elif command and command[0] == "CYCLES":
        for _ in range(int(command[1])):
            t0, t1, t2 = cycle()
            fetches += 1
            pushes += 1
            fetch_s.append(t1 - t0)
            push_s.append(t2 - t1)
    client.leave()
    client.close()
    result = {
        "client_id": cfg["client_id"],
        "pushes": pushes,
        "fetches": fetches,
        "fetch_s_mean": statistics.fmean(fetch_s) if fetch_s else None,
        "push_s_mean": statistics.fmean(push_s) if push_s else None,
        "steps": step,
    }
    print("RESULT " + json.dumps(result), flush=True)


class Clients:
    """``n`` simulated client processes of one server (see ``client_main``).

    Args:
      address: The server's comma-separated shard addresses.
      n: How many clients.
      model: "grid" or "memory" (``MODELS``).
      split_bytes: The servers' ``ps.shard_split_bytes``.
      workdir: Where each client's stderr goes.
      client_args: ParameterClient arguments (transport dtypes).
    """

    def __init__(
        self,
        address: str,
        n: int,
        model: str,
        split_bytes: int,
        workdir: str,
        client_args: dict | None = None,
    ):
        self.workdir = workdir
        self.processes: list[subprocess.Popen] = []
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        for i in range(n):
            cfg = {
                "address": address,
                "client_id": f"client_{i}",
                "model": model,
                "split_bytes": split_bytes,
                "client_args": client_args or {},
            }
            stderr = open(os.path.join(workdir, f"client_{i}.err"), "wb")
            self.processes.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "benchmarks.server_capacity",
                        "--client",
                        json.dumps(cfg),
                    ],
                    cwd=models.REPO_ROOT,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=stderr,
                    env=env,
                    text=True,
                )
            )
            stderr.close()

    @property
    def pids(self) -> list[int]:
        """The client processes' ids."""
        return [p.pid for p in self.processes]

    def _line(self, i: int, prefix: str) -> str:
        line = self.processes[i].stdout.readline()
        if not line.startswith(prefix):
            self.processes[i].wait(timeout=30)
            with open(os.path.join(self.workdir, f"client_{i}.err")) as f:
                err = f.read()[-3000:]
            raise RuntimeError(f"client {i}: expected {prefix}, got {line!r}; stderr:\n{err}")
        return line[len(prefix) :].strip()

    def wait_ready(self) -> None:
        """Until every client has connected and done one fetch and push."""
        for i in range(len(self.processes)):
            self._line(i, "READY")

    def send(self, command: str) -> None:
        """Sends every client ``command`` (``WINDOW <start> <end>`` or ``CYCLES <n>``)."""
        for p in self.processes:
            p.stdin.write(command + "\n")
            p.stdin.flush()

    def results(self) -> list[dict]:
        """Every client's ``RESULT``, in order, once it has exited."""
        out = [json.loads(self._line(i, "RESULT")) for i in range(len(self.processes))]
        for p in self.processes:
            p.wait(timeout=60)
        return out

    def kill(self) -> None:
        """SIGKILL to every client still running (after a failure)."""
        for p in self.processes:
            if p.poll() is None:
                p.kill()
                p.wait()
