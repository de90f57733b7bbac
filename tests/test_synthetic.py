"""The synthetic extract generator (directory/synthetic.py): formats, identifiers, determinism.

What it writes is read back with plain string handling and the identifier checks, not with the
parser under test (tests/test_extract.py does that).
"""
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from directory.extract import MSS_HEADER, PS_HEADER
from directory.identifiers import luhn_digit, luhn_valid, valid_finess, valid_rpps, valid_siret
from directory.synthetic import CHECK_DIGIT, COLUMNS, EMPTY_NAME, write_extracts

REPO = Path(__file__).resolve().parents[1]


def rows(path: Path) -> tuple[str, list[list[str]]]:
    header, *lines = path.read_text(encoding="utf-8").splitlines()
    return header, [line.split("|") for line in lines]


@pytest.fixture(scope="module")
def extracts(tmp_path_factory):
    return write_extracts(tmp_path_factory.mktemp("synthetic"), people=300, bad=7, seed=5, stamp="202611230600")


def test_luhn_digit():
    assert luhn_digit("1000104536") == "7"  # RPPS 10001045367 (domain brief)
    for body in ("0", "7", "97000100", "7328293200007", "12345678901234"):
        digit = luhn_digit(body)
        assert luhn_valid(body + digit) and sum(luhn_valid(body + d) for d in "0123456789") == 1


def test_formats_and_identifiers(extracts):
    header, ps = rows(extracts.ps)
    assert header == PS_HEADER and extracts.ps.name == "PS_LibreAcces_Personne_activite_202611230600.txt"
    defects = extracts.defects_in(extracts.ps)
    good = [f for n, f in enumerate(ps, start=2) if n not in defects]
    assert all(len(f) == 53 and f[-1] == "" for f in good)  # 52 columns and the trailing "|"
    assert all(valid_rpps(f[1]) and f[2] == "8" + f[1] for f in good if f[0] == "8")
    assert any(f[0] == "0" and f[2] == "0" + f[1] for f in good)  # a few ADELI numbers
    assert all(valid_finess(f[21]) for f in good if f[21]) and all(valid_siret(f[19]) for f in good if f[19])
    assert all(f[20] == f[19][:9] for f in good)  # SIREN: the SIRET's first nine digits
    finess = {f[21]: f[44] for f in good if f[21]}
    assert {n[:2] for n in finess} >= {"2A", "2B", "97"}
    assert all(department.startswith("97") == number.startswith("97") for number, department in finess.items())
    assert all(number[:2] == department for number, department in finess.items() if number[:2] in ("2A", "2B"))
    assert {f[17] for f in good} == {"L", "S"} and {f[9] for f in good} >= {"10", "21", "40", "50", "60", "70"}
    people = Counter(f[2] for f in good)
    assert max(people.values()) >= 3 and min(people.values()) == 1  # several activities, sometimes

    header, mss = rows(extracts.mss)
    assert header == MSS_HEADER
    defects = extracts.defects_in(extracts.mss)
    good = [f for n, f in enumerate(mss, start=2) if n not in defects]
    assert all(len(f) == 32 and f[-1] == "" for f in good)
    assert Counter(f[0] for f in good).keys() == {"PER", "ORG", "APP"}
    assert all(f[1].isascii() and f[1].count("@") == 1 for f in good)  # no IDN
    assert {f[1].rpartition("@")[2] for f in good} == {"msante.test", "autre-operateur.test"}
    assert all(valid_rpps(f[3]) and f[9] for f in good if f[0] == "PER" and f[2] == "8")
    assert all(f[5] == "1" and valid_finess(f[6]) or f[5] == "3" and valid_siret(f[6]) for f in good if f[0] != "PER")


def test_bad_lines_are_where_the_generator_says(extracts):
    for path, width in ((extracts.ps, 52), (extracts.mss, 31)):
        _, lines = rows(path)
        defects = extracts.defects_in(path)
        assert len(defects) == 7 and {d.kind for d in defects.values()} == {CHECK_DIGIT, EMPTY_NAME, COLUMNS}
        family = 7 if width == 52 else 9
        ident = 1 if width == 52 else 3
        for line_no, defect in defects.items():
            fields = lines[line_no - 2]
            if defect.kind == COLUMNS:
                assert len(fields) - 1 == int(defect.value) != width
            elif defect.kind == CHECK_DIGIT:
                assert fields[ident] == defect.value and len(defect.value) == 11 and not valid_rpps(defect.value)
            else:
                assert fields[ident] == defect.value and valid_rpps(defect.value) and fields[family] == ""
        assert f"{path.name}:{min(defects)}:" in defects[min(defects)].describe()


def test_same_seed_same_bytes_other_seed_other_people(tmp_path):
    first = write_extracts(tmp_path / "a", people=80, bad=3, seed=9)
    again = write_extracts(tmp_path / "b", people=80, bad=3, seed=9)
    other = write_extracts(tmp_path / "c", people=80, bad=3, seed=10)
    assert first.ps.read_bytes() == again.ps.read_bytes() and first.mss.read_bytes() == again.mss.read_bytes()
    assert first.defects == again.defects
    assert first.ps.read_bytes() != other.ps.read_bytes()


def test_command_line(tmp_path):
    done = subprocess.run([sys.executable, "-m", "directory.synthetic", "--people", "40", "--bad", "2", "--seed", "4",
                           "--stamp", "202701020304", "--domain", "chu-exemple.test", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, check=True)
    ps = tmp_path / "PS_LibreAcces_Personne_activite_202701020304.txt"
    mss = tmp_path / "Extraction_Correspondance_MSSante_202701020304.txt"
    expected = write_extracts(tmp_path / "same", people=40, bad=2, seed=4, stamp="202701020304",
                              domain="chu-exemple.test")
    assert done.stdout.splitlines() == [str(ps), str(mss)] + [f"bad line {d.describe()}" for d in expected.defects]
    assert ps.read_bytes() == expected.ps.read_bytes() and "@chu-exemple.test|" in mss.read_text(encoding="utf-8")
    refused = subprocess.run([sys.executable, "-m", "directory.synthetic", "--stamp", "20270102", str(tmp_path)],
                             cwd=REPO, capture_output=True, text=True)
    assert refused.returncode == 2 and "--stamp '20270102'" in refused.stderr and "Traceback" not in refused.stderr
