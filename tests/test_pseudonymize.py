"""user_key = first 32 hex chars of HMAC-SHA256(secret, user_id) (SPEC §3), and its cache."""

from __future__ import annotations

import hashlib
import hmac

import polars as pl
import pytest

from operators.pseudonymize import Pseudonymizer, user_key

SECRET = b"test-secret"


def reference(secret: bytes, user_id: str) -> str:
    """Independent HMAC: the textbook construction with hashlib, no `hmac` module."""
    block = 64
    key = secret if len(secret) <= block else hashlib.sha256(secret).digest()
    key = key.ljust(block, b"\0")
    inner = hashlib.sha256(bytes(b ^ 0x36 for b in key) + user_id.encode("utf-8")).digest()
    return hashlib.sha256(bytes(b ^ 0x5C for b in key) + inner).hexdigest()[:32]


def test_user_key_matches_textbook_hmac_and_stdlib() -> None:
    for uid in ["u1", "learner-42", "ünïcødé 学生", "x" * 256]:
        expected = reference(SECRET, uid)
        assert user_key(SECRET, uid) == expected
        assert expected == hmac.new(SECRET, uid.encode(), hashlib.sha256).hexdigest()[:32]
        assert len(expected) == 32


def test_user_key_fixed_vector() -> None:
    # RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?"
    # HMAC-SHA256 = 5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843
    assert user_key(b"Jefe", "what do ya want for nothing?") == "5bdcc146bf60754e6a042426089575c7"


def test_keys_vectorised_nulls_and_order() -> None:
    ids = pl.Series(["b", "a", None, "b", "c", "a"], dtype=pl.String)
    out = Pseudonymizer(SECRET).keys(ids)
    assert out.dtype == pl.String
    assert out.to_list() == [
        user_key(SECRET, "b"),
        user_key(SECRET, "a"),
        None,
        user_key(SECRET, "b"),
        user_key(SECRET, "c"),
        user_key(SECRET, "a"),
    ]


def test_keys_all_null_and_empty() -> None:
    p = Pseudonymizer(SECRET)
    assert p.keys(pl.Series([None, None], dtype=pl.String)).to_list() == [None, None]
    assert p.keys(pl.Series([], dtype=pl.String)).len() == 0


def test_cache_one_hmac_per_distinct_id_across_batches() -> None:
    p = Pseudonymizer(SECRET)
    p.keys(pl.Series(["a", "b", "a", "a"]))
    assert p.cache_size == 2
    p.keys(pl.Series(["b", "c"]))
    assert p.cache_size == 3  # "b" came from the cache


def test_cache_is_bounded_and_eviction_keeps_keys_right() -> None:
    p = Pseudonymizer(SECRET, max_cache=10)
    ids = [f"user-{i}" for i in range(25)]
    out = p.keys(pl.Series(ids))
    assert out.to_list() == [user_key(SECRET, uid) for uid in ids]
    assert p.cache_size <= 10
    # evicted ids are recomputed, not wrong
    again = p.keys(pl.Series(ids[:3]))
    assert again.to_list() == [user_key(SECRET, uid) for uid in ids[:3]]
    assert p.cache_size <= 10


def test_rejects_empty_secret_and_bad_bound() -> None:
    with pytest.raises(ValueError, match="secret"):
        Pseudonymizer(b"")
    with pytest.raises(ValueError, match="max_cache"):
        Pseudonymizer(SECRET, max_cache=0)
