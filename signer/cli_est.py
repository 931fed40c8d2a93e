"""`pki-edge ra …` and `pki-edge est user …`: EST registration authorities and HTTP Basic users.

``register(sub, common)`` adds the commands to the main parser's subparsers (signer.cli).
"""

from __future__ import annotations

import argparse
import datetime as dt
import getpass
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from contract.config import Config
from signer.cli import open_store

if TYPE_CHECKING:
    from argon2 import PasswordHasher


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _iso(when: dt.datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def _hasher() -> PasswordHasher:
    """argon2id with argon2-cffi's defaults (a seam for tests, which use a cheap one)."""
    from argon2 import PasswordHasher

    return PasswordHasher()


def cmd_ra_add(args: argparse.Namespace, data_dir: Path, config: Config) -> int:
    from contract.store import IssuerRecord
    from signer.est_admin import add_ra
    from signer.state import SignerError

    cert_data = args.cert.read_bytes()
    cas = [c for c in args.cas.split(",") if c.strip()]
    anchors = []
    if config.est.ra_trust_anchors:  # RAs issued outside the registry, by these CAs
        from cryptography import x509

        try:
            anchors = x509.load_pem_x509_certificates(Path(config.est.ra_trust_anchors).read_bytes())
        except ValueError as exc:
            raise SignerError(f"est.ra_trust_anchors: {exc}") from None
    with open_store(data_dir, config) as st:
        record, issuer = add_ra(st, args.name, cert_data, cas, _now(), anchors)
    by = f"CA {issuer.name}" if isinstance(issuer, IssuerRecord) else f"trust anchor {issuer.subject.rfc4514_string()}"
    print(f"added RA {record.name} (certificate issued by {by}); may enroll for: {', '.join(record.cas)}")
    return 0


def cmd_ra_list(args: argparse.Namespace, data_dir: Path, config: Config) -> int:
    from cryptography import x509

    from signer.est_admin import list_ras

    with open_store(data_dir, config) as st:
        records = list_ras(st)
    for record in records:
        cert = x509.load_der_x509_certificate(record.cert_der)
        print(
            f"{record.name}\tcas={','.join(record.cas)}\t{cert.subject.rfc4514_string()}"
            f"\tserial={cert.serial_number:X}\tnotAfter={_iso(cert.not_valid_after_utc)}"
        )
    return 0


def cmd_ra_remove(args: argparse.Namespace, data_dir: Path, config: Config) -> int:
    from signer.est_admin import remove_ra

    with open_store(data_dir, config) as st:
        record = remove_ra(st, args.name)
    print(f"removed RA {record.name}")
    return 0


def read_password(from_stdin: bool, prompt: str) -> str:
    """One line of standard input (``--password-stdin`` or no terminal), else asked twice on the terminal."""
    from signer.est_admin import MAX_PASSWORD_BYTES
    from signer.state import SignerError

    if from_stdin or not sys.stdin.isatty():
        line = sys.stdin.buffer.readline(MAX_PASSWORD_BYTES + 3).removesuffix(b"\n").removesuffix(b"\r")
        if len(line) > MAX_PASSWORD_BYTES:
            raise SignerError(f"the password is longer than {MAX_PASSWORD_BYTES} bytes")
        try:
            password = line.decode("utf-8")
        except UnicodeDecodeError:
            raise SignerError("the password on standard input is not UTF-8 text") from None
        if not password:
            raise SignerError("no password on standard input (give it as one line)")
        return password
    try:
        first = getpass.getpass(prompt)
        second = getpass.getpass("Again: ")
    except EOFError:
        raise SignerError("no password given") from None
    if first != second:
        raise SignerError("the passwords do not match")
    if not first:
        raise SignerError("the password is empty")
    return first


def cmd_est_user_add(args: argparse.Namespace, data_dir: Path, config: Config) -> int:
    from signer.est_admin import add_est_user, check_est_user

    with open_store(data_dir, config) as st:
        check_est_user(st, args.label, args.name)  # before asking for a password
        password = read_password(args.password_stdin, f"Password for EST user {args.name} ({args.label}): ")
        record, replaced = add_est_user(st, args.label, args.name, password, _now(), _hasher())
    if replaced:
        print(f"replaced the password of EST user {record.name} for {record.label}")
    else:
        print(f"added EST user {record.name} for {record.label}")
    return 0


def cmd_est_user_list(args: argparse.Namespace, data_dir: Path, config: Config) -> int:
    from signer.est_admin import list_est_users

    with open_store(data_dir, config) as st:
        records = list_est_users(st, args.label)
    for record in records:
        print(f"{record.label}\t{record.name}\tadded={_iso(dt.datetime.fromtimestamp(record.added_at, dt.UTC))}")
    return 0


def cmd_est_user_remove(args: argparse.Namespace, data_dir: Path, config: Config) -> int:
    from signer.est_admin import remove_est_user

    with open_store(data_dir, config) as st:
        record = remove_est_user(st, args.label, args.name)
    print(f"removed EST user {record.name} for {record.label}")
    return 0


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add ``ra add|list|remove`` and ``est user add|list|remove`` to the main parser's subcommands."""
    ra = sub.add_parser("ra", help="manage EST registration authorities (RA certificates)", parents=[common])
    ra_sub = ra.add_subparsers(dest="ra_command", required=True, metavar="SUBCOMMAND")
    p = ra_sub.add_parser("add", help="register an RA certificate and the CAs it may enroll for", parents=[common])
    p.add_argument("name", help="a name for the RA: 1-64 letters, digits, '.', '_' or '-'")
    p.add_argument("--cert", type=Path, required=True, help="the RA certificate (PEM or DER), issued by a registry CA")
    p.add_argument("--cas", required=True, metavar="CA1,CA2", help="comma-separated CAs (EST labels) it may enroll for")
    p.set_defaults(handler=cmd_ra_add)
    p = ra_sub.add_parser("list", help="list the RAs", parents=[common])
    p.set_defaults(handler=cmd_ra_list)
    p = ra_sub.add_parser("remove", help="remove an RA", parents=[common])
    p.add_argument("name")
    p.set_defaults(handler=cmd_ra_remove)

    est = sub.add_parser("est", help="manage EST HTTP Basic users", parents=[common])
    est_sub = est.add_subparsers(dest="est_command", required=True, metavar="SUBCOMMAND")
    user = est_sub.add_parser("user", help="EST HTTP Basic users, per label (CA)", parents=[common])
    user_sub = user.add_subparsers(dest="est_user_command", required=True, metavar="SUBCOMMAND")
    p = user_sub.add_parser(
        "add", help="add a user, or replace its password (asked twice, or one line on stdin)", parents=[common]
    )
    p.add_argument("label", help="the CA (EST label) the user may enroll for")
    p.add_argument("name", help="the HTTP Basic user name (no ':')")
    p.add_argument("--password-stdin", action="store_true", help="read the password as one line from standard input")
    p.set_defaults(handler=cmd_est_user_add)
    p = user_sub.add_parser("list", help="list the users (of one label when given)", parents=[common])
    p.add_argument("label", nargs="?", help="only this label's users")
    p.set_defaults(handler=cmd_est_user_list)
    p = user_sub.add_parser("remove", help="remove a user", parents=[common])
    p.add_argument("label")
    p.add_argument("name")
    p.set_defaults(handler=cmd_est_user_remove)
