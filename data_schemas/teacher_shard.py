"""The teacher shard: one teacher's top-k next-token distributions over one corpus shard.

One row per corpus sample, same rows in the same order (docs/design.md §3.3). A sample of n teacher
tokens has n − 1 *rows* (row i = distribution of token i+1 given tokens ≤ i); the last token has
none. Two layouts hold the logprobs; the file's metadata says which, and ``decode_table`` turns
either back into plain arrays:

``quant`` (default; 22.6–24.6 bytes per token at k = 10 on the demo teachers, fp16 25.5–27.5;
    ``bench/extract_bench.py`` measures both):
    logprobs on a grid of ``LOGPROB_STEP`` = 1/32 nat, so every stored logprob is within 1/64 nat
    (0.0156) of the fp32 value. Per row the top-1 value is stored as −32·lp and the other k − 1
    as gaps to the previous rank (≥ 0: the top-k is sorted), rank-major within a sample (all
    rank-1 gaps, then all rank-2 gaps, …) because each rank has its own gap distribution. The
    actual next token's logprob is the logprob at its rank when it is in the top-k (78 % of rows
    on SmolLM2), so only its rank is stored there, and its own quantised value elsewhere.
        topk_lp_top    list<uint16> [rows]          round(−32 · topk_logprobs[:, 0])
        topk_lp_gaps   list<uint16> [rows·(k−1)]    rank-major gaps, in 1/32 nat
        target_rank    list<uint8>  [rows]          rank of token i+1 in the top-k, k if absent
        target_lp_miss list<uint16> [absent rows]   round(−32 · target) − topk_lp_top, absent rows
``fp16``: the plain columns, float16 (relative rounding 2⁻¹¹; 0.004 nat at |lp| < 16).
        topk_logprobs  list<float16> [rows·k], target_logprob list<float16> [rows]
``sampled`` (``extract.draws`` = N > 0; RS-KD, Anshumann et al. 2025): instead of the top-k, N
    tokens drawn per row from the teacher's full softmax (with replacement, seeded), stored as the
    distinct ids with their counts; the target's logprob on the 1/32 grid as in ``quant``.
        drawn_ids      list<int32>  [Σ widths]      distinct drawn ids, by count descending
        drawn_counts   list<uint8>  [Σ widths]      how often each was drawn (Σ per row = N)
        drawn_width    list<uint8>  [rows]          distinct ids of each row (≤ N)
        target_lp      list<uint16> [rows]          round(−32 · target_logprob)
    Decoded, such a shard has the same arrays as a top-k shard with k = N: row i's ``topk_ids``
    are its distinct drawn ids (padded with id 0), ``topk_logprobs`` the log of their empirical
    frequency count/N (−inf on padding) and ``draw_counts`` the counts — an unbiased estimate of
    the full distribution, where a top-k is a biased one.

σ (schema version 2; ALM's tokenisation-bias correction, Minixhofer et al. 2025): every layout may
    carry one more column, the teacher's probability that token i+1 starts a new word,
    σ_i = Σ_v p(v | tokens ≤ i) over the ids v whose text starts with a space, tab or newline, or
    that are special (``stages/align/token_text.space_mask``), summed over the full softmax.
    Stored as −log σ on a grid of ``SPACE_STEP`` = 1/1024 nat, so a decoded log σ is within
    1/2048 nat (0.0005) of the fp32 value; σ below e^−64 (``SPACE_FLOOR``) is stored as e^−64.
        space_lp       list<uint16> [rows]          min(round(−1024 · log σ), 65535)
    Decoded: ``TeacherSample.space_logprobs`` [rows] float32 = log σ. The column is absent (the
    field None) in shards of schema version 1 and in shards the vLLM backend wrote (its prompt
    logprobs are top-k only); such shards decode as before (``has_space_logprobs`` tells).

The top-k layouts keep ``token_ids``, ``token_ends`` and ``topk_ids`` as plain int32 lists (rows·k,
row-major) so that any Parquet reader sees real ids. Integer lists are written with Parquet's
BYTE_STREAM_SPLIT encoding (BPE ids are roughly frequency-ordered, so the high-byte streams are
nearly constant and zstd removes them) and the non-decreasing ``token_ends`` with delta encoding.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from data_schemas.atomic import atomic_path
from data_schemas.keys import sha256_file
from data_schemas.manifest import ShardEntry
from data_schemas.parquet_io import SCHEMA_VERSION_KEY, check_schema, with_version

TEACHER_SCHEMA_VERSION = 2
"""2 added the optional σ column ``space_lp``; nothing else changed."""
READABLE_VERSIONS = (1, 2)
"""Schema versions this code decodes: a version-1 shard is a version-2 shard without σ."""
LogprobLayout = Literal["quant", "fp16"]
"""Layouts of top-k shards (``extract.logprob_layout``)."""
LAYOUTS: tuple[LogprobLayout, ...] = get_args(LogprobLayout)
SAMPLED_LAYOUT = "sampled"
"""Layout of shards of drawn tokens (``extract.draws`` > 0)."""
ALL_LAYOUTS = (*LAYOUTS, SAMPLED_LAYOUT)
DEFAULT_LAYOUT = "quant"
MAX_DRAWS = 255
"""Most tokens drawn per row (counts are uint8)."""
LOGPROB_STEP = 1.0 / 32
"""Grid of the ``quant`` layout in nats: rounding error ≤ LOGPROB_STEP / 2 = 0.0156 nat."""
MIN_LOGPROB = -2000.0
"""Lowest logprob a shard can hold (uint16 on the 1/32 grid); a finite model never gets near it."""
LAYOUT_KEY = b"polyfuse.logprob_layout"
TOP_K_KEY = b"polyfuse.top_k"
STEP_KEY = b"polyfuse.logprob_step"
SPACE_COLUMN = "space_lp"
SPACE_STEP = 1.0 / 1024
"""Grid of the σ column in nats: a decoded log σ is within SPACE_STEP / 2 of the fp32 value."""
SPACE_FLOOR = -65535 * SPACE_STEP
"""Lowest log σ a shard holds (≈ −64 nats, the uint16 limit); smaller σ are stored as this."""
ZSTD_LEVEL = 19
"""Costs ≈ 25 µs per token to write (nothing next to the model) and ≈ 0.6 byte per token less
than zstd's default level; reading is as fast as at any level."""
ROW_GROUP_SAMPLES = 64

