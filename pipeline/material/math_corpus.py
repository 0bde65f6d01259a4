"""Math documents from DeepMind's ``mathematics_dataset`` generator, deterministic by seed.

The generator needs two patches on today's stack (docs/material.md §3), so it runs in its own
process (``python -m pipeline.material.math_corpus``) and nothing leaks into the caller:
- sympy ≥ 1.13 moved ``base_solution_linear``; it is put back on ``sympy.solvers.diophantine``;
- NumPy 2 removed ``np.object`` and ``ndarray.itemset``, which its polynomial sampler uses
  (9 of 56 modules and many compositions): that module alone gets a numpy shim giving both back;
  should anything still raise AttributeError, the document is dropped and its module skipped
  from then on (listed in the output).
Each document is ``pairs`` question/answer pairs of one module, seeded by (seed, module, index),
so a document's text does not depend on how many others are generated.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import subprocess
import sys
import types
from collections.abc import Callable, Iterator


def format_pairs(pairs: list[tuple[str, str]]) -> str:
    """One document: ``Question: …\\nAnswer: …\\n\\n`` per pair."""
    return "".join(f"Question: {q.strip()}\nAnswer: {a.strip()}\n\n" for q, a in pairs)


def doc_seed(seed: int, module: str, index: int) -> int:
    """A 32-bit seed from (seed, module, index), the same on every machine (unlike ``hash``)."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{module}:{index}".encode()).digest()[:4], "little")


def _numpy1_shim() -> types.ModuleType:
    """numpy with the two NumPy 1 features the polynomial sampler uses: ``np.object`` and
    ``ndarray.itemset`` (on the arrays its ``zeros``/``empty`` make)."""
    import numpy as np

    class ItemsetArray(np.ndarray):
        def itemset(self, index: object, value: object) -> None:
            self[index] = value  # what itemset did for a full index, object dtype included

    shim = types.ModuleType("numpy_shim")
    shim.__getattr__ = lambda name: getattr(np, name)  # module-level __getattr__ (PEP 562)
    shim.object = object
    shim.zeros = lambda *a, **k: np.zeros(*a, **k).view(ItemsetArray)
    shim.empty = lambda *a, **k: np.empty(*a, **k).view(ItemsetArray)
    return shim


def _ordered_expand_entities(composition: types.ModuleType) -> Callable[..., tuple[str, dict]]:
    """``composition.expand_entities`` with its ``set`` of entities made insertion-ordered.

    The original iterates over a set of objects hashed by memory address, so the order of the
    "Let x be ..." sentences changed from run to run even with every seed fixed.
    """

    def expand_entities(context: object, **kwargs: object) -> tuple[str, dict]:
        kwargs = kwargs.copy()
        entities = dict.fromkeys(context.child_entities)
        for key, maybe_entity in kwargs.items():
            if isinstance(maybe_entity, composition.Entity):
                entities[maybe_entity] = None
                kwargs[key] = maybe_entity.handle
        ordered = list(entities)
        random.shuffle(ordered)
        descriptions = []
        for entity in ordered:
            descriptions.append(entity.child_description)
            if not entity.expression_used:
                descriptions.append(entity.description)
        return " ".join(d for d in descriptions if d), kwargs

    return expand_entities


def _patched_modules() -> dict[str, Callable[[], object]]:
    """The generator's training modules by sorted flat name, e.g. ``algebra__linear_1d``."""
    from sympy.solvers.diophantine.diophantine import base_solution_linear

    # Moved in sympy 1.13. Set on the module object itself: the attribute path
    # sympy.solvers.diophantine is shadowed by the function of that name.
    sys.modules["sympy.solvers.diophantine"].base_solution_linear = base_solution_linear
    from mathematics_dataset.modules import modules
    from mathematics_dataset.sample import polynomials
    from mathematics_dataset.util import composition

    polynomials.np = _numpy1_shim()
    composition.expand_entities = _ordered_expand_entities(composition)

    flat: dict[str, Callable[[], object]] = {}

    def add(tree: dict, prefix: str) -> None:
        for key, value in tree.items():
            name = f"{prefix}__{key}" if prefix else key
            if isinstance(value, dict):
                add(value, name)
            else:
                flat[name] = value

    add(modules.train(lambda entropy_range: entropy_range), "")  # the full training entropy range
    return dict(sorted(flat.items()))


def generate(seed: int, pairs: int, char_budget: int, only: tuple[str, ...] = ()) -> Iterator[dict]:
    """Documents round-robin over the modules (those named in ``only``, if given) until
    ``char_budget`` characters; then a final ``{"skipped": [...]}`` record naming the modules
    that failed."""
    import numpy as np
    import sympy.core.random as sympy_random
    from mathematics_dataset import generate_settings

    modules = {k: v for k, v in _patched_modules().items() if not only or k in only}
    if not modules:
        raise ValueError(f"no mathematics_dataset module is named {', '.join(only)}: check the names")
    skipped: list[str] = []
    total, index = 0, 0
    while total < char_budget and len(skipped) < len(modules):
        for name, module in modules.items():
            if name in skipped or total >= char_budget:
                continue
            s = doc_seed(seed, name, index)
            random.seed(s)
            np.random.seed(s)
            sympy_random.seed(s)  # sympy's own generator (randprime)
            try:
                qa = []
                while len(qa) < pairs:
                    problem = module()
                    q, a = str(problem.question), str(problem.answer)
                    # The generator's own length limits (generate.sample_from_module) without absl flags.
                    if (
                        len(q) <= generate_settings.MAX_QUESTION_LENGTH
                        and len(a) <= generate_settings.MAX_ANSWER_LENGTH
                    ):
                        qa.append((q, a))
            except AttributeError:  # ndarray.itemset under NumPy 2
                skipped.append(name)
                continue
            text = format_pairs(qa)
            total += len(text)
            yield {"id": f"math/{name}/{index:03d}", "text": text}
        index += 1
    yield {"skipped": sorted(skipped)}


def math_documents(
    seed: int, pairs: int, char_budget: int, only: tuple[str, ...] = ()
) -> tuple[list[dict], list[str]]:
    """Run the generator in a subprocess; return (documents, skipped module names)."""
    cmd = [
        sys.executable,
        "-m",
        "pipeline.material.math_corpus",
        "--seed",
        str(seed),
        "--pairs",
        str(pairs),
        "--chars",
        str(char_budget),
        *(f"--only={name}" for name in only),
    ]
    # The generator picks variable letters by iterating over sets of strings, whose order
    # follows the per-process hash seed: fix it, or the letters change from run to run.
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    done = subprocess.run(cmd, capture_output=True, text=True, encoding="utf-8", env=env)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise RuntimeError(
            f"mathematics_dataset generation failed ({last}): "
            "pip install mathematics-dataset==1.0.1 absl-py, or point corpus.sources at your own files"
        )
    records = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    return [r for r in records if "id" in r], records[-1].get("skipped", []) if records else []


def main() -> None:
    parser = argparse.ArgumentParser(description="Print math documents as JSONL (run in its own process).")
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--pairs", type=int, required=True)
    parser.add_argument("--chars", type=int, required=True)
    parser.add_argument(
        "--only", action="append", default=[], help="generate from this module only (repeatable)"
    )
    args = parser.parse_args()
    for record in generate(args.seed, args.pairs, args.chars, tuple(args.only)):
        sys.stdout.write(json.dumps(record, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
