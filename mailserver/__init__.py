"""The mail layer: SMTP and IMAP front-ends over pure protocol cores.

The cores (`sasl`, `dsn`, …) do no I/O and know nothing of sockets or the database, so
both front-ends share them and tests drive them directly.
"""