_SCORES = ("ce", "bits_per_byte", "topk_mass", "entropy_topk")


def _ints(name: str, item: pa.DataType | None = None) -> pa.Field:
    item = pa.int32() if item is None else item
    return pa.field(name, pa.list_(pa.field("element", item, nullable=False)), nullable=False)


def teacher_schema(
    layout: str = DEFAULT_LAYOUT,
    top_k: int = 10,
    *,
    space: bool = False,
    version: int = TEACHER_SCHEMA_VERSION,
) -> pa.Schema:
    """The Arrow schema of a teacher shard written with ``layout`` and ``top_k`` (for
    ``sampled``: the draws per row), with the σ column when ``space``; ``version`` an older
    readable schema version to check an old shard against."""
    assert version in READABLE_VERSIONS and not (space and version < 2), (version, space)
    if layout not in ALL_LAYOUTS:
        raise ValueError(
            f"logprob layout must be one of {LAYOUTS}, got {layout!r}: fix extract.logprob_layout"
        )
    support_fields = [_ints("topk_ids")]  # [rows·k], row i = the k most likely ids of token i+1
    if layout == SAMPLED_LAYOUT:
        support_fields = [
            _ints("drawn_ids"),
            _ints("drawn_counts", pa.uint8()),
            _ints("drawn_width", pa.uint8()),
        ]
        logprob_fields = [_ints("target_lp", pa.uint16())]
    elif layout == "quant":
        logprob_fields = [
            _ints("topk_lp_top", pa.uint16()),
            _ints("topk_lp_gaps", pa.uint16()),
            _ints("target_rank", pa.uint8()),
            _ints("target_lp_miss", pa.uint16()),
        ]
    else:
        logprob_fields = [_ints("topk_logprobs", pa.float16()), _ints("target_logprob", pa.float16())]
    schema = pa.schema(
        [
            pa.field("sample_id", pa.string(), nullable=False),
            _ints("token_ids"),  # the teacher's own tokenisation of the sample's text
            _ints("token_ends"),  # end char offset of each token (stages/tokenization.py)
            *support_fields,
            *logprob_fields,
            *([_ints(SPACE_COLUMN, pa.uint16())] if space else []),
            *(pa.field(name, pa.float32(), nullable=False) for name in _SCORES),
            pa.field("n_tokens", pa.int32(), nullable=False),
            pa.field("truncated", pa.bool_(), nullable=False),
        ]
    )
    schema = with_version(schema, kind="teacher", version=version)
    return schema.with_metadata(
        {
            **schema.metadata,
            LAYOUT_KEY: layout.encode(),
            TOP_K_KEY: str(top_k).encode(),
            STEP_KEY: repr(LOGPROB_STEP).encode(),
        }
    )


