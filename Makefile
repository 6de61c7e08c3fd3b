# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

# The PhysioNet data: $GRADER_DATA, else ../shared/data beside the checkout, else the
# per-user cache, which `make data` fills from PhysioNet.
GRADER_DATA ?= $(firstword $(wildcard $(abspath ../shared/data)) $(HOME)/.cache/grader/physionet)
export GRADER_DATA

.PHONY: install sysdeps data test demo bench clean

# bubblewrap gives the sandbox its hidden folders; pango is what WeasyPrint draws text with.
# Installed when we are root and they are missing; elsewhere the grader says what it lacks.
sysdeps:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	    { ! command -v bwrap >/dev/null || ! ldconfig -p | grep -q libpangoft2; }; then \
	  apt-get update -qq && apt-get install -y -qq bubblewrap libpango-1.0-0 libpangoft2-1.0-0 >/dev/null \
	  || echo "warning: could not install bubblewrap/pango with apt-get"; \
	fi

$(VENV)/bin/python:
	python3 -m venv $(VENV)

# torch is not pinned: a machine that offers its own build through pip's find-links
# (a CPU wheel, say) gets it instead of several GB of CUDA packages; elsewhere pip picks.
$(VENV)/.installed: pyproject.toml | $(VENV)/bin/python
	$(PIP) install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q --no-index --no-deps torch 2>/dev/null || true
	$(PIP) install -q -e '.[dev]'
	touch $@

install: sysdeps $(VENV)/.installed

data: install
	@if [ -f "$(GRADER_DATA)/afdb/RECORDS" ] && [ -f "$(GRADER_DATA)/gaitndd/RECORDS" ]; then \
	  echo "PhysioNet data: $(GRADER_DATA)"; \
	else $(VENV)/bin/grader data fetch --data-dir "$(GRADER_DATA)"; fi

test: install data
	$(VENV)/bin/pytest

demo: install data
	$(VENV)/bin/grader demo --out demo-out

bench: install data
	$(PY) -m reference.bench --profile quick --json bench-quick.json

clean:
	rm -rf $(VENV) .pytest_cache bench-quick.json
