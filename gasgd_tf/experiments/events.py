"""Reads scalars back from TensorBoard event files, without TensorFlow.

An event file is a sequence of TFRecords (length, its CRC, the payload, the
payload's CRC) holding ``Event`` protos. Reading them directly takes a few
lines and keeps the plotting and summary tools free of TensorFlow's start-up
time; the CRCs are not checked (the files are our own, written locally).
"""

from __future__ import annotations

import dataclasses
import glob
import os
import struct
from collections.abc import Iterator

from tensorboard.compat.proto import event_pb2


@dataclasses.dataclass(frozen=True)
class Point:
    """One scalar value: its step, wall-clock time (Unix seconds) and value."""

    step: int
    wall_time: float
    value: float


def read_events(path: str) -> Iterator[event_pb2.Event]:
    """The events of one file, in order; stops quietly at a truncated last record."""
    with open(path, "rb") as f:
        while True:
            header = f.read(12)
            if len(header) < 12:
                return
            (length,) = struct.unpack("<Q", header[:8])
            data = f.read(length)
            if len(data) < length or len(f.read(4)) < 4:
                return  # A writer still appending, or killed mid-record.
            event = event_pb2.Event()
            event.ParseFromString(data)
            yield event


def read_scalars(logdir: str) -> dict[str, list[Point]]:
    """Every scalar of the event files directly in ``logdir``, by tag, sorted by wall time."""
    out: dict[str, list[Point]] = {}
    for path in sorted(glob.glob(os.path.join(logdir, "events.out.tfevents.*"))):
        for event in read_events(path):
            for value in event.summary.value:
                if value.WhichOneof("value") == "simple_value":
                    out.setdefault(value.tag, []).append(
                        Point(event.step, event.wall_time, value.simple_value)
                    )
    for points in out.values():
        points.sort(key=lambda p: p.wall_time)
    return out


def first_wall_time(logdir: str) -> float | None:
    """The wall time of the first event under ``logdir`` (any role): the run's start."""
    times = []
    for path in glob.glob(os.path.join(logdir, "**", "events.out.tfevents.*"), recursive=True):
        for event in read_events(path):
            times.append(event.wall_time)
            break
    return min(times) if times else None
