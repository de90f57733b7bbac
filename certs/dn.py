"""Distinguished names compared the way the national white list needs: as sets of attributes.

The white list gives each operator's certificate as a string (`DNCertificatOperateur`,
e.g. ``CN=mail.operateur.fr,OU=31598513500187,O=Operateur,ST=Paris (75),C=FR``), written
by people: most specific first as RFC 4514 says, or sometimes the other way round as
OpenSSL prints them, with or without a space after the commas. The certificate holds the
name as an ASN.1 sequence. Comparing strings would make all of these differ; so both
sides become a `Dn`, the set of (attribute OID, value) pairs, values with their spaces
collapsed and case folded (X.520 caseIgnoreMatch, which names and countries use).
`cryptography`'s own RFC 4514 reader refuses the space after a comma, hence this parser.
"""
from __future__ import annotations

from cryptography import x509
from cryptography.x509.oid import NameOID

Dn = frozenset[tuple[str, str]]

# the short names RFC 4514 §3 and the IGC-Santé layouts use; any other type as a dotted OID
_TYPES = {
    "CN": NameOID.COMMON_NAME, "C": NameOID.COUNTRY_NAME, "O": NameOID.ORGANIZATION_NAME,
    "OU": NameOID.ORGANIZATIONAL_UNIT_NAME, "ST": NameOID.STATE_OR_PROVINCE_NAME, "S": NameOID.STATE_OR_PROVINCE_NAME,
    "L": NameOID.LOCALITY_NAME, "STREET": NameOID.STREET_ADDRESS, "DC": NameOID.DOMAIN_COMPONENT,
    "UID": NameOID.USER_ID, "SN": NameOID.SURNAME, "GN": NameOID.GIVEN_NAME, "GIVENNAME": NameOID.GIVEN_NAME,
    "TITLE": NameOID.TITLE, "SERIALNUMBER": NameOID.SERIAL_NUMBER, "EMAILADDRESS": NameOID.EMAIL_ADDRESS,
    "E": NameOID.EMAIL_ADDRESS, "ORGANIZATIONIDENTIFIER": NameOID.ORGANIZATION_IDENTIFIER,
}
_SPECIAL = ',+"\\<>;=# '
MAX_DN_CHARS = 1024


class DnError(ValueError):
    """The text is not a distinguished name."""


def parse_dn(text: str) -> Dn:
    """The attributes of an RFC 4514-style string (either order, optional spaces, escapes)."""
    if len(text) > MAX_DN_CHARS:
        raise DnError(f"longer than {MAX_DN_CHARS} characters")
    pairs = []
    for part in _split(text):
        kind, eq, value = part.partition("=")
        kind = kind.strip()
        if not eq or not kind:
            raise DnError(f"{part.strip()!r} is not TYPE=value")
        oid = _TYPES.get(kind.upper())
        if oid is None:
            try:
                oid = x509.ObjectIdentifier(kind.removeprefix("OID.").removeprefix("oid."))
            except ValueError:
                raise DnError(f"unknown attribute type {kind!r}") from None
        value = _normalise(_unescape(value.strip()))
        if not value:
            raise DnError(f"{kind} has no value")
        pairs.append((oid.dotted_string, value))
    if not pairs:
        raise DnError("empty")
    return frozenset(pairs)


def dn_of(name: x509.Name) -> Dn:
    """The attributes of a certificate's subject (or issuer), comparable with `parse_dn`'s."""
    return frozenset((a.oid.dotted_string, _normalise(str(a.value))) for a in name)


def _normalise(value: str) -> str:
    return " ".join(value.split()).casefold()


def _split(text: str) -> list[str]:
    """Split at the commas, semicolons and pluses that are not escaped: RDN grouping does
    not matter for comparison."""
    parts, current, escaped = [], [], False
    for ch in text:
        if escaped:
            current.append("\\" + ch)
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch in ",;+":
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    if escaped:
        raise DnError("ends with a lone backslash")
    parts.append("".join(current))
    if any(not p.strip() for p in parts):
        raise DnError("an empty attribute between separators")
    return parts


def _unescape(value: str) -> str:
    """RFC 4514 §2.4: \\<special> is the character, \\XX a byte of the UTF-8 value."""
    if "\\" not in value:
        return value
    out, i = bytearray(), 0
    while i < len(value):
        ch = value[i]
        if ch == "\\" and i + 1 < len(value):
            nxt = value[i + 1:i + 3]
            if len(nxt) == 2 and all(c in "0123456789abcdefABCDEF" for c in nxt):
                out.append(int(nxt, 16))
                i += 3
                continue
            if value[i + 1] in _SPECIAL:
                out += value[i + 1].encode()
                i += 2
                continue
            raise DnError(f"bad escape \\{value[i + 1]}")
        out += ch.encode()
        i += 1
    try:
        return out.decode("utf-8")
    except UnicodeDecodeError:
        raise DnError("escaped bytes are not UTF-8") from None
