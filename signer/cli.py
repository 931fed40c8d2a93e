"""`pki-edge`: the command line. Each command imports only what it needs."""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

from contract.config import LOG_FORMAT, Config, ConfigError, data_dir_from, load_config
from signer.keys import KEY_TYPES

if TYPE_CHECKING:
    from contract.store import IssuerRecord
    from signer.state import SignerStore

Handler = Callable[[argparse.Namespace, Path, Config], int]


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def open_store(data_dir: Path, config: Config, *, create: bool = False) -> SignerStore:
    """The signer's store, imported only by the commands that need it (a CLI start stays light).

    Only the commands that add a CA create it: any other on a directory without one is a mistyped
    --data, which would otherwise leave an empty store behind and answer as if it were the real one.
    """
    from contract.store import store_path
    from signer.state import SignerError, SignerStore

    if not create and not store_path(data_dir).is_dir():
        raise SignerError(
            f"no pki-edge store in {data_dir}: give the right --data (or PKI_EDGE_DATA), or create a CA first"
            " (pki-edge ca create NAME)"
        )
    return SignerStore(data_dir, config)


def cmd_ca_create(args: argparse.Namespace, data_dir: Path, config: Config) -> int:
    from signer.registry import create_ca

    st = open_store(data_dir, config, create=True)
    now = _now()
    record = create_ca(st, args.name, args.key, args.days, args.parent, args.ocsp_url, now)
    print(f"created CA {record.name} (issuer #{record.number})")
    if args.parent is not None:
        _note_if_capped(st.issuer(args.parent), args.days, now)
    return 0


def _note_if_capped(issuer: IssuerRecord, days: int, now: dt.datetime) -> None:
    """A certificate never outlives the CA that issues it: say so when that cut the --days asked for."""
    from cryptography import x509

    ends = x509.load_der_x509_certificate(issuer.cert_der).not_valid_after_utc
    if ends < now + dt.timedelta(days=days):
        print(
            f"note: --days {days} would outlive CA {issuer.name}: the certificate ends with it, at {_iso(ends)}",
            file=sys.stderr,
        )


def _iso(when: dt.datetime) -> str:
    from signer.inventory import iso_time

    return iso_time(int(when.timestamp()))


def cmd_ca_add(args: argparse.Namespace, data_dir: Path, config: Config) -> int:
    from signer.registry import add_ca
    from signer.state import SignerError

    if args.key and (args.responder_cert or args.responder_key):
        raise SignerError("give either --key, or --responder-cert with --responder-key, not both")
    st = open_store(data_dir, config, create=True)
    record = add_ca(
        st,
        args.name,
        args.cert.read_bytes(),
        args.key.read_bytes() if args.key else None,
        args.responder_cert.read_bytes() if args.responder_cert else None,
        args.responder_key.read_bytes() if args.responder_key else None,
        args.ocsp_url,
        _now(),
    )
    how = "its own key" if record.signing == "ca" else "a delegated responder certificate"
    print(f"added CA {record.name} (issuer #{record.number}); OCSP signed with {how}")
    return 0


def cmd_ca_renew(args: argparse.Namespace, data_dir: Path, config: Config) -> int:
    from signer import registry

    st = open_store(data_dir, config)
    was = _not_after_text(st.issuer(args.name).cert_der)
    now = _now()
    record, renewed = registry.renew_ca(st, args.name, args.cert.read_bytes() if args.cert else None, args.days, now)
    ends = _iso(renewed.not_valid_after_utc)
    print(f"renewed CA {record.name}: its certificate ends at {ends} (was {was}), serial {renewed.serial_number:X}")
    if args.days is not None and renewed.not_valid_after_utc < now + dt.timedelta(days=args.days):
        print(f"note: --days {args.days} would outlive its issuing CA: the certificate ends with it", file=sys.stderr)
    return 0


