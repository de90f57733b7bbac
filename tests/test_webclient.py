"""The web client in a real headless Chromium (Debian's `chromium`, driven by Playwright): two
professionals of the demo circle sign in through the dev issuer's page, one posts, the other
sees it live; a pharmacist outside the circle cannot open it. Every view is measured at phone
sizes (390x844, 360x640, and 360x330: a phone with its keyboard open) and at 1280x800, and
checked with axe-core (fetched from the npm registry into .tools/axe the first time).
Screenshots are kept in test-artifacts/."""
from __future__ import annotations

import os
import struct
import subprocess
import zlib
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import insert, update

from store.schema import circle_messages, circles
from tests.test_instant_api import PATIENT, api

CHROMIUM = "/usr/bin/chromium"
ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
AXE = "axe-core@4.14.1"
AXE_DIR = ROOT / ".tools" / "axe"
AXE_JS = AXE_DIR / "node_modules" / "axe-core" / "axe.min.js"
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


def _axe_source() -> str:
    """axe-core from the npm registry, once (the file is not ours to commit); skipped only if npm fails."""
    if not AXE_JS.exists():
        try:
            subprocess.run(["npm", "install", "--no-save", "--no-package-lock", "--prefix", str(AXE_DIR), AXE],
                           check=True, timeout=300, capture_output=True)
        except (OSError, subprocess.SubprocessError) as exc:
            pytest.skip(f"the accessibility check needs {AXE} from npm, and `npm install` failed: {exc}")
    return AXE_JS.read_text()


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


def signed_in(browser, server, idnat: str, init_script: str | None = None, **viewport):  # noqa: ANN001, ANN201
    """A Playwright page signed in as `idnat`; `init_script` runs before the page's own."""
    context = browser.new_context(ignore_https_errors=True, locale="fr-FR", timezone_id="Europe/Paris", **viewport)
    if init_script:
        context.add_init_script(init_script)
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
    gp.wait_for_selector("#messages li.mine:not(.pending):has-text('Mme Técher sort demain') button.reply")

    received.query_selector("button.reply").click()  # a reply quotes the message it answers
    assert "Mme Técher sort demain" in urgentist.inner_text("#replying")
    urgentist.fill("#text", "Entendu, je passe à 9 h.")
    urgentist.click("#composer button[type=submit]")
    answer = gp.wait_for_selector("#messages li:has-text('Entendu, je passe à 9 h.')")
    assert "Dr Claire LEROY" in answer.inner_text()
    assert "Vous : Bonjour, Mme Técher sort demain" in answer.query_selector("blockquote.quote").inner_text()
    assert urgentist.is_hidden("#replying")
    attach_documents(urgentist, gp)
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



