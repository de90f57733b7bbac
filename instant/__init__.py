"""Care circles (cercles de soins): their chat, read markers, presence and the server's alerts.

Three layers, as for mail: the protocol core without I/O (`frames`, `session`, `limits`), the
handlers that check, audit and store (`circles`, `messages`, `alerts`, `mailalerts`, over
`storage` and `alertstore`), and thin front-ends (`connection` for `/ws`, `api` for
`/api/circles`, `webclient` for `/`), with `hub` fanning bus events out to live connections.
`service.Instant` assembles them for the composition root. The protocol: docs/instant-protocol.md.
"""
