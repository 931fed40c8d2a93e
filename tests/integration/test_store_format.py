"""A store laid out by a later release (``contract.store.FORMAT``), met by this one: a roll-back after an
upgrade, a backup restored to an older host. Nothing reads it: the CLI and the signer stop with the
reason, the edge answers tryLater (and /readyz says why) until a store of its format is back."""

from __future__ import annotations

import subprocess
from pathlib import Path

import httpx

from contract import store
from tests.integration import helpers
from tests.integration.conftest import Run
from tests.integration.helpers import Server, free_port, wait_for


def _set_format(data_dir: Path, value: int) -> None:
    """What a later release's signer would record (another process than the edge's, as it would be)."""
    env = store.open_env(data_dir, readonly=False, map_size=1 << 30)
    try:
        with env.begin(db=env.open_db(store.DB_META, create=False), write=True) as txn:
            txn.put(store.META_FORMAT, store.pack_u64(value))
    finally:
        env.close()


def _ocsp(base_url: str, ca: Path, leaf: Path) -> str:
    """openssl ocsp's verdict line about the leaf, or "503" (tryLater comes with 503: openssl reads no body)."""
    proc = subprocess.run(
        [helpers.require_openssl(), "ocsp", "-issuer", ca, "-cert", leaf, "-CAfile", ca, "-url", base_url],
        capture_output=True,
        text=True,
        timeout=30,
    )
    out = proc.stdout + proc.stderr
    if "code=503, reason=Service Unavailable" in out:
        return "503"
    return next((line.strip() for line in out.splitlines() if line.startswith(f"{leaf}:")), out)


def test_a_store_of_a_later_format_is_refused_by_the_cli_the_signer_and_the_edge(
    run: Run, data_dir: Path, tmp_path: Path, servers: list[Server]
) -> None:
    run("ca", "create", "root")
    (tmp_path / "ca.pem").write_text(run("ca", "show", "root").stdout)
    leaf = Path(run("issue", "root", "--cn", "fmt.example", "--out", tmp_path).stdout.splitlines()[0])
    port = free_port()
    edge = Server("edge", data_dir, ["edge", "--port", str(port)], tmp_path / "edge.log", port=port)
    servers.append(edge)
    signer = Server("signer", data_dir, ["signer"], tmp_path / "signer.log")
    servers.append(signer)
    edge.wait_ready()
    base, ca = edge.base_url, tmp_path / "ca.pem"
    wait_for("a good answer", lambda: _ocsp(base, ca, leaf) == f"{leaf}: good" or None, timeout=30)
    signer.stop_clean()

    later = store.FORMAT + 1
    _set_format(data_dir, later)
    refusal = (
        f"the store in {data_dir}/store has format {later}, written by a later pki-edge release; this one reads"
        f" format {store.FORMAT}: run that release (or restore a backup this one made)"
    )
    # The running edge stops reading it within a second: tryLater, and /readyz says why.
    wait_for("tryLater", lambda: _ocsp(base, ca, leaf) == "503" or None, timeout=10)
    der = helpers.ocsp_request_der(helpers.load_cert(leaf), helpers.load_cert(ca))
    assert helpers.post_ocsp(base, der).content == b"\x30\x03\x0a\x01\x03"  # tryLater
    r = httpx.get(base + "/readyz", timeout=5, trust_env=False)
    assert (r.status_code, r.json()) == (503, {"ready": False, "reason": refusal})
    assert edge.log().count(f"store refused: {refusal}; answering tryLater") == 1

    # Every command, and a signer, stop with the reason, and leave the store as it is.
    up = ["up", "--port", str(free_port())]
    for args in (["status"], ["ca", "list"], ["revoke", "root", "01"], ["signer"], up):
        proc = run(*args, check=False)
        assert (proc.returncode, proc.stderr) == (2, f"pki-edge: error: {refusal}\n"), (args, proc)

    # This release's format again (the roll-back's backup restored): served within a second.
    _set_format(data_dir, store.FORMAT)
    edge.wait_ready(timeout=10)
    assert "the store now in the data directory has this release's format: serving it" in edge.log()
    assert _ocsp(base, ca, leaf) == f"{leaf}: good"  # signed for days: no signer needed to serve it
    assert edge.stop() in (0, -15)  # one worker: uvicorn ends by the signal it drained for
    assert "Traceback" not in edge.log(tail=1_000_000)
