"""The hospital feed in the web client, in a real headless Chromium (the fixtures of
tests/test_webclient.py): the demo hospital sends two ED visits over MLLP inside mutual TLS, one
naming the GP and one not; the circle's coordinator sees both cards with their ticks on a desktop
and a phone, and the first turns "lu" live when the GP opens the mail from his alert and marks it
read. Then the indicators page (the coordinator's, not the GP's) draws the month's figures.
Screenshots go to the test's tmp dir; axe-core finds nothing serious in any view."""
from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import select

from store.schema import audit, hospital_events
from tests.test_hospital_cancels import ADMISSION, CANCEL
from tests.test_hospital_feed import hospital, msa, sample, wait_for
from tests.test_hospital_incoming import NURSE_BOX, archive, mail
from tests.test_smtp import GP as GP_BOX, login
from tests.test_webclient import GP, ROOT, assert_accessible, browser, layout, signed_in  # noqa: F401 - a fixture

COORDINATOR = "810002000031"  # Karim Payet coordinates the demo circle; Dr Dupont is a member
NURSE = "810002000023"  # Sophie Hoarau, member, whose box receives the document by mail
SHOTS = ROOT.parent / "hl7web-shots"  # outside the repository: the screenshots a reviewer looks at
SIZES = {"desktop": {"viewport": {"width": 1280, "height": 800}},
         "phone": {"viewport": {"width": 390, "height": 844}, "is_mobile": True, "has_touch": True}}
