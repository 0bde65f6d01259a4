"""Plain logprobs for every reader: the decoded table, ``inspect --decode`` and the polars, duckdb
and ``datasets`` snippets of docs/reading-shards.md, run as written on a fake-backend cache."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_schemas.plain_reader import TOP_K_KEY, plain_table, read_plain
from data_schemas.teacher_shard import LOGPROB_STEP, TeacherSample, decode_table, read_teacher_shard
from pipeline.config import load_config
from pipeline.extraction import run_extraction
from pipeline.inspection import decode_path
from tests.pipeline.test_extraction import fake_teacher, write_config

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "reading-shards.md"
TOP_K = 10


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished fake-teacher directory of two shards (k = 10)."""
    folder = tmp_path_factory.mktemp("plain")
    config = write_config(
        folder, folder / "cache", [fake_teacher("a", max_shards=2)], top_k=TOP_K, vllm_max_logprobs=TOP_K
    )
    return run_extraction(load_config(config), progress=False).plans[0].directory


def decoded(teacher_dir: Path) -> list[TeacherSample]:
    shards = sorted(teacher_dir.glob("shard-*.parquet"))
    return [s for shard in shards for s in decode_table(read_teacher_shard(shard))]


def test_plain_table_holds_the_decoded_values(teacher_dir: Path) -> None:
    table = read_plain(teacher_dir)
    samples = decoded(teacher_dir)
    assert table.column("sample_id").to_pylist() == [s.sample_id for s in samples]
    assert table.schema.field("topk_ids").type == pa.list_(pa.int32())
    assert table.schema.field("topk_logprobs").type == pa.list_(pa.float32())
    assert table.schema.field("target_logprob").type == pa.list_(pa.float32())
    assert table.schema.metadata[TOP_K_KEY] == str(TOP_K).encode()
    for row, s in zip(table.to_pylist(), samples, strict=True):
        assert row["token_ids"] == s.token_ids.tolist() and row["n_tokens"] == s.n_tokens
        assert row["topk_ids"] == s.topk_ids.ravel().tolist()
        np.testing.assert_array_equal(np.float32(row["topk_logprobs"]), s.topk_logprobs.ravel())
        np.testing.assert_array_equal(np.float32(row["target_logprob"]), s.target_logprobs)
        np.testing.assert_array_equal(np.float32(row["space_logprob"]), s.space_logprobs)
    one_shard = read_plain(teacher_dir / "shard-00001.parquet")
    assert one_shard.num_rows == 4 and one_shard.column("sample_id").to_pylist() == [
        s.sample_id for s in samples[4:]
    ]


def test_a_layouts_further_arrays_become_columns() -> None:
    @dataclasses.dataclass(frozen=True)
    class WithWeights(TeacherSample):
        row_weights: np.ndarray | None = None

    rows = np.zeros((2, 2), np.int32), np.full((2, 2), -1.0, np.float32), np.full(2, -1.0, np.float32)
    ids = np.arange(3, dtype=np.int32)
    a = WithWeights("a", ids, ids, *rows, 1.0, 1.0, 0.5, 0.7, False, row_weights=np.ones(2, np.float16))
    b = WithWeights("b", ids, ids, *rows, 1.0, 1.0, 0.5, 0.7, False)
    table = plain_table([a, b], top_k=2, source_layout="test")
    assert table.schema.field("row_weights").type == pa.list_(pa.float16())
    assert table.column("row_weights").to_pylist() == [[1.0, 1.0], None]
    # No σ (a shard of schema version 1, or one vLLM wrote): the column is there, null.
    assert table.column("space_logprob").to_pylist() == [None, None]
    half = plain_table(
        [dataclasses.replace(a, space_logprobs=np.full(2, -0.5, np.float32))],
        top_k=2,
        source_layout="t",
        logprobs=pa.float16(),
    )
    assert half.schema.field("space_logprob").type == pa.list_(pa.float16())
    assert half.column("space_logprob").to_pylist() == [[-0.5, -0.5]]


def doc_snippets() -> dict[str, str]:
    """The python block under each of the doc's polars, duckdb and datasets headings."""
    snippets = {}
    for section in DOC.read_text(encoding="utf-8").split("\n## ")[1:]:
        heading = section.split("\n", 1)[0]
        library = next((lib for lib in ("polars", "duckdb", "datasets") if lib in heading), None)
        block = re.search(r"```python\n(.*?)```", section, re.S)
        if library and block:
            snippets[library] = block.group(1)
    assert set(snippets) == {"polars", "duckdb", "datasets"}, f"{DOC} lost a snippet"
    return snippets


def run_snippet(code: str, cwd: Path) -> str:
    env = {**os.environ, "HF_HOME": str(cwd / "hf"), "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_inspect_decode_output_reads_with_the_documented_snippets(teacher_dir: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from pipeline.cli import app

    result = CliRunner().invoke(
        app, ["inspect", str(teacher_dir), "--decode", str(tmp_path / "teacher.parquet")]
    )
    assert result.exit_code == 0, result.output
    assert "8 samples" in result.output
    assert pq.read_schema(tmp_path / "teacher.parquet").metadata[TOP_K_KEY] == b"10"
    samples = decoded(teacher_dir)
    predicted = sum(s.n_tokens - 1 for s in samples)
    scored = sum(s.n_tokens > 1 for s in samples)
    first = samples[0]
    snippets = doc_snippets()
    # Each snippet runs as written; the lines after it check what it computed.
    checks = {
        "polars": f"assert rows.height == {predicted} and 0 <= top1_accuracy <= 1",
        "duckdb": f"assert len(per_sample) == {scored}\n"
        f"assert all(abs(ce - ce_rows) <= {LOGPROB_STEP / 2 + 1e-4} for _, _, ce, ce_rows, _ in per_sample)\n"
        f"assert all(len(top1) == n - 1 for _, n, _, _, top1 in per_sample)",
        "datasets": f"assert topk_ids.shape == ({first.n_tokens - 1}, {TOP_K})\n"
        f"assert topk_ids.tolist() == {first.topk_ids.tolist()}\n"
        "assert (topk_logprobs[:, :-1] >= topk_logprobs[:, 1:]).all()",
    }
    for library, code in snippets.items():
        run_snippet(f"{code}\n{checks[library]}\n", tmp_path)


def test_decode_takes_one_teacher_directory(teacher_dir: Path, tmp_path: Path) -> None:
    cache_root = teacher_dir.parents[2]
    with pytest.raises(ValueError, match="--decode takes one teacher directory"):
        decode_path(cache_root, tmp_path / "out.parquet")
    corpus = next((cache_root / "corpus").iterdir())
    with pytest.raises(ValueError, match="not a teacher's"):
        decode_path(corpus, tmp_path / "out.parquet")
    assert not (tmp_path / "out.parquet").exists()
