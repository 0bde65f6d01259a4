"""Full fp32 HF model folders from the demo GGUF files (docs/material.md §2).

transformers dequantises a GGUF on load; the result is an ordinary fp32 model except that it
still carries its quantizer, which makes ``save_pretrained`` refuse. Dropping the quantizer and
the ``quantization_config`` gives a plain folder that loads with ``from_pretrained(folder)``
(transformers, vLLM, lm-eval) with no GGUF code in the way.
"""

from __future__ import annotations

import gc
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from pipeline.material.folder_marker import MARKER, is_complete, publish_folder
from pipeline.material.model_files import ensure_full_gguf
from pipeline.material.model_sources import MaterialLayout, WheelModel
from pipeline.material.tokenizer_export import export_tokenizer

logger = logging.getLogger(__name__)

# The converted folder must reproduce the GGUF-loaded model's logits on this text. The weights
# are bit-identical fp32 tensors, so any difference beyond float noise means a broken save.
CHECK_TEXT = "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n\nThe quick brown fox jumps."
LOGITS_TOLERANCE = 1e-4


@dataclass(frozen=True)
class Conversion:
    """What converting one model cost."""

    name: str
    seconds: float
    folder_bytes: int
    max_logit_diff: float


def folder_bytes(folder: Path) -> int:
    """Total size of the files under ``folder``."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def convert_model(source: WheelModel, layout: MaterialLayout) -> Conversion | None:
    """Build ``models/<name>/`` (fp32 safetensors + config + tokenizer); None if already complete."""
    folder = layout.models / source.name
    if is_complete(folder, source.gguf_sha256):
        return None
    import torch  # heavy: only when there is work
    from transformers import AutoModelForCausalLM, __version__

    start = time.perf_counter()
    export_tokenizer(source, layout)  # no-op when done; the model folder gets the same files
    gguf = ensure_full_gguf(source, layout)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    model.eval()
    logger.info("%s: GGUF loaded and dequantised in %.0f s", source.name, time.perf_counter() - start)
    input_ids = _check_ids(layout.tokenizers / source.name)
    with torch.no_grad():
        reference = model(input_ids).logits

    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)  # left by a killed run
    model.save_pretrained(str(tmp))
    for file in (layout.tokenizers / source.name).iterdir():
        if file.name != MARKER:
            shutil.copy2(file, tmp / file.name)
    del model  # one model in memory at a time: Qwen fp32 alone is 6.7 GB
    gc.collect()

    reloaded = AutoModelForCausalLM.from_pretrained(str(tmp), dtype=torch.float32)
    with torch.no_grad():
        logits = reloaded(input_ids).logits
    del reloaded
    gc.collect()
    diff = float((logits - reference).abs().max())
    if diff > LOGITS_TOLERANCE or not torch.equal(logits.argmax(-1), reference.argmax(-1)):
        raise RuntimeError(
            f"{source.name}: the saved folder's logits differ from the GGUF model's by {diff:.2e} "
            f"(> {LOGITS_TOLERANCE}): delete {tmp} and report the transformers version"
        )
    seconds = time.perf_counter() - start
    size = folder_bytes(tmp)
    publish_folder(
        tmp,
        folder,
        {
            "source_sha256": source.gguf_sha256,
            "packages": [p.requirement for p in source.parts],
            "dtype": "float32",
            "conversion_seconds": round(seconds, 1),
            "max_logit_diff": diff,
            "transformers": __version__,
            "torch": torch.__version__,
        },
    )
    logger.info(
        "%s: fp32 folder ready in %.0f s (%.2f GB, logits within %.1e)",
        source.name,
        seconds,
        size / 1e9,
        diff,
    )
    return Conversion(source.name, seconds, size, diff)


def _check_ids(tokenizer_folder: Path) -> object:
    """Token ids [1, T] of CHECK_TEXT under the model's own tokenizer."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_folder))
    return tokenizer(CHECK_TEXT, return_tensors="pt").input_ids
