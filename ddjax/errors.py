"""The one exception type users see: a one-line message saying what is wrong and what to do."""


class DdjaxError(Exception):
    """A user-facing error. The CLI prints its message as a single line and exits with status 2."""
