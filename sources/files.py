"""JSONL files as one ordered source partition (SPEC §8 `--source file:PATH[,PATH…]`).

All paths are read in the order given, as one stream: de-duplication and the watermark see the
records in that order, whichever worker runs the partition. Records are lines; empty lines (and
lines holding only `\\r`) are not records and are not counted. Each record keeps its source reference
`file:<path>:<line>` (lines counted from 1, blank lines included in the count).

Resume state: (file index, byte offset, line number) of the next unread record, so a recovered run
continues exactly where the last snapshot was taken.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from operators.decode import BufferLines, RawBatch

PARTITION = "files"
_CHUNK_BYTES = 1 << 24


@dataclass(frozen=True)
class FilePosition:
    file_index: int = 0
    offset: int = 0
    line: int = 0  # lines consumed so far in this file


class FileReader:
    """Reads `batch_size` records at a time; `position` is where the next batch starts."""

    def __init__(self, paths: Sequence[Path], batch_size: int, start: FilePosition) -> None:
        self.paths = [Path(p) for p in paths]
        self.batch_size = batch_size
        self.position = start
        self._buffer = b""
        self._handle = None

    def next_batch(self) -> RawBatch | None:
        """The next batch of the current file, or None when every file is consumed."""
        while self.position.file_index < len(self.paths):
            batch = self._read_from_current()
            if batch is not None:
                return batch
            self.position = FilePosition(self.position.file_index + 1, 0, 0)
        return None

    def _read_from_current(self) -> RawBatch | None:
        """Up to `batch_size` records of the current file from `position`; None at its end.

        Lines are found with one numpy pass per chunk; the records stay slices of one buffer
        (`BufferLines`), so no Python object is made per record.
        """
        path = self.paths[self.position.file_index]
        pieces: list[bytes | memoryview] = []
        starts: list[np.ndarray] = []
        ends: list[np.ndarray] = []
        numbers: list[np.ndarray] = []
        offset = self.position.offset
        line = self.position.line
        count = 0
        base = 0  # bytes in `pieces`
        with path.open("rb") as handle:
            handle.seek(offset)
            while count < self.batch_size:
                chunk = handle.read(_CHUNK_BYTES)
                if not chunk:
                    break
                at_eof = len(chunk) < _CHUNK_BYTES
                if chunk.rfind(b"\n") < 0 and not at_eof:
                    # one record longer than a chunk: read on until its end
                    more = handle.readline()
                    chunk += more
                    at_eof = not more.endswith(b"\n")
                found = _lines(chunk, at_eof)
                # keep the lines up to the one holding the last record the batch still needs
                records = np.flatnonzero(~found.blank)
                need = self.batch_size - count
                take = len(found.ends) if records.size <= need else int(records[need - 1]) + 1
                records = records[records < take]
                consumed = min(int(found.ends[take - 1]) + 1, len(chunk))
                pieces.append(memoryview(chunk)[:consumed])
                starts.append(found.starts[records] + base)
                ends.append(found.ends[records] + base)
                numbers.append(records + line + 1)
                base += consumed
                count += records.size
                line += take
                offset += consumed
                handle.seek(offset)
                if at_eof and take == len(found.ends):
                    break
        self.position = FilePosition(self.position.file_index, offset, line)
        if not count:
            return None
        return RawBatch(
            lines=BufferLines(b"".join(pieces), np.concatenate(starts), np.concatenate(ends)),
            ref_prefix=f"file:{path}:",
            positions=np.concatenate(numbers),
            received_at_us=time.time_ns() // 1000,
        )


@dataclass(frozen=True)
class _Lines:
    starts: np.ndarray  # first byte of each line
    ends: np.ndarray  # its newline (or the end of the data)
    blank: np.ndarray  # empty, or only `\r`: not a record (but counted as a line)


def _lines(chunk: bytes, at_eof: bool) -> _Lines:
    """The lines of `chunk` up to its last newline (at the end of the file: all of it).

    A trailing `\r` (CRLF files) stays in the record: JSON parsers read it as whitespace.
    """
    view = np.frombuffer(chunk, dtype=np.uint8)
    ends = np.flatnonzero(view == 0x0A)
    if at_eof and not chunk.endswith(b"\n"):
        ends = np.append(ends, len(chunk))  # a last line without newline
    starts = np.empty_like(ends)
    starts[:1] = 0
    starts[1:] = ends[:-1] + 1
    lengths = ends - starts
    first = view[np.minimum(starts, len(chunk) - 1)] if len(chunk) else np.zeros(0, np.uint8)
    blank = (lengths == 0) | ((lengths == 1) & (first == 0x0D))
    return _Lines(starts, ends, blank)


#: work done on a batch as soon as it is read, one batch ahead of the dataflow (e.g. decoding)
Prepare = Callable[[RawBatch], RawBatch]


class _FilePartition(StatefulSourcePartition[RawBatch, FilePosition]):
    """Emits the reader's batches. With `prepare`, a background thread reads and prepares the
    next batch while the dataflow works on the current one (both are mostly native code that
    releases the GIL, so they overlap on two cores); the snapshot is the position after the last
    batch *emitted*, so a prepared batch that was never emitted is read again after a restart."""

    def __init__(self, reader: FileReader, prepare: Prepare | None = None) -> None:
        self.reader = reader
        self.prepare = prepare
        self.position = reader.position
        self.announced = False
        self._pool = (
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="file-read") if prepare else None
        )
        self._ahead: Future[tuple[RawBatch | None, FilePosition]] | None = None

    def _read(self) -> tuple[RawBatch | None, FilePosition]:
        batch = self.reader.next_batch()
        if batch is not None and self.prepare is not None:
            batch = self.prepare(batch)
        return batch, self.reader.position

    def next_batch(self) -> list[RawBatch]:
        if not self.announced:
            # an empty first batch announces the partition, so that a run over files without a
            # single record still has its accounting (a pipeline_runs row with zeros)
            self.announced = True
            if self._pool is not None:  # the first batch is read while the announcement travels
                self._ahead = self._pool.submit(self._read)
            return [
                RawBatch(
                    lines=[],
                    ref_prefix="file:",
                    positions=np.zeros(0, dtype=np.int64),
                    received_at_us=time.time_ns() // 1000,
                )
            ]
        if self._pool is None:
            batch, position = self._read()
        else:
            ahead = self._ahead or self._pool.submit(self._read)
            batch, position = ahead.result()
            self._ahead = self._pool.submit(self._read) if batch is not None else None
        if batch is None:
            raise StopIteration()
        self.position = position
        return [batch]

    def snapshot(self) -> FilePosition:
        return self.position

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)


class FileSource(FixedPartitionedSource[RawBatch, FilePosition]):
    """One partition over all paths, yielding `RawBatch` items (`prepare`d one batch ahead on a
    background thread when given)."""

    def __init__(
        self, paths: Sequence[str | Path], batch_size: int, prepare: Prepare | None = None
    ) -> None:
        self.paths = [Path(p) for p in paths]
        self.batch_size = batch_size
        self.prepare = prepare

    def list_parts(self) -> list[str]:
        return [PARTITION]

    def build_part(
        self, step_id: str, for_part: str, resume_state: FilePosition | None
    ) -> _FilePartition:
        reader = FileReader(self.paths, self.batch_size, resume_state or FilePosition())
        return _FilePartition(reader, self.prepare)
