"""(h) `pki-edge up --demo`: the commands it prints work as printed, and SIGTERM stops everything."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

from tests.integration.helpers import PKI_EDGE, Server, clean_env, require_openssl, start_up, wait_for

BANNER = "pki-edge demo is up. Try:"


def _run_printed(argv: list[str]) -> tuple[int, str]:
    exe = {"openssl": require_openssl(), "pki-edge": PKI_EDGE}[argv[0]]
    proc = subprocess.run(
        [exe, *argv[1:]], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=60, env=clean_env()
    )
    return proc.returncode, proc.stdout


def _until(argv: list[str], needle: str, timeout: float = 60) -> str:
    def probe() -> str | None:
        rc, out = _run_printed(argv)
        return out if rc == 0 and needle in out else None

    return wait_for(f"{needle!r} from {shlex.join(argv)}", probe, timeout=timeout, interval=0.2)


def test_demo(data_dir: Path, tmp_path: Path, servers: list[Server]) -> None:
    up = start_up(data_dir, tmp_path, "--demo", ready=False)
    servers.append(up)

    def instructions() -> list[str] | None:
        assert up.alive(), up.log()
        lines = up.log(tail=100000).splitlines()
        if BANNER not in lines:
            return None
        printed = lines[lines.index(BANNER) + 1 :]
        commands = [line for line in printed if line.startswith("  ")]
        return commands if any("then ask again" in c for c in commands) else None

    commands = [shlex.split(c, comments=True) for c in wait_for("the demo instructions", instructions, timeout=90)]
    assert [c[0] for c in commands] == ["openssl"] * 4 + ["pki-edge"], commands
    good, revoked, by_serial, unknown, revoke = commands
    assert f"http://127.0.0.1:{up.port}/ocsp" in good

    out = _until(good, ": good")
    assert "Response verify OK" in out
    out = _until(revoked, ": revoked")
    assert "Response verify OK" in out
    assert "Reason: keyCompromise" in out
    out = _until(by_serial, "0x1003: good")
    assert "Response verify OK" in out
    _, out = _run_printed(unknown)
    assert "Responder Error: unauthorized (6)" in out
    rc, out = _run_printed(revoke)
    assert rc == 0, out
    out = _until(good, ": revoked", timeout=10)
    assert "Reason: keyCompromise" in out

    children = up.children()
    assert len(children) == 2, children
    up.stop_clean()
    for pid in children:
        assert not Path(f"/proc/{pid}").exists(), f"child {pid} outlived `up`"
