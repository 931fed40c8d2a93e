"""Parsing wrk's output (captured samples) and building its command line."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import wrk
from tests.bench import wrk_samples


def test_plain_latency_output():
    result = wrk.parse(wrk_samples.PLAIN)
    assert result.requests == 15754
    assert result.duration_s == pytest.approx(1.10)
    assert result.rps == pytest.approx(15754 / 1.10)
    assert result.bytes == int(9.90 * (1 << 20))
    assert result.latency_us["p50"] == pytest.approx(482.0)
    assert result.latency_us["p90"] == pytest.approx(920.0)
    assert result.latency_us["p99"] == pytest.approx(2070.0)
    assert result.latency_us["mean"] == pytest.approx(577.55)
    assert result.latency_us["max"] == pytest.approx(4650.0)
    assert result.error_count == 0


def test_lua_lines_take_precedence():
    result = wrk.parse(wrk_samples.WITH_LUA)
    assert result.requests == 6230
    assert result.duration_s == pytest.approx(1.004505)
    assert result.bytes == 4019200
    assert result.latency_us["p99"] == 7916
    assert result.latency_us["p99.9"] == 8077
    assert result.latency_us["max"] == 8096
    assert "min" not in result.latency_us
    assert result.rps == pytest.approx(6230 / 1.004505)


def test_errors_and_non_2xx():
    result = wrk.parse(wrk_samples.ERRORS)
    assert result.errors == {"connect": 0, "read": 12, "write": 0, "timeout": 3, "status": 7900}
    assert result.error_count == 7915


def test_empty_run_parses_to_zero():
    text = "Running 1s test @ http://127.0.0.1:1/\n  0 requests in 1.00s, 0.00B read\nRequests/sec:      0.00\n"
    result = wrk.parse(text)
    assert result.requests == 0
    assert result.rps == 0


def test_units():
    assert wrk._duration_us("2.5s") == 2_500_000
    assert wrk._duration_us("1.5m") == 90_000_000
    assert wrk._size_bytes("1.00KB") == 1024
    with pytest.raises(ValueError):
        wrk._duration_us("fast")


def test_command_pins_and_paces(tmp_path: Path):
    mix = tmp_path / "mix.txt"
    cmd = wrk.command("http://127.0.0.1:8080/", mix, connections=32, duration_s=5, cpu=1)
    assert cmd[:3] == ["taskset", "-c", "1"]
    assert "-t1" in cmd and "-c32" in cmd and "-d5s" in cmd and "--latency" in cmd
    assert cmd[cmd.index("-s") + 1].endswith("mix.lua")
    assert cmd[-2:] == ["--", str(mix)]
    paced = wrk.command("http://127.0.0.1:8080/", mix, connections=10, duration_s=5, cpu=None, delay_ms=10)
    assert paced[0] == "wrk"
    assert paced[paced.index("-s") + 1].endswith("paced.lua")
    assert paced[-3:] == ["--", str(mix), "10"]
    for script in ("mix.lua", "paced.lua"):
        assert (wrk.LUA_DIR / script).is_file()
