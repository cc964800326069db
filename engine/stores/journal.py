"""The outbox's intake journal: an append-only file a push writes its sends to in one system
call, read back into the SQLite outbox off the caller's path (:mod:`engine.stores.sqlite`).

Why: a SQLite transaction costs a push several system calls and, with delivery threads
sharing the GIL, a wait for the GIL after each. A copy into a file mapped in memory is in the
kernel's page cache when it returns, so it survives the process being killed (``SIGKILL``,
OOM) just as a commit does with ``synchronous=NORMAL``; with ``sync=True`` an ``msync``
makes it survive power loss too.

Framing. A file holds records, each a 16-byte head ``magic "TGJ1", crc32(header + body),
header length, body length`` (little endian) followed by the header (compact JSON: a list)
and the body bytes; the file's preallocated space after the last record is zeros. A record
*validates* when its magic is right, its two lengths add up to at most 2**30
(:data:`_MAX_RECORD`; :func:`encode` refuses longer ones), it fits in the data, its checksum
matches and its header parses as a JSON list.

Reading (:func:`parse`) resynchronizes rather than stopping at the first bad record. At a
record that does not validate, it scans forward for the next ``TGJ1`` whose record validates
and goes on from there; the bytes passed over are returned as :class:`Skipped` chunks, which
the outbox appends to its quarantine file (:func:`quarantine`, read back with
:func:`quarantined`) and logs, never silently drops. The end of the data is the first
all-zero head with nothing but zeros after it (the preallocated space); zeros followed by
other bytes are damage (a zeroed stretch), passed over like a bad record. A record torn at the
end, its head written and its body cut short by the kill (followed by zeros or the end of the
file), was never acknowledged to anyone, but it is quarantined and counted like the rest.

Why event data cannot forge a record that resync would take. Records are only ever looked
inside when they failed to validate (a record that validates is taken whole), and what is
inside one is its header and body: JSON text written by orjson or :mod:`json` (compact, no
indentation: the outbox's bodies are the sends' JSON), which never holds a raw byte below
0x20 (control characters in strings are escaped, and there is no whitespace between
tokens). A forged head lying wholly inside such text thus has every byte of both length
fields >= 0x20, so each length is at least 0x20202020 (538,976,288) and their sum at least
0x40404040 (1,077,952,576), above the 2**30 (1,073,741,824) bound: it fails the length check
before its checksum is even computed. (A length below 2**30 has a top byte of at most 0x3f,
so one field alone does not decide it; the sum does.) The one place text can supply a magic
whose head does not lie wholly in text is the last 15 bytes of a record, where the forged
head runs into the next record's binary head: there it would also need its CRC-32 to match
by chance (1 in 2**32) and the bytes it claims as its header to parse as a JSON list.

Each process appends to files of its own, holding an exclusive ``flock`` on each for as long
as it lives, so another process can tell a live journal from an orphan (:func:`claim_orphan`).
Where there is no ``flock`` (Windows), :data:`AVAILABLE` is false and the outbox commits each
push's sends to SQLite instead.

The quarantine file (one per outbox, mode 0600, appended to under an ``flock``) is a sequence
of chunks, each ``TGQ1 `` and a one-line JSON header (``journal``: the journal file's name,
``offset`` and ``length`` of the bytes in it, ``time``: when they were quarantined, epoch
seconds, ``reason``: ``"unreadable"`` or ``"torn"``), a newline, the bytes themselves and a
newline.
"""

from __future__ import annotations

import contextlib
import errno
import json
import mmap
import os
import struct
import sys
import time
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import orjson

from engine.destinations.base import parse_bytes

if sys.platform == "win32":
    AVAILABLE = False
else:
    import fcntl

    AVAILABLE = True

__all__ = [
    "AVAILABLE",
    "JournalWriter",
    "Parsed",
    "Quarantined",
    "Record",
    "Skipped",
    "claim_orphan",
    "count",
    "encode",
    "journal_files",
    "lock_orphan",
    "parse",
    "quarantine",
    "quarantine_file",
    "quarantined",
    "read",
    "record_length",
    "unfinished_files",
]

_MAGIC = b"TGJ1"
_HEAD = struct.Struct("<4sIII")  # magic, crc32(header + body), header length, body length
_ZERO_HEAD = bytes(_HEAD.size)
_MAX_RECORD = 1 << 30  # longer lengths are a corrupt head, not a record (see the docstring)
_CAPACITY = 4 << 20  # bytes allocated for a new journal file
_COUNT_BLOCK = 256 << 10  # bytes read at a time when counting a live journal's records
_QUARANTINE_TAG = b"TGQ1 "
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)

Record = tuple[list[Any], bytes]
"""A record read back: its header fields and its body."""


class Skipped(NamedTuple):
    """Bytes a reader passed over: at ``offset`` (in the data parsed, or in the file for
    :func:`read`), ``data``; ``torn`` when they run to the end of the data (the record a
    process was writing as it died, or damage there)."""

    offset: int
    data: bytes
    torn: bool