@dataclass(frozen=True)
class TeacherSample:
    """One row of a teacher shard in plain form: what is encoded, and what decoding gives back.

    token_ids, token_ends: [n] int32. topk_ids: [n − 1, k] int32. topk_logprobs: [n − 1, k]
    float32, sorted descending. target_logprobs: [n − 1] float32.
    draw_counts: None for a top-k shard; for a ``sampled`` one [n − 1, N] uint8, how often each
    ``topk_ids`` entry was drawn (0 on padding), with ``topk_logprobs`` = log(count / N).
    space_logprobs: [n − 1] float32 log σ (≤ 0; module docstring), or None where the shard has no
    σ column. Every sample of one shard has it, or none.
    """

    sample_id: str
    token_ids: np.ndarray
    token_ends: np.ndarray
    topk_ids: np.ndarray
    topk_logprobs: np.ndarray
    target_logprobs: np.ndarray
    ce: float
    bits_per_byte: float
    topk_mass: float
    entropy_topk: float
    truncated: bool
    draw_counts: np.ndarray | None = None
    space_logprobs: np.ndarray | None = None

    @property
    def n_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def draws(self) -> int:
        """N, the tokens drawn per row of a sampled shard; 0 for a top-k shard."""
        return self.topk_ids.shape[1] if self.draw_counts is not None else 0


def empirical_logprobs(counts: np.ndarray) -> np.ndarray:
    """[rows, N] counts → log(count / N) as float32, −inf where the count is 0."""
    counts = np.asarray(counts)
    with np.errstate(divide="ignore"):
        return np.log(counts / max(counts.shape[-1], 1)).astype(np.float32)


# -- encoding ------------------------------------------------------------------------------------


def _list(values: np.ndarray, lengths: list[int] | np.ndarray, item: pa.DataType) -> pa.ListArray:
    offsets = np.zeros(len(lengths) + 1, np.int32)
    np.cumsum(lengths, out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(np.asarray(values), item))


def _quantise(logprobs: np.ndarray) -> np.ndarray:
    return np.rint(-logprobs.astype(np.float64) / LOGPROB_STEP).astype(np.int64)


def _quant_columns(samples: list[TeacherSample], top_k: int) -> dict[str, pa.Array]:
    tops, gaps, ranks, misses, n_misses = [], [], [], [], []
    for s in samples:
        q = _quantise(s.topk_logprobs.reshape(-1, top_k))
        q_target = _quantise(s.target_logprobs)
        # The target's rank: where its id sits in the top-k *and* its value is that slot's value
        # (both come from one log-softmax in every backend; the check keeps a backend that
        # disagrees with itself from being rounded beyond the bound).
        hit = (s.topk_ids == s.token_ids[1:, None]) & (q == q_target[:, None])
        rank = np.where(hit.any(axis=1), hit.argmax(axis=1), top_k)
        tops.append(q[:, 0])
        gaps.append(np.diff(q, axis=1).T.ravel())  # rank-major: all rank-1 gaps first
        ranks.append(rank)
        absent = rank == top_k
        misses.append(q_target[absent] - q[absent, 0])
        n_misses.append(int(absent.sum()))
    rows = [max(s.n_tokens - 1, 0) for s in samples]
    return {
        "topk_lp_top": _list(_concat(tops, np.uint16), rows, pa.uint16()),
        "topk_lp_gaps": _list(_concat(gaps, np.uint16), [r * (top_k - 1) for r in rows], pa.uint16()),
        "target_rank": _list(_concat(ranks, np.uint8), rows, pa.uint8()),
        "target_lp_miss": _list(_concat(misses, np.uint16), n_misses, pa.uint16()),
    }


