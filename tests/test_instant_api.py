"""Care circles over HTTPS (`/api/circles`): a running server, http.client as the peer."""
from __future__ import annotations

import http.client
import json

import pytest
from sqlalchemy import select

from store.schema import audit
from tests.test_api import token_for

GP, URGENTIST, NURSE, COORDINATOR, PHARMACIST = (
    "810001045367", "810002000015", "810002000023", "810002000031", "810002000049")
PATIENT = {"ins": "185057511204538", "ins_oid": "1.2.250.1.213.1.4.8", "family_name": "Martin",
           "given_name": "Paul", "birth_date": "1985-05-01"}


def api(server, method: str, path: str, idnat: str, body: object | None = None) -> tuple[int, object]:
    """(status, JSON body or None) of one call as the professional `idnat`."""
    port = int(server.listeners["https"].rsplit(":", 1)[1])
    conn = http.client.HTTPSConnection("localhost", port, context=server.client_tls(), timeout=10)
    headers = {"Authorization": f"Bearer {token_for(server, idnat)}"}
    if body is not None:
        headers["Content-Type"] = "application/json"
    conn.request(method, path, body=json.dumps(body).encode() if body is not None else None, headers=headers)
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return response.status, json.loads(data) if data else None


def test_create_list_and_read_circles(server):
    status, circle = api(server, "POST", "/api/circles", GP,
                         {"patient": PATIENT, "members": [{"id": NURSE}, {"id": URGENTIST[1:]}]})
    assert status == 201
    assert circle["coordinator"] == GP and circle["patient"]["family_name"] == "MARTIN"
    assert circle["patient"]["ins_register"] == "INS-NIR"
    assert {(m["id"], m["role"]) for m in circle["members"]} == {(GP, "coordinator"), (NURSE, "member"),
                                                                 (URGENTIST, "member")}
    status, listed = api(server, "GET", "/api/circles", NURSE)
    assert status == 200 and [c["id"] for c in listed["items"]] == [circle["id"], 1]  # by patient name
    assert listed["items"][0]["role"] == "member" and listed["items"][0]["unread"] == 0
    status, detail = api(server, "GET", f"/api/circles/{circle['id']}", URGENTIST)
    assert status == 200 and len(detail["members"]) == 3 and detail["read"] == 0
    status, error = api(server, "POST", "/api/circles", COORDINATOR, {"patient": PATIENT})
    assert (status, error["error"]) == (409, "conflict")  # one circle per patient


@pytest.mark.parametrize("patient, field", [
    ({**PATIENT, "ins": "185057511204539"}, "ins"),  # wrong key
    ({**PATIENT, "ins": "18505751120453"}, "ins"),
    ({**PATIENT, "ins_oid": "1.2.3"}, "ins_oid"),
    ({**PATIENT, "birth_date": "2999-01-01"}, "birth_date"),
    ({**PATIENT, "birth_date": "01/05/1985"}, "birth_date"),
    ({**PATIENT, "family_name": "Mart1n"}, "family_name"),
    ({**PATIENT, "given_name": "x" * 101}, "given_name"),
])
def test_patient_identity_is_checked(server, patient, field):
    status, error = api(server, "POST", "/api/circles", COORDINATOR, {"patient": patient})
    assert (status, error["error"]) == (400, "invalid_patient") and error["message"].startswith(f"{field}:")


