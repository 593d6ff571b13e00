"""B5's profile: where the servers' and the clients' CPU goes, from a machine-wide ``perf record``.

Where ``perf`` is installed, one extra updates/s cell of each shard count
with ``PROFILE_CLIENTS`` clients runs under ``perf record -a`` (CPU-clock
samples, user and kernel); ``report`` sorts the samples by role (server,
client, others, idle), by thread and by shared object, and into
``CATEGORIES`` (memcpy, kernel socket copies, numpy arithmetic, finiteness
checks, the interpreter, gRPC core), and lists the servers' top functions.
"""

from __future__ import annotations

import collections
import re
import shutil
import subprocess
from collections.abc import Sequence

PROFILE_CLIENTS = 16
PROFILE_HZ = 499  # Prime, so sampling does not beat with periodic work.


def available() -> bool:
    """Whether ``perf`` is installed (else no profile cells run)."""
    return shutil.which("perf") is not None


def start(path: str) -> subprocess.Popen | None:
    """``perf record`` of the whole machine into ``path``; None without perf.

    Machine-wide rather than ``-p <pids>``: gRPC starts and ends threads all
    the time, and perf attached to a list of processes fails on threads that
    end while it attaches. Samples are sorted out by process afterwards.
    """
    perf = shutil.which("perf")
    if not perf:
        return None
    with open(path + ".log", "wb") as log:
        return subprocess.Popen(
            [perf, "record", "-a", "-F", str(PROFILE_HZ), "-o", path],
            stdout=log,
            stderr=subprocess.STDOUT,
        )


# What a sample of our processes was doing, by (symbol, shared object); first match wins.
CATEGORIES: tuple[tuple[str, str, str], ...] = (  # (category, symbol regex, dso regex)
    ("memcpy (libc)", r"^__mem(move|cpy)", r"libc"),
    ("kernel: socket copies", r"^_copy_(to|from)_iter|copy_user", r"kernel"),
    ("kernel: zeroing new pages", r"^clear_page", r"kernel"),
    ("kernel: other (scheduling, TCP, faults)", r"", r"kernel"),
    ("numpy: update arithmetic", r"^FLOAT_(multiply|add|subtract)", r"multiarray"),
    ("numpy: finiteness checks", r"^(FLOAT_isfinite|BOOL_logical_and)", r"multiarray"),
    ("numpy: other", r"", r"multiarray"),
    ("Python interpreter", r"", r"libpython"),
    ("gRPC core (cygrpc)", r"", r"cygrpc"),
    ("malloc and other libc", r"", r"libc"),
)


def _category(sym: str, dso: str) -> str:
    for name, sym_re, dso_re in CATEGORIES:
        if re.search(dso_re, dso) and re.search(sym_re, sym):
            return name
    return "other"


