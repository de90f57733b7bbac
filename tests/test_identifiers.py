"""National identifier checks and the search folding (directory/identifiers.py)."""
import pytest

from directory.identifiers import (fold, idnat_adeli, idnat_finess, idnat_rpps, idnat_siret, luhn_valid,
                                   valid_adeli, valid_finess, valid_rpps, valid_siret)


@pytest.mark.parametrize("digits, valid", [
    ("79927398713", True),  # the textbook Luhn example
    ("79927398710", False),
    ("0", True),
    ("18", True),
    ("19", False),
    ("", False),
    ("7992739871a", False),
    ("７９９２７３９８７１３", False),  # full-width digits are digits to str.isdigit, not to us
])
def test_luhn(digits, valid):
    assert luhn_valid(digits) is valid


@pytest.mark.parametrize("rpps, valid", [
    ("10001045367", True),  # the domain brief's example
    ("10001045368", False),  # last digit off by one
    ("10000000017", True),
    ("1000104536", False),  # 10 digits
    ("100010453670", False),  # 12 digits, even though Luhn-valid
    ("1000104536X", False),
    (" 10001045367", False),
])
def test_rpps(rpps, valid):
    assert valid_rpps(rpps) is valid


@pytest.mark.parametrize("finess, valid", [
    ("970001004", True),
    ("970001005", False),
    ("2A0001040", True),  # Corsica: letters, so no numeric check digit
    ("2B0001049", True),
    ("2C0001040", False),  # no department 2C
    ("2A000104", False),  # 8 characters
    ("2A00010400", False),
    ("97000100", False),
])
def test_finess(finess, valid):
    assert valid_finess(finess) is valid


def test_adeli_and_siret():
    assert valid_adeli("751234567") and valid_adeli("2A1234567")
    assert not valid_adeli("75123456") and not valid_adeli("7A1234567")
    assert valid_siret("73282932000074")
    assert not valid_siret("73282932000075")
    assert not valid_siret("7328293200007")
    assert valid_siret("35600000000048")  # La Poste: another rule, shape only


def test_national_identifiers():
    assert idnat_rpps("10001045367") == "810001045367"
    assert idnat_adeli("751234567") == "0751234567"
    assert idnat_finess("2A0001040") == "32A0001040"
    assert idnat_siret("73282932000074") == "573282932000074"


@pytest.mark.parametrize("text, folded", [
    ("LEFÈVRE", "lefevre"),
    ("Lefèvre", "lefevre"),
    ("N'DIAYE", "n diaye"),
    ("LE  BIHAN", "le bihan"),
    ("  Côte-d'Or ", "cote d or"),
    ("SAINT-PAUL", "saint paul"),
    ("ŒUVRE Ærø Łódź", "oeuvre aero lodz"),
    ("Straße", "strasse"),
    ("--", ""),
])
def test_fold(text, folded):
    assert fold(text) == folded
