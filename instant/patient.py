"""The patient a care circle is about, identified as the INS referential asks: the INS
matricule with the OID of the register that assigned it, the birth family name, the first
given name and the birth date.

The matricule is the NIR (or the NIA, its temporary twin): 13 characters then a 2-digit key,
97 - (number mod 97), where Corsican departments 2A and 2B count as 19 and 18. Catching a
mistyped matricule here keeps one patient from getting two circles.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date
from typing import Any

# OIDs of the INS registers (ANS, FHIR FR Core): production NIR and NIA, then the fictional
# patients of test and demonstration data sets.
INS_OIDS = {
    "1.2.250.1.213.1.4.8": "INS-NIR",
    "1.2.250.1.213.1.4.9": "INS-NIA",
    "1.2.250.1.213.1.4.10": "INS-NIR-TEST",
    "1.2.250.1.213.1.4.11": "INS-NIR-DEMO",
}
MATRICULE = re.compile(r"[1-8][0-9]{4}(?:[0-9]{2}|2[AB])[0-9]{8}")
NAME = re.compile(r"[^\W\d_]+(?:[ '\-][^\W\d_]+)*")  # letters, single spaces, hyphens, apostrophes
MAX_NAME_CHARS = 100
EARLIEST_BIRTH = date(1890, 1, 1)


class PatientError(ValueError):
    """`field` is the input that is wrong (API clients show it next to the field)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class Patient:
    ins: str
    ins_oid: str
    family_name: str
    given_name: str
    birth_date: date

    def as_dict(self) -> dict[str, str]:
        return {"ins": self.ins, "ins_oid": self.ins_oid, "ins_register": INS_OIDS[self.ins_oid],
                "family_name": self.family_name, "given_name": self.given_name,
                "birth_date": self.birth_date.isoformat()}


def ins_key(matricule13: str) -> int:
    number = int(matricule13.replace("2A", "19").replace("2B", "18"))
    return 97 - number % 97


def valid_ins(matricule: str) -> bool:
    return bool(MATRICULE.fullmatch(matricule)) and ins_key(matricule[:13]) == int(matricule[13:])


def patient_from(data: Any, *, today: date | None = None) -> Patient:
    """A Patient from API or CLI input (`ins`, `ins_oid`, `family_name`, `given_name`,
    `birth_date` as YYYY-MM-DD), or PatientError naming the faulty field."""
    if not isinstance(data, dict):
        raise PatientError("patient", "patient must be an object")
    ins = "".join(_text(data, "ins", 32).split()).upper()  # "2 48 03 97 415 123 58", as printed, is accepted
    if not valid_ins(ins):
        raise PatientError("ins", "ins must be a 15-character INS matricule (NIR or NIA) with a valid key")
    oid = _text(data, "ins_oid", 32)
    if oid not in INS_OIDS:
        raise PatientError("ins_oid", f"ins_oid must be one of {', '.join(INS_OIDS)}")
    family, given = _name(data, "family_name"), _name(data, "given_name")
    try:
        born = date.fromisoformat(_text(data, "birth_date", 10))
    except ValueError:
        raise PatientError("birth_date", "birth_date must be a date, YYYY-MM-DD") from None
    if not EARLIEST_BIRTH <= born <= (today or date.today()):
        raise PatientError("birth_date", "birth_date must be in the past (and after 1890)")
    return Patient(ins, oid, family, given, born)


def _text(data: dict, field: str, max_chars: int) -> str:
    value = data.get(field)
    if not isinstance(value, str) or not value.strip():
        raise PatientError(field, f"{field} is required")
    if len(value) > max_chars:
        raise PatientError(field, f"{field} is limited to {max_chars} characters")
    return value.strip()


def _name(data: dict, field: str) -> str:
    value = " ".join(_text(data, field, MAX_NAME_CHARS).split())
    if not NAME.fullmatch(value):
        raise PatientError(field, f"{field} may hold letters, spaces, hyphens and apostrophes only")
    return value.upper()
