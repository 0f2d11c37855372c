"""The JSONL file source: records, line numbers, batches and resume positions (SPEC §8)."""

from __future__ import annotations

from pathlib import Path

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, given, settings

import sources.files as files_mod
from operators.decode import BufferLines, RawBatch
from sources.files import FilePosition, FileReader, FileSource


def reference(paths: list[Path], batch_size: int) -> list[list[tuple[str, int, bytes]]]:
    """Batches of (path, line number, record) by the plainest reading of the files: lines split
    on `\\n`, counted from 1, blank ones (empty or only `\\r`) skipped, `batch_size` a batch; a
    batch never spans two files."""
    batches: list[list[tuple[str, int, bytes]]] = []
    for path in paths:
        data = path.read_bytes()
        lines = data.split(b"\n")
        if data.endswith(b"\n"):
            lines.pop()
        records = [(str(path), i + 1, line) for i, line in enumerate(lines) if line not in (b"", b"\r")]
        batches += [records[i : i + batch_size] for i in range(0, len(records), batch_size)]
    return batches


def read_all(reader: FileReader) -> list[list[tuple[str, int, bytes]]]:
    out = []
    while (batch := reader.next_batch()) is not None:
        assert isinstance(batch.lines, BufferLines)
        path = batch.ref_prefix.removeprefix("file:").removesuffix(":")
        out.append([(path, int(n), line) for n, line in zip(batch.positions, batch.lines, strict=True)])
    return out


def test_blank_lines_crlf_and_a_last_line_without_newline(tmp_path: Path) -> None:
    a = tmp_path / "a.jsonl"
    a.write_bytes(b'{"a":1}\r\n\r\n\n{"a":2}\n\n{"a":3}')
    b = tmp_path / "b.jsonl"
    b.write_bytes(b'{"b":1}\n')
    batches = read_all(FileReader([a, b], 2, FilePosition()))
    # line 2 is only "\r", line 3 empty: not records but counted; the CR of line 1 stays
    assert batches == [
        [(str(a), 1, b'{"a":1}\r'), (str(a), 4, b'{"a":2}')],
        [(str(a), 6, b'{"a":3}')],
        [(str(b), 1, b'{"b":1}')],
    ]


chunks = st.lists(
    st.sampled_from([b"", b"\r", b'{"k":1}', b'{"k":"long value ' + b"x" * 40 + b'"}', b'{"k":"\xc3\xa9"}', b"x"]),
    max_size=60,
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    contents=st.lists(st.tuples(chunks, st.booleans()), min_size=1, max_size=3),
    batch_size=st.integers(1, 7),
    chunk_bytes=st.sampled_from([16, 64, 1 << 24]),
)
def test_batches_equal_the_plain_reading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, contents: list[tuple[list[bytes], bool]],
    batch_size: int, chunk_bytes: int,
) -> None:
    # small chunks put records across chunk ends, and records longer than a chunk
    monkeypatch.setattr(files_mod, "_CHUNK_BYTES", chunk_bytes)
    paths = []
    for i, (lines, trailing_newline) in enumerate(contents):
        path = tmp_path / f"f{i}.jsonl"
        path.write_bytes(b"\n".join(lines) + (b"\n" if trailing_newline and lines else b""))
        paths.append(path)
    assert read_all(FileReader(paths, batch_size, FilePosition())) == reference(paths, batch_size)


def _lines_file(tmp_path: Path, n: int) -> Path:
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"".join(b'{"i":%d}\n' % i + (b"\n" if i % 3 == 0 else b"") for i in range(n)))
    return path


def _records(batches: list[RawBatch]) -> list[bytes]:
    return [line for batch in batches for line in batch.lines]


def test_a_prepared_partition_emits_in_order_and_snapshots_what_it_emitted(tmp_path: Path) -> None:
    path = _lines_file(tmp_path, 10)
    prepared: list[int] = []

    def prepare(batch: RawBatch) -> RawBatch:
        prepared.append(int(batch.positions[0]))
        return batch

    source = FileSource([path], 3, prepare=prepare)
    part = source.build_part("read", "files", None)
    assert part.next_batch()[0].lines == []  # the announcement
    first = part.next_batch()
    # the next batch is read ahead, but the snapshot is where the emitted one ended:
    # records 0..2 are on lines 1, 3, 4 (line 2 is blank): 3 records of 8 bytes + 1 blank line
    assert part.snapshot() == FilePosition(0, 3 * 8 + 1, 4)
    rest: list[RawBatch] = []
    with pytest.raises(StopIteration):
        while True:
            rest += part.next_batch()
    part.close()
    assert _records(first + rest) == [b'{"i":%d}' % i for i in range(10)]
    assert len(prepared) == 4  # every batch prepared once

    # resuming from the snapshot after the first batch gives the rest again, nothing twice
    resumed = source.build_part("read", "files", FilePosition(0, 3 * 8 + 1, 4))
    again: list[RawBatch] = []
    with pytest.raises(StopIteration):
        while True:
            again += resumed.next_batch()
    resumed.close()
    assert _records(again) == _records(rest)
    assert [int(p) for b in again for p in b.positions] == [int(p) for b in rest for p in b.positions]