def _not_after_text(cert_der: bytes) -> str:
    from cryptography import x509

    return _iso(x509.load_der_x509_certificate(cert_der).not_valid_after_utc)


def cmd_ca_responder(args: argparse.Namespace, data_dir: Path, config: Config) -> int:
    from cryptography import x509

    from signer import registry
    from signer.state import SignerError

    if not args.mint and (args.key is not None or args.days is not None):
        raise SignerError("--key and --days are for --mint")
    if args.responder_key is not None and args.responder_cert is None:
        raise SignerError("--responder-key goes with --responder-cert")
    st = open_store(data_dir, config)
    if args.remove:
        record = registry.remove_responder(st, args.name)
        print(f"CA {record.name}: OCSP signed with its own key again")
        return 0
    if args.mint:
        validity = int(config.signer.validity_hours * 3600)
        key_type = "ec-p256" if args.key is None else args.key
        days = 30 if args.days is None else args.days
        record = registry.mint_responder(st, args.name, key_type, days, _now(), validity)
    else:
        if args.responder_key is None:
            raise SignerError("--responder-cert needs --responder-key")
        record = registry.set_responder(
            st, args.name, args.responder_cert.read_bytes(), args.responder_key.read_bytes(), _now()
        )
    assert record.responder_cert_der is not None
    responder = x509.load_der_x509_certificate(record.responder_cert_der)
    renewal = "; the signer renews it at half its lifetime" if record.responder_minted else ""
    print(
        f"CA {record.name}: OCSP signed by the delegated responder {responder.subject.rfc4514_string()}, "
        f"valid until {responder.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}{renewal}"
    )
    return 0


def cmd_ca_list(args: argparse.Namespace, data_dir: Path, config: Config) -> int:
    from cryptography import x509

    for record in open_store(data_dir, config).issuers():
        cert = x509.load_der_x509_certificate(record.cert_der)
        signing: str = record.signing
        responder = ""
        if record.responder_cert_der is not None:
            signing = "delegate" if record.signing == "delegate" else "ca+delegate"
            until = x509.load_der_x509_certificate(record.responder_cert_der).not_valid_after_utc
            minted = ", minted" if record.responder_minted else ""
            responder = f"\tresponder notAfter={until:%Y-%m-%dT%H:%M:%SZ}{minted}"
        print(
            f"{record.name}\t#{record.number}\t{signing}\t{cert.subject.rfc4514_string()}"
            f"\tnotAfter={cert.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}\tocsp={record.ocsp_url or '-'}{responder}"
        )
    return 0


def cmd_ca_show(args: argparse.Namespace, data_dir: Path, config: Config) -> int:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    record = open_store(data_dir, config).issuer(args.name)
    sys.stdout.write(x509.load_der_x509_certificate(record.cert_der).public_bytes(Encoding.PEM).decode())
    return 0


def cmd_issue(args: argparse.Namespace, data_dir: Path, config: Config) -> int:
    from signer.issue import issue_to_directory

    st = open_store(data_dir, config)
    issuer, now = st.issuer(args.name), _now()
    cert_path, key_path = issue_to_directory(
        st, issuer, args.cn, args.san or [], args.key, args.days, args.out, now, args.ocsp_responder
    )
    print(f"{cert_path}\n{key_path}")
    _note_if_capped(issuer, args.days, now)
    _warn_if_ocsp_waits(st, issuer, now)
    return 0


