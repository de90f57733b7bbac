"""Directory read side (directory/queries.py), checked against a plain-Python scan of the same rows.

Same databases as tests/test_import.py (SQLite, and PostgreSQL when MSANTE_TEST_DATABASE_URL
is set), filled from generated extracts.
"""
from datetime import datetime, timezone

import pytest
from sqlalchemy import select
from tests.test_import import DOMAIN, NEWER, engine, generate, import_both, rewrite  # noqa: F401

import directory.queries as queries
from directory.identifiers import fold
from directory.queries import get_entry, mailboxes_of, search
from store.schema import activities, mailbox_delegates, mailboxes, organisations, professionals


@pytest.fixture
def extracts(tmp_path):
    """Generated extracts of 200 people (directory.synthetic.Extracts)."""
    return generate(tmp_path, people=200, bad=5)


@pytest.fixture
async def directory(engine, extracts):
    """The engine, with the extracts imported."""
    await import_both(engine, extracts.ps, extracts.mss)
    return engine


async def table(engine, t) -> list:
    async with engine.connect() as conn:
        return (await conn.execute(select(t))).all()


async def expected_people(engine, keep) -> list[str]:
    """idnats of the live professionals `keep(professional, live activities with their structure)`
    accepts, in search order."""
    structures = {o.id: o for o in await table(engine, organisations) if o.retired_at is None}
    work: dict[str, list] = {}
    for a in await table(engine, activities):
        if a.retired_at is None:
            work.setdefault(a.idnat, []).append((a, structures.get(a.organisation_id)))
    people = [p for p in await table(engine, professionals) if p.retired_at is None]
    return [p.idnat for p in sorted(people, key=lambda p: (p.search_text, p.idnat)) if keep(p, work.get(p.idnat, []))]


async def every_page(engine, per_page: int = 7, **criteria) -> tuple[list[dict], set]:
    items, totals, page = [], set(), 1
    while page:
        result = await search(engine, page=page, per_page=per_page, **criteria)
        assert len(result.items) <= per_page and result.page == page and result.per_page == per_page
        items += result.items
        totals.add(result.total)
        page = result.next
    return items, totals


@pytest.mark.parametrize("text", ["m", "mar", "le b", "Lefèvre", "LEFEV", "n d", "N'DIAYE", "zz"])
async def test_name_prefix(directory, text):
    expected = await expected_people(directory, lambda p, _: p.search_text.startswith(fold(text)))
    items, totals = await every_page(directory, text=text, kind="professional")
    assert [i["idnat"] for i in items] == expected
    assert totals == {len(expected)}
    assert all(i["kind"] == "professional" and i["profession_code"] and i["profession_label"] for i in items)


async def test_family_and_given_name(directory):
    person = (await table(directory, professionals))[0]
    items, _ = await every_page(directory, text=f"{person.family_name} {person.given_name[:2]}")
    assert person.idnat in [i["idnat"] for i in items]
    assert all(fold(i["family_name"]) == fold(person.family_name) for i in items)


@pytest.mark.parametrize("candidates_limit", [1000, 3])  # few matches drive the search / the name index is walked
@pytest.mark.parametrize("criteria", [
    {"profession": "10", "city": "Saint-Paul"},
    {"city": "POITIERS"},
    {"profession": "60", "city": "saint paul", "text": "m"},
    {"organisation": "centre hospitalier"},
    {"organisation": "Laboratoire", "profession": "21"},
    {"organisation": "centre hospitalier", "city": "Saint Paul"},  # both on the same activity
    {"profession": "70"},
])
async def test_profession_city_and_organisation(directory, monkeypatch, candidates_limit, criteria):
    monkeypatch.setattr(queries, "CANDIDATES_LIMIT", candidates_limit)
    town = fold(criteria.get("city", ""))
    named = fold(criteria.get("organisation", ""))

    def keep(p, work):
        return (p.search_text.startswith(fold(criteria.get("text", "")))
                and p.profession_code == criteria.get("profession", p.profession_code)
                and any((not town or a.city_search == town)
                        and (not named or (o is not None and o.search_text.startswith(named))) for a, o in work))

    expected = await expected_people(directory, keep)
    assert expected, "the generated data should hold such people"
    items, totals = await every_page(directory, per_page=5, kind="professional", **criteria)
    assert [i["idnat"] for i in items] == expected
    # Totals are not counted when each activity criterion alone matches more activities than can drive.
    live = [a for a in await table(directory, activities) if a.retired_at is None]
    structures = {o.id: o for o in await table(directory, organisations)}
    matching = [sum(a.city_search == town for a in live)] if town else []
    if named:
        matching.append(sum(a.organisation_id is not None
                            and structures[a.organisation_id].search_text.startswith(named) for a in live))
    walked = bool(matching) and min(matching) > candidates_limit
    assert totals == ({None} if walked else {len(expected)})


