"""Fixtures of the extract tests: a tiny teacher (built from config, real SmolLM2 tokenizer) and
one vLLM engine per session, so that transformers and vLLM pay their start-up once."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.tiny_models import save_tiny_llama

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SMOLLM2_TOKENIZER = Path(__file__).resolve().parents[3] / "models" / "tokenizers" / "smollm2-135m-instruct"
TOP_K = 10
MAX_TOKENS = 256


def build_tiny_teacher(folder: Path, seed: int = 0) -> Path:
    """A 2-layer, hidden-64 Llama with SmolLM2's real tokenizer, saved as an HF folder.

    head_dim 32 (vLLM's CPU attention has no kernel for 16); initializer_range 0.2 spreads the
    logits so that the top-k is not a near-tie of random values (parity compares id sets).
    """
    return save_tiny_llama(folder, SMOLLM2_TOKENIZER, seed=seed, num_attention_heads=2, initializer_range=0.2)


@pytest.fixture(scope="session")
def tiny_teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not (SMOLLM2_TOKENIZER / "tokenizer.json").is_file():
        pytest.fail(f"{SMOLLM2_TOKENIZER} is missing: run `make setup`")
    return build_tiny_teacher(tmp_path_factory.mktemp("teacher") / "tiny-llama")


@pytest.fixture(scope="session")
def sample_texts() -> list[str]:
    """Real text of three kinds, one of them longer than MAX_TOKENS (truncated)."""
    import sysconfig

    source = (Path(sysconfig.get_paths()["stdlib"]) / "textwrap.py").read_text(encoding="utf-8")
    return [
        source[:3000],
        "In the beginning God created the heaven and the earth.\n\nAnd the earth was without form.",
        "What is 27 + 15? Answer: 42. Café, naïve, 東京, 🙂 emoji split over byte tokens.",
        source[5000:5600],
        "x",
    ]


@pytest.fixture(scope="session")
def tokenized(sample_texts: list[str]) -> list:
    from stages.tokenization import load_tokenizer, tokenize_many_with_ends

    tokenizer = load_tokenizer(SMOLLM2_TOKENIZER)
    return tokenize_many_with_ends(tokenizer, sample_texts, add_special_tokens=True, max_tokens=MAX_TOKENS)


@pytest.fixture(scope="session")
def space_mask():
    """SmolLM2's space mask: the ids whose mass is σ."""
    from stages.align.token_text import build_token_table, space_mask
    from stages.tokenization import load_tokenizer

    return space_mask(build_token_table(load_tokenizer(SMOLLM2_TOKENIZER)))


@pytest.fixture(scope="session")
def transformers_backend(tiny_teacher: Path, space_mask):
    from stages.extract.backends.transformers_backend import TransformersBackend

    backend = TransformersBackend(tiny_teacher, top_k=TOP_K, batch_tokens=600, space_mask=space_mask)
    yield backend
    backend.close()
