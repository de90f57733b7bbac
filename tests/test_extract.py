"""Parsing of the national extracts (directory/extract.py), on generated extracts and edited lines.

The extracts come from directory/synthetic.py, which says what each line it wrote holds: every
record the parser returns is held against that, and its rejections against the bad lines the
generator reports.
"""
from pathlib import Path

import pytest

from directory.extract import (MSS, PS, ExtractError, ExtractParser, MailboxLine, PsLine, Rejected,
                               organisation_kind, stamp_from_name)
from directory.synthetic import CHECK_DIGIT, COLUMNS, EMPTY_NAME, Extracts, write_extracts

STAMP = "202611230600"
KINDS = {"PER": "nominative", "ORG": "organisational", "APP": "applicative"}


@pytest.fixture(scope="module")
def extracts(tmp_path_factory) -> Extracts:
    return write_extracts(tmp_path_factory.mktemp("extracts"), people=150, bad=6, seed=3, stamp=STAMP)


def parse(path: Path) -> tuple[ExtractParser, list]:
    with open(path, "rb") as file:
        parser = ExtractParser(file.readline(), path.name)
        return parser, [parser.feed(line) for line in file]


def file_lines(path: Path) -> tuple[str, list[str]]:
    header, *lines = path.read_text(encoding="utf-8").splitlines()
    return header, lines


def edited(path: Path, line_no: int, changes: dict[str, str] | None = None) -> tuple[str, str]:
    """The header and data line `line_no` (the header is line 1) with some columns, by header
    name, replaced."""
    header, lines = file_lines(path)
    names = header.split("|")
    fields = lines[line_no - 2].split("|")
    for name, value in (changes or {}).items():
        fields[names.index(name)] = value
    return header, "|".join(fields)


def feed_one(header: str, line: str | bytes):
    return ExtractParser(header, "x_202611230600.txt").feed(line)


def expected_rejections(extracts: Extracts, path: Path, columns: int) -> dict[int, str]:
    """The parser's wording for each bad line the generator reports."""
    wording = {CHECK_DIGIT: lambda value: f"RPPS '{value}' has a wrong check digit",
               EMPTY_NAME: lambda value: "family name (Nom d'exercice) is empty",
               COLUMNS: lambda value: f"expected {columns} columns, found {value}"}
    return {n: wording[d.kind](d.value) for n, d in extracts.defects_in(path).items()}


def hospital_line(extracts: Extracts, overseas: bool = True) -> int:
    """A salaried doctor's line at a hospital with a FINESS number (overseas, by default)."""
    return next(n for n, (p, a) in sorted(extracts.activities.items())
                if a.site and a.site.kind == "hospital" and a.site.finess and p.profession[0] == "10"
                and a.site.town.department.startswith("97") == overseas)