async def test_organisation_by_identifier(directory):
    hospital = next(o for o in await table(directory, organisations) if o.kind == "hospital")
    expected = await expected_people(directory, lambda p, work: any(a.organisation_id == hospital.id for a, _ in work))
    for designation in (hospital.finess, hospital.id):
        items, _ = await every_page(directory, organisation=designation, kind="professional")
        assert [i["idnat"] for i in items] == expected


async def test_organisation_search(directory):
    structures = [o for o in await table(directory, organisations) if o.retired_at is None]
    items, totals = await every_page(directory, kind="organisation", text="centre hosp")
    expected = sorted((o for o in structures if o.search_text.startswith("centre hosp")),
                      key=lambda o: (o.search_text, o.id))
    assert [i["id"] for i in items] == [o.id for o in expected] and totals == {len(expected)}
    assert all(i["type"] == "hospital" for i in items)
    items, _ = await every_page(directory, kind="organisation", city="Ajaccio")
    assert items and all(i["city"] == "AJACCIO" for i in items)
    corsican = next(o for o in structures if o.finess and o.finess.startswith("2A"))
    found = await search(directory, kind="organisation", identifier=corsican.finess.lower())
    assert [i["id"] for i in found.items] == [corsican.id]


async def test_identifiers(directory, extracts):
    chosen = next(p for p in extracts.people.values() if p.rpps and all(a.site for a in p.activities))
    person = next(p for p in await table(directory, professionals) if p.idnat == chosen.idnat)
    owned = sorted(b.address for b in await table(directory, mailboxes) if b.owner_idnat == person.idnat)
    for identifier in (person.rpps, person.idnat):
        page = await search(directory, identifier=identifier, kind="professional")
        assert [i["idnat"] for i in page.items] == [person.idnat] and page.total == 1
        assert page.items[0]["mailboxes"] == owned
        every_kind = await search(directory, identifier=identifier)  # the person and their mailboxes, by name
        assert [i.get("idnat") or i["address"] for i in every_kind.items] == \
            [key for _, key in sorted([(person.search_text, person.idnat)] + [(a, a) for a in owned])]
        entry = await get_entry(directory, identifier)
        assert entry["idnat"] == person.idnat and entry["family_name"] == person.family_name
        assert entry["activities"] and all(a["organisation"]["id"] for a in entry["activities"])
        of_person = await mailboxes_of(directory, person.idnat)
        assert {m["address"] for m in entry["mailboxes"]} == {m["address"] for m in of_person}
    box = next(b for b in await table(directory, mailboxes) if b.owner_idnat == person.idnat)
    page = await search(directory, identifier=box.address.upper(), kind="mailbox")
    assert [i["address"] for i in page.items] == [box.address]
    entry = await get_entry(directory, box.address)
    assert entry["owner"]["idnat"] == person.idnat and entry["type"] == "nominative"
    structure = next(o for o in await table(directory, organisations) if o.finess)
    entry = await get_entry(directory, structure.finess)
    assert entry["id"] == structure.id and entry["kind"] == "organisation"
    assert all(m["organisation_id"] == structure.id for m in entry["mailboxes"])
    assert await get_entry(directory, "10000000018") is None
    assert (await search(directory, identifier="nobody")).items == []


async def test_mailbox_search_by_address_prefix_and_organisation(directory):
    boxes = sorted(b.address for b in await table(directory, mailboxes) if b.address.startswith("secretariat."))
    items, totals = await every_page(directory, kind="mailbox", text="Secretariat.")
    assert [i["address"] for i in items] == boxes and totals == {len(boxes)}
    structure = next(o for o in await table(directory, organisations) if o.name.startswith("CENTRE HOSPITALIER"))
    page = await search(directory, kind="mailbox", organisation=structure.finess)
    assert {i["address"] for i in page.items} == {
        b.address for b in await table(directory, mailboxes) if b.organisation_id == structure.id}
    assert {(i["type"], i["service"]) for i in page.items} == {
        ("organisational", "Secretariat"), ("organisational", "Urgences"), ("applicative", "DPI")}


