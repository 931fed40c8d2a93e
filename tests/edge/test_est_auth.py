"""EST client authentication on the edge: forwarded certificates, HTTP Basic, the RA directory."""

from __future__ import annotations

import base64
import datetime as dt
import logging
import ssl
import urllib.parse
from pathlib import Path

import pytest
from argon2 import PasswordHasher
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from contract import store
from contract.config import ConfigError
from contract.store import CertRecord, EstUserRecord, IssuerRecord, RaRecord
from edge.est_auth import (
    ForwardedCertError,
    RaDecision,
    RaDirectory,
    TrustedProxies,
    choose_client_cert,
    client_cert_from_forwarded,
    parse_basic,
    verify_basic,
    xfcc_elements,
)
from edge.source import LmdbSource
from tests.edge.conftest import Pki, make_pki

CHEAP = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
TRUSTED = TrustedProxies.parse(["10.0.0.1", "192.168.0.0/16", "2001:db8::/32", "::1"])


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def sf_binary(cert: x509.Certificate) -> bytes:
    return b":" + base64.b64encode(der(cert)) + b":"


def escaped(cert: x509.Certificate) -> bytes:
    return urllib.parse.quote(pem(cert), safe="").encode()


def xfcc_cert(cert: x509.Certificate) -> str:
    return 'Cert="' + urllib.parse.quote(pem(cert), safe="") + '"'


# ------------------------------------------------------------------ trusted proxies


@pytest.mark.parametrize(
    ("peer", "trusted"),
    [
        ("10.0.0.1", True),
        ("10.0.0.2", False),
        ("192.168.200.3", True),
        ("192.169.0.1", False),
        ("2001:db8::7", True),
        ("2001:db9::7", False),
        ("::1", True),
        ("::ffff:10.0.0.1", True),  # IPv4 peer on a dual-stack socket
        ("::ffff:10.0.0.2", False),
        ("fe80::1%eth0", False),
        ("not-an-ip", False),
        ("", False),
        (None, False),
    ],
)
def test_trusted_proxies(peer, trusted):
    assert TRUSTED.trusts(peer) is trusted


def test_trusted_proxies_parse():
    assert TrustedProxies.parse([]).trusts("127.0.0.1") is False
    assert TrustedProxies.parse([" 10.1.2.3/8 "]).trusts("10.200.0.1")  # host bits ignored
    with pytest.raises(ConfigError, match=r"est.trusted_proxies: 'proxy.local' is not an IP address or CIDR"):
        TrustedProxies.parse(["10.0.0.1", "proxy.local"])
    with pytest.raises(ConfigError):
        TrustedProxies.parse(["10.0.0.0/33"])


# ------------------------------------------------------------------ forwarded certificates


