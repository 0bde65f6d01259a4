"""A tiny Llama built from config with the real SmolLM2 tokenizer: real tokenisation, seconds to
build. Shared by the evaluate tests here and tests/pipeline/test_evaluation.py."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch
from transformers import Gemma3ForCausalLM, Gemma3TextConfig, LlamaForCausalLM

from stages.tokenization import load_tokenizer
from tests.tiny_models import tiny_llama_config

REPO = Path(__file__).resolve().parents[3]
TOKENIZERS = REPO / "models" / "tokenizers"


@functools.cache
def _real_tokenizer(name: str):
    """Loaded once per test process (Gemma's tokenizer.json is 33 MB)."""
    folder = TOKENIZERS / name
    if not (folder / "tokenizer.json").is_file():
        pytest.fail(f"the {name} tokenizer is missing from {folder}: run `make setup`")
    return load_tokenizer(folder)


def smollm2_tokenizer():
    """Byte-level BPE, no BOS added."""
    return _real_tokenizer("smollm2-135m-instruct")


def gemma_tokenizer():
    """SentencePiece, adds BOS."""
    return _real_tokenizer("gemma-3-270m")


def tiny_llama(vocab_size: int, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = tiny_llama_config(vocab_size, max_position_embeddings=512)
    return LlamaForCausalLM(config).eval()


def tiny_gemma3(vocab_size: int, seed: int = 0) -> Gemma3ForCausalLM:
    """Gemma 3 layout (one sliding-window layer, window 8, then a full one): contexts longer than
    the window exercise the sliding key/value cache."""
    torch.manual_seed(seed)
    config = Gemma3TextConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=16,
        sliding_window=8,
        layer_types=["sliding_attention", "full_attention"],
        max_position_embeddings=512,
    )
    return Gemma3ForCausalLM(config).eval()


def memorise(model: LlamaForCausalLM, tokenizer, text: str, steps: int = 15) -> LlamaForCausalLM:
    """Train the model on one text until it strongly prefers it (a few seconds)."""
    ids = torch.tensor([tokenizer.encode(text)])
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-2)
    model.train()
    for _ in range(steps):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model.eval()


def save_model_folder(folder: Path, seed: int = 0) -> Path:
    """A loadable HF model folder (weights, config, tokenizer) of a tiny Llama."""
    tokenizer = smollm2_tokenizer()
    tiny_llama(len(tokenizer), seed).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny models run on one intra-op thread: two threads on two cores shared with other work
    wait on each other (measured 5× slower here). Imported by a test module, it applies there."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