def test_ps_file_parses_and_rejects_the_bad_lines_by_number(extracts):
    parser, results = parse(extracts.ps)
    assert parser.kind == PS and parser.columns == 52 and parser.stamp == STAMP
    rejected = {r.line_no: r.reason for r in results if isinstance(r, Rejected)}
    assert {d.kind for d in extracts.defects_in(extracts.ps).values()} == {CHECK_DIGIT, EMPTY_NAME, COLUMNS}
    assert rejected == expected_rejections(extracts, extracts.ps, 52)
    records = [r for r in results if isinstance(r, PsLine)]
    written = extracts.activities
    assert len(records) == len(results) - len(rejected) == len(written)
    for record in records:  # each record says what the generator wrote on its line
        person, activity = written[record.line_no]
        p = record.professional
        assert (p.idnat, p.rpps, p.family_name, p.given_name) == \
            (person.idnat, person.rpps, person.family_name, person.given_name)
        assert (p.civility, p.practice_civility) == (person.civility[1], person.title[1])
        assert (p.profession_code, p.profession_label, p.specialty_code, p.specialty_label) == \
            (*person.profession, *person.specialty)
        assert record.activity.mode_code == activity.mode[0] and record.activity.idnat == person.idnat
        site, organisation = activity.site, record.organisation
        if site is None:
            assert organisation is None and record.activity.organisation_id is None
            continue
        assert record.activity.organisation_id == organisation.id == site.id
        assert (organisation.finess, organisation.siret) == (site.finess or None, site.siret or None)
        assert (organisation.name, organisation.kind) == (site.name, site.kind)
        assert (organisation.city, organisation.postal_code, organisation.department) == \
            (site.town.city, site.town.postal_code, site.town.department)
        assert organisation.street == site.street_line

    first = records[0]
    assert first.line_no == min(written) and first.professional.idnat == next(iter(extracts.people))
    hospital = next(r for r in records if r.line_no == hospital_line(extracts))
    assert hospital.organisation.id == "3" + hospital.organisation.finess
    assert hospital.organisation.finess.startswith("970") and hospital.organisation.kind == "hospital"
    assert hospital.professional.practice_civility == "Docteur" and hospital.professional.specialty_code[:2] == "SM"
    cabinet = next(r for r in records if r.organisation and r.organisation.kind == "cabinet"
                   and not r.organisation.siret)  # liberal: no FINESS nor SIRET, the technical id
    assert cabinet.organisation.id.startswith("RR") and cabinet.activity.mode_code == "L"
    corsican = {r.organisation.id for r in records if r.organisation and r.organisation.finess
                and r.organisation.finess[:2] in ("2A", "2B")}
    assert {i[:3] for i in corsican} == {"32A", "32B"}
    overseas = {r.organisation.department for r in records if r.organisation and r.organisation.finess
                and r.organisation.finess.startswith("97")}
    assert overseas and overseas <= {"971", "972", "973", "974"}


def test_mss_file_parses_and_rejects_the_bad_lines_by_number(extracts):
    parser, results = parse(extracts.mss)
    assert parser.kind == MSS and parser.columns == 31
    rejected = {r.line_no: r.reason for r in results if isinstance(r, Rejected)}
    assert rejected == expected_rejections(extracts, extracts.mss, 31) and len(rejected) == 6
    boxes = [r for r in results if isinstance(r, MailboxLine)]
    written = extracts.boxes_by_line
    assert len(boxes) == len(written) and {b.line_no for b in boxes} == set(written)
    assert len({b.address for b in boxes}) < len(boxes)  # some addresses come twice
    for box in boxes:
        expected = written[box.line_no]
        assert (box.address, box.kind, box.owner_idnat, box.service) == \
            (expected.address, KINDS[expected.type], expected.owner, expected.service)
        assert box.organisation_id == (expected.site.id if expected.site else None)
        assert box.published and box.dematerialised
    personal = next(b for b in boxes if b.kind == "nominative")
    person = extracts.people[personal.owner_idnat]
    assert personal.organisation_id is None and personal.owner.family_name == person.family_name
    assert personal.owner.profession_code == person.profession[0]
    assert personal.owner.digest == ""  # a mailbox line describes its owner only in part
    emergency = next(b for b in boxes if b.service == "Urgences" and b.organisation.finess.startswith("970"))
    site = written[emergency.line_no].site
    assert emergency.kind == "organisational" and emergency.owner is None
    assert emergency.organisation_id == "3" + site.finess and emergency.organisation.kind == "hospital"
    assert emergency.organisation.name == emergency.description == site.name
    assert (emergency.organisation.city, emergency.organisation.postal_code) == (site.town.city, site.town.postal_code)
    corsican = next(b for b in boxes if b.organisation and b.organisation.finess
                    and b.organisation.finess.startswith("2A"))
    assert corsican.organisation_id == "3" + corsican.organisation.finess
    application = next(b for b in boxes if b.kind == "applicative")
    assert application.organisation.kind in ("hospital", "lab") and application.service in ("DPI", "Resultats")