def _cases(pki: Pki) -> list[tuple[str, str | None, list[tuple[bytes, bytes]], x509.Certificate | None]]:
    leaf, leaf2 = pki.leaf, pki.leaf2
    spaced = pem(leaf).replace("\n", " ").encode()
    return [
        ("client-cert from IPv4", "10.0.0.1", [(b"client-cert", sf_binary(leaf))], leaf),
        ("client-cert with params", "10.0.0.1", [(b"client-cert", b"  " + sf_binary(leaf) + b";x=1 ")], leaf),
        (
            "client-cert unpadded",
            "10.0.0.1",
            [(b"client-cert", b":" + base64.b64encode(der(leaf)).rstrip(b"=") + b":")],
            leaf,
        ),
        ("header names any case", "10.0.0.1", [(b"Client-Cert", sf_binary(leaf))], leaf),
        (
            "xfcc from CIDR",
            "192.168.4.5",
            [(b"x-forwarded-client-cert", f"By=spiffe://e;{xfcc_cert(leaf)}".encode())],
            leaf,
        ),
        ("x-ssl escaped from IPv6", "2001:db8::7", [(b"x-ssl-client-cert", escaped(leaf))], leaf),
        ("x-ssl raw PEM with spaces", "::1", [(b"x-ssl-client-cert", spaced)], leaf),
        ("x-ssl tab-folded PEM", "::1", [(b"x-ssl-client-cert", pem(leaf).replace("\n", "\n\t").encode()[:-1])], leaf),
        ("x-ssl bare base64 DER", "::1", [(b"x-ssl-client-cert", base64.b64encode(der(leaf)))], leaf),
        ("x-ssl two certs: the first", "::1", [(b"x-ssl-client-cert", (pem(leaf2) + pem(leaf)).encode())], leaf2),
        ("dual-stack IPv4 peer", "::ffff:192.168.1.1", [(b"client-cert", sf_binary(leaf))], leaf),
        ("untrusted IPv4 ignored", "10.0.0.2", [(b"client-cert", sf_binary(leaf))], None),
        ("untrusted IPv6 ignored", "2001:db9::1", [(b"x-ssl-client-cert", escaped(leaf))], None),
        ("untrusted malformed ignored", "8.8.8.8", [(b"client-cert", b"garbage")], None),
        ("no peer", None, [(b"client-cert", sf_binary(leaf))], None),
        ("no header", "10.0.0.1", [(b"user-agent", b"x")], None),
        ("empty header is absent", "10.0.0.1", [(b"client-cert", b" ")], None),
        (
            "several xfcc elements: the last, the nearest proxy's",
            "10.0.0.1",
            [
                (
                    b"x-forwarded-client-cert",
                    (
                        'By=spiffe://a;Hash=00ff;Subject="CN=x,O=y;z";URI=spiffe://b,'
                        f"By=spiffe://c;{xfcc_cert(leaf2)};DNS=a;DNS=b,{xfcc_cert(leaf)}"
                    ).encode(),
                )
            ],
            leaf,
        ),
        (
            "xfcc: a client's element before the proxy's without Cert gives none",
            "10.0.0.1",
            [(b"x-forwarded-client-cert", f"{xfcc_cert(leaf2)},By=spiffe://edge;Hash=1".encode())],
            None,
        ),
        (
            "repeated xfcc headers are one list",
            "10.0.0.1",
            [(b"x-forwarded-client-cert", b"By=a;Hash=1"), (b"x-forwarded-client-cert", xfcc_cert(leaf).encode())],
            leaf,
        ),
        ("xfcc without Cert", "10.0.0.1", [(b"x-forwarded-client-cert", b'By=a;Hash=1;Cert=""')], None),
        (
            "only the configured header: another one sent by the client is ignored",
            "10.0.0.1",
            [(b"x-ssl-client-cert", escaped(leaf2)), (b"client-cert", sf_binary(leaf))],
            leaf2,
        ),
        (
            "the configured header absent: a client's own Client-Cert is not read",
            "10.0.0.1",
            [(b"x-ssl-client-cert", b""), (b"client-cert", sf_binary(leaf))],
            None,
        ),
    ]


@pytest.mark.parametrize("case", [c[0] for c in _cases(make_pki())])
def test_forwarded_certificates(pki, case):
    """The configured header (est.client_cert_header) is the case's first one; user-agent alone: the default."""
    [(_, peer, headers, expected)] = [c for c in _cases(pki) if c[0] == case]
    configured = headers[0][0].lower() if headers[0][0].lower() != b"user-agent" else b"client-cert"
    got = client_cert_from_forwarded(headers, peer, TRUSTED, configured)
    assert (der(got) if got else None) == (der(expected) if expected else None), case


