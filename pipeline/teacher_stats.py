"""Per-sample scores of teacher caches as polars tables: what ``extract`` reports at the end,
writes to ``stats.json``, and ``inspect`` shows. Means are row-weighted (each sample counts with
its number of rows, n_tokens − 1), so a domain's ce is its mean next-token loss."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow.parquet as pq

from data_schemas.manifest import read_entries, read_manifest

SAMPLE_COLUMNS = ["sample_id", "n_tokens", "ce", "bits_per_byte", "topk_mass", "entropy_topk", "truncated"]


def corpus_dir_of(teacher_dir: Path, corpus_key: str) -> Path:
    """The corpus a teacher directory (``<cache>/teachers/<teacher_key>/<corpus_key>``) was run on."""
    return teacher_dir.parents[2] / "corpus" / corpus_key


def corpus_shard_of(teacher_dir: Path, header: dict[str, Any], shard: str) -> Path:
    return corpus_dir_of(teacher_dir, header["corpus_key"]) / header.get("corpus_split", "train") / shard


def teacher_sample_frame(teacher_dir: Path) -> pl.DataFrame:
    """One row per sample of every finished shard: shard, domain, tokens and scores."""
    manifest = read_manifest(teacher_dir)
    frames = []
    for entry in read_entries(teacher_dir):
        frame = pl.from_arrow(pq.read_table(teacher_dir / entry.name, columns=SAMPLE_COLUMNS))
        corpus_shard = corpus_shard_of(teacher_dir, manifest.header, entry.name)
        if corpus_shard.exists():
            domains = pl.from_arrow(pq.read_table(corpus_shard, columns=["sample_id", "domain"]))
            frame = frame.join(domains, on="sample_id", how="left", maintain_order="left")
        else:
            frame = frame.with_columns(domain=pl.lit("?"))
        frames.append(frame.with_columns(shard=pl.lit(entry.name)))
    if not frames:
        return pl.DataFrame(schema={"shard": pl.String, "domain": pl.String, "n_tokens": pl.Int32})
    return pl.concat(frames)


def _means(frame: pl.DataFrame) -> list[pl.Expr]:
    """Token-weighted (row-weighted) means of the scores, ignoring samples without rows."""
    rows = (pl.col("n_tokens") - 1).clip(lower_bound=0)
    has = pl.col("ce").is_not_nan()
    weight = pl.when(has).then(rows).otherwise(0)
    return [
        pl.len().alias("samples"),
        pl.col("n_tokens").sum().alias("tokens"),
        *(
            ((pl.when(has).then(pl.col(c)).otherwise(0) * weight).sum() / weight.sum()).alias(c)
            for c in ("ce", "bits_per_byte", "topk_mass", "entropy_topk")
        ),
        pl.col("truncated").sum().alias("truncated"),
    ]


def domain_table(frame: pl.DataFrame) -> pl.DataFrame:
    if frame.is_empty():
        return frame
    return frame.group_by("domain").agg(_means(frame)).sort("domain")


def teacher_summary(frame: pl.DataFrame, teacher_dir: Path) -> dict[str, Any]:
    """Totals, per-domain means and bytes per token of a teacher directory (for stats.json)."""
    manifest = read_manifest(teacher_dir)
    totals = manifest.totals
    overall = frame.select(_means(frame)).to_dicts()[0] if not frame.is_empty() else {}
    return {
        "teacher": manifest.header.get("teacher"),
        "teacher_key": manifest.key,
        "corpus_key": manifest.header.get("corpus_key"),
        "complete": manifest.complete,
        "shards": f"{totals['shards']}/{len(manifest.planned)}",
        "bytes": totals["bytes"],
        "bytes_per_token": round(totals["bytes"] / totals["tokens"], 2) if totals["tokens"] else None,
        **{k: round_stat(v) for k, v in overall.items()},
        "per_domain": {
            row.pop("domain"): {k: round_stat(v) for k, v in row.items()}
            for row in domain_table(frame).to_dicts()
        },
    }


def round_stat(value: Any) -> Any:
    """A statistic as reports show it: floats to 4 places, NaN (no rows) as None."""
    if isinstance(value, float):
        return None if math.isnan(value) else round(value, 4)
    return value
