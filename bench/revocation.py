"""Revocation propagation: from `pki-edge revoke` returning to the edge's first answer saying revoked.

The edge is kept busy by wrk (the GET mix, unpaced) while the signer (`pki-edge signer`, pinned to the
server core beside the edge) re-signs; after each revoke the runner POSTs the serial's request every
10 ms on a keep-alive connection until the answer says revoked (at most 10 s per serial).
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench import probe, report, wrk
from bench.dataset import CA_NAME, clean_env, pki_edge_bin
from bench.process import Proc

POLL_SECONDS = 0.010
GIVE_UP_SECONDS = 10.0


def measure(
    data: Path,
    work: Path,
    port: int,
    targets: Sequence[tuple[int, bytes]],
    load_mix: Path,
    *,
    server_cpu: int,
    load_cpu: int,
    connections: int,
    say: Callable[[str], None],
) -> dict[str, Any]:
    """``targets``: (serial, DER request) of good serials. Returns delays and the load figures."""
    signer = Proc(
        "signer", [pki_edge_bin(), "--data", str(data), "signer"], work / "signer.log", cpu=server_cpu, env=clean_env()
    )
    load: subprocess.Popen[str] | None = None
    delays: list[float] = []
    missed = 0
    try:
        # Started once it logs so (or has stayed up for 2 s, should the wording change).
        signer.wait_until(
            lambda: "running" in signer.log_tail(50) or time.monotonic() - signer.started_at > 2.0,
            timeout=30,
            interval=0.05,
        )
        budget = len(targets) * 2.0 + 20
        cmd = wrk.command(
            f"http://127.0.0.1:{port}/", load_mix, connections=connections, duration_s=budget, cpu=load_cpu
        )
        load = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        time.sleep(1.0)  # let the load settle
        client = probe.Client(port, timeout=5)
        for serial, der in targets:
            subprocess.run(
                [pki_edge_bin(), "--data", str(data), "revoke", CA_NAME, f"{serial:X}", "--reason", "keyCompromise"],
                check=True,
                capture_output=True,
                timeout=60,
                env=clean_env(),
            )
            returned = time.monotonic()
            while True:
                reply = client.request("POST", "/", der)
                status, _ = probe.cert_status(reply.body)
                now = time.monotonic()
                if status == "revoked":
                    delays.append(now - returned)
                    break
                if now - returned > GIVE_UP_SECONDS:
                    missed += 1
                    break
                time.sleep(POLL_SECONDS)
        client.close()
    finally:
        load_result = None
        if load is not None:
            load.send_signal(signal.SIGINT)  # wrk stops and prints its summary on SIGINT
            try:
                out, _ = load.communicate(timeout=10)
                load_result = wrk.parse(out) if out else None
            except subprocess.TimeoutExpired:
                load.kill()
                load.communicate(timeout=10)
        signer.stop()
    say(
        f"  {len(delays)} revocations: p50 {report.percentile(delays, 50) * 1000:.0f} ms, "
        f"p99 {report.percentile(delays, 99) * 1000:.0f} ms, max {max(delays) * 1000:.0f} ms, missed {missed}"
        if delays
        else f"  no revocation seen (missed {missed})"
    )
    return {
        "count": len(targets),
        "delays_s": delays,
        "missed": missed,
        "p50_s": report.percentile(delays, 50) if delays else None,
        "p99_s": report.percentile(delays, 99) if delays else None,
        "max_s": max(delays) if delays else None,
        "load": load_result.as_dict() if load_result else None,
        "load_rps": load_result.rps if load_result else 0.0,
    }
