"""Real demo tokenizers for the tokenisation and alignment tests, each loaded once per session.

Gemma's 33 MB tokenizer.json takes ~10 s to load through transformers, so the tests share one
instance; a missing folder fails (it never skips) with the command that creates it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import PreTrainedTokenizerFast

from stages.tokenization import load_tokenizer

TOKENIZER_ROOT = Path(__file__).resolve().parents[2] / "models" / "tokenizers"
SMOLLM2 = "smollm2-135m-instruct"
GEMMA = "gemma-3-270m"
QWEN = "qwen2.5-coder-1.5b-instruct"


class DemoTokenizers:
    """`demo_tokenizers[name]` → the real tokenizer, loaded on first use."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._loaded: dict[str, PreTrainedTokenizerFast] = {}

    def path(self, name: str) -> Path:
        folder = self.root / name
        if not (folder / "tokenizer.json").is_file():
            pytest.fail(f"demo tokenizer {folder} is missing: run `make setup` (or `make tokenizers`)")
        return folder

    def __getitem__(self, name: str) -> PreTrainedTokenizerFast:
        if name not in self._loaded:
            self._loaded[name] = load_tokenizer(self.path(name))
        return self._loaded[name]


@pytest.fixture(scope="session")
def demo_tokenizers() -> DemoTokenizers:
    return DemoTokenizers(TOKENIZER_ROOT)


# Prose for corpus-like tests (written for these tests), with the characters that split tokens:
# accents, a decomposed accent, CJK, emoji, CRLF, tabs, runs of spaces and digits.
PROSE = [
    "It was the best of times, it was the worst of times; the  age of wisdom, the age of "
    "foolishness.\n\nShe paid 1,250.75 dollars on 2024-03-17 — a naïve price for a café au lait "
    "in Zürich. Élodie said “déjà vu”, then left at 10:45.\r\nThe end.\n",
    "Tokyo (東京) and Kyoto (京都) are 513 km apart; the shinkansen takes 2h15m. 日本語のテキスト "
    "と English text mix here. Emoji: 😀 🦜🦜 👍🏽 🇫🇷 and math: ∑ x² ≤ ∞. A decomposed e\u0301 "
    "and a composed é.\n\t- item one\n\t- item two\n    indented four\n\n\n3 blank lines above.\n",
    "Question: What is 12345 + 67890? Answer: 80235.\nSolve 27 = -6*r + 51 for r. 4\n"
    "Let f(x) = 3*x**2 - 7. What is f(10)? 293\n",
]


def corpus_like_texts(chunk_chars: int = 2000, files: int = 3) -> list[str]:
    """A few real standard-library source files cut into chunks, plus `PROSE`."""
    import sysconfig

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    texts = []
    for name in ("textwrap.py", "fractions.py", "shlex.py")[:files]:
        source = (stdlib / name).read_text(encoding="utf-8")
        texts += [
            source[i : i + chunk_chars] for i in range(0, min(len(source), 3 * chunk_chars), chunk_chars)
        ]
    return texts + PROSE
