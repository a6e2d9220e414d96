"""``IdLookup``, the raw-id -> row map of the serving steps: direct indexing where the ids are dense,
binary search where they are not, with the same answers."""

from __future__ import annotations

import numpy as np

from reels.models.serving.catalog import IdLookup


def _expected(keys: np.ndarray, values: np.ndarray, query: np.ndarray) -> tuple[dict, np.ndarray]:
    first: dict[int, object] = {}
    for key, value in zip(keys.tolist(), values.tolist(), strict=True):
        first.setdefault(key, value)
    return first, np.array([q in first for q in query.tolist()])


def test_dense_and_sparse_ids_answer_alike_with_the_first_value_of_a_repeated_key():
    rng = np.random.default_rng(0)
    dense_keys = 5_000_000 + rng.permutation(5_000)[:4_000]  # ids from an offset, as a catalog's
    sparse_keys = rng.integers(0, 2**62, 4_000)  # e.g. snowflake ids: no direct table
    for keys, direct in ((dense_keys, True), (sparse_keys, False)):
        keys = np.concatenate([keys, keys[:10]])  # repeats: the first value wins
        values = np.arange(len(keys)) * 10
        lookup = IdLookup(keys, values)
        assert (lookup.slots is not None) == direct
        query = np.concatenate(
            [
                keys[::7],
                [-1, -(2**40), 2**62 + 5, keys.max() + 1],
                5_000_000 + rng.integers(-500, 6_000, 300),
                [0, 2**63 - 1, -(2**63)],
            ]
        )
        got, found = lookup(query)
        first, known = _expected(keys, values, query)
        assert (found == known).all()
        assert got[found].tolist() == [first[q] for q in query[found].tolist()]


def test_an_empty_lookup_finds_nothing():
    got, found = IdLookup(np.array([], np.int64), np.array([], np.int64))(np.array([1, 2]))
    assert not found.any() and len(got) == 2
