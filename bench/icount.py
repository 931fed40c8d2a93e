"""Instructions per OCSP request through the fast lane, in process: a deterministic A/B of hot-path changes.

A small store signed by the signer code, the edge app, and the fast-lane protocol (``edge.fastlane``)
fed wrk-like requests through a fake transport: no sockets, so no system calls, and under valgrind the
count is the same from run to run where wall-clock figures on this machine drift by ±30 %. The figure
is the difference of two runs of different lengths (start-up cancels out) over the extra requests.

    python -m bench.icount get          # runs itself twice under valgrind, prints instructions/request
    python -m bench.icount post --variant fixed   # the protocol alone: every answer a fixed one
    python -m bench.icount get --variant floor    # bench/floor.py's protocol, for scale
    python -m bench.icount get --per-turn 10      # ten requests per event-loop turn, as under load
    python -m bench.icount get --store /tmp/ic    # one store (and CA key) for every run: A/B of commits
    python -m bench.icount get --cdn              # with the nine headers a CDN adds (wrk sends Host only)

A loop turn's end (the write batch's flush) is run by the feeder after every ``--per-turn`` requests
(default 1: the most a turn can cost a request); the timers ending the store's read snapshot and the
clock's reading after every ``--per-snapshot`` (default 100, fewer than they serve: a snapshot lasts
10 ms, about 250 requests at half of the edge's saturation on the benchmark's machine, and a reading a
second).

To compare two commits, run it in a worktree of each (``PYTHONPATH=WORKTREE``). Needs valgrind.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import datetime as dt
import gc
import logging
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import uvloop
from cryptography import x509
from uvicorn.config import Config as UvicornConfig
from uvicorn.server import ServerState

from bench import reqset
from bench.conftest import ocsp_request
from bench.floor import FloorProtocol
from contract.config import Config, StoreConfig
from edge.app import build_app
from edge.clock import WholeSecondClock
from edge.fastlane import OCSPHttpToolsProtocol, WriteBatch
from edge.later import End
from edge.metrics import CounterMetrics
from edge.source import LmdbSource
from signer.registry import create_ca
from signer.state import SignerStore
from tests.signed_store import add_devices, drain

SERIALS = 200
VARIANTS = ("whole", "fixed", "floor")


class FakeTransport:
    """What the protocols call on a transport; keeps what they write."""

    def __init__(self) -> None:
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name in ("peername", "sockname") else default

    def close(self) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


# What a CDN's cache miss carries besides Host (wrk sends Host alone), as request header lines.
CDN_HEADERS = "".join(f"{name}: {value}\r\n" for name, value in reqset.CDN_HEADERS).encode("ascii")


def wrk_requests(ca: x509.Certificate, method: str, extra_headers: bytes = b"") -> list[bytes]:
    """One request per serial as wrk sends it: GET percent-encoded, POST with the DER body."""
    requests = []
    host = b"Host: 127.0.0.1:40000\r\n" + extra_headers
    for serial in range(1, SERIALS + 1):
        der = ocsp_request(ca, serial)
        if method == "get":
            path = base64.b64encode(der).replace(b"/", b"%2F").replace(b"+", b"%2B").replace(b"=", b"%3D")
            requests.append(b"GET /" + path + b" HTTP/1.1\r\n" + host + b"\r\n")
        else:
            head = b"POST / HTTP/1.1\r\n" + host + b"Content-Type: application/ocsp-request\r\n"
            requests.append(head + b"Content-Length: %d\r\n\r\n" % len(der) + der)
    return requests


def feeder(
    data: Path, method: str, variant: str, per_turn: int = 1, cdn: bool = False, per_snapshot: int = 100
) -> tuple[Callable[[int], None], FakeTransport]:
    """A function feeding N requests, ``per_turn`` in each loop turn (its end writes the answers, as the
    event loop would), ``per_snapshot`` in each read snapshot and clock reading, and the transport."""
    config = Config(store=StoreConfig(map_size_mb=64))  # valgrind cannot map the default 64 GiB
    st = SignerStore(data, config)
    ca_file = data / "icount-ca.der"
    if not ca_file.exists():  # a store kept with --store is reused as it is
        now = dt.datetime.now(dt.UTC)
        issuer = create_ca(st, "icount", "ec-p256", 30, None, None, now)
        add_devices(st, issuer, range(1, SERIALS + 1), now)
        drain(st)
        ca_file.write_bytes(issuer.cert_der)
    ca = x509.load_der_x509_certificate(ca_file.read_bytes())
    requests = wrk_requests(ca, method, CDN_HEADERS if cdn else b"")
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    transport = FakeTransport()
    batch = WriteBatch.of(loop)  # flushed here, as the loop would at the end of a turn
    timed: list[End] = []  # what the loop's timers would end: run here every per_snapshot requests
    if variant == "floor":
        floor = FloorProtocol({}, batch)
        floor.connection_made(transport)  # type: ignore[arg-type]
        receive: Callable[[bytes], None] = floor.data_received
    else:
        source = LmdbSource(lambda: st.env, logging.getLogger("icount"), timed.append)
        source.open()
        clock = WholeSecondClock(lambda _, end: timed.append(end))
        app = build_app(source, config, clock, CounterMetrics(), logging.getLogger("icount"))
        if variant == "fixed":
            answer = app.ocsp.answer_post(ocsp_request(ca, 1))
            app.ocsp.answer_get = lambda *_: answer  # type: ignore[method-assign]
            app.ocsp.answer_post = lambda *_: answer  # type: ignore[method-assign]
        uvicorn_config = UvicornConfig(app=app, http=OCSPHttpToolsProtocol, proxy_headers=False, access_log=False)
        uvicorn_config.load()
        protocol = OCSPHttpToolsProtocol(config=uvicorn_config, server_state=ServerState(), app_state={}, _loop=loop)
        protocol.connection_made(transport)  # type: ignore[arg-type]
        receive = protocol.data_received

    # The set-up's objects out of every later collection: whether a full collection of them falls among
    # the counted requests depends on what came before (the floor counted 9.6k or 15.1k instructions).
    gc.collect()
    gc.freeze()

    def feed(count: int) -> None:
        for n in range(count):
            receive(requests[n % SERIALS])
            if (n + 1) % per_turn == 0:
                batch.flush()
            if (n + 1) % per_snapshot == 0:
                _run(timed)
        batch.flush()
        _run(timed)

    return feed, transport


def _run(ends: list[End]) -> None:
    for end in ends:
        end()
    ends.clear()


def count_instructions(
    method: str,
    variant: str,
    short: int,
    long: int,
    per_turn: int = 1,
    store: Path | None = None,
    cdn: bool = False,
    per_snapshot: int = 100,
) -> float:
    """Instructions per request: two runs under valgrind, the difference over the extra requests.

    Each run builds its own store, with a new CA key: the requests' base64, and so their escapes,
    differ from run to run (about 1 % of a GET). With ``store`` both runs, and any later ones, use
    the same store and requests: what an A/B of two commits wants.
    """
    if store is not None and not (store / "icount-ca.der").exists():
        with contextlib.redirect_stdout(sys.stderr):
            main([method, "--run", "1", "--store", str(store)])  # built once, outside valgrind
    totals = []
    for requests in (short, long):
        cmd = [
            "valgrind",
            "--tool=cachegrind",
            "--cache-sim=no",
            "--cachegrind-out-file=/dev/null",
            sys.executable,
            "-m",
            "bench.icount",
            method,
            "--variant",
            variant,
            "--per-turn",
            str(per_turn),
            "--per-snapshot",
            str(per_snapshot),
            "--run",
            str(requests),
            *(["--store", str(store)] if store is not None else []),
            *(["--cdn"] if cdn else []),
        ]
        repo = Path(__file__).resolve().parent.parent
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=repo).stderr
        found = re.search(r"I\s+refs:\s+([\d,]+)", out)
        if found is None:
            raise RuntimeError(f"no instruction count in valgrind's output:\n{out[-2000:]}")
        totals.append(int(found.group(1).replace(",", "")))
    return (totals[1] - totals[0]) / (long - short)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.icount", description=__doc__.split("\n")[0])
    parser.add_argument("method", choices=("get", "post"))
    parser.add_argument("--variant", choices=VARIANTS, default="whole")
    parser.add_argument("--per-turn", type=int, default=1, metavar="K", help="requests per event-loop turn (default 1)")
    parser.add_argument(
        "--per-snapshot",
        type=int,
        default=100,
        metavar="K",
        help="requests per read snapshot and clock reading (default 100)",
    )
    parser.add_argument("--run", type=int, metavar="N", help="feed N requests and exit (what valgrind runs)")
    parser.add_argument("--short", type=int, default=1000)
    parser.add_argument("--long", type=int, default=4000)
    parser.add_argument(
        "--store",
        type=Path,
        metavar="DIR",
        help="build the store here once and reuse it (the same requests in every run: for comparing commits)",
    )
    parser.add_argument("--cdn", action="store_true", help="requests with the nine headers a CDN adds (CDN_HEADERS)")
    args = parser.parse_args(argv)
    if args.run is not None:
        with contextlib.ExitStack() as stack:
            data = args.store or Path(stack.enter_context(tempfile.TemporaryDirectory()))
            data.mkdir(parents=True, exist_ok=True)
            feed, transport = feeder(data, args.method, args.variant, args.per_turn, args.cdn, args.per_snapshot)
            feed(args.run)
            if len(transport.written) != args.run:
                raise SystemExit(f"{len(transport.written)} answers for {args.run} requests")
        return
    store = args.store.resolve() if args.store else None
    per_request = count_instructions(
        args.method, args.variant, args.short, args.long, args.per_turn, store, args.cdn, args.per_snapshot
    )
    shape = ", as a CDN sends it" if args.cdn else ""
    per = f"{args.per_turn} per turn, {args.per_snapshot} per snapshot"
    print(f"{args.method} {args.variant}{shape}, {per}: {per_request:,.0f} instructions per request")


if __name__ == "__main__":
    main()
