"""What B5 reads from /proc: CPU seconds of processes, threads and the machine; resident memory.

Linux only, like the benchmark: ``/proc/<pid>/stat`` and ``/proc/stat`` for
CPU time, ``/proc/<pid>/status`` for VmRSS and VmHWM, and
``/proc/<pid>/clear_refs`` to reset a process's peak.
"""

from __future__ import annotations

import os

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int | str, task: str | None = None) -> float:
    """utime + stime of a process (or one of its threads), in seconds."""
    path = f"/proc/{pid}/task/{task}/stat" if task else f"/proc/{pid}/stat"
    with open(path) as f:
        fields = f.read().rsplit(")", 1)[1].split()  # After "(comm)": state is field 0.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def threads_cpu_s(pid: int) -> dict[str, tuple[str, float]]:
    """{tid: (thread name, CPU seconds)} of a live process's threads."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                name = f.read().strip()
            out[tid] = (name, cpu_s(pid, tid))
        except (FileNotFoundError, ProcessLookupError):
            pass  # The thread ended between listdir and open.
    return out


def machine_cpu_s() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot (all cores)."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = (values + [0] * 8)[:8]
    busy = user + nice + system + irq + softirq + steal  # guest time is inside user.
    return busy / CLK_TCK, (busy + idle + iowait) / CLK_TCK


def memory_bytes(pid: int, field: str) -> int:
    """A ``/proc/<pid>/status`` memory field (VmRSS, VmHWM, ...), in bytes (it is in kB)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} for pid {pid}")


def rss(pid: int) -> int:
    """Resident memory of a live process now, in bytes."""
    return memory_bytes(pid, "VmRSS")


def hwm(pid: int) -> int:
    """Peak resident memory of a live process since it started or ``reset_peak``, in bytes."""
    return memory_bytes(pid, "VmHWM")


def reset_peak(pid: int) -> bool:
    """Resets a process's VmHWM to its current RSS; False where the kernel refuses."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False
