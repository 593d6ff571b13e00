"""B10: toward scale, computed, not measured: seconds and bytes per step of the paper's net.

Nothing here is timed. For the paper's ImageNet net (``paper_imagenet``,
built here to count its parameters) on one current GPU per client, with
10, 100 and 400 Gb/s links, the table gives seconds per step, bytes per
step per client, the share of the step spent on syncs and the time to
accuracy relative to Downpour ``n_sync = 1`` at the same rate, for
Downpour n_sync 1 and 100, DiLoCo H = 100 with int4 pushes, and Streaming
DiLoCo (F = 8 fragments, H = 100, overlap of ``--tau`` steps), from
measured and cited inputs read when it runs:

- steps to 0.1 test error from experiment 5's grid in EXPERIMENTS.md
  (4 clients, seed 0);
- codec throughput from ``benchmarks/results/codec_speed.json`` (B8);
- bytes per codec from ``gasgd_tf/codecs.py``, the block size from
  ``config_base``;
- the GPU step: ``--gpu_step_s`` (from ``benchmarks/gpu_check.py`` where a
  GPU was lent), otherwise a cited images/s figure converted to batch 128.

The model: a sync moves push + fetch bytes over a full-duplex link (each
direction at the full rate, push and fetch at once: max(push, fetch) / rate),
after the client's encode and the server's decode (one core each, at B8's
rates; none for float32); per step = GPU step + max(0, sync - overlap) /
(steps between syncs); time to accuracy = steps ratio x seconds per step.

Usage:
  python -m benchmarks.scale_table [--gpu_step_s=S] [--params=N] [--tau=1]
      [--fetch_dtype=float32] [--clients=4]
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os

from benchmarks import common

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPERIMENTS_MD = os.path.join(ROOT, "EXPERIMENTS.md")
LINK_GBPS = (10.0, 100.0, 400.0)
BATCH_SIZE = 128  # configs/paper_imagenet.py: batch 128 per client.
H = 100  # Local steps between syncs of DiLoCo and Streaming DiLoCo, and Downpour's n_sync 100.
FRAGMENTS = 8
TARGET = "steps/client to 0.1"  # exp5's steps-to-accuracy column.

# The GPU step when no GPU was lent: Lambda's TensorFlow benchmark
# (tf_cnn_benchmarks, synthetic ImageNet, float32, TF 1.15), one A100 40GB
# PCIe, tf_cnn_benchmarks' single-tower AlexNet (conv filters 64/192/384/384/256,
# 227x227, 61.8M parameters) at batch 1792: 10,187 images/s. The CSV gives
# images/s only: one step of 128 images is taken as 128 / 10,187 s.
GPU_FIGURE = {
    "gpu": "NVIDIA A100 40GB PCIe",
    "net": "tf_cnn_benchmarks alexnet (float32, synthetic data)",
    "images_per_s": 10187.0,
    "batch": 1792,
    "source": (
        "https://github.com/LambdaColdStorage/lambda-tensorflow-benchmark/blob/"
        "e086e0e7d88a19991642d0774793693d4b7cbe46/tf-train-throughput-fp32.csv"
        " (batch: tf-train-bs-fp32.csv; run log: logs/7502-A100-PCIE-40GB.logs/"
        "syn-replicated-fp32-1gpus/alexnet-1792/throughput/1)"
    ),
}
STREAMING_SOURCE = (
    "Streaming DiLoCo (Douillard et al. 2025, https://arxiv.org/abs/2501.18512): one fragment "
    "synced at a time, its communication overlapped with tau inner steps, outer gradients in "
    "4-bit floats (FP4, not our int4); Table 1: FP4 overlapped streaming matches data-parallel "
    "quality with communication as long as one compute step (tau = 1); Fig. 10: robust for "
    "tau < 5 (captions as reproduced at https://github.com/deep-diver/ai-paper-reviewer/blob/"
    "b09059692a0689d8998627aac734d7bbea7bffa0/content/paper-reviews/2501.18512/index.md); "
    "schedule as torchft implements it (https://github.com/pytorch/torchft/blob/"
    "73dafea422116b2a713542719c8454efe5444c6c/torchft/local_sgd.py: a fragment every "
    "sync_every / F steps, each every sync_every, fragment_sync_delay = tau < sync_every / F)"
)


# -- Inputs read from the repository --------------------------------------------


def exp5_steps(text: str, clients: int = 4) -> dict[tuple[str, int], float | None]:
    """Steps per client to the target error of experiment 5's grid, per (method, H).

    Args:
      text: EXPERIMENTS.md (or any Markdown with the exp5 grid table).
      clients: The grid's column of clients to read.

    Returns:
      ``{("downpour", 1): 234.0, ("diloco", 50): 150.0, ...}``; None where the
      run never reached the target ("-").

    Raises:
      ValueError: No table with a ``steps/client to 0.1`` column after the
        "## Experiment 5" heading.
    """
    lines = text[text.find("## Experiment 5") :].splitlines() if "## Experiment 5" in text else []
    start = next((i for i, line in enumerate(lines) if TARGET in _cells(line)), None)
    if start is None:
        raise ValueError(f"no exp5 table with a {TARGET!r} column")
    header = _cells(lines[start])
    steps = {}
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        row = dict(zip(header, _cells(line)))
        if int(row["clients"]) == clients:
            value = row[TARGET]
            steps[(row["method"], int(row["H"]))] = None if value == "-" else float(value)
    return steps


def _cells(line: str) -> list[str]:
    """The cells of a Markdown table line; [] for any other line."""
    if not line.startswith("|"):
        return []
    return [c.strip() for c in line.strip().strip("|").split("|")]


def codec_rates(report: dict, codec: str = "int4") -> dict:
    """B8's medians for ``codec``: the client's encode (error feedback) and the server's decode.

    Returns:
      ``{"sender_gbps": ..., "decode_gbps": ..., "date": ..., "command": ...}``,
      float32 GB/s on one core.
    """
    row = report["rows"][codec]
    return {
        "sender_gbps": row["sender_gbps"]["median"],
        "decode_gbps": row["decode_gbps"]["median"],
        "date": report["machine"]["date"][:10],
        "command": report["command"],
    }


def codec_block_size() -> int:
    """The default values per int8/int4 scale (``client.codec_block_size``)."""
    from gasgd_tf import config_base

    return int(config_base.get_base_config().client.codec_block_size)


def dtype_bytes(dtype: str) -> int:
    """Bytes per value of a wire dtype (float32 4, bfloat16 2)."""
    from gasgd_tf import tensors

    return tensors.numpy_dtype(dtype).itemsize


# -- The arithmetic ---------------------------------------------------------------


def push_bytes(codec: str, values: int, block_size: int) -> int:
    """Bytes of one push of ``values`` float32 values under ``codec`` (``codecs.CodecSpec``).

    ``"none"`` is float32: 4 bytes a value; int4 is half a byte a value plus
    a float32 scale per ``block_size`` values.
    """
    if codec == "none":
        return 4 * values
    from gasgd_tf import codecs

    return codecs.CodecSpec(codec, values, block_size).nbytes


def wire_seconds(push: float, fetch: float, gbps: float) -> float:
    """Seconds a sync's bytes take on a full-duplex link of ``gbps`` Gb/s each way.

    The push goes up while the fetch comes down, so the longer of the two sets
    the time.
    """
    return max(push, fetch) * 8 / (gbps * 1e9)


def codec_seconds(values: int, sender_gbps: float, decode_gbps: float) -> float:
    """One core's seconds to encode ``values`` float32 values (client) and decode them (server)."""
    nbytes = 4 * values / 1e9
    return nbytes / sender_gbps + nbytes / decode_gbps


