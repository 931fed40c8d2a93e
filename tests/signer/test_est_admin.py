"""EST authentication records on the signer side (signer.est_admin) and their CLI (signer.cli_est)."""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import io
import logging
from pathlib import Path

import pytest
from argon2 import PasswordHasher
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from contract import store
from contract.config import Config
from edge.est_auth import verify_basic
from edge.source import LmdbSource
from signer import cli_est
from signer.est_admin import (
    add_est_user,
    add_ra,
    list_est_users,
    list_ras,
    remove_est_user,
    remove_ra,
)
from signer.inventory import revoke
from signer.issue import issue_certificate
from signer.registry import create_ca, load_ca_key
from signer.state import SignerError, SignerStore
from tests.signer.conftest import build_ca, build_delegate, build_leaf, pem, pool_key

NOW = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)
CHEAP = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def basic(user: str, password: str) -> bytes:
    return b"Basic " + base64.b64encode(f"{user}:{password}".encode())


@pytest.fixture
def cas(st: SignerStore) -> tuple[store.IssuerRecord, store.IssuerRecord]:
    return (
        create_ca(st, "ca1", "ec-p256", 3650, None, None, NOW),
        create_ca(st, "ca2", "ec-p256", 3650, None, None, NOW),
    )


def ra_cert(st: SignerStore, issuer: store.IssuerRecord, cn: str = "ra1", days: int = 365) -> x509.Certificate:
    cert, _ = issue_certificate(st, issuer, cn, [], "ec-p256", days, NOW)
    return cert


# ------------------------------------------------------------------ RAs


def test_add_list_remove_ra(st, cas):
    ca1, _ = cas
    cert = ra_cert(st, ca1)
    generation = st.registry_generation()
    record, issuer = add_ra(st, "ra-1.x_y", pem(cert), ["ca1", "ca2", "ca1"], NOW)
    assert issuer == ca1
    assert record == store.RaRecord("ra-1.x_y", der(cert), ["ca1", "ca2"], int(NOW.timestamp()))
    assert list_ras(st) == [record]
    assert st.registry_generation() == generation + 1  # the edge reloads its RA directory
    assert LmdbSource(lambda: st.env, logging.getLogger("t")).registration_authorities() == [record]

    assert remove_ra(st, "ra-1.x_y") == record
    assert list_ras(st) == []
    assert st.registry_generation() == generation + 2
    with pytest.raises(SignerError, match=r"unknown RA 'ra-1.x_y' \(known: none\)"):
        remove_ra(st, "ra-1.x_y")


def test_ra_accepts_der_and_lists_in_name_order(st, cas):
    ca1, ca2 = cas
    add_ra(st, "zed", der(ra_cert(st, ca2, "z")), ["ca2"], NOW)
    add_ra(st, "alpha", pem(ra_cert(st, ca1, "a")), ["ca1"], NOW)
    assert [r.name for r in list_ras(st)] == ["alpha", "zed"]
    with pytest.raises(SignerError, match=r"unknown RA 'beta' \(known: alpha, zed\)"):
        remove_ra(st, "beta")


def test_ra_issued_by_a_trust_anchor(st, cas):
    anchor_key = pool_key("ec-p256", 1)
    anchor = build_ca(anchor_key, "Outside Root", NOW - dt.timedelta(days=1), NOW + dt.timedelta(days=100))
    cert = build_leaf(anchor, anchor_key, 7, NOW - dt.timedelta(days=1), NOW + dt.timedelta(days=10), cn="ra")
    with pytest.raises(SignerError, match="not issued by a CA of the registry"):
        add_ra(st, "outside", pem(cert), ["ca1"], NOW)
    record, issuer = add_ra(st, "outside", pem(cert), ["ca1"], NOW, anchors=[anchor])
    assert issuer == anchor and record.cas == ["ca1"]


