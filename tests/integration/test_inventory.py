"""Inventory semantics seen from outside: expiry grace, sticky revocation, intermediates, AIA URLs."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

from cryptography import x509
from cryptography.x509 import ocsp

from tests.integration.conftest import Run, Shared
from tests.integration.helpers import (
    UNAUTHORIZED,
    Server,
    clean_env,
    load_cert,
    ocsp_request_by_serial,
    openssl,
    pki_edge,
    post_ocsp,
    start_up,
    wait_drained,
    wait_for,
    wait_ocsp_status,
)


def _utctime(when: dt.datetime) -> str:
    return when.strftime("%y%m%d%H%M%SZ")


def test_expiry_grace_and_sticky_revocation(shared: Shared) -> None:
    shared.run("ca", "create", "exp")
    ca_pem = shared.work / "exp.pem"
    ca_pem.write_text(shared.run("ca", "show", "exp").stdout)
    ca = load_cert(ca_pem)
    now = dt.datetime.now(dt.UTC)
    rows = [
        ("V", now + dt.timedelta(hours=2), "", "0A"),
        ("V", now - dt.timedelta(hours=2), "", "0B"),  # expired, inside the 24 h grace
        ("E", now - dt.timedelta(days=3), "", "0C"),  # expired past the grace
        ("R", now + dt.timedelta(days=30), f"{_utctime(now - dt.timedelta(days=1))},superseded", "0D"),
    ]
    index = shared.work / "exp-index.txt"
    index.write_text("".join(f"{f}\t{_utctime(t)}\t{r}\t{s}\tunknown\t/CN={s}\n" for f, t, r, s in rows))
    imported = shared.run("import", "exp", "--openssl-index", index, "--progress")
    assert "exp: added 4, updated 0, unchanged 0" in imported.stdout
    assert imported.stderr.rstrip().endswith("importing into exp: 4 entries written")

    wait_ocsp_status(shared.base_url, ocsp_request_by_serial(ca, 0x0D), "revoked")
    wait_drained(shared.data_dir)
    wait_ocsp_status(shared.base_url, ocsp_request_by_serial(ca, 0x0A), "good")
    wait_ocsp_status(shared.base_url, ocsp_request_by_serial(ca, 0x0B), "good", timeout=15)
    r = post_ocsp(shared.base_url, ocsp_request_by_serial(ca, 0x0C))
    assert (r.status_code, r.content) == (200, UNAUTHORIZED)
    # `status` says what the edge does with them (the audit found an expired entry shown as plainly good).
    assert "(expired: served until " in shared.run("status", "exp", "0B").stdout
    past = shared.run("status", "exp", "0C").stdout
    assert "(expired, past signer.expired_grace_hours: no longer served, the edge answers unauthorized)" in past
    assert "(expired" not in shared.run("status", "exp", "0A").stdout
    revoked = ocsp.load_der_ocsp_response(post_ocsp(shared.base_url, ocsp_request_by_serial(ca, 0x0D)).content)
    assert revoked.revocation_reason == x509.ReasonFlags.superseded

    # Revocation is sticky: re-importing the index (which says V) does not make 0A good again.
    shared.run("revoke", "exp", "serial=0a", "--reason", "keyCompromise")
    wait_ocsp_status(shared.base_url, ocsp_request_by_serial(ca, 0x0A), "revoked")
    assert "exp: added 0, updated 0, unchanged 4" in shared.run("import", "exp", "--openssl-index", index).stdout
    wait_drained(shared.data_dir)
    wait_ocsp_status(shared.base_url, ocsp_request_by_serial(ca, 0x0A), "revoked", timeout=15)
    assert "revoked at" in shared.run("status", "exp", "0A").stdout

    # A revocation is never moved: revoking again changes nothing (exit 0), another reason or time is
    # refused, and only keyCompromise may replace the reason (the time kept), re-signed at once.
    again = shared.run("revoke", "exp", "0A")
    assert again.stdout.startswith("already revoked: A of exp at ") and "(reason keyCompromise)" in again.stdout
    refused = shared.run("revoke", "exp", "0D", "--reason", "unspecified", check=False)
    assert refused.returncode == 2 and "a revocation is not changed" in refused.stderr
    assert "Traceback" not in refused.stderr
    when = revoked.revocation_time_utc
    changed = shared.run("revoke", "exp", "0D", "--reason", "keyCompromise")
    assert changed.stdout.startswith("revocation reason changed: D of exp at ")
    deadline = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=15)
    while True:
        now_said = ocsp.load_der_ocsp_response(post_ocsp(shared.base_url, ocsp_request_by_serial(ca, 0x0D)).content)
        if now_said.revocation_reason == x509.ReasonFlags.key_compromise or dt.datetime.now(dt.UTC) > deadline:
            break
        time.sleep(0.05)
    assert now_said.revocation_reason == x509.ReasonFlags.key_compromise
    assert now_said.revocation_time_utc == when
    assert "(reason keyCompromise)" in shared.run("status", "exp", "0D").stdout


def test_intermediate_and_aia(shared: Shared) -> None:
    url = shared.base_url + "/api/ocsp"
    shared.run("ca", "create", "inter", "--parent", "root", "--ocsp-url", url)
    inter_pem = shared.work / "inter.pem"
    inter_pem.write_text(shared.run("ca", "show", "inter").stdout)
    # The parent answers for its intermediate.
    wait_ocsp_status(shared.base_url, ocsp_request_by_serial(shared.ca, load_cert(inter_pem).serial_number), "good")
    out = openssl(
        "ocsp", "-issuer", shared.ca_pem, "-cert", inter_pem, "-url", shared.base_url, "-CAfile", shared.ca_pem
    )
    assert "Response verify OK" in out
    assert f"{inter_pem}: good" in out

    shared.run("issue", "inter", "--cn", "leaf.inter.example", "--out", shared.work / "inter-out")
    leaf_pem = shared.work / "inter-out" / "leaf.inter.example.pem"
    aia = openssl("x509", "-in", leaf_pem, "-noout", "-ocsp_uri").strip()
    assert aia == url
    wait_ocsp_status(
        shared.base_url, ocsp_request_by_serial(load_cert(inter_pem), load_cert(leaf_pem).serial_number), "good"
    )
    out = openssl(
        "ocsp", "-issuer", inter_pem, "-cert", leaf_pem, "-url", aia, "-CAfile", shared.ca_pem,
        "-verify_other", inter_pem,
    )  # fmt: skip
    assert "Response verify OK" in out
    assert f"{leaf_pem}: good" in out


def test_status_says_when_a_revocation_is_not_published(
    run: Run, data_dir: Path, tmp_path: Path, servers: list[Server]
) -> None:
    """A revocation the signer has not signed yet, or could not sign (its CA key gone): `status` says the
    cached responses still say good, instead of a revoked record above good responses and nothing else."""
    run("ca", "create", "keyless")
    alone = run("issue", "keyless", "--cn", "k.example", "--out", tmp_path / "out")
    no_signer = f"warning: no signer is running on {data_dir}: the OCSP responses of this are signed once one starts"
    assert no_signer in alone.stderr
    serial = openssl("x509", "-in", tmp_path / "out" / "k.example.pem", "-noout", "-serial").strip()

    def signer() -> Server:
        server = Server("signer", data_dir, ["signer"], tmp_path / f"signer{len(servers)}.log")
        servers.append(server)
        return server

    def settled() -> str | None:
        out = run("status", "keyless", serial).stdout
        return out if "pending     no" in out and "none cached" not in out else None

    first = signer()
    wait_for("the first signing", settled, timeout=30, interval=0.2)
    assert run("issue", "keyless", "--cn", "k2.example", "--out", tmp_path / "out").stderr == ""  # it runs
    first.stop_clean()
    assert no_signer in run("revoke", "keyless", serial).stderr
    waiting = run("status", "keyless", serial).stdout
    assert "published   no: a cached response still says good (the signer signs the revocation next)" in waiting

    key = data_dir / "signer" / "keys" / "keyless.ca.key"
    key.rename(tmp_path / "away.key")
    again = run("revoke", "keyless", serial, "--reason", "keyCompromise")  # revoke warns, too
    assert "warning: CA keyless: its OCSP signing key cannot be loaded: " in again.stderr
    assert again.stderr.rstrip().endswith("no response is signed for this until it is mended")
    second = signer()
    failed = wait_for("the signer giving up on it", settled, timeout=30, interval=0.2)
    assert "published   no: a cached response still says good, and the signer could not sign the revocation" in failed
    assert "cannot load its OCSP signing key" in second.log()
    assert "unsignable  keyless: the signer cannot sign their responses now" in run("status").stdout
    second.stop_clean()


def test_status_without_a_serial_is_the_store_at_a_glance(
    run: Run, data_dir: Path, tmp_path: Path, servers: list[Server]
) -> None:
    run("ca", "create", "glance")
    run("issue", "glance", "--cn", "g.example", "--out", tmp_path / "out")
    alone = run("status").stdout.splitlines()
    assert alone[:7] == [
        f"data        {data_dir}",
        "signer      not running (pki-edge signer, or pki-edge up)",
        "CAs         1: glance",
        "serials     1",
        "responses   0 cached",
        "backlog     1 serials wait for a first signing or a revocation; the oldest due refresh is 0 s late",
        "last signed never",
    ]
    assert alone[7].startswith("store       ") and "of its map (store.map_size_mb = 65536)" in alone[7]
    signer = Server("signer", data_dir, ["signer"], tmp_path / "signer.log")
    servers.append(signer)

    def signed() -> list[str] | None:
        lines = run("status").stdout.splitlines()
        return lines if lines[4] == "responses   2 cached" else None

    lines = wait_for("the first signing", signed, timeout=30, interval=0.2)
    assert lines[1] == "signer      running"
    assert lines[5].startswith("backlog     0 serials wait") and lines[6].endswith(" s ago)")
    signer.stop_clean()
    assert run("status", "glance", check=False).returncode == 2  # a name and no serial: a usage error

    small = tmp_path / "small"  # a store filling its map: the signer soon has no room left to sign
    env = clean_env(PKI_EDGE_STORE_MAP_SIZE_MB="1")
    pki_edge(small, "ca", "create", "tiny", env=env)
    for offset in range(5):  # interleaved serials: half-full pages (one import alone packs them)
        rows = "".join(f"V\t301231235959Z\t\t{s:X}\tunknown\t/CN=d{s}\n" for s in range(100 + offset, 12600, 5))
        (tmp_path / "index.txt").write_text(rows)
        imported = pki_edge(small, "import", "tiny", "--openssl-index", tmp_path / "index.txt", env=env, check=False)
        if imported.returncode:
            break
    assert "pki-edge: error: the store is full at store.map_size_mb = 1" in imported.stderr
    full = pki_edge(small, "status", env=env)
    assert "of its map (store.map_size_mb = 1)" in full.stdout
    nearly = (
        "warning: the store is nearly full ({}% of store.map_size_mb): {};"
        " raise store.map_size_mb (address space, not disk)"
    )
    share = full.stderr.split("(", 1)[1].split("%", 1)[0]
    assert 90 <= int(share) <= 100, full.stderr
    assert full.stderr == nearly.format(share, "the signer cannot sign into a full store") + "\n"
    # What is revoked now may never be signed: revoke says so (and still records it).
    revoked = pki_edge(small, "revoke", "tiny", "64", env=env, check=False)
    assert revoked.returncode == 0 and revoked.stdout.startswith("revoked 64 of tiny at ")
    said = revoked.stderr.splitlines()
    assert said[0] == nearly.format(share, "the signer may fail to sign this, and every refresh"), said
    assert said[1].startswith("warning: no signer is running on "), said


def test_a_lifetime_cut_to_the_issuing_cas_is_said(run: Run, tmp_path: Path) -> None:
    """Found by the audit: --days past the CA's own notAfter was cut silently."""
    run("ca", "create", "brief", "--days", "2")
    issued = run("issue", "brief", "--cn", "long.example", "--days", "30", "--out", tmp_path / "out")
    assert issued.stderr.startswith("note: --days 30 would outlive CA brief: the certificate ends with it, at 20")
    ends = openssl("x509", "-in", tmp_path / "out" / "long.example.pem", "-noout", "-enddate").strip()
    (tmp_path / "brief.pem").write_text(run("ca", "show", "brief").stdout)
    assert ends == openssl("x509", "-in", tmp_path / "brief.pem", "-noout", "-enddate").strip()
    made = run("ca", "create", "under", "--parent", "brief", "--days", "30")
    assert "note: --days 30 would outlive CA brief" in made.stderr
    shorter = run("issue", "brief", "--cn", "short.example", "--days", "1", "--out", tmp_path / "out")
    assert "note:" not in shorter.stderr


