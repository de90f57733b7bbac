"""The web client in a real headless Chromium (Debian's `chromium`, driven by Playwright): two
professionals of the demo circle sign in through the dev issuer's page, one posts, the other
sees it live; a pharmacist outside the circle cannot open it. Screenshots of the conversation
(desktop and phone) are kept in test-artifacts/."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
GP, URGENTIST, PHARMACIST = "810001045367", "810002000015", "810002000049"
LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _install_chromium() -> None:
    """Debian's package, the first time on a fresh machine (CI); skipped only if that fails."""
    if Path(CHROMIUM).exists():
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium"]):
            subprocess.run(command, check=True, env=env, timeout=900, capture_output=True)
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"the browser test needs Debian's chromium at {CHROMIUM}, and `apt-get install -y chromium` "
                    f"failed: {exc}")


@pytest.fixture
def browser(server):
    """After the server: Playwright's sync API marks this thread's loop as running, and the
    server fixture's setup runs `msante init` with asyncio.run."""
    _install_chromium()
    from playwright.sync_api import sync_playwright  # the `test` extra installs it; never `playwright install`

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        yield chromium
        chromium.close()


def signed_in(browser, server, idnat: str, **viewport):  # noqa: ANN001, ANN201 - a Playwright page
    context = browser.new_context(ignore_https_errors=True, locale="fr-FR", **viewport)
    page = context.new_page()
    page.set_default_timeout(10_000)
    page.goto(f"{server.settings.public_url}/")
    page.click("#signin-button")
    page.click(f'button[name="idnat"][value="{idnat}"]')  # the dev issuer's page: choose who signs in
    page.wait_for_selector("#status[data-state='online']")
    return page


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # the UI, not the store, is under test
def test_two_professionals_talk_live(database_url, server, browser):
    ARTIFACTS.mkdir(exist_ok=True)
    gp = signed_in(browser, server, GP, viewport={"width": 1280, "height": 800})
    urgentist = signed_in(browser, server, URGENTIST, viewport={"width": 390, "height": 844}, is_mobile=True,
                          has_touch=True)
    assert gp.inner_text("#me") == "Dr Jean DUPONT"
    for page in (gp, urgentist):
        page.click('#circle-list li[data-circle="1"] a')
        page.wait_for_selector("#patient-name:has-text('Josette TECHER')")
    assert urgentist.is_hidden("#circles")  # a phone shows the conversation alone
    gp.wait_for_selector(f'#members li[data-member="{URGENTIST}"][data-state="online"]')

    gp.fill("#text", "Bonjour, Mme Técher sort demain : pouvez-vous passer à 9 h ?")
    urgentist.wait_for_selector("#typing:has-text('Dr Jean DUPONT écrit')")
    gp.press("#text", "Enter")
    received = urgentist.wait_for_selector("#messages li:has-text('Mme Técher sort demain')")
    assert "Dr Jean DUPONT" in received.inner_text()
    gp.wait_for_selector("#messages li.mine:not(.pending):has-text('Mme Técher sort demain')")

    urgentist.fill("#text", "Entendu, je passe à 9 h.")
    urgentist.click("#composer button[type=submit]")
    gp.wait_for_selector("#messages li:has-text('Entendu, je passe à 9 h.')")
    gp.click("#alerts-toggle")  # the circle's creation, pending since init --demo
    alert = gp.wait_for_selector("#alert-list li:has-text('Nouveau cercle de soins : Josette TECHER')")
    alert.query_selector("button").click()
    gp.wait_for_selector("#alert-list li.done:has-text('Acquittée par Dr Jean DUPONT')")
    assert gp.is_hidden("#alert-count")
    gp.screenshot(path=ARTIFACTS / "conversation-desktop.png", full_page=True)
    urgentist.screenshot(path=ARTIFACTS / "conversation-phone.png", full_page=True)

    outsider = signed_in(browser, server, PHARMACIST, viewport={"width": 1280, "height": 800})
    outsider.wait_for_selector("#no-circle:visible")
    outsider.goto(f"{server.settings.public_url}/#/cercle/1")
    denied = outsider.wait_for_selector("#denied:visible")
    assert "Accès refusé" in denied.inner_text()
    assert outsider.locator("#messages li").count() == 0 and outsider.is_hidden("#composer")
    outsider.screenshot(path=ARTIFACTS / "non-member.png")
    assert (ARTIFACTS / "conversation-desktop.png").stat().st_size > 10_000
    for page in (gp, urgentist, outsider):
        page.context.close()