async def test_pagination(directory):
    expected = await expected_people(directory, lambda p, _: True)
    first = await search(directory, kind="professional", per_page=10)
    assert first.next == 2 and first.total is not None and first.total == len(expected)
    last_page = -(-len(expected) // 10)
    last = await search(directory, kind="professional", per_page=10, page=last_page)
    assert last.next is None and [i["idnat"] for i in last.items] == expected[(last_page - 1) * 10:]
    beyond = await search(directory, kind="professional", per_page=10, page=last_page + 1)
    assert beyond.items == [] and beyond.next is None
    with pytest.raises(ValueError, match="first 10000 results"):
        await search(directory, text="m", page=501)
    with pytest.raises(ValueError, match="per_page"):
        await search(directory, text="m", per_page=101)
    with pytest.raises(ValueError, match="kind"):
        await search(directory, text="m", kind="person")
    with pytest.raises(ValueError, match="mailbox search has no profession criterion"):
        await search(directory, profession="10", kind="mailbox")


async def test_any_kind_merges_in_name_order(directory):
    items, totals = await every_page(directory, text="c", per_page=4)
    kinds = {i["kind"] for i in items}
    assert kinds == {"professional", "organisation"}  # no "@": addresses are not searched
    keys = [(fold(i["family_name"] + " " + i["given_name"]) if i["kind"] == "professional" else
             fold(i["name"] + " " + i["city"])) for i in items]
    assert keys == sorted(keys) and all(k.startswith("c") for k in keys)
    assert len(totals) == 1 and totals.pop() == len(items)


async def test_unpublished_mailboxes_are_hidden_unless_asked(directory):
    person = next(p for p in await table(directory, professionals) if p.retired_at is None)
    shared = next(b for b in await table(directory, mailboxes) if b.kind == "organisational")
    now = datetime.now(timezone.utc)
    async with directory.begin() as conn:
        await conn.execute(mailboxes.insert().values(
            address=f"liste.rouge@{DOMAIN}", kind="nominative", owner_idnat=person.idnat, service="", description="",
            published=False, local=True, created_at=now, updated_at=now))
        await conn.execute(mailbox_delegates.insert().values(
            mailbox_id=shared.id, idnat=person.idnat, granted_at=now, granted_by="test"))

    assert (await search(directory, kind="mailbox", text="liste.rouge@")).items == []
    assert await get_entry(directory, f"liste.rouge@{DOMAIN}") is None
    hidden = await search(directory, kind="mailbox", text="liste.rouge@", include_unpublished=True)
    assert [i["address"] for i in hidden.items] == [f"liste.rouge@{DOMAIN}"] and not hidden.items[0]["published"]
    assert (await get_entry(directory, f"liste.rouge@{DOMAIN}", include_unpublished=True))["published"] is False

    visible = await mailboxes_of(directory, person.idnat)
    assert f"liste.rouge@{DOMAIN}" not in {b["address"] for b in visible}
    assert {b["address"]: b["role"] for b in visible}[shared.address] == "delegate"
    assert all(b["role"] == "owner" for b in visible if b["address"] != shared.address)
    every = await mailboxes_of(directory, person.idnat, include_unpublished=True)
    assert f"liste.rouge@{DOMAIN}" in {b["address"] for b in every}
    page = await search(directory, identifier=person.idnat)
    assert f"liste.rouge@{DOMAIN}" not in page.items[0]["mailboxes"]
    entry = await get_entry(directory, person.idnat)
    assert f"liste.rouge@{DOMAIN}" not in {m["address"] for m in entry["mailboxes"]}


async def test_retired_entries_are_not_returned(directory, extracts):
    ps, mss = extracts.ps, extracts.mss
    box, gone = next((b.address, b.owner) for b in extracts.mailboxes.values() if b.type == "PER")
    family = fold(extracts.people[gone].family_name)
    await import_both(directory, rewrite(ps, NEWER, keep=lambda f: f[2] != gone),
                      rewrite(mss, NEWER, keep=lambda f: f[1] != box))
    items, _ = await every_page(directory, text=family, kind="professional")
    assert items and gone not in [i["idnat"] for i in items]
    assert (await search(directory, identifier=gone)).items == []
    assert await get_entry(directory, gone) is None
    assert await get_entry(directory, box) is None
    assert (await search(directory, kind="mailbox", text=box)).items == []
    assert box not in {b["address"] for b in await mailboxes_of(directory, gone)}
