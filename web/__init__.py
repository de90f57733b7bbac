"""The HTTPS front-end: HTTP/1.1 on h11, routing, metrics and bearer-token authentication.

A package of its own (rather than part of `msante/`) because the directory API, the
well-known OIDC documents and the instant layer's web client and websocket all plug into
it, while `msante/` stays the composition root that only wires things together.
"""
