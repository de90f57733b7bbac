"""Synthetic national directory extracts: fake people in the real file formats.

Why it exists: the import, the parser and the directory searches must be tested and benchmarked
on a fresh clone, with no national file at hand (real extracts hold personal data and must never
be committed). This module writes both extracts of the Annuaire Santé, of any size:

- PS_LibreAcces_Personne_activite_<stamp>.txt: one line per activity (52 columns, the real
  header), a person with several workplaces on consecutive lines, now and then one activity on
  two lines as the national file does;
- Extraction_Correspondance_MSSante_<stamp>.txt: one line per mailbox (31 columns): personal
  (PER) boxes, organisational (ORG) boxes of the structures, applicative (APP) boxes of
  hospitals and laboratories, now and then one address on two lines; most at the operator's
  domain, some at another operator's (OTHER_DOMAIN).

Identifiers carry valid check digits (RPPS, FINESS, SIRET: Luhn), Corsican FINESS numbers start
with 2A/2B, overseas (97x) structures have the 970x FINESS numbers of their department. Names
are drawn from lists of common surnames and given names, so nobody real is described; addresses
are ASCII (no IDN). The output depends only on the arguments: the same seed writes the same bytes.

`bad` deliberately bad lines are added to each file, of three known kinds (a wrong RPPS check
digit, an empty family name, a wrong column count), and returned as `Defect`s with their line
numbers, so that a test can hold the parser's rejections against them. The returned `Extracts`
also describe what the good lines hold (people, structures, activities, mailboxes): a test can
check an import against what was written rather than against a second parser. The files are
written as the people are made up: without that description (the command line), memory stays
flat whatever the size.

    python -m directory.synthetic --people N [--bad K] [--seed S] [--stamp AAAAMMJJhhmm] [--domain D] OUTDIR
"""
from __future__ import annotations

import argparse
import random
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Callable, NamedTuple

from directory.extract import MSS_COLUMNS, MSS_HEADER, PS_COLUMNS, PS_HEADER
from directory.identifiers import fold, idnat_adeli, idnat_finess, idnat_rpps, idnat_siret, luhn_digit

PS_NAME = "PS_LibreAcces_Personne_activite_{stamp}.txt"
MSS_NAME = "Extraction_Correspondance_MSSante_{stamp}.txt"
OTHER_DOMAIN = "autre-operateur.test"  # boxes another operator of the trust space hosts

# Kinds of bad lines, in the order they are handed out.
CHECK_DIGIT = "check digit"  # an RPPS whose last digit is not its Luhn digit
EMPTY_NAME = "empty name"  # no "Nom d'exercice"
COLUMNS = "columns"  # a line cut short or run on: not the header's column count
DEFECT_KINDS = (CHECK_DIGIT, EMPTY_NAME, COLUMNS)

# Common surnames, with the shapes a name search must fold: accents, apostrophes, particles.
SURNAMES = (
    "MARTIN", "BERNARD", "DUBOIS", "THOMAS", "ROBERT", "PETIT", "DURAND", "LEROY", "MOREAU", "SIMON",
    "LAURENT", "MICHEL", "GARCIA", "DAVID", "BERTRAND", "ROUX", "VINCENT", "FOURNIER", "MOREL", "GIRARD",
    "ANDRÉ", "LEFÈVRE", "MERCIER", "DUPONT", "LAMBERT", "BONNET", "FRANÇOIS", "MARTINEZ", "LEGRAND", "GARNIER",
    "FAURE", "ROUSSEAU", "BLANC", "GUÉRIN", "MULLER", "HENRY", "ROUSSEL", "NICOLAS", "PERRIN", "MORIN",
    "MATHIEU", "CLÉMENT", "GAUTHIER", "DUMONT", "LOPEZ", "FONTAINE", "CHEVALIER", "ROBIN", "MASSON", "MARCHAND",
    "N'DIAYE", "N'GUESSAN", "LE BIHAN", "LE GALL", "LE BRIS", "DE LA ROCHE", "D'ALMEIDA", "HOARAU", "PAYET",
    "GRONDIN", "TECHER", "NGUYEN", "CASANOVA", "SANTONI", "BENOÎT", "LEMAÎTRE", "BOUCHÉ", "JOLY",
)
MEN = ("JEAN", "PIERRE", "LUC", "ÉRIC", "THOMAS", "NICOLAS", "KARIM", "YANN", "HUGO", "JÉRÔME", "MARC", "PAUL")
WOMEN = ("MARIE", "CLAIRE", "SOPHIE", "ISABELLE", "CHLOÉ", "FATIMA", "LÉA", "CÉLINE", "ANNE", "NADIA", "JULIE",
         "HÉLÈNE")

