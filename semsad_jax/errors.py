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


class DiskFull(SemsadError):
    """A write failed, or would fail, for want of disk space; nothing good was overwritten."""


_DISK_FULL_ERRNOS = (28, 122)  # ENOSPC, EDQUOT
_DISK_FULL_TEXT = ("No space left on device", "Disk quota exceeded", "os_error_code='28'")


def is_disk_full(err: BaseException | None) -> bool:
    """Whether ``err`` (or an exception it was raised from) is a full disk or exhausted quota.

    Orbax and tensorstore report ENOSPC as ``ValueError("RESOURCE_EXHAUSTED: ... No space left on
    device [os_error_code='28']")`` from a background thread, so the text is checked too.
    """
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in _DISK_FULL_ERRNOS:
            return True
        if any(text in str(err) for text in _DISK_FULL_TEXT):
            return True
        err = err.__cause__ or err.__context__
    return False
