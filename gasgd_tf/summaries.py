"""TensorBoard event files without TensorFlow.

Every role writes its metrics through one small interface, ``MetricWriter``
(after CommonLoopUtils' metric writers), whose TensorBoard backend writes
event files with the ``tensorboard`` package's protos and record writer. The
parameter server must not import TensorFlow, and tensorboard's own
``EventFileWriter`` imports it on first use (through ``tensorboard.compat.tf``
for file I/O), so this module writes the files itself with plain Python I/O.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Sequence

import numpy as np
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.record_writer import RecordWriter


class MetricWriter:
    """Writes scalars and histograms to a TensorBoard log directory.

    Thread-safe. Each write is flushed to the OS at once, so that TensorBoard
    and the launcher see it while the run goes on; the metrics written here
    are few per second, so the cost is small.

    Args:
      logdir: Folder for the event file; created if missing.
    """

    def __init__(self, logdir: str | os.PathLike):
        os.makedirs(logdir, exist_ok=True)
        self.path = os.path.join(
            os.fspath(logdir),
            f"events.out.tfevents.{time.time():.6f}.{socket.gethostname()}.{os.getpid()}",
        )
        self._file = open(self.path, "wb")  # noqa: SIM115 - closed in close()
        self._records = RecordWriter(self._file)
        self._lock = threading.Lock()
        self._write(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"))

    def _write(self, event: event_pb2.Event) -> None:
        with self._lock:
            if self._file.closed:
                raise ValueError(f"write to closed MetricWriter {self.path}")
            self._records.write(event.SerializeToString())
            self._file.flush()

    def _write_value(self, value: summary_pb2.Summary.Value, step: int, wall_time: float | None):
        self._write(
            event_pb2.Event(
                wall_time=time.time() if wall_time is None else wall_time,
                step=int(step),
                summary=summary_pb2.Summary(value=[value]),
            )
        )

    def scalar(self, tag: str, value: float, step: int, wall_time: float | None = None) -> None:
        """Writes one scalar point."""
        self._write_value(
            summary_pb2.Summary.Value(tag=tag, simple_value=float(value)), step, wall_time
        )

    def scalars(self, values: dict[str, float], step: int) -> None:
        """Writes several scalars at one step."""
        now = time.time()
        for tag, value in values.items():
            self.scalar(tag, value, step, wall_time=now)

    def histogram(
        self,
        tag: str,
        values: Sequence[float] | np.ndarray,
        step: int,
        bucket_limits: Sequence[float] | None = None,
    ) -> None:
        """Writes a histogram of ``values``.

        Args:
          tag: Name in TensorBoard.
          values: The samples; NaN and Inf are left out (TensorBoard cannot
            bucket them). Nothing is written when no finite value remains.
          step: The x value.
          bucket_limits: Right edges of the buckets, increasing; the last
            bucket is open to +inf. Default: 30 equal buckets over the range.
        """
        values = np.asarray(values, dtype=np.float64).ravel()
        values = values[np.isfinite(values)]
        if values.size == 0:
            return
        if bucket_limits is None:
            lo, hi = float(values.min()), float(values.max())
            edges = np.linspace(lo, hi if hi > lo else lo + 1.0, 31)[1:]
        else:
            edges = np.asarray(bucket_limits, dtype=np.float64)
        # Right edges, the last one open (DBL_MAX as TensorFlow writes it).
        limits = np.append(edges[:-1], np.finfo(np.float64).max)
        counts = np.bincount(np.searchsorted(limits, values, side="left"), minlength=len(limits))
        proto = summary_pb2.HistogramProto(
            min=float(values.min()),
            max=float(values.max()),
            num=float(values.size),
            sum=float(values.sum()),
            sum_squares=float(np.square(values).sum()),
            bucket_limit=limits.tolist(),
            bucket=counts[: len(limits)].astype(np.float64).tolist(),
        )
        self._write_value(summary_pb2.Summary.Value(tag=tag, histo=proto), step, None)

    def hparams(self, values: dict[str, bool | int | float | str], trial_id: str) -> None:
        """Records a run's hyperparameters for TensorBoard's HParams dashboard.

        Write it to the run's top folder (``<workdir>/tb``): the dashboard
        then pairs the values with the scalars of every role's subfolder
        (``eval/eval/accuracy``, ``worker_0/train/loss``, ...).

        Args:
          values: Name -> value; None values are left out.
          trial_id: Names the run in the dashboard.
        """
        # summary_v2 reaches TensorFlow only through a lazy import that
        # hparams_pb never triggers, so this stays TF-free.
        from tensorboard.plugins.hparams import summary_v2

        clean = {k: v for k, v in values.items() if v is not None}
        summary = summary_v2.hparams_pb(clean, trial_id=trial_id)
        self._write(event_pb2.Event(wall_time=time.time(), step=0, summary=summary))

    def close(self) -> None:
        with self._lock:
            if not self._file.closed:
                self._file.close()

    def __enter__(self) -> MetricWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