def test_a_ca_renewed_issues_past_its_old_end_and_signs_whole_validities(
    run: Run, data_dir: Path, tmp_path: Path, servers: list[Server]
) -> None:
    """A CA two days from its end: its responses are cut short to it, and it cannot issue past it.
    `ca renew` gives it a renewed certificate (same subject and key): what it issued before still
    verifies, it issues past the old end, and responses signed from then on run their whole validity."""
    run("ca", "create", "brief", "--days", "2")
    run("issue", "brief", "--cn", "before.example", "--days", "1", "--out", tmp_path / "out")
    up = start_up(data_dir, tmp_path)
    servers.append(up)
    old_pem = tmp_path / "old.pem"
    old_pem.write_text(run("ca", "show", "brief").stdout)

    def next_update(leaf: str, ca_pem: Path) -> str | None:
        url, cert = f"{up.base_url}/ocsp", tmp_path / "out" / f"{leaf}.pem"
        text = openssl("ocsp", "-issuer", ca_pem, "-cert", cert, "-url", url, "-CAfile", ca_pem, check=False)
        if f"{cert}: good" not in text:
            return None
        return text.split("Next Update: ", 1)[1].splitlines()[0].strip()

    old_end = openssl("x509", "-in", old_pem, "-noout", "-enddate").strip().removeprefix("notAfter=")
    assert wait_for("the first answer", lambda: next_update("before.example", old_pem), timeout=30) == old_end

    renewed = run("ca", "renew", "brief", "--days", "30")
    assert renewed.stdout.startswith("renewed CA brief: its certificate ends at ")
    new_pem = tmp_path / "new.pem"
    new_pem.write_text(run("ca", "show", "brief").stdout)
    assert "OK" in openssl("verify", "-CAfile", new_pem, tmp_path / "out" / "before.example.pem")
    issued = run("issue", "brief", "--cn", "after.example", "--days", "20", "--out", tmp_path / "out")
    assert "note:" not in issued.stderr  # within the renewed CA's life
    after_end = openssl("x509", "-in", tmp_path / "out" / "after.example.pem", "-noout", "-enddate").strip()
    assert after_end != f"notAfter={old_end}"
    said = wait_for("the new certificate's answer", lambda: next_update("after.example", new_pem), timeout=30)
    ends = dt.datetime.strptime(said, "%b %d %H:%M:%S %Y %Z").replace(tzinfo=dt.UTC)
    assert ends > dt.datetime.now(dt.UTC) + dt.timedelta(days=6)  # a whole week, not cut to the old end


def test_issue_never_writes_through_a_symlink_at_its_certificate_path(run: Run, tmp_path: Path) -> None:
    """The security review: a dangling symlink at DIR/CN.pem made `issue` (often run as root) create the
    file it pointed at."""
    run("ca", "create", "links")
    out = tmp_path / "out"
    out.mkdir()
    target = tmp_path / "created-by-issue.txt"
    (out / "dev9.pem").symlink_to(target)
    refused = run("issue", "links", "--cn", "dev9", "--out", out, check=False)
    assert refused.returncode == 2 and "already exists" in refused.stderr
    assert not target.exists() and not (out / "dev9.key").exists()  # refused before anything was issued
    assert "serials     0" in run("status").stdout