@pytest.mark.parametrize(
    ("header", "value", "reason"),
    [
        (b"client-cert", b"QUJD", "not a structured-field byte sequence"),
        (b"client-cert", b":QUJD", "not a structured-field byte sequence"),
        (b"client-cert", b":!!!!:", "not a structured-field byte sequence"),
        (b"client-cert", b":QUJD:x", "not a structured-field byte sequence"),
        (b"client-cert", b":QUJDR:", "invalid base64"),
        (b"client-cert", b":QU=JD:", "invalid base64"),
        (b"client-cert", b":QUJD:", "not a DER certificate"),
        (b"client-cert", b"::", "not a DER certificate"),
        (b"x-forwarded-client-cert", b'By=a;Cert="abc', "unterminated quoted value"),
        (b"x-forwarded-client-cert", b"By=a;garbage", "'garbage' is not Key=Value"),
        (b"x-forwarded-client-cert", b"=x", "empty key"),
        (b"x-forwarded-client-cert", b'Cert="-----BEGIN CERTIFICATE-----MIIB"', "no complete PEM CERTIFICATE block"),
        (b"x-forwarded-client-cert", b"Cert=QUJD", "not a DER certificate"),
        (b"x-ssl-client-cert", b"-----BEGIN CERTIFICATE-----%0AMIIB", "no complete PEM CERTIFICATE block"),
        (b"x-ssl-client-cert", b"-----BEGIN PRIVATE KEY-----x-----END PRIVATE KEY-----", "no complete PEM"),
        (b"x-ssl-client-cert", b"%ZZ", "invalid base64"),
        (b"x-ssl-client-cert", b"%C3%28", "invalid URL encoding"),
        (b"x-ssl-client-cert", "é".encode(), "invalid base64"),
        (b"x-ssl-client-cert", b"-----BEGIN CERTIFICATE----- -----END CERTIFICATE-----", "empty certificate"),
        (b"x-ssl-client-cert", b"A" * 70000, "too long"),
    ],
)
def test_malformed_forwarded_headers_from_a_trusted_proxy(header, value, reason):
    with pytest.raises(ForwardedCertError) as info:
        client_cert_from_forwarded([(header, value)], "10.0.0.1", TRUSTED, header)
    assert info.value.header == header.decode()
    assert reason in info.value.reason
    assert str(info.value).startswith(f"{header.decode()}: ")
    assert isinstance(info.value, ValueError)


def test_repeated_single_headers_are_malformed(pki):
    for name in (b"client-cert", b"x-ssl-client-cert"):
        value = sf_binary(pki.leaf) if name == b"client-cert" else escaped(pki.leaf)
        with pytest.raises(ForwardedCertError, match="repeated header"):
            client_cert_from_forwarded([(name, value), (name, value)], "::1", TRUSTED, name)


def test_a_malformed_configured_header_does_not_fall_through_to_another(pki):
    headers = [(b"client-cert", b"nope"), (b"x-ssl-client-cert", escaped(pki.leaf))]
    with pytest.raises(ForwardedCertError, match="client-cert"):
        client_cert_from_forwarded(headers, "10.0.0.1", TRUSTED, b"client-cert")


def test_xfcc_elements():
    assert xfcc_elements('By=a;Subject="C=x, O=\\"q\\";y";URI=u,HASH=h ; dns=1;DNS=2,,') == [
        {"by": "a", "subject": 'C=x, O="q";y', "uri": "u"},
        {"hash": "h", "dns": "1"},
    ]
    assert xfcc_elements("") == []


def test_real_tls_certificate_wins(pki):
    forwarded = pki.leaf2
    assert der(choose_client_cert(der(pki.leaf), forwarded)) == der(pki.leaf)
    assert choose_client_cert(None, forwarded) is forwarded
    assert choose_client_cert(b"", forwarded) is forwarded
    assert choose_client_cert(None, None) is None
    assert choose_client_cert(b"\x30\x03\x02\x01\x01", forwarded) is None  # unreadable TLS cert: still no fallback


def test_tls_extension_pem_to_der(pki):
    """The edge takes the handshake certificate's DER from the ASGI TLS extension's PEM."""
    from edge.est import _pem_to_der

    assert _pem_to_der(ssl.DER_cert_to_PEM_cert(der(pki.leaf))) == der(pki.leaf)
    unreadable = _pem_to_der("-----BEGIN CERTIFICATE-----\nnot base64\n")
    assert choose_client_cert(unreadable, pki.leaf2) is None  # never the forwarded one instead


