"""`pki-edge backup` while `up` runs and revokes, then the backup restored and served (openssl ocsp)."""

from __future__ import annotations

import threading
from pathlib import Path

from tests.integration import helpers
from tests.integration.conftest import Run
from tests.integration.helpers import Server, openssl, wait_for


def _status(base_url: str, ca: Path, leaf: Path) -> str:
    text = openssl("ocsp", "-issuer", ca, "-cert", leaf, "-url", base_url, "-CAfile", ca, check=False)
    return text.split(f"{leaf}: ", 1)[1].split()[0] if f"{leaf}: " in text else text


def test_a_backup_taken_while_the_signer_signs_restores_and_serves(
    run: Run, data_dir: Path, tmp_path: Path, servers: list[Server]
) -> None:
    run("ca", "create", "root")
    ca = tmp_path / "ca.pem"
    ca.write_text(run("ca", "show", "root").stdout)
    out = tmp_path / "out"
    leaves = [
        Path(run("issue", "root", "--cn", f"b{i}.example", "--out", out).stdout.splitlines()[0]) for i in range(3)
    ]
    serial = {leaf: openssl("x509", "-in", leaf, "-noout", "-serial").strip().split("=")[1] for leaf in leaves}
    up = helpers.start_up(data_dir, tmp_path)
    servers.append(up)
    helpers.wait_drained(data_dir)
    run("revoke", "root", serial[leaves[0]], "--reason", "keyCompromise")
    wait_for("the revocation served", lambda: _status(up.base_url, ca, leaves[0]) == "revoked", timeout=20)

    # The signer keeps committing while the backup is taken: a certificate imported by the thousand.
    index = tmp_path / "index.txt"
    index.write_text("".join(f"V\t491231235959Z\t\t{0x1000 + n:X}\tunknown\t/CN=bulk{n}\n" for n in range(20_000)))
    importing = threading.Thread(target=run, args=("import", "root", "--openssl-index", index))
    importing.start()
    backup = tmp_path / "backup"
    done = run("backup", "--out", backup)
    importing.join(timeout=120)
    assert done.stdout.startswith(f"backed up {data_dir} to {backup}: the store (") and done.stderr == ""
    run("revoke", "root", serial[leaves[1]])  # after the backup: not in it
    up.stop_clean()

    # One snapshot: the import's transactions (10,000 entries each) are in it whole or not at all.
    overview = helpers.pki_edge(backup, "status").stdout.splitlines()
    serials = int(next(line for line in overview if line.startswith("serials")).split()[1])
    assert (serials - 3) % 10_000 == 0, serials
    port = helpers.free_port()
    restored = Server("up", backup, ["up", "--port", str(port)], tmp_path / "restored.log", port=port)
    servers.append(restored)
    restored.wait_ready()
    states = {leaf: _status(restored.base_url, ca, leaf) for leaf in leaves}
    assert states == {leaves[0]: "revoked", leaves[1]: "good", leaves[2]: "good"}
    # The CA key came along: the restored signer issues, and signs what it issues.
    fresh = Path(
        helpers.pki_edge(backup, "issue", "root", "--cn", "after.example", "--out", tmp_path / "o2").stdout.split()[0]
    )
    wait_for("the new certificate served", lambda: _status(restored.base_url, ca, fresh) == "good", timeout=30)
    assert "Traceback" not in restored.log()
    restored.stop_clean()
