"""Parse the national directory extracts (Annuaire Santé public files) into typed records.

Sans-IO, like h11: the parser is given the header line of one file, then fed its data lines one by
one, and returns for each either a record or a `Rejected` saying in words why the line was
refused. It opens no file and touches no database, so the importer can stream millions of lines
through it and the tests can drive it line by line.

Formats (see the "Directory files" section of the domain brief): pipe-separated, one header
line, UTF-8, lines ending with a trailing `|`.
- PS_LibreAcces_Personne_activite_<AAAAMMJJhhmm>.txt, 52 columns, one line per professional
  activity: a professional, the activity, and the structure where it takes place.
- Extraction_Correspondance_MSSante_<AAAAMMJJhhmm>.txt, 31 columns, one line per mailbox.
"""
from __future__ import annotations

import hashlib
import re
from datetime import datetime
from functools import lru_cache
from operator import itemgetter
from pathlib import PurePath
from typing import NamedTuple

from directory.identifiers import (fold, idnat_adeli, idnat_finess, idnat_rpps, idnat_siret, valid_adeli,
                                   valid_finess, valid_rpps, valid_siret)

PS = "ps"
MSS = "mss"

# The headers of the national files, column by column (each line ends with a trailing "|").
PS_COLUMNS = (
    "Type d'identifiant PP", "Identifiant PP", "Identification nationale PP", "Code civilité d'exercice",
    "Libellé civilité d'exercice", "Code civilité", "Libellé civilité", "Nom d'exercice", "Prénom d'exercice",
    "Code profession", "Libellé profession", "Code catégorie professionnelle", "Libellé catégorie professionnelle",
    "Code type savoir-faire", "Libellé type savoir-faire", "Code savoir-faire", "Libellé savoir-faire",
    "Code mode exercice", "Libellé mode exercice", "Numéro SIRET site", "Numéro SIREN site", "Numéro FINESS site",
    "Numéro FINESS établissement juridique", "Identifiant technique de la structure", "Raison sociale site",
    "Enseigne commerciale site", "Complément destinataire (coord. structure)",
    "Complément point géographique (coord. structure)", "Numéro Voie (coord. structure)",
    "Indice répétition voie (coord. structure)", "Code type de voie (coord. structure)",
    "Libellé type de voie (coord. structure)", "Libellé Voie (coord. structure)",
    "Mention distribution (coord. structure)", "Bureau cedex (coord. structure)", "Code postal (coord. structure)",
    "Code commune (coord. structure)", "Libellé commune (coord. structure)", "Code pays (coord. structure)",
    "Libellé pays (coord. structure)", "Téléphone (coord. structure)", "Téléphone 2 (coord. structure)",
    "Télécopie (coord. structure)", "Adresse e-mail (coord. structure)", "Code Département (structure)",
    "Libellé Département (structure)", "Ancien identifiant de la structure", "Autorité d'enregistrement",
    "Code secteur d'activité", "Libellé secteur d'activité", "Code section tableau pharmaciens",
    "Libellé section tableau pharmaciens",
)
MSS_COLUMNS = (
    "Type de BAL", "Adresse BAL", "Type Identifiant PP", "Identifiant PP", "Identification nationale PP",
    "Type identifiant structure", "Identification Structure", "Service de rattachement", "Civilité d'exercice",
    "Nom d'exercice", "Prénom d'exercice", "Catégorie profession", "Libellé de catégorie profession",
    "Code Profession", "Libellé Profession", "Code savoir-faire", "Libellé savoir-faire", "Dématérialisation",
    "Raison Sociale structure BAL", "Enseigne commerciale structure BAL", "L2COMPLEMENTLOCALISATION",
    "L3COMPLEMENTDISTRIBUTION", "L4NUMEROVOIE", "L4COMPLEMENTNUMEROVOIE", "NL4TYPEVOIE", "L4LIBELLEVOIE",
    "L5LIEUDITMENTION", "L6LIGNEACHEMINEMENT", "Code postal", "Département", "Pays",
)
PS_HEADER = "|".join(PS_COLUMNS) + "|"
MSS_HEADER = "|".join(MSS_COLUMNS) + "|"

