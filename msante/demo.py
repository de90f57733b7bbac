"""Demo data for `msante init --demo`: a small care network around Saint-Paul (La Réunion).

Written as national extract files and loaded through the real importer, so the demo takes
the same path as production data. Everyone here is fictional; identifiers carry valid
check digits.
"""
from __future__ import annotations

from pathlib import Path

STAMP = "202611230600"

# idnat suffix (RPPS), civility, practice civility, family, given, profession, label, specialty, label,
# mode, structure FINESS (or "" for a liberal cabinet)
PEOPLE = [
    ("10001045367", "M", "DR", "DUPONT", "JEAN", "10", "Médecin", "SM54", "Médecine générale", "L", ""),
    ("10002000015", "MME", "DR", "LEROY", "CLAIRE", "10", "Médecin", "SM54", "Médecine générale", "S", "970002002"),
    ("10002000023", "MME", "", "HOARAU", "SOPHIE", "60", "Infirmier", "", "", "L", ""),
    ("10002000031", "M", "", "PAYET", "KARIM", "60", "Infirmier", "", "", "S", "970004008"),
    ("10002000049", "MME", "", "GRONDIN", "MARIE", "21", "Pharmacien", "", "", "S", "970003000"),
]
ORGS = {  # FINESS: name, sector code, sector label
    "970002002": ("CENTRE HOSPITALIER SAINT-PAUL DEMO", "SA01", "Etablissement public de santé"),
    "970003000": ("EHPAD LES FILAOS", "SA17", "Etablissement d'hébergement pour personnes âgées"),
    "970004008": ("DISPOSITIF D'APPUI A LA COORDINATION SUD", "SA52", "Dispositif d'appui à la coordination"),
}
# local part (the domain is the operator's first), kind code, owner RPPS or structure FINESS, service
MAILBOXES = [
    ("jean.dupont", "PER", "10001045367", ""),
    ("claire.leroy", "PER", "10002000015", ""),
    ("sophie.hoarau", "PER", "10002000023", ""),
    ("karim.payet", "PER", "10002000031", ""),
    ("marie.grondin", "PER", "10002000049", ""),
    ("urgences.ch-saint-paul", "ORG", "970002002", "Urgences"),
    ("secretariat.ehpad-filaos", "ORG", "970003000", "Secrétariat"),
    ("coordination.dac-sud", "ORG", "970004008", "Coordination"),
]
# Boxes the public extract does not carry (applicative) and who acts on the shared ones.
APPLICATIVE = [("dpi.ch-saint-paul", "970002002", "Dossier patient informatisé du CH (alertes)")]
HOSPITAL_CERT = "hospital"  # <data_dir>/demo/hospital.crt and .key: the DPI's certificate for `msante hl7 send`
DELEGATES = [("urgences.ch-saint-paul", "10002000015"),
             ("coordination.dac-sud", "10002000031"),
             ("secretariat.ehpad-filaos", "10002000049")]
ADMIN_IDNAT = "810002000031"  # the DAC coordinator runs the demo operator
LOGIN_RPPS = "10001045367"  # the GP used in the quick start
# The demo care circle: a fictional patient at home in Saint-Paul (an INS of the demonstration
# register), coordinated by the DAC with her GP, the emergency doctor and the home nurse.
CIRCLE_PATIENT = {"ins": "248039741512358", "ins_oid": "1.2.250.1.213.1.4.11", "family_name": "TECHER",
                  "given_name": "JOSETTE", "birth_date": "1948-03-12"}
CIRCLE_COORDINATOR = "10002000031"  # Karim Payet, DAC Sud
CIRCLE_MEMBERS = ["10001045367", "10002000015", "10002000023"]  # Jean Dupont, Claire Leroy, Sophie Hoarau


def write_extracts(directory: Path, header_ps: str, header_mss: str, domain: str) -> list[Path]:
    """Write the two extract files (headers come from directory.extract, the format's owner)."""
    directory.mkdir(parents=True, exist_ok=True)
    ps = directory / f"PS_LibreAcces_Personne_activite_{STAMP}.txt"
    mss = directory / f"Extraction_Correspondance_MSSante_{STAMP}.txt"
    civilities = {"M": "Monsieur", "MME": "Madame"}
    with ps.open("w", encoding="utf-8", newline="\n") as out:
        out.write(header_ps + "\n")
        for rpps, civ, pciv, family, given, prof, plabel, sf, sflabel, mode, finess in PEOPLE:
            org = ORGS.get(finess, (f"CABINET {family}", "SA07", "Cabinet individuel"))
            row = [""] * 52
            row[0:19] = ["8", rpps, "8" + rpps, pciv, "Docteur" if pciv else "", civ, civilities[civ], family, given,
                         prof, plabel, "C", "Civil", "S" if sf else "", "Spécialité ordinale" if sf else "", sf,
                         sflabel, mode, "Libéral" if mode == "L" else "Salarié"]
            row[21] = finess
            row[23] = f"R{finess or rpps}"
            row[24] = org[0]
            row[28], row[31], row[32] = "12", "Rue", "DU PORT"
            row[34], row[35], row[37], row[38], row[39] = "97460 SAINT-PAUL", "97460", "SAINT-PAUL", "99000", "France"
            row[44], row[45] = "974", "La Réunion"
            row[47], row[48], row[49] = "RPPS/ARS/ARS", org[1], org[2]
            out.write("|".join(row) + "|\n")
    people = {p[0]: p for p in PEOPLE}
    with mss.open("w", encoding="utf-8", newline="\n") as out:
        out.write(header_mss + "\n")
        for local_part, kind, ident, service in MAILBOXES:
            row = [""] * 31
            row[0], row[1], row[7], row[17] = kind, f"{local_part}@{domain}", service, "O"
            if kind == "PER":
                _, civ, pciv, family, given, prof, plabel, sf, sflabel, *_ = people[ident]
                row[2:5] = ["8", ident, "8" + ident]
                row[8:17] = ["Docteur" if pciv else civilities[civ], family, given, "C", "Civil", prof, plabel, sf,
                             sflabel]
            else:
                row[5], row[6], row[18] = "1", ident, ORGS[ident][0]
            row[27:31] = ["97460 SAINT-PAUL", "97460", "974", "France"]
            out.write("|".join(row) + "|\n")
    return [ps, mss]


TRUST_SPACE = ["msante.test", "autre-operateur.test", "chu-exemple.test", "hôpital-réunion.test"]


def write_trust_list(directory: Path, domains: tuple[str, ...]) -> Path:
    """The national white list's format, with the demo's neighbours in the trust space."""
    path = directory / "listeblanche.xml"
    names = "".join(f"  <Domaine><Nom>{name}</Nom></Domaine>\n" for name in dict.fromkeys([*domains, *TRUST_SPACE]))
    path.write_text('<?xml version="1.0" encoding="UTF-8"?>\n'
                    '<ListeBlanche xmlns="https://listeblanche.mssante.fr/schema">\n' + names + "</ListeBlanche>\n",
                    encoding="utf-8")
    return path
