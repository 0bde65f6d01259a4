"""The one tiny Llama the tests and the benches build from config (seconds, no download), with a
real tokenizer's vocabulary when a test needs real tokenisation."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import LlamaConfig

# torch and transformers are imported inside the functions: importing this module from a conftest
# must not import transformers before the conftest has set HF_HUB_OFFLINE.


def tiny_llama_config(vocab_size: int, **overrides: Any) -> LlamaConfig:
    """2 layers, hidden 64, 4 query / 2 key-value heads, tied embeddings; ``overrides`` win."""
    from transformers import LlamaConfig

    settings: dict[str, Any] = {
        "vocab_size": vocab_size,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 1024,
        "tie_word_embeddings": True,
    }
    settings.update(overrides)
    return LlamaConfig(**settings)


def save_tiny_llama(folder: Path, tokenizer_dir: Path, *, seed: int = 0, **overrides: Any) -> Path:
    """A tiny Llama sized to the tokenizer in ``tokenizer_dir``, saved with that tokenizer's files
    as a loadable HF folder."""
    import torch
    from transformers import LlamaForCausalLM

    from stages.tokenization import load_tokenizer

    tokenizer = load_tokenizer(tokenizer_dir)
    config = tiny_llama_config(
        len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **overrides,
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(folder)
    for path in tokenizer_dir.iterdir():
        if path.is_file():
            shutil.copy2(path, folder / path.name)
    return folder
