"""IMAP4rev1/IMAP4rev2 for mail clients.

Sans-IO parts (no sockets, no database): `syntax` (the token types), `parser` (bytes in,
commands out), `encode` (values to response bytes), `seqset`, `message` (MIME: ENVELOPE,
BODYSTRUCTURE, sections), `fetchitems`, `search`. Then `folders` (the store behind a
session), `session` (the command state machine) and `server` (sockets, TLS, IDLE).
"""
