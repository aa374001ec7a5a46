"""The base of every error caused by the user's input (a file, a key, a value) rather than a bug.

The `var` command prints these as one line naming the problem and exits with status 2; anything
else is a bug and keeps its traceback. Every package raises subclasses of `UserError`.

`TrainingError` lives here rather than beside one training module because the run's folder checks, its
resume, its divergence checks and its driver all raise it.
"""

__all__ = ["TrainingError", "UserError"]


class UserError(Exception):
    """Bad input: the message says what is wrong and where (the file, the key, the value)."""


class TrainingError(UserError, RuntimeError):
    """A run that cannot go on for a reason the user can fix: memory, labels, a diverged loss, a resume path."""