# code, label, weight, practice title (Code/Libellé civilité d'exercice), liberal share
_PROFESSIONS = (
    ("10", "Médecin", 30, ("DR", "Docteur"), 0.5),
    ("60", "Infirmier", 35, None, 0.3),
    ("21", "Pharmacien", 10, ("DR", "Docteur"), 0.5),
    ("70", "Masseur-Kinésithérapeute", 15, None, 0.8),
    ("40", "Chirurgien-Dentiste", 5, ("DR", "Docteur"), 0.9),
    ("50", "Sage-Femme", 5, None, 0.3),
)
_PROFESSION_WEIGHTS = [p[2] for p in _PROFESSIONS]
# Ordinal specialities of physicians (Code type savoir-faire S), the first one most common.
_SPECIALTIES = (("SM54", "Médecine générale", 6), ("SM04", "Cardiologie et maladies vasculaires", 1),
                ("SM02", "Anesthésie-réanimation", 1), ("SM42", "Pédiatrie", 1))
_SPECIALTY_WEIGHTS = [s[2] for s in _SPECIALTIES]


class Town(NamedTuple):
    postal_code: str
    commune_code: str  # INSEE
    city: str
    department: str
    department_label: str


# Overseas and Corsica come first: the smallest files still hold their structures.
TOWNS = (
    Town("97460", "97415", "SAINT-PAUL", "974", "La Réunion"),
    Town("20000", "2A004", "AJACCIO", "2A", "Corse-du-Sud"),
    Town("86000", "86194", "POITIERS", "86", "Vienne"),
    Town("97300", "97302", "CAYENNE", "973", "Guyane"),
    Town("20200", "2B033", "BASTIA", "2B", "Haute-Corse"),
    Town("21000", "21231", "DIJON", "21", "Côte-d'Or"),
    Town("97110", "97120", "POINTE-A-PITRE", "971", "Guadeloupe"),
    Town("75015", "75115", "PARIS", "75", "Paris"),
    Town("97200", "97209", "FORT-DE-FRANCE", "972", "Martinique"),
    Town("44000", "44109", "NANTES", "44", "Loire-Atlantique"),
    Town("13005", "13205", "MARSEILLE", "13", "Bouches-du-Rhône"),
    Town("69003", "69383", "LYON", "69", "Rhône"),
    Town("29200", "29019", "BREST", "29", "Finistère"),
)
_STREET_TYPES = (("R", "Rue"), ("AV", "Avenue"), ("BD", "Boulevard"), ("CHE", "Chemin"), ("PL", "Place"))
_STREETS = ("DES LILAS", "DU MOULIN", "DE LA GARE", "DES ÉCOLES", "DU STADE", "JEAN JAURÈS", "DES TILLEULS",
            "DE LA RÉPUBLIQUE", "DU PORT", "DES CHÊNES", "DE L'ÉGLISE", "VICTOR HUGO")

