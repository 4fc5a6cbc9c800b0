"""The engine's user-facing errors: every message is a sentence that says what to do."""


class TransferError(Exception):
    """Base of every error a user can cause; the web app and the command line show its text."""