def test_only_the_coordinator_changes_members(server):
    status, error = api(server, "POST", "/api/circles/1/members", GP, {"id": PHARMACIST})
    assert (status, error["error"]) == (403, "forbidden")
    status, error = api(server, "DELETE", f"/api/circles/1/members/{NURSE}", GP)
    assert (status, error["error"]) == (403, "forbidden")
    status, error = api(server, "POST", "/api/circles/1/members", PHARMACIST, {"id": PHARMACIST})
    assert (status, error["error"]) == (403, "forbidden")  # not even a member
    denied = server.rows(select(audit.c.actor, audit.c.action, audit.c.detail).where(audit.c.outcome == "denied"))
    assert [(r["actor"], r["action"]) for r in denied] == [
        (GP, "circle.member.add"), (GP, "circle.member.remove"), (PHARMACIST, "circle.member.add")]
    assert "not the coordinator" in denied[0]["detail"]

    status, added = api(server, "POST", "/api/circles/1/members", COORDINATOR, {"id": PHARMACIST})
    assert status == 201 and added["added"] is True
    status, again = api(server, "POST", "/api/circles/1/members", COORDINATOR, {"id": PHARMACIST})
    assert status == 200 and again["added"] is False
    assert api(server, "DELETE", f"/api/circles/1/members/{PHARMACIST}", COORDINATOR)[0] == 204
    status, error = api(server, "DELETE", f"/api/circles/1/members/{PHARMACIST}", COORDINATOR)
    assert status == 404
    status, error = api(server, "DELETE", f"/api/circles/1/members/{COORDINATOR}", COORDINATOR)
    assert (status, error["error"]) == (400, "coordinator")
    actions = [r["action"] for r in server.rows(select(audit.c.action).where(
        audit.c.actor == COORDINATOR, audit.c.action.startswith("circle.member")))]
    assert actions == ["circle.member.add", "circle.member.add", "circle.member.remove", "circle.member.remove"]


def test_a_member_leaves(server):
    """Anyone but the coordinator may remove themselves; the change is audited and announced as any removal."""
    assert api(server, "DELETE", f"/api/circles/1/members/{NURSE}", NURSE)[0] == 204
    status, error = api(server, "GET", "/api/circles/1", NURSE)
    assert (status, error["error"]) == (403, "forbidden")
    status, error = api(server, "DELETE", f"/api/circles/1/members/{NURSE}", NURSE)  # no longer a member
    assert (status, error["error"]) == (403, "forbidden")
    rows = server.rows(select(audit.c.actor, audit.c.outcome).where(audit.c.action == "circle.member.remove"))
    assert [(r["actor"], r["outcome"]) for r in rows] == [(NURSE, "ok"), (NURSE, "denied")]
    status, error = api(server, "DELETE", f"/api/circles/1/members/{COORDINATOR}", COORDINATOR)
    assert (status, error["error"]) == (400, "coordinator")  # a circle keeps its coordinator


def test_delegates_join_on_behalf_of_their_organisational_box(server):
    status, member = api(server, "POST", "/api/circles/1/members", COORDINATOR,
                         {"id": PHARMACIST, "on_behalf_of": "secretariat.ehpad-filaos@msante.test"})
    assert status == 201 and member["on_behalf_of"] == "secretariat.ehpad-filaos@msante.test"
    status, error = api(server, "POST", "/api/circles/1/members", COORDINATOR,
                        {"id": NURSE, "on_behalf_of": "urgences.ch-saint-paul@msante.test"})
    assert (status, error["error"]) == (400, "not_a_delegate")
    assert api(server, "GET", "/api/circles/1", PHARMACIST)[0] == 200
    assert server.cli("mailbox", "revoke", "secretariat.ehpad-filaos@msante.test", "--rpps", PHARMACIST[1:]) == 0
    status, error = api(server, "GET", "/api/circles/1", PHARMACIST)  # no delegation, no membership
    assert (status, error["error"]) == (403, "forbidden")


def test_non_members_and_bad_requests(server):
    status, error = api(server, "GET", "/api/circles/1", PHARMACIST)
    assert (status, error["error"]) == (403, "forbidden")
    assert api(server, "GET", "/api/circles/424242", PHARMACIST)[0] == 403  # existence is not revealed
    assert api(server, "GET", "/api/circles/abc", GP)[0] == 404
    for body, code in [([1], "invalid"), ({"patient": PATIENT, "members": "all"}, "invalid"),
                       ({"patient": PATIENT, "members": [{"id": "x"}]}, "invalid"),
                       ({"patient": PATIENT, "members": [{"id": "899999999999"}]}, "unknown_professional")]:
        status, error = api(server, "POST", "/api/circles", COORDINATOR, body)
        assert (status, error["error"]) == (400, code), body
    port = int(server.listeners["https"].rsplit(":", 1)[1])
    conn = http.client.HTTPSConnection("localhost", port, context=server.client_tls(), timeout=10)
    conn.request("GET", "/api/circles")
    assert conn.getresponse().status == 401
