"""Every bound of the instant layer in one place, each with the reason for its value.

A websocket is long-lived and mostly idle, so what it may cost is fixed up front: how much a
client may send (frame size, text length, rate), how many sockets a person may hold, and how
much the server buffers for a reader that does not keep up. `DEFAULT` is what `msante serve`
uses; tests replace it to reach a bound in milliseconds rather than minutes.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    # Largest client frame: a post of max_text_chars 4-byte characters plus JSON is ~17 KB;
    # 64 KiB leaves room and stays far below websockets' 1 MiB default (RFC 6455 sets none).
    max_frame_bytes: int = 64 * 1024
    # A chat message, not a letter: documents travel by secure mail. Slack caps at 4,000 too.
    max_text_chars: int = 4000
    # Documents one message carries: a letter with its annexes; more is a folder, for secure mail.
    max_attachments_per_message: int = 10
    # Token bucket over every client frame: a person types a few messages a minute; 10/s with a
    # burst of 30 lets a reconnecting client subscribe to many circles at once.
    frames_per_second: float = 10.0
    frame_burst: int = 30
    # Frames refused in a row (rate, malformed) before the connection is closed (1008): a client
    # that ignores `rate_limited` errors would otherwise keep the server answering it.
    refusals_before_close: int = 50
    # Phone, desktop and a few browser tabs; more is a leak or an abuse.
    connections_per_person: int = 8
    # What may wait for a slow reader before it is told to resynchronise (close 4008): a few
    # seconds of a busy circle. 2,000 connections x 1 MiB bounds the worst case at 2 GB.
    send_queue_frames: int = 1024
    send_queue_bytes: int = 1024 * 1024
    # Keepalive as websockets' own defaults: a ping every 20 s, 20 s to answer it; it also
    # keeps NAT and proxy idle timers (often 60 s) from cutting a quiet connection.
    ping_interval: float = 20.0
    ping_timeout: float = 20.0
    # The first frame must authenticate within this (or the subprotocol header did).
    auth_timeout: float = 10.0
    # How long a closing handshake may take before the socket is cut.
    close_timeout: float = 5.0
    # Circles one connection may follow; a coordinator follows a few dozen patients.
    max_subscriptions: int = 200
    history_page: int = 50
    max_history_page: int = 200
    # Searching a circle's history: words, not documents; each search scans the circle's
    # messages, so the words are bounded and one page of results comes back at a time.
    max_search_chars: int = 100
    search_page: int = 20
    # Typing notices from one connection for one circle: at most one every 2 s.
    typing_interval: float = 2.0
    # Membership changes take effect at once (their events reach the connections, from the CLI
    # through the store); membership is also re-read this often for each connection, so a
    # change whose event was lost (a command killed between its commit and its announcement)
    # still cuts a removed member off within a minute.
    membership_recheck: float = 60.0


DEFAULT = Limits()
