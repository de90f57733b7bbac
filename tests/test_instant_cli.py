"""`msante circle create|add|remove|list`, and the demo circle `msante init --demo` creates."""
from __future__ import annotations

import json

import pytest

from msante import cli
from tests.conftest import init_data_dir


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    directory = tmp_path / "var"
    init_data_dir(directory, monkeypatch)
    return directory


def run(data_dir, *args: str) -> int:
    return cli.main([*args, "--data-dir", str(data_dir)])


def listed(data_dir, capsys) -> list[dict]:
    capsys.readouterr()
    assert run(data_dir, "circle", "list", "--json") == 0
    return json.loads(capsys.readouterr().out)


def test_demo_circle_and_changes(data_dir, capsys, monkeypatch):
    (demo,) = listed(data_dir, capsys)
    assert demo["patient"]["family_name"] == "TECHER" and demo["coordinator"] == "810002000031"
    assert demo["members"] == ["810001045367", "810002000015", "810002000023", "810002000031"]
    assert cli.main(["init", "--demo"]) == 0  # a second init keeps the one circle
    assert len(listed(data_dir, capsys)) == 1

    assert run(data_dir, "circle", "add", "1", "--rpps", "10002000049") == 0
    assert "Marie GRONDIN added to care circle 1" in capsys.readouterr().out
    assert run(data_dir, "circle", "remove", "1", "--rpps", "10002000049") == 0
    assert run(data_dir, "circle", "remove", "1", "--rpps", "10002000031") == 2
    assert "the coordinator cannot be removed" in capsys.readouterr().err

    assert run(data_dir, "circle", "create", "--ins", "1 85 05 75 112 045 38", "--family-name", "Martin",
               "--given-name", "Paul", "--birth-date", "1985-05-01", "--coordinator", "10002000031",
               "--member", "10002000049") == 0
    created = listed(data_dir, capsys)[1]
    assert created["patient"]["ins"] == "185057511204538" and created["members"] == ["810002000031", "810002000049"]
    assert run(data_dir, "audit", "tail", "--action", "circle.member", "--json") == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["action"], r["actor"], r["detail"]["member"]) for r in rows] == [
        ("circle.member.add", "cli", "810002000049"), ("circle.member.remove", "cli", "810002000049")]


@pytest.mark.parametrize("args, message", [
    (["--ins", "185057511204539"], "--ins: ins must be a 15-character INS matricule"),
    (["--birth-date", "1985-13-01"], "--birth-date: birth_date must be a date"),
    (["--coordinator", "12345678901"], "no active professional '12345678901'"),
])
def test_create_refuses_bad_input(data_dir, capsys, args, message):
    base = {"--ins": "185057511204538", "--family-name": "Martin", "--given-name": "Paul",
            "--birth-date": "1985-05-01", "--coordinator": "10002000031"}
    base.update(dict(zip(args[::2], args[1::2], strict=True)))
    assert run(data_dir, "circle", "create", *[x for pair in base.items() for x in pair]) == 2
    assert message in capsys.readouterr().err
