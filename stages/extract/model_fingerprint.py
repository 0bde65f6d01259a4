"""Local model folders: the check before loading, and a cheap fingerprint (docs/design.md §3.4).

The fingerprint must cost milliseconds, not a read of gigabytes of weights: the hub revision
where the folder is a hub snapshot, else the config and tokenizer files in full plus, per weight
file, its name, size and a hash of its first and last MiB. Editing a weight file in the middle
without changing its size would go unnoticed; converting, re-quantising or fine-tuning a model
changes its ends (safetensors headers, embedding and head tensors) and so its fingerprint.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from data_schemas.keys import sha256_ends, sha256_file
from stages.model_config import read_model_config
from stages.model_source import hub_revision, model_folder

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
_HASHED_IN_FULL = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
)


def weight_files(folder: Path) -> list[Path]:
    """The weight files of a model folder, in name order (index files excluded)."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES)


def check_model_folder(path: str | Path) -> Path:
    """The folder as a ``Path`` (a hub id resolved to its snapshot: stages/model_source.py);
    ``ValueError`` naming the fix unless it holds a loadable model."""
    folder = model_folder(path)
    if folder.exists() and not folder.is_dir():
        raise ValueError(
            f"model folder {folder} is a file, not a folder: point teachers[].path at the folder that "
            "holds config.json, the weights and the tokenizer"
        )
    if not folder.is_dir():
        raise ValueError(
            f"model folder {folder} does not exist: run `make setup` for the demo models or fix "
            "teachers[].path (a local Hugging Face folder, or a hub id org/name[@revision])"
        )
    if not (folder / "config.json").is_file():
        raise ValueError(
            f"model folder {folder} has no config.json: point teachers[].path at a HF model folder"
        )
    refuse_own_code(folder)
    if not weight_files(folder):
        raise ValueError(
            f"model folder {folder} has no weight files ({', '.join(WEIGHT_SUFFIXES)}): "
            "finish the conversion (`make setup`) or fix teachers[].path"
        )
    return folder


def refuse_own_code(folder: Path) -> None:
    """``ValueError`` if the folder's model can only be built by running the folder's own ``.py``
    files (an ``auto_map`` for a model type transformers does not know). polyfuse never runs
    them: every load passes ``trust_remote_code=False``, and this check says so before a backend
    that might ask on stdin is opened."""
    from transformers import CONFIG_MAPPING

    config = read_model_config(folder)
    model_type = config.get("model_type")
    if config.get("auto_map") and model_type not in CONFIG_MAPPING:
        raise ValueError(
            f"model folder {folder} needs its own code to load (config.json auto_map "
            f"{sorted(config['auto_map'])} for model_type {model_type!r}, which transformers does not "
            "know): polyfuse never runs code from a model folder; convert the model to a supported "
            "architecture"
        )


def model_fingerprint(path: str | Path) -> str:
    """sha256 hex identifying the model in ``path`` (see the module docstring)."""
    folder = check_model_folder(path)
    digest = hashlib.sha256(b"polyfuse-model-v1\0")
    revision = hub_revision(folder)
    if revision is not None:
        digest.update(f"revision={revision}".encode())
        return digest.hexdigest()
    for name in _HASHED_IN_FULL:
        if (folder / name).is_file():
            digest.update(f"{name}={sha256_file(folder / name)}\n".encode())
    for weights in weight_files(folder):
        digest.update(f"{weights.name}:{sha256_ends(weights)}\n".encode())
    return digest.hexdigest()
