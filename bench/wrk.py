"""Running wrk and reading its output.

wrk runs with one thread pinned to the load-generator core (``taskset -c 1 wrk -t1 -cN``), keep-alive
(its default), and a Lua script from ``bench/lua`` that replays a request mix. Its text output
(``--latency``) is parsed, and the ``@@`` lines the scripts print in ``done()`` add exact counts,
bytes and more percentiles (p99.9) when present.
"""

from __future__ import annotations

import re
import resource
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

LUA_DIR = Path(__file__).resolve().parent / "lua"
_UNITS_US = {"us": 1.0, "ms": 1000.0, "s": 1_000_000.0, "m": 60_000_000.0}
_SIZE = {"B": 1, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30, "TB": 1 << 40}
PERCENTILES = ("p50", "p75", "p90", "p99", "p99.9")


@dataclass
class WrkResult:
    requests: int = 0
    duration_s: float = 0.0
    rps: float = 0.0
    bytes: int = 0
    errors: dict[str, int] = field(default_factory=dict)  # connect, read, write, timeout, status (non-2xx/3xx)
    latency_us: dict[str, float] = field(default_factory=dict)  # p50 ... p99.9, mean, stdev, max
    client_cpu_s: float = 0.0

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _duration_us(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    if not match:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(match.group(1)) * _UNITS_US[match.group(2)]


def _size_bytes(text: str) -> int:
    match = re.fullmatch(r"([\d.]+)(B|KB|MB|GB|TB)", text.strip())
    if not match:
        raise ValueError(f"not a wrk size: {text!r}")
    return int(float(match.group(1)) * _SIZE[match.group(2)])


def parse(text: str) -> WrkResult:
    """Parse ``wrk --latency`` output, with or without the ``@@`` lines of bench/lua scripts."""
    result = WrkResult()
    errors = {"connect": 0, "read": 0, "write": 0, "timeout": 0, "status": 0}
    in_distribution = False
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("Latency Distribution"):
            in_distribution = True
            continue
        if in_distribution:
            match = re.fullmatch(r"([\d.]+)%\s+(\S+)", line)
            if match:
                p = match.group(1)
                key = "p" + (p.rstrip("0").rstrip(".") if "." in p else p)
                result.latency_us.setdefault(key, _duration_us(match.group(2)))
                continue
            in_distribution = False
        if line.startswith("Latency") and not line.startswith("Latency Distribution"):
            parts = line.split()
            if len(parts) >= 4:
                result.latency_us.setdefault("mean", _duration_us(parts[1]))
                result.latency_us.setdefault("stdev", _duration_us(parts[2]))
                result.latency_us.setdefault("max", _duration_us(parts[3]))
        elif match := re.match(r"(\d+) requests in ([\d.]+\w+), ([\d.]+\w+) read", line):
            result.requests = int(match.group(1))
            result.duration_s = _duration_us(match.group(2)) / 1e6
            result.bytes = _size_bytes(match.group(3))
        elif line.startswith("Socket errors:"):
            for name, value in re.findall(r"(connect|read|write|timeout) (\d+)", line):
                errors[name] = int(value)
        elif line.startswith("Non-2xx or 3xx responses:"):
            errors["status"] = int(line.split(":")[1])
        elif line.startswith("Requests/sec:"):
            result.rps = float(line.split(":")[1])
        elif line.startswith("@@ summary"):
            values = dict(kv.split("=") for kv in line.split()[2:])
            result.requests = int(values["requests"])
            result.duration_s = int(values["duration_us"]) / 1e6
            result.bytes = int(values["bytes"])
            for name in errors:
                errors[name] = int(values[name])
        elif line.startswith("@@ latency_us"):
            for kv in line.split()[2:]:
                name, value = kv.split("=")
                if name != "min":
                    result.latency_us[name] = float(value)
    result.errors = errors
    if result.duration_s and result.requests:
        result.rps = result.requests / result.duration_s
    return result


def command(
    url: str,
    mix_file: Path,
    *,
    connections: int,
    duration_s: float,
    cpu: int | None,
    delay_ms: int | None = None,
    timeout_s: float = 5.0,
    headers_file: Path | None = None,
) -> list[str]:
    """The wrk command line: one thread, ``connections`` keep-alive connections, a mix replayed by Lua;
    with ``headers_file`` (``reqset.write_headers``) every request carries its header lines too."""
    script = LUA_DIR / ("paced.lua" if delay_ms is not None else "mix.lua")
    cmd = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(duration_s))}s",
        f"--timeout={max(1, round(timeout_s))}s",
        "--latency",
        "-s",
        str(script),
        url,
        "--",
        str(mix_file),
    ]
    if delay_ms is not None:
        cmd.append(str(delay_ms))
    if headers_file is not None:
        cmd = ["env", f"BENCH_HEADERS={headers_file}", *cmd]
    return (["taskset", "-c", str(cpu)] if cpu is not None else []) + cmd


def run(cmd: list[str], duration_s: float) -> tuple[WrkResult, str]:
    """Run wrk (bounded: killed after twice its duration plus 30 s); returns the result and its output."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=2 * duration_s + 30)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr.strip()[-1000:]}")
    result = parse(proc.stdout)
    result.client_cpu_s = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return result, proc.stdout + proc.stderr
