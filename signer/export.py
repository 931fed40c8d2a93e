"""`pki-edge export-requests`: sample OCSP requests of a CA for load tests (``bench/locustfile.py``).

A uniform random sample of the CA's serials is drawn with reservoir sampling over an LMDB cursor,
so an inventory of millions needs memory for the sample only. Each serial gives one DER
OCSPRequest per hash algorithm (no nonce: the edge serves precomputed responses), written as one
JSON object per line::

    {"serial": "1A2B", "hash": "sha256", "der_b64": "MEIw...", "get_path": "MEIw...%3D"}

``get_path`` is the request as OCSP over GET carries it after the prefix (``{prefix}/{get_path}``):
standard base64, percent-encoded so that ``/``, ``+`` and ``=`` survive every proxy.
Serials the edge no longer answers (expired past ``expired_grace_hours``) are left out, and so are
negative serials (they are stored, but ``cryptography`` cannot build a request for them).
"""

from __future__ import annotations

import base64
import json
import random
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar
from urllib.parse import quote

import msgspec
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from contract import store
from edge.source import issuer_hashes
from signer.state import SignerError, SignerStore

T = TypeVar("T")

_HASHES: dict[str, hashes.HashAlgorithm] = {
    "sha1": hashes.SHA1(),
    "sha256": hashes.SHA256(),
    "sha384": hashes.SHA384(),
    "sha512": hashes.SHA512(),
}
assert set(_HASHES) == set(store.HASH_ALGORITHMS)


class _NotAfter(msgspec.Struct, array_like=True):
    """The first field of a CertRecord: decoding stops there (the certificate is never copied out)."""

    not_after: int


_NOT_AFTER = msgspec.msgpack.Decoder(_NotAfter)


class ExportReport(msgspec.Struct):
    ca: str
    out: Path
    hash_names: list[str]
    served: int = 0  # serials of the inventory the edge answers for
    sampled: int = 0
    requests: int = 0
    expired: int = 0  # past notAfter + grace: the edge answers unauthorized, left out
    negative: int = 0

    def summary(self) -> str:
        text = (
            f"wrote {self.requests} requests to {self.out}: {self.sampled} of {self.served} serials of "
            f"{self.ca} x {', '.join(self.hash_names)}"
        )
        if self.expired:
            text += f"; left out {self.expired} expired past the grace period"
        if self.negative:
            text += f"; left out {self.negative} negative serials"
        return text


# ----------------------------------------------------------------------------------- pure parts


def reservoir_sample(items: Iterable[T], k: int, rng: random.Random) -> list[T]:
    """A uniform random sample of ``k`` items (all of them when there are fewer), in random order.

    Algorithm R: one pass, memory for ``k`` items only.
    """
    if k < 1:
        raise ValueError("k must be at least 1")
    sample: list[T] = []
    for i, item in enumerate(items):
        if i < k:
            sample.append(item)
        else:
            j = rng.randrange(i + 1)
            if j < k:
                sample[j] = item
    # The first k items enter in store order: shuffle so that line order (Zipf ranks) is random too.
    rng.shuffle(sample)
    return sample


def check_hash_names(requested: Sequence[str] | None, configured: Sequence[str]) -> list[str]:
    """The hash algorithms to export: the requested ones (deduplicated), else those the signer signs."""
    names = list(dict.fromkeys(requested)) if requested else list(configured)
    for name in names:
        if name not in _HASHES:
            raise SignerError(f"unknown hash algorithm {name!r}: choose from {', '.join(_HASHES)}")
        if name not in configured:
            raise SignerError(
                f"the signer does not sign {name} responses ([signer] hash_algorithms = {', '.join(configured)}): "
                "the edge would answer unauthorized"
            )
    return names


def request_der(name_hash: bytes, key_hash: bytes, serial: int, hash_name: str) -> bytes:
    """A DER OCSPRequest with one CertID and no nonce."""
    builder = ocsp.OCSPRequestBuilder().add_certificate_by_hash(name_hash, key_hash, serial, _HASHES[hash_name])
    return builder.build().public_bytes(serialization.Encoding.DER)


