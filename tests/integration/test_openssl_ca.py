"""(e) A real `openssl ca` CA brought over: its index.txt, its newcerts directory and its CRL."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.conftest import Shared
from tests.integration.helpers import load_cert, ocsp_request_der, openssl, wait_ocsp_status

CNF = """\
[ ca ]
default_ca = CA_default

[ CA_default ]
dir = {dir}
database = $dir/index.txt
new_certs_dir = $dir/newcerts
certificate = $dir/cacert.pem
private_key = $dir/cakey.pem
serial = $dir/serial
crlnumber = $dir/crlnumber
default_md = sha256
default_days = 30
default_crl_days = 7
policy = policy_anything
unique_subject = no
copy_extensions = none
x509_extensions = usr_cert
crl_extensions = crl_ext

[ policy_anything ]
countryName = optional
stateOrProvinceName = optional
localityName = optional
organizationName = optional
organizationalUnitName = optional
commonName = supplied
emailAddress = optional

[ usr_cert ]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
authorityKeyIdentifier = keyid

[ crl_ext ]
authorityKeyIdentifier = keyid

[ req ]
distinguished_name = dn
prompt = no

[ dn ]
CN = Tiny OpenSSL CA

[ v3_ca ]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign, digitalSignature
subjectKeyIdentifier = hash
"""


@dataclass
class OpensslCa:
    dir: Path
    cnf: Path
    leaves: list[Path]


@pytest.fixture(scope="module")
def oca(tmp_path_factory: pytest.TempPathFactory) -> OpensslCa:
    d = tmp_path_factory.mktemp("openssl-ca")
    cnf = d / "openssl.cnf"
    cnf.write_text(CNF.format(dir=d))
    (d / "newcerts").mkdir()
    (d / "index.txt").write_text("")
    (d / "serial").write_text("1000\n")
    (d / "crlnumber").write_text("01\n")
    openssl(
        "req", "-x509", "-config", cnf, "-extensions", "v3_ca", "-newkey", "rsa:2048", "-nodes",
        "-keyout", d / "cakey.pem", "-out", d / "cacert.pem", "-days", "365", "-subj", "/CN=Tiny OpenSSL CA",
    )  # fmt: skip
    leaves = []
    for i in range(1, 4):
        key, csr, cert = d / f"l{i}.key", d / f"l{i}.csr", d / f"l{i}.pem"
        openssl(
            "req", "-new", "-config", cnf, "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", key, "-out", csr, "-subj", f"/CN=l{i}.openssl.example",
        )  # fmt: skip
        openssl("ca", "-config", cnf, "-batch", "-notext", "-in", csr, "-out", cert)
        leaves.append(cert)
    openssl("ca", "-config", cnf, "-revoke", leaves[1], "-crl_reason", "keyCompromise")
    return OpensslCa(d, cnf, leaves)


def _ask(shared: Shared, oca: OpensslCa, leaf: Path) -> str:
    out = openssl(
        "ocsp", "-issuer", oca.dir / "cacert.pem", "-cert", leaf, "-url", shared.base_url + "/ocsp",
        "-CAfile", oca.dir / "cacert.pem",
    )  # fmt: skip
    assert "Response verify OK" in out
    return out


def test_import_openssl_ca(shared: Shared, oca: OpensslCa) -> None:
    index = (oca.dir / "index.txt").read_text().splitlines()
    assert [row[0] for row in index] == ["V", "R", "V"]
    assert index[1].split("\t")[2].endswith(",keyCompromise")

    shared.run("ca", "add", "oca", "--cert", oca.dir / "cacert.pem", "--key", oca.dir / "cakey.pem")
    index_txt, newcerts = oca.dir / "index.txt", oca.dir / "newcerts"
    assert "oca: added 3, updated 0, unchanged 0" in shared.run("import", "oca", "--openssl-index", index_txt).stdout
    # The certificates themselves: known serials gain their DER, then a re-import changes nothing.
    assert "oca: added 0, updated 3, unchanged 0" in shared.run("import", "oca", "--cert", newcerts).stdout
    assert "oca: added 0, updated 0, unchanged 3" in shared.run("import", "oca", "--cert", newcerts).stdout
    assert "oca: added 0, updated 0, unchanged 3" in shared.run("import", "oca", "--openssl-index", index_txt).stdout

    ca = load_cert(oca.dir / "cacert.pem")
    for leaf, expected in zip(oca.leaves, ["good", "revoked", "good"], strict=True):
        wait_ocsp_status(shared.base_url, ocsp_request_der(load_cert(leaf), ca), expected)
    good1, revoked, good3 = (_ask(shared, oca, leaf) for leaf in oca.leaves)
    assert f"{oca.leaves[0]}: good" in good1
    assert f"{oca.leaves[2]}: good" in good3
    assert f"{oca.leaves[1]}: revoked" in revoked
    assert "Reason: keyCompromise" in revoked

    # A later revocation in openssl reaches the edge through the CRL.
    openssl("ca", "-config", oca.cnf, "-revoke", oca.leaves[2], "-crl_reason", "superseded")
    openssl("ca", "-config", oca.cnf, "-gencrl", "-out", oca.dir / "crl.pem")
    out = shared.run("import", "oca", "--crl", oca.dir / "crl.pem").stdout
    assert "oca: added 0, updated 1, unchanged 1" in out
    wait_ocsp_status(shared.base_url, ocsp_request_der(load_cert(oca.leaves[2]), ca), "revoked")
    text = _ask(shared, oca, oca.leaves[2])
    assert f"{oca.leaves[2]}: revoked" in text
    assert "Reason: superseded" in text
    assert f"{oca.leaves[0]}: good" in _ask(shared, oca, oca.leaves[0])


def test_crl_from_another_ca_is_refused(shared: Shared, oca: OpensslCa) -> None:
    """The shared root CA did not sign the openssl CA's CRL."""
    crl = oca.dir / "crl-for-root.pem"
    openssl("ca", "-config", oca.cnf, "-gencrl", "-out", crl)
    proc = shared.run("import", "root", "--crl", crl, check=False)
    assert proc.returncode == 2
    assert proc.stderr.startswith("pki-edge: error:")
    assert "Traceback" not in proc.stderr
