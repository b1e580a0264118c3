"""Refusing, before any work, a folder that could only fail when it is first written: an
output, the Arrow store, a search's local storage path. Light: no torch, no pyarrow."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from infoprompt.errors import InfoPromptError

__all__ = ["check_writable_folder"]


def check_writable_folder(path: str | os.PathLike[str], what: str,
                          fix: str = "give a folder you can write") -> None:
    """`path` must be a folder this process can write in, or one it can create: its nearest
    existing ancestor is a folder that takes a new file. Leaves nothing behind. `what` names
    the setting in the message (e.g. "--out"), `fix` says what to do instead."""
    path = Path(path).expanduser().absolute()
    existing = path
    while not os.path.lexists(existing):  # a folder still to be created: its parents
        existing = existing.parent
    if not existing.is_dir():
        where = ("is not a folder" if existing == path
                 else f"is under {existing}, which is not a folder")
        raise InfoPromptError(f"{what} {path} {where}; {fix}")
    try:  # a real file: os.access says yes to root in a chmod-ed or immutable folder
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        reason = error.strerror or type(error).__name__
        where = "" if existing == path else f" (in {existing}, where it would be created)"
        raise InfoPromptError(f"{what} {path} cannot be written{where}: {reason}; {fix}"
                              ) from None
