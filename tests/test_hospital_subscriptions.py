"""Subscriptions to a patient's hospital events and the coordinators' indicators, end to end:
the HTTPS API and the CLI, who may subscribe or read, an ED visit sent over MLLP+TLS reaching
each live subscriber exactly once, and figures counted from events sent over MLLP+TLS."""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import select, update

from store.schema import alerts, audit, hospital_notices, hospital_subscriptions, mailboxes
from tests.test_api import request, token_for
from tests.test_hospital_feed import hospital, inbox_messages, msa, sample, wait_for

INS = "248039741512358"  # the demo circle's patient (Josette Techer)
GP = "810001045367"  # Dr Jean Dupont, member, the GP the samples name
URGENTIST = "810002000015"  # Dr Claire Leroy, member, delegate of the ED's box
NURSE = "810002000023"  # Sophie Hoarau, member
COORDINATOR = "810002000031"  # Karim Payet, coordinates the circle
PHARMACIST = "810002000049"  # Marie Grondin: not in the circle
ED_BOX = "urgences.ch-saint-paul@msante.test"


def subscribe(server, idnat: str, **body) -> tuple[int, dict]:
    status, _, answer = request(server, "POST", "/api/subscriptions", token_for(server, idnat),
                                body={"patient": INS, **body})
    return status, answer


def test_create_list_replace_delete_and_who_may(server):
    status, made = subscribe(server, GP, kinds=["URG", "DOC"], medium="mail")
    assert status == 201 and (made["subscriber"], made["kinds"], made["medium"]) == (f"person:{GP}", ["URG", "DOC"],
                                                                                     "mail")
    status, again = subscribe(server, GP, medium="both")  # one subscription per subscriber and patient
    assert status == 200 and again["id"] == made["id"] and again["kinds"] == ["ADM", "URG", "SOR", "DOC"]
    status, _, listed = request(server, "GET", "/api/subscriptions", token_for(server, GP))
    assert status == 200 and [s["id"] for s in listed["items"]] == [made["id"]]

    # not in the patient's care: refused and audited
    status, refused = subscribe(server, PHARMACIST)
    assert status == 403 and refused["error"] == "forbidden"
    denied = server.rows(select(audit.c.actor, audit.c.target).where(
        audit.c.action == "subscription.create", audit.c.outcome == "denied"))
    assert denied == [{"actor": PHARMACIST, "target": INS}]
    # nor may a member subscribe a box they do not act for, or send nonsense
    assert subscribe(server, GP, box=ED_BOX)[0] == 403
    assert subscribe(server, GP, kinds=["XYZ"])[0] == 400
    assert subscribe(server, GP, medium="sms")[0] == 400
    assert subscribe(server, GP, valid_until="2001-01-01")[0] == 400
    assert server.rows(select(audit.c.detail).where(audit.c.action == "subscription.create",
                                                    audit.c.outcome == "failed"))  # a bad value is audited too
    status, _, _ = request(server, "POST", "/api/subscriptions", token_for(server, GP), body={"patient": "short"})
    assert status == 400

    # someone else's subscription cannot be removed (nor told apart from none)
    status, _, _ = request(server, "DELETE", f"/api/subscriptions/{made['id']}", token_for(server, PHARMACIST))
    assert status == 404
    status, _, _ = request(server, "DELETE", f"/api/subscriptions/{made['id']}", token_for(server, GP))
    assert status == 204
    assert request(server, "GET", "/api/subscriptions", token_for(server, GP))[2]["items"] == []

    # the GP a hospital names for the patient may subscribe, circle or not
    named = sample("adt_a01_admission.hl7", "NAMED-1", **{"10001045367^DUPONT^JEAN": "10002000049^GRONDIN^MARIE"})
    with hospital(server) as client:
        assert msa(client.send(named))[1] == "AA"
    assert subscribe(server, PHARMACIST, kinds=["URG"], medium="alert")[0] == 201
    paths = request(server, "GET", "/api/openapi.json")[2]["paths"]
    assert {"/api/subscriptions", "/api/subscriptions/{id}", "/api/indicators"} <= set(paths)


