"""Errors meant for the person at the keyboard, and the one helper that shortens any error to a line."""


# Exit status of a training run stopped by SIGTERM / SIGINT (or a maintenance event) after saving a
# checkpoint of its last step (EX_TEMPFAIL): running the same command again resumes it.
EXIT_PREEMPTED = 75


class UserError(ValueError):
    """A mistake in the user's input: flags, config, paths or data.

    The message is one line saying what is wrong and what to do; the command line prints it
    without a traceback and exits non-zero.
    """


def first_line(error: BaseException | str) -> str:
    """The first non-empty line of an error's message (its type name when the message is empty)."""
    text = error if isinstance(error, str) else (getattr(error, "message", None) or str(error))
    for line in str(text).strip().splitlines():
        if line.strip():
            return line.strip()
    return type(error).__name__ if not isinstance(error, str) else "unknown error"