def _sampled_columns(samples: list[TeacherSample], draws: int) -> dict[str, pa.Array]:
    ids, counts, widths = [], [], []
    for s in samples:
        present = s.draw_counts > 0
        ids.append(s.topk_ids[present])  # row-major: each row's distinct ids, by count descending
        counts.append(s.draw_counts[present])
        widths.append(present.sum(axis=1))
    rows = [max(s.n_tokens - 1, 0) for s in samples]
    entries = [int(w.sum()) for w in widths]
    targets = [_quantise(s.target_logprobs) for s in samples]
    return {
        "drawn_ids": _list(_concat(ids, np.int32), entries, pa.int32()),
        "drawn_counts": _list(_concat(counts, np.uint8), entries, pa.uint8()),
        "drawn_width": _list(_concat(widths, np.uint8), rows, pa.uint8()),
        "target_lp": _list(_concat(targets, np.uint16), rows, pa.uint16()),
    }


def _concat(parts: list[np.ndarray], dtype: type) -> np.ndarray:
    return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype)


def quantise_space(space_logprobs: np.ndarray) -> np.ndarray:
    """[rows] log σ (≤ 0, −inf allowed) → the stored uint16 −log σ / SPACE_STEP, floored at
    SPACE_FLOOR."""
    q = np.rint(-np.asarray(space_logprobs, np.float64) / SPACE_STEP)
    return np.minimum(q, -SPACE_FLOOR / SPACE_STEP).astype(np.uint16)


def _space_column(samples: list[TeacherSample]) -> pa.Array | None:
    """The σ column, or None when no sample has σ (``ValueError`` when only some have)."""
    present = [s.space_logprobs is not None for s in samples]
    if not any(present):
        return None
    if not all(present):
        missing = next(s.sample_id for s, p in zip(samples, present, strict=True) if not p)
        raise ValueError(
            f"sample {missing} has no space_logprobs while others of the shard have: a backend "
            "returns σ for every row or for none"
        )
    values = _concat([quantise_space(s.space_logprobs) for s in samples], np.uint16)
    return _list(values, [len(s.space_logprobs) for s in samples], pa.uint16())


def _check_space(s: TeacherSample, rows: int) -> None:
    space = s.space_logprobs
    if space is None:
        return
    if space.shape != (rows,):
        raise ValueError(
            f"sample {s.sample_id}: {s.n_tokens} tokens need space_logprobs of shape ({rows},), got {space.shape}"
        )
    if space.size and (np.isnan(space).any() or space.max() > 0):
        raise ValueError(
            f"sample {s.sample_id}: space_logprobs (log σ) must be ≤ 0 and not NaN, got max "
            f"{np.nanmax(space) if not np.isnan(space).all() else 'NaN'}: the backend must clamp log σ at 0"
        )


