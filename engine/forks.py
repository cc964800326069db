"""Whether this process is a fork of the one an object was made in, read without a system call.

What holds threads, connections or files (background delivery, the SQLite outbox) must notice a
fork before it uses what the parent holds. ``os.register_at_fork`` hooks tell it of every
``os.fork()``; a fork by C code that skips the hooks is caught by a check on each use, on every
push's path. ``os.getpid()`` is a system call, and a system call there cost a push about half a
microsecond, mostly afterwards (on this machine's kernel a system call leaves the caches and
branch predictors colder). So a :class:`ForkWatch` reads a byte of a page the kernel empties in
every child (``MADV_WIPEONFORK``, Linux 4.14 and later); where that is not available, the pid.
"""

from __future__ import annotations

import mmap
import os
import sys

__all__ = ["ForkWatch"]

_MADV_WIPEONFORK = 18  # Linux's value (Python 3.11's mmap does not name it)


class ForkWatch:
    """:meth:`forked` says whether this process is not the one the watch was made or last
    :meth:`reset` in (a fork's child, with or without the at-fork hooks)."""

    __slots__ = ("_page", "_pid")

    def __init__(self) -> None:
        self._pid = os.getpid()
        self._page = _wiped_in_children()

    def forked(self) -> bool:
        page = self._page
        if page is not None:
            return not page[0]
        return os.getpid() != self._pid

    def reset(self) -> None:
        """Watch from this process on (a child, once it has let go of what it inherited)."""
        self._pid = os.getpid()
        if self._page is not None:
            self._page[0] = 1


def _wiped_in_children() -> mmap.mmap | None:
    """A private page holding 1 that reads 0 in a fork's child, or ``None`` where the kernel
    cannot do that."""
    if not sys.platform.startswith("linux"):
        return None  # (the advice's number is Linux's)
    try:
        page = mmap.mmap(-1, mmap.PAGESIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        page.madvise(getattr(mmap, "MADV_WIPEONFORK", _MADV_WIPEONFORK))
    except (AttributeError, OSError, TypeError, ValueError):  # an older kernel: EINVAL
        return None
    page[0] = 1
    return page
