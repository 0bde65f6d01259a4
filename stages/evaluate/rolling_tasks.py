"""Held-out text as lm-evaluation-harness ``loglikelihood_rolling`` tasks, one per corpus domain,
so that lm-eval itself computes each document's log-likelihood for bits per byte.

A task is a JSONL of held-out samples (sample_id, doc_id, text) and its task YAML beside it;
the YAML names the JSONL by absolute path and scores the ``text`` field whole, with lm-eval's
``bits_per_byte`` metric. Per sample, lm-eval logs ``bits_per_byte = (log-likelihood in nats,
UTF-8 bytes of the text)``; harness.py turns those into per-document observations.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import yaml

from data_schemas.atomic import atomic_open
from stages.evaluate.mc_sets import LM_EVAL_PREFIX, Passage

TASK_PREFIX = f"{LM_EVAL_PREFIX}bpb_"
"""lm-eval name of a domain's task: ``polyfuse_bpb_<domain>``."""


def task_name(domain: str) -> str:
    return f"{TASK_PREFIX}{domain}"


def write_rolling_task(directory: Path, domain: str, passages: Sequence[Passage]) -> Path:
    """Write ``bpb_<domain>.jsonl`` and its lm-eval task file ``bpb_<domain>.yaml`` into
    ``directory``; return the YAML path."""
    if not passages:
        raise ValueError(f"domain {domain} has no held-out passage to score: raise corpus.heldout_fraction")
    directory = Path(directory).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    data = directory / f"bpb_{domain}.jsonl"
    with atomic_open(data) as f:
        for p in passages:
            record = {"sample_id": p.sample_id, "doc_id": p.doc_id, "domain": domain, "text": p.text}
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    spec = {
        "task": task_name(domain),
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data)}},
        "test_split": "test",
        "output_type": "loglikelihood_rolling",
        # A field name, not a Jinja template: a template would strip the text's trailing newline.
        "doc_to_text": "",
        "doc_to_target": "text",
        "num_fewshot": 0,
        "metric_list": [
            {"metric": "bits_per_byte", "aggregation": "bits_per_byte", "higher_is_better": False}
        ],
        "metadata": {"version": 1},
    }
    path = directory / f"bpb_{domain}.yaml"
    with atomic_open(path) as f:
        yaml.safe_dump(spec, f, sort_keys=False, allow_unicode=True)
    return path
