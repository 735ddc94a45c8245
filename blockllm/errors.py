"""Errors a user can cause. The CLI prints their message (which names the fix) without a traceback;
the server maps them to 4xx. Anything else is a bug and keeps its traceback."""


class UserError(Exception):
    """Bad input: a missing file, an unknown model, a prompt that does not fit, ..."""


class Busy(UserError):
    """The server is at capacity: retry after `retry_after_s` (HTTP 429 with Retry-After)."""

    def __init__(self, message: str, retry_after_s: float = 1.0):
        super().__init__(message)
        self.retry_after_s = retry_after_s
