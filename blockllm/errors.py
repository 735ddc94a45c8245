"""Errors a user can cause. The CLI prints their message (which names the fix) without a traceback;
the server maps them to 4xx. Anything else is a bug and keeps its traceback."""


class UserError(Exception):
    """Bad input: a missing file, an unknown model, a prompt that does not fit, ..."""
