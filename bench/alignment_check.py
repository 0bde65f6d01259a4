"""`python -m bench.alignment_check`: how often the mapped teacher target's top token is a strict text prefix of the student's actual
next token (the teacher says "\n", the student's tokenizer writes "\n    " as one token), per
domain, on the qwen-coder cache of configs/targets.yaml → bench/results/alignment_check.json.
The diagnosis behind bench/results/targets.md: such a target puts mass on a token the student's
tokenizer never emits there, so distilling it raises held-out bits per byte."""

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from data_schemas.teacher_shard import decode_table, read_teacher_shard
from pipeline.config import load_config
from pipeline.distillation import resolve_stream_inputs
from stages.align.sample import align_sample
from stages.tokenization import load_tokenizer, tokenize_many_with_ends

config = load_config("configs/targets.yaml")
inputs = resolve_stream_inputs(config, checksums=False)
teacher = inputs.teachers[0]
tok = load_tokenizer(config.student.path)
stats = {}
for shard in inputs.corpus_shards[:4]:
    table = pq.read_table(shard.path, columns=["sample_id", "domain", "text"]).to_pylist()
    rows = decode_table(read_teacher_shard(teacher.shards[shard.name]))
    students = tokenize_many_with_ends(
        tok, [r["text"] for r in table], add_special_tokens=True, max_tokens=512
    )
    for r, t, s in zip(table, rows, students):
        a = align_sample(
            s.ends, t.token_ends, t.topk_ids, t.topk_logprobs, teacher.vocab_map, target="residual"
        )
        nxt = s.ids[1:]
        c = stats.setdefault(r["domain"], Counter())
        for j in np.nonzero(a.available)[0]:
            top = int(a.support_ids[j, 0])
            true = int(nxt[j])
            c["aligned"] += 1
            p_true = float(a.support_probs[j][a.support_ids[j] == true].sum())
            c["mass_on_true"] += p_true
            if top == true:
                c["top1_is_true"] += 1
            else:
                ttext, ctext = tok.decode([top]), tok.decode([true])
                if len(ttext) < len(ctext) and ctext.startswith(ttext):
                    c["top1_strict_prefix_of_true"] += 1
                    c["prefix_mass"] += float(a.support_probs[j, 0])
        c["student_rows"] += len(nxt)
out = {}
for d, c in sorted(stats.items()):
    n = c["aligned"]
    out[d] = {
        "aligned_rate": round(n / c["student_rows"], 3),
        "top1_is_true": round(c["top1_is_true"] / n, 3),
        "top1_strict_prefix_of_true": round(c["top1_strict_prefix_of_true"] / n, 3),
        "target_mass_on_true_next_token": round(c["mass_on_true"] / n, 3),
        "target_mass_on_prefix_tokens_when_top1_is_prefix": round(
            c["prefix_mass"] / max(c["top1_strict_prefix_of_true"], 1), 3
        ),
    }
Path(__file__).with_name("results").joinpath("alignment_check.json").write_text(json.dumps(out, indent=1))
print(json.dumps(out, indent=1))
