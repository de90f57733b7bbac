"""The trust space: the national white-list format, IDN domains, replacement and live reload."""
from pathlib import Path

import pytest

from mailserver.trust import TrustListError, TrustSpace, import_list, parse_list
from store import db

SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "listeblanche_sample.xml"


def write(tmp_path, domains, name="liste.xml"):
    path = tmp_path / name
    names = "".join(f"<Domaine><Nom>{d}</Nom></Domaine>" for d in domains)
    path.write_text(f'<?xml version="1.0" encoding="UTF-8"?>\n'
                    f'<ListeBlanche xmlns="https://listeblanche.mssante.fr/schema">{names}</ListeBlanche>',
                    encoding="utf-8")
    return path


@pytest.mark.skipif(not SAMPLE.exists(), reason="../shared/data is not beside the repository")
def test_national_sample_parses_with_idn_in_a_label_form():
    assert parse_list(SAMPLE) == sorted(["msante.test", "autre-operateur.test", "chu-exemple.test",
                                         "xn--hpital-runion-ihb1n.test"])


@pytest.mark.parametrize("text, message", [
    ("<ListeBlanche", "not well-formed"),
    ("<ListeBlanche xmlns='urn:other'><Domaine><Nom>a.test</Nom></Domaine></ListeBlanche>", "no //Domaine/Nom"),
    ('<ListeBlanche xmlns="https://listeblanche.mssante.fr/schema"><Domaine><Nom>a..b</Nom></Domaine>'
     "</ListeBlanche>", "not a valid domain"),
])
def test_bad_lists_refused(tmp_path, text, message):
    path = tmp_path / "bad.xml"
    path.write_text(text)
    with pytest.raises(TrustListError, match=message):
        parse_list(path)


async def test_import_replaces_and_a_running_server_reloads(tmp_path, database_url):
    engine = db.create_engine(database_url)
    try:
        await db.upgrade(engine)
        space = TrustSpace(engine, ("msante.test",))
        assert await space.contains("msante.test")  # our own domains always
        assert not await space.contains("chu-exemple.test")
        assert await import_list(engine, write(tmp_path, ["chu-exemple.test", "hôpital-réunion.test"])) == (2, 0)
        await space.reload()
        assert await space.contains("CHU-exemple.test") and await space.contains("hôpital-réunion.test")
        assert await import_list(engine, write(tmp_path, ["chu-exemple.test"])) == (0, 1)
        await space.reload()
        assert not await space.contains("hôpital-réunion.test")
    finally:
        await engine.dispose()
