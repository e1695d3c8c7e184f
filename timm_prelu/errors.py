"""Errors a user can act on: the CLI prints their message as one line instead of a traceback."""

__all__ = ['UserError']


class UserError(Exception):
    """A problem with the user's input or environment; the message names the problem and the fix."""
