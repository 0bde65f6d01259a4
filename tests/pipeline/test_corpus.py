"""`prepare_from_config` and the table `polyfuse prepare` prints."""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.config import config_from_dict
from pipeline.corpus import corpus_stats_rows, prepare_from_config


def test_the_summary_counts_the_empty_documents_dropped_per_domain(tmp_path: Path) -> None:
    docs = ["A text. " * 5, "   ", "Another text. " * 5, "\n\n", "\t", "A third text. " * 5]
    source = tmp_path / "prose.jsonl"
    source.write_text("".join(json.dumps({"text": t}) + "\n" for t in docs))
    config = config_from_dict(
        {
            "cache_dir": str(tmp_path / "cache"),
            "corpus": {"sources": [{"path": str(source), "domain": "prose"}], "heldout_fraction": 0.3},
        },
        "test",
    )
    rows = corpus_stats_rows(prepare_from_config(config))
    dropped = [r for r in rows if r["split"] == "dropped (empty)"]
    assert dropped == [
        {
            "split": "dropped (empty)",
            "domain": "prose",
            "documents": 3,
            "chunks": 0,
            "chars": 0,
            "split_words": 0,
        }
    ]
    kept = {r["split"]: r["documents"] for r in rows if r["split"] != "dropped (empty)"}
    assert kept == {"train": 2, "heldout": 1}
