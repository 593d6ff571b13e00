"""B8: push codec throughput (gasgd_tf/codecs.py), float32 GB/s on one core.

For P float32 values (7.7M by default: the CIFAR-10 net's size class), each
codec encodes and decodes a normal-distributed gradient; the report gives
float32 bytes per second of encode, decode, and of the sender's whole cost
with error feedback (``ErrorFeedback.encode``: add the residual, encode,
decode, keep the new residual), the median of ``--repeats`` runs. numpy
runs these on one core. Issue 16's target: encode + decode at least 2 GB/s
per core, so that on 10 GbE (1.25 GB/s) a codec costs less than the bytes
it saves. The report records the 1-minute load average before and after the
run: on a shared machine other jobs slow these numbers down.

Usage:
  python -m benchmarks.codec_speed [--quick] [--size=7700000] [--repeats=5]
"""

from __future__ import annotations

import argparse
import os

import numpy as np

from benchmarks import common
from gasgd_tf import codecs

TARGET_GBPS = 2.0  # encode + decode, float32 bytes per second per core.


def _spec(codec: str, size: int) -> codecs.CodecSpec:
    count = codecs.topk_count(size, 0.01) if codec == "topk" else 0
    return codecs.CodecSpec(codec, size, 2048 if codec != "topk" else 0, count)


def _times(repeats: int, fn) -> list[float]:
    return [common.timed(fn) for _ in range(repeats)]


def run(quick: bool = False, size: int = 7_700_000, repeats: int = 5) -> dict:
    if quick:
        size, repeats = min(size, 1_000_000), 2
    load_before = os.getloadavg()[0]
    values = np.random.default_rng(0).standard_normal(size).astype(np.float32)
    out = np.empty_like(values)
    rows = {}
    for codec in codecs.CODECS[1:]:
        spec = _spec(codec, size)
        payload = codecs.encode(values, spec)
        feedback = codecs.ErrorFeedback(codec, size, 2048, 0.01)
        encode = _times(repeats, lambda s=spec: codecs.encode(values, s))
        decode = _times(repeats, lambda s=spec, p=payload: codecs.decode(p, s, out))
        sender = _times(repeats, lambda f=feedback: f.encode(values))
        rows[codec] = {
            "bytes_ratio": values.nbytes / payload.nbytes,
            "encode_gbps": common.stats([values.nbytes / t / 1e9 for t in encode]),
            "decode_gbps": common.stats([values.nbytes / t / 1e9 for t in decode]),
            "both_gbps": values.nbytes / (np.median(encode) + np.median(decode)) / 1e9,
            "sender_gbps": common.stats([values.nbytes / t / 1e9 for t in sender]),
        }
    return {
        "machine": common.machine_info(),
        "command": f"python -m benchmarks.codec_speed --size={size} --repeats={repeats}",
        "size": size,
        "load_average": [load_before, os.getloadavg()[0]],
        "rows": rows,
    }


def markdown(report: dict) -> str:
    load = report.get("load_average")
    loaded = f", load average {load[0]:.1f} before, {load[1]:.1f} after" if load else ""
    lines = [
        f"`{report['command']}` ({report['machine']['date'][:10]}, "
        f"{report['machine'].get('cpu_model', '?')}{loaded})",
        "",
        "| codec | float32 bytes / sent bytes | encode GB/s | decode GB/s | encode + decode GB/s "
        f"(target {TARGET_GBPS}) | sender with error feedback GB/s |",
        "|---|---|---|---|---|---|",
    ]
    for codec, row in report["rows"].items():
        lines.append(
            f"| {codec} | {row['bytes_ratio']:.1f}x | {common.fmt(row['encode_gbps'])} | "
            f"{common.fmt(row['decode_gbps'])} | {row['both_gbps']:.2f} "
            f"({common.verdict(row['both_gbps'], TARGET_GBPS)}) | "
            f"{common.fmt(row['sender_gbps'])} |"
        )
    return "\n".join(lines)


def _flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--size", type=int, default=7_700_000, help="float32 values per push")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per codec")


def main(argv: list[str] | None = None) -> None:
    common.main(
        "codec_speed",
        run,
        doc=__doc__,
        markdown=markdown,
        quick="1M values, 2 runs",
        flags=_flags,
        argv=argv,
    )


if __name__ == "__main__":
    main()