# The columns each record is built from, in the order the parsers unpack them.
_PS_USED = (
    "Type d'identifiant PP", "Identifiant PP", "Identification nationale PP", "Libellé civilité",
    "Libellé civilité d'exercice", "Nom d'exercice", "Prénom d'exercice", "Code profession",
    "Libellé profession", "Code savoir-faire", "Libellé savoir-faire", "Code mode exercice",
    "Libellé mode exercice", "Numéro SIRET site", "Numéro FINESS site", "Identifiant technique de la structure",
    "Raison sociale site", "Enseigne commerciale site", "Numéro Voie (coord. structure)",
    "Indice répétition voie (coord. structure)", "Libellé type de voie (coord. structure)",
    "Libellé Voie (coord. structure)", "Code postal (coord. structure)", "Libellé commune (coord. structure)",
    "Code Département (structure)", "Libellé pays (coord. structure)", "Code secteur d'activité",
    "Libellé secteur d'activité",
)
_MSS_USED = (
    "Type de BAL", "Adresse BAL", "Type Identifiant PP", "Identifiant PP", "Identification nationale PP",
    "Type identifiant structure", "Identification Structure", "Service de rattachement", "Civilité d'exercice",
    "Nom d'exercice", "Prénom d'exercice", "Code Profession", "Libellé Profession", "Code savoir-faire",
    "Libellé savoir-faire", "Dématérialisation", "Raison Sociale structure BAL",
    "Enseigne commerciale structure BAL", "L4NUMEROVOIE", "L4COMPLEMENTNUMEROVOIE", "NL4TYPEVOIE",
    "L4LIBELLEVOIE", "L6LIGNEACHEMINEMENT", "Code postal", "Département", "Pays",
)
_FORMATS = {PS: (PS_COLUMNS, _PS_USED), MSS: (MSS_COLUMNS, _MSS_USED)}

MAILBOX_KINDS = {"PER": "nominative", "ORG": "organisational", "APP": "applicative", "CAB": "cabinet"}
# "Type identifiant structure" of the MSSanté extract; any other type names an identifier of the
# same namespace as the PS file's technical structure ids, hence the same "R" prefix.
_STRUCTURE_FINESS = "1"
_STRUCTURE_SIRET = "3"
TECHNICAL_PREFIX = "R"

# Widths of the bounded columns in store.schema: PostgreSQL refuses a longer value, and one such
# value would abort a whole batch, so the line is rejected here instead.
_MAX_ID = 24
_ADDRESS = re.compile(r"[a-z0-9!#$%&'*+/=?^_`{}~.-]+@[a-z0-9-]+(?:\.[a-z0-9-]+)+")
_MAX_ADDRESS = 320
_STAMP = re.compile(r"_([0-9]{12})\.txt$")

# Organisation kinds, first match wins, so the specific kinds come before "hospital"
# (an EHPAD run by a hospital is listed as an EHPAD). Phrases are matched as whole folded words.
_ORGANISATION_KINDS = (
    ("dac", ("dac", "dispositif d appui a la coordination")),
    ("cpts", ("cpts", "communaute professionnelle territoriale de sante")),
    ("ehpad", ("ehpad", "etablissement d hebergement pour personnes agees dependantes")),
    ("lab", ("laboratoire", "lbm")),
    ("hospital", ("ch", "chu", "chr", "chi", "centre hospitalier", "groupe hospitalier", "hopital", "hopitaux",
                  "clinique")),
    ("cabinet", ("cabinet",)),
)
_SECTOR_CABINET = "SA07"  # Cabinet individuel


class ExtractError(ValueError):
    """The file is not an extract this parser knows (header, columns); nothing can be read."""


class Rejected(NamedTuple):
    """A data line that was refused; `line_no` counts from 1 with the header as line 1."""
    line_no: int
    reason: str


