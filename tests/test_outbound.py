"""The outbound queue of one in-process server, its peer unreachable on loopback: what the
sender's delay report says."""
from __future__ import annotations

import email
import email.policy
import json
import time

import pytest

from tests.conftest import free_port
from tests.test_smtp import GP, inbox, login, message

UNREACHABLE = free_port()  # nothing listens here: every attempt is "421 cannot reach"
REMOTE = "dr.house@chu-exemple.test"


@pytest.fixture(autouse=True)
def unreachable_peer(monkeypatch):
    """Set before `server` starts (autouse fixtures come first)."""
    monkeypatch.setenv("MSANTE_RELAY__ROUTES", json.dumps({"chu-exemple.test": f"127.0.0.1:{UNREACHABLE}"}))
    monkeypatch.setenv("MSANTE_RELAY__RETRY_BASE", "1")
    monkeypatch.setenv("MSANTE_RELAY__DELAY_WARNING", "1")


def test_delay_report_names_the_diagnostic_type_once(server):
    client = login(server)
    client.sendmail(GP, [REMOTE], message(GP, [REMOTE], "Injoignable"), rcpt_options=["NOTIFY=DELAY"])
    client.quit()
    deadline = time.monotonic() + 30
    while not (reports := [m for m in inbox(server, GP) if b"multipart/report" in m]):
        assert time.monotonic() < deadline, "no delay report"
        time.sleep(0.2)
    report = email.message_from_bytes(reports[0], policy=email.policy.default)
    status = next(p for p in report.walk() if p.get_content_type() == "message/delivery-status")
    recipient = status.get_payload()[1]
    assert recipient["Action"] == "delayed"
    assert recipient["Diagnostic-Code"].startswith("smtp; 421 cannot reach 127.0.0.1:")  # RFC 3464 §2.3.6
