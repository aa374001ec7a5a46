"""The base of every error caused by the user's input (a file, a key, a value) rather than a bug.

The `var` command prints these as one line naming the problem and exits with status 2; anything
else is a bug and keeps its traceback. Every package raises subclasses of `UserError`.
"""

__all__ = ["UserError"]


class UserError(Exception):
    """Bad input: the message says what is wrong and where (the file, the key, the value)."""