def _warn_if_ocsp_waits(st: SignerStore, issuer: IssuerRecord, now: dt.datetime) -> None:
    """What was just added or revoked gets no OCSP response while no signer runs, or while the CA cannot
    sign any (EST refuses then: 503): its signing certificate is not valid now, or its key cannot be
    loaded here; nor, soon, once the store is full."""
    from signer.inventory import store_fill
    from signer.registry import load_response_signer, ocsp_signer_valid
    from signer.state import signer_listening

    data_dir = st.data_dir
    used, mapped = store_fill(st)
    if used >= STORE_FULL_WARNING * mapped:
        _warn_nearly_full(used / mapped, "the signer may fail to sign this, and every refresh")
    if not signer_listening(data_dir):
        print(
            f"warning: no signer is running on {data_dir}: the OCSP responses of this are signed once one"
            " starts (pki-edge signer, or pki-edge up)",
            file=sys.stderr,
        )
    why = None
    if not ocsp_signer_valid(issuer, now):
        why = "the certificate signing its OCSP responses is not valid now (pki-edge ca responder)"
    else:
        try:
            load_response_signer(data_dir, issuer)
        except Exception as exc:  # the signer meets the same failure, and logs it
            why = f"its OCSP signing key cannot be loaded: {exc}"
    if why is not None:
        print(
            f"warning: CA {issuer.name}: {why}: no response is signed for this until it is mended",
            file=sys.stderr,
        )


def _progress(label: str) -> Callable[[str, int], None]:
    width = len(label) + 30  # pads over a longer line before it: "\r" only moves the cursor

    def report(what: str, done: int) -> None:
        print(f"\r{f'{label}: {done} entries {what}':<{width}}", end="", file=sys.stderr, flush=True)

    return report


def cmd_import(args: argparse.Namespace, data_dir: Path, config: Config) -> int:
    from signer import inventory

    st = open_store(data_dir, config)
    issuer = st.issuer(args.name)
    progress = _progress(f"importing into {issuer.name}") if sys.stderr.isatty() or args.progress else None
    if args.cert:
        report = inventory.ImportReport()
        certs = inventory.read_certificates(args.cert, report)
        report = inventory.add_certificates(st, issuer, certs, int(_now().timestamp()), progress, report)
    elif args.openssl_index:
        report = inventory.import_openssl_index(st, issuer, args.openssl_index, progress, int(_now().timestamp()))
    else:
        report = inventory.import_crl(st, issuer, args.crl, progress, int(_now().timestamp()))
    if progress:
        print(file=sys.stderr)
    print(f"{issuer.name}: {report.summary()}")
    _warn_if_ocsp_waits(st, issuer, _now())
    return 0


def cmd_revoke(args: argparse.Namespace, data_dir: Path, config: Config) -> int:
    from signer import inventory

    st = open_store(data_dir, config)
    issuer = st.issuer(args.name)
    serial = inventory.parse_serial(args.serial)
    reason = inventory.revocation_reason(args.reason) if args.reason else None
    now = int(_now().timestamp())
    when = inventory.check_revocation_time(inventory.parse_time(args.time), now) if args.time else now
    record, change = inventory.revoke(st, issuer, serial, reason, when, when_given=args.time is not None)
    assert record.revoked_at is not None
    said = {"revoked": "revoked", "reason": "revocation reason changed:", "already": "already revoked:"}[change]
    print(
        f"{said} {serial:X} of {issuer.name} at {inventory.iso_time(record.revoked_at)}"
        f" (reason {inventory.reason_name(record.reason)})"
    )
    _warn_if_ocsp_waits(st, issuer, _now())
    return 0


