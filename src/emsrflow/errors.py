"""Exceptions raised for bad input data and configuration."""

__all__ = ["InputError", "RegistrationError"]


class InputError(ValueError):
    """Input data or a sample-sheet row that cannot be processed.

    The message always names the file (or sheet row and column) and the problem.
    """


class RegistrationError(InputError):
    """LR and HR acquisitions could not be registered (for example no overlap)."""
