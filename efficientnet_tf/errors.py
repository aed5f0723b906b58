"""Errors meant for the person at the keyboard."""


class UserError(ValueError):
    """A mistake in the user's input: flags, config, paths or data.

    The message is one line saying what is wrong and what to do; the command line prints it
    without a traceback and exits non-zero.
    """