# ------------------------------------------------------------------ HTTP Basic


def basic(user: str | bytes, password: str | bytes, scheme: bytes = b"Basic") -> bytes:
    u = user.encode() if isinstance(user, str) else user
    p = password.encode() if isinstance(password, str) else password
    return scheme + b" " + base64.b64encode(u + b":" + p)


@pytest.fixture(scope="module")
def users() -> dict[tuple[str, str], EstUserRecord]:
    records = [
        EstUserRecord("ca1", "alice", CHEAP.hash("correct horse")),
        EstUserRecord("ca1", "jürgen", CHEAP.hash("pä:ss")),
        EstUserRecord("ca2", "bob", CHEAP.hash("b")),
        EstUserRecord("ca1", "broken", "not-a-hash"),
        EstUserRecord("ca1", "broken2", "$argon2id$v=19$m=8,t=1,p=1$garbage"),
        EstUserRecord("ca1", "liar", CHEAP.hash("x")),  # stored under another name, see lookup
    ]
    return {(r.label, r.name): r for r in records}


@pytest.mark.parametrize(
    ("header", "label", "expected"),
    [
        (basic("alice", "correct horse"), "ca1", "alice"),
        (basic("alice", "correct horse", b"basic"), "ca1", "alice"),
        (basic("alice", "correct horse", b"BASIC  "), "ca1", "alice"),
        (basic("alice", "correct horse").rstrip(b"="), "ca1", "alice"),
        (basic("jürgen", "pä:ss"), "ca1", "jürgen"),
        (basic("alice", "correct horse"), "ca2", None),
        (basic("alice", "wrong"), "ca1", None),
        (basic("alice", ""), "ca1", None),
        (basic("nobody", "x"), "ca1", None),
        (basic("bob", "b"), "ca2", "bob"),
        (basic("broken", "x"), "ca1", None),
        (basic("broken2", "x"), "ca1", None),
        (basic("impostor", "x"), "ca1", None),
        (basic(b"\xff", "x"), "ca1", None),
        (basic("", "x"), "ca1", None),
        (b"Basic " + base64.b64encode(b"alice"), "ca1", None),
        (b"Bearer " + base64.b64encode(b"alice:correct horse"), "ca1", None),
        (b"Basic", "ca1", None),
        (b"Basic ", "ca1", None),
        (b"", "ca1", None),
        (b"Basic !!!!", "ca1", None),
        (b"Basic YWxp Y2U6eA==", "ca1", None),
        (b"Basic YWxpY2U6eA=", "ca1", None),
        (b"Basic \xff\xfe", "ca1", None),
        (b"Basic " + b"A" * 5000, "ca1", None),
    ],
)
def test_verify_basic(users, header, label, expected):
    def lookup(lbl: str, name: str) -> EstUserRecord | None:
        if name == "impostor":
            return users[("ca1", "liar")]  # a lookup returning another user's record is not trusted
        return users.get((lbl, name))

    assert verify_basic(header, label, lookup, CHEAP) == expected


def test_parse_basic():
    assert parse_basic(basic("a", "b:c")) == ("a", b"b:c")
    assert parse_basic(b"Basic\t" + base64.b64encode(b"a:")) == ("a", b"")
    assert parse_basic(b"Digest x") is None


def test_verify_basic_errors_of_the_store_propagate():
    def failing(label: str, name: str) -> EstUserRecord | None:
        raise OSError("store gone")

    with pytest.raises(OSError):
        verify_basic(basic("a", "b"), "ca1", failing, CHEAP)
    assert verify_basic(b"garbage", "ca1", failing, CHEAP) is None  # never looked up


# ------------------------------------------------------------------ store readers


def source(e) -> LmdbSource:
    """The edge's seam over this environment (the store readers live there)."""
    return LmdbSource(lambda: e, logging.getLogger("test"))