@pytest.mark.parametrize("name, stamp", [
    ("PS_LibreAcces_Personne_activite_202611230600.txt", "202611230600"),
    ("/some/dir/Extraction_Correspondance_MSSante_202601020304.txt", "202601020304"),
    ("PS_LibreAcces_Personne_activite_202613230600.txt", None),  # month 13
    ("PS_LibreAcces_Personne_activite_sample.txt", None),
    ("PS_LibreAcces_Personne_activite_202611230600.txt.gz", None),
])
def test_stamp_from_file_name(name, stamp):
    assert stamp_from_name(name) == stamp


def test_header_is_checked(extracts):
    header, _ = file_lines(extracts.ps)
    assert ExtractParser("\ufeff" + header).kind == PS  # a byte order mark is tolerated
    with pytest.raises(ExtractError, match="unknown header"):
        ExtractParser("Nom|Prénom|")
    with pytest.raises(ExtractError, match="51 columns"):
        ExtractParser(header.rsplit("|", 2)[0] + "|")
    with pytest.raises(ExtractError, match="Nom d'exercice"):
        ExtractParser(header.replace("Nom d'exercice", "Nom"))


@pytest.mark.parametrize("changes, reason", [
    ({"Identifiant PP": "1000000001"}, "RPPS '1000000001' is not 11 digits"),
    ({"Identification nationale PP": "899999999999"}, "national identifier '899999999999' does not match"),
    ({"Type d'identifiant PP": "9"}, "identifier type '9' is neither RPPS (8) nor ADELI (0)"),
    ({"Nom d'exercice": ""}, "family name (Nom d'exercice) is empty"),
    ({"Numéro FINESS site": "970001005"}, "FINESS site '970001005' is not a valid FINESS number"),
    ({"Numéro FINESS site": "2C0001040"}, "FINESS site '2C0001040' is not a valid FINESS number"),
    ({"Numéro SIRET site": "7328293200007"}, "SIRET site '7328293200007' is not a valid SIRET number"),
    ({"Code profession": "12345"}, "profession code '12345' is longer than 4 characters"),
])
def test_bad_ps_line_is_rejected_with_its_reason(extracts, changes, reason):
    result = feed_one(*edited(extracts.ps, hospital_line(extracts), changes))
    assert isinstance(result, Rejected) and result.line_no == 2
    assert result.reason.startswith(reason)


def test_line_shape(extracts):
    header, line = edited(extracts.ps, hospital_line(extracts))
    assert isinstance(feed_one(header, line + "\r\n"), PsLine)
    assert feed_one(header, line[:-1]) == Rejected(2, "expected 52 columns, found 51")
    assert feed_one(header, line + "extra|") == Rejected(2, "expected 52 columns, found 53")
    assert feed_one(header, line[:-1] + "X") == Rejected(2, "the line does not end with '|' as the header does")
    assert feed_one(header, "") == Rejected(2, "expected 52 columns, found 0")
    latin1 = line.encode("utf-8").replace("|Salarié|".encode("utf-8"), b"|Salari\xe9|")
    assert feed_one(header, latin1) == Rejected(2, f"not valid UTF-8 (byte {latin1.index(0xE9) + 1} of the line)")


def test_structure_identifier_precedence(extracts):
    line_no = hospital_line(extracts)
    finess = extracts.activities[line_no][1].site.finess
    siret = feed_one(*edited(extracts.ps, line_no, {"Numéro FINESS site": "", "Numéro SIRET site": "73282932000074"}))
    assert siret.organisation.id == "573282932000074" and siret.organisation.siret == "73282932000074"
    corsican = feed_one(*edited(extracts.ps, line_no, {"Numéro FINESS site": "2B0001049"}))
    assert corsican.organisation.id == "32B0001049"
    technical = feed_one(*edited(extracts.ps, line_no, {"Numéro FINESS site": ""}))
    assert technical.organisation.id == "RF" + finess and technical.organisation.finess is None
    nothing = feed_one(*edited(extracts.ps, line_no, {"Numéro FINESS site": "",
                                                     "Identifiant technique de la structure": ""}))
    assert nothing.organisation is None and nothing.activity.organisation_id is None