def _check_encodable(s: TeacherSample, top_k: int, layout: str) -> None:
    rows = max(s.n_tokens - 1, 0)
    _check_space(s, rows)
    if (layout == SAMPLED_LAYOUT) != (s.draw_counts is not None):
        raise ValueError(
            f"sample {s.sample_id}: a {layout} shard needs "
            f"{'draw counts' if layout == SAMPLED_LAYOUT else 'top-k rows without draw counts'}: "
            "write drawn tokens with layout='sampled' and top-k rows with 'quant' or 'fp16'"
        )
    if s.draw_counts is not None:
        counts = s.draw_counts
        if counts.shape != (rows, top_k) or s.topk_ids.shape != (rows, top_k):
            raise ValueError(
                f"sample {s.sample_id}: {s.n_tokens} tokens need draws of shape ({rows}, {top_k}), "
                f"got ids {s.topk_ids.shape} and counts {counts.shape}"
            )
        if rows and (counts.sum(axis=1) != top_k).any():
            raise ValueError(f"sample {s.sample_id}: the draw counts of a row must sum to {top_k}")
        values = s.target_logprobs
        if values.size and not (
            np.isfinite(values).all() and values.min() >= MIN_LOGPROB and values.max() <= 0
        ):
            raise ValueError(f"sample {s.sample_id}: target_logprobs outside [{MIN_LOGPROB}, 0] or NaN/inf")
        return
    if (
        s.topk_ids.shape != (rows, top_k)
        or s.topk_logprobs.shape != (rows, top_k)
        or s.target_logprobs.shape != (rows,)
    ):
        raise ValueError(
            f"sample {s.sample_id}: {s.n_tokens} tokens need top-k arrays of shape ({rows}, {top_k}) and "
            f"targets of ({rows},), got {s.topk_ids.shape}, {s.topk_logprobs.shape}, {s.target_logprobs.shape}"
        )
    for name in ("topk_logprobs", "target_logprobs"):
        values = getattr(s, name)
        if values.size and not (
            np.isfinite(values).all() and values.min() >= MIN_LOGPROB and values.max() <= 0
        ):
            raise ValueError(
                f"sample {s.sample_id}: {name} has values outside [{MIN_LOGPROB}, 0] or NaN/inf "
                f"(min {np.nanmin(values)}, max {np.nanmax(values)}): the model's output is broken"
            )
    if rows and (np.diff(s.topk_logprobs, axis=1) > 0).any():
        raise ValueError(f"sample {s.sample_id}: topk_logprobs are not sorted descending in every row")


def encode_table(samples: list[TeacherSample], *, layout: str = DEFAULT_LAYOUT, top_k: int) -> pa.Table:
    """The Arrow table of a teacher shard (``ValueError`` naming the sample on bad values); with
    the σ column when the samples carry ``space_logprobs``."""
    for s in samples:
        _check_encodable(s, top_k, layout)
    space = _space_column(samples)
    schema = teacher_schema(layout, top_k, space=space is not None)
    rows = [max(s.n_tokens - 1, 0) for s in samples]
    n_tokens = [s.n_tokens for s in samples]
    columns: dict[str, pa.Array] = {
        "sample_id": pa.array([s.sample_id for s in samples], pa.string()),
        "token_ids": _list(_concat([s.token_ids for s in samples], np.int32), n_tokens, pa.int32()),
        "token_ends": _list(_concat([s.token_ends for s in samples], np.int32), n_tokens, pa.int32()),
    }
    if layout == SAMPLED_LAYOUT:
        columns.update(_sampled_columns(samples, top_k))
    else:
        columns["topk_ids"] = _list(
            _concat([s.topk_ids.ravel() for s in samples], np.int32), [r * top_k for r in rows], pa.int32()
        )
    if layout == "quant":
        columns.update(_quant_columns(samples, top_k))
    elif layout == "fp16":
        lps = _concat([s.topk_logprobs.ravel() for s in samples], np.float16)
        columns["topk_logprobs"] = _list(lps, [r * top_k for r in rows], pa.float16())
        targets = _concat([s.target_logprobs for s in samples], np.float16)
        columns["target_logprob"] = _list(targets, rows, pa.float16())
    if space is not None:
        columns[SPACE_COLUMN] = space
    for name in _SCORES:
        columns[name] = pa.array([getattr(s, name) for s in samples], pa.float32())
    columns["n_tokens"] = pa.array(n_tokens, pa.int32())
    columns["truncated"] = pa.array([s.truncated for s in samples], pa.bool_())
    return pa.Table.from_pydict(columns, schema=schema)