def png(width: int, height: int) -> bytes:
    """A real PNG (a blue square), so the thumbnail has something to draw."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    rows = b"".join(b"\x00" + b"\x0b\x5c\x8e" * width for _ in range(height))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def attach_documents(phone, desktop) -> None:  # noqa: ANN001 - Playwright pages
    """On the phone: a PDF and a photo attached from the composer, sent; on the desktop they arrive as
    download links, the photo with its thumbnail; an HTML page named .pdf is refused in French."""
    pdf = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"
    phone.set_input_files("#attach-input", files=[
        {"name": "Compte rendu.pdf", "mimeType": "application/pdf", "buffer": pdf},
        {"name": "plaie.png", "mimeType": "image/png", "buffer": png(48, 48)}])
    phone.wait_for_selector("#attached li:has-text('plaie.png')")
    assert "Compte rendu.pdf" in phone.inner_text("#attached")
    phone.set_input_files("#attach-input", files=[
        {"name": "ordonnance.pdf", "mimeType": "application/pdf", "buffer": b"<html><script>1</script></html>"}])
    phone.wait_for_selector("#notice:has-text('seuls les documents PDF, PNG ou JPEG')")
    phone.fill("#text", "Compte rendu et photo de la plaie")
    phone.screenshot(path=ARTIFACTS / "attach-composer-390x844.png")
    phone.click("#composer button[type=submit]")
    assert phone.is_hidden("#attached")
    received = desktop.wait_for_selector("#messages li:has-text('Compte rendu et photo de la plaie')")
    link = received.query_selector("a.attachment:has-text('Compte rendu.pdf')")
    assert link is not None and link.get_attribute("download") == "Compte rendu.pdf"
    desktop.wait_for_function("() => [...document.querySelectorAll('#messages .files img')]"
                              ".some((img) => img.complete && img.naturalWidth === 48)")
    with desktop.expect_download() as download:
        link.click()
    assert download.value.suggested_filename == "Compte rendu.pdf"
    assert Path(download.value.path()).read_bytes() == pdf
    phone.wait_for_selector("#messages li.mine:not(.pending) a.attachment:has-text('plaie.png')")
    phone.wait_for_function("() => [...document.querySelectorAll('#messages .files img')]"
                            ".some((img) => img.complete && img.naturalWidth === 48)")
    layout(phone, "attachments 390x844")
    assert_accessible(phone, "attachments 390x844")
    phone.screenshot(path=ARTIFACTS / "attachments-390x844.png")


def assert_accessible(page, where: str) -> None:  # noqa: ANN001
    """No serious or critical axe-core violation (contrast, names, labels, landmarks...) in the page as it is
    now. The script goes in through the debugging protocol, which the page's CSP does not govern."""
    if not page.evaluate("() => typeof axe !== 'undefined'"):
        page.evaluate(_axe_source())
    result = page.evaluate("async () => (await axe.run(document, {resultTypes: ['violations']})).violations")
    serious = [f"{v['id']} ({v['impact']}): {v['help']} at {[n['target'] for n in v['nodes']][:3]}"
               for v in result if v["impact"] in ("serious", "critical")]
    assert not serious, f"{where}: {serious}"


LAYOUT = """() => {
  const box = (e) => {
    if (!e || !e.getClientRects().length) return null;
    const r = e.getBoundingClientRect();
    return {top: r.top, bottom: r.bottom, left: r.left, right: r.right};
  };
  const covered = [...document.querySelectorAll('.bar button, #alerts-close, #composer button')]
    .filter((b) => b.getClientRects().length)
    .filter((b) => {
      const r = b.getBoundingClientRect();
      const hit = document.elementFromPoint(r.left + r.width / 2, r.top + r.height / 2);
      return !(hit && (hit === b || b.contains(hit)));
    }).map((b) => b.id || b.textContent.trim());
  return {width: innerWidth, height: innerHeight, scrollWidth: document.documentElement.scrollWidth,
          scrollHeight: document.documentElement.scrollHeight, bar: box(document.querySelector('.bar')),
          composer: box(document.getElementById('composer')), patient: box(document.getElementById('patient-name')),
          alerts: box(document.getElementById('alerts')), circles: box(document.getElementById('circles')),
          conversation: box(document.getElementById('conversation')),
          last: box(document.querySelector('#messages li:last-child')),
          thread: box(document.getElementById('thread')), covered};
}"""


def layout(page, where: str) -> dict:  # noqa: ANN001
    """The page fits its viewport (nothing scrolls but the panels), the bar covers nothing, and every
    button shown takes a tap at its centre."""
    m = page.evaluate(LAYOUT)
    assert m["scrollHeight"] <= m["height"] and m["scrollWidth"] <= m["width"], (where, m)
    assert not m["covered"], (where, m["covered"])
    for part in ("composer", "patient", "alerts", "circles", "conversation"):
        if m[part]:
            box = m[part]
            assert box["top"] >= m["bar"]["bottom"] - 0.5 and box["bottom"] <= m["height"] + 0.5, (where, part, m)
    return m


def assert_latest_in_sight(page, where: str) -> None:  # noqa: ANN001
    m = layout(page, where)
    assert m["thread"]["top"] <= m["last"]["top"] and m["last"]["bottom"] <= m["thread"]["bottom"] + 1, (where, m)