def cmd_status(args: argparse.Namespace, data_dir: Path, config: Config) -> int:
    from signer import inventory

    st = open_store(data_dir, config)
    if args.name is None:
        return _print_overview(st, data_dir)
    if args.serial is None:
        from signer.state import SignerError

        raise SignerError("status NAME SERIAL: a serial is needed with a CA name (without both: the overview)")
    issuer = st.issuer(args.name)
    serial = inventory.parse_serial(args.serial)
    record, responses, pending = inventory.status(st, issuer, serial)
    print(f"serial      {serial:X}")
    print(f"issuer      {issuer.name}")
    now = int(_now().timestamp())
    grace_ends = record.not_after + int(config.signer.expired_grace_hours * 3600)
    if now >= grace_ends:
        expired = " (expired, past signer.expired_grace_hours: no longer served, the edge answers unauthorized)"
    elif now >= record.not_after:
        expired = f" (expired: served until {inventory.iso_time(grace_ends)}, signer.expired_grace_hours)"
    else:
        expired = ""
    print(f"notAfter    {inventory.iso_time(record.not_after)}{expired}")
    if record.revoked_at is None:
        print("status      good")
    else:
        when, why = inventory.iso_time(record.revoked_at), inventory.reason_name(record.reason)
        print(f"status      revoked at {when} (reason {why})")
    print(f"pending     {'yes (the signer will re-sign it next)' if pending else 'no'}")
    for r in responses:
        said = "revoked" if r.revoked else "good"
        print(
            f"response    {r.hash_algorithm}: {said}, thisUpdate {inventory.iso_time(r.this_update)}, "
            f"nextUpdate {inventory.iso_time(r.next_update)}, refresh at {inventory.iso_time(r.refresh_at)}"
        )
    if not responses:
        print("response    none cached")
    if record.revoked_at is not None and any(not r.revoked for r in responses):
        if pending:
            print("published   no: a cached response still says good (the signer signs the revocation next)")
        else:
            print(
                "published   no: a cached response still says good, and the signer could not sign the revocation"
                " (a CA key it cannot load, or a signing certificate not valid now: see its log, and"
                " `pki-edge status`); it tries again every minute"
            )
    return 0


# Past this share of store.map_size_mb the overview warns: the signer cannot sign into a full store.
STORE_FULL_WARNING = 0.9


def _size(n: int) -> str:
    """Bytes in the largest unit that keeps four digits (kB, MB: powers of 1000), GB at most."""
    for unit in ("bytes", "kB", "MB"):
        if n < 10_000:
            return f"{n} {unit}"
        n //= 1000
    return f"{n} GB"


def _print_overview(st: SignerStore, data_dir: Path) -> int:
    import shutil

    from contract.store import store_path
    from signer import inventory
    from signer.state import signer_listening

    now = int(_now().timestamp())
    o = inventory.overview(st, now)
    running = "running" if signer_listening(data_dir) else "not running (pki-edge signer, or pki-edge up)"
    last = (
        "never"
        if o.last_signed_at is None
        else f"{inventory.iso_time(o.last_signed_at)} ({now - o.last_signed_at} s ago)"
    )
    free = shutil.disk_usage(store_path(data_dir)).free
    print(f"data        {data_dir}")
    print(f"signer      {running}")
    print(f"CAs         {len(o.cas)}{': ' if o.cas else ''}{', '.join(o.cas)}")
    print(f"serials     {o.serials}")
    print(f"responses   {o.responses} cached")
    print(
        f"backlog     {o.backlog.pending} serials wait for a first signing or a revocation;"
        f" the oldest due refresh is {o.backlog.overdue_seconds} s late"
    )
    if o.unsignable:
        print(
            f"unsignable  {', '.join(o.unsignable)}: the signer cannot sign their responses now (a CA key it cannot"
            " load, or a signing certificate not valid: see its log); their serials wait"
        )
    print(f"last signed {last}")
    share = o.store_bytes / o.map_bytes
    print(
        f"store       {_size(o.store_bytes)} used, {share:.0%} of its map (store.map_size_mb ="
        f" {o.map_bytes >> 20}); {_size(free)} free on its disk"
    )
    if share >= STORE_FULL_WARNING:
        _warn_nearly_full(share, "the signer cannot sign into a full store")
    return 0


def _warn_nearly_full(share: float, consequence: str) -> None:
    print(
        f"warning: the store is nearly full ({share:.0%} of store.map_size_mb): {consequence};"
        " raise store.map_size_mb (address space, not disk)",
        file=sys.stderr,
    )


def cmd_export_requests(args: argparse.Namespace, data_dir: Path, config: Config) -> int:
    from signer.export import export_requests

    st = open_store(data_dir, config)
    report = export_requests(st, args.name, args.count, args.out, args.hash, args.seed, int(_now().timestamp()))
    print(report.summary())
    return 0


