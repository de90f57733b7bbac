"""Subscriptions to a patient's hospital events, end to end: the HTTPS API and the CLI, who may
subscribe, and an ED visit sent over MLLP+TLS reaching each live subscriber exactly once."""
from __future__ import annotations

import email
import email.policy
import json
from datetime import datetime, timedelta, timezone

from sqlalchemy import select, update

from store.schema import alerts, audit, hospital_notices, hospital_subscriptions
from tests.test_api import request, token_for
from tests.test_hospital_feed import hospital, msa, sample, wait_for
from tests.test_imap import imaplib_client

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


def test_ed_visit_reaches_each_live_subscriber_once(server):
    assert subscribe(server, NURSE, kinds=["URG"], medium="both")[0] == 201
    assert subscribe(server, URGENTIST, medium="none")[0] == 201  # opts out of the circle's alerts
    assert subscribe(server, URGENTIST, box=ED_BOX, kinds=["URG"], medium="mail")[0] == 201
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
        (f"person:{NURSE}", "subscriber", "alerted"),
        ("sophie.hoarau@msante.test", "subscriber", "delivered"),
        (ED_BOX, "subscriber", "delivered")]
    # alerts: the circle's by default, less the one who opted out and the GP who asked for mail only;
    # the expired subscription changes nothing (the coordinator keeps the default alert, gets no mail)
    raised = server.rows(select(alerts.c.audience).where(alerts.c.kind == "patient"))
    assert sorted(r["audience"] for r in raised) == [f"person:{NURSE}", f"person:{COORDINATOR}"]

    def inbox(address: str, idnat: str) -> list:
        imap = imaplib_client(server, address, idnat)
        imap.select("INBOX")
        _, ids = imap.search(None, "ALL")
        found = []
        for number in ids[0].split():
            _, data = imap.fetch(number, "(RFC822)")
            found.append(email.message_from_bytes(data[0][1], policy=email.policy.default))
        imap.logout()
        return found
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
