"""The frame schema without a socket: what parses, what is refused and with which code."""
from __future__ import annotations

import json

import pytest

from instant import frames
from instant.frames import (AlertAck, Auth, FrameError, History, Post, Presence, Read, Search, Subscribe, Typing,
                            Unsubscribe)
from instant.limits import DEFAULT


def parse(frame: object):  # noqa: ANN201
    return frames.parse(json.dumps(frame), DEFAULT)


@pytest.mark.parametrize("frame, parsed", [
    ({"type": "auth", "v": 1, "token": " abc.def.ghi "}, Auth("abc.def.ghi")),
    ({"type": "subscribe", "circle": 3, "id": "r1"}, Subscribe(3, None, "r1")),
    ({"type": "subscribe", "v": 1, "circle": 3, "after": 0}, Subscribe(3, 0)),
    ({"type": "unsubscribe", "circle": 3}, Unsubscribe(3)),
    ({"type": "post", "circle": 3, "client_id": "6f1c-44:a.b_c", "text": "Tension 14/9\n"},
     Post(3, "6f1c-44:a.b_c", "Tension 14/9\n")),
    ({"type": "post", "circle": 3, "client_id": "c", "text": "Oui", "reply_to": 7, "id": "p"},
     Post(3, "c", "Oui", 7, "p")),
    ({"type": "history", "circle": 3}, History(3, None, None, DEFAULT.history_page)),
    ({"type": "history", "circle": 3, "before": 10, "limit": 5}, History(3, 10, None, 5)),
    ({"type": "history", "circle": 3, "after": 0, "limit": 200}, History(3, None, 0, 200)),
    ({"type": "read", "circle": 3, "seq": 9}, Read(3, 9)),
    ({"type": "search", "circle": 3, "q": " pansement "}, Search(3, "pansement", None)),
    ({"type": "search", "circle": 3, "q": "ok", "before": 40, "id": "s"}, Search(3, "ok", 40, "s")),
    ({"type": "typing", "circle": 3}, Typing(3)),
    ({"type": "presence", "state": "away"}, Presence("away")),
    ({"type": "alert.ack", "alert": 12, "id": "a"}, AlertAck(12, "a")),
    ({"type": "read", "circle": 3, "seq": 9, "later_field": [1]}, Read(3, 9)),  # unknown fields: ignored
])
def test_valid_frames(frame, parsed):
    assert parse(frame) == parsed


@pytest.mark.parametrize("text, code", [
    ("{not json", "bad_frame"),
    ("[1, 2]", "bad_frame"),
    ('"auth"', "bad_frame"),
    ("[" * 100_000 + "]" * 100_000, "bad_frame"),  # nesting deep enough to exhaust the parser's stack
])
def test_not_a_frame(text, code):
    with pytest.raises(FrameError) as err:
        frames.parse(text, DEFAULT)
    assert err.value.code == code


