"""Demo material set-up (models, tokenizers, corpus): ``python -m pipeline.material STEP``."""