def _foreign(st: SignerStore) -> bytes:
    key = pool_key("ec-p256", 2)
    other = build_ca(key, "ca1", NOW - dt.timedelta(days=1), NOW + dt.timedelta(days=100))  # same name, other key
    return pem(build_leaf(other, key, 9, NOW - dt.timedelta(days=1), NOW + dt.timedelta(days=10)))


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("foreign", r"not issued by a CA of the registry \(checked: ca1, ca2\)"),
        ("expired", r"has expired \(notAfter 2027-03-01T11:55:00Z\)"),
        ("not yet valid", r"not valid yet \(notBefore 2026-03-01T11:55:00Z\)"),
        ("revoked", r"serial [0-9A-F]+\) was revoked by CA 'ca1' at 2026-03-01T12:00:00Z"),
        ("unknown cas", r"unknown CAs 'nope', 'zap' in --cas \(known: ca1, ca2\)"),
        ("no cas", r"give at least one CA"),
        ("garbage", r"--cert: not an X.509 certificate"),
        ("bad name", r"invalid RA name 'a b'"),
        ("long name", r"invalid RA name"),
        ("empty name", r"invalid RA name ''"),
        ("the CA itself", r"the RA certificate is a CA certificate: an RA presents an end-entity certificate"),
        ("server only", r"extendedKeyUsage has no clientAuth: it cannot authenticate a TLS client"),
    ],
)
def test_add_ra_refusals(st, cas, case, message):
    ca1, _ = cas
    cert = ra_cert(st, ca1)
    name, data, wanted, now = "ra", pem(cert), ["ca1"], NOW
    if case == "foreign":
        data = _foreign(st)
    elif case == "expired":
        now = NOW + dt.timedelta(days=366)
    elif case == "not yet valid":
        now = NOW - dt.timedelta(minutes=6)
    elif case == "revoked":
        revoke(st, ca1, cert.serial_number, 1, int(NOW.timestamp()))
    elif case == "unknown cas":
        wanted = ["ca1", "nope", "zap", "nope"]
    elif case == "no cas":
        wanted = [" ", ""]
    elif case == "garbage":
        data = b"-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n"
    elif case == "bad name":
        name = "a b"
    elif case == "long name":
        name = "a" * 65
    elif case == "empty name":
        name = ""
    elif case == "the CA itself":
        data = ca1.cert_der
    elif case == "server only":
        ca = x509.load_der_x509_certificate(ca1.cert_der)
        key = load_ca_key(st.data_dir, ca1)
        data = pem(
            build_delegate(
                ca,
                key,
                pool_key("ec-p256", 3),
                NOW - dt.timedelta(days=1),
                NOW + dt.timedelta(days=9),
                eku=[ExtendedKeyUsageOID.SERVER_AUTH],
            )
        )
    with pytest.raises(SignerError, match=message):
        add_ra(st, name, data, wanted, now)
    assert list_ras(st) == []


def test_ra_validity_edges_are_inclusive(st, cas):
    cert = ra_cert(st, cas[0])
    add_ra(st, "first", pem(cert), ["ca1"], cert.not_valid_before_utc)
    remove_ra(st, "first")
    add_ra(st, "last", pem(cert), ["ca1"], cert.not_valid_after_utc)


def test_ra_duplicates_refused(st, cas):
    ca1, _ = cas
    cert = ra_cert(st, ca1)
    add_ra(st, "ra", pem(cert), ["ca1"], NOW)
    with pytest.raises(SignerError, match="RA 'ra' already exists"):
        add_ra(st, "ra", pem(ra_cert(st, ca1, "other")), ["ca1"], NOW)
    with pytest.raises(SignerError, match="already registered as RA 'ra'"):
        add_ra(st, "ra2", pem(cert), ["ca2"], NOW)
    assert [r.name for r in list_ras(st)] == ["ra"]


# ------------------------------------------------------------------ EST users


