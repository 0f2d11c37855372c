"""KeyIndex: string key -> row, checked against a plain dict and through a forced collision."""

from __future__ import annotations

import pickle

import numpy as np
import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st

from operators.keyindex import KeyIndex


def test_lookup_append_and_unknown_keys() -> None:
    index = KeyIndex()
    assert index.lookup(pl.Series(["a"])).tolist() == [-1]
    assert index.append(pl.Series(["a", "b"])).tolist() == [0, 1]
    # a lookup builds the base index; later appends go to the delta until merged
    assert index.lookup(pl.Series(["b", "x", "a", "b"])).tolist() == [1, -1, 0, 1]
    assert index.append(pl.Series(["c"])).tolist() == [2]
    assert index.lookup(pl.Series(["c", "a", "zz"])).tolist() == [2, 0, -1]
    assert len(index) == 3


def test_colliding_hashes_fall_back_to_the_strings() -> None:
    index = KeyIndex(pl.Series(["a", "b"]))
    # Fake a collision: both entries of the base carry the hash of "b" and point at row 0
    # ("a"). The stored key at row 0 is not "b", so the answer must come from the strings.
    b_hash = pl.Series(["b"]).hash(seed=0).to_numpy()[0]
    index._base = (np.array([b_hash, b_hash], dtype=np.uint64), np.array([0, 0], dtype=np.int64))
    assert index.lookup(pl.Series(["b", "a", "new"])).tolist() == [1, 0, -1]


def test_pickle_keeps_keys_not_hashes() -> None:
    index = KeyIndex(pl.Series(["a", "b"]))
    index.lookup(pl.Series(["a"]))
    index.append(pl.Series(["c"]))
    restored = pickle.loads(pickle.dumps(index))
    assert restored._base is None  # hashes are rebuilt after a restore
    assert restored.lookup(pl.Series(["c", "b", "a"])).tolist() == [2, 1, 0]


@settings(max_examples=40, deadline=None)
@given(batches=st.lists(st.lists(st.text(max_size=6), max_size=30), max_size=12), replace_at=st.integers(0, 12))
def test_same_answers_as_a_dict(batches: list[list[str]], replace_at: int) -> None:
    index = KeyIndex()
    reference: dict[str, int] = {}
    for i, batch in enumerate(batches):
        if i == replace_at and reference:
            # drop every other key and renumber (as eviction does)
            kept = [k for k, _ in sorted(reference.items(), key=lambda kv: kv[1])][::2]
            reference = {k: n for n, k in enumerate(kept)}
            index.replace(pl.Series(kept, dtype=pl.String))
        keys = pl.Series(batch, dtype=pl.String)
        assert index.lookup(keys).tolist() == [reference.get(k, -1) for k in batch]
        fresh = list(dict.fromkeys(k for k in batch if k not in reference))
        rows = index.append(pl.Series(fresh, dtype=pl.String))
        for k, row in zip(fresh, rows.tolist(), strict=True):
            reference[k] = row
        assert len(index) == len(reference)
    everything = list(reference)
    assert index.lookup(pl.Series(everything, dtype=pl.String)).tolist() == [reference[k] for k in everything]


def test_delta_merges_into_the_base_as_it_grows() -> None:
    index = KeyIndex()
    for lo in range(0, 20_000, 500):
        index.lookup(pl.Series([f"k{lo}"]))  # keeps a base index alive between appends
        index.append(pl.Series([f"k{i}" for i in range(lo, lo + 500)]))
    # 20,000 keys went through the delta, which holds at most max(4096, base / 8): merged into
    # the base on the way (a linear merge of the two sorted indexes)
    assert len(index._delta[0]) <= 4096
    wanted = pl.Series([f"k{i}" for i in (0, 4095, 4096, 12_345, 19_999)] + ["k20000"])
    assert index.lookup(wanted).tolist() == [0, 4095, 4096, 12_345, 19_999, -1]