def cmd_backup(args: argparse.Namespace, data_dir: Path, config: Config) -> int:
    from signer.backup import back_up

    with open_store(data_dir, config) as st:
        summary = back_up(st, args.out)
    config_note = ", pki-edge.toml" if summary.config else ""
    print(
        f"backed up {data_dir} to {args.out}: the store ({summary.store_bytes >> 10} KiB compacted; {summary.issuers}"
        f" CAs, {summary.serials} serials), {summary.key_files} key files{config_note}"
    )
    print(f"it is a data directory: pki-edge --data {args.out} status; to restore, stop the signer and put it in place")
    return 0


def _logger(name: str) -> logging.Logger:
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    return logging.getLogger(name)


def cmd_signer(args: argparse.Namespace, data_dir: Path, config: Config) -> int:
    from signer.main import run_signer

    run_signer(data_dir, config, _logger("pki_edge.signer"))
    return 0


_TLS_FLAGS = ("tls_port", "tls_cert", "tls_key", "client_ca")


def _apply_edge_flags(args: argparse.Namespace, config: Config) -> tuple[Config, list[str]]:
    """Flags over config, checked as the file's values are: (the config, the TLS flags to pass on)."""
    from contract.config import validate

    tls = {name: getattr(args, name) for name in _TLS_FLAGS if getattr(args, name) is not None}
    for name in ("tls_cert", "tls_key", "client_ca"):
        if name in tls:
            tls[name] = str(Path(tls[name]).resolve())
    passed_on = [f"--{name.replace('_', '-')}={value}" for name, value in tls.items()]
    listen = {name: getattr(args, name) for name in ("host", "port", "workers") if getattr(args, name) is not None}
    config = msgspec.structs.replace(
        config,
        edge=msgspec.structs.replace(config.edge, **listen),
        est=msgspec.structs.replace(config.est, **tls),
    )
    validate(config)
    return config, passed_on


def cmd_edge(args: argparse.Namespace, data_dir: Path, config: Config) -> int:
    from edge.main import run_edge

    config, _ = _apply_edge_flags(args, config)
    run_edge(data_dir, config)
    return 0


def cmd_up(args: argparse.Namespace, data_dir: Path, config: Config) -> int:
    from edge.main import check_listening
    from signer.supervisor import run_up

    config, tls_flags = _apply_edge_flags(args, config)
    check_listening(config)  # before anything starts: the edge child would fail the same way
    return run_up(data_dir, config, tls_flags, demo=args.demo, logger=_logger("pki_edge.up"))