def step_seconds(gpu_s: float, sync_s: float, interval: float, overlap_s: float = 0.0) -> float:
    """Seconds per step: the GPU step plus the sync time not hidden, spread over its steps.

    Args:
      gpu_s: One step's compute.
      sync_s: One sync's time (codec and wire).
      interval: Steps between syncs (H, or H / F for a fragment).
      overlap_s: Compute the sync runs behind (tau GPU steps); 0: it blocks.
    """
    return gpu_s + max(0.0, sync_s - overlap_s) / interval


def sync_share(step_s: float, gpu_s: float) -> float:
    """The part of a step not spent computing."""
    return (step_s - gpu_s) / step_s


def relative_time(ratio: float | None, step_s: float, base_step_s: float) -> float | None:
    """Time to accuracy over the baseline's: steps ratio x step-time ratio; None: never."""
    return None if ratio is None else ratio * step_s / base_step_s


@dataclasses.dataclass(frozen=True)
class Method:
    """One way of training, as the arithmetic sees it.

    Attributes:
      name: The table's row label.
      interval: Steps between syncs (H; H / F for a streamed fragment).
      values: Values moved per sync (the model, or one fragment).
      push: Bytes pushed per sync.
      fetch: Bytes fetched per sync.
      coded: Whether the push is encoded (costs codec time).
      tau: Steps of compute a sync overlaps with (0: it blocks).
      ratio: Steps to accuracy against Downpour n_sync 1; None: never reached.
      ratio_source: Where ``ratio`` comes from.
      ratio_high: A pessimistic ``ratio`` (another measured H); None: none.
    """

    name: str
    interval: float
    values: int
    push: int
    fetch: int
    coded: bool
    tau: int
    ratio: float | None
    ratio_source: str
    ratio_high: float | None = None


