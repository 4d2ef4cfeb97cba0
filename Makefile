# trt-health-sidecar — the two commands the README starts with, and the rest.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PORT ?= 9180
HTTP_PORT ?= 9181
SCENARIO ?= demo/scenario.yaml

.PHONY: run test lint typecheck proto bench soak gpu-test clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed-run: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[cpu]'
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@ $(VENV)/.installed-run

## make run: set up .venv and start the sidecar on its demo default (simulated GPU + CPU canary)
run: $(VENV)/.installed-run
	@mkdir -p demo/state
	@test -f $(SCENARIO) || cp demo/scenario.example.yaml $(SCENARIO)
	$(BIN)/trt-health-sidecar serve --simulate --scenario $(SCENARIO) \
	  --grpc-port $(PORT) --http-port $(HTTP_PORT) --state-dir demo/state --log-format text

# MLServer (a real KServe v2 server nobody here wrote) for the workload-probe tests; it needs
# protobuf < 7, so it lives in its own environment and runs as a separate process.
MLSERVER_VENV ?= .venv-mlserver
$(MLSERVER_VENV)/.installed:
	$(PY) -m venv $(MLSERVER_VENV)
	$(MLSERVER_VENV)/bin/python -m pip install -q 'mlserver==1.7.1' 'onnxruntime>=1.18'
	touch $@

## make test: set up .venv with test extras and run the whole suite (what CI runs)
test: $(VENV)/.installed-test $(MLSERVER_VENV)/.installed system-deps
	TRT_HEALTH_TEST_MLSERVER=$(CURDIR)/$(MLSERVER_VENV)/bin/mlserver $(BIN)/python -m pytest -q
	$(BIN)/ruff check sidecar tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache

## Debian tools the suite needs (podman/buildah/runc/mmdebstrap for tests/e2e, promtool for the
## rule pack): installs only the missing ones (root)
.PHONY: image system-deps rules
system-deps:
	image/system-deps.sh

## make rules: regenerate manifests/monitoring/prometheusrule.yaml from the plain rule file
rules: $(VENV)/.installed-test
	$(BIN)/python manifests/monitoring/render_prometheusrule.py

## make image: build Dockerfile.sidecar (runtime target) with buildah from a base made locally
## from Debian's packages with mmdebstrap (no registry); cached by input hash; prints the size.
## Needs root and podman, buildah, runc, mmdebstrap (make system-deps installs them). tests/e2e uses it.
image: system-deps
	image/build.sh

lint: $(VENV)/.installed-test
	$(BIN)/ruff check sidecar tests bench
	$(BIN)/ruff format --check sidecar tests bench

typecheck: $(VENV)/.installed-test
	$(BIN)/mypy

## regenerate the diagnostics stubs (a test fails when they drift from proto/)
proto: $(VENV)/.installed-test
	$(BIN)/python -m grpc_tools.protoc -Iproto --python_out=. --pyi_out=. --grpc_python_out=. \
	  proto/sidecar/proto/diagnostics.proto

bench: $(VENV)/.installed-test
	$(BIN)/python -m bench.run --out BENCHMARKS.md

soak: $(VENV)/.installed-test
	$(BIN)/python -m bench.soak --minutes 10

## on the GPU machine (see README "Development"): the real NVML / CUDA / TensorRT tests, with
## the wheels ../shared/tools/device-wheels.sh put in .whl/ (pytest plugins included)
GPU_SITE ?= /tmp/site
gpu-test:
	python3 -m pip install -q --no-index --no-deps --no-compile --target $(GPU_SITE) .whl/*.whl
	PYTHONPATH=$(GPU_SITE):$(CURDIR) python3 -m pytest -q -m gpu -s tests/gpu

clean:
	rm -rf $(VENV) $(MLSERVER_VENV) demo/state .pytest_cache .mypy_cache .ruff_cache
