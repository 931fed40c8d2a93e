"""docker-compose.yml's command, run outside Docker (no engine on CI): the source read-only, pip
building a copy, `pki-edge up` exec'd so that docker's SIGTERM reaches it. Marked slow: pip installs
every dependency into a new venv."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.integration.helpers import clean_env, free_port, openssl, wait_for

REPO = Path(__file__).resolve().parents[2]


def _compose_command() -> list[str]:
    lines = [line.strip() for line in (REPO / "docker-compose.yml").read_text().splitlines()]
    (command,) = [line.removeprefix("command:").strip() for line in lines if line.startswith("command:")]
    return list(json.loads(command))  # a flow sequence: JSON is YAML too


def _tree(root: Path) -> dict[str, float]:
    return {str(path.relative_to(root)): path.lstat().st_mtime for path in root.rglob("*")}


@pytest.mark.slow
def test_the_compose_command_builds_from_a_read_only_source_and_drains_on_sigterm(tmp_path: Path) -> None:
    src = tmp_path / "src"
    subprocess.run(["git", "clone", "-q", str(REPO), str(src)], check=True, timeout=120)
    (src / ".venv").mkdir()  # a developer's venv beside the source is not copied
    (src / ".venv" / "big").write_bytes(b"x" * 1000)
    before = _tree(src)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    port = free_port()
    sh, dash_c, script = _compose_command()
    assert (sh, dash_c) == ("sh", "-c") and "exec pki-edge up" in script
    script = (
        script.replace("/tmp/pki-edge", str(tmp_path / "build"))
        .replace("/src", str(src))
        .replace("--host 0.0.0.0 --port 8080", f"--host 127.0.0.1 --port {port}")
    )
    data = tmp_path / "data"
    env = clean_env(PKI_EDGE_DATA=str(data), PATH=f"{venv / 'bin'}:{os.environ['PATH']}", PYTHONUNBUFFERED="1")
    log = (tmp_path / "compose.log").open("wb")
    proc = subprocess.Popen([sh, dash_c, script], env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
    try:

        def ready() -> bool:
            assert proc.poll() is None, (tmp_path / "compose.log").read_text()
            try:
                return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2, trust_env=False).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for("the service built and started", ready, timeout=600, interval=0.5)
        assert "pki-edge" in Path(f"/proc/{proc.pid}/cmdline").read_bytes().decode(errors="replace")  # exec'd
        demo = data / "demo"
        url = f"http://127.0.0.1:{port}/ocsp"
        ca, device = demo / "ca.pem", demo / "device-0001.pem"
        args = ("ocsp", "-issuer", ca, "-cert", device, "-url", url, "-CAfile", ca)
        wait_for("a good answer", lambda: ": good" in openssl(*args, check=False), timeout=30)
        proc.send_signal(signal.SIGTERM)  # what `docker compose down` sends to the container's process
        assert proc.wait(timeout=25) == 0, (tmp_path / "compose.log").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
    assert _tree(src) == before  # nothing written into the (read-only) source
    assert not (tmp_path / "build" / ".venv").exists() and (tmp_path / "build" / "pyproject.toml").exists()
    assert "Traceback" not in (tmp_path / "compose.log").read_text()