def methods(
    params: int,
    steps: dict[tuple[str, int], float | None],
    *,
    block_size: int,
    fetch_itemsize: int = 4,
    tau: int = 1,
) -> list[Method]:
    """The four methods of the table.

    Args:
      params: The model's values.
      steps: exp5's steps to the target per (method, H) (``exp5_steps``).
      block_size: Values per int4 scale.
      fetch_itemsize: Bytes per fetched value.
      tau: Steps a streamed fragment's sync overlaps.

    Returns:
      Downpour n_sync 1 (the baseline), Downpour n_sync H, DiLoCo H + int4,
      Streaming DiLoCo (F fragments, int4, tau).
    """
    base = steps[("downpour", 1)]
    diloco = steps[("diloco", 50)] / base
    slow = steps.get(("diloco", 200))
    diloco_high = None if slow is None else slow / base
    never = " or ".join(
        str(h) for h in (50, 200) if ("downpour", h) in steps and steps[("downpour", h)] is None
    )
    fragment = math.ceil(params / FRAGMENTS)

    def make(
        name: str,
        interval: float,
        values: int,
        codec: str,
        overlap: int,
        ratio: float | None,
        source: str,
        high: float | None = None,
    ) -> Method:
        """A Method moving ``values`` per sync, pushed under ``codec``."""
        push = push_bytes(codec, values, block_size)
        fetch = fetch_itemsize * values
        coded = codec != "none"
        return Method(name, interval, values, push, fetch, coded, overlap, ratio, source, high)

    downpour_h = f"not measured at {H}" + (
        f"; never reached 0.1 at {never} in 400 steps" * bool(never)
    )
    return [
        make("Downpour n_sync=1", 1, params, "none", 0, 1.0, f"the baseline, {base:.0f} steps"),
        make(f"Downpour n_sync={H}", H, params, "none", 0, None, downpour_h),
        make(f"DiLoCo H={H} + int4", H, params, "int4", 0, diloco, "assumed: H=50's", diloco_high),
        make(
            f"Streaming F={FRAGMENTS}, H={H}, int4, tau={tau}",
            H / FRAGMENTS,
            fragment,
            "int4",
            tau,
            diloco,
            "assumed: DiLoCo H=50's",
            diloco_high,
        ),
    ]


def row(method: Method, gbps: float, gpu_s: float, rates: dict, base_step_s: float | None) -> dict:
    """One table row: ``method`` on a ``gbps`` link; ``base_step_s`` None: it is the baseline."""
    codec_s = codec_seconds(method.values, rates["sender_gbps"], rates["decode_gbps"])
    sync_s = wire_seconds(method.push, method.fetch, gbps) + (codec_s if method.coded else 0.0)
    step_s = step_seconds(gpu_s, sync_s, method.interval, method.tau * gpu_s)
    return {
        "method": method.name,
        "gbps": gbps,
        "sync_s": sync_s,
        "step_s": step_s,
        "bytes_per_step": (method.push + method.fetch) / method.interval,
        "sync_share": sync_share(step_s, gpu_s),
        "steps_ratio": method.ratio,
        "ratio_source": method.ratio_source,
        "relative_time": relative_time(method.ratio, step_s, base_step_s or step_s),
        "steps_ratio_high": method.ratio_high,
        "relative_time_high": relative_time(method.ratio_high, step_s, base_step_s or step_s),
    }


def table(all_methods: list[Method], gpu_s: float, rates: dict) -> list[dict]:
    """Every method at every rate of ``LINK_GBPS``, grouped by method."""
    base = {g: row(all_methods[0], g, gpu_s, rates, None)["step_s"] for g in LINK_GBPS}
    return [row(m, g, gpu_s, rates, base[g]) for m in all_methods for g in LINK_GBPS]


