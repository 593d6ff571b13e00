"""Small JSON files written atomically: progress of each role, config.json, summary.json.

Each role of a local run writes its latest progress to
``<workdir>/progress/<role>.json``; the launcher reads them for its progress
lines and the final summary. Writes go to a temporary file first and are
renamed into place, so a reader never sees half a file.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from gasgd_tf import layout


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Writes ``data`` as JSON to ``path`` atomically."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


def read_json(path: str | os.PathLike) -> dict[str, Any] | None:
    """The JSON object at ``path``, or None if it does not exist yet."""
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return None


def progress_path(workdir: str, role: str) -> str:
    """``gasgd_tf.layout.progress_path``: where ``role`` writes its progress."""
    return layout.progress_path(workdir, role)


def wait_for_step(
    workdir: str, role: str, step: int, process=None, timeout_secs: float = 120.0
) -> None:
    """Blocks until ``role``'s progress file in ``workdir`` reports ``step`` or later.

    For scripts and tests that act on a run mid-way (fault injection).

    Args:
      workdir: The run folder.
      role: For example "worker_1".
      step: The step to wait for.
      process: The run's process (a ``subprocess.Popen``): if it ends first,
        waiting ends too.
      timeout_secs: How long to wait.

    Raises:
      TimeoutError: The step was not reached in time, or ``process`` ended.
    """
    path = progress_path(workdir, role)
    deadline = time.monotonic() + timeout_secs
    while time.monotonic() < deadline and (process is None or process.poll() is None):
        if ((read_json(path) or {}).get("step") or 0) >= step:
            return
        time.sleep(0.05)
    raise TimeoutError(f"{role} did not reach step {step} within {timeout_secs:.0f}s")