def _edge_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", help="address to listen on (default from config: 127.0.0.1)")
    parser.add_argument("--port", type=int, help="HTTP port (default from config: 8080)")
    parser.add_argument("--workers", type=int, help="edge worker processes (default 1)")
    parser.add_argument("--tls-port", type=int, help="HTTPS port for EST (and OCSP), beside --port")
    parser.add_argument("--tls-cert", help="the HTTPS server certificate (PEM, chain after it)")
    parser.add_argument("--tls-key", help="the HTTPS server key (PEM)")
    parser.add_argument("--client-ca", help="extra CAs trusted for TLS client certificates (PEM bundle)")


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data", default=argparse.SUPPRESS, help="data directory (default $PKI_EDGE_DATA or ./data)")
    parser = argparse.ArgumentParser(
        prog="pki-edge",
        description="OCSP (RFC 6960/5019bis) and EST (RFC 7030) edge, with the signer that precomputes responses.",
        epilog="Every command takes --data DIR; see README.md for the configuration file and environment.",
        parents=[common],
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    ca = sub.add_parser("ca", help="manage the CA registry", parents=[common])
    ca_sub = ca.add_subparsers(dest="ca_command", required=True, metavar="SUBCOMMAND")
    p = ca_sub.add_parser("create", help="create a new CA (self-signed, or issued by --parent)", parents=[common])
    p.add_argument("name")
    p.add_argument("--key", choices=KEY_TYPES, default="ec-p256")
    p.add_argument("--days", type=int, default=3650)
    p.add_argument("--parent", help="an existing CA of the registry that issues this one")
    p.add_argument("--ocsp-url", help="OCSP URL written into the certificates this CA issues (AIA)")
    p.set_defaults(handler=cmd_ca_create)
    p = ca_sub.add_parser("add", help="bring an existing CA", parents=[common])
    p.add_argument("name")
    p.add_argument("--cert", type=Path, required=True, help="the CA certificate (PEM or DER)")
    p.add_argument("--key", type=Path, help="the CA private key: OCSP is signed by the CA")
    p.add_argument("--responder-cert", type=Path, help="a delegated OCSP responder certificate")
    p.add_argument("--responder-key", type=Path, help="the delegated responder's private key")
    p.add_argument("--ocsp-url", help="OCSP URL to write into certificates issued here")
    p.set_defaults(handler=cmd_ca_add)
    p = ca_sub.add_parser(
        "responder",
        help="have a delegated responder sign a CA's OCSP: minted here, given, or removed",
        parents=[common],
    )
    p.add_argument("name")
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument(
        "--mint", action="store_true", help="issue one with the CA key; the signer renews it at half its lifetime"
    )
    how.add_argument("--responder-cert", type=Path, help="a delegated responder certificate issued by the CA")
    how.add_argument("--remove", action="store_true", help="the CA key signs again (only a CA whose key is here)")
    p.add_argument("--responder-key", type=Path, help="the private key of --responder-cert")
    p.add_argument("--key", choices=KEY_TYPES, help="the minted responder's key type (default ec-p256)")
    p.add_argument("--days", type=int, help="the minted responder's lifetime (default 30)")
    p.set_defaults(handler=cmd_ca_responder)
    p = ca_sub.add_parser(
        "renew", help="replace a CA's certificate by its renewal (same subject and key)", parents=[common]
    )
    p.add_argument("name")
    renewal = p.add_mutually_exclusive_group()
    renewal.add_argument("--cert", type=Path, help="the renewed certificate, made elsewhere (PEM or DER)")
    renewal.add_argument("--days", type=int, help="made here: its lifetime (default 3650)")
    p.set_defaults(handler=cmd_ca_renew)
    p = ca_sub.add_parser("list", help="list the CAs", parents=[common])
    p.set_defaults(handler=cmd_ca_list)
    p = ca_sub.add_parser("show", help="print a CA certificate as PEM", parents=[common])
    p.add_argument("name")
    p.set_defaults(handler=cmd_ca_show)

    p = sub.add_parser("issue", help="issue an end-entity certificate and key", parents=[common])
    p.add_argument("name", help="the issuing CA")
    p.add_argument("--cn", required=True)
    p.add_argument("--san", action="append", help="DNS:name, URI:uri or IP:addr (repeatable)")
    p.add_argument("--key", choices=("ec-p256", "rsa-2048"), default="ec-p256")
    p.add_argument("--days", type=int, default=365)
    p.add_argument("--out", type=Path, required=True, help="directory for CN.pem and CN.key")
    p.add_argument(
        "--ocsp-responder",
        action="store_true",
        help="add id-kp-OCSPSigning: the certificate may then also sign the CA's OCSP (pki-edge ca responder"
        " NAME --responder-cert), as the edge's TLS certificate in Lamassu's model",
    )
    p.set_defaults(handler=cmd_issue)

    p = sub.add_parser("import", help="import certificates, an OpenSSL index.txt or a CRL", parents=[common])
    p.add_argument("name", help="the CA the entries belong to")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--cert", type=Path, nargs="+", help="certificate files or directories")
    source.add_argument("--openssl-index", type=Path, help="an OpenSSL CA database (index.txt)")
    source.add_argument("--crl", type=Path, help="a CRL signed by the CA: marks its serials revoked")
    p.add_argument("--progress", action="store_true", help="show progress even when not on a terminal")
    p.set_defaults(handler=cmd_import)

    p = sub.add_parser("revoke", help="revoke a serial", parents=[common])
    p.add_argument("name")
    p.add_argument("serial", help="hexadecimal, as `openssl x509 -noout -serial` prints it")
    p.add_argument("--reason", help="keyCompromise, superseded, cessationOfOperation, ...")
    p.add_argument("--time", help="revocation time, ISO 8601 or Unix seconds (default now)")
    p.set_defaults(handler=cmd_revoke)

    p = sub.add_parser(
        "status",
        help="the store at a glance; with NAME SERIAL, a serial's inventory entry and cached responses",
        parents=[common],
    )
    p.add_argument("name", nargs="?")
    p.add_argument("serial", nargs="?")
    p.set_defaults(handler=cmd_status)

    p = sub.add_parser(
        "export-requests",
        help="write sample OCSP requests of a CA as JSON Lines (bench/locustfile.py)",
        parents=[common],
    )
    p.add_argument("name", help="the CA whose serials are sampled")
    p.add_argument("--count", type=int, required=True, help="serials to sample (all of them when there are fewer)")
    p.add_argument("--out", type=Path, required=True, help="the JSON Lines file to write")
    p.add_argument(
        "--hash",
        action="append",
        metavar="ALG",
        help="CertID hash algorithm: sha1, sha256, sha384 or sha512 (repeatable; default: those the signer signs)",
    )
    p.add_argument("--seed", type=int, help="random seed, for the same sample again")
    p.set_defaults(handler=cmd_export_requests)

    p = sub.add_parser(
        "backup",
        help="copy the store, the keys and the configuration to a new directory (while the signer runs)",
        parents=[common],
    )
    p.add_argument("--out", type=Path, required=True, help="a new directory (mode 0700: it holds the CA keys)")
    p.set_defaults(handler=cmd_backup)

    from signer.cli_est import register as register_est_commands

    register_est_commands(sub, common)

    p = sub.add_parser("signer", help="run the background signer and the signing workers", parents=[common])
    p.set_defaults(handler=cmd_signer)
    p = sub.add_parser("edge", help="run the HTTP edge", parents=[common])
    _edge_options(p)
    p.set_defaults(handler=cmd_edge)
    p = sub.add_parser("up", help="run signer and edge together", parents=[common])
    _edge_options(p)
    p.add_argument("--demo", action="store_true", help="on an empty data directory, create a demo CA and devices")
    p.set_defaults(handler=cmd_up)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    import lmdb

    from signer.keys import KeyError_
    from signer.state import SignerError

    args = build_parser().parse_args(argv)
    data_dir = data_dir_from(getattr(args, "data", None))
    config = Config()
    try:
        config = load_config(data_dir)
        handler: Handler = args.handler
        status = handler(args, data_dir, config)
        sys.stdout.flush()  # here, where a closed pipe is caught, not at exit
        return status
    except (SignerError, ConfigError, KeyError_) as exc:
        print(f"pki-edge: error: {exc}", file=sys.stderr)
        return 2
    except lmdb.MapFullError:
        print(
            f"pki-edge: error: the store is full at store.map_size_mb = {config.store.map_size_mb}: raise it"
            " (pki-edge.toml or PKI_EDGE_STORE_MAP_SIZE_MB; address space, not disk) and run the command again",
            file=sys.stderr,
        )
        return 2
    except lmdb.Error as exc:  # e.g. a store on a read-only file system, or one this user cannot write
        hint = " (is the disk full?)" if "Input/output error" in str(exc) else ""
        print(f"pki-edge: error: the store: {exc}{hint}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader went away (`status ... | head`): stop quietly, as other tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing more to flush at exit
        return 128 + signal.SIGPIPE
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"pki-edge: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
