"""Parsing wrk's output (captured samples), building its command line, and the Lua scripts under a real wrk."""

from __future__ import annotations

import http.server
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench import reqset, wrk
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
    headers = tmp_path / "headers.txt"
    with_headers = wrk.command("http://127.0.0.1:8080/", mix, connections=32, duration_s=5, cpu=1, headers_file=headers)
    assert with_headers[:5] == ["taskset", "-c", "1", "env", f"BENCH_HEADERS={headers}"]
    assert with_headers[5:] == cmd[3:]
    paced = wrk.command("http://127.0.0.1:8080/", mix, connections=10, duration_s=5, cpu=None, delay_ms=10)
    assert paced[0] == "wrk"
    assert paced[paced.index("-s") + 1].endswith("paced.lua")
    assert paced[-3:] == ["--", str(mix), "10"]
    for script in ("mix.lua", "paced.lua"):
        assert (wrk.LUA_DIR / script).is_file()


# ---------------------------------------------------------------------------- the Lua scripts, under wrk

Seen = list[tuple[str, str, dict[str, str], bytes]]  # method, path, headers (lower-case names), body


@pytest.fixture
def recorder() -> Iterator[tuple[str, Seen]]:
    """A keep-alive HTTP server on 127.0.0.1 answering 200 to anything, keeping what it was sent."""
    seen: Seen = []

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _record(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            seen.append((self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body))
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        do_GET = do_POST = _record

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", seen
    finally:
        server.shutdown()
        server.server_close()


def run_wrk(url: str, mix: Path, headers_file: Path | None, delay_ms: int | None = None) -> wrk.WrkResult:
    assert shutil.which("wrk"), "wrk is needed (`make tools` installs it)"
    cmd = wrk.command(url, mix, connections=2, duration_s=1, cpu=None, delay_ms=delay_ms, headers_file=headers_file)
    return wrk.run(cmd, 1)[0]


@pytest.mark.parametrize("delay_ms", [None, 1], ids=["mix.lua", "paced.lua"])
@pytest.mark.parametrize("extra", [False, True], ids=["host-alone", "cdn-headers"])
def test_the_scripts_replay_the_mix_with_the_headers_asked_for(
    recorder: tuple[str, Seen], tmp_path: Path, extra: bool, delay_ms: int | None
) -> None:
    url, seen = recorder
    lines = ["GET /MEIwQDA%2BMDwwOjAJBgUrDgMCGgUA", "POST / 3003020101", "GET /MEI/wQD"]
    mix = reqset.write_lines(tmp_path / "mix.txt", lines)
    headers_file = reqset.write_headers(tmp_path / "headers.txt", reqset.CDN_HEADERS) if extra else None
    result = run_wrk(url, mix, headers_file, delay_ms)
    assert result.requests >= 3 and result.error_count == 0, result
    assert {(method, path) for method, path, _, _ in seen} == {
        ("GET", lines[0][4:]),
        ("POST", "/"),
        ("GET", "/MEI/wQD"),
    }
    cdn = {name.lower(): value for name, value in reqset.CDN_HEADERS}
    for method, _, headers, body in seen:
        assert headers.pop("host") == url.removeprefix("http://").rstrip("/")
        if method == "POST":
            assert body == bytes.fromhex("3003020101")
            assert headers.pop("content-type") == "application/ocsp-request"
            assert headers.pop("content-length") == "5"
        else:
            assert body == b""
        assert headers == (cdn if extra else {})