# Structures with a FINESS number, in the order the towns receive them: (kind, name pattern,
# sector code, sector label, services of its organisational boxes, applicative box service or "").
# Sector codes follow the RPPS nomenclature for SA01, SA04, SA07 and SA08; the others are
# illustrative (the parser reads only SA07 and the labels).
_FINESS_KINDS = (
    ("hospital", "CENTRE HOSPITALIER DE {town}", "SA01", "Etablissement public de santé",
     ("Secretariat", "Urgences"), "DPI"),
    ("lab", "LABORATOIRE DE BIOLOGIE MEDICALE DE {town}", "SA25", "Laboratoire de biologie médicale",
     ("Secretariat",), "Resultats"),
    ("ehpad", "EHPAD LES GLYCINES DE {town}", "SA17", "Etablissement pour personnes âgées", ("Secretariat",), ""),
    ("dac", "DISPOSITIF D'APPUI A LA COORDINATION DE {town}", "SA05", "Centre de santé", ("Coordination",), ""),
    ("cpts", "CPTS DE {town}", "SA05", "Centre de santé", ("Coordination",), ""),
    ("hospital", "CLINIQUE DU PARC DE {town}", "SA04", "Etablissement privé non PSPH",
     ("Secretariat",), ""),
)
_SECTOR_CABINET = ("SA07", "Cabinet individuel")
_SECTOR_GROUP = ("SA08", "Cabinet de groupe")
_SECTOR_PHARMACY = ("SA33", "Officine de pharmacie")
_SALARIED_AT = {  # the structures where each profession is salaried
    "10": ("hospital", "lab", "ehpad", "dac", "cpts"), "60": ("hospital", "ehpad", "dac"), "21": ("hospital", "lab"),
    "70": ("hospital", "ehpad"), "40": ("hospital",), "50": ("hospital",),
}


def _finess_number(town: Town, serial: int) -> str:
    """9 characters: the department (970x overseas), a serial, a Luhn digit.

    Corsican numbers (2A/2B) carry letters: the parser checks their shape only, and the last digit
    here is the serial's own Luhn digit, for lack of a published rule.
    """
    if town.department.startswith("97"):
        body = "970" + town.department[2] + f"{serial:04d}"
    elif town.department in ("2A", "2B"):
        serial_digits = f"{serial:06d}"
        return town.department + serial_digits + luhn_digit(serial_digits)
    else:
        body = town.department + f"{serial:06d}"
    return body + luhn_digit(body)


def _siret_number(rnd: random.Random) -> str:
    """14 digits: a SIREN (8 digits and its Luhn digit), an establishment number, the Luhn digit
    of the whole. SIRENs of La Poste (356000000, checked another way) cannot come out: the first
    digit is 7 or 8."""
    siren = str(rnd.randint(70_000_000, 89_999_999))
    siren += luhn_digit(siren)
    body = siren + f"{rnd.randint(1, 999):04d}"
    return body + luhn_digit(body)


@lru_cache(maxsize=1024)  # names and towns come from short lists
def _slug(text: str) -> str:
    """ASCII mailbox local part from a name: "N'DIAYE" → "n-diaye"."""
    return fold(text).replace(" ", "-")


@dataclass
class Site:
    """A structure where professionals work, as the PS file describes it."""
    id: str  # the national identifier the parser gives it (3+FINESS, 5+SIRET, R+technical id)
    finess: str
    legal_finess: str  # "Numéro FINESS établissement juridique"
    siret: str
    technical_id: str
    name: str
    kind: str  # what directory.extract.organisation_kind should find: hospital, lab, cabinet…
    sector: tuple[str, str]
    town: Town
    street: tuple[str, str, str, str]  # number, repetition index, street type code, street name
    services: tuple[str, ...] = ()  # of its organisational boxes
    application: str = ""  # service of its applicative box, if it has one
    columns: str = ""  # its part of a PS line, written once

    @property
    def street_line(self) -> str:
        number, index, type_code, name = self.street
        return " ".join(filter(None, (number, index, dict(_STREET_TYPES)[type_code], name)))


