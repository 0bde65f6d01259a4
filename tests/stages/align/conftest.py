"""Vocab maps of the demo pairs (student SmolLM2), built once per session into a tmp cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from stages.align.vocab_map import load_or_build_vocab_map


class DemoVocabMaps:
    """`demo_vocab_maps[teacher_name, mode]` → the teacher → SmolLM2 map, built on first use."""

    def __init__(self, tokenizers, cache_dir: Path) -> None:
        self.tokenizers = tokenizers
        self.cache_dir = cache_dir
        self._built: dict[tuple[str, str], np.ndarray] = {}

    def __getitem__(self, key: tuple[str, str]) -> np.ndarray:
        if key not in self._built:
            teacher, mode = key
            self._built[key] = load_or_build_vocab_map(
                self.tokenizers[teacher],
                self.tokenizers["smollm2-135m-instruct"],
                cache_dir=self.cache_dir,
                mode=mode,
            )
        return self._built[key]


@pytest.fixture(scope="session")
def demo_vocab_maps(demo_tokenizers, tmp_path_factory: pytest.TempPathFactory) -> DemoVocabMaps:
    return DemoVocabMaps(demo_tokenizers, tmp_path_factory.mktemp("vocab-maps"))


@pytest.fixture(scope="session")
def demo_token_tables(demo_tokenizers):
    """`demo_token_tables[name]` → `TokenTable` of the real tokenizer, built on first use."""
    from stages.align.token_text import build_token_table

    class Tables(dict):
        def __missing__(self, name: str):
            self[name] = build_token_table(demo_tokenizers[name])
            return self[name]

    return Tables()