class Professional(NamedTuple):
    idnat: str
    rpps: str | None
    civility: str
    practice_civility: str
    family_name: str
    given_name: str
    profession_code: str
    profession_label: str
    specialty_code: str
    specialty_label: str
    digest: str  # "" when the line describes the person only in part (a mailbox line)


class Organisation(NamedTuple):
    id: str
    finess: str | None
    siret: str | None
    name: str
    trade_name: str
    kind: str
    sector_code: str
    sector_label: str
    street: str
    postal_code: str
    city: str
    department: str
    country: str
    digest: str  # "" when the line describes the structure only in part (a mailbox line)


class Activity(NamedTuple):
    key: str  # digest of the other fields: the same activity on two lines is one activity
    idnat: str
    organisation_id: str | None
    mode_code: str
    mode_label: str
    city: str
    postal_code: str


class PsLine(NamedTuple):
    line_no: int
    professional: Professional
    activity: Activity
    organisation: Organisation | None


class MailboxLine(NamedTuple):
    line_no: int
    address: str  # lower case
    kind: str  # nominative, organisational, applicative, cabinet
    owner: Professional | None  # as the mailbox line describes the person (digest "")
    organisation: Organisation | None  # as the mailbox line describes the structure (digest "")
    service: str
    description: str
    dematerialised: bool  # "Dématérialisation" = O; no column stores it yet
    published: bool  # the public extract leaves out liste rouge boxes: all it lists are published
    digest: str

    @property
    def owner_idnat(self) -> str | None:
        return self.owner.idnat if self.owner else None

    @property
    def organisation_id(self) -> str | None:
        return self.organisation.id if self.organisation else None


class _Refused(Exception):
    """Raised inside the line parsers; the message becomes the `Rejected` reason."""


def digest(*fields: str) -> str:
    """Fingerprint of an entry's fields: an unchanged entry keeps its digest from file to file,
    which lets the importer skip rows that did not change."""
    joined = "\x1f".join(fields)  # the unit separator never occurs in the data
    return hashlib.sha1(joined.encode("utf-8")).hexdigest()


def stamp_from_name(name: str) -> str | None:
    """The extract's AAAAMMJJhhmm stamp from a file name such as `…_202611230600.txt`."""
    match = _STAMP.search(PurePath(name).name)
    if not match:
        return None
    try:
        datetime.strptime(match.group(1), "%Y%m%d%H%M")
    except ValueError:
        return None
    return match.group(1)


@lru_cache(maxsize=4096)  # a hospital's name comes back on each of its activity lines
def organisation_kind(name: str, sector_code: str, sector_label: str) -> str:
    """hospital, ehpad, dac, cpts, lab, cabinet or other, from the sector and the name.

    The sector comes first because it is coded: a cabinet of a Dr Hopital is still a cabinet.
    """
    if sector_code == _SECTOR_CABINET or "cabinet" in fold(sector_label).split():
        return "cabinet"
    words = f" {fold(name)} "
    for kind, phrases in _ORGANISATION_KINDS:
        if any(f" {phrase} " in words for phrase in phrases):
            return kind
    return "other"