def write_teacher_shard(
    samples: list[TeacherSample], path: str | os.PathLike[str], *, layout: str = DEFAULT_LAYOUT, top_k: int
) -> ShardEntry:
    """Encode ``samples`` and write them to ``path`` atomically; return the shard's entry
    (``tokens`` = teacher tokens, the unit of bytes per token)."""
    table = encode_table(samples, layout=layout, top_k=top_k)
    path = Path(path)
    integer_lists = [
        f.name for f in table.schema if pa.types.is_list(f.type) and pa.types.is_integer(f.type.value_type)
    ]
    encodings = {f"{name}.list.element": "BYTE_STREAM_SPLIT" for name in integer_lists}
    encodings["token_ends.list.element"] = "DELTA_BINARY_PACKED"
    encodings.update({name: "BYTE_STREAM_SPLIT" for name in _SCORES})
    with atomic_path(path) as tmp:
        pq.write_table(
            table,
            tmp,
            compression="zstd",
            compression_level=ZSTD_LEVEL,
            row_group_size=ROW_GROUP_SAMPLES,
            use_dictionary=False,
            column_encoding=encodings,
        )
    return ShardEntry(
        name=path.name,
        rows=table.num_rows,
        tokens=int(sum(s.n_tokens for s in samples)),
        bytes=path.stat().st_size,
        sha256=sha256_file(path),
    )


# -- reading and decoding ------------------------------------------------------------------------


def shard_layout(schema: pa.Schema) -> tuple[str, int]:
    """(layout, top_k) recorded in a teacher shard's schema metadata."""
    meta = schema.metadata or {}
    try:
        layout, top_k = meta[LAYOUT_KEY].decode(), int(meta[TOP_K_KEY])
        if layout == "quant" and float(meta[STEP_KEY]) != LOGPROB_STEP:
            raise ValueError(f"logprob step {meta[STEP_KEY].decode()}")
    except (KeyError, ValueError) as e:
        raise RuntimeError(
            f"teacher shard metadata lacks or has a bad layout entry ({e}): re-extract it"
        ) from e
    if layout not in ALL_LAYOUTS:
        raise RuntimeError(
            f"teacher shard has unknown logprob layout {layout!r}: upgrade polyfuse or re-extract"
        )
    return layout, top_k


def _file_schema(path: str | os.PathLike[str]) -> pa.Schema:
    try:
        return pq.read_schema(path)
    except (OSError, pa.ArrowInvalid) as e:
        raise RuntimeError(f"{path} is not a readable Parquet file ({e}): delete it and re-extract") from e


def read_teacher_shard(path: str | os.PathLike[str], columns: list[str] | None = None) -> pa.Table:
    """Read a teacher shard after checking its kind, schema version (any of
    ``READABLE_VERSIONS``), layout and columns."""
    schema = _file_schema(path)
    meta = schema.metadata or {}
    if LAYOUT_KEY not in meta:  # not a teacher shard of this version: let the standard check say so
        check_schema(path, teacher_schema())
    layout, top_k = shard_layout(schema)
    found = meta.get(SCHEMA_VERSION_KEY, b"").decode()
    readable = {str(v): v for v in READABLE_VERSIONS}
    # An unreadable version is checked against the current one, whose check names both.
    check_schema(path, teacher_schema(layout, top_k, version=readable.get(found, TEACHER_SCHEMA_VERSION)))
    return pq.read_table(path, columns=columns)


def has_space_logprobs(path: str | os.PathLike[str]) -> bool:
    """Whether the teacher shard at ``path`` carries σ (its footer only; module docstring)."""
    return SPACE_COLUMN in _file_schema(path).names


