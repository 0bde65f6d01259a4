"""What each token id stands for as raw bytes and as text, markers resolved.

Vocabulary strings are not text: byte-level BPE (GPT-2, SmolLM2, Qwen) writes every byte as a
printable stand-in (`Ġ` = space, `Ċ` = newline, `ð` = 0xF0 …), SentencePiece writes a space as
`▁` and unknown bytes as `<0xE2>` byte-fallback tokens. Comparing or re-tokenising the strings
as-is is how FuseLLM's vocab map came to miss every newline between the two families (its
byte-level marker was registered as `<|endoftext|>` instead of `Ġ`, docs/design.md §13). Here every
token is turned into the bytes it emits, once per tokenizer; both the vocab map and the DTW
aligner work on these.

Special tokens (BOS, EOS, chat markers: added tokens flagged `special`) stand for no text at
all: `pieces[i]` is None for them and `special[i]` is True.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
from transformers import PreTrainedTokenizerFast

__all__ = ["SPACE_CHARS", "TokenTable", "build_token_table", "byte_level_alphabet", "space_mask"]

_BYTE_FALLBACK = re.compile(r"<0x([0-9A-Fa-f]{2})>")
SPACE_CHARS = (" ", "\t", "\n")
"""First characters that make a token start a new word (tokenkit's `space+tab+newline`)."""


@dataclass(frozen=True)
class TokenTable:
    """Per token id of one tokenizer (size = highest id + 1).

    pieces: bytes the token emits when decoded inside a text, None for special tokens.
    texts: the same as `str` (UTF-8; bytes that are not a whole character become lone
        surrogates via `surrogateescape`, so a byte-fallback `<0xF0>` and a byte-level `ð`
        give the same text), "" for special tokens.
    special: [V] bool.
    scheme: "byte_level", "sentencepiece" or "plain": how vocabulary strings encode bytes.
    """

    pieces: list[bytes | None]
    texts: list[str]
    special: np.ndarray
    scheme: str


def byte_level_alphabet() -> dict[str, int]:
    """GPT-2's printable stand-in character → the byte it stands for (256 entries).

    Printable Latin-1 bytes stand for themselves; the other 68 bytes are shifted to U+0100 and
    up in byte order (so space 0x20 → `Ġ` U+0120, newline 0x0A → `Ċ` U+010A).
    """
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    alphabet = {chr(b): b for b in printable}
    shifted = (b for b in range(256) if b not in alphabet.values())
    for offset, b in enumerate(shifted):
        alphabet[chr(0x100 + offset)] = b
    return alphabet


def _vocab_scheme(tokenizer: PreTrainedTokenizerFast) -> str:
    backend = tokenizer.backend_tokenizer
    states = b"".join(
        part.__getstate__() for part in (backend.pre_tokenizer, backend.decoder) if part is not None
    ).decode()
    if '"ByteLevel"' in states:
        return "byte_level"
    if "\u2581" in states or '"Metaspace"' in states or '"ByteFallback"' in states:
        return "sentencepiece"
    return "plain"


def build_token_table(tokenizer: PreTrainedTokenizerFast) -> TokenTable:
    """Resolve every vocabulary string of `tokenizer` to its bytes (about 0.5 s for 262k tokens)."""
    scheme = _vocab_scheme(tokenizer)
    vocab = tokenizer.backend_tokenizer.get_vocab(with_added_tokens=True)
    size = max(vocab.values()) + 1
    pieces: list[bytes | None] = [b""] * size
    special = np.zeros(size, dtype=bool)
    added = tokenizer.added_tokens_decoder
    to_latin1 = {ord(char): chr(byte) for char, byte in byte_level_alphabet().items()}
    for token, token_id in vocab.items():
        added_token = added.get(token_id)
        if added_token is not None:
            # Added tokens are stored as the text they match, never in the byte alphabet.
            if added_token.special:
                pieces[token_id] = None
                special[token_id] = True
            else:
                pieces[token_id] = added_token.content.encode()
        elif scheme == "byte_level":
            pieces[token_id] = _byte_level_bytes(token, to_latin1)
        elif scheme == "sentencepiece":
            fallback = _BYTE_FALLBACK.fullmatch(token)
            if fallback is not None:
                pieces[token_id] = bytes([int(fallback.group(1), 16)])
            else:
                pieces[token_id] = token.replace("\u2581", " ").encode()
        else:
            pieces[token_id] = token.encode()
    texts = ["" if p is None else p.decode("utf-8", errors="surrogateescape") for p in pieces]
    return TokenTable(pieces=pieces, texts=texts, special=special, scheme=scheme)


def _byte_level_bytes(token: str, to_latin1: dict[int, str]) -> bytes:
    # str.translate + latin-1 runs in C: stand-in characters become the bytes they stand for.
    try:
        return token.translate(to_latin1).encode("latin-1")
    except UnicodeEncodeError:
        # A vocabulary entry outside the byte alphabet (seen in some merged vocabularies):
        # it can only have come from literal text.
        return token.encode()


def space_mask(table: TokenTable, size: int | None = None) -> np.ndarray:
    """[size] bool: the ids that start a new word, i.e. whose text starts with a space, tab or
    newline, or that are special tokens (tokenkit's `space+tab+newline+special` mask, on the
    resolved text, so `Ġdef`, `Ċ`, `▁the` and the byte token `<0x0A>` all count).

    The teacher's probability mass on these ids is ALM's σ (``data_schemas/teacher_shard.py``).
    ``size``: the model's output width (default: the table's); ids past the tokenizer's table
    emit nothing and are False (Qwen's head has 151,936 rows for 151,665 tokens).
    """
    size = len(table.texts) if size is None else size
    mask = np.zeros(size, dtype=bool)
    known = min(size, len(table.texts))
    mask[:known] = [text.startswith(SPACE_CHARS) for text in table.texts[:known]]
    mask[:known] |= table.special[:known]
    return mask
