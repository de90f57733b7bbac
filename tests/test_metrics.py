"""/metrics as an operator's Prometheus sees it: a running server driven by real clients (smtplib,
imaplib, websockets), then one scrape over HTTPS parsed by prometheus_client's parser. Counters
are global to the process (several servers run in one pytest process), so each test compares a
scrape before with one after."""
from __future__ import annotations

import asyncio
import imaplib
import json
import os
import re
import smtplib
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests import scrape
from tests.conftest import free_port
from tests.test_imap import imaplib_client
from tests.test_instant_ws import CIRCLE, Client
from tests.test_instant_ws import GP as GP_IDNAT
from tests.test_smtp import GP, NURSE, connect, login, message

ROOT = Path(__file__).parent.parent
DASHBOARD = ROOT / "docs" / "grafana-dashboard.json"
REMOTE = "dr.house@chu-exemple.test"  # routed to a port where nothing listens: the delivery is deferred


@pytest.fixture(autouse=True)
def unreachable_peer(monkeypatch):
    """Set before `server` starts (autouse fixtures come first)."""
    monkeypatch.setenv("MSANTE_RELAY__ROUTES", json.dumps({"chu-exemple.test": f"127.0.0.1:{free_port()}"}))


def moved(before: scrape.Samples, after: scrape.Samples, name: str, **labels: str) -> float:
    return scrape.value(after, name, **labels) - scrape.value(before, name, **labels)


async def websocket_session(server) -> None:  # noqa: ANN001
    client = await Client.connect(server, GP_IDNAT)  # the auth frame
    subscribed = await client.request(type="subscribe", circle=CIRCLE)
    assert subscribed["type"] == "subscribed", subscribed
    await client.ws.send("{not json")
    assert (await client.expect(type="error"))["code"] == "bad_frame"
    await client.ws.close()
    own_code = await Client.connect(server, GP_IDNAT)
    await own_code.ws.close(code=4321)  # a code of the client's choosing: not a label of its own


def test_counters_move_with_the_traffic(server):
    before = scrape.of(server)

    client = login(server)  # XOAUTH2 on submission
    client.sendmail(GP, [NURSE], message(GP, [NURSE], "Compte rendu"))
    client.sendmail(GP, [REMOTE], message(GP, [REMOTE], "Pour le CHU"))
    client.mail(GP)
    assert client.rcpt("personne@msante.test")[0] == 550  # 5.1.1: no such mailbox
    client.quit()
    wrong = connect(server, "submission")
    wrong.user, wrong.password = GP, "not the password"
    with pytest.raises(smtplib.SMTPAuthenticationError):
        wrong.auth("PLAIN", wrong.auth_plain)  # only PLAIN: login() would go on to LOGIN
    wrong.quit()

    imap = imaplib_client(server)  # AUTHENTICATE XOAUTH2 on imaps
    assert imap.select("INBOX")[0] == "OK"
    assert imap.uid("FETCH", "1:*", "(FLAGS)")[0] == "OK"
    assert imap.noop()[0] == "OK"
    with pytest.raises(imaplib.IMAP4.error):
        imap.xatom("FROBNICATE")
    imap.logout()

    asyncio.run(websocket_session(server))

    deadline = time.monotonic() + 30
    while True:  # the queue tries the unreachable peer once, then counts a deferred delivery
        after = scrape.of(server)
        if moved(before, after, "msante_deliveries_total", outcome="deferred") >= 1 and \
                moved(before, after, "msante_websocket_connections") == 0:
            break
        assert time.monotonic() < deadline, "no deferred delivery counted"
        time.sleep(0.2)

    def delta(name: str, **labels: str) -> float:
        return moved(before, after, name, **labels)

    assert delta("msante_smtp_sessions_total", listener="submission") == 2
    assert delta("msante_smtp_messages_total", listener="submission") == 2
    assert delta("msante_smtp_refusals_total", listener="submission", command="RCPT", code="5.1.1") == 1
    assert delta("msante_logins_total", protocol="smtp", mechanism="XOAUTH2", outcome="success") == 1
    assert delta("msante_logins_total", protocol="smtp", mechanism="PLAIN", outcome="failed") == 1
    assert delta("msante_logins_total", protocol="imap", mechanism="XOAUTH2", outcome="success") == 1
    assert delta("msante_imap_sessions_total", listener="imaps") == 1
    for command in ("AUTHENTICATE", "SELECT", "UID FETCH", "NOOP", "LOGOUT"):
        assert delta("msante_imap_commands_total", command=command, status="OK") == 1, command
    assert delta("msante_imap_commands_total", command="unknown", status="BAD") == 1
    assert delta("msante_websocket_accepted_total") == 2
    assert delta("msante_websocket_frames_received_total", type="auth") == 2
    for frame in ("subscribe", "malformed"):
        assert delta("msante_websocket_frames_received_total", type=frame) == 1, frame
    assert delta("msante_websocket_frames_sent_total") >= 4  # 2 welcome, subscribed, the error
    assert delta("msante_websocket_closes_total", code="1000", by="client") == 1
    assert delta("msante_websocket_closes_total", code="other", by="client") == 1
    assert not [labels for name, labels in after if name == "msante_websocket_closes_total"
                and ("code", "4321") in labels]
    assert delta("msante_deliveries_total", outcome="relayed") == 0
    assert scrape.value(after, "msante_queue_size") == 1
    assert scrape.value(after, "msante_queue_oldest_seconds") > 0
    assert scrape.value(after, "process_cpu_seconds_total") > 0  # the default process collector