TOLD = '#messages li.event[data-kind="URG"]:has-text("BOX-GP")'
NOT_TOLD = '#messages li.event[data-kind="URG"]:has-text("BOX-NOGP")'


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # the UI, not the store, is under test
def test_timeline_ticks_and_the_indicators_page(database_url, server, browser, tmp_path):
    pages = {size: signed_in(browser, server, COORDINATOR, **options) for size, options in SIZES.items()}
    gp = signed_in(browser, server, GP, **SIZES["phone"])
    for page in pages.values():
        page.click('#circle-list li[data-circle="1"] a')
        page.wait_for_selector("#patient-name:has-text('Josette TECHER')")
    page.wait_for_timeout(500)  # what the page would ask for a circle without hospital events: nothing
    with ThreadPoolExecutor(1) as thread:  # the store from another thread: Playwright holds this one's loop
        asked = thread.submit(server.rows, select(audit.c.id).where(audit.c.action == "notifications.read"))
        assert asked.result() == []
    # the unit in ZBE-7 tells the two cards apart; the second visit names no GP (no ROL segment)
    told = sample("adt_a04_ed_visit.hl7", "UI-GP", **{"URGENCES ADULTES": "BOX-GP"})
    not_told = b"\n".join(line for line in sample("adt_a04_ed_visit.hl7", "UI-NOGP", **{
        "URGENCES ADULTES": "BOX-NOGP"}).split(b"\n") if not line.startswith(b"ROL|"))
    with hospital(server) as client:
        assert [msa(client.send(m))[1] for m in (told, not_told)] == ["AA", "AA"]

    for size, page in pages.items():
        ticks = page.wait_for_selector(f'{TOLD} .event-receipts[data-state="delivered"]')
        assert ticks.inner_text().startswith("✓✓ Médecin traitant : remis")
        missing = page.wait_for_selector(f'{NOT_TOLD} .event-receipts[data-state="none"]')
        assert "non prévenu (aucun médecin traitant indiqué)" in missing.inner_text()
        layout(page, f"ticks {size}")
        assert_accessible(page, f"ticks {size}")
        page.screenshot(path=tmp_path / f"ticks-delivered-{size}.png")

    # the GP opens the notice from his mail alert and marks it read: \Seen, a receipt, live
    gp.click("#alerts-toggle")
    gp.click("#alert-list li:has(button.open-mail):has-text('Passage aux urgences') button.open-mail")
    gp.wait_for_selector("#mail-subject:has-text('Passage aux urgences : TECHER Josette')")
    gp.click("#mail-seen")
    gp.wait_for_selector("#mail-seen-state:visible")
    for size, page in pages.items():
        read = page.wait_for_selector(f'{TOLD} .event-receipts[data-state="read"]')
        assert read.inner_text().startswith("✓✓ Médecin traitant : lu")
        page.screenshot(path=tmp_path / f"ticks-read-{size}.png")

    # the indicators: the coordinator's entry; the GP (a member only) has none, and the API says no
    assert gp.is_hidden("#indicators-link")
    gp.goto(f"{server.settings.public_url}/#/indicateurs")
    gp.wait_for_selector("#indicators-status:has-text('Accès refusé')")
    assert gp.locator("#indicators-results figure").count() == 0
    for size, page in pages.items():
        if page.is_visible("#back"):  # a phone shows one view: back to the list, where the entry is
            page.click("#back")
        page.click("#indicators-link")
        page.wait_for_selector('#indicators-results figure[data-chart="ed"] svg rect')
        section = page.inner_text("#indicators-results .hospital")
        assert "CENTRE HOSPITALIER SAINT-PAUL DEMO (FINESS 970002002)" in section
        assert "2 passages aux urgences, médecin traitant prévenu pour 50 %" in section
        assert "remis 100 %, lus 100 %" in section
        titles = page.eval_on_selector_all('figure[data-chart="ed"] rect title', "ts => ts.map(t => t.textContent)")
        assert sorted(t.split(" · ")[1] for t in titles) == ["Aucun médecin traitant indiqué : 1",
                                                            "Médecin traitant prévenu : 1"]
        assert page.locator('figure[data-chart="events"] tbody tr').count() == 12  # a year, month by month
        layout(page, f"indicators {size}")
        assert_accessible(page, f"indicators {size}")
        page.screenshot(path=tmp_path / f"indicators-{size}.png")
        for chart in ("ed", "receipts"):
            page.eval_on_selector(f'figure[data-chart="{chart}"]', "f => f.scrollIntoView()")
            page.screenshot(path=tmp_path / f"indicators-{chart}-{size}.png")
        widest = page.eval_on_selector_all("#indicators svg.chart",
                                           "cs => Math.max(...cs.map(c => c.getBoundingClientRect().right))")
        assert widest <= SIZES[size]["viewport"]["width"]  # the charts fit the screen, no sideways scrolling
    desktop = pages["desktop"]  # one hospital, chosen by FINESS; a wrong one said in French
    desktop.fill("#ind-structure", "97000")
    desktop.click("#indicators-form button[type=submit]")
    desktop.wait_for_selector("#indicators-status:has-text('FINESS invalide')")
    desktop.fill("#ind-structure", "970002002")
    desktop.click("#indicators-form button[type=submit]")
    desktop.wait_for_selector('#indicators-results figure[data-chart="ed"] svg rect')
    print(f"screenshots in {tmp_path}")
    for page in [*pages.values(), gp]:
        page.context.close()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_every_hospital_item_kind_in_the_timeline(database_url, server, browser, tmp_path):
    """The demo hospital plays an admission, an ED visit, its report (MDM^T02) and an ADT^A11
    cancelling the admission over MLLP inside mutual TLS; a colleague mails an IHE_XDM.ZIP to the
    nurse's box over SMTP. The nurse, on a desktop and a phone, sees four cards: the admission struck
    through and "annulé" with when (the cancellation itself no card of its own), the ED visit, the
    report, and the mailed document by its LOINC label with a link that opens the mail. The GP, whose
    box did not receive it, is told which box did. After a reload (history), the same."""
    pages = {size: signed_in(browser, server, NURSE, **options) for size, options in SIZES.items()}
    gp = signed_in(browser, server, GP, **SIZES["desktop"])
    for page in [*pages.values(), gp]:
        page.click('#circle-list li[data-circle="1"] a')
        page.wait_for_selector("#patient-name:has-text('Josette TECHER')")
    with hospital(server) as client:
        replies = [msa(client.send(sample(name))) for name in (ADMISSION, "adt_a04_ed_visit.hl7",
                                                               "mdm_t02_ed_report.hl7", CANCEL)]
        assert [r[1] for r in replies] == ["AA"] * 4

    def submit() -> None:
        # once the four events are dispatched: a timeline's order is the order msante learnt of each
        wait_for(server, select(hospital_events).where(hospital_events.c.status != "pending"), 4)
        with login(server) as smtp:
            smtp.sendmail(GP_BOX, [NURSE_BOX], mail(NURSE_BOX, archive()))
    with ThreadPoolExecutor(1) as thread:  # smtplib from another thread: Playwright holds this one's loop
        thread.submit(submit).result()

    SHOTS.mkdir(exist_ok=True)
    for size, page in pages.items():
        for reloaded in (False, True):
            where = f"{size}{' reloaded' if reloaded else ''}"
            cancelled = page.wait_for_selector('#messages li.event.cancelled[data-kind="ADM"]')
            assert "Annulé par l'établissement le " in cancelled.inner_text(), where
            assert "MEDECINE POLYVALENTE" in cancelled.inner_text()
            told = page.wait_for_selector('li.cancelled .cancel-receipts[data-state="delivered"]')  # the GP heard of both
            assert told.inner_text().startswith("✓✓ Annulation : Médecin traitant : remis"), where
            struck = page.eval_on_selector('#messages li.event.cancelled .event-title',
                                           "t => getComputedStyle(t).textDecorationLine")
            assert struck == "line-through", where
            document = page.wait_for_selector('#messages li.event[data-source="mail"]')
            assert "Lettre de liaison de sortie (LOINC 11490-0)" in document.inner_text(), where
            link = document.query_selector("a.open-mail")
            assert link and link.get_attribute("href") == "#/courriel/sophie.hoarau%40msante.test/1", where
            kinds = page.eval_on_selector_all("#messages li.event", "cs => cs.map(c => c.dataset.kind + "
                                              "(c.classList.contains('cancelled') ? '-' : ''))")
            assert kinds == ["ADM-", "URG", "DOC", "DOC"], where  # no card for the cancellation itself
            assert "LOINC 15507-7" in page.inner_text('#messages li.event[data-event]:has-text("CR de passage")')
            layout(page, where)
            assert_accessible(page, where)
            widest = page.eval_on_selector_all("#messages li.event", "cs => Math.max(...cs.map("
                                               "c => c.getBoundingClientRect().right))")
            assert widest <= SIZES[size]["viewport"]["width"], where
            for card in ("cancelled", 'event[data-source="mail"]'):
                page.eval_on_selector(f"#messages li.{card}", "c => c.scrollIntoView({block: 'center'})")
                shot = tmp_path / f"timeline-{card.split('[')[0]}-{where.replace(' ', '-')}.png"
                page.screenshot(path=shot)
                if not reloaded:
                    shutil.copy(shot, SHOTS / shot.name)
            if not reloaded:
                page.reload()
                page.wait_for_selector("#patient-name:has-text('Josette TECHER')")  # the hash kept the circle open

    hint = gp.wait_for_selector('#messages li.event[data-source="mail"] .event-mail')
    assert hint.inner_text() == f"Message dans la boîte {NURSE_BOX}" and not hint.query_selector("a")
    phone = pages["phone"]
    phone.click('#messages li.event[data-source="mail"] a.open-mail')
    phone.wait_for_selector("#mail-subject:has-text('Lettre de liaison')")
    assert "IHE_XDM.ZIP" in phone.inner_text("#mail-attachments")
    layout(phone, "mail from the timeline")
    phone.screenshot(path=tmp_path / "timeline-mail-phone.png")
    shutil.copy(tmp_path / "timeline-mail-phone.png", SHOTS)
    phone.click("#back")  # back to the timeline it was opened from, not the list
    phone.wait_for_selector('#messages li.event[data-source="mail"]:visible')
    print(f"screenshots in {tmp_path} and {SHOTS}")
    for page in [*pages.values(), gp]:
        page.context.close()
