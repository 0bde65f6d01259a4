"""Tokenizers as extract and distill use them: local loading, a fingerprint, token end offsets.

Both stages tokenise the same corpus text with different tokenizers and meet again only through
character offsets (docs/design.md §3, §5), so this module fixes one meaning for them:

    ends[t] = the char index (Python str index) up to which the text is fully emitted once
              token t — and, if t leaves a character half-emitted, the tokens that complete
              it — have been emitted.

So a token at a clean character boundary gets exactly the end of the text it emits, and the
pieces of a split character share one end with the token that completes it: **the last token
with a given end is the one at a real boundary** (`stages/align/offsets.py` relies on this).
Hugging Face offsets need three repairs to mean that:

- byte-level BPE (SmolLM2, Qwen) splits a multi-byte character over tokens and reports the whole
  character's span for each piece; a piece can also finish one character and start the next
  (`¥æľ¬`-style merges), so "shares the reported end" is not enough: a token is *clean* iff no
  later token touches a character it touched, and an unclean token takes the end of the next
  clean one. SentencePiece byte fallback (`<0xF0>` …) behaves the same, one byte at a time.
- special tokens report zero-width spans ((0, 0) for Gemma's BOS): clean, end = where they sit.
- characters inside no span: a normaliser merged them (Qwen's NFC: "e" + U+0301 is reported as
  the span of "e") — they belong to the token before; or trimmed whitespace (RoBERTa-style
  offsets) — it belongs to the token after.
Ends are non-decreasing and computed on the untruncated tokenisation, so a cut through a split
character still knows where that character ends.

Behaviour of the demo tokenizers (transformers 5.19; pinned in tests/stages/test_tokenization.py):
- SmolLM2 (byte-level BPE, 49,152, adds nothing): word tokens carry their leading space (`Ġworld`
  spans " world"); whitespace before a word goes into one token with the newlines (`ĊĊĠĠĠ` +
  `Ġreturn` for "\n\n    return"); digits are single tokens; an emoji after a space is split as
  `ĠðŁĺ` (4, 6) + `Ģ` (5, 6); no trimming of offsets.
- Gemma 3 (SentencePiece BPE with byte fallback, 262,144): adds `<bos>` with (0, 0); `▁world`
  spans " world"; `\n`, `\n\n`, … are added (non-special) tokens; indentation is a token of
  its own (`\n\n`, `▁▁▁▁`, `return`); digits are single tokens, preceded by a lone `▁`; `\r` is
  the byte-fallback token `<0x0D>`; common emoji are whole tokens (`▁😀`).
- Qwen2.5-Coder (byte-level BPE, 151,936, NFC normaliser, adds nothing): like SmolLM2 but newlines
  and the following spaces are separate tokens (`ĊĊ`, `ĠĠĠ`, `Ġreturn`); CJK mostly whole chars.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from transformers import AutoTokenizer, PreTrainedTokenizerFast

__all__ = [
    "TokenizedText",
    "check_tokenizer_files",
    "load_tokenizer",
    "tokenize_many_with_ends",
    "tokenize_with_ends",
    "tokenizer_fingerprint",
]

_FINGERPRINT_VERSION = "1"


@dataclass(frozen=True)
class TokenizedText:
    """One text as a tokenizer sees it.

    ids: [n] int32 token ids (special tokens included where the tokenizer adds them).
    ends: [n] int32, non-decreasing Python `str` indices (not bytes): the text before
        `ends[t]` is fully emitted once token t (and, inside a split character, the token that
        completes it) is emitted; the last token with a given end sits at a clean boundary.
    truncated: True when the text had more than `max_tokens` tokens and was cut.
    """

    ids: np.ndarray
    ends: np.ndarray
    truncated: bool


def check_tokenizer_files(folder: Path) -> None:
    """``ValueError`` naming the fix unless ``folder`` is a folder with tokenizer files."""
    if folder.is_file():
        raise ValueError(
            f"{folder} is a file, not a tokenizer folder: point the config at the model folder that holds "
            "tokenizer.json"
        )
    if not (folder / "tokenizer.json").is_file() and not (folder / "tokenizer_config.json").is_file():
        raise ValueError(
            f"no tokenizer files (tokenizer.json / tokenizer_config.json) in {folder}: "
            "run `make setup` (or `python -m pipeline.material tokenizers`) or point the config "
            "at a local Hugging Face tokenizer folder"
        )


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerFast:
    """Load a fast (Rust-backed) tokenizer from a local folder; never touches a model hub."""
    folder = Path(path)
    check_tokenizer_files(folder)
    try:
        # Never the folder's own code (an auto_map to its .py files), and never a question on stdin.
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot load a tokenizer from {folder}: {e}; run `make setup`") from e
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(
            f"the tokenizer in {folder} is not a fast (tokenizers-backed) tokenizer, so it cannot "
            "report character offsets: provide a folder with a tokenizer.json"
        )
    return tokenizer


def _special_tokens_added(tokenizer: PreTrainedTokenizerFast) -> tuple[list[int], list[int]]:
    """Ids the tokenizer puts before and after a text when `add_special_tokens=True`."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a", add_special_tokens=True)["input_ids"]
    at = next((i for i in range(len(full) - len(plain) + 1) if full[i : i + len(plain)] == plain), 0)
    return list(full[:at]), list(full[at + len(plain) :])


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerFast) -> str:
    """sha256 hex of what decides tokenisation: vocabulary, added tokens, pipeline, BOS/EOS.

    The vocabulary (token → id), every added token with its special flag, the model type, the
    normaliser / pre-tokeniser / post-processor / decoder settings and the ids added around a
    text. BPE merges are left out (they follow the vocabulary in practice; hashing them would
    cost a 33 MB serialisation for Gemma). Deterministic across processes and machines; well
    under a second for a 262k vocabulary.
    """
    backend = tokenizer.backend_tokenizer
    digest = hashlib.sha256(f"polyfuse-tokenizer-v{_FINGERPRINT_VERSION}\0".encode())
    # The vocabulary in id order ("\x01" for an id without a token), one join: ~0.15 s for 262k.
    size = backend.get_vocab_size(with_added_tokens=False)
    tokens = [backend.id_to_token(i) for i in range(size)]
    digest.update(type(backend.model).__name__.encode() + b"\0")
    digest.update("\x00".join("\x01" if t is None else t for t in tokens).encode("utf-8", "surrogatepass"))
    added = sorted(tokenizer.added_tokens_decoder.items())
    digest.update(json.dumps([[i, str(t), bool(t.special)] for i, t in added]).encode())
    for component in ("normalizer", "pre_tokenizer", "post_processor", "decoder"):
        part = getattr(backend, component)
        digest.update(component.encode() + b"=" + (part.__getstate__() if part is not None else b"null"))
    before, after = _special_tokens_added(tokenizer)
    digest.update(json.dumps({"prepends": before, "appends": after}).encode())
    return digest.hexdigest()