def _flat(table: pa.Table, name: str, dtype: type) -> tuple[np.ndarray, np.ndarray]:
    """(values, offsets) of a list column over the whole table."""
    column = table.column(name).combine_chunks()
    lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
    offsets = np.zeros(len(lengths) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return column.flatten().to_numpy(zero_copy_only=False).astype(dtype, copy=False), offsets


def _space_arrays(table: pa.Table) -> list[np.ndarray | None]:
    """Per sample its decoded log σ [rows] float32, or None for each when the table has no σ."""
    if SPACE_COLUMN not in table.column_names:
        return [None] * table.num_rows
    q, offsets = _flat(table, SPACE_COLUMN, np.int64)
    space = (q * -SPACE_STEP).astype(np.float32)
    return [space[offsets[b] : offsets[b + 1]] for b in range(table.num_rows)]


def decode_table(table: pa.Table) -> list[TeacherSample]:
    """Every row of a teacher-shard table as plain arrays (the inverse of ``encode_table``, up to
    the layout's rounding). The table must carry its schema metadata (``read_teacher_shard``)."""
    layout, top_k = shard_layout(table.schema)
    if layout == SAMPLED_LAYOUT:
        return _decode_sampled(table, top_k)
    ids, id_off = _flat(table, "token_ids", np.int32)
    ends, _ = _flat(table, "token_ends", np.int32)
    topk_ids, topk_off = _flat(table, "topk_ids", np.int32)
    if layout == "quant":
        top, row_off = _flat(table, "topk_lp_top", np.int64)
        gaps, gap_off = _flat(table, "topk_lp_gaps", np.int64)
        rank, _ = _flat(table, "target_rank", np.int64)
        miss, miss_off = _flat(table, "target_lp_miss", np.int64)
    else:
        lps16, _ = _flat(table, "topk_logprobs", np.float32)
        target16, row_off = _flat(table, "target_logprob", np.float32)
    scores = {name: table.column(name).to_numpy() for name in _SCORES}
    truncated = table.column("truncated").to_numpy(zero_copy_only=False)
    sample_ids = table.column("sample_id").to_pylist()
    space = _space_arrays(table)
    out = []
    for b, sample_id in enumerate(sample_ids):
        a, z = row_off[b], row_off[b + 1]
        sample_topk_ids = topk_ids[topk_off[b] : topk_off[b + 1]].reshape(-1, top_k)
        if layout == "quant":
            q = np.empty((z - a, top_k), np.int64)
            q[:, 0] = top[a:z]
            q[:, 1:] = gaps[gap_off[b] : gap_off[b + 1]].reshape(top_k - 1, -1).T
            np.cumsum(q, axis=1, out=q)
            topk_lps = (q * -LOGPROB_STEP).astype(np.float32)
            rows_rank = rank[a:z]
            absent = rows_rank == top_k
            q_target = np.empty(z - a, np.int64)
            q_target[~absent] = q[~absent, rows_rank[~absent]]
            q_target[absent] = miss[miss_off[b] : miss_off[b + 1]] + q[absent, 0]
            target = (q_target * -LOGPROB_STEP).astype(np.float32)
        else:
            topk_lps = lps16[topk_off[b] : topk_off[b + 1]].reshape(-1, top_k)
            target = target16[a:z]
        out.append(
            TeacherSample(
                sample_id=sample_id,
                token_ids=ids[id_off[b] : id_off[b + 1]],
                token_ends=ends[id_off[b] : id_off[b + 1]],
                topk_ids=sample_topk_ids,
                topk_logprobs=topk_lps,
                target_logprobs=target,
                **{name: float(scores[name][b]) for name in _SCORES},
                truncated=bool(truncated[b]),
                space_logprobs=space[b],
            )
        )
    return out


def _decode_sampled(table: pa.Table, draws: int) -> list[TeacherSample]:
    """``decode_table`` for the ``sampled`` layout: distinct drawn ids padded to [rows, N]."""
    ids, id_off = _flat(table, "token_ids", np.int32)
    ends, _ = _flat(table, "token_ends", np.int32)
    drawn, drawn_off = _flat(table, "drawn_ids", np.int32)
    counts, _ = _flat(table, "drawn_counts", np.uint8)
    widths, row_off = _flat(table, "drawn_width", np.int64)
    target_q, _ = _flat(table, "target_lp", np.int64)
    scores = {name: table.column(name).to_numpy() for name in _SCORES}
    truncated = table.column("truncated").to_numpy(zero_copy_only=False)
    space = _space_arrays(table)
    out = []
    for b, sample_id in enumerate(table.column("sample_id").to_pylist()):
        a, z = row_off[b], row_off[b + 1]
        row_widths = widths[a:z]
        if (row_widths > draws).any() or row_widths.sum() != drawn_off[b + 1] - drawn_off[b]:
            raise ValueError(f"sample {sample_id}: drawn_width does not match drawn_ids")
        # Entry e of the sample's flat lists sits in row r at column c (rows are consecutive).
        row_of = np.repeat(np.arange(z - a), row_widths)
        col_of = np.arange(len(row_of)) - np.repeat(np.cumsum(row_widths) - row_widths, row_widths)
        sample_ids = np.zeros((z - a, draws), np.int32)
        sample_counts = np.zeros((z - a, draws), np.uint8)
        sample_ids[row_of, col_of] = drawn[drawn_off[b] : drawn_off[b + 1]]
        sample_counts[row_of, col_of] = counts[drawn_off[b] : drawn_off[b + 1]]
        out.append(
            TeacherSample(
                sample_id=sample_id,
                token_ids=ids[id_off[b] : id_off[b + 1]],
                token_ends=ends[id_off[b] : id_off[b + 1]],
                topk_ids=sample_ids,
                topk_logprobs=empirical_logprobs(sample_counts),
                target_logprobs=(target_q[a:z] * -LOGPROB_STEP).astype(np.float32),
                **{name: float(scores[name][b]) for name in _SCORES},
                truncated=bool(truncated[b]),
                draw_counts=sample_counts,
                space_logprobs=space[b],
            )
        )
    return out


def rounding_bound(layout: str, min_logprob: float) -> float:
    """Largest rounding error (nats) the layout can add to a logprob ≥ ``min_logprob``."""
    if layout in ("quant", SAMPLED_LAYOUT):
        return LOGPROB_STEP / 2
    # float16: 10 mantissa bits, half a unit in the last place of the largest magnitude.
    return 2.0 ** (math.floor(math.log2(max(abs(min_logprob), 2**-14))) - 11)


def check_teacher_table(table: pa.Table) -> list[str]:
    """Faults in the values of a teacher-shard table (empty: sound). Structure first (list
    lengths, ranks), then NaN/inf, sortedness of the top-k, the σ column's length and range, and
    monotone token ends."""
    try:
        _, top_k = shard_layout(table.schema)
        samples = decode_table(table)
    except (RuntimeError, ValueError, IndexError) as e:
        return [f"undecodable ({type(e).__name__}: {e})"]
    faults = []
    n_tokens = table.column("n_tokens").to_numpy()
    for s, n in zip(samples, n_tokens, strict=True):
        rows = max(s.n_tokens - 1, 0)
        problems = []
        if n != s.n_tokens or len(s.token_ends) != s.n_tokens:
            problems.append(f"n_tokens {n} but {s.n_tokens} token ids and {len(s.token_ends)} ends")
        if s.topk_ids.shape != (rows, top_k) or s.target_logprobs.shape != (rows,):
            problems.append(
                f"top-k shape {s.topk_ids.shape} / targets {s.target_logprobs.shape}, expected ({rows}, {top_k})"
            )
        elif s.draw_counts is not None:
            if not np.isfinite(s.target_logprobs).all():
                problems.append("NaN/inf logprobs")
            if rows and (s.draw_counts.astype(np.int64).sum(axis=1) != top_k).any():
                problems.append(f"draw counts of a row do not sum to {top_k}")
        elif not (np.isfinite(s.topk_logprobs).all() and np.isfinite(s.target_logprobs).all()):
            problems.append("NaN/inf logprobs")
        elif rows and (np.diff(s.topk_logprobs, axis=1) > 0).any():
            problems.append("top-k logprobs not sorted descending")
        space = s.space_logprobs
        if space is not None and (
            space.shape != (rows,)
            or (rows and not (np.isfinite(space).all() and space.min() >= SPACE_FLOOR and space.max() <= 0))
        ):
            problems.append(
                f"space_logprobs of shape {space.shape} for {rows} rows, or outside [{SPACE_FLOOR:.1f}, 0]"
            )
        if (np.diff(s.token_ends) < 0).any():
            problems.append("token_ends decrease")
        if rows and not all(math.isfinite(getattr(s, name)) for name in _SCORES):
            problems.append("NaN/inf scores")
        faults.extend(f"sample {s.sample_id}: {p}" for p in problems)
    return faults