def test_add_user_hash_at_rest_and_verify(st, cas):
    record, replaced = add_est_user(st, "ca1", "device-maker", "s3cret: with colon", NOW, CHEAP)
    assert not replaced
    assert record.password_hash.startswith("$argon2id$")
    assert "s3cret" not in record.password_hash
    assert list_est_users(st) == [record]

    db = st.env.open_db(store.DB_EST_USERS)
    with st.env.begin(db=db) as txn:
        raw = txn.get(store.est_user_key("ca1", "device-maker"))
    assert store.EST_USER_DECODER.decode(raw).password_hash.startswith("$argon2id$")

    lookup = LmdbSource(lambda: st.env, logging.getLogger("t")).est_user
    assert verify_basic(basic("device-maker", "s3cret: with colon"), "ca1", lookup, CHEAP) == "device-maker"
    assert verify_basic(basic("device-maker", "wrong"), "ca1", lookup, CHEAP) is None
    assert verify_basic(basic("device-maker", "s3cret: with colon"), "ca2", lookup, CHEAP) is None
    assert verify_basic(basic("nobody", "s3cret: with colon"), "ca1", lookup, CHEAP) is None
    for garbage in (b"", b"Basic", b"Basic !!!", b"Bearer abc", b"Basic " + base64.b64encode(b"no colon")):
        assert verify_basic(garbage, "ca1", lookup, CHEAP) is None


def test_default_hasher_is_argon2id_with_library_defaults(st, cas):
    record, _ = add_est_user(st, "ca1", "u", "pw", NOW)
    assert record.password_hash.startswith("$argon2id$v=19$m=65536,t=3,p=4$")
    assert verify_basic(basic("u", "pw"), "ca1", LmdbSource(lambda: st.env, logging.getLogger("t")).est_user) == "u"


def test_readding_a_user_replaces_the_password(st, cas):
    first, _ = add_est_user(st, "ca1", "u", "old", NOW, CHEAP)
    second, replaced = add_est_user(st, "ca1", "u", "new", NOW + dt.timedelta(hours=1), CHEAP)
    assert replaced and second.password_hash != first.password_hash
    assert list_est_users(st) == [second]
    lookup = LmdbSource(lambda: st.env, logging.getLogger("t")).est_user
    assert verify_basic(basic("u", "new"), "ca1", lookup, CHEAP) == "u"
    assert verify_basic(basic("u", "old"), "ca1", lookup, CHEAP) is None


def test_users_per_label_list_and_remove(st, cas):
    a, _ = add_est_user(st, "ca2", "a", "pw", NOW, CHEAP)
    b, _ = add_est_user(st, "ca1", "b", "pw", NOW, CHEAP)
    c, _ = add_est_user(st, "ca1", "a", "pw", NOW, CHEAP)
    assert list_est_users(st) == [c, b, a]
    assert list_est_users(st, "ca1") == [c, b]
    assert list_est_users(st, "ca2") == [a]
    with pytest.raises(SignerError, match="unknown EST label 'ca'"):  # a prefix of ca1 and ca2 matches neither
        list_est_users(st, "ca")
    assert remove_est_user(st, "ca1", "a") == c
    assert list_est_users(st) == [b, a]
    with pytest.raises(SignerError, match="unknown EST user 'a' for 'ca1'"):
        remove_est_user(st, "ca1", "a")
    with pytest.raises(SignerError, match="unknown EST user"):
        remove_est_user(st, "ca1", "x" * 600)


@pytest.mark.parametrize(
    ("label", "name", "password", "message"),
    [
        ("nope", "u", "pw", r"unknown EST label 'nope': a label is a CA of the registry \(known: ca1, ca2\)"),
        ("ca1", "a:b", "pw", "invalid EST user name"),
        ("ca1", "", "pw", "invalid EST user name"),
        ("ca1", "a\x00b", "pw", "invalid EST user name"),
        ("ca1", "a\nb", "pw", "invalid EST user name"),
        ("ca1", "x" * 129, "pw", "invalid EST user name"),
        ("ca1", "u", "", "the password is empty"),
    ],
)
def test_add_user_refusals(st, cas, label, name, password, message):
    with pytest.raises(SignerError, match=message):
        add_est_user(st, label, name, password, NOW, CHEAP)
    assert list_est_users(st) == []


def test_only_argon2id(st, cas):
    from argon2 import Type

    with pytest.raises(SignerError, match="argon2id"):
        add_est_user(st, "ca1", "u", "pw", NOW, PasswordHasher(time_cost=1, memory_cost=8, parallelism=1, type=Type.I))


