"""The publisher's local spool: batches the broker has not confirmed, on disk, in order.

A directory of segment files (``000000000001.seg``, ...), each a run of entries::

    length   u32 big-endian   payload bytes
    records  u32 big-endian   records in the batch (for the metrics; the payload is not parsed)
    crc32    u32 big-endian   of the records field and the payload
    payload  length bytes     one message body (``encode_batch``)

Appends are fsync'd before ``append`` returns: an entry in the spool survives a crash of the
process or the machine. A crash in the middle of an append leaves a torn entry at the end of the
newest segment; ``open`` finds it (short header, short payload or a bad checksum) and truncates it.
Nothing after a bad entry is trusted, since lengths chain the entries.

Entries leave in the order they came, and only by ``pop`` (the caller's word that the broker
confirmed them). A segment file is deleted once all its entries are popped; entries popped from a
segment that is still on disk when the process dies are read again at the next open and published
a second time. That is safe: the writer stores a record once per ``(request_id, time)``.

The spool holds at most ``max_bytes`` (entries' bytes on disk): ``append`` refuses what would not
fit rather than wait, so a full disk budget never blocks the caller, who counts the refusal.

Synchronous file I/O, one user at a time (not thread-safe): the publisher runs it on one worker
thread so the event loop never waits for a disk. A lock file stops a second process from sharing
the directory.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import struct
import zlib
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

HEADER = struct.Struct(">III")
SEGMENT_SUFFIX = ".seg"
LOCK_NAME = "spool.lock"
DEFAULT_MAX_BYTES = 256 * 1024 * 1024
DEFAULT_SEGMENT_BYTES = 4 * 1024 * 1024
MAX_ENTRY_BYTES = 64 * 1024 * 1024  # larger lengths are a torn or corrupt header, not a batch


class SpoolError(OSError):
    """The spool directory cannot be used (in use by another process, not writable)."""


@dataclass(frozen=True, slots=True)
class SpoolEntry:
    payload: bytes
    records: int


@dataclass(slots=True)
class _Located:
    segment: int
    offset: int
    length: int  # payload bytes
    records: int

    @property
    def size(self) -> int:
        return HEADER.size + self.length


def _checksum(records: int, payload: bytes) -> int:
    return zlib.crc32(payload, zlib.crc32(records.to_bytes(4, "big")))


def encode_entry(payload: bytes, records: int) -> bytes:
    return HEADER.pack(len(payload), records, _checksum(records, payload)) + payload


def scan_segment(data: bytes) -> tuple[list[tuple[int, int, int]], int]:
    """The whole entries at the start of a segment's bytes: ([(offset, length, records)], the
    offset where the valid part ends). Pure: the torn-tail rule in one place."""
    entries = []
    offset = 0
    while offset + HEADER.size <= len(data):
        length, records, checksum = HEADER.unpack_from(data, offset)
        start = offset + HEADER.size
        end = start + length
        if length > MAX_ENTRY_BYTES or end > len(data):
            break
        if _checksum(records, data[start:end]) != checksum:
            break
        entries.append((offset, length, records))
        offset = end
    return entries, offset


class Spool:
    def __init__(
        self,
        directory: str | os.PathLike[str],
        max_bytes: int = DEFAULT_MAX_BYTES,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
    ) -> None:
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self._entries: deque[_Located] = deque()
        self._bytes = 0
        self._records = 0
        self._segment_sizes: dict[int, int] = {}  # segment -> bytes on disk, for deletion and rollover
        self._write_segment = 0
        self._write_file: int | None = None  # fd of the segment being appended to
        self._read_files: dict[int, int] = {}
        self._lock_fd: int | None = None
        self._open()

    # -- what the publisher reads -------------------------------------------------------------

    @property
    def bytes(self) -> int:
        """Bytes of the entries not yet popped (what counts against max_bytes)."""
        return self._bytes

    @property
    def records(self) -> int:
        return self._records

    def __len__(self) -> int:
        return len(self._entries)

    # -- operations ----------------------------------------------------------------------------

    def append(self, payload: bytes, records: int) -> bool:
        """Store one batch, fsync'd. False (nothing written) when it would exceed max_bytes."""
        return self.append_many([SpoolEntry(payload, records)]) == 1

    def append_many(self, entries: Sequence[SpoolEntry]) -> int:
        """Store batches in order with one fsync per segment touched; returns how many were
        stored: a prefix of ``entries``, shorter when the spool is full or the disk refuses (an
        entry whose write failed is not in the spool)."""
        stored = 0
        pending = bytearray()
        staged: list[_Located] = []
        staged_bytes = 0
        for entry in entries:
            size = HEADER.size + len(entry.payload)
            if self._bytes + staged_bytes + size > self.max_bytes:
                break
            if self._segment_sizes[self._write_segment] + len(pending) >= self.segment_bytes:
                if not self._flush(pending, staged):
                    return stored
                stored += len(staged)
                pending, staged, staged_bytes = bytearray(), [], 0
                self._roll_segment()
            offset = self._segment_sizes[self._write_segment] + len(pending)
            pending += encode_entry(entry.payload, entry.records)
            staged.append(_Located(self._write_segment, offset, len(entry.payload), entry.records))
            staged_bytes += size
        if staged and self._flush(pending, staged):
            stored += len(staged)
        return stored

    def peek(self, limit: int) -> list[SpoolEntry]:
        """The oldest ``limit`` entries, still in the spool until popped."""
        out = []
        for index, located in enumerate(self._entries):
            if index >= limit:
                break
            fd = self._reader(located.segment)
            out.append(SpoolEntry(os.pread(fd, located.length, located.offset + HEADER.size), located.records))
        return out

    def pop(self, count: int) -> None:
        """The oldest ``count`` entries are confirmed: forget them, and delete the segment files
        that hold nothing else any more."""
        for _ in range(min(count, len(self._entries))):
            located = self._entries.popleft()
            self._bytes -= located.size
            self._records -= located.records
        live = {located.segment for located in self._entries}
        for segment in sorted(self._segment_sizes):
            if segment in live or segment == self._write_segment:
                continue
            self._delete_segment(segment)
        if not self._entries and self._segment_sizes.get(self._write_segment, 0):
            # Empty again: start the current segment over instead of leaving popped entries on disk
            # to be replayed after a crash.
            self._delete_segment(self._write_segment)
            self._roll_segment()

    def close(self) -> None:
        for fd in [*self._read_files.values(), self._write_file, self._lock_fd]:
            if fd is not None:
                os.close(fd)
        self._read_files.clear()
        self._write_file = None
        self._lock_fd = None

    # -- on disk -------------------------------------------------------------------------------

    def _path(self, segment: int) -> Path:
        return self.directory / f"{segment:012d}{SEGMENT_SUFFIX}"

    def _open(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(self.directory / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            self._lock_fd = None
            raise SpoolError(f"spool {self.directory} is in use by another process") from None
        segments = sorted(
            int(path.name.removesuffix(SEGMENT_SUFFIX))
            for path in self.directory.glob(f"*{SEGMENT_SUFFIX}")
            if path.name.removesuffix(SEGMENT_SUFFIX).isdigit()
        )
        for segment in segments:
            data = self._path(segment).read_bytes()
            entries, valid = scan_segment(data)
            if valid < len(data):
                log.warning(
                    "ledger spool: %s ends with %d bytes of a torn or corrupt entry; truncated",
                    self._path(segment),
                    len(data) - valid,
                )
                with open(self._path(segment), "r+b") as handle:
                    handle.truncate(valid)
                    os.fsync(handle.fileno())
            if not entries:
                self._path(segment).unlink()
                continue
            self._segment_sizes[segment] = valid
            for offset, length, records in entries:
                located = _Located(segment, offset, length, records)
                self._entries.append(located)
                self._bytes += located.size
                self._records += records
        self._write_segment = max(segments, default=0)
        self._roll_segment()
        if self._entries:
            log.info(
                "ledger spool: %d batches (%d records, %d bytes) from a previous run in %s",
                len(self._entries),
                self._records,
                self._bytes,
                self.directory,
            )

    def _roll_segment(self) -> None:
        """Appends go to a new segment file from now on (never into one written before a crash,
        whose tail was only just checked)."""
        if self._write_file is not None:
            os.close(self._write_file)
        self._write_segment += 1
        self._write_file = os.open(self._path(self._write_segment), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._segment_sizes[self._write_segment] = 0
        _fsync_directory(self.directory)

    def _flush(self, pending: bytearray, staged: list[_Located]) -> bool:
        """Write and fsync the staged entries; only then are they in the spool. On a disk error
        the segment is cut back to what it held, so no half-written entry stays behind."""
        assert self._write_file is not None
        before = self._segment_sizes[self._write_segment]
        try:
            view = memoryview(pending)
            while view:
                written = os.write(self._write_file, view)
                view = view[written:]
            os.fsync(self._write_file)
        except OSError as exc:
            log.error("ledger spool: cannot write %s: %s", self._path(self._write_segment), exc)
            with contextlib.suppress(OSError):  # if even this fails, the next open cuts the torn tail
                os.ftruncate(self._write_file, before)
            return False
        self._segment_sizes[self._write_segment] = before + len(pending)
        for located in staged:
            self._entries.append(located)
            self._bytes += located.size
            self._records += located.records
        return True

    def _reader(self, segment: int) -> int:
        fd = self._read_files.get(segment)
        if fd is None:
            fd = self._read_files[segment] = os.open(self._path(segment), os.O_RDONLY)
        return fd

    def _delete_segment(self, segment: int) -> None:
        fd = self._read_files.pop(segment, None)
        if fd is not None:
            os.close(fd)
        if segment == self._write_segment and self._write_file is not None:
            os.close(self._write_file)
            self._write_file = None
        self._path(segment).unlink(missing_ok=True)
        self._segment_sizes.pop(segment, None)


def _fsync_directory(directory: Path) -> None:
    """A new or removed file's name is durable only once its directory is synced."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
