"""What a training loop reports, and where it goes: one report, several actions.

After CommonLoopUtils' MultiWriter and orbit's Controller: the loop builds
one ``Report`` every ``every_steps`` steps (and at the last), and hands it
to a list of actions, each a sink of its own (TensorBoard, the progress
file the launcher reads, the console line). Adding a sink is adding an
action; the loop does not change.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence

from gasgd_tf import progress
from gasgd_tf.summaries import MetricWriter


@dataclasses.dataclass(frozen=True)
class Comm:
    """What a worker's client has sent and received so far.

    Attributes:
      bytes_sent: Payload bytes pushed (and offered at initialization);
        ``ParameterClient.bytes_sent``.
      bytes_received: Payload bytes fetched; ``ParameterClient.bytes_received``.
      local_steps: The last H the server planned (adaptive local steps;
        0: fixed, or not planned yet).
    """

    bytes_sent: int = 0
    bytes_received: int = 0
    local_steps: int = 0


@dataclasses.dataclass(frozen=True)
class Report:
    """The state of a training run at one step.

    Attributes:
      step: Steps done.
      num_steps: The run's last step.
      loss: Mean training loss since the last report.
      accuracy: Mean training accuracy since the last report.
      images_per_sec: Training throughput since the last report.
      server_version: The server version last seen (0 with no server).
      staleness: The staleness of the last push the server applied.
      comm: ``Comm`` counters of the worker's client so far.
    """

    step: int
    num_steps: int
    loss: float
    accuracy: float
    images_per_sec: float
    server_version: int = 0
    staleness: int = 0
    comm: Comm = dataclasses.field(default_factory=lambda: Comm())


Action = Callable[[Report], None]


def tensorboard(writer: MetricWriter) -> Action:
    """Writes the report's train/* scalars at its step."""

    def write(report: Report) -> None:
        writer.scalars(
            {
                "train/loss": report.loss,
                "train/accuracy": report.accuracy,
                "train/images_per_sec": report.images_per_sec,
                "train/server_version": report.server_version,
                "train/staleness": report.staleness,
                "comm/bytes_sent": report.comm.bytes_sent,
                "comm/bytes_received": report.comm.bytes_received,
                "comm/local_steps": report.comm.local_steps,
            },
            report.step,
        )

    return write


def progress_file(path: str, extra: dict | None = None) -> Action:
    """Rewrites the progress file the launcher reads (``done`` stays False), with ``extra``."""

    def write(report: Report) -> None:
        fields = ("step", "num_steps", "loss", "accuracy", "images_per_sec", "server_version")
        values = {f: getattr(report, f) for f in fields}
        values.update(dataclasses.asdict(report.comm))
        progress.write_json(path, {**values, **(extra or {}), "done": False})

    return write


def console(name: str, note: str = "") -> Action:
    """Prints one line per report, ending with ``note`` (e.g. an emulated slowdown)."""

    def write(report: Report) -> None:
        print(
            f"{name}: step {report.step}/{report.num_steps}, loss {report.loss:.4f}, "
            f"accuracy {report.accuracy:.4f}, {report.images_per_sec:.0f} images/s, "
            f"server version {report.server_version}{note}",
            flush=True,
        )

    return write


class Reporter:
    """Builds a report every ``every_steps`` steps and at the last, and runs the actions.

    Args:
      every_steps: The report interval.
      num_steps: The run's last step (always reported).
      batch_size: Images per step, for the throughput.
      actions: Where each report goes, in order.
    """

    def __init__(
        self, every_steps: int, num_steps: int, batch_size: int, actions: Sequence[Action]
    ):
        self.every_steps = every_steps
        self.num_steps = num_steps
        self.batch_size = batch_size
        self.actions = list(actions)
        self.last: Report | None = None
        self._window_start = time.perf_counter()
        self._window_steps = 0

    def start(self) -> None:
        """Starts the throughput window (call when the steps start)."""
        self._window_start, self._window_steps = time.perf_counter(), 0

    def due(self, step: int) -> bool:
        """Whether ``step`` is reported (counts the step into the throughput window)."""
        self._window_steps += 1
        return step % self.every_steps == 0 or step == self.num_steps

    def report(
        self,
        step: int,
        loss: float,
        accuracy: float,
        server_version: int = 0,
        staleness: int = 0,
        comm: Comm | None = None,
    ) -> Report:
        """Builds the report of ``step`` and hands it to every action."""
        now = time.perf_counter()
        rate = self._window_steps * self.batch_size / max(now - self._window_start, 1e-9)
        self._window_start, self._window_steps = now, 0
        self.last = Report(
            step, self.num_steps, loss, accuracy, rate, server_version, staleness, comm or Comm()
        )
        for action in self.actions:
            action(self.last)
        return self.last