# ------------------------------------------------------------------ CLI


def build_parser() -> argparse.ArgumentParser:
    """The pattern of signer.cli.build_parser, with only this module's commands."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data", default=argparse.SUPPRESS)
    parser = argparse.ArgumentParser(prog="pki-edge", parents=[common])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    cli_est.register(sub, common)
    return parser


def stdin(text: str) -> io.TextIOWrapper:
    """Standard input as the CLI reads it (a password is read from its bytes)."""
    return io.TextIOWrapper(io.BytesIO(text.encode()), encoding="utf-8")


class Terminal(io.TextIOWrapper):
    def __init__(self, text: str) -> None:
        super().__init__(io.BytesIO(text.encode()), encoding="utf-8")

    def isatty(self) -> bool:
        return True


@pytest.fixture
def cli_dir(data_dir: Path, monkeypatch) -> Path:
    st = SignerStore(data_dir, Config())
    ca1 = create_ca(st, "ca1", "ec-p256", 3650, None, None, dt.datetime.now(dt.UTC))
    create_ca(st, "ca2", "ec-p256", 3650, None, None, dt.datetime.now(dt.UTC))
    cert, _ = issue_certificate(st, ca1, "ra", [], "ec-p256", 30, dt.datetime.now(dt.UTC))
    st.close()
    (data_dir / "ra.pem").write_bytes(pem(cert))
    monkeypatch.setattr(cli_est, "_hasher", lambda: CHEAP)
    monkeypatch.setattr("sys.stdin", stdin(""))
    return data_dir


def run(data_dir: Path, *argv: str) -> int:
    args = build_parser().parse_args([*argv, "--data", str(data_dir)])
    assert args.data == str(data_dir)
    return int(args.handler(args, data_dir, Config()))


def test_cli_ra(cli_dir, capsys):
    assert run(cli_dir, "ra", "add", "edge-ra", "--cert", str(cli_dir / "ra.pem"), "--cas", "ca1, ca2") == 0
    assert capsys.readouterr().out == "added RA edge-ra (certificate issued by CA ca1); may enroll for: ca1, ca2\n"
    assert run(cli_dir, "ra", "list") == 0
    line = capsys.readouterr().out
    assert line.startswith("edge-ra\tcas=ca1,ca2\tCN=ra\tserial=") and "\tnotAfter=" in line
    with pytest.raises(SignerError, match="already exists"):
        run(cli_dir, "ra", "add", "edge-ra", "--cert", str(cli_dir / "ra.pem"), "--cas", "ca1")
    with pytest.raises(SignerError, match="unknown CA 'ca9' in --cas"):
        run(cli_dir, "ra", "add", "other", "--cert", str(cli_dir / "ra.pem"), "--cas", "ca1,ca9")
    assert run(cli_dir, "ra", "remove", "edge-ra") == 0
    assert capsys.readouterr().out == "removed RA edge-ra\n"
    assert run(cli_dir, "ra", "list") == 0
    assert capsys.readouterr().out == ""
    with pytest.raises(SignerError, match="unknown RA 'edge-ra'"):
        run(cli_dir, "ra", "remove", "edge-ra")


def test_cli_ra_add_needs_cert_and_cas(cli_dir, capsys):
    with pytest.raises(SystemExit):
        run(cli_dir, "ra", "add", "x", "--cert", str(cli_dir / "ra.pem"))
    assert "--cas" in capsys.readouterr().err
    with pytest.raises(OSError):
        run(cli_dir, "ra", "add", "x", "--cert", str(cli_dir / "missing.pem"), "--cas", "ca1")


def test_cli_est_users(cli_dir, capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", Terminal("pw one\nignored\n"))
    assert run(cli_dir, "est", "user", "add", "ca1", "alice", "--password-stdin") == 0
    assert capsys.readouterr().out == "added EST user alice for ca1\n"
    monkeypatch.setattr("sys.stdin", stdin("pw two\r\n"))  # not a terminal: stdin without the flag
    assert run(cli_dir, "est", "user", "add", "ca1", "alice") == 0
    assert capsys.readouterr().out == "replaced the password of EST user alice for ca1\n"
    monkeypatch.setattr("sys.stdin", stdin("pw\n"))
    assert run(cli_dir, "est", "user", "add", "ca2", "bob", "--password-stdin") == 0
    capsys.readouterr()

    assert run(cli_dir, "est", "user", "list") == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[:2] for line in lines] == [["ca1", "alice"], ["ca2", "bob"]]
    assert all(line.split("\t")[2].startswith("added=20") for line in lines)
    assert run(cli_dir, "est", "user", "list", "ca2") == 0
    assert capsys.readouterr().out.startswith("ca2\tbob\t")

    st = SignerStore(cli_dir, Config())
    try:
        lookup = LmdbSource(lambda: st.env, logging.getLogger("t")).est_user
        assert verify_basic(basic("alice", "pw two"), "ca1", lookup, CHEAP) == "alice"
        assert verify_basic(basic("alice", "pw one"), "ca1", lookup, CHEAP) is None
    finally:
        st.close()

    assert run(cli_dir, "est", "user", "remove", "ca1", "alice") == 0
    assert capsys.readouterr().out == "removed EST user alice for ca1\n"
    with pytest.raises(SignerError, match="unknown EST user 'alice' for 'ca1'"):
        run(cli_dir, "est", "user", "remove", "ca1", "alice")


def test_cli_password_from_terminal(cli_dir, capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", Terminal(""))
    answers = iter(["typed", "typed", "one", "two"])
    prompts: list[str] = []

    def fake_getpass(prompt: str = "") -> str:
        prompts.append(prompt)
        return next(answers)

    monkeypatch.setattr(cli_est.getpass, "getpass", fake_getpass)
    assert run(cli_dir, "est", "user", "add", "ca1", "carol") == 0
    assert prompts == ["Password for EST user carol (ca1): ", "Again: "]
    assert capsys.readouterr().out == "added EST user carol for ca1\n"
    with pytest.raises(SignerError, match="do not match"):
        run(cli_dir, "est", "user", "add", "ca1", "dave")
    monkeypatch.setattr(cli_est.getpass, "getpass", lambda prompt="": "")
    with pytest.raises(SignerError, match="empty"):
        run(cli_dir, "est", "user", "add", "ca1", "dave")

    def eof(prompt: str = "") -> str:
        raise EOFError

    monkeypatch.setattr(cli_est.getpass, "getpass", eof)
    with pytest.raises(SignerError, match="no password given"):
        run(cli_dir, "est", "user", "add", "ca1", "dave")
    assert run(cli_dir, "est", "user", "list") == 0
    [line] = capsys.readouterr().out.splitlines()  # only carol
    assert line.startswith("ca1\tcarol\tadded=")


def test_cli_user_refusals_before_reading_the_password(cli_dir, monkeypatch):
    given = stdin("secret\n")
    monkeypatch.setattr("sys.stdin", given)
    with pytest.raises(SignerError, match="unknown EST label 'nope'"):
        run(cli_dir, "est", "user", "add", "nope", "u", "--password-stdin")
    with pytest.raises(SignerError, match="invalid EST user name 'a:b'"):
        run(cli_dir, "est", "user", "add", "ca1", "a:b", "--password-stdin")
    assert given.buffer.tell() == 0
    monkeypatch.setattr("sys.stdin", stdin("\n"))
    with pytest.raises(SignerError, match="no password on standard input"):
        run(cli_dir, "est", "user", "add", "ca1", "u", "--password-stdin")
    monkeypatch.setattr("sys.stdin", stdin(""))
    with pytest.raises(SignerError, match="no password on standard input"):
        run(cli_dir, "est", "user", "add", "ca1", "u")


def test_cli_subcommands_are_required(cli_dir, capsys):
    for argv in (["ra"], ["est"], ["est", "user"]):
        with pytest.raises(SystemExit):
            build_parser().parse_args(argv)
    assert "SUBCOMMAND" in capsys.readouterr().err
