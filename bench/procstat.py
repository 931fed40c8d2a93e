"""CPU time and memory of a server's process tree, read from /proc (Linux).

A server is measured as its root process and every live descendant: utime + stime of each live
process, plus cutime + cstime (time of descendants that already exited and were reaped), so a
worker that exits mid-run is still counted exactly once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PROC = Path("/proc")


@dataclass(frozen=True)
class ProcStat:
    pid: int
    ppid: int
    utime: int  # clock ticks
    stime: int
    cutime: int
    cstime: int


def parse_stat(text: str) -> ProcStat:
    """One /proc/PID/stat line. The command name (field 2) may hold spaces and parentheses."""
    pid_part, _, rest = text.partition(" (")
    fields = rest.rsplit(") ", 1)[1].split()
    # fields[0] is field 3 (state); utime is field 14, so fields[11].
    return ProcStat(
        pid=int(pid_part),
        ppid=int(fields[1]),
        utime=int(fields[11]),
        stime=int(fields[12]),
        cutime=int(fields[13]),
        cstime=int(fields[14]),
    )


def read_stat(pid: int, proc: Path = PROC) -> ProcStat | None:
    try:
        return parse_stat((proc / str(pid) / "stat").read_text())
    except (OSError, ValueError, IndexError):
        return None  # gone, or not ours to read


def all_stats(proc: Path = PROC) -> dict[int, ProcStat]:
    stats = {}
    for entry in proc.iterdir():
        if entry.name.isdigit():
            st = read_stat(int(entry.name), proc)
            if st is not None:
                stats[st.pid] = st
    return stats


def tree(root: int, stats: dict[int, ProcStat]) -> list[ProcStat]:
    """``root`` and its live descendants (root first)."""
    if root not in stats:
        return []
    children: dict[int, list[int]] = {}
    for st in stats.values():
        children.setdefault(st.ppid, []).append(st.pid)
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(stats[pid])
        todo.extend(children.get(pid, ()))
    return out


def descendants(root: int, proc: Path = PROC) -> list[int]:
    return [st.pid for st in tree(root, all_stats(proc))[1:]]


def tree_cpu_split(root: int, proc: Path = PROC) -> tuple[float, float]:
    """(user, system) CPU seconds used so far by ``root`` and its descendants, reaped ones included."""
    stats = tree(root, all_stats(proc))
    user = sum(st.utime + st.cutime for st in stats)
    system = sum(st.stime + st.cstime for st in stats)
    return user / CLOCK_TICKS, system / CLOCK_TICKS


def tree_cpu_seconds(root: int, proc: Path = PROC) -> float:
    """CPU seconds (user + system) used so far by ``root`` and its descendants, reaped ones included."""
    return sum(tree_cpu_split(root, proc))


def self_cpu_seconds() -> float:
    """CPU seconds of this process (for tests: compare with os.times())."""
    st = read_stat(os.getpid())
    assert st is not None
    return (st.utime + st.stime) / CLOCK_TICKS


def parse_steal(text: str, cpu: int) -> int | None:
    """Steal ticks of one CPU from /proc/stat: time the hypervisor gave that virtual CPU to others.

    The eighth number of a ``cpuN`` line (proc(5)); None when the line or the field is missing.
    """
    name = f"cpu{cpu}"
    for line in text.splitlines():
        fields = line.split()
        if fields and fields[0] == name:
            return int(fields[8]) if len(fields) > 8 else None
    return None


def steal_seconds(cpu: int, proc: Path = PROC) -> float | None:
    """Steal time of ``cpu`` so far, in seconds (None where the kernel does not count it)."""
    try:
        ticks = parse_steal((proc / "stat").read_text(), cpu)
    except OSError:
        return None
    return ticks / CLOCK_TICKS if ticks is not None else None


def memory_kb(pid: int, proc: Path = PROC) -> dict[str, int]:
    """VmRSS, RssAnon, RssFile, RssShmem of one process in kB (empty if it is gone)."""
    wanted = ("VmRSS", "RssAnon", "RssFile", "RssShmem", "VmHWM")
    out: dict[str, int] = {}
    try:
        text = (proc / str(pid) / "status").read_text()
    except OSError:
        return out
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name in wanted:
            out[name] = int(value.split()[0])
    return out