def _tid_to_pid(path: str) -> dict[int, int]:
    """Thread id -> process id of every thread in a perf.data (``--sort pid`` names threads)."""
    out = subprocess.run(
        ["perf", "script", "-i", path, "-F", "pid,tid"],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    mapping = {}
    for line in out.splitlines():
        pid, _, tid = line.strip().partition("/")
        if pid.isdigit() and tid.isdigit():
            mapping[int(tid)] = int(pid)
    return mapping


_REPORT_ARGS = ("--stdio", "--no-children", "-n", "-q", "-g", "none", "--sort", "pid,comm,dso,sym")


def _count(perf_report: str, role: dict[int, str], process_of: dict[int, int]) -> dict:
    """Samples of ``perf report``'s tab-separated rows, by role and thread, shared object, ...

    Returns:
      {"total": all samples, "by_thread" and "by_dso": Counters keyed
      "<role> / <name>", "syms" and "categories": per role ("server",
      "client"), Counters of "<symbol> (<dso>)" and of ``CATEGORIES``}.
    """
    counts = {
        "total": 0,
        "by_thread": collections.Counter(),
        "by_dso": collections.Counter(),
        "syms": {"server": collections.Counter(), "client": collections.Counter()},
        "categories": {"server": collections.Counter(), "client": collections.Counter()},
    }
    for line in perf_report.splitlines():
        fields = [f.strip() for f in line.split("\t")]
        if len(fields) != 6 or not fields[1].isdigit():
            continue
        samples = int(fields[1])
        tid = int(fields[2].split(":", 1)[0])
        # tid 0 is the idle task ("swapper"); other processes are other programs.
        who = "idle" if tid == 0 else role.get(process_of.get(tid, tid), "others")
        comm, dso, sym = fields[3], fields[4], re.sub(r"^\[[.k]\]\s*", "", fields[5])
        counts["total"] += samples
        counts["by_thread"][f"{who} / {comm}"] += samples
        counts["by_dso"][f"{who} / {dso}"] += samples
        if who in counts["syms"]:
            counts["syms"][who][f"{sym} ({dso})"] += samples
            counts["categories"][who][_category(sym, dso)] += samples
    return counts


def report(path: str, server_pids: Sequence[int], client_pids: Sequence[int]) -> dict:
    """Samples by role and thread name, by role and shared object, and servers' top functions."""
    perf = subprocess.run(
        ["perf", "report", "-i", path, *_REPORT_ARGS, "-t", "\t"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    role = {p: "server" for p in server_pids} | {p: "client" for p in client_pids}
    counts = _count(perf.stdout, role, _tid_to_pid(path))
    total = counts["total"]
    if not total:
        with open(path + ".log", errors="replace") as f:
            record_log = f.read()[-500:]
        return {
            "error": f"no samples parsed; perf record said: {record_log!r}; perf report "
            f"(exit {perf.returncode}) said: {perf.stderr[-500:]!r}"
        }

    def shares(counter: dict[str, int], n: int) -> list[list]:
        return [[k, v / total] for k, v in sorted(counter.items(), key=lambda kv: -kv[1])[:n]]

    def top(counter: dict[str, int], n: int) -> list[list]:
        n_role = sum(counter.values()) or 1
        return [[k, v / n_role] for k, v in sorted(counter.items(), key=lambda kv: -kv[1])[:n]]

    syms, categories = counts["syms"], counts["categories"]
    return {
        "samples": total,
        "by_thread": shares(counts["by_thread"], 12),
        "by_dso": shares(counts["by_dso"], 16),
        "server_share": sum(syms["server"].values()) / total,
        "client_share": sum(syms["client"].values()) / total,
        # Shares of that role's samples.
        "server_top_functions": top(syms["server"], 15),
        "client_top_functions": top(syms["client"], 8),
        "server_categories": top(categories["server"], len(CATEGORIES) + 1),
        "client_categories": top(categories["client"], len(CATEGORIES) + 1),
    }


def markdown(profiles: list[dict]) -> list[str]:
    """The report's lines for its profile cells: categories, threads, top functions."""
    lines: list[str] = []
    for p in profiles:
        prof = p.get("profile", {})
        lines += [
            "",
            f"### Profile: {p['clients']} clients, {p['shards']} shard(s), `perf record -a -F "
            f"{PROFILE_HZ}` ({p['updates_per_s']:.1f} updates/s under perf)",
            "",
        ]
        if "error" in prof:
            lines.append(f"perf failed: {prof['error']}")
            continue
        lines += _profile_tables(prof)
    return lines


def _profile_tables(prof: dict) -> list[str]:
    lines = [
        f"{prof['samples']:,} samples of both cores over the window: servers "
        f"{prof['server_share']:.0%}, clients {prof['client_share']:.0%}, the rest other "
        "programs and idle. What the servers' and the clients' samples were doing (share "
        "of that role's samples):",
        "",
        "| category | servers | clients |",
        "|---|---:|---:|",
    ]
    server_cat = dict(prof["server_categories"])
    client_cat = dict(prof["client_categories"])
    for name in [c[0] for c in CATEGORIES] + ["other"]:
        if name in server_cat or name in client_cat:
            lines.append(
                f"| {name} | {server_cat.get(name, 0):.1%} | {client_cat.get(name, 0):.1%} |"
            )
    lines += [
        "",
        "By role and thread name, share of all samples: "
        + ", ".join(f"{k} {v:.1%}" for k, v in prof["by_thread"] if v >= 0.005)
        + ".",
        "",
        "Servers' top functions, share of the servers' samples:",
        "",
        "| function (shared object) | share |",
        "|---|---:|",
    ]
    lines += [f"| `{k}` | {v:.1%} |" for k, v in prof["server_top_functions"]]
    return lines
