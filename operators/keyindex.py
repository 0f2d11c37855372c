"""`KeyIndex`: exact string key -> row number for stateful operators, in O(batch) per lookup.

Joining a micro-batch against all keys ever seen (users, event ids) costs O(state) per batch: a
polars join hashes the whole state side every time. `KeyIndex` keeps the 64-bit hashes of its
keys sorted in numpy and answers a batch with `searchsorted`: O(batch · log n), no Python per key.

- Exact: a hash hit is confirmed against the stored key; when two keys share a hash (rare), that
  batch is answered by joining on the strings instead.
- New keys go to a small sorted *delta* index, merged into the sorted base (a linear merge, no
  re-hashing) when it outgrows an eighth of it, so an append costs O(batch + delta) amortised.
- Hashes come from `pl.Series.hash`, stable only within one polars version, so they are never
  persisted: a pickled index holds the keys and rebuilds its hashes on first use.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl

__all__ = ["KeyIndex"]

_EMPTY_U64 = np.zeros(0, dtype=np.uint64)
_EMPTY_I64 = np.zeros(0, dtype=np.int64)


def _hashes(keys: pl.Series) -> np.ndarray:
    return keys.hash(seed=0).to_numpy()


def _find(hashes: np.ndarray, rows: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    if len(hashes) == 0:
        return np.full(len(wanted), -1, dtype=np.int64)
    pos = np.minimum(np.searchsorted(hashes, wanted), len(hashes) - 1)
    return np.where(hashes[pos] == wanted, rows[pos], -1)


class KeyIndex:
    """Row numbers of distinct string keys; row i is the i-th key appended (see module doc)."""

    def __init__(self, keys: pl.Series | None = None) -> None:
        self.keys = (keys if keys is not None else pl.Series("key", [], dtype=pl.String)).rechunk()
        self._reset()

    def _reset(self) -> None:
        self._base: tuple[np.ndarray, np.ndarray] | None = None
        self._delta = (_EMPTY_U64, _EMPTY_I64)

    def __len__(self) -> int:
        return len(self.keys)

    def _index(self) -> tuple[np.ndarray, np.ndarray]:
        if self._base is None:
            hashes = _hashes(self.keys)
            order = np.argsort(hashes, kind="stable")
            self._base = (hashes[order], order.astype(np.int64))
            self._delta = (_EMPTY_U64, _EMPTY_I64)
        return self._base

    def lookup(self, keys: pl.Series) -> np.ndarray:
        """Row of each key (int64; -1 for a key not in the index). Keys may repeat."""
        base_h, base_r = self._index()
        wanted = _hashes(keys)
        row = _find(base_h, base_r, wanted)
        missing = row < 0
        if missing.any() and len(self._delta[0]):
            row[missing] = _find(*self._delta, wanted[missing])
        found = row >= 0
        if found.any():
            stored = self.keys.gather(row[found])
            if not (stored == keys.filter(pl.Series(found))).all():
                return self._join(keys)
        return row

    def _join(self, keys: pl.Series) -> np.ndarray:
        """The same answer by joining on the strings (used when hashes collide)."""
        rows = pl.DataFrame({"key": self.keys}).with_row_index("row")
        got = pl.DataFrame({"key": keys}).join(rows, on="key", how="left", maintain_order="left")
        return np.array(got["row"].cast(pl.Int64).fill_null(-1).to_numpy(), dtype=np.int64)

    def append(self, keys: pl.Series) -> np.ndarray:
        """Add keys that are distinct and not in the index yet; returns their rows."""
        start = len(self.keys)
        rows = np.arange(start, start + len(keys), dtype=np.int64)
        if len(keys) == 0:
            return rows
        self.keys = self.keys.append(keys.cast(pl.String).alias(self.keys.name))
        if self._base is None:
            return rows  # built in full on the next lookup
        fresh = _hashes(keys)
        order = np.argsort(fresh, kind="stable")
        delta_h, delta_r = self._delta
        at = np.searchsorted(delta_h, fresh[order])
        self._delta = (np.insert(delta_h, at, fresh[order]), np.insert(delta_r, at, rows[order]))
        if len(self._delta[0]) > max(4096, len(self._base[0]) // 8):
            # merge the sorted delta into the sorted base: O(n) copying, no re-hashing
            base_h, base_r = self._base
            delta_h, delta_r = self._delta
            at = np.searchsorted(base_h, delta_h)
            self._base = (np.insert(base_h, at, delta_h), np.insert(base_r, at, delta_r))
            self._delta = (_EMPTY_U64, _EMPTY_I64)
        if self.keys.n_chunks() > 64:
            self.keys = self.keys.rechunk()
        return rows

    def replace(self, keys: pl.Series) -> None:
        """Start over with these keys (row i = keys[i]), e.g. after dropping or renumbering rows."""
        self.keys = keys.cast(pl.String).rechunk()
        self._reset()

    def __getstate__(self) -> dict[str, Any]:
        return {"keys": self.keys}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.keys = state["keys"]
        self._reset()
