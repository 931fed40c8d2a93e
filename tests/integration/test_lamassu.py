"""Lamassu's OCSP commands, as its protocol docs (lamassuiot/docs, docs/protocols.md) and its own test
scripts (lamassuiot/lamassuiot, test/ocsp/curl_Get.sh and curl_Post.sh) give them, their verification
step included, against `pki-edge up`: the same lines with the host changed.

Lamassu's user fetches the server's TLS certificate (`openssl s_client … > root-ca.pem`) and verifies
the OCSP answer with `-VAfile root-ca.pem`: the gateway's TLS certificate signs its OCSP. pki-edge does
it when its TLS certificate is the CA's delegated responder (`issue --ocsp-responder`, then `ca
responder --responder-cert`), which clients that trust the CA (`-CAfile ca.crt`) accept as well.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.integration import helpers
from tests.integration.conftest import Run
from tests.integration.helpers import Server, free_port, wait_for


def _sh(script: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", script], cwd=cwd, env=helpers.clean_env(**env), capture_output=True, text=True, timeout=60
    )


@pytest.fixture
def lamassu(run: Run, data_dir: Path, tmp_path: Path, servers: list[Server]) -> tuple[Path, dict[str, str]]:
    """An edge whose TLS certificate is the delegated OCSP responder of the CA devices enroll with."""
    helpers.require_openssl()
    work = tmp_path / "work"
    run("ca", "create", "devices")
    tls = ["--cn", "localhost", "--san", "DNS:localhost", "--san", "IP:127.0.0.1", "--ocsp-responder"]
    run("issue", "devices", *tls, "--out", work)
    run(
        "ca",
        "responder",
        "devices",
        "--responder-cert",
        work / "localhost.pem",
        "--responder-key",
        work / "localhost.key",
    )
    run("issue", "devices", "--cn", "dms", "--out", work)
    run("ra", "add", "dms", "--cert", work / "dms.pem", "--cas", "devices")
    (work / "ca.crt").write_text(run("ca", "show", "devices").stdout)
    port, tls_port = free_port(), free_port()
    args = ["up", "--port", str(port), "--tls-port", str(tls_port)]
    args += ["--tls-cert", str(work / "localhost.pem"), "--tls-key", str(work / "localhost.key")]
    server = Server("up", data_dir, args, tmp_path / "up.log", port=port)
    servers.append(server)
    server.wait_ready()
    helpers.wait_drained(data_dir)
    env = {"DOMAIN": f"127.0.0.1:{tls_port}", "CA_NAME": "devices", "DMS_CRT": "./dms.pem", "DMS_KEY": "./dms.key"}
    return work, env


# curl_Get.sh's steps 1, 4, 5 and 6 (2 and 3 create the CA and the DMS through Lamassu's own API: here
# `pki-edge ca create`, `issue` and `ra add`). `$DOMAIN:443` becomes `$DOMAIN`: the host, with its port.
ENROLL_AND_GET = """
openssl s_client -connect $DOMAIN  2>/dev/null </dev/null |  sed -ne '/-BEGIN CERTIFICATE-/,/-END CERTIFICATE-/p' > root-ca.pem
openssl req -new -newkey rsa:2048 -nodes -keyout device.key -out device.csr -subj "/CN=$DEVICE_ID" 2>/dev/null
sed '/CERTIFICATE/d' device.csr > device_enroll.csr
curl https://$DOMAIN/api/devmanager/.well-known/est/$CA_NAME/simpleenroll --cert $DMS_CRT --key $DMS_KEY -s -o cert.p7 --cacert root-ca.pem  --data-binary @device_enroll.csr -H "Content-Type: application/pkcs10"
openssl base64 -d -in cert.p7 | openssl pkcs7 -inform DER -outform PEM -print_certs -out device.pem
export CA_CERTIFICATE=ca.crt
export DEVICE_CERTIFICATE=device.pem
OCSP_REQUEST=$(openssl ocsp -CAfile $CA_CERTIFICATE -issuer $CA_CERTIFICATE -cert $DEVICE_CERTIFICATE -reqout - | base64 -w 0)
curl -k --location --request GET "https://$DOMAIN/api/ocsp/$OCSP_REQUEST" > ocspresponse.der
openssl ocsp -respin ocspresponse.der -VAfile root-ca.pem -resp_text
"""  # noqa: E501

# curl_Post.sh's step 5 and 6, with its verification line (commented out there, with the gateway's TLS
# certificate as -VAfile: root-ca.pem is that certificate).
POST = """
openssl ocsp -issuer ca.crt -cert device.pem -reqout - > ocsp-request-post.der
curl --location --request POST "https://$DOMAIN/api/ocsp/" --header 'Content-Type: application/ocsp-request' --data-binary '@ocsp-request-post.der' > ocsp-response-post.der -k
openssl ocsp -respin ocsp-response-post.der -VAfile root-ca.pem -resp_text
"""  # noqa: E501


def test_lamassus_ocsp_commands_verify_with_the_servers_tls_certificate(run: Run, lamassu) -> None:
    work, env = lamassu
    got = _sh(ENROLL_AND_GET, work, {**env, "DEVICE_ID": "c6f1b0de-lamassu-device"})
    assert got.returncode == 0, got
    assert "Response verify OK" in got.stderr, got
    assert "Cert Status: good" in got.stdout, got.stdout
    posted = _sh(POST, work, env)
    assert posted.returncode == 0 and "Response verify OK" in posted.stderr, posted
    assert "Cert Status: good" in posted.stdout, posted.stdout

    # The CA's own certificate verifies the same answers (a device that trusts its CA, not the server).
    ca_checked = _sh("openssl ocsp -respin ocspresponse.der -CAfile ca.crt -resp_text", work, env)
    assert "Response verify OK" in ca_checked.stderr, ca_checked

    serial = _sh("openssl x509 -in device.pem -noout -serial", work, env).stdout.strip().split("=")[1]
    run("revoke", "devices", serial, "--reason", "keyCompromise")

    def revoked() -> str | None:
        again = _sh(POST, work, env)
        return again.stdout if "Cert Status: revoked" in again.stdout and "Response verify OK" in again.stderr else None

    wait_for("the revocation in Lamassu's POST check", revoked, timeout=20)
