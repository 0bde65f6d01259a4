"""A small but real distill world for tests: a corpus of real text, two teachers extracted with the
`fake` backend under the real SmolLM2 and Gemma 3 tokenizers (so alignment and vocab maps are
real), and a tiny Llama student with the SmolLM2 tokenizer. Built once per test session (all
caches are content-keyed, so a second build finds everything and writes nothing)."""

from __future__ import annotations

import dataclasses
import json
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.config import Config, config_from_dict
from tests.tiny_models import save_tiny_llama

TOKENIZERS = Path(__file__).resolve().parents[3] / "models" / "tokenizers"
SMOLLM2 = TOKENIZERS / "smollm2-135m-instruct"
GEMMA = TOKENIZERS / "gemma-3-270m"

PROSE = (
    "It was the best of times, it was the worst of times, it was the age of wisdom, it was the age "
    "of foolishness. Café crème, naïve façades and a 🙂 or two: the tokenizers cut these differently. "
)


def build_tiny_student(folder: Path, tokenizer_dir: Path = SMOLLM2, seed: int = 0) -> Path:
    """A 2-layer, hidden-64 Llama with the real tokenizer of `tokenizer_dir`, saved as an HF folder."""
    return save_tiny_llama(folder, tokenizer_dir, seed=seed)


def write_corpus(path: Path, documents: int = 16) -> Path:
    """Real code (CPython's argparse.py) and prose, one JSONL document each."""
    code = (Path(sysconfig.get_paths()["stdlib"]) / "argparse.py").read_text(encoding="utf-8")
    lines = []
    for i in range(documents):
        text = code[i * 700 : (i + 1) * 700] if i % 2 == 0 else PROSE * (1 + i % 3)
        lines.append(json.dumps({"id": f"doc{i}", "text": text}))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@dataclass(frozen=True)
class FakeWorld:
    root: Path
    config: Config
    student: Path

    def config_for(self, runs_dir: Path, *, name: str = "run", **distill: Any) -> Config:
        """The world's config with its own runs folder and distill overrides."""
        return dataclasses.replace(
            self.config,
            name=name,
            runs_dir=str(runs_dir),
            distill=dataclasses.replace(self.config.distill, **distill),
        )


_BUILT: dict[Path, FakeWorld] = {}


def fake_world(root: Path) -> FakeWorld:
    """Build (or find) the world under `root`."""
    if root in _BUILT:
        return _BUILT[root]
    from pipeline.extraction import run_extraction

    root.mkdir(parents=True, exist_ok=True)
    corpus = root / "corpus.jsonl"
    if not corpus.exists():
        write_corpus(corpus)
    student = root / "student"
    if not (student / "config.json").exists():
        build_tiny_student(student)
    config = config_from_dict(
        {
            "name": "run",
            "cache_dir": str(root / "cache"),
            "runs_dir": str(root / "runs"),
            "corpus": {
                "sources": [{"path": str(corpus), "domain": "mixed"}],
                "max_chars": 240,
                "samples_per_shard": 6,
                "heldout_fraction": 0.1,
            },
            "student": {"path": str(student)},
            "teachers": [
                {"name": "smol", "path": str(SMOLLM2), "backend": "fake"},
                # Gemma covers only the first two shards: absent on the others.
                {"name": "gemma", "path": str(GEMMA), "backend": "fake", "max_shards": 2},
            ],
            "extract": {"top_k": 5, "max_tokens": 256, "batch_tokens": 4096},
            "distill": {
                "max_steps": 3,
                "micro_batch_size": 2,
                "grad_accum_steps": 1,
                "warmup_steps": 1,
                "lr": 1e-3,
                "gate_lr": 1e-2,
                "checkpoint_every": 3,
                "log_every": 1,
                "max_seq_tokens": 64,
                "loader_workers": 0,
                "zero_stage": 2,
            },
        },
        "fake_world",
    )
    run_extraction(config, progress=False)
    world = FakeWorld(root, config, student)
    _BUILT[root] = world
    return world
