"""Address lists of header fields (RFC 5322 §3.4), as IMAP ENVELOPE shows them and as the
submission policy checks them: one reader for both, so that what was checked is what is shown.

The tokenizer always advances by at least one character per step: a stray `)` once made it
loop forever (`Cc: a@msante.test)` froze the IMAP server on every FETCH ENVELOPE). Work is
linear in the value, which headers.MAX_HEADER_BYTES bounds.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

_SPECIALS = "<>@,;:."


@dataclass
class _Tok:
    kind: str  # "a" atom, "q" quoted string (unquoted), "d" domain literal, "c" comment, "s" special
    text: str
    space: bool  # whitespace or a comment before it


_ATOM = re.compile(r'[^ \t\r\n()"\[<>@,;:.]+')


def _tokens(s: str) -> list[_Tok]:
    """Every branch moves i forward by at least one character."""
    out: list[_Tok] = []
    i, n, space = 0, len(s), False
    while i < n:
        c = s[i]
        if c in " \t\r\n)":  # a `)` that closes nothing is skipped like white space
            space, i = True, i + 1
        elif c in "(\"[":
            close = {"(": ")", '"': '"', "[": "]"}[c]
            depth, j, buf = 1, i + 1, []
            while j < n and depth:
                if s[j] == "\\" and c != "[" and j + 1 < n:
                    buf.append(s[j + 1])
                    j += 2
                    continue
                if s[j] == close:
                    depth -= 1
                elif c == "(" and s[j] == "(":
                    depth += 1
                if depth:
                    buf.append(s[j])
                j += 1
            text = "".join(buf)
            kind = {"(": "c", '"': "q", "[": "d"}[c]
            out.append(_Tok(kind, f"[{text}]" if kind == "d" else text, space))
            space, i = kind == "c", j
        elif c in _SPECIALS:
            out.append(_Tok("s", c, space))
            space, i = False, i + 1
        else:  # c starts an atom, so the match is at least one character long
            j = _ATOM.match(s, i).end()
            out.append(_Tok("a", s[i:j], space))
            space, i = False, j
    return out


def _phrase(toks: list[_Tok]) -> str | None:
    words: list[str] = []
    for t in toks:
        if t.kind != "c":
            words.append((" " if t.space and words else "") + t.text)
    return "".join(words) or None


def _word(t: _Tok) -> str:
    if t.kind == "q":
        return '"' + t.text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return t.text


Address = tuple[str | None, str | None, str | None, str | None]  # name, adl, mailbox, host


def _addr_spec(toks: list[_Tok]) -> tuple[str, str] | None:
    toks = [t for t in toks if t.kind != "c"]
    if not toks:
        return None
    at = max((i for i, t in enumerate(toks) if t.kind == "s" and t.text == "@"), default=-1)
    if at < 0:  # no domain: Dovecot's placeholder, a NIL host would mean a group
        return "".join(_word(t) for t in toks), "MISSING_DOMAIN"
    local = "".join(_word(t) for t in toks[:at]) or "MISSING_MAILBOX"
    return local, "".join(t.text for t in toks[at + 1:]) or "MISSING_DOMAIN"


def parse_addresses(value: str) -> list[Address]:
    """An address-list as ENVELOPE wants it (RFC 3501 §7.4.2): groups become a start marker
    (NIL NIL name NIL) and an end marker (NIL NIL NIL NIL); the display name is the phrase with
    quotes removed and encoded words kept, else a trailing comment; `<@a,@b:x@y>` keeps its route."""
    toks = _tokens(value)
    out: list[Address] = []
    in_group, i = False, 0

    def stop(k: int, chars: str) -> int:
        while k < len(toks) and not (toks[k].kind == "s" and toks[k].text in chars):
            k += 1
        return k

    while i < len(toks):
        j = stop(i, "<:,;")
        run, end = toks[i:j], toks[j].text if j < len(toks) else ""
        if end == ":" and not in_group:
            out.append((None, None, _phrase(run) or "", None))
            in_group, i = True, j + 1
            continue
        if end == "<":
            k = stop(j + 1, ">")
            inner = [t for t in toks[j + 1:k] if t.kind != "c"]
            colon = next((x for x, t in enumerate(inner) if t.kind == "s" and t.text == ":"), -1)
            adl = "".join(t.text for t in inner[:colon]) or None if colon >= 0 else None
            spec = _addr_spec(inner[colon + 1:])
            if spec:
                out.append((_phrase(run), adl, spec[0], spec[1]))
            j = stop(k, ",;")
            end = toks[j].text if j < len(toks) else ""
        else:
            spec = _addr_spec(run)
            if spec:
                comments = [t.text for t in run if t.kind == "c" and t.text.strip()]
                out.append((comments[-1].strip() if comments else None, None, spec[0], spec[1]))
        if end == ";" and in_group:
            out.append((None, None, None, None))
            in_group = False
        i = j + 1
    if in_group:
        out.append((None, None, None, None))
    return out