@dataclass
class Activity:
    """One workplace of a person: a line of the PS file (or two)."""
    site: Site | None  # None: an activity with no structure (a replacement, for instance)
    mode: tuple[str, str]  # Code/Libellé mode exercice
    lines: int = 1  # the national file sometimes lists one activity on two lines
    line_nos: list[int] = field(default_factory=list)  # where they were written

    @property
    def key(self) -> tuple:
        """What makes two lines one activity for the parser: the person adds their idnat."""
        town = self.site.town if self.site else None
        return (self.site.id if self.site else None, self.mode[0], town.city if town else "",
                town.postal_code if town else "")


@dataclass
class Person:
    """A made-up professional, with the columns the PS file gives them."""
    idnat: str
    id_type: str  # 8 RPPS, 0 ADELI
    ident: str
    civility: tuple[str, str]  # Code/Libellé civilité
    title: tuple[str, str]  # Code/Libellé civilité d'exercice, ("", "") but for doctors
    family_name: str
    given_name: str
    profession: tuple[str, str]
    specialty: tuple[str, str]  # ("", "") when none
    activities: list[Activity] = field(default_factory=list)

    @property
    def rpps(self) -> str | None:
        return self.ident if self.id_type == "8" else None


@dataclass
class Mailbox:
    """A line of the MSSanté file (or two)."""
    address: str
    type: str  # PER, ORG, APP
    owner: str | None  # idnat (PER)
    site: Site | None  # ORG, APP
    service: str
    lines: int = 1  # the national file lists some addresses twice
    line_nos: list[int] = field(default_factory=list)  # where they were written


class Defect(NamedTuple):
    """A deliberately bad line: the parser must reject line `line_no` of `file` for `kind`."""
    file: str  # the file name
    line_no: int  # counted from 1, the header being line 1
    kind: str  # CHECK_DIGIT, EMPTY_NAME or COLUMNS
    value: str  # the RPPS with the wrong check digit; the number of columns written; the person's RPPS

    def describe(self) -> str:
        what = {CHECK_DIGIT: f"RPPS {self.value} with a wrong check digit",
                EMPTY_NAME: f"RPPS {self.value} with an empty family name",
                COLUMNS: f"{self.value} columns instead of the header's"}[self.kind]
        return f"{self.file}:{self.line_no}: {what}"


@dataclass
class Extracts:
    """What `write_extracts` wrote: the two files, their bad lines, and what the good lines hold."""
    ps: Path
    mss: Path
    defects: list[Defect]
    people: dict[str, Person]  # by idnat, in file order
    sites: dict[str, Site]  # by id: every structure a good PS line names
    mailboxes: dict[str, Mailbox]  # by address, in file order

    def defects_in(self, path: Path) -> dict[int, Defect]:
        return {d.line_no: d for d in self.defects if d.file == path.name}

    @property
    def activities(self) -> dict[int, tuple[Person, Activity]]:
        """What each good line of the PS file holds, by line number."""
        return {n: (p, a) for p in self.people.values() for a in p.activities for n in a.line_nos}

    @property
    def boxes_by_line(self) -> dict[int, Mailbox]:
        """What each good line of the MSSanté file holds, by line number."""
        return {n: b for b in self.mailboxes.values() for n in b.line_nos}