class ExtractParser:
    """Reads one extract: construct with its header line (and file name), then `feed` lines."""

    def __init__(self, header: str | bytes, file_name: str = "") -> None:
        if isinstance(header, bytes):
            header = header.decode("utf-8", errors="replace")
        names = header.lstrip("\ufeff").rstrip("\r\n").split("|")
        self.trailing_pipe = len(names) > 1 and names[-1] == ""
        if self.trailing_pipe:
            names.pop()
        for kind, (columns, used) in _FORMATS.items():
            if names[0] == columns[0]:
                break
        else:
            raise ExtractError(f"unknown header starting {names[0][:40]!r}: expected a PS_LibreAcces_Personne_activite "
                               "or an Extraction_Correspondance_MSSante extract")
        if len(names) != len(columns):
            raise ExtractError(f"the header has {len(names)} columns, a {kind} extract has {len(columns)}")
        missing = [name for name in used if name not in names]
        if missing:
            raise ExtractError(f"the header lacks the column(s) {', '.join(missing)}")
        self.kind = kind
        self.columns = len(columns)
        self.stamp = stamp_from_name(file_name)
        self.line_no = 1
        self._pick = itemgetter(*(names.index(name) for name in used))
        self._parse = self._ps_line if kind == PS else self._mss_line

    def feed(self, line: str | bytes) -> PsLine | MailboxLine | Rejected:
        """Parse the next data line (with or without its line ending)."""
        self.line_no += 1
        try:
            text = line.decode("utf-8") if isinstance(line, bytes) else line
        except UnicodeDecodeError as exc:
            return Rejected(self.line_no, f"not valid UTF-8 (byte {exc.start + 1} of the line)")
        fields = text.rstrip("\r\n").split("|")
        # With a trailing "|" expected, a line without one cannot be told from a line missing its
        # last (often empty) column: both are refused rather than read shifted.
        found = len(fields) - 1 if self.trailing_pipe and fields[-1] == "" else len(fields)
        if found != self.columns:
            return Rejected(self.line_no, f"expected {self.columns} columns, found {found}")
        if self.trailing_pipe and fields[-1] != "":
            return Rejected(self.line_no, "the line does not end with '|' as the header does")
        try:
            return self._parse([value.strip() for value in self._pick(fields)])
        except _Refused as refusal:
            return Rejected(self.line_no, str(refusal))

    def _ps_line(self, values: list[str]) -> PsLine:
        (id_type, ident, idnat, civility, practice_civility, family, given, profession_code, profession_label,
         specialty_code, specialty_label, mode_code, mode_label, siret, finess, technical_id, name, trade_name,
         number, repetition, street_type, street_name, postal_code, city, department, country, sector_code,
         sector_label) = values
        idnat = _professional_idnat(id_type, ident, idnat)
        if not family:
            raise _Refused("family name (Nom d'exercice) is empty")
        _check_widths(profession_code=(profession_code, 4), specialty_code=(specialty_code, 8),
                      mode_code=(mode_code, 4), postal_code=(postal_code, 10), department=(department, 3),
                      sector_code=(sector_code, 8))
        professional = Professional(
            idnat, ident if id_type == "8" else None, civility, practice_civility, family, given, profession_code,
            profession_label, specialty_code, specialty_label,
            digest(idnat, civility, practice_civility, family, given, profession_code, profession_label,
                   specialty_code, specialty_label))
        organisation = None
        organisation_id = _structure_id(finess, siret, technical_id)
        if organisation_id:
            street = " ".join(filter(None, (number, repetition, street_type, street_name)))
            kind = organisation_kind(name, sector_code, sector_label)
            fields = (name, trade_name, kind, sector_code, sector_label, street, postal_code, city, department,
                      country)
            organisation = Organisation(organisation_id, finess or None, siret or None, *fields,
                                        digest(organisation_id, finess, siret, *fields))
        key = digest(idnat, organisation_id or "", mode_code, mode_label, city, postal_code)
        activity = Activity(key, idnat, organisation_id, mode_code, mode_label, city, postal_code)
        return PsLine(self.line_no, professional, activity, organisation)

    def _mss_line(self, values: list[str]) -> MailboxLine:
        (box_type, address, id_type, ident, idnat, structure_type, structure, service, civility, family, given,
         profession_code, profession_label, specialty_code, specialty_label, dematerialised, name, trade_name,
         number, repetition, street_type, street_name, delivery_line, postal_code, department, country) = values
        kind = MAILBOX_KINDS.get(box_type)
        if kind is None:
            raise _Refused(f"mailbox type {box_type!r} is not PER, ORG, APP or CAB")
        address = address.lower()
        if len(address) > _MAX_ADDRESS or not _ADDRESS.fullmatch(address):
            raise _Refused(f"mailbox address {address!r} is not a valid address")
        owner = None
        if id_type or ident or idnat:
            idnat = _professional_idnat(id_type, ident, idnat)
            if not family:
                raise _Refused("family name (Nom d'exercice) is empty")
            _check_widths(profession_code=(profession_code, 4), specialty_code=(specialty_code, 8))
            owner = Professional(idnat, ident if id_type == "8" else None, "", civility, family, given,
                                 profession_code, profession_label, specialty_code, specialty_label, "")
        elif box_type == "PER":
            raise _Refused("personal mailbox (PER) without a professional identifier")
        organisation = None
        if structure:
            _check_widths(postal_code=(postal_code, 10), department=(department, 3))
            organisation_id = _mailbox_structure_id(structure_type, structure)
            city = delivery_line.removeprefix(postal_code).strip() if postal_code else delivery_line
            organisation = Organisation(
                organisation_id, structure if structure_type == _STRUCTURE_FINESS else None,
                structure if structure_type == _STRUCTURE_SIRET else None, name, trade_name,
                organisation_kind(name, "", ""), "", "",
                " ".join(filter(None, (number, repetition, street_type, street_name))), postal_code, city,
                department, country, "")
        elif box_type in ("ORG", "APP"):
            raise _Refused(f"{box_type} mailbox without a structure identifier")
        elif owner is None:
            raise _Refused("CAB mailbox with neither a professional nor a structure identifier")
        description = trade_name or name
        box_digest = digest(kind, owner.idnat if owner else "", organisation.id if organisation else "",
                            service, description)
        return MailboxLine(self.line_no, address, kind, owner, organisation, service, description,
                           dematerialised == "O", True, box_digest)


