"""contract.cert_id: the issuer part the signer writes and the edge looks up, read back by asn1crypto."""

from __future__ import annotations

import pytest
from asn1crypto import ocsp

from contract.cert_id import issuer_part_encodings
from contract.store import HASH_ALGORITHMS

ASN1CRYPTO_NAMES = {"sha1": "sha1", "sha256": "sha256", "sha384": "sha384", "sha512": "sha512"}
HASH_LENGTHS = {"sha1": 20, "sha256": 32, "sha384": 48, "sha512": 64}


@pytest.mark.parametrize("hash_name", sorted(HASH_ALGORITHMS))
def test_both_encodings_read_back_as_the_same_cert_id_fields(hash_name: str) -> None:
    _, oid = HASH_ALGORITHMS[hash_name]
    name_hash, key_hash = b"\x01" * HASH_LENGTHS[hash_name], b"\x02" * HASH_LENGTHS[hash_name]
    with_null, without = issuer_part_encodings(oid, name_hash, key_hash)
    for part, parameters in ((with_null, b"\x05\x00"), (without, None)):
        content = part + b"\x02\x01\x07"  # serialNumber 7
        length = bytes((len(content),)) if len(content) < 0x80 else b"\x81" + bytes((len(content),))
        cert_id = ocsp.CertId.load(b"\x30" + length + content)
        assert cert_id["hash_algorithm"]["algorithm"].native == ASN1CRYPTO_NAMES[hash_name]
        assert cert_id["hash_algorithm"]["parameters"].dump() == (parameters or b"")
        assert cert_id["issuer_name_hash"].native == name_hash
        assert cert_id["issuer_key_hash"].native == key_hash
        assert cert_id["serial_number"].native == 7
        assert cert_id.dump(force=True) == b"\x30" + length + content  # DER as given