def test_ed_visit_reaches_each_live_subscriber_once(server):
    assert subscribe(server, NURSE, kinds=["URG"], medium="both")[0] == 201
    assert subscribe(server, URGENTIST, medium="none")[0] == 201  # opts out of the circle's alerts
    assert subscribe(server, URGENTIST, box=ED_BOX, kinds=["URG"], medium="both")[0] == 201
    assert subscribe(server, COORDINATOR, medium="mail")[0] == 201
    assert subscribe(server, GP, kinds=["URG"], medium="mail")[0] == 201  # the GP's own mail is not doubled
    assert subscribe(server, PHARMACIST, medium="mail")[0] == 403
    expired = datetime.now(timezone.utc) - timedelta(minutes=1)
    server.execute(update(hospital_subscriptions).where(
        hospital_subscriptions.c.subscriber == f"person:{COORDINATOR}").values(valid_until=expired))

    with hospital(server) as client:
        assert msa(client.send(sample("adt_a04_ed_visit.hl7")))[1] == "AA"
    rows = wait_for(server, select(hospital_notices.c.recipient, hospital_notices.c.role, hospital_notices.c.status))
    assert sorted((r["recipient"], r["role"], r["status"]) for r in rows) == [
        ("jean.dupont@msante.test", "gp", "delivered"),
        (f"mailbox:{ED_BOX}", "subscriber", "alerted"),
        (f"person:{NURSE}", "subscriber", "alerted"),
        ("sophie.hoarau@msante.test", "subscriber", "delivered"),
        (ED_BOX, "subscriber", "delivered")]
    # alerts: the circle's by default, less the one who opted out and the GP who asked for mail only;
    # the expired subscription changes nothing (the coordinator keeps the default alert, gets no mail)
    raised = server.rows(select(alerts.c.audience).where(alerts.c.kind == "patient"))
    assert sorted(r["audience"] for r in raised) == [f"mailbox:{ED_BOX}", f"person:{NURSE}", f"person:{COORDINATOR}"]

    def inbox(address: str, idnat: str) -> list:
        return inbox_messages(server, address, idnat)
    (mail,) = inbox("sophie.hoarau@msante.test", NURSE)
    assert mail["Subject"].startswith("Passage aux urgences : TECHER Josette") and "Sophie HOARAU" in mail["To"]
    assert "Bonjour Sophie HOARAU" in mail.get_content()
    assert len(inbox(ED_BOX, URGENTIST)) == 1
    assert len(inbox("jean.dupont@msante.test", GP)) == 1
    assert inbox("karim.payet@msante.test", COORDINATOR) == []


def test_cli_add_list_remove(server, capsys):
    assert server.cli("subscription", "add", "--rpps", "10002000023", "--patient", INS, "--kind", "URG",
                      "--kind", "SOR", "--medium", "alert", "--until", "2099-01-01") == 0
    assert "subscribed" in capsys.readouterr().out
    assert server.cli("subscription", "list", "--rpps", "10002000023", "--json") == 0
    (listed,) = json.loads(capsys.readouterr().out)
    assert (listed["kinds"], listed["medium"], listed["valid_until"]) == (["URG", "SOR"], "alert",
                                                                         "2099-01-01T00:00:00+00:00")
    assert server.cli("subscription", "add", "--rpps", "10002000049", "--patient", INS) == 2
    assert "may subscribe" in capsys.readouterr().err
    assert server.cli("subscription", "remove", str(listed["id"]), "--rpps", "10002000023") == 0
    assert server.cli("subscription", "remove", str(listed["id"]), "--rpps", "10002000023") == 2
    capsys.readouterr()
    assert server.cli("subscription", "list", "--rpps", "10002000023", "--json") == 0
    assert json.loads(capsys.readouterr().out) == []


def hl7_time(moment: datetime) -> str:
    """A hospital's time stamp (La Réunion, +04:00), to the second."""
    return (moment.astimezone(timezone(timedelta(hours=4)))).strftime("%Y%m%d%H%M%S+0400")


