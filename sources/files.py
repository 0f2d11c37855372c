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
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from operators.decode import RawBatch

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
        path = self.paths[self.position.file_index]
        with path.open("rb") as handle:
            handle.seek(self.position.offset)
            lines: list[bytes] = []
            numbers: list[np.ndarray] = []
            offset = self.position.offset
            line = self.position.line
            count = 0
            while count < self.batch_size:
                chunk = handle.read(_CHUNK_BYTES)
                if not chunk:
                    break
                last_newline = chunk.rfind(b"\n")
                at_eof = len(chunk) < _CHUNK_BYTES
                if last_newline < 0 and not at_eof:
                    # one record longer than a chunk: read on until its end
                    more = handle.readline()
                    chunk += more
                    last_newline = len(chunk) - 1 if more.endswith(b"\n") else -1
                    at_eof = not more.endswith(b"\n")
                usable = chunk if at_eof else chunk[: last_newline + 1]
                parts = usable.split(b"\n")
                if usable.endswith(b"\n"):
                    parts.pop()
                # keep at most what the batch still needs
                need = self.batch_size - count
                take, consumed = _take(parts, need)
                kept, kept_numbers = _non_blank(take, line)
                lines.extend(kept)
                numbers.append(kept_numbers)
                count += len(kept)
                line += len(take)
                offset += consumed
                handle.seek(offset)
                if at_eof and len(take) == len(parts):
                    break
        self.position = FilePosition(self.position.file_index, offset, line)
        if not lines:
            return None
        positions = np.concatenate(numbers) if numbers else np.zeros(0, dtype=np.int64)
        return RawBatch(
            lines=lines,
            ref_prefix=f"file:{path}:",
            positions=positions,
            received_at_us=time.time_ns() // 1000,
        )


def _take(parts: list[bytes], need: int) -> tuple[list[bytes], int]:
    """At most `need` non-blank records from `parts`, and how many bytes they span (with newlines)."""
    if len(parts) <= need:
        chosen = parts
    else:
        # blank lines do not count towards the batch size; they are rare, so count them lazily
        chosen = parts[:need]
        blanks = sum(1 for p in chosen if not p or p == b"\r")
        extra = need
        while blanks and extra < len(parts):
            grow = parts[extra : extra + blanks]
            blanks = sum(1 for p in grow if not p or p == b"\r")
            chosen = chosen + grow
            extra += len(grow)
    consumed = sum(map(len, chosen)) + len(chosen)
    return chosen, consumed


def _non_blank(parts: list[bytes], first_line: int) -> tuple[list[bytes], np.ndarray]:
    """Drop blank lines; keep the line numbers (from 1) of the others.

    A trailing `\r` (CRLF files) is left in place: JSON parsers read it as whitespace.
    """
    numbers = np.arange(first_line + 1, first_line + 1 + len(parts), dtype=np.int64)
    lengths = np.fromiter(map(len, parts), dtype=np.int64, count=len(parts))
    maybe_blank = np.nonzero(lengths <= 1)[0]
    blank = [int(i) for i in maybe_blank if parts[i] in (b"", b"\r")]
    if not blank:
        return parts, numbers
    keep = np.ones(len(parts), dtype=bool)
    keep[blank] = False
    return [p for p, k in zip(parts, keep, strict=True) if k], numbers[keep]


class _FilePartition(StatefulSourcePartition[RawBatch, FilePosition]):
    def __init__(self, reader: FileReader) -> None:
        self.reader = reader
        self.announced = False

    def next_batch(self) -> list[RawBatch]:
        if not self.announced:
            # an empty first batch announces the partition, so that a run over files without a
            # single record still has its accounting (a pipeline_runs row with zeros)
            self.announced = True
            return [
                RawBatch(
                    lines=[],
                    ref_prefix="file:",
                    positions=np.zeros(0, dtype=np.int64),
                    received_at_us=time.time_ns() // 1000,
                )
            ]
        batch = self.reader.next_batch()
        if batch is None:
            raise StopIteration()
        return [batch]

    def snapshot(self) -> FilePosition:
        return self.reader.position


class FileSource(FixedPartitionedSource[RawBatch, FilePosition]):
    """One partition over all paths, yielding `RawBatch` items."""

    def __init__(self, paths: Sequence[str | Path], batch_size: int) -> None:
        self.paths = [Path(p) for p in paths]
        self.batch_size = batch_size

    def list_parts(self) -> list[str]:
        return [PARTITION]

    def build_part(
        self, step_id: str, for_part: str, resume_state: FilePosition | None
    ) -> _FilePartition:
        return _FilePartition(FileReader(self.paths, self.batch_size, resume_state or FilePosition()))
