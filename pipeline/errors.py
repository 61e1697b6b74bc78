"""Expected failures that the command line reports as one line, without a traceback."""


class UserError(Exception):
    """Bad input, a missing file or a wrong setting: something the user can fix."""