@pytest.fixture
def env(tmp_path: Path):
    e = store.open_env(tmp_path, readonly=False, map_size=16 << 20)
    yield e, store.open_dbs(e, readonly=False)
    e.close()


def test_lookup_user(env):
    e, dbs = env
    record = EstUserRecord("ca1", "alice", CHEAP.hash("pw"), 5)
    with e.begin(write=True, db=dbs[store.DB_EST_USERS]) as txn:
        txn.put(store.est_user_key("ca1", "alice"), store.EST_USER_ENCODER.encode(record))
    lookup = source(e).est_user
    assert lookup("ca1", "alice") == record
    assert lookup("ca2", "alice") is None
    assert lookup("ca1", "bob") is None
    assert lookup("ca1", "x" * 2000) is None  # longer than LMDB's key limit: no error
    assert lookup("ca1\x00alice", "") is None
    assert lookup("ca1", "\udc80") is None
    assert verify_basic(basic("alice", "pw"), "ca1", lookup, CHEAP) == "alice"


def test_read_ras(env, pki):
    e, dbs = env
    ras = [RaRecord("b", der(pki.leaf), ["ca1"]), RaRecord("a", der(pki.leaf2), ["ca2"], 7)]
    assert source(e).registration_authorities() == []
    with e.begin(write=True, db=dbs[store.DB_RAS]) as txn:
        for ra in ras:
            txn.put(ra.name.encode(), store.RA_ENCODER.encode(ra))
    assert source(e).registration_authorities() == [ras[1], ras[0]]


def test_ras_are_read_once_per_registry_generation(env, pki):
    """Not once per request: `ra add` and `ra remove` bump the registry generation, and that is what
    makes the edge read them again (the EST path then rebuilds its directory, not per request)."""
    e, dbs = env
    src = source(e)
    before = src.registration_authorities()
    assert src.registration_authorities() is before
    ra = RaRecord("a", der(pki.leaf), ["ca1"])
    with e.begin(write=True) as txn:
        txn.put(b"a", store.RA_ENCODER.encode(ra), db=dbs[store.DB_RAS])
    assert src.registration_authorities() is before == []  # written without a bump: not seen yet
    with e.begin(write=True) as txn:
        txn.put(store.META_REGISTRY_GENERATION, store.pack_u64(1), db=dbs[store.DB_META])
    assert src.registration_authorities() == [ra]


def test_revocation_lookup(env, pki):
    e, dbs = env
    issuer = IssuerRecord(number=3, name="ca", cert_der=der(pki.ca), signing="ca")
    with e.begin(write=True) as txn:
        txn.put(b"ca", store.ISSUER_ENCODER.encode(issuer), db=dbs[store.DB_ISSUERS])
        revoked = CertRecord(2000000000, revoked_at=1700000000, reason=1)
        txn.put(
            store.inventory_key(3, store.serial_key(pki.leaf.serial_number)),
            store.CERT_ENCODER.encode(revoked),
            db=dbs[store.DB_INVENTORY],
        )
    with e.begin(write=True) as txn:  # the source reloads its issuers when the generation changes
        txn.put(store.META_REGISTRY_GENERATION, store.pack_u64(1), db=dbs[store.DB_META])
    is_revoked = source(e).is_revoked
    assert is_revoked(pki.leaf) is True
    assert is_revoked(pki.leaf2) is False  # not in the inventory
    other = make_pki()  # same names, other keys: the signature does not verify
    assert is_revoked(other.leaf) is False
    with e.begin(write=True) as txn:
        good = CertRecord(2000000000)
        key = store.inventory_key(3, store.serial_key(pki.leaf2.serial_number))
        txn.put(key, store.CERT_ENCODER.encode(good), db=dbs[store.DB_INVENTORY])
    assert is_revoked(pki.leaf2) is False
    # The source remembers which CA issued a certificate it has seen, never its status.
    with e.begin(write=True) as txn:
        later = CertRecord(2000000000, revoked_at=1700000100, reason=1)
        txn.put(key, store.CERT_ENCODER.encode(later), db=dbs[store.DB_INVENTORY])
    assert is_revoked(pki.leaf2) is True
    # A registry without that CA: nothing it issued counts as revoked any more.
    with e.begin(write=True) as txn:
        txn.delete(b"ca", db=dbs[store.DB_ISSUERS])
        txn.put(store.META_REGISTRY_GENERATION, store.pack_u64(2), db=dbs[store.DB_META])
    assert is_revoked(pki.leaf2) is False