def test_indicators_count_what_was_and_was_not_notified(server, capsys):
    now = datetime.now(timezone.utc)
    ed_at, admitted_at = now - timedelta(minutes=20), now - timedelta(minutes=40)
    if f"{admitted_at:%Y-%m}" != f"{now:%Y-%m}":
        pytest.skip("a month begins between the samples' times: the figures would split over two months")
    month, old_at = f"{now:%Y-%m}", now - timedelta(days=75)

    def ed(control_id: str, **replace: str) -> bytes:
        return sample("adt_a04_ed_visit.hl7", control_id, **{"20261206081200+0400": hl7_time(ed_at), **replace})
    no_gp = b"\n".join(line for line in ed("ED-NOGP").split(b"\n") if not line.startswith(b"ROL|"))
    server.execute(update(mailboxes).where(mailboxes.c.address == "sophie.hoarau@msante.test")
                   .values(retired_at=now))
    messages = [
        ed("ED-GP"),  # told: Dr Dupont's box
        no_gp,
        ed("ED-NOBOX", **{"10001045367^DUPONT^JEAN": "10002000023^HOARAU^SOPHIE"}),  # her box is retired
        ed("ED-UNKNOWN", **{"10001045367^DUPONT^JEAN": "10000000991^INCONNU^X"}),
        sample("adt_a01_admission.hl7", "ADM-1", **{"20261206085500+0400": hl7_time(admitted_at)}),
        sample("adt_a03_discharge.hl7", "SOR-1", **{"20261208165500+0400": hl7_time(now)}),
        ed("ED-OLD", **{hl7_time(ed_at): hl7_time(old_at)}),  # two or three months ago: a month of its own
    ]
    with hospital(server) as client:
        for message in messages:
            assert msa(client.send(message))[1] == "AA"
    wait_for(server, select(hospital_notices.c.id).where(hospital_notices.c.role.in_(("gp", "gp_structure"))),
             len(messages))

    status, _, found = request(server, "GET", f"/api/indicators?from={month}&structure=970002002",
                               token_for(server, COORDINATOR))
    assert status == 200
    assert found["items"] == [{
        "finess": "970002002", "structure": "CENTRE HOSPITALIER SAINT-PAUL DEMO", "month": month,
        "events": {"ADM": 1, "SOR": 1, "URG": 4}, "ed_visits": 4, "ed_gp_notified": 1, "ed_gp_notified_share": 0.25,
        "ed_not_notified": {"no_gp": 1, "gp_without_box": 1, "unknown_rpps": 1, "delivery_failed": 0, "pending": 0},
        "median_minutes_to_notice": 30,  # admission 40 min and ED visit 20 min before their mails
        # the GP's three mails (ED-GP, ADM-1, SOR-1) in Dr Dupont's box, none opened yet
        "gp_notices": 3, "gp_delivered": 3, "gp_read": 0, "gp_delivered_share": 1.0, "gp_read_share": 0.0}]
    status, _, year = request(server, "GET", "/api/indicators", token_for(server, COORDINATOR))
    assert status == 200 and [(i["month"], i["ed_visits"]) for i in year["items"]] == [
        (f"{old_at:%Y-%m}", 1), (month, 4)]
    assert request(server, "GET", "/api/indicators?structure=970003000", token_for(server, COORDINATOR))[2][
        "items"] == []
    assert request(server, "GET", "/api/indicators?from=2026-13", token_for(server, COORDINATOR))[0] == 400
    assert request(server, "GET", "/api/indicators?from=2020-01&to=2026-01", token_for(server, COORDINATOR))[0] == 400
    assert len(server.rows(select(audit.c.id).where(audit.c.action == "indicators.read",
                                                    audit.c.outcome == "failed"))) == 2

    # neither an administrator nor a coordinator: refused and audited; coordinating a circle is enough
    assert request(server, "GET", "/api/indicators", token_for(server, PHARMACIST))[0] == 403
    assert server.rows(select(audit.c.actor).where(audit.c.action == "indicators.read",
                                                   audit.c.outcome == "denied")) == [{"actor": PHARMACIST}]
    assert server.cli("circle", "create", "--ins", "190017512345655", "--family-name", "ROBERT", "--given-name",
                      "LUC", "--birth-date", "1990-01-17", "--coordinator", "10002000049") == 0
    assert request(server, "GET", "/api/indicators", token_for(server, PHARMACIST))[0] == 200

    capsys.readouterr()
    assert server.cli("indicators", "--from", month, "--structure", "970002002") == 0
    header, row = capsys.readouterr().out.splitlines()
    assert header.split() == ["FINESS", "month", "ADM", "SOR", "URG", "ED", "GP", "told", "share", "no_gp",
                              "gp_without_box", "unknown_rpps", "delivery_failed", "pending", "median", "min",
                              "delivered", "read"]
    assert row.split() == ["970002002", month, "1", "1", "4", "4", "1", "25%", "1", "1", "1", "0", "0", "30",
                           "100%", "0%"]