class Parsed(NamedTuple):
    """What :func:`parse` and :func:`read` found: the records that validate, in order; the
    offset where reading stopped (after the last record or skipped bytes; for a final read,
    the start of the zeros after them); the bytes passed over."""

    records: list[Record]
    end: int
    skipped: list[Skipped]


class Quarantined(NamedTuple):
    """One chunk of a quarantine file: ``length`` bytes that were at ``offset`` in the journal
    file ``journal``, quarantined at ``time`` (epoch seconds) for ``reason`` (``"unreadable"``
    or ``"torn"``); they are at ``position`` in the quarantine file."""

    journal: str
    offset: int
    length: int
    time: float
    reason: str
    position: int


def encode(header: list[Any], body: bytes) -> bytes:
    """One record: ``header`` (JSON-able) and ``body``. ``ValueError`` for one longer than a
    reader accepts."""
    return frame(encode_header(header, len(body)), body)


def frame(head: bytes, body: bytes) -> bytes:
    """The record of an encoded header (:func:`encode_header`) and its body, as written."""
    crc = zlib.crc32(body, zlib.crc32(head))
    return _HEAD.pack(_MAGIC, crc, len(head), len(body)) + head + body


def encode_header(header: list[Any], body_length: int) -> bytes:
    """A record's header as :func:`encode` writes it (a record kept in memory needs no more:
    its frame and checksum guard what crosses a disk). ``ValueError`` for a record longer
    than a reader accepts."""
    try:
        head = orjson.dumps(header)  # on the push's path: a tenth of json's time
    except TypeError:  # an integer beyond 64 bits, say
        head = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    if len(head) + body_length > _MAX_RECORD:
        raise ValueError(f"a journal record holds at most {_MAX_RECORD} bytes")
    return head


def read(path: str | os.PathLike[str], offset: int, end: int | None = None) -> Parsed:
    """The records of the file at ``path`` from ``offset`` (up to ``end`` when given, else to
    the end of the file: a final read, see :func:`parse`), offsets in the file. A missing
    file has none."""
    try:
        with open(path, "rb") as file:
            file.seek(offset)
            data = file.read(-1 if end is None else max(0, end - offset))
    except FileNotFoundError:
        return Parsed([], offset, [])
    parsed = parse(data, final=end is None)
    return Parsed(
        parsed.records,
        offset + parsed.end,
        [Skipped(offset + s.offset, s.data, s.torn) for s in parsed.skipped],
    )


def count(path: str | os.PathLike[str], offset: int) -> int:
    """How many records the journal at ``path`` holds from ``offset`` up to the end of its
    data: what a running process has appended and not read in yet. Read a block at a time,
    stopping at the first all-zero head, so a large preallocated file costs one read."""
    try:
        file = open(path, "rb")  # noqa: SIM115 - closed below, on every path
    except FileNotFoundError:
        return 0
    total = 0
    with file:
        file.seek(offset)
        rest = b""
        while True:
            block = file.read(_COUNT_BLOCK)
            data = rest + block
            if not block:
                return total + len(parse(data).records)
            parsed = parse(data, final=False)
            total += len(parsed.records)
            rest = data[parsed.end :]
            if rest[: _HEAD.size] == _ZERO_HEAD:
                return total


def record_length(data: bytes) -> int:
    """The length of the record at the start of ``data`` (its head at least), as its head
    says; 0 when there is no head there."""
    if len(data) < _HEAD.size:
        return 0
    magic, _, head_len, body_len = _HEAD.unpack_from(data, 0)
    return _HEAD.size + head_len + body_len if magic == _MAGIC else 0


def _header(head: bytes) -> list[Any] | None:
    try:
        header = parse_bytes(head)
    except (ValueError, RecursionError):
        return None
    return header if isinstance(header, list) else None


