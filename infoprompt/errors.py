"""The one base class for bad input: the CLIs print its message as one line and exit 2."""

from __future__ import annotations

__all__ = ["InfoPromptError"]


class InfoPromptError(ValueError):
    """Bad input a user can fix; the message says what is wrong and what to do instead."""