@pytest.mark.parametrize("frame, code", [
    ({"type": "auth", "token": "t"}, "unsupported_version"),  # auth settles the version: required
    ({"type": "auth", "v": 2, "token": "t"}, "unsupported_version"),
    ({"type": "post", "v": True, "circle": 1, "client_id": "c", "text": "x"}, "unsupported_version"),
    ({"type": "shout"}, "unknown_type"),
    ({"circle": 1}, "unknown_type"),
    ({"type": "subscribe", "circle": 0}, "bad_frame"),
    ({"type": "subscribe", "circle": "1"}, "bad_frame"),
    ({"type": "subscribe", "circle": True}, "bad_frame"),
    ({"type": "subscribe", "circle": 2**53}, "bad_frame"),
    ({"type": "subscribe", "circle": 1, "after": -1}, "bad_frame"),
    ({"type": "post", "circle": 1, "client_id": "", "text": "x"}, "bad_frame"),
    ({"type": "post", "circle": 1, "client_id": "c", "text": "x", "reply_to": 0}, "bad_frame"),
    ({"type": "search", "circle": 1, "q": "a"}, "bad_frame"),
    ({"type": "search", "circle": 1, "q": "a" * 101}, "too_long"),
    ({"type": "search", "circle": 1, "q": "ok", "before": 0}, "bad_frame"),
    ({"type": "post", "circle": 1, "client_id": "c", "text": "x", "reply_to": "3"}, "bad_frame"),
    ({"type": "post", "circle": 1, "client_id": "a b", "text": "x"}, "bad_frame"),
    ({"type": "post", "circle": 1, "client_id": "c" * 65, "text": "x"}, "bad_frame"),
    ({"type": "post", "circle": 1, "client_id": "c", "text": "   "}, "bad_frame"),
    ({"type": "post", "circle": 1, "client_id": "c", "text": "x" * 4001}, "too_long"),
    ({"type": "post", "circle": 1, "client_id": "c", "text": "nul\x00byte"}, "bad_frame"),
    ({"type": "post", "circle": 1, "client_id": "c", "text": "bell\x07"}, "bad_frame"),
    ({"type": "post", "circle": 1, "client_id": "c", "text": "\ud800"}, "bad_frame"),  # lone surrogate
    ({"type": "post", "circle": 1, "client_id": "c", "text": "dose 1\u202e0 mg"}, "bad_frame"),  # RTL override
    ({"type": "post", "circle": 1, "client_id": "c", "text": "\u2067isolate\u2069"}, "bad_frame"),
    ({"type": "history", "circle": 1, "before": 5, "after": 1}, "bad_frame"),
    ({"type": "history", "circle": 1, "limit": 201}, "bad_frame"),
    ({"type": "history", "circle": 1, "before": 0}, "bad_frame"),
    ({"type": "presence", "state": "busy"}, "bad_frame"),
    ({"type": "alert.ack", "alert": 0}, "bad_frame"),
    ({"type": "read", "circle": 1, "seq": 1, "id": ""}, "bad_frame"),
    ({"type": "read", "circle": 1, "seq": 1, "id": "i" * 65}, "bad_frame"),
    ({"type": "read", "circle": 1, "seq": 1, "id": 7}, "bad_frame"),
])
def test_refused_frames(frame, code):
    with pytest.raises(FrameError) as err:
        parse(frame)
    assert err.value.code == code


def test_errors_carry_the_request_id():
    with pytest.raises(FrameError) as err:
        parse({"type": "post", "id": "r7", "circle": 1, "client_id": "c", "text": ""})
    assert (err.value.request_id, err.value.message) == ("r7", "text must be a non-empty string")
    with pytest.raises(FrameError) as err:
        parse({"type": "nope", "id": "r8"})
    assert err.value.request_id == "r8"


def test_server_frames():
    assert frames.encode(frames.error("forbidden", "non", "r1")) == \
        '{"v":1,"type":"error","code":"forbidden","message":"non","id":"r1"}'
    assert json.loads(frames.encode(frames.reply(None, {"type": "ack", "seq": 3}))) == {"v": 1, "type": "ack", "seq": 3}
    text = frames.encode(frames.message(1, 2, {"id": "8", "name": "Dr Ève"}, "c", "été", "2026-01-01T00:00:00+00:00",
                                         None))
    assert "été" in text and "Ève" in text  # UTF-8 as is: a third smaller than \\u escapes for French text


def test_post_attachments_are_a_short_list_of_distinct_ids():
    frame = parse({"type": "post", "circle": 1, "client_id": "c", "text": "t", "attachments": [3, 9]})
    assert frame.attachments == (3, 9)
    assert parse({"type": "post", "circle": 1, "client_id": "c", "text": "t"}).attachments == ()
    too_many = list(range(1, DEFAULT.max_attachments_per_message + 2))
    for bad in ("3", [0], [True], [1.5], [4, 4], too_many, {"id": 3}):
        with pytest.raises(FrameError) as err:
            parse({"type": "post", "circle": 1, "client_id": "c", "text": "t", "attachments": bad})
        assert err.value.code == "bad_frame", bad
