"""The teacher-shard codec: every layout round-trips within its stated rounding, σ included; a
shard of schema version 1 (no σ) still decodes."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from data_schemas.parquet_io import SCHEMA_VERSION_KEY
from data_schemas.teacher_shard import (
    LOGPROB_STEP,
    SPACE_COLUMN,
    SPACE_FLOOR,
    SPACE_STEP,
    TEACHER_SCHEMA_VERSION,
    TeacherSample,
    check_teacher_table,
    decode_table,
    encode_table,
    has_space_logprobs,
    read_teacher_shard,
    rounding_bound,
    write_teacher_shard,
)

K = 5


def make_sample(rng: np.random.Generator, n: int, name: str) -> TeacherSample:
    rows = max(n - 1, 0)
    ids = rng.integers(0, 50_000, n).astype(np.int32)
    # Top-k ids from another range than the token ids, so that placing a target never repeats an id.
    topk_ids = np.array(
        [rng.choice(50_000, K, replace=False) + 50_000 for _ in range(rows)], np.int32
    ).reshape(rows, K)
    # Gaps from tiny to > 255 steps (confident rows), so every code path of the layout is used.
    gaps = rng.exponential(1.0, (rows, K)) * np.where(rng.random((rows, 1)) < 0.2, 12.0, 1.0)
    topk_logprobs = (-np.cumsum(gaps, axis=1)).astype(np.float32)
    target = (topk_logprobs[:, -1] - rng.exponential(3.0, rows)).astype(np.float32)
    hit = rng.random(rows) < 0.6  # the actual next token is in the top-k on most rows
    slot = rng.integers(0, K, rows)
    topk_ids[hit, slot[hit]] = ids[1:][hit]
    target[hit] = topk_logprobs[hit, slot[hit]]
    return TeacherSample(
        name,
        ids,
        np.cumsum(rng.integers(0, 5, n)).astype(np.int32),
        topk_ids,
        topk_logprobs,
        target,
        1.5,
        0.8,
        0.9,
        1.1,
        truncated=n == 40,
    )


@pytest.fixture(scope="module")
def samples() -> list[TeacherSample]:
    rng = np.random.default_rng(0)
    return [make_sample(rng, n, f"s:{i}") for i, n in enumerate([40, 1, 0, 7, 2, 33])]


@pytest.mark.parametrize("layout", ["quant", "fp16"])
def test_round_trip_within_the_layout_bound(
    tmp_path: Path, samples: list[TeacherSample], layout: str
) -> None:
    entry = write_teacher_shard(samples, tmp_path / "shard-00000.parquet", layout=layout, top_k=K)
    assert entry.rows == len(samples) and entry.tokens == sum(s.n_tokens for s in samples)
    back = decode_table(read_teacher_shard(tmp_path / "shard-00000.parquet"))
    low = min(float(s.target_logprobs.min(initial=0)) for s in samples)
    bound = rounding_bound(layout, low)
    for s, b in zip(samples, back, strict=True):
        assert b.sample_id == s.sample_id and b.truncated == s.truncated and b.ce == pytest.approx(s.ce)
        for name in ("token_ids", "token_ends", "topk_ids"):
            np.testing.assert_array_equal(getattr(b, name), getattr(s, name))
        assert b.topk_logprobs.shape == s.topk_logprobs.shape and b.topk_logprobs.dtype == np.float32
        assert np.abs(b.topk_logprobs - s.topk_logprobs).max(initial=0) <= bound + 1e-6
        assert np.abs(b.target_logprobs - s.target_logprobs).max(initial=0) <= bound + 1e-6
        assert (np.diff(b.topk_logprobs, axis=1) <= 0).all()
    assert check_teacher_table(read_teacher_shard(tmp_path / "shard-00000.parquet")) == []
    if layout == "quant":
        assert bound == LOGPROB_STEP / 2 < 0.02


def test_bad_values_are_refused_naming_the_sample(samples: list[TeacherSample]) -> None:
    s = samples[0]
    broken = s.topk_logprobs.copy()
    broken[2, 1] = np.inf
    with pytest.raises(ValueError, match="sample s:0: topk_logprobs has values outside"):
        encode_table([TeacherSample(**{**s.__dict__, "topk_logprobs": broken})], top_k=K)
    unsorted = s.topk_logprobs[:, ::-1].copy()
    with pytest.raises(ValueError, match="sample s:0: topk_logprobs are not sorted"):
        encode_table([TeacherSample(**{**s.__dict__, "topk_logprobs": unsorted})], top_k=K)
    with pytest.raises(ValueError, match=r"need top-k arrays of shape \(39, 4\)"):
        encode_table([s], top_k=4)


def test_checker_finds_nan_and_unsorted_values(samples: list[TeacherSample]) -> None:
    table = encode_table(samples, layout="fp16", top_k=K)
    field = table.schema.field("topk_logprobs")
    offsets = table.column("topk_logprobs").combine_chunks().offsets

    def with_values(values: np.ndarray) -> pa.Table:
        column = pa.ListArray.from_arrays(offsets, pa.array(values, pa.float16()), type=field.type)
        return table.set_column(table.schema.get_field_index(field.name), field, column)

    values = pc.list_flatten(table.column("topk_logprobs")).to_numpy()
    nan = values.copy()
    nan[3] = np.nan  # inside sample s:0
    assert check_teacher_table(with_values(nan)) == ["sample s:0: NaN/inf logprobs"]
    unsorted = values.copy()
    start = 39 * K  # first row of sample s:3 (s:1 and s:2 have none)
    unsorted[start : start + 2] = unsorted[start : start + 2][::-1]
    assert check_teacher_table(with_values(unsorted)) == ["sample s:3: top-k logprobs not sorted descending"]


def test_other_schema_version_is_refused(tmp_path: Path, samples: list[TeacherSample]) -> None:
    table = encode_table(samples, top_k=K)
    path = tmp_path / "old.parquet"
    pq.write_table(table.replace_schema_metadata({**table.schema.metadata, SCHEMA_VERSION_KEY: b"0"}), path)
    with pytest.raises(RuntimeError, match=f"schema_version is 0, expected {TEACHER_SCHEMA_VERSION}"):
        read_teacher_shard(path)


def sampled_sample(rng: np.random.Generator, n: int, name: str, draws: int = 12) -> TeacherSample:
    """A row of drawn tokens as extraction stores it: distinct ids by count, padded with 0."""
    from data_schemas.teacher_shard import empirical_logprobs
    from stages.extract.draws import count_draws

    rows = max(n - 1, 0)
    drawn = rng.integers(0, 6, (rows, draws)) * 9_000 + rng.integers(0, 3, (rows, 1))
    ids, counts = count_draws(drawn)
    return TeacherSample(
        name,
        rng.integers(0, 50_000, n).astype(np.int32),
        np.arange(n, dtype=np.int32),
        ids,
        empirical_logprobs(counts),
        -rng.exponential(2.0, rows).astype(np.float32),
        1.5,
        0.8,
        0.9,
        1.1,
        truncated=False,
        draw_counts=counts,
    )


def test_sampled_layout_round_trips_counts_exactly(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    samples = [sampled_sample(rng, n, f"d:{i}") for i, n in enumerate([30, 1, 9])]
    entry = write_teacher_shard(samples, tmp_path / "s.parquet", layout="sampled", top_k=12)
    table = read_teacher_shard(tmp_path / "s.parquet")
    assert "topk_ids" not in table.column_names and "drawn_counts" in table.column_names
    decoded = decode_table(table)
    for a, b in zip(samples, decoded, strict=True):
        np.testing.assert_array_equal(a.topk_ids, b.topk_ids)
        np.testing.assert_array_equal(a.draw_counts, b.draw_counts)
        np.testing.assert_array_equal(a.topk_logprobs, b.topk_logprobs)
        assert np.abs(a.target_logprobs - b.target_logprobs).max(initial=0) <= LOGPROB_STEP / 2
        assert b.draws == 12 and (b.draw_counts.sum(axis=1) == 12).all()
    assert check_teacher_table(table) == [] and entry.rows == 3


def test_sampled_rows_that_do_not_sum_to_n_are_refused(tmp_path: Path) -> None:
    sample = sampled_sample(np.random.default_rng(4), 5, "bad")
    sample.draw_counts[0, 0] += 1
    with pytest.raises(ValueError, match="sum to 12"):
        encode_table([sample], layout="sampled", top_k=12)
    with pytest.raises(ValueError, match="draw counts"):
        encode_table([sampled_sample(np.random.default_rng(4), 5, "x")], layout="quant", top_k=12)


# -- σ: log P(the next token starts a new word) ---------------------------------------------------


def with_space(samples: list[TeacherSample], seed: int = 5) -> list[TeacherSample]:
    """The samples with log σ per row: near 0 (a word ends), mid-word values, one below the floor
    and one σ = 0 (−inf), so both clamps are used."""
    rng = np.random.default_rng(seed)
    out = []
    for s in samples:
        rows = len(s.target_logprobs)
        space = np.where(rng.random(rows) < 0.5, -rng.exponential(0.05, rows), -rng.exponential(8.0, rows))
        if rows > 3:
            space[:3] = [0.0, -80.0, -np.inf]
        out.append(dataclasses.replace(s, space_logprobs=space.astype(np.float32)))
    return out


@pytest.mark.parametrize("layout", ["quant", "fp16", "sampled"])
def test_space_logprobs_round_trip_within_half_a_step(
    tmp_path: Path, samples: list[TeacherSample], layout: str
) -> None:
    source = with_space(
        [sampled_sample(np.random.default_rng(6), n, f"d:{i}") for i, n in enumerate([30, 1, 9])]
        if layout == "sampled"
        else samples
    )
    width = 12 if layout == "sampled" else K
    path = tmp_path / "s.parquet"
    write_teacher_shard(source, path, layout=layout, top_k=width)
    assert has_space_logprobs(path)
    table = read_teacher_shard(path)
    for s, b in zip(source, decode_table(table), strict=True):
        assert b.space_logprobs.dtype == np.float32 and b.space_logprobs.shape == s.space_logprobs.shape
        expected = np.maximum(s.space_logprobs, SPACE_FLOOR)  # below the floor: stored as the floor
        assert np.abs(b.space_logprobs - expected).max(initial=0) <= SPACE_STEP / 2 + 1e-6
        assert (b.space_logprobs <= 0).all() and (b.space_logprobs >= SPACE_FLOOR).all()
    assert SPACE_STEP / 2 < 0.0005
    assert check_teacher_table(table) == []


def test_space_column_costs_at_most_two_bytes_per_row(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    samples = [make_sample(rng, 300, f"s:{i}") for i in range(40)]  # enough rows to swamp the footer
    bare = write_teacher_shard(samples, tmp_path / "bare.parquet", top_k=K)
    space = write_teacher_shard(with_space(samples), tmp_path / "space.parquet", top_k=K)
    rows = sum(len(s.target_logprobs) for s in samples)
    assert 1.0 < (space.bytes - bare.bytes) / rows <= 2.0


def test_a_version_1_shard_decodes_without_space_logprobs(
    tmp_path: Path, samples: list[TeacherSample]
) -> None:
    # Version 1 had the same columns as a version-2 shard without σ.
    table = encode_table(samples, top_k=K)
    assert SPACE_COLUMN not in table.column_names
    path = tmp_path / "v1.parquet"
    pq.write_table(table.replace_schema_metadata({**table.schema.metadata, SCHEMA_VERSION_KEY: b"1"}), path)
    assert not has_space_logprobs(path)
    back = decode_table(read_teacher_shard(path))
    assert [b.space_logprobs for b in back] == [None] * len(samples)
    np.testing.assert_array_equal(back[0].topk_ids, samples[0].topk_ids)
    assert check_teacher_table(read_teacher_shard(path)) == []


def test_bad_space_logprobs_are_refused_and_found(samples: list[TeacherSample]) -> None:
    good = with_space(samples)
    nan = good[0].space_logprobs.copy()
    nan[4] = np.nan
    with pytest.raises(ValueError, match="sample s:0: space_logprobs"):
        encode_table([dataclasses.replace(good[0], space_logprobs=nan)], top_k=K)
    positive = np.abs(good[0].space_logprobs)
    positive[4] = 0.25
    with pytest.raises(ValueError, match=r"must be ≤ 0"):
        encode_table([dataclasses.replace(good[0], space_logprobs=positive)], top_k=K)
    with pytest.raises(ValueError, match="sample s:1 has no space_logprobs while others"):
        encode_table([good[0], samples[1]], top_k=K)
    # A σ list one entry short in sample s:0 (the column's values shifted into s:3) is a fault.
    table = encode_table(good, top_k=K)
    column = table.column(SPACE_COLUMN).combine_chunks()
    offsets = column.offsets.to_numpy().copy()
    offsets[1:2] -= 1
    short = pa.ListArray.from_arrays(pa.array(offsets), column.values, type=column.type)
    field = table.schema.field(SPACE_COLUMN)
    damaged = table.set_column(table.schema.get_field_index(SPACE_COLUMN), field, short)
    faults = check_teacher_table(damaged)
    assert faults and faults[0].startswith("sample s:0: space_logprobs of shape (38,) for 39 rows")
