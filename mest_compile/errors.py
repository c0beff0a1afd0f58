"""The one exception type a user is meant to see."""


class MestError(Exception):
    """A user error (bad flag, bad file, impossible shape).

    The CLI prints the message on one line and exits with status 2, without a traceback.
    Library callers can catch it like any other exception.
    """