def tokenize_with_ends(
    tokenizer: PreTrainedTokenizerFast,
    text: str,
    *,
    add_special_tokens: bool,
    max_tokens: int | None,
) -> TokenizedText:
    """Tokenise one text and give each token the char index up to which the text is covered."""
    return tokenize_many_with_ends(
        tokenizer, [text], add_special_tokens=add_special_tokens, max_tokens=max_tokens
    )[0]


def tokenize_many_with_ends(
    tokenizer: PreTrainedTokenizerFast,
    texts: Sequence[str],
    *,
    add_special_tokens: bool,
    max_tokens: int | None,
) -> list[TokenizedText]:
    """Batch form of `tokenize_with_ends` (one call into the Rust tokenizer, parallel there)."""
    if max_tokens is not None and max_tokens < 1:
        raise ValueError(f"max_tokens must be a positive integer or None, got {max_tokens}")
    if not texts:
        return []
    # The Rust tokenizer directly (what `tokenizer(texts)` calls underneath): the loader's hot
    # path, and transformers' per-text BatchEncoding conversion would add a third to its time.
    backend = tokenizer.backend_tokenizer
    if backend.truncation is not None or backend.padding is not None:
        # As transformers does before every call that asks for neither: we cut ourselves below.
        backend.no_truncation()
        backend.no_padding()
    encodings = backend.encode_batch(list(texts), add_special_tokens=add_special_tokens)
    results = []
    for text, encoding in zip(texts, encodings, strict=True):
        ids = encoding.ids
        spans = np.asarray(encoding.offsets, dtype=np.int64).reshape(-1, 2)
        # Ends come from the untruncated tokenisation: a cut through a split character must
        # still see the (dropped) token that completes it.
        ends = covered_ends(spans[:, 0], spans[:, 1], text)
        truncated = max_tokens is not None and len(ids) > max_tokens
        stop = max_tokens if truncated else len(ids)
        results.append(
            TokenizedText(
                ids=np.asarray(ids[:stop], dtype=np.int32),
                ends=ends[:stop].astype(np.int32),
                truncated=truncated,
            )
        )
    return results


def covered_ends(starts: np.ndarray, stops: np.ndarray, text: str) -> np.ndarray:
    """Covered-text end per token from Hugging Face (start, end) char spans.

    starts, stops: [n] char offsets as the tokenizer reports them (each piece of a split
    character reports the whole character, special tokens report zero-width spans).
    Returns [n] int64, non-decreasing (see the module docstring for the meaning).
    """
    n = len(starts)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    starts = np.asarray(starts, dtype=np.int64)
    stops = np.asarray(stops, dtype=np.int64)
    furthest = np.maximum.accumulate(stops)
    # Earliest start of any later non-empty token: a reversed running minimum, shifted by one.
    touches = np.where(stops > starts, starts, len(text))
    later = np.full(n, len(text), dtype=np.int64)
    later[:-1] = np.minimum.accumulate(touches[::-1])[::-1][1:]
    # Clean: no later token touches a character this one (or an earlier one) touched.
    clean = furthest <= later
    ends = furthest.copy()
    # Characters no token's span covers sit between a clean token and the next. A normaliser
    # that merges characters (NFC: "e" + U+0301 -> "é") reports the merged span short: those
    # belong to the token before. Whitespace that a tokenizer trims out of spans (RoBERTa-style
    # offsets) belongs to the token after, so the end stays.
    for t in np.flatnonzero(clean & (furthest < later)).tolist():
        if not text[furthest[t] : later[t]].isspace():
            ends[t] = later[t]
    # A token that leaves a character half-emitted takes the end of the next clean token.
    ends = np.minimum.accumulate(np.where(clean, ends, np.iinfo(np.int64).max)[::-1])[::-1]
    return ends
