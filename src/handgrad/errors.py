"""User-facing errors: the CLI prints their message as one line and exits with status 2."""


class HandgradError(Exception):
    """Bad input from the user (file, shape, option). The message names the thing, the problem
    and the fix."""
