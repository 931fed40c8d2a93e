"""signer.key_order: pairs sorted by key, stably, in memory or through spilled runs."""

from __future__ import annotations

import random
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from signer.key_order import PAIR_OVERHEAD, in_key_order


def random_pairs(count: int, seed: int, key_bytes: int = 3) -> list[tuple[bytes, bytes]]:
    rng = random.Random(seed)
    return [(rng.randbytes(rng.randint(1, key_bytes)), b"%d" % i) for i in range(count)]


def stably_sorted(pairs: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    return sorted(pairs, key=lambda pair: pair[0])  # list.sort is stable


def spilled_runs(tmp_path: Path) -> list[Path]:
    return sorted(tmp_path.glob("pki-edge-sort-*/run-*"))


def test_input_within_one_run_is_sorted_in_memory(tmp_path: Path) -> None:
    pairs = random_pairs(5000, seed=1)
    result = in_key_order(pairs, tmp_dir=tmp_path)
    assert next(result) == stably_sorted(pairs)[0]
    assert list(tmp_path.iterdir()) == []  # nothing spilled
    assert [stably_sorted(pairs)[0], *result] == stably_sorted(pairs)


def test_longer_input_is_merged_from_spilled_runs(tmp_path: Path) -> None:
    pairs = random_pairs(20000, seed=2)
    result = in_key_order(pairs, run_bytes=3000 * PAIR_OVERHEAD, tmp_dir=tmp_path)
    first = next(result)
    assert len(spilled_runs(tmp_path)) == 6  # 20,000 pairs in runs of under 3,000: six spilled, one kept
    assert [first, *result] == stably_sorted(pairs)
    assert list(tmp_path.iterdir()) == []  # the spill directory is gone once the result is read


def test_equal_keys_keep_their_input_order_across_runs(tmp_path: Path) -> None:
    # Ten keys, each in every run: the value says where the pair was in the input.
    pairs = [(b"k%d" % (i % 10), b"%06d" % i) for i in range(5000)]
    result = list(in_key_order(pairs, run_bytes=700 * PAIR_OVERHEAD, tmp_dir=tmp_path))
    assert [key for key, _ in result] == sorted(key for key, _ in pairs)
    for key in {key for key, _ in pairs}:
        values = [value for k, value in result if k == key]
        assert values == sorted(values) and len(values) == 500


def test_a_result_closed_early_removes_its_spill_directory(tmp_path: Path) -> None:
    result = in_key_order(random_pairs(3000, seed=3), run_bytes=500 * PAIR_OVERHEAD, tmp_dir=tmp_path)
    next(result)
    assert spilled_runs(tmp_path)
    result.close()
    assert list(tmp_path.iterdir()) == []


def test_empty_input(tmp_path: Path) -> None:
    assert list(in_key_order([], tmp_dir=tmp_path)) == []


def test_a_failing_input_removes_its_spill_directory(tmp_path: Path) -> None:
    def pairs() -> object:
        yield from random_pairs(2000, seed=4)
        raise OSError("the index file went away")

    result = in_key_order(pairs(), run_bytes=500 * PAIR_OVERHEAD, tmp_dir=tmp_path)  # type: ignore[arg-type]
    try:
        next(result)
    except OSError:
        pass
    else:
        raise AssertionError("the input's error was not raised")
    assert list(tmp_path.iterdir()) == []


pair_lists = st.lists(st.tuples(st.binary(max_size=4), st.binary(max_size=6)), max_size=300)


@settings(max_examples=150, deadline=None)
@given(pairs=pair_lists, run_pairs=st.integers(min_value=1, max_value=60))
def test_sorted_stably_whatever_the_run_size(pairs: list[tuple[bytes, bytes]], run_pairs: int) -> None:
    run_bytes = run_pairs * (PAIR_OVERHEAD + 10)
    assert list(in_key_order(pairs, run_bytes=run_bytes)) == stably_sorted(pairs)