# ------------------------------------------------------------------ RA directory

IN_VALIDITY = dt.datetime(2025, 6, 1, tzinfo=dt.UTC)  # the test PKI is valid 2024-01-01 + 3650 days


def never(cert: x509.Certificate) -> bool:
    return False


def always(cert: x509.Certificate) -> bool:
    return True


@pytest.mark.parametrize(
    ("who", "label", "now", "is_revoked", "expected"),
    [
        ("leaf", "ca1", IN_VALIDITY, never, RaDecision(True, True, "ra1")),
        ("leaf", "ca2", IN_VALIDITY, never, RaDecision(True, True, "ra1")),
        (
            "leaf",
            "ca3",
            IN_VALIDITY,
            never,
            RaDecision(True, False, "ra1", "RA ra1 may not enroll for 'ca3' (only ca1, ca2)"),
        ),
        ("leaf2", "ca3", IN_VALIDITY, never, RaDecision(True, True, "ra2")),
        (
            "ca",
            "ca1",
            IN_VALIDITY,
            always,
            RaDecision(False, False, None, "the certificate is not a registered RA certificate"),
        ),
        (
            "leaf",
            "ca1",
            dt.datetime(2023, 12, 31, 23, 59, 59, tzinfo=dt.UTC),
            never,
            RaDecision(False, False, "ra1", "RA ra1: certificate not valid yet"),
        ),
        ("leaf", "ca1", dt.datetime(2024, 1, 1, tzinfo=dt.UTC), never, RaDecision(True, True, "ra1")),
        (
            "leaf",
            "ca1",
            dt.datetime(2034, 1, 1, tzinfo=dt.UTC),
            never,
            RaDecision(False, False, "ra1", "RA ra1: certificate expired"),
        ),
        ("leaf", "ca1", IN_VALIDITY, always, RaDecision(False, False, "ra1", "RA ra1: certificate revoked")),
        ("leaf", "ca3", IN_VALIDITY, always, RaDecision(False, False, "ra1", "RA ra1: certificate revoked")),
    ],
)
def test_ra_directory(pki, who, label, now, is_revoked, expected):
    directory = RaDirectory(
        [
            RaRecord("ra1", der(pki.leaf), ["ca1", "ca2"]),
            RaRecord("ra2", der(pki.leaf2), ["ca3"]),
            RaRecord("ra1-again", der(pki.leaf), ["ca3"]),  # same certificate twice: the first record counts
        ]
    )
    assert len(directory) == 2
    assert directory.authorise(getattr(pki, who), label, now, is_revoked) == expected


def test_ra_directory_matches_exact_der_and_asks_revocation_only_for_rAs(pki):
    calls: list[int] = []

    def spy(cert: x509.Certificate) -> bool:
        calls.append(cert.serial_number)
        return False

    directory = RaDirectory([RaRecord("ra1", der(pki.leaf), ["ca1"])])
    other = make_pki()  # same subject, serial and validity, different key and signature
    assert other.leaf.serial_number == pki.leaf.serial_number
    assert not directory.authorise(other.leaf, "ca1", IN_VALIDITY, spy).authenticated
    assert not directory.authorise(pki.leaf, "ca1", dt.datetime(2040, 1, 1, tzinfo=dt.UTC), spy).authenticated
    assert calls == []
    assert directory.authorise(pki.leaf, "ca1", IN_VALIDITY, spy).authorised
    assert calls == [pki.leaf.serial_number]
    assert len(RaDirectory([])) == 0
