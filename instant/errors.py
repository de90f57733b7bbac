"""What the instant handlers refuse with. Each front-end turns these into its own shape: an
HTTP status and JSON error, an `error` frame on the websocket, a one-line CLI message."""
from __future__ import annotations


class InstantError(Exception):
    status = 400
    code = "bad_request"

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code:
            self.code = code


class Invalid(InstantError):
    status, code = 400, "invalid"


class Forbidden(InstantError):
    """Not a member, not the coordinator, not a reader of the box. Always audited as denied."""

    status, code = 403, "forbidden"


class NotFound(InstantError):
    status, code = 404, "not_found"


class Conflict(InstantError):
    status, code = 409, "conflict"