def _professional_idnat(id_type: str, ident: str, idnat: str) -> str:
    """The national identifier the line's three identifier columns agree on."""
    if id_type == "8":
        if not valid_rpps(ident):
            shape = len(ident) == 11 and ident.isdigit()
            raise _Refused(f"RPPS {ident!r} " + ("has a wrong check digit" if shape else "is not 11 digits"))
        expected = idnat_rpps(ident)
    elif id_type == "0":
        if not valid_adeli(ident):
            raise _Refused(f"ADELI number {ident!r} is not 9 characters led by a department")
        expected = idnat_adeli(ident)
    else:
        raise _Refused(f"identifier type {id_type!r} is neither RPPS (8) nor ADELI (0)")
    if idnat and idnat != expected:
        raise _Refused(f"national identifier {idnat!r} does not match the identifier {ident!r}")
    return expected


def _structure_id(finess: str, siret: str, technical_id: str) -> str | None:
    """Structure id of a PS line: FINESS site, else SIRET site, else the technical id."""
    if finess and not valid_finess(finess):
        raise _Refused(f"FINESS site {finess!r} is not a valid FINESS number")
    if siret and not valid_siret(siret):
        raise _Refused(f"SIRET site {siret!r} is not a valid SIRET number")
    if finess:
        return idnat_finess(finess)
    if siret:
        return idnat_siret(siret)
    if technical_id:
        if len(technical_id) >= _MAX_ID:
            raise _Refused(f"structure technical id {technical_id!r} is longer than {_MAX_ID - 1} characters")
        return TECHNICAL_PREFIX + technical_id
    return None


def _mailbox_structure_id(structure_type: str, structure: str) -> str:
    if structure_type == _STRUCTURE_FINESS:
        if not valid_finess(structure):
            raise _Refused(f"FINESS structure {structure!r} is not a valid FINESS number")
        return idnat_finess(structure)
    if structure_type == _STRUCTURE_SIRET:
        if not valid_siret(structure):
            raise _Refused(f"SIRET structure {structure!r} is not a valid SIRET number")
        return idnat_siret(structure)
    if len(structure) >= _MAX_ID:
        raise _Refused(f"structure identifier {structure!r} is longer than {_MAX_ID - 1} characters")
    return TECHNICAL_PREFIX + structure


def _check_widths(**columns: tuple[str, int]) -> None:
    for label, (value, width) in columns.items():
        if len(value) > width:
            raise _Refused(f"{label.replace('_', ' ')} {value!r} is longer than {width} characters")