PHONES = [(390, 844), (360, 640)]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_every_view_fits_a_phone_and_passes_axe(database_url, server, browser):
    """Each phone size: the list, a conversation longer than the screen, the alerts (over it, with the
    bar still there and a way back), then the keyboard open; axe-core finds nothing serious."""
    ARTIFACTS.mkdir(exist_ok=True)
    for width, height in PHONES:
        size = f"{width}x{height}"
        page = signed_in(browser, server, URGENTIST, viewport={"width": width, "height": height}, is_mobile=True,
                         has_touch=True)
        page.wait_for_selector('#circle-list li[data-circle="1"]')
        assert page.is_hidden("#back") and page.is_hidden("#conversation")
        assert "Dr Claire LEROY" in page.inner_text("#whoami")
        layout(page, f"list {size}")
        page.screenshot(path=ARTIFACTS / f"list-{size}.png")
        assert_accessible(page, f"list {size}")

        page.click('#circle-list li[data-circle="1"] a')
        page.wait_for_selector("#patient-name:has-text('Josette TECHER')")
        assert page.is_hidden("#circles") and page.is_visible("#back") and page.is_hidden("#signout")
        for n in range(12):  # longer than the screen: the thread scrolls, nothing else does
            page.fill("#text", f"Point {n + 1} ({size}) : tension 12/8, pansement refait, pas de fièvre.")
            page.press("#text", "Enter")
        page.wait_for_selector(f"#messages li:not(.pending):has-text('Point 12 ({size})')")
        assert_latest_in_sight(page, f"conversation {size}")
        page.screenshot(path=ARTIFACTS / f"conversation-{size}.png")
        assert_accessible(page, f"conversation {size}")

        page.click("#alerts-toggle")
        page.wait_for_selector("#alerts:visible")
        m = layout(page, f"alerts {size}")
        assert m["conversation"] is None and m["alerts"]["top"] >= m["bar"]["bottom"]
        assert page.evaluate("document.activeElement.id") == "alerts-close"
        page.screenshot(path=ARTIFACTS / f"alerts-{size}.png")
        assert_accessible(page, f"alerts {size}")
        page.click("#alerts-close")  # the panel's own back arrow: back to the conversation
        page.wait_for_selector("#composer:visible")
        assert_latest_in_sight(page, f"back from the alerts {size}")
        page.click("#alerts-toggle")
        page.click("#back")  # the bar's arrow closes the panel too, then leads to the list
        page.wait_for_selector("#composer:visible")
        assert page.is_hidden("#alerts")
        assert_latest_in_sight(page, f"back from the alerts by the bar {size}")

        page.set_viewport_size({"width": 360, "height": 330})  # the on-screen keyboard takes the rest
        page.focus("#text")
        assert_latest_in_sight(page, f"keyboard open, from {size}")
        if (width, height) == PHONES[-1]:
            page.screenshot(path=ARTIFACTS / "keyboard-open-360x330.png")
        assert_accessible(page, f"keyboard open {size}")
        page.set_viewport_size({"width": width, "height": height})
        page.click("#back")
        page.wait_for_selector("#circles:visible")
        assert page.is_hidden("#conversation") and page.is_hidden("#back")
        page.context.close()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_desktop_three_columns_and_keyboard_only(database_url, server, browser):
    """1280x800: list, conversation and alerts side by side; everything reached with Tab and Enter."""
    ARTIFACTS.mkdir(exist_ok=True)
    page = signed_in(browser, server, GP, viewport={"width": 1280, "height": 800})
    page.wait_for_selector('#circle-list li[data-circle="1"]')
    assert_accessible(page, "desktop list")

    def tab_to(selector: str, presses: int = 25) -> None:
        for _ in range(presses):
            page.keyboard.press("Tab")
            if page.evaluate("(s) => document.activeElement.matches(s)", selector):
                return
        pytest.fail(f"Tab never reached {selector}")

    tab_to('#circle-list a')
    page.keyboard.press("Enter")
    page.wait_for_selector("#patient-name:has-text('Josette TECHER')")
    tab_to("#text")
    page.keyboard.type("Envoyé au clavier seul.")
    page.keyboard.press("Enter")
    page.wait_for_selector("#messages li.mine:not(.pending):has-text('Envoyé au clavier seul.')")
    tab_to("#alerts-toggle")
    page.keyboard.press("Enter")
    page.wait_for_selector("#alerts:visible")
    m = layout(page, "desktop")
    assert m["circles"]["right"] <= m["conversation"]["left"] + 1
    assert m["conversation"]["right"] <= m["alerts"]["left"] + 1
    assert page.is_visible("#members") and page.is_visible("#me")
    page.screenshot(path=ARTIFACTS / "desktop-1280x800.png")
    assert_accessible(page, "desktop with alerts")
    page.keyboard.press("Enter")  # the focus is on the panel's close button
    page.wait_for_selector("#alerts", state="hidden")
    assert page.evaluate("document.activeElement.id") == "alerts-toggle"
    page.keyboard.press("Enter")
    page.wait_for_selector("#alerts:visible")
    page.keyboard.press("Escape")  # closes it too
    page.wait_for_selector("#alerts", state="hidden")

    page.fill("#text", "x" * 20)
    page.evaluate("() => { document.getElementById('text').removeAttribute('maxlength'); }")
    page.fill("#text", "x" * 4001)  # past the limit: the server's refusal, said in French
    page.keyboard.press("Enter")
    page.wait_for_selector("#notice:has-text('Message trop long : 4 000 caractères au plus.')")
    page.wait_for_selector("#messages li.pending", state="detached")  # not left pending, not retried
    assert len(page.input_value("#text")) == 4001  # back in the composer, to shorten
    page.context.close()


