"""RFC 5280 Appendix A's upper bounds of the subject attributes a CA may copy, in characters.

One table for both sides: the edge refuses a CSR past them (edge.est_codec), the CLI a --cn
(signer.issue).
"""

from __future__ import annotations

from cryptography.x509.oid import NameOID

UPPER_BOUNDS = {
    NameOID.COMMON_NAME: ("commonName", 64),
    NameOID.ORGANIZATION_NAME: ("organizationName", 64),
    NameOID.ORGANIZATIONAL_UNIT_NAME: ("organizationalUnitName", 64),
    NameOID.TITLE: ("title", 64),
    NameOID.SERIAL_NUMBER: ("serialNumber", 64),
    NameOID.COUNTRY_NAME: ("countryName", 2),
    NameOID.LOCALITY_NAME: ("localityName", 128),
    NameOID.STATE_OR_PROVINCE_NAME: ("stateOrProvinceName", 128),
    NameOID.PSEUDONYM: ("pseudonym", 128),
    NameOID.EMAIL_ADDRESS: ("emailAddress", 255),
    NameOID.GIVEN_NAME: ("givenName", 32768),
    NameOID.SURNAME: ("surname", 32768),
    NameOID.INITIALS: ("initials", 32768),
    NameOID.GENERATION_QUALIFIER: ("generationQualifier", 32768),
}
UB_COMMON_NAME = UPPER_BOUNDS[NameOID.COMMON_NAME][1]
