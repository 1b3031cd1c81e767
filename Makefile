# Two commands on a fresh machine:
#   make test   — create/refresh .venv, install everything, run the test suite (what CI runs)
#   make demo   — the live colonoscopy demo on a CVC-ClinicDB clip (annotated video + JSON report in artifacts/demo)
# Both create or refresh their own environment in .venv; nothing else needs to be installed first.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: test demo env clean bench-models

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip

# Sources of the compiled extension: a change rebuilds it (the editable install does not rebuild on import).
NATIVE := $(shell find kernels -name '*.cpp' -o -name '*.h' -o -name '*.cuh' -o -name 'CMakeLists.txt' 2>/dev/null)

# Reinstall when the dependency list or the native sources change. torch is installed first, pinned, so that nothing pulls the
# multi-GB CUDA build; the project itself is installed editable (scikit-build-core builds the native parts).
$(STAMP): pyproject.toml CMakeLists.txt $(NATIVE) | $(PY)
	$(PIP) install "torch==2.13.0"
	$(PIP) install -e ".[dev]"
	touch $(STAMP)

env: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

DEMO_SOURCE ?= ../shared/data/cvc-clinicdb-clips/seq01/images
demo: $(STAMP)
	$(PY) -m demos.live --source $(DEMO_SOURCE) --out artifacts/demo/demo.mp4 --report artifacts/demo/demo.json

bench-models: $(STAMP)
	$(PY) -m training.bench_models

clean:
	rm -rf $(VENV) build
