"""National identifiers of professionals and structures, and the folding used to search names.

Everything the directory stores is keyed by these identifiers, and the same keys come back in
Pro Santé Connect tokens and IGC-Santé certificates: a malformed one has to be caught when an
extract is read, not later when a login fails to match anybody. Rules (ANS directory
specifications): RPPS is 11 digits ending in a Luhn check digit; FINESS is 9 characters with a
Luhn check digit, except Corsican numbers (department 2A/2B) which carry letters and therefore no
numeric check; the national identifier (IdNat) is one prefix digit followed by the local one.
"""
from __future__ import annotations

import re
import unicodedata

RPPS_PREFIX = "8"
ADELI_PREFIX = "0"
FINESS_PREFIX = "3"
SIRET_PREFIX = "5"

_DIGITS = re.compile(r"[0-9]+")
_ADELI = re.compile(r"(?:[0-9]{2}|2[AB])[0-9]{7}")  # department (2A/2B in Corsica) + 7 digits
_CORSICAN_FINESS = re.compile(r"2[AB][0-9]{7}")
# The SIRETs of La Poste's establishments follow another rule than Luhn; they are checked for shape only.
_LA_POSTE_SIREN = "356000000"
_DOUBLED = (0, 2, 4, 6, 8, 1, 3, 5, 7, 9)  # a digit doubled, its two digits summed


def luhn_valid(digits: str) -> bool:
    """True when `digits` (ASCII digits only) passes the Luhn mod-10 check."""
    if not _DIGITS.fullmatch(digits):
        return False
    # From the right: digits in odd positions count as they are, the others doubled.
    total = sum(map(int, digits[-1::-2])) + sum(_DOUBLED[int(d)] for d in digits[-2::-2])
    return total % 10 == 0


def luhn_digit(body: str) -> str:
    """The check digit that makes `body` + digit pass `luhn_valid` (to build identifiers)."""
    # The check digit will sit rightmost, so the body's last digit is the first one doubled.
    total = sum(_DOUBLED[int(d)] for d in body[-1::-2]) + sum(map(int, body[-2::-2]))
    return str(-total % 10)


def valid_rpps(value: str) -> bool:
    """An RPPS number: exactly 11 digits, the last one a Luhn check digit."""
    return len(value) == 11 and luhn_valid(value)


def valid_adeli(value: str) -> bool:
    """An ADELI number (professions not yet in RPPS): 9 characters led by the department.

    ADELI numbers have no published check digit, so only the shape can be verified.
    """
    return _ADELI.fullmatch(value) is not None


def valid_finess(value: str) -> bool:
    """A FINESS number: 9 characters, Luhn-checked unless Corsican (2A/2B, no numeric check)."""
    if len(value) != 9:
        return False
    if _CORSICAN_FINESS.fullmatch(value):
        return True
    return luhn_valid(value)


def valid_siret(value: str) -> bool:
    """A SIRET number: 14 digits, Luhn-checked except for La Poste's establishments."""
    if len(value) != 14 or not _DIGITS.fullmatch(value):
        return False
    return value.startswith(_LA_POSTE_SIREN) or luhn_valid(value)


def idnat_rpps(rpps: str) -> str:
    """National identifier of a professional registered in RPPS."""
    return RPPS_PREFIX + rpps


def idnat_adeli(adeli: str) -> str:
    """National identifier of a professional registered in ADELI."""
    return ADELI_PREFIX + adeli


def idnat_finess(finess: str) -> str:
    """National identifier of a structure known by its FINESS number."""
    return FINESS_PREFIX + finess


def idnat_siret(siret: str) -> str:
    """National identifier of a structure known by its SIRET number."""
    return SIRET_PREFIX + siret


# Letters Unicode does not decompose into a base letter and an accent.
_UNDECOMPOSED = str.maketrans({"œ": "oe", "Œ": "oe", "æ": "ae", "Æ": "ae", "ø": "o", "Ø": "o", "ł": "l", "Ł": "l",
                               "đ": "d", "Đ": "d"})
_SEPARATORS = re.compile(r"[^0-9a-z]+")
_WORDS = re.compile(r"[^\W_]+")


def fold(text: str) -> str:
    """Search form of a name: lower case, no accents, words separated by single spaces.

    "LEFÈVRE" and "Lefevre" fold alike, so do "N'DIAYE" and "n diaye", "Côte-d'Or" and
    "cote d or". Stored folded columns and query strings both go through this function, which is
    what makes a plain prefix comparison find them.
    """
    if text.isascii():  # the common case in the national files, ten times faster
        return _SEPARATORS.sub(" ", text.lower()).strip()
    decomposed = unicodedata.normalize("NFKD", text.translate(_UNDECOMPOSED))
    bare = "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()
    return " ".join(_WORDS.findall(bare))
