"""Reading CPU time and memory from /proc."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from bench import procstat

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="Linux /proc needed")


def test_parse_stat_with_awkward_command_name():
    line = "4242 (a (b) c) S 17 4242 4242 0 -1 4194560 100 0 0 0 250 75 3 4 20 0 1 0 123 456 78 1 2 3"
    st = procstat.parse_stat(line)
    assert (st.pid, st.ppid, st.utime, st.stime, st.cutime, st.cstime) == (4242, 17, 250, 75, 3, 4)


def _burn(seconds: float) -> None:
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


def test_own_cpu_matches_os_times():
    _burn(0.05)
    times = os.times()
    mine = procstat.self_cpu_seconds()
    assert mine == pytest.approx(times.user + times.system, abs=0.05)


def test_tree_counts_children_alive_and_reaped():
    code = "import time\nend = time.process_time() + 0.3\nwhile time.process_time() < end: pass\ntime.sleep(30)"
    child = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline = time.monotonic() + 20
        while (
            procstat.read_stat(child.pid) is None
            or (
                procstat.read_stat(child.pid).utime + procstat.read_stat(child.pid).stime  # type: ignore[union-attr]
            )
            < 0.25 * procstat.CLOCK_TICKS
        ):
            assert time.monotonic() < deadline, "child never used its CPU"
            time.sleep(0.05)
        assert child.pid in procstat.descendants(os.getpid())
        own = procstat.self_cpu_seconds()
        tree = procstat.tree_cpu_seconds(os.getpid())
        assert tree >= own + 0.25
    finally:
        child.kill()
        child.wait()
    # Reaped: its time now shows in our cutime, still counted once by the tree.
    assert procstat.tree_cpu_seconds(os.getpid()) >= procstat.self_cpu_seconds() + 0.25


def test_memory_of_self():
    mem = procstat.memory_kb(os.getpid())
    assert mem["VmRSS"] > 0
    assert {"RssAnon", "RssFile"} <= set(mem)
    assert procstat.memory_kb(2**22 + 12345) == {}  # no such process


def test_gone_process_reads_none():
    assert procstat.read_stat(2**22 + 12345) is None
    assert procstat.tree_cpu_seconds(2**22 + 12345) == 0


def test_split_separates_user_and_system_time_of_a_fake_tree(tmp_path):
    # /proc/PID/stat lines: root 10 (utime 100, stime 20, reaped children 7 + 3) and child 11 (50 + 5).
    for pid, ppid, times in ((10, 1, "100 20 7 3"), (11, 10, "50 5 0 0"), (12, 1, "999 999 0 0")):
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "stat").write_text(f"{pid} (x) S {ppid} " + "0 " * 9 + times + " 0 0\n")
    user, system = procstat.tree_cpu_split(10, tmp_path)
    assert (user, system) == ((100 + 7 + 50) / procstat.CLOCK_TICKS, (20 + 3 + 5) / procstat.CLOCK_TICKS)
    assert procstat.tree_cpu_seconds(10, tmp_path) == user + system


STAT = """cpu  4778503 86044 1196561 6021030 208917 0 476892 93904 0 0
cpu0 2389251 43022 598280 3010515 104458 0 238446 46952 0 0
cpu1 2389252 43022 598281 3010515 104459 0 238446 46953 0 0
intr 1 2 3
"""


def test_parse_steal_reads_the_eighth_number_of_that_cpu():
    assert procstat.parse_steal(STAT, 0) == 46952
    assert procstat.parse_steal(STAT, 1) == 46953
    assert procstat.parse_steal(STAT, 2) is None
    assert procstat.parse_steal("cpu0 1 2 3 4 5 6 7\n", 0) is None  # a kernel older than steal counting


def test_steal_of_this_machine_is_seconds_or_none(tmp_path):
    steal = procstat.steal_seconds(0)
    assert steal is None or steal >= 0
    (tmp_path / "stat").write_text(STAT)
    assert procstat.steal_seconds(1, tmp_path) == 46953 / procstat.CLOCK_TICKS
    assert procstat.steal_seconds(0, tmp_path / "missing") is None