class _Writer:
    """Holds the random generator and the serial numbers of one run."""

    def __init__(self, seed: int, domain: str) -> None:
        self.rnd = random.Random(seed)
        self.domain = domain
        self.rpps_serial = 0
        self.site_serial = 0
        self.box_numbers: dict[str, int] = {}

    # --- structures ---------------------------------------------------------------------

    def street(self) -> tuple[str, str, str, str]:
        rnd = self.rnd
        return (str(rnd.randint(1, 180)), "B" if rnd.random() < 0.05 else "", rnd.choice(_STREET_TYPES)[0],
                rnd.choice(_STREETS))

    def finess_sites(self, count: int) -> list[Site]:
        """`count` structures: a hospital in every town first, then the other kinds in turn (the
        numbers of towns and of other kinds have no common divisor: each town gets each kind)."""
        sites, names = [], {}
        towns, others = len(TOWNS), _FINESS_KINDS[1:]
        for i in range(count):
            town = TOWNS[i % towns]
            kind, pattern, sector_code, sector_label, services, application = \
                _FINESS_KINDS[0] if i < towns else others[(i - towns) % len(others)]
            self.site_serial += 1
            finess = _finess_number(town, self.site_serial)
            name = pattern.format(town=town.city)
            names[name] = names.get(name, 0) + 1
            if names[name] > 1:
                name += f" SITE {names[name]}"
            legal = _finess_number(town, 5000 + self.site_serial)  # the legal entity running the site
            sites.append(Site(idnat_finess(finess), finess, legal, "", "F" + finess, name, kind,
                              (sector_code, sector_label), town, self.street(), services, application))
        return sites

    def cabinet(self, name: str, town: Town) -> Site:
        """An individual cabinet: no FINESS nor SIRET, a technical id only."""
        self.site_serial += 1
        technical = f"R1000{self.site_serial:010d}"
        return Site("R" + technical, "", "", "", technical, name, "cabinet", _SECTOR_CABINET,
                    town, self.street())

    def company(self, name: str, kind: str, sector: tuple[str, str], town: Town) -> Site:
        """A structure known by its SIRET (a group practice, a pharmacy)."""
        siret = _siret_number(self.rnd)
        return Site(idnat_siret(siret), "", "", siret, "S" + siret, name, kind, sector, town, self.street(),
                    ("Secretariat",) if kind == "cabinet" else ())

    # --- people -------------------------------------------------------------------------

    def identity(self, adeli: bool = False) -> tuple[str, str, str]:
        """(identifier type, identifier, idnat): RPPS numbers grow by irregular steps."""
        self.rpps_serial += self.rnd.randint(1, 30)
        if adeli:
            adeli_number = self.rnd.choice(("86", "21", "75", "44")) + f"{self.rpps_serial % 10**7:07d}"
            return "0", adeli_number, idnat_adeli(adeli_number)
        body = "1" + f"{self.rpps_serial:09d}"
        rpps = body + luhn_digit(body)
        return "8", rpps, idnat_rpps(rpps)

    def person(self, adeli: bool = False) -> Person:
        rnd = self.rnd
        code, label, _, title, _ = rnd.choices(_PROFESSIONS, _PROFESSION_WEIGHTS)[0]
        woman = rnd.random() < 0.55
        id_type, ident, idnat = self.identity(adeli and code in ("60", "70"))
        specialty = ("", "")
        if code == "10":
            specialty = rnd.choices(_SPECIALTIES, _SPECIALTY_WEIGHTS)[0][:2]
        return Person(idnat, id_type, ident, ("MME", "Madame") if woman else ("M", "Monsieur"), title or ("", ""),
                      rnd.choice(SURNAMES), rnd.choice(WOMEN if woman else MEN), (code, label), specialty)

    def activities(self, person: Person, employers: dict[str, list[Site]], groups: list[Site],
                   pharmacies: list[Site]) -> list[Activity]:
        """1 to 3 activities; `employers`: the structures where each profession can be salaried."""
        rnd = self.rnd
        code = person.profession[0]
        liberal_share = next(p[4] for p in _PROFESSIONS if p[0] == code)
        count = rnd.choices((1, 2, 3), (70, 20, 10))[0]
        done: list[Activity] = []
        for _ in range(count):
            if rnd.random() < 0.02:
                activity = Activity(None, ("L", "Libéral"))  # a replacement: no structure of their own
            elif rnd.random() < liberal_share:
                if code == "21":
                    site = rnd.choice(pharmacies)
                elif rnd.random() < 0.3:
                    site = rnd.choice(groups)
                else:
                    site = self.cabinet(f"CABINET {'DU DR ' if person.title[0] else ''}{person.family_name}",
                                        rnd.choice(TOWNS))
                activity = Activity(site, ("L", "Libéral"))
            else:
                activity = Activity(rnd.choice(employers[code]), ("S", "Salarié"))
            if any(a.key == activity.key for a in done):
                continue
            if rnd.random() < 0.03:
                activity.lines = 2
            done.append(activity)
        return done

    # --- lines --------------------------------------------------------------------------

    def site_columns(self, site: Site | None) -> str:
        """Columns "Numéro SIRET site" to "Libellé secteur d'activité" (20 to 50) of a PS line."""
        if site is None:
            return "|" * 31
        if site.columns:
            return site.columns
        town = site.town
        number, index, type_code, street_name = site.street
        values = {
            "Numéro SIRET site": site.siret, "Numéro SIREN site": site.siret[:9], "Numéro FINESS site": site.finess,
            "Numéro FINESS établissement juridique": site.legal_finess,
            "Identifiant technique de la structure": site.technical_id, "Raison sociale site": site.name,
            "Enseigne commerciale site": "", "Numéro Voie (coord. structure)": number,
            "Indice répétition voie (coord. structure)": index, "Code type de voie (coord. structure)": type_code,
            "Libellé type de voie (coord. structure)": dict(_STREET_TYPES)[type_code],
            "Libellé Voie (coord. structure)": street_name,
            "Bureau cedex (coord. structure)": f"{town.postal_code} {town.city}",
            "Code postal (coord. structure)": town.postal_code, "Code commune (coord. structure)": town.commune_code,
            "Libellé commune (coord. structure)": town.city, "Code pays (coord. structure)": "99000",
            "Libellé pays (coord. structure)": "France",
            # 01 99 00 xx xx: a range the telecoms regulator (ARCEP) keeps for fiction
            "Téléphone (coord. structure)": f"019900{self.rnd.randint(0, 9999):04d}",
            "Code Département (structure)": town.department, "Libellé Département (structure)": town.department_label,
            "Autorité d'enregistrement": "ARS/ARS/ARS" if site.finess else "RPPS/RPPS/RPPS",
            "Code secteur d'activité": site.sector[0], "Libellé secteur d'activité": site.sector[1],
        }
        site.columns = "|".join(values.get(name, "") for name in PS_COLUMNS[19:50]) + "|"
        return site.columns

    def ps_lines(self, person: Person) -> list[tuple[Activity, str]]:
        """One line per activity, to be written `activity.lines` times."""
        head = "|".join((person.id_type, person.ident, person.idnat, *person.title, *person.civility,
                         person.family_name, person.given_name, *person.profession, "C", "Civil",
                         "S" if person.specialty[0] else "", "Spécialité ordinale" if person.specialty[0] else "",
                         *person.specialty)) + "|"
        lines = []
        for activity in person.activities:
            section = ("", "")
            if person.profession[0] == "21":
                overseas = activity.site is not None and activity.site.town.department.startswith("97")
                section = (("E", "Pharmaciens exerçant dans les DOM") if overseas else
                           ("A", "Pharmaciens titulaires d'officine") if activity.mode[0] == "L" else
                           ("H", "Pharmaciens des établissements de santé"))
            line = f"{head}{'|'.join(activity.mode)}|{self.site_columns(activity.site)}{'|'.join(section)}|"
            lines.append((activity, line))
        return lines

    def address(self, *parts: str, domain: str | None = None) -> str:
        local = ".".join(_slug(p) for p in parts)
        number = self.box_numbers[local] = self.box_numbers.get(local, 0) + 1
        return f"{local}{number if number > 1 else ''}@{domain or self.domain}"

    def personal_box(self, person: Person) -> Mailbox:
        domain = OTHER_DOMAIN if self.rnd.random() < 0.15 else self.domain
        return Mailbox(self.address(person.given_name, person.family_name, domain=domain), "PER", person.idnat,
                       None, "", 2 if self.rnd.random() < 0.03 else 1)

    def site_boxes(self, site: Site) -> list[Mailbox]:
        label = site.name.split(" DE ")[0] if site.finess else "cabinet"
        boxes = [Mailbox(self.address(service, label, site.town.city), "ORG", None, site, service)
                 for service in site.services]
        if site.application:
            boxes.append(Mailbox(self.address(site.application.lower(), label, site.town.city), "APP", None, site,
                                 site.application))
        return boxes

    def mss_line(self, box: Mailbox, person: Person | None) -> str:
        values = {"Type de BAL": box.type, "Adresse BAL": box.address, "Dématérialisation": "O"}
        if person is not None:
            first = next((a.site for a in person.activities if a.site), None)
            town = first.town if first else TOWNS[0]
            values.update({
                "Type Identifiant PP": person.id_type, "Identifiant PP": person.ident,
                "Identification nationale PP": person.idnat,
                "Civilité d'exercice": person.title[1] or person.civility[1], "Nom d'exercice": person.family_name,
                "Prénom d'exercice": person.given_name, "Catégorie profession": "C",
                "Libellé de catégorie profession": "Civil", "Code Profession": person.profession[0],
                "Libellé Profession": person.profession[1], "Code savoir-faire": person.specialty[0],
                "Libellé savoir-faire": person.specialty[1]})
        site = box.site
        if site is not None:
            number, index, type_code, street_name = site.street
            town = site.town
            values.update({
                "Type identifiant structure": "1" if site.finess else "3",
                "Identification Structure": site.finess or site.siret, "Service de rattachement": box.service,
                "Raison Sociale structure BAL": site.name, "L4NUMEROVOIE": number, "L4COMPLEMENTNUMEROVOIE": index,
                "NL4TYPEVOIE": dict(_STREET_TYPES)[type_code], "L4LIBELLEVOIE": street_name})
        values.update({"L6LIGNEACHEMINEMENT": f"{town.postal_code} {town.city}", "Code postal": town.postal_code,
                       "Département": town.department, "Pays": "France"})
        return "|".join(values.get(name, "") for name in MSS_COLUMNS) + "|"

    def bad_line(self, kind: str, width: int, build: Callable[[Person], str]) -> tuple[str, str]:
        """(line, defect value): `build(person)` writes a good line of a new person, then spoiled."""
        person = self.person()
        if kind == CHECK_DIGIT:
            person.ident = person.ident[:-1] + str((int(person.ident[-1]) + 1) % 10)
            person.idnat = idnat_rpps(person.ident)
            return build(person), person.ident
        if kind == EMPTY_NAME:
            person.family_name = ""
            return build(person), person.ident
        fields = build(person).split("|")[:-1]
        kept = self.rnd.choice((width // 2, width - 1, width + 1))
        fields = (fields + ["X"])[:kept]
        return "|".join(fields) + "|", str(kept)


class _Output:
    """One extract being written: numbers its lines, spoils the bad ones and remembers them."""

    def __init__(self, path: Path, header: str) -> None:
        self.path = path
        self.width = header.count("|")
        self.defects: list[Defect] = []
        self._file = open(path, "w", encoding="utf-8", newline="\n")
        self._file.write(header + "\n")
        self._line_no = 1

    def write(self, line: str, times: int = 1) -> list[int]:
        """Write `line` `times` times; its line numbers."""
        self._file.write((line + "\n") * times)
        self._line_no += times
        return list(range(self._line_no - times + 1, self._line_no + 1))

    def spoil(self, writer: _Writer, build: Callable[[Person], str]) -> None:
        kind = DEFECT_KINDS[len(self.defects) % len(DEFECT_KINDS)]
        line, value = writer.bad_line(kind, self.width, build)
        self.defects.append(Defect(self.path.name, self.write(line)[0], kind, value))

    def close(self) -> None:
        self._file.close()


def write_extracts(outdir: str | Path, *, people: int, bad: int = 0, seed: int = 1, stamp: str = "202611230600",
                   domain: str = "msante.test", describe: bool = True) -> Extracts:
    """Write both extracts of `people` professionals into `outdir`, with `bad` bad lines each.

    With `describe` (the default) the returned Extracts holds every person, structure and
    mailbox written; without, only the files and their bad lines, and memory stays flat.
    """
    datetime.strptime(stamp, "%Y%m%d%H%M")  # a ValueError for a stamp the importer would not read
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    writer = _Writer(seed, domain)
    rnd = writer.rnd

    sites = writer.finess_sites(max(3 * len(TOWNS), people // 40))
    employers = {code: [s for s in sites if s.kind in kinds] for code, kinds in _SALARIED_AT.items()}
    groups = [writer.company(f"CABINET MEDICAL {rnd.choice(_STREETS)}", "cabinet", _SECTOR_GROUP, town)
              for town in TOWNS]
    pharmacies = [writer.company(f"PHARMACIE {rnd.choice(_STREETS)}", "other", _SECTOR_PHARMACY, town)
                  for town in TOWNS]

    def bad_ps(person: Person) -> str:
        person.activities = [Activity(sites[0], ("S", "Salarié"))]
        return writer.ps_lines(person)[0][1]

    def bad_mss(person: Person) -> str:
        return writer.mss_line(writer.personal_box(person), person)

    # Bad lines go between two people, never among one person's lines: `gaps[i]` before person i,
    # and before the structures' boxes for i == people.
    ps_gaps = Counter(rnd.choices(range(people + 1), k=bad))
    mss_gaps = Counter(rnd.choices(range(people + 1), k=bad))
    persons: dict[str, Person] = {}
    used: dict[str, Site] = {}
    boxes: dict[str, Mailbox] = {}
    ps = _Output(outdir / PS_NAME.format(stamp=stamp), PS_HEADER)
    mss = _Output(outdir / MSS_NAME.format(stamp=stamp), MSS_HEADER)
    try:
        for position in range(people + 1):
            for _ in range(ps_gaps[position]):
                ps.spoil(writer, bad_ps)
            for _ in range(mss_gaps[position]):
                mss.spoil(writer, bad_mss)
            if position == people:
                break
            person = writer.person(adeli=rnd.random() < 0.03)
            person.activities = writer.activities(person, employers, groups, pharmacies)
            for activity, line in writer.ps_lines(person):
                activity.line_nos = ps.write(line, activity.lines)
            for _ in range(rnd.choices((0, 1, 2), (10, 80, 10))[0]):
                box = writer.personal_box(person)
                box.line_nos = mss.write(writer.mss_line(box, person), box.lines)
                if describe:
                    boxes[box.address] = box
            if describe:
                persons[person.idnat] = person
                used.update((a.site.id, a.site) for a in person.activities if a.site)
        for site in [*sites, *groups]:
            for box in writer.site_boxes(site):
                box.line_nos = mss.write(writer.mss_line(box, None), box.lines)
                if describe:
                    boxes[box.address] = box
    finally:
        ps.close()
        mss.close()
    return Extracts(ps.path, mss.path, ps.defects + mss.defects, persons, used, boxes)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m directory.synthetic",
                                     description="Write synthetic national directory extracts (fake people).")
    parser.add_argument("outdir", type=Path)
    parser.add_argument("--people", type=int, default=50)
    parser.add_argument("--bad", type=int, default=3, help="deliberately bad lines in each file (default 3)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--stamp", default=None, metavar="AAAAMMJJhhmm", help="default: now (UTC)")
    parser.add_argument("--domain", default="msante.test", help="this operator's mail domain")
    args = parser.parse_args(argv)
    stamp = args.stamp or datetime.now(timezone.utc).strftime("%Y%m%d%H%M")
    try:
        extracts = write_extracts(args.outdir, people=args.people, bad=args.bad, seed=args.seed, stamp=stamp,
                                  domain=args.domain, describe=False)
    except ValueError as exc:
        parser.error(f"--stamp {stamp!r}: {exc}")
    print(extracts.ps)
    print(extracts.mss)
    for defect in extracts.defects:
        print(f"bad line {defect.describe()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