def test_digests_follow_the_fields(extracts):
    _, results = parse(extracts.ps)
    records = {r.line_no: r for r in results if isinstance(r, PsLine)}
    assert all(len(r.professional.digest) == 40 and int(r.professional.digest, 16) >= 0 for r in records.values())
    # one activity on two lines: one activity; a person's lines: one professional digest
    person, twice = next((p, a) for p in extracts.people.values() for a in p.activities if a.lines == 2)
    same_person = [records[n] for a in person.activities for n in a.line_nos]
    assert len({r.professional.digest for r in same_person}) == 1
    assert len({records[n].activity.key for n in twice.line_nos}) == 1
    assert len({r.activity.key for r in same_person}) == len(person.activities)
    several = next(p for p in extracts.people.values() if len(p.activities) > 1 and p is not person)
    keys = {records[n].activity.key for a in several.activities for n in a.line_nos}
    assert len(keys) == len(several.activities)

    line_no = twice.line_nos[0]
    renamed = feed_one(*edited(extracts.ps, line_no, {"Prénom d'exercice": "CHLOE"}))
    assert renamed.professional.digest != records[line_no].professional.digest
    other_mode = "S" if twice.mode[0] == "L" else "L"
    moved = feed_one(*edited(extracts.ps, line_no, {"Code mode exercice": other_mode}))
    assert moved.activity.key != records[line_no].activity.key


def personal_line(extracts: Extracts) -> int:
    return next(n for n, b in sorted(extracts.boxes_by_line.items()) if b.type == "PER")


@pytest.mark.parametrize("changes, reason", [
    ({"Type de BAL": "XYZ"}, "mailbox type 'XYZ' is not PER, ORG, APP or CAB"),
    ({"Adresse BAL": "eric.fontaine0@localhost"}, "mailbox address 'eric.fontaine0@localhost' is not a valid address"),
    ({"Adresse BAL": "eric fontaine@msante.test"}, "mailbox address 'eric fontaine@msante.test' is not a valid"),
    ({"Identifiant PP": "10000000018"}, "RPPS '10000000018' has a wrong check digit"),
    ({"Type Identifiant PP": "", "Identifiant PP": "", "Identification nationale PP": ""},
     "personal mailbox (PER) without a professional identifier"),
])
def test_bad_mss_line_is_rejected_with_its_reason(extracts, changes, reason):
    result = feed_one(*edited(extracts.mss, personal_line(extracts), changes))
    assert isinstance(result, Rejected) and result.reason.startswith(reason)


def test_mailbox_kinds_and_address_case(extracts):
    personal = personal_line(extracts)
    owner = extracts.boxes_by_line[personal].owner
    organisational, box = next((n, b) for n, b in sorted(extracts.boxes_by_line.items()) if b.type == "ORG"
                               and b.site.finess)
    shouting = feed_one(*edited(extracts.mss, personal, {"Adresse BAL": "Eric.Fontaine0@MSSANTE.test"}))
    assert shouting.address == "eric.fontaine0@mssante.test"
    app = feed_one(*edited(extracts.mss, organisational, {"Type de BAL": "APP"}))
    assert app.kind == "applicative" and app.organisation_id == box.site.id
    cab = feed_one(*edited(extracts.mss, personal, {"Type de BAL": "CAB"}))
    assert cab.kind == "cabinet" and cab.owner_idnat == owner
    orphan = feed_one(*edited(extracts.mss, organisational, {"Identification Structure": ""}))
    assert orphan.reason == "ORG mailbox without a structure identifier"
    siret = feed_one(*edited(extracts.mss, organisational, {"Type identifiant structure": "3",
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
