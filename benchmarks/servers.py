"""Real parameter-server processes for benchmarks: started like the launcher does, on loopback.

Each shard runs ``python -m gasgd_tf.main --role=ps`` in its own process (as
in a real run: its own GIL, its own memory), on a free port that it reports
through a file; ``ServerProcesses`` waits for every port, hands out the
comma-separated address for ``gasgd_tf.client.make_client``, and can read
each process's peak resident memory (VmHWM) before stopping it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time

from gasgd_tf import config_base, launch, layout
from gasgd_tf.progress import write_json

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def bench_config(**fields):
    """The base config with ``fields`` ({"ps.num_shards": 2, ...}), finalized; no checkpoints."""
    config = config_base.get_base_config()
    config.ps.save_checkpoint = False
    config.ps.summary_every_secs = 60.0  # No TensorBoard writes while timing.
    config.update_from_flattened_dict(fields)
    return config_base.finalize(config)


def peak_rss_bytes(pid: int) -> int:
    """VmHWM of a live process: the most resident memory it has had, in bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmHWM for pid {pid}")


class ServerProcesses:
    """``config.ps.num_shards`` server processes for one benchmark cell.

    Args:
      config: A finalized config (see ``bench_config``).
      workdir: Where config.json, port files and logs go; default a temp folder.
      cpus: If set, each server process is pinned to these CPUs (taskset).
    """

    def __init__(self, config, workdir: str | None = None, cpus: set[int] | None = None):
        self.config = config
        self.workdir = workdir or tempfile.mkdtemp(prefix="gasgd_bench_")
        self.cpus = cpus
        self.processes: list[subprocess.Popen] = []
        self.address = ""

    def __enter__(self) -> ServerProcesses:
        config_json = layout.config_path(self.workdir)
        write_json(config_json, self.config.to_dict())
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        addresses = []
        port_files = []
        for k in range(self.config.ps.num_shards):
            port_file = os.path.join(self.workdir, f"{layout.shard(k)}.port")
            argv = [
                sys.executable,
                "-m",
                "gasgd_tf.main",
                "--role=ps",
                f"--task_index={k}",
                f"--config_json={config_json}",
                f"--workdir={self.workdir}",
                "--ps_address=127.0.0.1:0",
                f"--port_file={port_file}",
            ]
            if self.cpus:
                argv = ["taskset", "-c", ",".join(map(str, sorted(self.cpus))), *argv]
            log = open(os.path.join(self.workdir, f"{layout.shard(k)}.log"), "wb")
            self.processes.append(
                subprocess.Popen(argv, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
            )
            port_files.append(port_file)
        deadline = time.monotonic() + 60
        for k, port_file in enumerate(port_files):
            while not os.path.exists(port_file):
                if self.processes[k].poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    with open(os.path.join(self.workdir, f"{layout.shard(k)}.log")) as f:
                        raise RuntimeError(f"server shard {k} did not start:\n{f.read()[-2000:]}")
                time.sleep(0.05)
            with open(port_file) as f:
                addresses.append(f"127.0.0.1:{f.read().strip()}")
        self.address = ",".join(addresses)
        return self

    def peak_rss(self) -> list[int]:
        """Each shard's peak resident memory so far, in bytes."""
        return [peak_rss_bytes(p.pid) for p in self.processes]

    def stop(self) -> None:
        """SIGTERM to every shard, SIGKILL after 30 s."""
        launch.stop_processes(self.processes, 30.0)

    def __exit__(self, *exc) -> None:
        self.stop()
