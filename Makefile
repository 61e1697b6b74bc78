# `make demo` runs the DAG on the built-in demo scene; `make test` runs the test suite.
# Both create or refresh .venv first (a no-op when requirements.lock did not change).
# `make lock` re-resolves requirements.txt + requirements-dev.txt and rewrites requirements.lock.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
LOCK := requirements.lock
LOCK_VENV := .lock-venv
# Installed --no-deps (its declared dependencies are all in the lock already).
SKVIDEO := scikit-video==1.1.11
LOCK_HEADER := \
  "\# Every Python package \`make\` installs, pinned exactly (transitive dependencies included)." \
  "\# Made by \`make lock\` from an environment resolved from requirements.txt + requirements-dev.txt" \
  "\# (plus $(SKVIDEO), installed --no-deps); do not edit by hand. \`make venv\` installs exactly this" \
  "\# list with --no-deps, so a fresh machine gets what CI tested."
CORES ?= 2
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: demo test lint venv lock slurm chromium clean-results

venv: $(STAMP)

# Exactly the lock, no resolver: sam2 builds from its sdist, its isolated build kept on our torch by
# constraints.txt. `pip check` proves the set is consistent; a .venv that holds more than the lock
# (installed before, or by hand) is reported, since pip never removes packages.
$(STAMP): $(LOCK) constraints.txt pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	SAM2_BUILD_CUDA=0 PIP_CONSTRAINT=$(CURDIR)/constraints.txt $(PY) -m pip install -q --no-deps -r $(LOCK)
	$(PY) -m pip install -q --no-deps -e .
	$(PY) -m pip check
	@extra=$$($(PY) -m pip freeze --all --exclude-editable | grep -v '^pip==' | grep -v -x -i -F -f <(grep -v '^#' $(LOCK))); \
	  if [ -n "$$extra" ]; then echo "note: $(VENV) holds packages not in $(LOCK) (remove $(VENV) for an exact install):"; echo "$$extra"; fi
	touch $(STAMP)

# Re-resolve the requirements in a throwaway venv (a few minutes, ~6 GB) and pin what it installed.
# Run it after editing requirements*.txt, then commit requirements.lock; the next `make` refreshes .venv.
lock:
	rm -rf $(LOCK_VENV) && python3 -m venv $(LOCK_VENV)
	SAM2_BUILD_CUDA=0 PIP_CONSTRAINT=$(CURDIR)/constraints.txt $(LOCK_VENV)/bin/python -m pip install -q -r requirements.txt -r requirements-dev.txt
	$(LOCK_VENV)/bin/python -m pip install -q --no-deps $(SKVIDEO)
	$(LOCK_VENV)/bin/python -m pip check
	{ printf '%s\n' $(LOCK_HEADER); $(LOCK_VENV)/bin/python -m pip freeze --all --exclude-editable | grep -v '^pip=='; } > $(LOCK).tmp
	mv $(LOCK).tmp $(LOCK)
	rm -rf $(LOCK_VENV)
	@echo "$(LOCK) rewritten: review 'git diff $(LOCK)', commit it; the next make refreshes $(VENV)"

demo: $(STAMP)
	$(VENV)/bin/snakemake --cores $(CORES) --resources gpu=0 --rerun-incomplete --show-failed-logs
	@echo "demo finished: results/demo/demo/ (see README, 'Outputs')"

test: $(STAMP) slurm chromium
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

# The viewer's browser test opens the page in Debian's headless Chromium (software WebGL). Install it
# when missing and we may (root with apt-get); otherwise that test fails in CI (skips elsewhere) and says why.
chromium:
	@if ! command -v chromium >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing chromium for the viewer's browser test"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	      || echo "could not install chromium: the viewer's browser test will fail in CI and skip elsewhere"; \
	  else echo "chromium not installed and no root apt-get: the viewer's browser test will fail in CI and skip elsewhere"; fi; \
	fi

lint: $(STAMP)
	$(VENV)/bin/snakemake --lint

clean-results:
	rm -rf results/demo resources/demo logs .snakemake
