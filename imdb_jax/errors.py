"""Errors that carry a message meant for the user, not a traceback."""


class ImdbJaxError(Exception):
    """A problem the user can fix (bad option, missing data, bad model folder).

    The command-line entry point prints its message and exits with status 2.
    """


class DataNotFoundError(ImdbJaxError, FileNotFoundError):
    """The IMDb data set is not where we looked; the message says how to get it."""
