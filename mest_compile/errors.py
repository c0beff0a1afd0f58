"""The one exception type a user is meant to see."""


class MestError(Exception):
    """A user error (bad flag, bad file, impossible shape).

    The CLI prints the message on one line and exits with status 2, without a traceback.
    Library callers can catch it like any other exception.
    """


def first_line(err: BaseException) -> str:
    """The first line of `err`'s message (its type's name when it has none): a one-line cause."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def last_line(err: BaseException) -> str:
    """The last non-blank line of `err`'s message (TVM puts the cause there, after its stack)."""
    return last_output_line(str(err), type(err).__name__)


def last_output_line(text: str, empty: str = "(no output)") -> str:
    """The last non-blank line of a process's output (where a Python traceback names the cause)."""
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1].strip() if lines else empty
