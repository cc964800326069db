"""The outbox's intake journal: an append-only file a push writes its sends to in one system
call, read back into the SQLite outbox off the caller's path (:mod:`engine.stores.sqlite`).

Why: a SQLite transaction costs a push several system calls and, with delivery threads
sharing the GIL, a wait for the GIL after each. A copy into a file mapped in memory is in the
kernel's page cache when it returns, so it survives the process being killed (``SIGKILL``,
OOM) just as a commit does with ``synchronous=NORMAL``; with ``sync=True`` an ``msync``
makes it survive power loss too.

A file holds records, each ``magic, crc32, header length, body length`` (little endian),
then the header (compact JSON) and the body bytes, and zeros after the last. A reader stops at
the first record that is incomplete or fails its checksum: the tail a killed process was
writing, never acknowledged.

Each process appends to files of its own, holding an exclusive ``flock`` on each for as long
as it lives, so another process can tell a live journal from an orphan (:func:`claim_orphan`).
Where there is no ``flock`` (Windows), :data:`AVAILABLE` is false and the outbox commits each
push's sends to SQLite instead.
"""

from __future__ import annotations

import contextlib
import errno
import json
import mmap
import os
import struct
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from engine.destinations.base import parse_bytes

if sys.platform == "win32":
    AVAILABLE = False
else:
    import fcntl

    AVAILABLE = True

__all__ = [
    "JournalWriter",
    "Record",
    "claim_orphan",
    "encode",
    "journal_files",
    "parse",
    "read",
    "record_length",
    "unfinished_files",
]

_MAGIC = b"TGJ1"
_HEAD = struct.Struct("<4sIII")  # magic, crc32(header + body), header length, body length
_MAX_RECORD = 1 << 30  # a longer length is a corrupt header, not a record
_CAPACITY = 4 << 20  # bytes allocated for a new journal file

Record = tuple[list[Any], bytes]
"""A record read back: its header fields and its body."""


def encode(header: list[Any], body: bytes) -> bytes:
    """One record: ``header`` (JSON-able) and ``body``."""
    try:
        head = orjson.dumps(header)  # on the push's path: a tenth of json's time
    except TypeError:  # an integer beyond 64 bits, say
        head = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    crc = zlib.crc32(body, zlib.crc32(head))
    return _HEAD.pack(_MAGIC, crc, len(head), len(body)) + head + body


def read(
    path: str | os.PathLike[str], offset: int, end: int | None = None
) -> tuple[list[Record], int]:
    """The whole records from ``offset`` (up to ``end`` when given), and the offset after the
    last of them. A missing file has none."""
    try:
        with open(path, "rb") as file:
            file.seek(offset)
            data = file.read(-1 if end is None else max(0, end - offset))
    except FileNotFoundError:
        return [], offset
    records, used = parse(data)
    return records, offset + used


def record_length(data: bytes) -> int:
    """The length of the record at the start of ``data`` (its head at least), as its head
    says; 0 when there is no head there."""
    if len(data) < _HEAD.size:
        return 0
    magic, _, head_len, body_len = _HEAD.unpack_from(data, 0)
    return _HEAD.size + head_len + body_len if magic == _MAGIC else 0


def parse(data: bytes) -> tuple[list[Record], int]:
    """The whole records at the start of ``data``, and how many bytes they take."""
    records: list[Record] = []
    position = 0
    size = len(data)
    while position + _HEAD.size <= size:
        magic, crc, head_len, body_len = _HEAD.unpack_from(data, position)
        start = position + _HEAD.size
        stop = start + head_len + body_len
        if magic != _MAGIC or head_len + body_len > _MAX_RECORD or stop > size:
            break
        head = data[start : start + head_len]
        body = data[start + head_len : stop]
        if zlib.crc32(body, zlib.crc32(head)) != crc:
            break
        try:
            header = parse_bytes(head)
        except ValueError:
            break
        if not isinstance(header, list):
            break
        records.append((header, bytes(body)))
        position = stop
    return records, position


