# The README's commands. Each sets up .venv on first use (and rebuilds it when pyproject.toml changes).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# CPU build of torch, taken from the local wheel cache; installed first so the `train` extra adds nothing.
TORCH_PIN ?= torch==2.13.0
DEMO_DIR ?= demo-output

.PHONY: venv test demo bench lint proto clean tritonclient

venv: $(STAMP)

$(STAMP): pyproject.toml
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH_PIN)"
	$(BIN)/pip install --quiet -e ".[train,serve,dev]"
	touch $(STAMP)

# tritonclient[grpc] pins protobuf<7 while grpcio 1.85 needs protobuf>=7.35 (TOOLCHAIN.md): the KServe tests
# run the real Triton client from its own venv, against our server, as a subprocess.
TRITON_VENV := .venv-tritonclient
TRITON_STAMP := $(TRITON_VENV)/.installed

tritonclient: $(TRITON_STAMP)

$(TRITON_STAMP):
	rm -rf $(TRITON_VENV)
	$(PYTHON) -m venv $(TRITON_VENV)
	$(TRITON_VENV)/bin/pip install --quiet --upgrade pip
	$(TRITON_VENV)/bin/pip install --quiet "tritonclient[grpc]>=2.50,<3" numpy
	touch $(TRITON_STAMP)

test: $(STAMP) $(TRITON_STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy twin serving
	TWIN_TRITONCLIENT_PYTHON=$(abspath $(TRITON_VENV)/bin/python) $(BIN)/python -m pytest -q

# simulate a mouse, train a small ensemble, export it, serve it, and query it as a client (twin/demo.py)
demo: $(STAMP)
	$(BIN)/python -m twin.demo --out $(DEMO_DIR)

bench: $(STAMP)
	$(BIN)/python bench/simulate.py

# The gRPC stubs under twin/_proto (committed): protos/generate.py runs
# `python -m grpc_tools.protoc -Iprotos --python_out --pyi_out --grpc_python_out` and rewrites protoc's
# absolute imports of our own protos (`from twin.v1 import twin_pb2`) to `twin._proto.twin.v1`. Compiling
# from -Iprotos keeps the descriptors' file names canonical (twin/v1/twin.proto) for reflection and other
# clients. tests/serving/test_protos.py fails when the committed stubs are stale.
proto: $(STAMP)
	$(BIN)/python protos/generate.py

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy twin serving

clean:
	rm -rf $(VENV) $(TRITON_VENV) $(DEMO_DIR) .pytest_cache .ruff_cache