def get_path(der: bytes) -> str:
    """What follows ``{prefix}/`` in an OCSP GET URL: percent-encoded standard base64 (RFC 6960 A.1)."""
    return quote(base64.b64encode(der).decode("ascii"), safe="")


def request_lines(cert_der: bytes, serials: Iterable[int], hash_names: Sequence[str]) -> Iterator[str]:
    """One JSON object (a line, without newline) per serial and hash algorithm."""
    issuer = {name: issuer_hashes(cert_der, name) for name in hash_names}
    for serial in serials:
        for name in hash_names:
            der = request_der(*issuer[name], serial, name)
            line = {
                "serial": f"{serial:X}",
                "hash": name,
                "der_b64": base64.b64encode(der).decode("ascii"),
                "get_path": get_path(der),
            }
            yield json.dumps(line, separators=(",", ":"))


# ------------------------------------------------------------------------------- the store


def served_serial_keys(
    st: SignerStore, issuer_number: int, not_after_min: int, report: ExportReport
) -> Iterator[bytes]:
    """Serial keys of one issuer whose certificate is still answered for, in key order.

    Counts what it leaves out in ``report``. Streams over one read transaction.
    """
    prefix = store.issuer_prefix(issuer_number)
    with st.env.begin(db=st.inventory) as txn:
        cursor = txn.cursor()
        if not cursor.set_range(prefix):
            return
        for key, value in cursor.iternext():
            if not key.startswith(prefix):
                break
            serial_k = key[len(prefix) :]
            if serial_k[0] & 0x80:
                report.negative += 1
            elif _NOT_AFTER.decode(value).not_after < not_after_min:
                report.expired += 1
            else:
                report.served += 1
                yield serial_k


def export_requests(
    st: SignerStore,
    ca_name: str,
    count: int,
    out: Path,
    hash_names: Sequence[str] | None,
    seed: int | None,
    now: int,
) -> ExportReport:
    """Sample ``count`` serials of ``ca_name`` and write their OCSP requests to ``out`` (JSON Lines)."""
    if count < 1:
        raise SignerError(f"--count must be at least 1, got {count}")
    issuer = st.issuer(ca_name)
    names = check_hash_names(hash_names, st.config.signer.hash_algorithms)
    report = ExportReport(ca=issuer.name, out=out, hash_names=names)
    grace = int(st.config.signer.expired_grace_hours * 3600)
    try:
        f = out.open("w", encoding="ascii", newline="\n")  # before the scan: an unwritable file fails fast
    except OSError as exc:
        raise SignerError(f"cannot write {out}: {exc.strerror or exc}") from None
    try:
        with f:
            # Still answered while now < notAfter + grace (the edge's serve_until).
            keys = served_serial_keys(st, issuer.number, now - grace + 1, report)
            sample = reservoir_sample(keys, count, random.Random(seed))
            if not sample:
                raise SignerError(_nothing_to_export(issuer.name, report))
            report.sampled = len(sample)
            serials = [store.serial_from_key(k) for k in sample]
            for line in request_lines(issuer.cert_der, serials, names):
                f.write(line + "\n")
                report.requests += 1
    except SignerError:
        _remove_partial(out)
        raise
    except OSError as exc:
        _remove_partial(out)
        raise SignerError(f"cannot write {out}: {exc.strerror or exc}") from None
    return report


def _remove_partial(out: Path) -> None:
    if out.is_file():  # never a device such as /dev/stdout
        out.unlink(missing_ok=True)


def _nothing_to_export(ca_name: str, report: ExportReport) -> str:
    if report.expired or report.negative:
        return (
            f"CA {ca_name!r} has no serials the edge answers for ({report.expired} expired past the grace period, "
            f"{report.negative} negative): nothing to export"
        )
    return f"CA {ca_name!r} has no certificates in its inventory: `pki-edge import` or `issue` some first"