def sensitivity(
    params: int,
    steps: dict[tuple[str, int], float | None],
    *,
    block_size: int,
    gpu_s: float,
    rates: dict,
    tau: int,
    fetch_itemsize: int,
    macs_ratio: float | None,
    gbps: float = LINK_GBPS[0],
) -> list[dict]:
    """Seconds per step of every method at ``gbps`` when one input changes.

    Returns:
      ``[{"variant": ..., "step_s": [one per method]}, ...]``: as computed,
      the GPU step scaled by ``macs_ratio`` (None: left out), fetches in
      bfloat16, tau 5, and free codecs.
    """
    free = {"sender_gbps": math.inf, "decode_gbps": math.inf}
    variants = [("as in the table", gpu_s, rates, tau, fetch_itemsize)]
    if macs_ratio is not None:
        variants.append(
            (
                f"GPU step x {macs_ratio:.2f} (multiply-adds)",
                gpu_s * macs_ratio,
                rates,
                tau,
                fetch_itemsize,
            )
        )
    variants += [
        ("fetch in bfloat16", gpu_s, rates, tau, 2),
        ("tau = 5", gpu_s, rates, 5, fetch_itemsize),
        ("codecs take no time", gpu_s, free, tau, fetch_itemsize),
    ]
    out = []
    for name, gpu, codec, overlap, itemsize in variants:
        ms = methods(params, steps, block_size=block_size, fetch_itemsize=itemsize, tau=overlap)
        out.append(
            {"variant": name, "step_s": [row(m, gbps, gpu, codec, None)["step_s"] for m in ms]}
        )
    return out


# -- The nets ----------------------------------------------------------------------


def count(model) -> tuple[int, int]:
    """(parameters, multiply-adds per image of its Conv2D and Dense layers) of a Keras model."""
    import keras

    macs = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            kh, kw, cin, cout = layer.kernel.shape
            _, oh, ow, _ = layer.output.shape
            macs += oh * ow * cout * kh * kw * cin
        elif isinstance(layer, keras.layers.Dense):
            macs += layer.kernel.shape[0] * layer.kernel.shape[1]
    return model.count_params(), int(macs)


def reference_net():
    """tf_cnn_benchmarks' alexnet (the cited GPU figure's net), 227x227 input, 1001 classes.

    Its layers as in tensorflow/benchmarks scripts/tf_cnn_benchmarks/models/alexnet_model.py.
    """
    import keras

    x = inputs = keras.Input((227, 227, 3))
    x = keras.layers.Conv2D(64, 11, 4, padding="valid")(x)
    x = keras.layers.MaxPooling2D(3, 2)(x)
    x = keras.layers.Conv2D(192, 5, padding="same")(x)
    x = keras.layers.MaxPooling2D(3, 2)(x)
    for filters in (384, 384, 256):
        x = keras.layers.Conv2D(filters, 3, padding="same")(x)
    x = keras.layers.Flatten()(keras.layers.MaxPooling2D(3, 2)(x))
    for units in (4096, 4096, 1001):
        x = keras.layers.Dense(units)(x)
    return keras.Model(inputs, x)


def nets() -> dict:
    """Parameters and multiply-adds of the paper's net and of the cited figure's net."""
    from gasgd_tf.models import paper_imagenet

    params, macs = count(paper_imagenet.paper_imagenet())
    ref_params, ref_macs = count(reference_net())
    return {
        "params": params,
        "macs": macs,
        "reference_params": ref_params,
        "reference_macs": ref_macs,
    }


# -- The benchmark --------------------------------------------------------------------


