"""(i) Operator mistakes end with exit code 2 and one clean "pki-edge: error:" message, never a traceback."""

from __future__ import annotations

import datetime as dt
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import BestAvailableEncryption, Encoding, PrivateFormat
from cryptography.x509.oid import NameOID

from tests.integration.helpers import clean_env, make_ca, openssl, pki_edge, write_pem


@dataclass
class Cli:
    data: Path
    dir: Path
    serial: str

    def run(self, *args: str | Path):  # type: ignore[no-untyped-def]
        return pki_edge(self.data, *args, check=False)


@pytest.fixture(scope="module")
def cli(tmp_path_factory: pytest.TempPathFactory) -> Cli:
    d = tmp_path_factory.mktemp("cli")
    data = d / "data"
    pki_edge(data, "ca", "create", "root")
    pki_edge(data, "issue", "root", "--cn", "leaf.example", "--out", d / "out")
    (d / "ca.pem").write_text(pki_edge(data, "ca", "show", "root").stdout)
    serial = openssl("x509", "-in", d / "out" / "leaf.example.pem", "-noout", "-serial").strip()
    other_ca, other_key = make_ca("Other CA")
    _, unrelated_key = make_ca("Unrelated")
    write_pem(d / "other.pem", other_ca)
    write_pem(d / "other.key", other_key)
    write_pem(d / "unrelated.key", unrelated_key)
    (d / "other-encrypted.key").write_bytes(
        other_key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, BestAvailableEncryption(b"secret"))
    )
    (d / "garbage.pem").write_text("this is not a certificate\n")
    expired_key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Expired CA")])
    long_ago = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
    expired = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(expired_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(long_ago)
        .not_valid_after(long_ago + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(expired_key, hashes.SHA256())
    )
    write_pem(d / "expired.pem", expired)
    write_pem(d / "expired.key", expired_key)
    pki_edge(data, "ca", "add", "old", "--cert", d / "expired.pem", "--key", d / "expired.key")
    return Cli(data, d, serial)


_GOOD_TLS = ["--tls-port", "18443", "--tls-cert", "{d}/other.pem", "--tls-key", "{d}/other.key"]

CASES: dict[str, tuple[list[str], str]] = {
    # label: (arguments, with {d} for the work directory and {serial} for a known serial; expected text)
    "status unknown CA": (["status", "nosuch", "01"], "unknown CA 'nosuch'"),
    "revoke unknown CA": (["revoke", "nosuch", "01"], "unknown CA 'nosuch'"),
    "issue unknown CA": (["issue", "nosuch", "--cn", "x", "--out", "{d}/x"], "unknown CA 'nosuch'"),
    "import unknown CA": (["import", "nosuch", "--cert", "{d}/ca.pem"], "unknown CA 'nosuch'"),
    "show unknown CA": (["ca", "show", "nosuch"], "unknown CA 'nosuch'"),
    "create under unknown parent": (["ca", "create", "child", "--parent", "nosuch"], "unknown CA 'nosuch'"),
    "revoke bad serial": (["revoke", "root", "not-hex"], "invalid serial"),
    "status bad serial": (["status", "root", "12G4"], "invalid serial"),
    "revoke empty serial": (["revoke", "root", "serial="], "invalid serial"),
    "revoke serial not in inventory": (["revoke", "root", "0DEAD"], "not in the inventory"),
    "status serial not in inventory": (["status", "root", "0DEAD"], "not in the inventory"),
    "revoke bad reason": (
        ["revoke", "root", "{serial}", "--reason", "boredom"],
        "unknown revocation reason 'boredom': one of unspecified, keyCompromise, cACompromise, affiliationChanged,"
        " superseded, cessationOfOperation, certificateHold, privilegeWithdrawn, aACompromise\n",  # no removeFromCRL
    ),
    "revoke bad time": (["revoke", "root", "{serial}", "--time", "yesterday"], "invalid time"),
    "revoke time far ahead": (["revoke", "root", "{serial}", "--time", "999999999999999"], "in the future"),
    "revoke time ahead": (["revoke", "root", "{serial}", "--time", "2100-01-01T00:00:00Z"], "in the future"),
    "revoke time before 1950": (["revoke", "root", "{serial}", "--time", "1900-01-01T00:00:00Z"], "before 1950"),
    "revoke removeFromCRL": (["revoke", "root", "{serial}", "--reason", "removeFromCRL"], "not a revocation reason"),
    "issue empty CN": (["issue", "root", "--cn", "", "--out", "{d}/e"], "--cn must be 1 to 64"),
    "issue long CN": (["issue", "root", "--cn", "x" * 65, "--out", "{d}/e"], "--cn must be 1 to 64"),
    "issue CN of 64 two-byte characters": (["issue", "root", "--cn", "é" * 64, "--out", "{d}/e"], "cannot issue"),
    "issue from an expired CA": (["issue", "old", "--cn", "x", "--out", "{d}/e"], "has expired"),
    "create under an expired parent": (["ca", "create", "kid", "--parent", "old"], "has expired"),
    "ca add mismatched key": (
        ["ca", "add", "mism", "--cert", "{d}/other.pem", "--key", "{d}/unrelated.key"],
        "does not match",
    ),
    "ca add not a CA": (
        ["ca", "add", "notca", "--cert", "{d}/out/leaf.example.pem", "--key", "{d}/out/leaf.example.key"],
        "not a CA certificate",
    ),
    "ca add garbage cert": (["ca", "add", "junk", "--cert", "{d}/garbage.pem", "--key", "{d}/other.key"], "--cert"),
    "ca add garbage key": (["ca", "add", "junk", "--cert", "{d}/other.pem", "--key", "{d}/garbage.pem"], "--key"),
    "ca add missing file": (
        ["ca", "add", "gone", "--cert", "{d}/missing.pem", "--key", "{d}/other.key"],
        "missing.pem",
    ),
    "ca add key and responder": (
        ["ca", "add", "both", "--cert", "{d}/other.pem", "--key", "{d}/other.key", "--responder-cert", "{d}/ca.pem"],
        "either --key",
    ),
    "ca add no key": (["ca", "add", "nokey", "--cert", "{d}/other.pem"], "--key"),
    "ca create duplicate": (["ca", "create", "root"], "already exists"),
    "ca create bad name": (["ca", "create", "bad name!"], "invalid CA name"),
    "ca create OCSP URL not a URL": (["ca", "create", "u1", "--ocsp-url", "not a url"], "invalid --ocsp-url"),
    "ca create OCSP URL ftp": (["ca", "create", "u2", "--ocsp-url", "ftp://ocsp.example"], "invalid --ocsp-url"),
    "ca create OCSP URL newline": (["ca", "create", "u3", "--ocsp-url", "http://a\nb"], "invalid --ocsp-url"),
    "ca create reserved name": (["ca", "create", "cacerts"], "invalid CA name"),
    "issue into existing files": (["issue", "root", "--cn", "leaf.example", "--out", "{d}/out"], "already exists"),
    "issue bad SAN": (["issue", "root", "--cn", "y", "--san", "EMAIL:x@y", "--out", "{d}/y"], "--san"),
    "import garbage CRL": (["import", "root", "--crl", "{d}/garbage.pem"], "not a CRL"),
    "import missing index": (["import", "root", "--openssl-index", "{d}/missing.txt"], "missing.txt"),
    "ca add same CA again": (
        ["ca", "add", "again", "--cert", "{d}/ca.pem", "--key", "{d}/data/signer/keys/root.ca.key"],
        "has this subject and key already",
    ),
    "responder unknown CA": (["ca", "responder", "nosuch", "--mint"], "unknown CA 'nosuch'"),
    "responder cert without key": (["ca", "responder", "root", "--responder-cert", "{d}/ca.pem"], "--responder-key"),
    "responder not issued by the CA": (
        ["ca", "responder", "root", "--responder-cert", "{d}/other.pem", "--responder-key", "{d}/other.key"],
        "not issued by this CA",
    ),
    "responder garbage cert": (
        ["ca", "responder", "root", "--responder-cert", "{d}/garbage.pem", "--responder-key", "{d}/other.key"],
        "--responder-cert",
    ),
    "responder mint too short": (["ca", "responder", "root", "--mint", "--days", "3"], "--days must be at least 14"),
    "est user list of an unknown label": (["est", "user", "list", "nosuch"], "unknown EST label 'nosuch'"),
    "issue DNS name with a space": (
        ["issue", "root", "--cn", "x", "--san", "DNS:bad name!", "--out", "{d}/x"],
        "--san 'DNS:bad name!': not a DNS name",
    ),
    "issue URI with a space": (
        ["issue", "root", "--cn", "x", "--san", "URI:urn:a b", "--out", "{d}/x"],
        "--san 'URI:urn:a b': has a space or a control character",
    ),
    # An EST/CLI audit: a lifetime past the year 9999 ended in a traceback (OverflowError), exit 1.
    "issue days past the calendar": (
        ["issue", "root", "--cn", "big", "--days", "3000000", "--out", "{d}/big"],
        "--days must be between 1 and 36525 (a century)",
    ),
    "create days past the calendar": (["ca", "create", "big", "--days", "99999999"], "--days must be between 1"),
    "renew days past the calendar": (["ca", "renew", "root", "--days", "99999999"], "--days must be between 1"),
    "mint days past the calendar": (
        ["ca", "responder", "root", "--mint", "--days", "99999999"],
        "--days must be between 1",
    ),
    "responder remove none": (["ca", "responder", "root", "--remove"], "has no delegated responder"),
    "responder days without mint": (["ca", "responder", "root", "--remove", "--days", "60"], "are for --mint"),
    "responder key type without mint": (
        ["ca", "responder", "root", "--responder-cert", "{d}/ca.pem", "--key", "ec-p384"],
        "are for --mint",
    ),
    "responder key without cert": (
        ["ca", "responder", "root", "--mint", "--responder-key", "{d}/other.key"],
        "goes with --responder-cert",
    ),
    "backup into an existing directory": (["backup", "--out", "{d}/out"], "{d}/out already exists: give a new"),
    "backup under a file": (["backup", "--out", "{d}/ca.pem/b"], "cannot create {d}/ca.pem/b: Not a directory"),
    # The edge's flags are checked before anything starts (uvicorn would wrap a port, or fail in a worker).
    "edge port past 65535": (["edge", "--port", "99999"], "edge.port (--port) must be between 1 and 65535"),
    "up port 0": (["up", "--port", "0"], "edge.port (--port) must be between 1 and 65535"),
    "edge no workers": (["edge", "--workers", "0"], "edge.workers (--workers) must be between 1"),
    "up TLS port of the HTTP port": (["up", "--port", "18080", "--tls-port", "18080"], "must differ"),
    "edge host not a name": (["edge", "--host", "a..b"], "edge.host (--host) 'a..b'"),
    "edge empty host": (["edge", "--host", " "], "edge.host (--host) is empty"),
    "edge TLS cert missing": (
        ["edge", "--tls-port", "18443", "--tls-cert", "{d}/missing.pem", "--tls-key", "{d}/other.key"],
        "--tls-cert {d}/missing.pem: no such file",
    ),
    "up TLS cert garbage": (
        ["up", "--tls-port", "18443", "--tls-cert", "{d}/garbage.pem", "--tls-key", "{d}/other.key"],
        "--tls-cert {d}/garbage.pem: not a PEM certificate",
    ),
    "edge TLS key of another certificate": (
        ["edge", "--tls-port", "18443", "--tls-cert", "{d}/other.pem", "--tls-key", "{d}/unrelated.key"],
        "--tls-key {d}/unrelated.key: not the unencrypted PEM key of --tls-cert {d}/other.pem",
    ),
    "edge TLS key encrypted": (
        ["edge", "--tls-port", "18443", "--tls-cert", "{d}/other.pem", "--tls-key", "{d}/other-encrypted.key"],
        "not the unencrypted PEM key",
    ),
    "edge client CA garbage": (
        ["edge", *_GOOD_TLS, "--client-ca", "{d}/garbage.pem"],
        "--client-ca {d}/garbage.pem",
    ),
    "edge TLS port without cert": (["edge", "--tls-port", "18443"], "--tls-port needs --tls-cert and --tls-key"),
}


@pytest.mark.parametrize(
    ("anchors", "expected"),
    [("missing.pem", "No such file or directory"), ("garbage.pem", "not a PEM bundle of certificates")],
    ids=["missing", "garbage"],
)
def test_ra_trust_anchors_unreadable_is_a_clean_error_naming_the_file(cli: Cli, anchors: str, expected: str) -> None:
    """An audit: the edge's workers failed with a traceback, and the error did not name the file."""
    path = cli.dir / anchors
    for command in (["edge", "--port", "1"], ["up", "--port", "1"]):
        proc = pki_edge(cli.data, *command, check=False, env=clean_env(PKI_EDGE_EST_RA_TRUST_ANCHORS=str(path)))
        assert (proc.returncode, proc.stderr) == (2, f"pki-edge: error: est.ra_trust_anchors {path}: {expected}\n")


@pytest.mark.parametrize("port", ["8080.0", "8e3"])
def test_a_port_from_the_environment_that_is_no_whole_number_is_refused(cli: Cli, port: str) -> None:
    """An audit: msgspec read PKI_EDGE_EDGE_PORT=8080.0 as 8080 (and 8e3 as 8000): another port than meant."""
    for command in (["edge"], ["up"]):
        proc = pki_edge(cli.data, *command, check=False, env=clean_env(PKI_EDGE_EDGE_PORT=port))
        expected = f"pki-edge: error: PKI_EDGE_EDGE_PORT: edge.port must be a whole number, got '{port}'\n"
        assert (proc.returncode, proc.stderr) == (2, expected)


@pytest.mark.parametrize("label", list(CASES))
def test_clean_error(cli: Cli, label: str) -> None:
    args, expected = CASES[label]
    proc = cli.run(*(a.format(d=cli.dir, serial=cli.serial) for a in args))
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert proc.stderr.startswith("pki-edge: error:"), proc.stderr
    assert expected.format(d=cli.dir) in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_failed_commands_changed_nothing(cli: Cli) -> None:
    listed = cli.run("ca", "list")
    assert listed.returncode == 0
    listed_cas = sorted(line.split("\t")[:3] for line in listed.stdout.splitlines())
    assert listed_cas == [["old", "#2", "ca"], ["root", "#1", "ca"]]  # no responder, no CA made under "old"
    status = cli.run("status", "root", cli.serial)
    assert "status      good" in status.stdout


@pytest.mark.parametrize(
    "args",
    [
        ["revoke"],
        ["ca", "create", "x", "--key", "dsa-1024"],
        ["frobnicate"],
        ["import", "root"],
        ["ca", "responder", "root"],
        ["ca", "responder", "root", "--mint", "--remove"],
    ],
    ids=["missing-args", "bad-choice", "unknown-command", "no-source", "responder-no-action", "responder-two-actions"],
)
def test_usage_errors_exit_2_without_traceback(cli: Cli, args: list[str]) -> None:
    proc = cli.run(*args)
    assert proc.returncode == 2
    assert "error:" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def test_ra_issued_by_a_configured_trust_anchor_is_accepted(tmp_path: Path) -> None:
    """est.ra_trust_anchors: an RA certificate from a CA outside the registry."""
    from tests.integration import helpers

    data = tmp_path / "data"
    helpers.pki_edge(data, "ca", "create", "root")
    anchor, anchor_key = helpers.make_ca("outside RA CA")
    ra_cert = helpers.make_leaf(anchor, anchor_key, "dms-outside", 0x1234)[0]
    helpers.write_pem(tmp_path / "anchor.pem", anchor)
    helpers.write_pem(tmp_path / "ra.pem", ra_cert)
    add = ("ra", "add", "outside", "--cert", tmp_path / "ra.pem", "--cas", "root")
    refused = helpers.pki_edge(data, *add, check=False)
    assert refused.returncode == 2 and "pki-edge: error:" in refused.stderr
    (data / "pki-edge.toml").write_text(f'[est]\nra_trust_anchors = "{tmp_path / "anchor.pem"}"\n')
    added = helpers.pki_edge(data, *add)
    assert "trust anchor" in added.stdout and "CN=outside RA CA" in added.stdout


@pytest.mark.parametrize(
    ("password", "expected"),
    [
        (b"\xff\xfe\n", "the password on standard input is not UTF-8 text"),
        (b"tab\there\n", "the password has a control character"),
        (b"x" * 1025 + b"\n", "the password is longer than 1024 bytes"),
        (b"\n", "no password on standard input"),
    ],
    ids=["not-utf8", "control-character", "too-long", "empty"],
)
def test_est_user_password_from_stdin_is_checked(cli: Cli, password: bytes, expected: str) -> None:
    from tests.integration import helpers

    cmd = [helpers.PKI_EDGE, "--data", str(cli.data), "est", "user", "add", "root", "pw-user", "--password-stdin"]
    proc = subprocess.run(cmd, input=password, capture_output=True, timeout=60, env=helpers.clean_env(), check=False)
    stderr = proc.stderr.decode()
    assert proc.returncode == 2 and stderr.startswith(f"pki-edge: error: {expected}"), stderr
    assert len(stderr.splitlines()) == 1, stderr
    # 1024 bytes of UTF-8 is the longest password taken.
    ok = subprocess.run(cmd, input="é".encode() * 512, capture_output=True, timeout=60, env=helpers.clean_env())
    assert (ok.returncode, ok.stdout) == (0, b"added EST user pw-user for root\n")
    assert cli.run("est", "user", "remove", "root", "pw-user").returncode == 0


def test_a_full_store_is_an_error_line_and_a_retry_with_more_room_completes(tmp_path: Path) -> None:
    from tests.integration import helpers

    data = tmp_path / "data"
    helpers.pki_edge(data, "ca", "create", "root")
    index = tmp_path / "index.txt"
    index.write_text("".join(f"V\t301231235959Z\t\t{s:X}\tunknown\t/CN=d{s}\n" for s in range(1, 30001)))
    small = helpers.clean_env(PKI_EDGE_STORE_MAP_SIZE_MB="1")
    full = helpers.pki_edge(data, "import", "root", "--openssl-index", index, check=False, env=small)
    assert full.returncode == 2 and "Traceback" not in full.stderr, full.stderr
    assert full.stderr.startswith("pki-edge: error: the store is full at store.map_size_mb = 1: raise it"), full.stderr
    done = helpers.pki_edge(data, "import", "root", "--openssl-index", index)
    assert "added " in done.stdout and "rejected" not in done.stdout
    status = helpers.pki_edge(data, "status", "root", "7530")  # the last serial, 30000
    assert "status      good" in status.stdout


@pytest.mark.parametrize("command", ["edge", "up"])
def test_a_port_in_use_is_an_error_line_before_anything_starts(cli: Cli, command: str) -> None:
    """uvicorn would start the application, then log the bind error and exit 3 (and up its signer first)."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = cli.run(command, "--port", str(port))
    assert proc.returncode == 2, proc
    assert (
        proc.stderr
        == f"pki-edge: error: edge.port (--port): cannot listen on 127.0.0.1:{port}: Address already in use\n"
    )
    assert proc.stdout == ""


@pytest.mark.parametrize("args", [["ca", "list"], ["status", "root", "{serial}"]], ids=["ca-list", "status"])
def test_a_reader_gone_away_ends_the_command_quietly(cli: Cli, args: list[str]) -> None:
    """`pki-edge status ... | head -1`: no 'error: : Broken pipe', the exit status of a SIGPIPE."""
    from tests.integration import helpers

    command = [helpers.PKI_EDGE, "--data", str(cli.data), *(a.format(serial=cli.serial) for a in args)]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=helpers.clean_env())
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    stderr = proc.stderr.read()
    assert (proc.wait(timeout=60), stderr) == (141, b"")


@pytest.mark.parametrize(
    "args", [["ca", "list"], ["status", "root", "01"], ["est", "user", "list"], ["import", "root", "--crl", "x.crl"]]
)
def test_a_data_directory_without_a_store_is_an_error_and_stays_untouched(tmp_path: Path, args: list[str]) -> None:
    """A mistyped --data: said, not answered from an empty store made there on the spot."""
    from tests.integration import helpers

    data = tmp_path / "typo"
    proc = helpers.pki_edge(data, *args, check=False)
    assert proc.returncode == 2, proc
    assert proc.stderr == (
        f"pki-edge: error: no pki-edge store in {data}: give the right --data (or PKI_EDGE_DATA),"
        " or create a CA first (pki-edge ca create NAME)\n"
    )
    assert not data.exists()


def test_a_signer_whose_job_server_cannot_listen_does_not_start(tmp_path: Path) -> None:
    """A Unix socket path is at most 107 bytes: past it the job server (EST, live OCSP) cannot listen, and
    a signer running without it would fail every enrollment; it stops at once with the reason."""
    from tests.integration import helpers

    data = tmp_path / ("d" * 110)
    helpers.pki_edge(data, "ca", "create", "root")
    proc = helpers.pki_edge(data, "signer", check=False, timeout=60)
    assert proc.returncode == 2, proc
    error = proc.stderr.strip().splitlines()[-1]
    assert error == f"pki-edge: error: the job server cannot listen on {data}/signer/jobs.sock: AF_UNIX path too long"
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    ("where", "mode"),
    [("", 0o777), ("", 0o775), ("pki-edge.toml", 0o666), ("store", 0o757), ("store/data.mdb", 0o664)],
    ids=["data-777", "data-group-writable", "config-666", "store-world-writable", "store-file-group-writable"],
)
def test_a_data_directory_others_may_write_is_refused_by_every_side(tmp_path: Path, where: str, mode: int) -> None:
    """Found by an audit: in a 777 data directory another local user wrote pki-edge.toml, made the edge
    trust a header as the client certificate, and enrolled as a registered RA with its public
    certificate alone. The CLI, the signer and the edge now refuse such a directory, naming the fix."""
    data = tmp_path / "data"
    pki_edge(data, "ca", "create", "root")
    (data / "pki-edge.toml").write_text("")
    path = data / where if where else data
    path.chmod(mode)
    refusal = f"{path} may be written by other users than its owner (mode {mode:o}): chmod go-w {path}"
    for args in (["status"], ["ca", "list"], ["signer"], ["edge", "--port", "1"], ["up", "--port", "1"]):
        proc = pki_edge(data, *args, check=False)
        assert (proc.returncode, proc.stderr) == (2, f"pki-edge: error: {refusal}\n"), (args, proc)
    path.chmod(0o755 if path.is_dir() else 0o644)
    assert pki_edge(data, "ca", "list").returncode == 0
