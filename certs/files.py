"""Writing credential files so that a private key is never readable by anyone else, not even briefly.

Creating a file and then chmod-ing it leaves a window where the key sits on disk with the
umask's permissions; a crash in that window leaves it there for good. Here the file is born
under a temporary name with its final mode (`os.open` with O_EXCL, so nothing pre-planted
can be followed) and renamed over the target, which also means a reader re-loading keys
(the token verifier watching `jwks.json`) sees the old file or the new one, never half of one.
"""
from __future__ import annotations

import os
import secrets
from pathlib import Path

PRIVATE_MODE = 0o600  # private keys: the owner only
PUBLIC_MODE = 0o644  # certificates and public key sets: anyone may read them


def write_private(path: Path, data: bytes) -> None:
    """Atomically write secret material (a private key) readable by the owner only."""
    _write(path, data, PRIVATE_MODE)


def write_public(path: Path, data: bytes) -> None:
    """Atomically write public material (a certificate, a JWKS)."""
    _write(path, data, PUBLIC_MODE)


def _write(path: Path, data: bytes, mode: int) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())  # the rename must not land before the bytes do
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