def parse(data: bytes, *, final: bool = True) -> Parsed:
    """The records in ``data``, resynchronizing past bytes that are not one (see the module
    docstring), with offsets in ``data``.

    ``final``: ``data`` runs to the end of the file, so trailing zeros are the preallocated
    space and a record that does not fit is torn (skipped). Otherwise (a slice of a live
    journal, more to come) reading stops, without skipping it, at a record that runs past
    the end of ``data`` or at an all-zero head.
    """
    records: list[Record] = []
    skipped: list[Skipped] = []
    size = len(data)
    # A final read: what follows the last byte that is not zero is the file's free space.
    # (rstrip returns the same object, in constant time, when nothing is stripped.)
    limit = len(data.rstrip(b"\0")) if final else size
    position = 0
    bad = -1  # where the unreadable bytes being passed over began
    while position < limit:
        # The usual case first, inline: a whole record that validates.
        fits = position + _HEAD.size <= size
        if fits:
            magic, crc, head_len, body_len = _HEAD.unpack_from(data, position)
            start = position + _HEAD.size
            stop = start + head_len + body_len
            if magic == _MAGIC and head_len + body_len <= _MAX_RECORD:
                if stop > size:
                    fits = False  # runs past the end of the data
                else:
                    head = data[start : start + head_len]
                    body = data[start + head_len : stop]
                    if zlib.crc32(body, zlib.crc32(head)) == crc:
                        header = _header(head)
                        if header is not None:
                            if bad >= 0:
                                skipped.append(Skipped(bad, data[bad:position], False))
                                bad = -1
                            records.append((header, bytes(body)))
                            position = stop
                            continue
            elif not final and data[position:start] == _ZERO_HEAD:
                break  # the end of what was written so far
        if not fits and not final:
            break  # the rest of this record comes later
        # Not a record: pass over bytes up to the next magic, and try it.
        if bad < 0:
            bad = position
        found = data.find(_MAGIC, position + 1, limit)
        position = limit if found < 0 else found
    if bad >= 0:
        skipped.append(Skipped(bad, data[bad:position], position >= limit))
    return Parsed(records, position, skipped)


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


def quarantine_file(database: str) -> Path:
    """Where the outbox at ``database`` keeps the journal bytes it could not read."""
    return Path(f"{database}-quarantine")


def lock_orphan(path: str | os.PathLike[str]) -> int | None:
    """A descriptor of the journal at ``path``, locked by this process, if it is an orphan
    (no live process holds it, and it still has its name); else ``None``. Close it to let
    go."""
    if not AVAILABLE:  # no lock to tell a live journal from an orphan: read none
        return None
    try:
        fd = os.open(path, os.O_RDONLY | _CLOEXEC)
    except OSError:  # gone, or another user's: not ours to read
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        # Opened just before another reader deleted it (all read in) and let go of it:
        # the file is no one's now, and reading it again would deliver it twice.
        if os.fstat(fd).st_nlink == 0:
            raise FileNotFoundError(errno.ENOENT, "journal already removed", os.fspath(path))
    except OSError:
        os.close(fd)
        return None
    return fd


@contextlib.contextmanager
def claim_orphan(path: Path) -> Iterator[bool]:
    """Whether the journal at ``path`` is an orphan (:func:`lock_orphan`); while the block
    runs, this process holds it so no one else reads it too."""
    fd = lock_orphan(path)
    try:
        yield fd is not None
    finally:
        if fd is not None:
            os.close(fd)


def quarantine(
    path: str | os.PathLike[str],
    journal: str,
    chunks: Sequence[Skipped],
    *,
    now: float | None = None,
) -> None:
    """Append ``chunks`` passed over in the journal file named ``journal`` to the quarantine
    file at ``path`` (created with mode 0600), synced to disk before this returns: the
    journal they came from may be deleted next. Raises ``OSError``."""
    stamp = time.time() if now is None else now
    parts: list[bytes] = []
    for chunk in chunks:
        header = {
            "journal": journal,
            "offset": chunk.offset,
            "length": len(chunk.data),
            "time": stamp,
            "reason": "torn" if chunk.torn else "unreadable",
        }
        parts += [_QUARANTINE_TAG, json.dumps(header).encode(), b"\n", chunk.data, b"\n"]
    payload = memoryview(b"".join(parts))
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | _CLOEXEC, 0o600)
    try:
        if os.fstat(fd).st_mode & 0o077:  # made by hand, or by an older release
            os.fchmod(fd, 0o600)
        if AVAILABLE:  # one writer at a time: chunks of two processes never interleave
            fcntl.flock(fd, fcntl.LOCK_EX)
        while payload:
            payload = payload[os.write(fd, payload) :]
        os.fsync(fd)
    finally:
        os.close(fd)  # and the lock with it


def quarantined(path: str | os.PathLike[str]) -> list[Quarantined]:
    """The chunks of the quarantine file at ``path``, in order (none when it is missing). A
    chunk cut short (a process died writing it) ends the list."""
    try:
        file = open(path, "rb")  # noqa: SIM115 - closed below, on every path
    except FileNotFoundError:
        return []
    found: list[Quarantined] = []
    with file:
        size = os.fstat(file.fileno()).st_size
        while True:
            line = file.readline(64 << 10)
            if not line.startswith(_QUARANTINE_TAG) or not line.endswith(b"\n"):
                break
            try:
                header = json.loads(line[len(_QUARANTINE_TAG) :])
                chunk = Quarantined(
                    journal=str(header["journal"]),
                    offset=int(header["offset"]),
                    length=int(header["length"]),
                    time=float(header["time"]),
                    reason=str(header.get("reason", "unreadable")),
                    position=file.tell(),
                )
            except (ValueError, TypeError, KeyError, AttributeError):
                break
            after = chunk.position + chunk.length
            if chunk.length < 0 or after + 1 > size:
                break
            file.seek(after)
            if file.read(1) != b"\n":
                break
            found.append(chunk)
    return found
