"""What a model folder's ``config.json`` promises, checked before any weights load: a causal-LM
head, and an embedding with a row for every token of the tokenizer used with it.

Both faults otherwise surface late and unreadable: transformers answers a T5 or BERT folder with a
list of every causal architecture it knows, and a token id past the embedding is an
``IndexError`` in the middle of a forward pass.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_model_config(folder: Path) -> dict[str, Any]:
    """The folder's ``config.json`` as a dict; ``ValueError`` naming the file and the fix when it is
    missing or not a JSON object."""
    path = folder / "config.json"
    if not path.is_file():
        raise ValueError(f"model folder {folder} has no config.json: point the path at a HF model folder")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"model folder {folder}: config.json is not readable JSON ({e}): restore it") from e
    if not isinstance(config, dict):
        raise ValueError(f"model folder {folder}: config.json holds no JSON object: restore it")
    return config


def embedding_rows(config: dict[str, Any]) -> int | None:
    """Rows of the input embedding (``vocab_size``, or its ``text_config``'s for a model whose
    text part is nested); None when the config does not say."""
    for section in (config, config.get("text_config")):
        if isinstance(section, dict) and isinstance(section.get("vocab_size"), int):
            return section["vocab_size"]
    return None


def check_causal_lm(folder: Path, setting: str) -> None:
    """``ValueError`` naming ``setting`` unless transformers has a causal-LM class for the
    folder's ``model_type`` (what ``AutoModelForCausalLM`` loads)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    model_type = read_model_config(folder).get("model_type")
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise ValueError(
            f"{setting} {folder} is a {model_type!r} model, which has no causal language-model head "
            "(polyfuse trains and scores next-token predictors): point it at a decoder-only model "
            "such as models/smollm2-135m-instruct"
        )


def check_tokenizer_fits(tokenizer: Any, folder: Path, setting: str) -> None:
    """``ValueError`` naming ``setting`` when the tokenizer has more tokens than the embedding of
    the model in ``folder`` has rows (tokens added without resizing the weights). A folder without
    ``config.json`` (a tokenizer-only folder) or a config without a vocabulary size is not checked."""
    if not (folder / "config.json").is_file():
        return
    rows = embedding_rows(read_model_config(folder))
    if rows is not None and len(tokenizer) > rows:
        raise ValueError(
            f"{setting} {folder}: the tokenizer has {len(tokenizer)} tokens but the model's embedding "
            f"has {rows} rows (config.json vocab_size), so token ids {rows} and above have no weights: "
            "resize the embedding (model.resize_token_embeddings(len(tokenizer)), then save_pretrained) "
            "or use the tokenizer the model was trained with"
        )
