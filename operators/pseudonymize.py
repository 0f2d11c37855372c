"""Pseudonymisation of `user_id` into `user_key` (SPEC §3).

`user_key` = the first 32 hex characters (128 bits) of HMAC-SHA256(key = UTF-8 of the secret,
message = UTF-8 of `user_id`). The key is deterministic, so the same user gets the same key in
every run, worker and table, and erasure can recompute it from a `user_id`; without the secret it
cannot be reversed or recomputed.

`Pseudonymizer` is the columnar form used by decode: it computes the HMAC once per *distinct* id
and keeps a bounded cache across batches, because a learner produces many events and HMAC is the
only per-value Python work left on the hot path.

Sharp edges:
- The cache holds raw `user_id`s in memory (never in outputs, never in snapshots: it is derived
  data that a restart simply recomputes). Size it with `max_cache`; at about 200 bytes per entry
  the default of 2,000,000 entries costs up to ~400 MB. When full, the oldest half is dropped
  (first in, first out): eviction only costs a recomputation, never a wrong key. Within one
  `keys` call the cache may briefly hold that batch's distinct ids on top of the bound.
- A user_id that is not valid UTF-8 cannot reach here: polars strings are UTF-8.
"""

from __future__ import annotations

import hashlib
import hmac
from itertools import islice

import polars as pl

__all__ = ["Pseudonymizer", "user_key"]


def user_key(secret: bytes, user_id: str) -> str:
    """First 32 hex chars of HMAC-SHA256(secret, UTF-8 of `user_id`) (SPEC §3)."""
    return hmac.digest(secret, user_id.encode("utf-8"), hashlib.sha256).hex()[:32]


class Pseudonymizer:
    """Vectorised `user_id -> user_key` with a bounded, never-snapshotted cache.

    `keys` maps a whole column at once: HMAC runs in Python once per distinct id that is not
    cached yet; the mapping back onto the column is a polars operation.
    """

    def __init__(self, secret: bytes, max_cache: int = 2_000_000) -> None:
        if not secret:
            raise ValueError("the pseudonymisation secret must not be empty")
        if max_cache < 1:
            raise ValueError(f"max_cache must be >= 1, got {max_cache}")
        self._secret = bytes(secret)
        self._max_cache = max_cache
        self._cache: dict[str, str] = {}

    @property
    def cache_size(self) -> int:
        """Number of cached ids (for metrics and tests)."""
        return len(self._cache)

    def keys(self, user_ids: pl.Series) -> pl.Series:
        """`user_key` for each value of a String column; null stays null; the name is `user_key`."""
        ids = user_ids.cast(pl.String)
        distinct = ids.drop_nulls().unique()
        if distinct.len() == 0:
            return pl.Series("user_key", [None] * ids.len(), dtype=pl.String)
        cache = self._cache
        secret = self._secret
        values: list[str] = []
        append = values.append
        for uid in distinct.to_list():  # per distinct id, not per event
            key = cache.get(uid)
            if key is None:
                key = hmac.digest(secret, uid.encode("utf-8"), hashlib.sha256).hex()[:32]
                cache[uid] = key
            append(key)
        if len(cache) > self._max_cache:
            self._evict()
        mapping = pl.DataFrame({"id": distinct, "user_key": pl.Series(values, dtype=pl.String)})
        out = (
            ids.to_frame("id")
            .join(mapping, on="id", how="left", maintain_order="left")
            .get_column("user_key")
        )
        return out

    def _evict(self) -> None:
        """Drop the oldest entries down to half the bound (FIFO by insertion)."""
        target = self._max_cache // 2
        excess = len(self._cache) - target
        for uid in list(islice(self._cache, excess)):
            del self._cache[uid]
