"""`msante init --demo` and `msante serve` as a user runs them: a child process, a banner,
a request, then SIGTERM and a clean exit with the stop in the audit trail."""
from __future__ import annotations

import http.client
import json
import os
import signal
import ssl
import subprocess
import sys
import time

from tests.conftest import free_port


def test_init_serve_sigterm(tmp_path):
    port = free_port()
    env = {**os.environ, "MSANTE_LISTEN__HTTPS": f"127.0.0.1:{port}"}
    for name in ("smtp", "submission", "submissions", "imap", "imaps", "hl7"):
        env[f"MSANTE_LISTEN__{name.upper()}"] = f"127.0.0.1:{free_port()}"
    data = str(tmp_path / "var")
    msante = [sys.executable, "-m", "msante", "--data-dir", data]
    init = subprocess.run([*msante, "init", "--demo"], env=env, capture_output=True, text=True, timeout=120)
    assert init.returncode == 0, init.stderr
    assert (tmp_path / "var" / "tls" / "server.key").stat().st_mode & 0o077 == 0
    again = subprocess.run([*msante, "init", "--demo"], env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr  # running init twice is harmless

    child = subprocess.Popen([*msante, "serve"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        banner = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = child.stdout.readline()
            assert line, "serve exited: " + "".join(banner)
            banner.append(line)
            if line.startswith("Stop with Ctrl-C"):
                break
        text = "".join(banner)
        assert f"https        127.0.0.1:{port}" in text
        assert "msante token issue --rpps" in text
        context = ssl.create_default_context(cafile=str(tmp_path / "var" / "pki" / "ca.crt"))
        conn = http.client.HTTPSConnection("localhost", port, context=context, timeout=10)
        conn.request("GET", "/healthz")
        assert conn.getresponse().status == 200
        conn.close()
        child.send_signal(signal.SIGTERM)
        assert child.wait(30) == 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    tail = subprocess.run([*msante, "audit", "tail", "--json", "-n", "5"], env=env, capture_output=True, text=True)
    actions = [json.loads(line)["action"] for line in tail.stdout.splitlines()]
    assert actions[-1] == "server.stop" and "server.start" in actions
