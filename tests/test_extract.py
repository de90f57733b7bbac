"""Parsing of the national extracts (directory/extract.py), on the shared samples and on edited lines."""
import os
from pathlib import Path

import pytest

from directory.extract import (MSS, PS, ExtractError, ExtractParser, MailboxLine, PsLine, Rejected,
                               organisation_kind, stamp_from_name)

DATA = Path(os.environ.get("MSANTE_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
PS_SAMPLE = DATA / "PS_LibreAcces_Personne_activite_sample.txt"
MSS_SAMPLE = DATA / "Extraction_Correspondance_MSSante_sample.txt"
pytestmark = pytest.mark.skipif(not PS_SAMPLE.exists(), reason=f"no shared samples in {DATA} (set MSANTE_SHARED_DATA)")


def parse(path: Path) -> tuple[ExtractParser, list]:
    with open(path, "rb") as file:
        parser = ExtractParser(file.readline(), path.name)
        return parser, [parser.feed(line) for line in file]


def sample_lines(path: Path) -> tuple[str, list[str]]:
    header, *lines = path.read_text(encoding="utf-8").splitlines()
    return header, lines


def edited(path: Path, line_index: int = 0, changes: dict[str, str] | None = None) -> tuple[str, str]:
    """The header and one sample data line with some columns (by header name) replaced."""
    header, lines = sample_lines(path)
    names = header.split("|")
    fields = lines[line_index].split("|")
    for name, value in (changes or {}).items():
        fields[names.index(name)] = value
    return header, "|".join(fields)


def feed_one(header: str, line: str):
    return ExtractParser(header, "x_202611230600.txt").feed(line)


def test_ps_sample_parses_and_rejects_bad_lines_by_number():
    parser, results = parse(PS_SAMPLE)
    assert parser.kind == PS and parser.columns == 52 and parser.stamp is None  # "_sample.txt": no stamp
    rejected = {r.line_no: r.reason for r in results if isinstance(r, Rejected)}
    assert rejected == {
        14: "expected 52 columns, found 20",
        33: "expected 52 columns, found 20",
        34: "RPPS '10000000216' has a wrong check digit",
        35: "RPPS '10000000216' has a wrong check digit",
        44: "RPPS '10000000265' has a wrong check digit",
        45: "RPPS '10000000265' has a wrong check digit",
        46: "RPPS '10000000265' has a wrong check digit",
    }
    records = [r for r in results if isinstance(r, PsLine)]
    assert len(records) == len(results) - 7 == 88
    first = records[0]
    assert first.line_no == 2
    assert first.professional.idnat == "810000000017" and first.professional.family_name == "FONTAINE"
    assert first.professional.given_name == "ÉRIC" and first.professional.civility == "Monsieur"
    assert first.organisation.id == "RR2A0001040"  # liberal: no FINESS nor SIRET, the technical id
    assert first.organisation.kind == "cabinet" and first.organisation.department == "2A"
    assert first.activity.organisation_id == first.organisation.id and first.activity.mode_code == "L"
    hospital = records[1]
    assert hospital.organisation.id == "3970001004" and hospital.organisation.finess == "970001004"
    assert hospital.organisation.kind == "hospital"
    assert hospital.professional.practice_civility == "Docteur" and hospital.professional.specialty_code == "SM54"


def test_mss_sample_parses_and_rejects_bad_lines_by_number():
    parser, results = parse(MSS_SAMPLE)
    assert parser.kind == MSS and parser.columns == 31
    rejected = {r.line_no: r.reason for r in results if isinstance(r, Rejected)}
    assert rejected == {
        5: "family name (Nom d'exercice) is empty",
        6: "family name (Nom d'exercice) is empty",
        12: "RPPS '10000000109' has a wrong check digit",
        24: "RPPS '10000000216' has a wrong check digit",
        31: "RPPS '10000000265' has a wrong check digit",
        48: "family name (Nom d'exercice) is empty",
    }
    boxes = [r for r in results if isinstance(r, MailboxLine)]
    assert len(boxes) == 73
    personal = boxes[0]
    assert personal.address == "eric.fontaine0@msante.test" and personal.kind == "nominative"
    assert personal.owner_idnat == "810000000017" and personal.organisation_id is None
    assert personal.owner.family_name == "FONTAINE" and personal.owner.profession_code == "21"
    assert personal.owner.digest == ""  # a mailbox line describes its owner only in part
    assert personal.published and personal.dematerialised
    structure = next(b for b in boxes if b.address == "urgences.ch970001004@msante.test")
    assert structure.kind == "organisational" and structure.owner is None
    assert structure.organisation_id == "3970001004" and structure.service == "Urgences"
    assert structure.organisation.name == "CENTRE HOSPITALIER SAINT-PAUL 1"
    assert structure.organisation.city == "SAINT-PAUL" and structure.organisation.postal_code == "97460"
    assert structure.description == "CENTRE HOSPITALIER SAINT-PAUL 1"
    corsican = next(b for b in boxes if b.address == "secretariat.lab2A0001040@msante.test".lower())
    assert corsican.organisation_id == "32A0001040" and corsican.organisation.kind == "lab"


@pytest.mark.parametrize("name, stamp", [
    ("PS_LibreAcces_Personne_activite_202611230600.txt", "202611230600"),
    ("/some/dir/Extraction_Correspondance_MSSante_202601020304.txt", "202601020304"),
    ("PS_LibreAcces_Personne_activite_202613230600.txt", None),  # month 13
    ("PS_LibreAcces_Personne_activite_sample.txt", None),
    ("PS_LibreAcces_Personne_activite_202611230600.txt.gz", None),
])
def test_stamp_from_file_name(name, stamp):
    assert stamp_from_name(name) == stamp


def test_header_is_checked():
    header, _ = sample_lines(PS_SAMPLE)
    assert ExtractParser("\ufeff" + header).kind == PS  # a byte order mark is tolerated
    with pytest.raises(ExtractError, match="unknown header"):
        ExtractParser("Nom|Prénom|")
    with pytest.raises(ExtractError, match="51 columns"):
        ExtractParser(header.rsplit("|", 2)[0] + "|")
    with pytest.raises(ExtractError, match="Nom d'exercice"):
        ExtractParser(header.replace("Nom d'exercice", "Nom"))


@pytest.mark.parametrize("changes, reason", [
    ({"Identifiant PP": "1000000001"}, "RPPS '1000000001' is not 11 digits"),
    ({"Identification nationale PP": "810000000017"}, "national identifier '810000000017' does not match"),
    ({"Type d'identifiant PP": "9"}, "identifier type '9' is neither RPPS (8) nor ADELI (0)"),
    ({"Nom d'exercice": ""}, "family name (Nom d'exercice) is empty"),
    ({"Numéro FINESS site": "970001005"}, "FINESS site '970001005' is not a valid FINESS number"),
    ({"Numéro FINESS site": "2C0001040"}, "FINESS site '2C0001040' is not a valid FINESS number"),
    ({"Numéro SIRET site": "7328293200007"}, "SIRET site '7328293200007' is not a valid SIRET number"),
    ({"Code profession": "12345"}, "profession code '12345' is longer than 4 characters"),
])
def test_bad_ps_line_is_rejected_with_its_reason(changes, reason):
    result = feed_one(*edited(PS_SAMPLE, 1, changes))
    assert isinstance(result, Rejected) and result.line_no == 2
    assert result.reason.startswith(reason)


def test_line_shape():
    header, line = edited(PS_SAMPLE)
    assert isinstance(feed_one(header, line + "\r\n"), PsLine)
    assert feed_one(header, line[:-1]) == Rejected(2, "expected 52 columns, found 51")
    assert feed_one(header, line + "extra|") == Rejected(2, "expected 52 columns, found 53")
    assert feed_one(header, line[:-1] + "X") == Rejected(2, "the line does not end with '|' as the header does")
    assert feed_one(header, "") == Rejected(2, "expected 52 columns, found 0")
    latin1 = line.encode("utf-8").replace(b"FONTAINE", b"FONT\xe9INE")
    assert feed_one(header, latin1) == Rejected(2, f"not valid UTF-8 (byte {latin1.index(0xE9) + 1} of the line)")


def test_structure_identifier_precedence():
    header, _ = sample_lines(PS_SAMPLE)
    siret = feed_one(*edited(PS_SAMPLE, 1, {"Numéro FINESS site": "", "Numéro SIRET site": "73282932000074"}))
    assert siret.organisation.id == "573282932000074" and siret.organisation.siret == "73282932000074"
    corsican = feed_one(*edited(PS_SAMPLE, 1, {"Numéro FINESS site": "2B0001049"}))
    assert corsican.organisation.id == "32B0001049"
    technical = feed_one(*edited(PS_SAMPLE, 1, {"Numéro FINESS site": ""}))
    assert technical.organisation.id == "RR970001004" and technical.organisation.finess is None
    nothing = feed_one(*edited(PS_SAMPLE, 1, {"Numéro FINESS site": "", "Identifiant technique de la structure": ""}))
    assert nothing.organisation is None and nothing.activity.organisation_id is None


def test_digests_follow_the_fields():
    _, results = parse(PS_SAMPLE)
    records = [r for r in results if isinstance(r, PsLine)]
    same_person = [r for r in records if r.professional.idnat == "810000000025"]
    assert len(same_person) == 3 and len({r.professional.digest for r in same_person}) == 1
    assert all(len(r.professional.digest) == 40 and int(r.professional.digest, 16) >= 0 for r in records)
    # three lines at the same hospital, same mode: one activity
    assert len({r.activity.key for r in same_person}) == 1
    renamed = feed_one(*edited(PS_SAMPLE, 1, {"Prénom d'exercice": "CHLOE"}))
    assert renamed.professional.digest != same_person[0].professional.digest
    moved = feed_one(*edited(PS_SAMPLE, 1, {"Code mode exercice": "L"}))
    assert moved.activity.key != same_person[0].activity.key


@pytest.mark.parametrize("changes, reason", [
    ({"Type de BAL": "XYZ"}, "mailbox type 'XYZ' is not PER, ORG, APP or CAB"),
    ({"Adresse BAL": "eric.fontaine0@localhost"}, "mailbox address 'eric.fontaine0@localhost' is not a valid address"),
    ({"Adresse BAL": "eric fontaine@msante.test"}, "mailbox address 'eric fontaine@msante.test' is not a valid"),
    ({"Identifiant PP": "10000000018"}, "RPPS '10000000018' has a wrong check digit"),
    ({"Type Identifiant PP": "", "Identifiant PP": "", "Identification nationale PP": ""},
     "personal mailbox (PER) without a professional identifier"),
])
def test_bad_mss_line_is_rejected_with_its_reason(changes, reason):
    result = feed_one(*edited(MSS_SAMPLE, 0, changes))
    assert isinstance(result, Rejected) and result.reason.startswith(reason)


def test_mailbox_kinds_and_address_case():
    header, lines = sample_lines(MSS_SAMPLE)
    organisational = lines.index(next(line for line in lines if line.startswith("ORG|")))
    box = feed_one(*edited(MSS_SAMPLE, 0, {"Adresse BAL": "Eric.Fontaine0@MSSANTE.test"}))
    assert box.address == "eric.fontaine0@mssante.test"
    app = feed_one(*edited(MSS_SAMPLE, organisational, {"Type de BAL": "APP"}))
    assert app.kind == "applicative" and app.organisation_id == "3970001004"
    cab = feed_one(*edited(MSS_SAMPLE, 0, {"Type de BAL": "CAB"}))
    assert cab.kind == "cabinet" and cab.owner_idnat == "810000000017"
    orphan = feed_one(*edited(MSS_SAMPLE, organisational, {"Identification Structure": ""}))
    assert orphan.reason == "ORG mailbox without a structure identifier"
    siret = feed_one(*edited(MSS_SAMPLE, organisational, {"Type identifiant structure": "3",
                                                        "Identification Structure": "73282932000074"}))
    assert siret.organisation_id == "573282932000074"


@pytest.mark.parametrize("name, sector_code, sector_label, kind", [
    ("CENTRE HOSPITALIER SAINT-PAUL 1", "SA01", "Etablissement public de santé", "hospital"),
    ("CHU DE POITIERS", "", "", "hospital"),
    ("Hôpital Nord", "", "", "hospital"),
    ("EHPAD LES GLYCINES", "", "", "ehpad"),
    ("EHPAD DU CENTRE HOSPITALIER", "", "", "ehpad"),
    ("DISPOSITIF D'APPUI A LA COORDINATION POITIERS 3", "", "", "dac"),
    ("DAC 86", "", "", "dac"),
    ("CPTS DIJON 4", "", "", "cpts"),
    ("LABORATOIRE AJACCIO 5", "", "", "lab"),
    ("CABINET FONTAINE", "SA07", "Cabinet individuel", "cabinet"),
    ("DR HOPITAL", "SA07", "Cabinet individuel", "cabinet"),  # the coded sector wins over the name
    ("SELARL DES ORMES", "", "", "other"),
    ("CHARLES ET ASSOCIES", "", "", "other"),  # "ch" only as a whole word
])
def test_organisation_kind(name, sector_code, sector_label, kind):
    assert organisation_kind(name, sector_code, sector_label) == kind