def test_no_address_or_user_becomes_a_label(server):
    client = login(server)
    client.sendmail(GP, [NURSE], message(GP, [NURSE]))
    client.quit()
    content_type, text = scrape.scrape(int(server.listeners["https"].rsplit(":", 1)[1]), server.client_tls())
    assert content_type == "text/plain; version=0.0.4; charset=utf-8"
    label_values = re.findall(r'="([^"]*)"', text)
    assert label_values and not [v for v in label_values if "@" in v or "jean" in v.lower()]


def test_the_dashboard_uses_only_exported_series(server):
    """Every series a panel queries is in a scrape: a renamed metric breaks this, not a dashboard."""
    dashboard = json.loads(DASHBOARD.read_text())
    expressions = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    assert expressions
    referenced = {name for expr in expressions for name in re.findall(r"\b((?:msante|process)_[a-z_]+)\b", expr)}
    exported = scrape.names(scrape.scrape(int(server.listeners["https"].rsplit(":", 1)[1]), server.client_tls())[1])
    assert referenced and referenced <= exported, referenced - exported


WORKER = """
import asyncio, sys
from web import metrics
metrics.SMTP_SESSIONS.labels(listener="submission").inc(int(sys.argv[1]))
metrics.WEBSOCKET_CONNECTIONS.inc()
if sys.argv[2] == "exit":
    metrics.process_exited()
else:
    sys.stdout.buffer.write(asyncio.run(metrics.Exposition().render()))
"""


def test_workers_share_one_exposition(tmp_path):
    """PROMETHEUS_MULTIPROC_DIR: what any worker renders sums the counters of all of them,
    including one that has stopped, and counts only the live ones' websockets."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    run = [sys.executable, "-c", WORKER]
    subprocess.run([*run, "2", "exit"], env=env, check=True, cwd=ROOT)
    text = subprocess.run([*run, "3", "render"], env=env, check=True, cwd=ROOT, capture_output=True).stdout.decode()
    rendered = scrape.samples(text)
    assert scrape.value(rendered, "msante_smtp_sessions_total", listener="submission") == 5
    assert scrape.value(rendered, "msante_websocket_connections") == 1  # the exited worker's is gone
    assert not [name for name, _ in rendered if name.startswith("process_")]  # per process: not summed


def test_the_hospital_feed_is_counted(server):
    """Events by kind and structure, GPs told or not and why, refusals by ACK code, and the ACK
    latency histogram, after an ED visit, an admission without a GP and a foreign MSH-4 over MLLP."""
    from tests.test_hospital_feed import hospital, msa, sample

    finess = "970002002"  # the demo hospital's
    no_gp = b"\n".join(line for line in sample("adt_a01_admission.hl7", "METRICS-NOGP").split(b"\n")
                       if not line.startswith(b"ROL|"))
    foreign = sample("adt_a04_ed_visit.hl7", "METRICS-FOREIGN", **{"CHSP^970002002^FINESS": "CHU^750712184^FINESS"})
    before = scrape.of(server)
    with hospital(server) as client:
        assert [msa(client.send(m))[1] for m in (sample("adt_a04_ed_visit.hl7"), no_gp, foreign)] == ["AA", "AA", "AR"]
    deadline = time.monotonic() + 15
    while True:  # the dispatcher tells (or not) after the ACK
        after = scrape.of(server)
        if moved(before, after, "msante_hospital_notifications_total", outcome="not_notified", reason="no_gp") >= 1 \
                and moved(before, after, "msante_hospital_notifications_total", outcome="notified", reason="") >= 1:
            break
        assert time.monotonic() < deadline, "the dispatch was not counted"
        time.sleep(0.2)
    assert moved(before, after, "msante_hl7_events_total", kind="URG", structure=finess) == 1
    assert moved(before, after, "msante_hl7_events_total", kind="ADM", structure=finess) == 1
    assert moved(before, after, "msante_hl7_refusals_total", code="AR") == 1
    assert moved(before, after, "msante_hl7_ack_seconds_count", code="AA") == 2
    assert moved(before, after, "msante_hl7_ack_seconds_count", code="AR") == 1
    assert moved(before, after, "msante_hl7_ack_seconds_bucket", code="AA", le="+Inf") == 2