def run(
    quick: bool = False,
    gpu_step_s: float = 0.0,
    params: int = 0,
    tau: int = 1,
    fetch_dtype: str = "float32",
    clients: int = 4,
) -> dict:
    """Computes the table from the repository's measured inputs and the cited GPU figure.

    Args:
      quick: Changes nothing (nothing here is timed); there for ``run_all``.
      gpu_step_s: Seconds of one GPU step at batch 128 (from gpu_check.py); 0:
        the cited figure.
      params: The model's parameter count; 0: build ``paper_imagenet`` and
        count (about 10 s: TensorFlow starts).
      tau: Steps of compute each streamed fragment's sync overlaps with.
      fetch_dtype: What the fetch travels in (exp5 measured float32).
      clients: The exp5 column of clients whose steps-to-accuracy are used.

    Returns:
      The report: inputs with their sources, and the rows.
    """
    del quick
    if not 0 <= tau < H / FRAGMENTS:
        raise ValueError(f"tau must be in [0, {H / FRAGMENTS:g}) (a fragment every H/F steps)")
    with open(EXPERIMENTS_MD) as f:
        steps = exp5_steps(f.read(), clients)
    codec_report = common.read_report("codec_speed")
    if codec_report is None:
        raise FileNotFoundError("benchmarks/results/codec_speed.json: run benchmarks.codec_speed")
    rates = codec_rates(codec_report)
    net = nets() if params == 0 else {"params": params}
    cited = BATCH_SIZE / GPU_FIGURE["images_per_s"]
    gpu_s = gpu_step_s or cited
    block = codec_block_size()
    itemsize = dtype_bytes(fetch_dtype)
    all_methods = methods(net["params"], steps, block_size=block, fetch_itemsize=itemsize, tau=tau)
    macs_ratio = net["macs"] / net["reference_macs"] if "macs" in net else None
    return {
        "command": (
            f"python -m benchmarks.scale_table --tau={tau} --fetch_dtype={fetch_dtype} "
            f"--clients={clients}" + (f" --gpu_step_s={gpu_step_s}" if gpu_step_s else "")
        ),
        "date": common.machine_info()["date"],
        "net": net,
        "gpu_step_s": gpu_s,
        "gpu_step_source": "--gpu_step_s" if gpu_step_s else "cited",
        "gpu_figure": GPU_FIGURE,
        "codec": rates,
        "block_size": block,
        "fetch_dtype": fetch_dtype,
        "tau": tau,
        "clients": clients,
        "exp5_steps": {f"{m} H={h}": s for (m, h), s in steps.items()},
        "streaming_source": STREAMING_SOURCE,
        "methods": [dataclasses.asdict(m) for m in all_methods],
        "rows": table(all_methods, gpu_s, rates),
        "sensitivity_gbps": LINK_GBPS[0],
        "sensitivity": sensitivity(
            net["params"],
            steps,
            block_size=block,
            gpu_s=gpu_s,
            rates=rates,
            tau=tau,
            fetch_itemsize=itemsize,
            macs_ratio=macs_ratio,
        ),
    }


def _mb(nbytes: float) -> str:
    return f"{nbytes / 1e6:,.1f}" if nbytes < 1e8 else f"{nbytes / 1e6:,.0f}"


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:,.1f}"


def _relative(value: float | None) -> str:
    if value is None:
        return "never reached (exp5)"
    return f"{value:.2f}" if value >= 0.1 else f"{value:.3f}"


def _share(value: float) -> str:
    return f"{value:.0%}" if value >= 0.1 else f"{value:.1%}"


