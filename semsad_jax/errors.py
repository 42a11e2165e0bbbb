"""User-facing errors.

Every problem a user can fix (bad path, empty folder, missing checkpoint, wrong mode order, ...) is
raised as :class:`SemsadError` with a one-line message that names the problem and what to do.
``main.py`` prints it as a single line and exits with status 2 instead of showing a traceback.
"""

from __future__ import annotations


class SemsadError(Exception):
    """A problem with the user's input or workdir; the message is one line, ending in what to do."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))