# Notifications recorded instead of shown (a headless browser has no notification centre);
# permission starts undecided, as in a fresh browser, and is granted when asked.
NOTIFICATIONS = """
window.shownNotifications = [];
window.Notification = class {
  static permission = "default";
  static async requestPermission() { window.Notification.permission = "granted"; return "granted"; }
  constructor(title, options) { window.shownNotifications.push({title, ...options}); }
  close() {}
};
"""


def hidden(page, really: bool) -> None:  # noqa: ANN001
    """The tab goes to the background (or comes back), as the browser tells it."""
    page.evaluate("""(hide) => {
      Object.defineProperty(document, "visibilityState", {value: hide ? "hidden" : "visible", configurable: true});
      document.dispatchEvent(new Event("visibilitychange"));
    }""", really)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_list_by_activity_receipts_days_notifications_and_mute(database_url, server, browser):
    """The circle list shows each circle's last message and unread count, the most active first; a
    conversation separates days and says who read my messages; a hidden tab notifies (who and
    where, never the text) and counts unread messages in its title, except for a muted circle."""
    ARTIFACTS.mkdir(exist_ok=True)
    status, second = api(server, "POST", "/api/circles", GP, {"patient": PATIENT, "members": [{"id": URGENTIST}]})
    assert status == 201
    yesterday = datetime.now(timezone.utc) - timedelta(days=1)
    with ThreadPoolExecutor(1) as thread:  # the store from another thread: Playwright holds this one's loop
        thread.submit(server.execute, insert(circle_messages).values(
            circle_id=1, seq=1, author=URGENTIST, client_id="hier", text="Passage infirmier fait hier soir.",
            created_at=yesterday)).result()
        thread.submit(server.execute, update(circles).where(circles.c.id == 1).values(last_seq=1)).result()

    gp = signed_in(browser, server, GP, NOTIFICATIONS, viewport={"width": 1280, "height": 800})
    gp.wait_for_selector(f'#circle-list li[data-circle="{second["id"]}"]')
    def order() -> list[int]:
        return gp.eval_on_selector_all("#circle-list li", "items => items.map(i => Number(i.dataset.circle))")
    assert order() == [second["id"], 1]  # created just now, before yesterday's message
    assert "Dr Claire LEROY : Passage infirmier fait hier soir." in gp.inner_text('#circle-list li[data-circle="1"]')
    assert gp.inner_text('#circle-list li[data-circle="1"] .badge').startswith("1") and gp.title().startswith("(1)")
    gp.click("#notify-enable")  # asked on a click, as browsers require
    gp.wait_for_selector("#notify-enable", state="hidden")

    urgentist = signed_in(browser, server, URGENTIST, viewport={"width": 390, "height": 844}, is_mobile=True,
                          has_touch=True)
    gp.click('#circle-list li[data-circle="1"] a')
    gp.wait_for_selector("#messages li.day:has-text('Hier')")
    gp.fill("#text", "Résultats de la prise de sang reçus, rien d'alarmant.")
    gp.press("#text", "Enter")
    mine = gp.wait_for_selector("#messages li.mine:not(.pending):has-text('prise de sang')")
    assert gp.eval_on_selector_all("#messages li.day", "ds => ds.map(d => d.textContent)") == ["Hier", "Aujourd'hui"]
    assert "à l'instant" in mine.inner_text()
    gp.wait_for_selector("#messages li.mine .receipt:has-text('Lu par 0 sur 3')")
    assert order() == [1, second["id"]]  # the newest message moves its circle up
    gp.wait_for_function("() => !document.title.startsWith('(')")  # read here, so nothing unread

    urgentist.click('#circle-list li[data-circle="1"] a')  # she reads it
    urgentist.wait_for_selector("#messages li:has-text('prise de sang')")
    gp.wait_for_selector("#messages li.mine .receipt:has-text('Lu par 1 sur 3')")
    gp.click("#messages li.mine .receipt summary")
    assert "Dr Claire LEROY" in gp.inner_text("#messages li.mine .receipt")

    hidden(gp, True)
    urgentist.click("#back")
    urgentist.click(f'#circle-list li[data-circle="{second["id"]}"] a')
    urgentist.fill("#text", "M. Martin demande un rendez-vous.")
    urgentist.press("#text", "Enter")
    gp.wait_for_function("() => window.shownNotifications.length === 1")
    shown = gp.evaluate("window.shownNotifications[0]")
    assert shown == {"title": "Nouveau message de Dr Claire LEROY", "body": "Cercle de soins de Paul MARTIN",
                     "tag": f"cercle-{second['id']}"}  # who and where, not what
    assert gp.title().startswith("(1)") and order() == [second["id"], 1]
    assert "M. Martin demande un rendez-vous." in gp.inner_text(f'#circle-list li[data-circle="{second["id"]}"]')
    gp.screenshot(path=ARTIFACTS / "circle-list-unread-desktop.png")

    hidden(gp, False)
    gp.click(f'#circle-list li[data-circle="{second["id"]}"] a')
    gp.wait_for_selector(f'#circle-list li[data-circle="{second["id"]}"] a:not(:has(.badge))')
    gp.click("#mute:has-text('Couper les notifications')")
    assert gp.inner_text("#mute") == "Réactiver les notifications"
    gp.click('#circle-list li[data-circle="1"] a')
    hidden(gp, True)
    urgentist.fill("#text", "Il passera jeudi.")
    urgentist.press("#text", "Enter")
    gp.wait_for_selector(f'#circle-list li[data-circle="{second["id"]}"] .badge.muted')
    assert gp.evaluate("window.shownNotifications.length") == 1 and not gp.title().startswith("(")
    gp.reload()  # the mute is kept by this browser
    gp.wait_for_selector(f'#circle-list li[data-circle="{second["id"]}"].muted')
    assert_accessible(gp, "list with a muted circle")
    gp.screenshot(path=ARTIFACTS / "receipts-days-desktop.png")
    urgentist.screenshot(path=ARTIFACTS / "reply-phone.png")
    for page in (gp, urgentist):
        page.context.close()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_connect_a_mail_client_page(database_url, server, browser):
    """From the circle list to the settings a mail client needs (the running server's own ports), an
    application password created, used by a real IMAP client, then revoked; on a phone and a desktop."""
    import imaplib
    import ssl

    ARTIFACTS.mkdir(exist_ok=True)
    trust = ssl.create_default_context(cafile=str(server.ca_file))
    imaps = int(server.listeners["imaps"].rsplit(":", 1)[1])
    for size in ({"width": 360, "height": 640}, {"width": 1280, "height": 800}):
        page = signed_in(browser, server, URGENTIST, viewport=size, is_mobile=size["width"] < 700)
        page.click("text=Connecter un logiciel de messagerie")
        page.wait_for_selector("#server-rows tr")
        rows = page.eval_on_selector_all("#server-rows tr", "rs => rs.map(r => [...r.cells].map(c => c.textContent))")
        assert rows[0] == ["Réception (IMAP)", "localhost", str(imaps), "SSL/TLS"]
        submission_ports = {server.listeners[n].rsplit(":", 1)[1] for n in ("submissions", "submission")}
        assert {r[2] for r in rows[1:]} == submission_ports
        page.wait_for_selector("#ca-link:visible")
        assert page.is_visible("#back") == (size["width"] < 700)
        box = page.wait_for_selector('#boxes [data-box="claire.leroy@msante.test"] form')
        layout(page, f"mail clients {size}")
        assert_accessible(page, f"mail clients {size}")
        label = f"Thunderbird {size['width']}"
        box.query_selector("input").fill(label)
        box.query_selector("button[type=submit]").click()
        password = page.wait_for_selector('[data-box="claire.leroy@msante.test"] .created code').inner_text()
        page.wait_for_selector(f'[data-box="claire.leroy@msante.test"] li[data-label="{label}"]')
        page.screenshot(path=ARTIFACTS / f"mail-clients-{size['width']}x{size['height']}.png", full_page=True)
        with imaplib.IMAP4_SSL("localhost", imaps, ssl_context=trust, timeout=10) as imap:
            assert imap.login("claire.leroy@msante.test", password)[0] == "OK"
        page.click(f'[data-box="claire.leroy@msante.test"] li[data-label="{label}"] button')
        page.wait_for_selector(f'[data-box="claire.leroy@msante.test"] li[data-label="{label}"]', state="detached")
        with imaplib.IMAP4_SSL("localhost", imaps, ssl_context=trust, timeout=10) as imap:
            with pytest.raises(imaplib.IMAP4.error):
                imap.login("claire.leroy@msante.test", password)
        if size["width"] < 700:
            page.click("#back")
            page.wait_for_selector("#circles:visible")
            assert page.is_hidden("#mail-clients")
        page.context.close()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_create_a_circle_with_members_found_as_one_types(database_url, server, browser):
    """On a phone: the patient's INS identity, a member found in the directory while typing, a refusal
    said in French, then the new circle opens with its members."""
    ARTIFACTS.mkdir(exist_ok=True)
    page = signed_in(browser, server, GP, viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    page.click("text=Nouveau cercle")
    page.wait_for_selector("#new-circle:visible")
    assert page.is_hidden("#circles") and page.is_visible("#back")
    page.fill("#nc-ins", "185057511204539")  # a wrong key
    page.fill("#nc-family", PATIENT["family_name"])
    page.fill("#nc-given", PATIENT["given_name"])
    page.fill("#nc-birth", PATIENT["birth_date"])
    page.type("#nc-search", "lero", delay=50)
    page.click("#nc-results button:has-text('Dr Claire LEROY')")
    page.wait_for_selector(f'#nc-members li[data-idnat="{URGENTIST}"]')
    layout(page, "new circle")
    assert_accessible(page, "new circle")
    page.screenshot(path=ARTIFACTS / "new-circle-390x844.png")
    page.click("#new-circle-form button[type=submit]")
    page.wait_for_selector("#new-circle-error:has-text('Matricule INS invalide')")
    page.fill("#nc-ins", PATIENT["ins"])
    page.click("#new-circle-form button[type=submit]")
    page.wait_for_selector("#patient-name:has-text('Paul MARTIN')")
    page.click("#members-summary")
    page.wait_for_selector(f'#members li[data-member="{URGENTIST}"]:visible')
    assert "(coordination)" in page.inner_text(f'#members li[data-member="{GP}"]')
    page.click("#back")
    page.wait_for_selector('#circle-list li:has-text("Paul MARTIN")')
    page.context.close()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_the_coordinator_adds_and_removes_members(database_url, server, browser):
    """Karim Payet coordinates the demo circle: he adds the pharmacist found by identifier, she sees the
    circle appear; he removes her, and she loses it at once. Members cannot change the list, but may
    leave it."""
    coordinator = signed_in(browser, server, "810002000031", viewport={"width": 1280, "height": 800})
    pharmacist = signed_in(browser, server, PHARMACIST, viewport={"width": 390, "height": 844}, is_mobile=True)
    member = signed_in(browser, server, GP, viewport={"width": 1280, "height": 800})
    for page in (coordinator, member):
        page.click('#circle-list li[data-circle="1"] a')
        page.wait_for_selector(f'#members li[data-member="{GP}"]')
    assert member.is_hidden("#member-add") and not member.query_selector("#members button")
    coordinator.type("#ma-search", PHARMACIST, delay=30)  # by national identifier
    coordinator.click(f'#ma-results button[data-idnat="{PHARMACIST}"]')
    coordinator.wait_for_selector(f'#members li[data-member="{PHARMACIST}"]')
    pharmacist.wait_for_selector('#circle-list li[data-circle="1"]')  # her circle list grows
    assert_accessible(coordinator, "members, coordinator")
    coordinator.screenshot(path=ARTIFACTS / "members-coordinator-desktop.png")
    coordinator.click(f'#members li[data-member="{PHARMACIST}"] button')
    coordinator.wait_for_selector(f'#members li[data-member="{PHARMACIST}"]', state="detached")
    pharmacist.wait_for_selector('#circle-list li[data-circle="1"]', state="detached")
    assert coordinator.is_hidden("#leave-box")  # a circle keeps its coordinator
    # a member leaves, after confirming
    member.click("#leave")
    member.click("#leave-confirm")
    member.wait_for_selector("#circles:visible")
    member.wait_for_selector('#circle-list li[data-circle="1"]', state="detached")
    coordinator.wait_for_selector(f'#members li[data-member="{GP}"]', state="detached")  # seen live

    for page in (coordinator, pharmacist, member):
        page.context.close()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_mail_alert_opens_the_mail(database_url, server, browser):
    """On a phone: the alert of a new mail opens it read-only (headers, text, the attachments to download,
    an XDM archive's documents); "Marquer comme lu" sets \\Seen."""
    from tests.test_webmail import PDF, send

    ARTIFACTS.mkdir(exist_ok=True)
    page = signed_in(browser, server, URGENTIST, viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    with ThreadPoolExecutor(1) as thread:  # smtplib from another thread: Playwright holds this one's loop
        thread.submit(send, server, "claire.leroy@msante.test").result()
    page.click("#alerts-toggle")
    page.click("#alert-list li:has-text('Patiente Técher') button.open-mail")
    page.wait_for_selector("#mail-subject:has-text('Patiente Técher : CR de sortie')")
    assert page.is_hidden("#alerts") and page.is_visible("#back")
    assert "le compte rendu est joint." in page.inner_text("#mail-text")
    assert "DOC0001.PDF" in page.inner_text("#mail-attachments")
    layout(page, "mail")
    assert_accessible(page, "mail")
    page.screenshot(path=ARTIFACTS / "mail-390x844.png")
    with page.expect_download() as download:
        page.click("#mail-attachments button:has-text('compte-rendu.pdf')")
    assert download.value.suggested_filename == "compte-rendu.pdf"
    assert Path(download.value.path()).read_bytes() == PDF
    page.click("#mail-seen")
    page.wait_for_selector("#mail-seen-state:visible")
    page.click("#back")
    page.wait_for_selector("#circles:visible")
    page.context.close()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_search_a_circle(database_url, server, browser):
    """The words found in the circle's history, newest first, marked; then back to the conversation."""
    page = signed_in(browser, server, GP, viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    page.click('#circle-list li[data-circle="1"] a')
    for text in ("Pansement refait ce matin.", "Tension 13/8.", "Prochain PANSEMENT jeudi."):
        page.fill("#text", text)
        page.press("#text", "Enter")
    page.wait_for_selector("#messages li:not(.pending):has-text('Prochain PANSEMENT jeudi.')")
    page.click("#search-toggle")
    page.fill("#search-q", "pansement")
    page.press("#search-q", "Enter")
    page.wait_for_selector("#search-results li")
    found = page.eval_on_selector_all("#search-results li .text", "ts => ts.map(t => t.textContent)")
    assert found == ["Prochain PANSEMENT jeudi.", "Pansement refait ce matin."]
    assert page.eval_on_selector_all("#search-results mark", "ms => ms.map(m => m.textContent)") == [
        "PANSEMENT", "Pansement"]
    assert page.is_hidden("#thread") and page.is_visible("#composer")
    layout(page, "search")
    assert_accessible(page, "search")
    page.screenshot(path=ARTIFACTS / "search-390x844.png")
    page.click("#search-toggle")
    page.wait_for_selector("#thread:visible")
    page.context.close()