def _table_lines(report: dict) -> list[str]:
    """The main table: one row per method and rate."""
    lines = [
        "| method | link Gb/s | ms per step | MB per step per client | sync share of step | "
        "steps ratio (exp5) | time to accuracy vs Downpour n_sync=1 |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        ratio = "-" if r["steps_ratio"] is None else f"{r['steps_ratio']:.2f}"
        relative = _relative(r["relative_time"])
        if r.get("steps_ratio_high") is not None:
            ratio += f" ({r['ratio_source']}; H=200's {r['steps_ratio_high']:.2f})"
            relative += f" (H=200's ratio: {_relative(r['relative_time_high'])})"
        else:
            ratio += f" ({r['ratio_source']})"
        cells = [
            r["method"],
            f"{r['gbps']:.0f}",
            _ms(r["step_s"]),
            _mb(r["bytes_per_step"]),
            _share(r["sync_share"]),
            ratio,
            relative,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _model_line(net: dict) -> str:
    """The model's size, and its multiply-adds against the cited figure's net if counted."""
    line = f"- Model: `paper_imagenet`, {net['params']:,} parameters"
    if "macs" not in net:
        return line + " (given)."
    return (
        f"{line} (built and counted); {net['macs'] / 1e9:.2f} G multiply-adds per image, "
        f"{net['macs'] / net['reference_macs']:.2f}x the cited net's "
        f"{net['reference_macs'] / 1e9:.2f} G ({net['reference_params']:,} parameters)."
    )


def _gpu_line(report: dict) -> str:
    """Where the GPU step comes from."""
    gpu = report["gpu_figure"]
    cited = BATCH_SIZE / gpu["images_per_s"]
    head = f"- GPU step: {_ms(report['gpu_step_s'])} ms at batch {BATCH_SIZE}"
    if report["gpu_step_source"] != "cited":
        return f"{head}, given (--gpu_step_s); the cited figure would give {_ms(cited)} ms."
    return (
        f"{head} = {BATCH_SIZE} / {gpu['images_per_s']:,.0f} images/s, converted from the cited "
        f"images/s of {gpu['net']} on one {gpu['gpu']} at batch {gpu['batch']}: {gpu['source']}."
    )


def _input_lines(report: dict) -> list[str]:
    """Every input and its source."""
    codec = report["codec"]
    steps = ", ".join(
        f"{k} {'-' if v is None else f'{v:.0f}'}" for k, v in report["exp5_steps"].items()
    )
    return [
        "Inputs and sources:",
        _model_line(report["net"]),
        _gpu_line(report),
        f"- Steps to 0.1 test error: EXPERIMENTS.md, experiment 5's grid, {report['clients']} "
        f"clients, seed 0 (- never): {steps}.",
        f"- Codec (int4, numpy, one core): the client's encode with error feedback "
        f"{codec['sender_gbps']:.2f} GB/s and the server's decode {codec['decode_gbps']:.2f} GB/s "
        f"of float32, medians of `{codec['command']}` ({codec['date']}, "
        "benchmarks/results/codec_speed.json).",
        f"- Bytes: gasgd_tf/codecs.py `CodecSpec.nbytes`: int4 is half a byte a value plus a "
        f"float32 scale per {report['block_size']} values (`client.codec_block_size`); float32 "
        f"pushes 4 bytes a value; fetches in {report['fetch_dtype']}.",
        f"- Streaming: {report['streaming_source']}.",
        "- A sync: codec time (int4 pushes only) + max(push, fetch) bytes / rate (full duplex: "
        "push and fetch at once); per step = GPU step + max(0, sync - tau x GPU step) / steps "
        "between syncs; time to accuracy = steps ratio x seconds per step.",
    ]


def _sensitivity_lines(report: dict) -> list[str]:
    """ms per step at one rate when one input changes."""
    names = [m["name"] for m in report["methods"]]
    lines = [
        f"What moves it: ms per step at {report['sensitivity_gbps']:.0f} Gb/s when one input "
        "changes (computed the same way).",
        "",
        "| variant | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for v in report["sensitivity"]:
        lines.append(f"| {v['variant']} | " + " | ".join(_ms(s) for s in v["step_s"]) + " |")
    return lines


def markdown(report: dict) -> str:
    """The table, titled as computed, with every input and its source under it."""
    lines = [f"**Computed, not measured.** `{report['command']}` ({report['date'][:10]})", ""]
    lines += _table_lines(report) + [""] + _input_lines(report)
    if report.get("sensitivity"):
        lines += [""] + _sensitivity_lines(report)
    return "\n".join(lines)


def _tau(text: str) -> int:
    """``--tau``: an int in [0, H / F), the steps a fragment's sync may overlap."""
    tau = int(text)
    if not 0 <= tau < H / FRAGMENTS:
        raise argparse.ArgumentTypeError(f"{tau}: must be in [0, {H / FRAGMENTS:g})")
    return tau


def _flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--gpu_step_s",
        type=float,
        default=0.0,
        help="seconds of one GPU step at batch 128, e.g. from gpu_check.py (0: the cited figure)",
    )
    parser.add_argument(
        "--params",
        type=int,
        default=0,
        help="the model's parameters (0: build paper_imagenet and count, about 10 s)",
    )
    parser.add_argument(
        "--tau", type=_tau, default=1, help="steps a streamed fragment's sync overlaps"
    )
    parser.add_argument(
        "--fetch_dtype",
        default="float32",
        choices=("float32", "bfloat16"),
        help="what fetches travel in (exp5 measured float32)",
    )
    parser.add_argument("--clients", type=int, default=4, help="the exp5 column of clients to use")


def main(argv: list[str] | None = None) -> None:
    common.main("scale_table", run, doc=__doc__, markdown=markdown, flags=_flags, argv=argv)


if __name__ == "__main__":
    main()