class JournalWriter:
    """Appends to one new journal file, created with mode 0600 and locked for this process.

    The file is allocated ahead (``capacity`` bytes, grown when full) and mapped into memory,
    so that an append is a copy into the page cache: no system call, so the GIL is not
    released in the middle of a push (a ``write(2)`` would let a delivery thread take it
    until its next I/O). The pages are the kernel's: they survive the process being killed.
    Allocating ahead also means a full disk fails here, as an ``OSError``, rather than as a
    ``SIGBUS`` when a page is first written.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, sync: bool = False, capacity: int = _CAPACITY
    ) -> None:
        self.path = os.fspath(path)
        self._sync = sync
        # Made under a name no reader looks for, locked and allocated, then renamed into
        # place: a reader never sees it unlocked (it would take it for a dead process's).
        making = os.path.join(os.path.dirname(self.path), f".{os.path.basename(self.path)}.making")
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
        self._fd = os.open(making, flags, 0o600)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            _allocate(self._fd, capacity)
            self._map = mmap.mmap(self._fd, capacity)
            if os.path.exists(self.path):
                raise FileExistsError(errno.EEXIST, "journal already exists", self.path)
            os.rename(making, self.path)
            if sync:  # the new name itself must survive power loss
                folder = os.open(os.path.dirname(os.path.abspath(self.path)), os.O_RDONLY)
                try:
                    os.fsync(folder)
                finally:
                    os.close(folder)
        except OSError:
            with contextlib.suppress(AttributeError, ValueError):
                self._map.close()
            os.close(self._fd)
            with contextlib.suppress(OSError):
                os.unlink(making)
            raise
        self._capacity = capacity
        self.end = 0  # bytes of whole records written

    def append(self, data: bytes) -> None:
        """Copy ``data`` (whole records) in; with ``sync``, to stable storage too."""
        start = self.end
        stop = start + len(data)
        if stop > self._capacity:
            self._grow(stop)
        self._map[start:stop] = data
        if self._sync:
            self._map.flush()
        self.end = stop

    def view(self, start: int, stop: int) -> bytes:
        """The bytes written between ``start`` and ``stop``, from the mapping."""
        return self._map[start:stop]

    def _grow(self, needed: int) -> None:
        capacity = max(needed, 2 * self._capacity)
        _allocate(self._fd, capacity)
        self._map.resize(capacity)
        self._capacity = capacity

    def close(self) -> None:
        """Unmap and close the file (its lock goes with it). Idempotent."""
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            self._map.close()
            os.close(fd)

    def abandon(self) -> None:
        """In a forked child: drop the inherited mapping and descriptor. The parent's lock
        stays, since the parent still holds the file open."""
        self.close()


def _allocate(fd: int, size: int) -> None:
    """Give the file at ``fd`` ``size`` bytes of disk, zeros, now: ``posix_fallocate``, or
    where there is none (macOS) or the file system refuses it, zeros written out."""
    fallocate = getattr(os, "posix_fallocate", None)
    if fallocate is not None:
        try:
            fallocate(fd, 0, size)
            return
        except OSError as exc:
            if exc.errno not in (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOSYS):
                raise
    done = os.fstat(fd).st_size
    zeros = bytes(min(size - done, 1 << 20)) if size > done else b""
    while done < size:
        done += os.pwrite(fd, zeros[: size - done], done)


def journal_files(database: str) -> list[Path]:
    """The journal files of the outbox at ``database``, by name."""
    base = Path(database)
    return sorted(base.parent.glob(f"{base.name}-intake-*"))


def unfinished_files(database: str) -> list[Path]:
    """Journal files whose making a process did not finish (it died first): never used."""
    base = Path(database)
    return sorted(base.parent.glob(f".{base.name}-intake-*.making"))


@contextlib.contextmanager
def claim_orphan(path: Path) -> Iterator[bool]:
    """Whether the journal at ``path`` is an orphan (no live process holds it); while the
    block runs, this process holds it so no one else reads it too."""
    if not AVAILABLE:  # no lock to tell a live journal from an orphan: read none
        yield False
        return
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError:  # gone, or another user's: not ours to read
        yield False
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            yield False
            return
        yield True
    finally:
        os.close(fd)
